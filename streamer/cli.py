"""The online half of the `seqcast` command: serve, replay, tail, inspect, models.

Each handler is `handler(args) -> int` (the exit code). Heavy imports happen
inside handlers, so `seqcast --help` stays instant. `replay` is the one place
the streamer touches `training`, and only lazily: it reads event files with
the trainer's loaders (`training.data.loaders.load_any`).
"""
from __future__ import annotations

import argparse
import json
import sys

from streamer.security import SecurityError
from streamer.settings import Settings, SettingsError

SETTINGS_HELP = ("Every setting can also come from the environment as SEQCAST_<NAME> "
                 "(e.g. SEQCAST_REDIS_URL); flags win over the environment. "
                 "See streamer/settings.py for the full list.")


def add_commands(subparsers) -> None:
    _add_serve(subparsers)
    _add_replay(subparsers)
    _add_tail(subparsers)
    _add_inspect(subparsers)
    from streamer import models_cli, rollout_cli, signing_cli

    models_cli.add_command(subparsers)
    rollout_cli.add_command(subparsers)
    signing_cli.add_commands(subparsers)  # keygen, sign


def _kafka_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                        help="Kafka brokers (default: SEQCAST_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")


def _add_serve(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="consume events, keep per-user windows in Redis, emit one prediction per event",
        description="Run the streaming predictor until SIGTERM/SIGINT (then finish the batch, commit, exit 0). "
        "Serves /metrics and /healthz on --metrics-port. " + SETTINGS_HELP)
    p.add_argument("--bundle", metavar="PATH", help="bundle directory models/<name>/<version> to serve")
    p.add_argument("--model-name", help="serve the newest version of models/<NAME> instead of --bundle")
    _kafka_flag(p)
    p.add_argument("--input-topic", help="topic to read events from (default events)")
    p.add_argument("--output-topic", help="topic for predictions (default predictions)")
    p.add_argument("--dlq-topic", help="topic for invalid messages (default events.dlq)")
    p.add_argument("--group-id", help="consumer group (default seqcast)")
    p.add_argument("--redis-url", help="Redis for the windows (default redis://127.0.0.1:6379/0)")
    p.add_argument("--metrics-port", type=int, help="HTTP port for /metrics and /healthz; 0 = none (default 9108)")
    p.add_argument("--top-k", type=int, help="recommendations per prediction (default: the bundle's)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=cmd_serve)


def _add_replay(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="send an event file (or synthetic events) to the events topic in event-time order",
        description="Read SPEC with the trainer's loaders and produce its events, oldest first, as JSON "
        "messages keyed by user id. SPEC is a file (MovieLens ratings, ETT csv, stock OHLCV, sequences, "
        "or any table with --user/--ts and --item/--value columns) or synthetic[:users=N,items=N,events=N,seed=N].")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default 0 = as fast as possible)")
    p.add_argument("--limit", type=int, help="stop after this many events")
    p.add_argument("--topic", help="target topic (default: the input topic, events)")
    p.add_argument("--partitions", type=int, default=1, help="partitions if the topic must be created (default 1)")
    _kafka_flag(p)
    for column in ("user", "ts", "item", "value"):
        p.add_argument(f"--{column}", help=f"{column} column of a generic table")
    p.set_defaults(handler=cmd_replay)


def _add_tail(subparsers) -> None:
    p = subparsers.add_parser("tail", help="print predictions as they arrive (JSON lines)",
                              description="Read the predictions topic without joining a group "
                              "(commits nothing) and print each message as one line.")
    p.add_argument("--topic", help="topic to read (default: the output topic, predictions)")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the newest")
    p.add_argument("--limit", type=int, help="exit after this many messages")
    _kafka_flag(p)
    p.set_defaults(handler=cmd_tail)


def _add_inspect(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="print a bundle's manifest and verify its checksums and signature",
                              description="Load BUNDLE as `serve` would (file and manifest checksums, the "
                              "signature when SEQCAST_TRUSTED_KEYS is set, ONNX signature, warm-up). "
                              "Exit 0 if it can be served, 1 with the reason if not.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory models/<name>/<version>")
    p.add_argument("--full", action="store_true", help="print the whole manifest, including the scaler")
    p.set_defaults(handler=cmd_inspect)


def _settings(args, **flags) -> Settings | None:
    try:
        return Settings.from_env(**flags)
    except SettingsError as err:
        print(f"seqcast {args.command}: {err}", file=sys.stderr)
        return None


def _check_kafka(settings: Settings) -> None:
    """Files readable and a TLS handshake that succeeds, before a Kafka client would retry silently."""
    from streamer.connections import check_files, check_kafka

    check_files(settings)
    check_kafka(settings)


def cmd_serve(args) -> int:
    from streamer.app import serve

    settings = _settings(args, bundle=args.bundle, model_name=args.model_name,
                         bootstrap_servers=args.bootstrap_servers, input_topic=args.input_topic,
                         output_topic=args.output_topic, dlq_topic=args.dlq_topic, group_id=args.group_id,
                         redis_url=args.redis_url, metrics_port=args.metrics_port, top_k=args.top_k,
                         log_level=args.log_level)
    return 2 if settings is None else serve(settings)


def cmd_replay(args) -> int:
    from tqdm import tqdm

    from streamer.replay import replay
    from streamer.transport import Producer, create_topics
    from training.data.loaders import load_any  # the one lazy import of training (file formats)

    settings = _settings(args, bootstrap_servers=args.bootstrap_servers)
    if settings is None:
        return 2
    try:
        log = load_any(args.spec, user=args.user, ts=args.ts, item=args.item, value=args.value)
    except (ValueError, OSError) as err:
        print(f"seqcast replay: {err}", file=sys.stderr)
        return 1
    topic = args.topic or settings.input_topic
    total = len(log) if args.limit is None else min(args.limit, len(log))
    try:
        _check_kafka(settings)
        create_topics(settings.bootstrap_servers, [topic], args.partitions, client=settings.kafka_client,
                      security=settings.kafka_security())
        producer = Producer(settings.bootstrap_servers, client=settings.kafka_client, security=settings.kafka_security())
    except (SettingsError, SecurityError) as err:
        print(f"seqcast replay: {err}", file=sys.stderr)
        return 1
    try:
        with tqdm(total=total, unit="ev", desc=f"replay -> {topic}") as bar:
            sent = replay(log.events(), producer, topic, args.rate, args.limit, bar)
    finally:
        producer.close()
    print(f"sent {sent} events to {topic}", file=sys.stderr)
    return 0


def cmd_tail(args) -> int:
    from streamer.transport import Consumer, TransportError

    settings = _settings(args, bootstrap_servers=args.bootstrap_servers)
    if settings is None:
        return 2
    try:
        _check_kafka(settings)
        consumer = Consumer(settings.bootstrap_servers, args.topic or settings.output_topic, None, assign_all=True,
                            start="earliest" if args.from_beginning else "latest", client=settings.kafka_client,
                            security=settings.kafka_security())
    except (SettingsError, SecurityError, TransportError) as err:
        print(f"seqcast tail: {err}", file=sys.stderr)
        return 1
    shown = 0
    try:
        while args.limit is None or shown < args.limit:
            for record in consumer.poll(500):
                print(record.value.decode(errors="replace") if record.value else "null", flush=True)
                shown += 1
                if args.limit is not None and shown >= args.limit:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_inspect(args) -> int:
    from streamer.bundle import BundleError, load_bundle
    from streamer.signing import read_signature, trusted_from_settings

    settings = _settings(args)  # trusted_keys: with it, inspect refuses what serve would refuse
    if settings is None:
        return 2
    try:
        trusted = trusted_from_settings(settings)
        bundle = load_bundle(args.bundle, trusted=trusted)
    except (BundleError, SettingsError) as err:
        print(f"seqcast inspect: {err}", file=sys.stderr)
        return 1
    manifest = json.loads(bundle.manifest.to_json())
    if not args.full:
        manifest["value_scaler"] = {k: v for k, v in manifest["value_scaler"].items() if k != "per_entity"} | {
            "per_entity": f"{len(bundle.scaler.per_entity)} entities"}
        manifest["checksums"] = f"{len(manifest['checksums'])} fields"
    print(json.dumps(manifest, indent=2, sort_keys=True))
    if bundle.signer:
        signed = f"signed by key id {bundle.signer} (verified against trusted_keys)"
    else:  # without trusted keys a signature is reported, not checked (serve would not check it either)
        try:
            claimed = read_signature(args.bundle)
            signed = f"signed, claims key id {claimed['key_id']} (not verified: trusted_keys is not set)" \
                if claimed else "unsigned"
        except BundleError as err:
            signed = f"signature unreadable, not checked ({err})"
    print(f"OK: {args.bundle} verified (manifest and file checksums, ONNX inputs/outputs, warm-up inference); {signed}",
          file=sys.stderr)
    return 0

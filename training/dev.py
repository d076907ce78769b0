"""`seqcast dev`: a Kafka-protocol broker and a Redis for local development, running until Ctrl-C.

The demo starts and stops its own broker and Redis around one run; during development one wants them to stay
up while `seqcast serve`, `replay` and `tail` (or one's own producer and consumer, see examples/) come and go.
This starts an in-memory Tansu and a throw-away redis-server (the same binaries as the demo, from the
`embedded` extra), creates the three topics, prints the addresses as SEQCAST_* exports and a few commands to
paste, and waits. Nothing is kept: both hold their data in memory only. Ctrl-C (or SIGTERM) stops both, each
within its grace period (training.demo_procs); if one of them dies on its own, `dev` says so and stops the other.

`--validate` turns on Tansu's broker-side validation: the shipped event schema (schemas/v1/event.schema.json)
is loaded as the input topic's schema, so a producer's malformed event is refused at produce time, before
the service ever sees it (schemas/README.md explains what that can and cannot check).
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from training.demo_procs import Children

DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT = 9092, 6379
WATCH_EVERY_S = 0.5


def add_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "dev", help="keep a local Kafka-protocol broker (Tansu) and Redis running for development, until Ctrl-C",
        description="Start an in-memory Tansu broker and a throw-away redis-server on loopback, create the "
        "events, predictions and dead-letter topics, print the bootstrap address and Redis URL (as SEQCAST_* "
        "exports, which `seqcast serve`, `replay`, `tail` and `models` read), and keep both running until "
        "Ctrl-C or SIGTERM, which stops both. A port that is taken is replaced by a free one (the printout "
        "says which). Nothing is persisted. Needs the `embedded` extra (pip install 'seqcast[embedded]').")
    add = p.add_argument
    add("--kafka-port", type=int, default=DEFAULT_KAFKA_PORT, help="broker port (default: %(default)s)")
    add("--redis-port", type=int, default=DEFAULT_REDIS_PORT, help="redis-server port (default: %(default)s)")
    add("--partitions", type=int, default=1, help="partitions of each topic (default: %(default)s)")
    add("--input-topic", default="events", help="the topic events are read from (default: %(default)s)")
    add("--output-topic", default="predictions", help="the topic predictions go to (default: %(default)s)")
    add("--dlq-topic", default="events.dlq", help="the topic refused events go to (default: %(default)s)")
    add("--validate", action="store_true",
        help="the broker refuses events that break schemas/v1/event.schema.json at produce time (Tansu's "
        "schema registry); one refused record fails its whole produce request, and an idempotent librdkafka "
        "producer is fenced after it (schemas/README.md)")
    add("--env-file", type=Path, help="also write the SEQCAST_* exports to this file (for scripts)")
    add("--log-dir", type=Path, help="where the broker's and Redis's logs go (unset: a new temp dir)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from streamer.transport import TransportError, create_topics

    if args.partitions < 1:
        print("seqcast dev: --partitions must be >= 1", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="seqcast-dev-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    children = Children(f"dev{uuid.uuid4().hex[:8]}")
    try:
        registry = registry_dir(log_dir, args.input_topic) if args.validate else None
        kafka_port, redis_port = port_or_free(args.kafka_port), port_or_free(args.redis_port)
        children.start_tansu(kafka_port, log_dir / "tansu.log", schema_registry=registry)
        children.start_redis(redis_port, log_dir / "redis.log")
        bootstrap, redis_url = f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0"
        topics = [args.input_topic, args.output_topic, args.dlq_topic]
        create_topics(bootstrap, topics, args.partitions)
        exports = {"SEQCAST_BOOTSTRAP_SERVERS": bootstrap, "SEQCAST_REDIS_URL": redis_url,
                   "SEQCAST_INPUT_TOPIC": args.input_topic, "SEQCAST_OUTPUT_TOPIC": args.output_topic,
                   "SEQCAST_DLQ_TOPIC": args.dlq_topic}
        if args.env_file:
            args.env_file.write_text("".join(f"export {k}={v}\n" for k, v in exports.items()))
        print(banner(args, bootstrap, redis_url, exports, log_dir, registry), flush=True)
        return watch(children)
    except KeyboardInterrupt:
        return 0
    except (OSError, TimeoutError, TransportError, ValueError) as err:
        print(f"seqcast dev: {err} (logs in {log_dir})", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        print("stopped      broker and redis-server", file=sys.stderr, flush=True)


def _interrupt(_signum: int, _frame) -> None:
    """SIGINT/SIGTERM: raise KeyboardInterrupt in the main thread (waiting in `watch`), so `run` stops both."""
    raise KeyboardInterrupt


def watch(children: Children) -> int:
    """Wait for Ctrl-C; a child that exits on its own ends `dev` with 1, naming it."""
    while True:
        for child in children.started:
            if child.proc.poll() is not None:
                print(f"seqcast dev: {child.name} exited with code {child.proc.returncode}; stopping",
                      file=sys.stderr, flush=True)
                return 1
        time.sleep(WATCH_EVERY_S)


def port_or_free(wanted: int) -> int:
    """`wanted` if nothing listens there (0: any), else a free port, saying so; the banner prints the one used."""
    from streamer.embedded import port_or_free as bindable

    port = bindable(wanted)
    if wanted and port != wanted:
        print(f"note         port {wanted} is taken; using {port}", file=sys.stderr, flush=True)
    return port


def registry_dir(log_dir: Path, topic: str) -> Path:
    """A Tansu schema registry directory holding the shipped event schema for `topic`."""
    from training.broker_schema import write_event_registry

    return write_event_registry(log_dir / "schemas", topic)


def banner(args: argparse.Namespace, bootstrap: str, redis_url: str, exports: dict[str, str], log_dir: Path,
           registry: Path | None) -> str:
    checked = f", events checked against {registry}" if registry else ""
    lines = [
        f"bootstrap    {bootstrap}  (Tansu, in memory{checked})",
        f"redis        {redis_url}  (redis-server, in memory)",
        f"topics       {args.input_topic}, {args.output_topic}, {args.dlq_topic} ({args.partitions} partition"
        f"{'s' if args.partitions > 1 else ''} each)",
        f"logs         {log_dir}",
        "",
        "In another shell:",
        "  export " + " ".join(f"{k}={v}" for k, v in exports.items()),
        "  seqcast serve --bundle models/<name>/<version>      # or --model-name NAME",
        "  seqcast replay ../shared/data/movielens/ml-100k.u.data --rate 500",
        "  seqcast tail",
        "",
        "ready        Ctrl-C stops both (nothing is kept)",
    ]
    return "\n".join(lines)

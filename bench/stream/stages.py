"""Per-stage cost of the service loop, µs per event, in this process, one batch at a time.

Each batch goes through the service's own `Service.process` (exactly what `seqcast serve` runs on a
batch), and the time is attributed to stages by timing wrappers put around the steps it calls
(`StageClock`): parse (dlq.split), the Redis window pipeline (the service's `_windows` and the window
store's public methods), encode, inference (`Bundle.predict`), post-processing (the rest of
scoring), emit (JSON + metrics, without the sends), produce (`Producer.send`), live accuracy and,
outside `process`, the producer flush the service does at each checkpoint. Each stage's time is
exclusive (a stage called inside another is charged to itself only); whatever `process` does outside
every wrapped step is "other", so the stages always add up to the whole loop. A step that a newer (or
older) service no longer has is simply not wrapped: its time lands in its caller's stage or in
"other", and `wrapped` in the JSON lists what was found. This is why the table survives changes of
the service's internals and can be produced from an old checkout (`--stages-only`) for a before/after.

Each stage is timed twice: wall (perf_counter) and CPU of this thread (thread_time); on a shared,
busy machine the CPU figure is the one to trust, the gap is waiting (Redis, broker, other processes).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from bench.stream.infra import Context, client_kwargs
from streamer.events import Event

STAGES = ("consume", "parse", "redis_pipeline", "encode", "inference", "post_process", "emit", "produce",
          "live_accuracy", "other", "flush")
PER_EVENT_OR_TEST_ONLY = frozenset({"keys", "key", "totals_key", "read", "stored", "event_ids", "resize"})
EMIT_PARTS = ("emit: JSON encoder", "emit: producer.send")


class StageClock:
    """Exclusive wall and thread-CPU seconds per stage name, from wrappers that may nest."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.last_args: dict[str, tuple] = {}
        self._stack: list[list[float]] = []  # per open call: [child wall, child cpu]
        self._undo: list[Callable[[], None]] = []
        self.wrapped: list[str] = []

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            w0, c0 = time.perf_counter(), time.thread_time()
            self._stack.append([0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                w, c = time.perf_counter() - w0, time.thread_time() - c0
                child_w, child_c = self._stack.pop()
                self.wall[name] += w - child_w
                self.cpu[name] += c - child_c
                if self._stack:
                    self._stack[-1][0] += w
                    self._stack[-1][1] += c
                self.last_args[name] = args
        return timed

    def patch(self, name: str, owner: object, attr: str) -> None:
        """Replace owner.attr (a module function or an instance's method) by a timed version, if it exists."""
        original = getattr(owner, attr, None)
        if not callable(original):
            return
        in_dict = attr in getattr(owner, "__dict__", {})
        try:
            setattr(owner, attr, self.wrap(name, original))
        except (AttributeError, TypeError):  # slots, frozen dataclass: leave it unwrapped
            return
        label = getattr(owner, "__name__", type(owner).__name__)
        self.wrapped.append(f"{name}: {label}.{attr}")
        self._undo.append(lambda: setattr(owner, attr, original) if in_dict else delattr(owner, attr))

    def patch_public(self, name: str, obj: object) -> None:
        """Time every public method of `obj` (an instance) as `name`, except the per-event helpers
        (a wrapper costs ~1-2 µs a call) and those only tests call."""
        for attr in dir(type(obj)):
            if attr in PER_EVENT_OR_TEST_ONLY or attr.endswith(("_key", "_keys")):
                continue
            if not attr.startswith("_") and callable(getattr(type(obj), attr, None)):
                self.patch(name, obj, attr)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def consume_cost(ctx: Context, backlog_topic: str, batch: int, events: int,
                 client: str | None) -> tuple[float, float]:
    """(wall, CPU) seconds per record of the consumer's poll from the broker, max_poll_records = batch."""
    from streamer.transport import Consumer

    consumer = Consumer(ctx.broker, backlog_topic, None, assign_all=True, max_poll_records=batch,
                        **client_kwargs(client))
    try:
        first = len(consumer.poll(1000))  # first fetch / metadata
        want, got = min(50 * batch, 25_000, events) - first, 0
        t0, c0 = time.perf_counter(), time.thread_time()
        while got < want and time.perf_counter() - t0 < 60:
            got += len(consumer.poll(500))
        return (time.perf_counter() - t0) / max(got, 1), (time.thread_time() - c0) / max(got, 1)
    finally:
        consumer.close()


def stages(ctx: Context, arch: str, bundle_path: str, prefix: str, events: list[Event], backlog_topic: str,
           backlog_events: int, warm: list[Event] = (), kafka: str | None = None) -> dict:
    """µs per event of each stage of Service.process, batches of ctx.batch, with the Kafka client `kafka`;
    `warm` events are processed first, untimed, so that windows and live-accuracy state are as a
    running service has them."""
    from prometheus_client import CollectorRegistry

    import streamer.dlq
    import streamer.predict
    import streamer.service
    from streamer.app import redis_client
    from streamer.bundle import load_bundle
    from streamer.http import Health
    from streamer.live_accuracy import LiveScorer
    from streamer.metrics import Metrics
    from streamer.predict import Models
    from streamer.service import Service
    from streamer.settings import Settings
    from streamer.transport import Producer, Record
    from streamer.window_store import WindowStore

    kwargs = client_kwargs(kafka)
    settings = Settings(redis_url=ctx.redis_url, key_prefix=prefix, output_topic=ctx.topic("stages"),
                        **({"kafka_client": kafka} if kwargs else {}))
    client = redis_client(settings)
    metrics = Metrics.create(CollectorRegistry())
    bundle = load_bundle(bundle_path, settings.inference_threads)
    models = Models.single(bundle, settings.top_k)
    store = WindowStore(client, prefix, models.window_len, settings.window_ttl_seconds, settings.window_slack)
    producer = Producer(ctx.broker, linger_ms=settings.producer_linger_ms, **kwargs)
    live = LiveScorer(client, prefix, settings.window_ttl_seconds, metrics) if settings.live_accuracy else None
    service = Service(settings, None, producer, store, models, metrics, Health(), None, live)
    batch = ctx.batch
    to_records = lambda chunk: [Record("events", 0, i, e.user_id.encode(), e.to_json_bytes(), 0)
                                for i, e in enumerate(chunk)]
    for start in range(0, len(warm), batch):  # windows and last predictions as the running service has them
        service.process(to_records(warm[start:start + batch]))
    producer.flush()

    clock = StageClock()
    parts = StageClock()  # the emit's parts, measured again on the same bodies (not part of the sum)
    wall_consume, cpu_consume = consume_cost(ctx, backlog_topic, batch, backlog_events, kafka)
    send = producer.send  # unwrapped, for the emit parts
    try:
        clock.patch("parse", streamer.dlq, "split")
        clock.patch("redis_pipeline", service, "_windows")
        clock.patch_public("redis_pipeline", store)
        clock.patch("encode", streamer.predict, "encode")
        clock.patch("inference", bundle, "predict")
        clock.patch("post_process", service, "_score")
        clock.patch("post_process", streamer.service, "predict_batch")
        clock.patch("emit", service, "_emit")
        clock.patch("produce", producer, "send")
        clock.patch("live_accuracy", service, "_score_live")
        if live is not None:
            clock.patch_public("live_accuracy", live)
        clock.patch("other", service, "process")
        counted = 0
        batches = [events[i:i + batch] for i in range(0, len(events) - batch + 1, batch)]
        for index, chunk in enumerate(batches):
            service.process(to_records(chunk))
            if index % 4 == 3:  # the service flushes at each checkpoint (every commit_interval_ms)
                w0, c0 = time.perf_counter(), time.thread_time()
                producer.flush()
                clock.wall["flush"] += time.perf_counter() - w0
                clock.cpu["flush"] += time.thread_time() - c0
            emit_parts(parts, clock.last_args.get("emit", ((),))[0], send, settings.dlq_topic)
            if index < 2:  # warm-up
                clock.reset()
                parts.reset()
                continue
            counted += len(chunk)
    finally:
        clock.restore()
    producer.flush()
    producer.close()
    client.close()
    per = lambda seconds: round(seconds / max(counted, 1) * 1e6, 1)
    cpu = {"consume": round(cpu_consume * 1e6, 1), **{k: per(clock.cpu.get(k, 0.0)) for k in STAGES[1:]}}
    wall = {"consume": round(wall_consume * 1e6, 1), **{k: per(clock.wall.get(k, 0.0)) for k in STAGES[1:]}}
    out = {"client": kafka, "batch": batch, "batches": max(0, len(batches) - 2), "events": counted,
           "warm_events": len(warm),
           "cpu_us_per_event": cpu, "wall_us_per_event": wall, "wrapped": clock.wrapped,
           "emit_parts_cpu_us": {k: per(parts.cpu[k]) for k in EMIT_PARTS if k in parts.cpu},
           "emit_parts_wall_us": {k: per(parts.wall[k]) for k in EMIT_PARTS if k in parts.wall}}
    out["cpu_sum_us"] = round(sum(cpu.values()), 1)
    out["wall_sum_us"] = round(sum(wall.values()), 1)
    out["ceiling_events_per_s"] = round(1e6 / max(out["cpu_sum_us"], 1e-9))
    return out


def emit_parts(parts: StageClock, scored, send: Callable, topic: str) -> None:
    """The JSON encoder the service uses (streamer.service's `dumps` if it has one, else json.dumps) and the
    sends (to the DLQ topic, which nobody reads), on the batch's bodies: the two big parts of emit."""
    import streamer.service

    try:
        bodies = [(s.body, s.event.user_id.encode()) for s in scored]
    except AttributeError:  # a service whose emit takes something else: no parts
        return
    encoder = getattr(streamer.service, "dumps", None)
    if encoder is None:
        encoder = lambda body: json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    blobs = parts.wrap(EMIT_PARTS[0], lambda: [encoder(b) for b, _ in bodies])()

    def send_all() -> None:
        for (_, key), blob in zip(bodies, blobs):
            send(topic, blob, key)
    parts.wrap(EMIT_PARTS[1], send_all)()


def profile_report(path: Path, top: int = 25) -> str:
    """The cProfile of a service run (--profile): top functions by tottime, then the streamer's by cumulative."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("streamer/(service|window_store|predict|live_accuracy|transport|"
                                               "bundle|dlq|events)", top)
    return buf.getvalue()

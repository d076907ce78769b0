"""The streamer's consumer loop: Kafka events -> Redis windows -> onnxruntime -> Kafka predictions.

One batch at a time, top to bottom (`Service.run`):
  1. poll up to max_poll_records records;
  2. parse each; invalid ones go to the DLQ topic unchanged, reason in the headers;
  3. append every valid event to its user's window and read the window as of
     that event: ONE Redis pipeline (round trip) for the whole batch;
  4. encode the windows and call each model arm once for the batch;
  5. send one prediction per valid event (key = user id), asynchronously;
  6. remember the batch's next offsets; when the commit policy says so, flush
     the producer (raises unless every prediction and DLQ record is
     acknowledged) and only then commit those offsets.
A crash anywhere before step 6 leaves the offsets uncommitted: the records are
read again after a restart, the window store ignores event_ids it already has,
and the predictions are produced again with the same event_id (at-least-once,
deduplicable). SIGTERM/SIGINT set a flag the loop reads between batches; the
current batch finishes, then a final flush + commit, then exit 0.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter as Tally
from typing import Callable, Sequence

import redis

from streamer import dlq
from streamer.http import Health
from streamer.live_accuracy import LiveScorer
from streamer.logs import Stats, log_event
from streamer.metrics import Metrics
from streamer.predict import Models, Scored, predict_batch
from streamer.rollout import ModelManager
from streamer.settings import Settings
from streamer.transport import Consumer, Producer, Record
from streamer.window_store import Window, WindowStore

log = logging.getLogger("streamer.service")
REDIS_RETRY_S = 30.0


class CommitPolicy:
    """Checkpoint when interval_ms has passed OR max_records were processed since the last one.

    interval_ms=0 checkpoints after every batch; max_records=0 disables the count trigger.
    """

    def __init__(self, interval_ms: int, max_records: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_ms / 1000
        self.max_records = max_records
        self.clock = clock
        self.pending = 0
        self.since = clock()

    def add(self, records: int) -> None:
        self.pending += records

    def due(self) -> bool:
        if self.pending == 0:
            return False
        return (self.clock() - self.since >= self.interval_s
                or (self.max_records > 0 and self.pending >= self.max_records))

    def reset(self) -> None:
        self.pending = 0
        self.since = self.clock()


class Service:
    """The loop and the state it carries between batches (offsets to commit, the models)."""

    def __init__(self, settings: Settings, consumer: Consumer, producer: Producer, store: WindowStore,
                 models: Models, metrics: Metrics, health: Health, manager: ModelManager | None = None,
                 live: LiveScorer | None = None) -> None:
        self.settings = settings
        self.manager = manager  # publishes a new Models when the registry changes
        self.live = live
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.models = models  # replaced whole between batches by hot reload
        self.metrics = metrics
        self.health = health
        self.policy = CommitPolicy(settings.commit_interval_ms, settings.commit_max_records)
        self.offsets: dict[tuple[str, int], int] = {}
        self.stats = Stats(settings.stats_interval_s)
        self._lag_partitions: set[int] = set()

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            records = self.consumer.poll(self.settings.poll_timeout_ms)
            self.health.last_poll = time.monotonic()
            self.health.assigned = bool(self.consumer.assignment())
            if self.manager is not None and self.manager.current is not self.models:
                self.swap(self.manager.current)
            if records:
                self.process(records)
            self._observe_lag()
            if self.policy.due():
                self.checkpoint()
            self._log_stats()
        self.checkpoint()

    def process(self, records: Sequence[Record]) -> None:
        consumed_at = time.time()
        events, _, rejected = dlq.split(records)
        for bad in rejected:
            self.producer.send(self.settings.dlq_topic, bad.record.value, bad.record.key, bad.headers())
            self.metrics.events_invalid.labels(bad.reason).inc()
        self.metrics.events_consumed.inc(len(records))
        if events:
            windows = self._windows(events)
            models = self.models  # one reference per batch: a swap takes effect on the next batch
            scored = predict_batch(models, events, windows, timer=self.metrics.inference.time)
            self._emit(scored, models, consumed_at)
            if self.live is not None:
                self._with_redis_retry(lambda: self.live.score(scored))
            self.metrics.batch_size.observe(len(events))
        for record in records:
            self.offsets[(record.topic, record.partition)] = record.offset + 1
        self.policy.add(len(records))
        self.stats.events += len(records)
        self.stats.invalid += len(rejected)
        self.stats.batches += 1

    def checkpoint(self) -> None:
        """Flush (raise unless all acknowledged), then commit the offsets processed so far."""
        if not self.offsets:
            return
        self.producer.flush()
        if not self.consumer.commit(self.offsets):
            log_event(log, "commit rejected after a rebalance; the new owner re-reads those records",
                      logging.WARNING, partitions=len(self.offsets))
        self.offsets = {}
        self.policy.reset()

    def swap(self, models: Models) -> None:
        """Serve `models` from the next batch on; grow the windows if a model needs longer ones."""
        if models.window_len > self.store.window_len:
            self.store.resize(models.window_len)
        self.models = models
        log_event(log, "serving new models", arms={a: b.manifest.version for a, b in models.arms.items()})

    def _windows(self, events) -> list[Window]:
        def read() -> list[Window]:
            with self.metrics.redis.time():
                return self.store.append_and_read(events)
        return self._with_redis_retry(read)

    def _with_redis_retry(self, step: Callable):
        deadline = time.monotonic() + REDIS_RETRY_S
        delay = 0.1
        while True:
            try:
                return step()
            except (redis.ConnectionError, redis.TimeoutError) as err:
                if time.monotonic() + delay > deadline:
                    raise
                log_event(log, "redis unavailable, retrying the batch", logging.WARNING, error=str(err))
                time.sleep(delay)  # the window script is idempotent and live scoring skips what it stored
                delay = min(delay * 2, 2.0)

    def _emit(self, scored: list[Scored], models: Models, consumed_at: float) -> None:
        out = self.settings.output_topic
        emitted: Tally[tuple[str, str]] = Tally()
        latency, lag = self.metrics.event_latency, self.metrics.event_time_lag
        for item in scored:
            if item.arm not in models.emitting:
                continue
            now = time.time()
            item.body["latency_ms"] = round((now - consumed_at) * 1000, 3)
            self.producer.send(out, json.dumps(item.body, separators=(",", ":")).encode(),
                               item.event.user_id.encode())
            latency.observe(now - consumed_at)
            lag.observe(max(0.0, now - item.event.ts))
            emitted[(item.version, item.arm)] += 1
        for (version, arm), count in emitted.items():
            self.metrics.predictions_emitted.labels(version, arm).inc(count)
        self.stats.predictions += sum(emitted.values())

    def _observe_lag(self) -> None:
        lag = self.consumer.lag()
        for partition in self._lag_partitions - set(lag):
            self.metrics.consumer_lag.remove(str(partition))
        for partition, behind in lag.items():
            self.metrics.consumer_lag.labels(str(partition)).set(behind)
        self._lag_partitions = set(lag)

    def _log_stats(self) -> None:
        now = time.monotonic()
        if self.stats.due(now):
            if self.stats.events:
                log_event(log, "progress", **self.stats.summary(now))
            self.stats.reset(now)

"""The streamer's consumer loop: Kafka events -> Redis windows -> onnxruntime -> Kafka predictions.

One batch at a time, top to bottom (`Service.run`):
  1. poll up to max_poll_records records;
  2. parse each; invalid ones go to the DLQ topic, reason in the headers;
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

What the loop survives without exiting (issue 10):
- a message it cannot handle: any exception while handling one message sends
  that message to the DLQ as `internal_error` (a batch that fails is re-run
  one event at a time to find which);
- a rebalance: before partitions are revoked (inside poll), the loop flushes
  and commits what it processed of them; a commit refused by the group is an
  outcome, not an error, and those records are simply read again by their
  new owner;
- a Redis outage: the batch is held, every partition paused (polling goes on,
  so the consumer stays in its group), /healthz says not ready, and the batch
  is retried with backoff until Redis answers; partitions revoked meanwhile
  are dropped from the held batch;
- a broker that does not acknowledge: the unacknowledged work is rewound (the
  consumer seeks back to the last committed offsets, as a restart would) and
  retried with backoff.
"""
from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from typing import Callable, Sequence

import numpy as np
from orjson import dumps

from streamer import dlq
from streamer.arm_perf import ArmPerf
from streamer.events import Event
from streamer.http import Health
from streamer.live_accuracy import LiveScorer
from streamer.logs import Stats, log_event
from streamer.metrics import Metrics, observe_many
from streamer.outages import Backoff, redis_unavailable, sleep_unless
from streamer.predict import ArmFailed, Models, Scored, predict_batch
from streamer.rollout import ModelManager
from streamer.settings import Settings
from streamer.transport import Consumer, DeliveryError, Partition, Producer, Record
from streamer.window_store import WindowStore

log = logging.getLogger("streamer.service")
FINAL_FLUSH_S = 10.0  # the last flush on SIGTERM: bounded, so a dead broker cannot hold the stop up


class BatchAbandoned(Exception):
    """The held batch cannot be finished here: its partitions were revoked, or the process is stopping."""


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
        # per-arm call times and failures; the manager's thread flushes them to Redis (rollout guard rails)
        self.perf = manager.perf if manager is not None else ArmPerf(metrics)
        self.live = live
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.models = models  # replaced whole between batches by hot reload
        self.metrics = metrics
        self.health = health
        self.policy = CommitPolicy(settings.commit_interval_ms, settings.commit_max_records)
        self.offsets: dict[Partition, int] = {}  # processed, not yet committed: next offset to read
        self.restart_at: dict[Partition, int] = {}  # where a rewind reads again from (last commit / first seen)
        self.stats = Stats(settings.stats_interval_s)
        self.should_stop: Callable[[], bool] = lambda: False
        self._lag_partitions: set[int] = set()
        self._revoked: set[Partition] = set()  # revoked while a batch was held (Redis outage)
        self._paused = False
        self._delivery_backoff = Backoff(0.5, 10.0)
        # users' stored live-accuracy marks, read with this batch's windows (one Redis call for both)
        self._live_marks: dict | None = None
        if consumer is not None:  # bench/stream/stages.py times the loop's stages without a consumer
            consumer.listener = self

    # -- the loop -------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        while not should_stop():
            records = self._poll(self.settings.poll_timeout_ms)
            if self.manager is not None and self.manager.current is not self.models:
                self.swap(self.manager.current)
            if records:
                self.process(records)
            self._observe_lag()
            if self.policy.due():
                self.checkpoint()
            self._log_stats()
        self.checkpoint(flush_timeout_s=FINAL_FLUSH_S)

    def _poll(self, timeout_ms: int) -> list[Record]:
        records = self.consumer.poll(timeout_ms)
        self.health.last_poll = time.monotonic()
        self.health.assigned = bool(self.consumer.assignment())
        reachable = self.consumer.broker_reachable()
        if reachable != self.health.broker_ok:
            log_event(log, "broker reachable" if reachable else "broker unreachable: not ready until it is back",
                      logging.INFO if reachable else logging.WARNING)
            self.metrics.broker_reachable.set(int(reachable))
        self.health.broker_ok = reachable
        return records

    def process(self, records: Sequence[Record]) -> None:
        """Handle one batch; returns with its offsets recorded, or with the batch abandoned/rewound."""
        consumed_at = time.monotonic()  # latency on the monotonic clock: a wall-clock step cannot make it negative
        self._live_marks = None  # marks belong to one batch: never carried into the next
        for record in records:
            self.restart_at.setdefault((record.topic, record.partition), record.offset)
        events, sources, rejected = dlq.split(records)
        self._revoked = set()
        try:
            scored, failed = self._predict(events, sources)
            self._emit(scored, sources, events, consumed_at, rejected + failed)
            if self.live is not None and scored:
                self._score_live(scored)
        except BatchAbandoned as why:  # uncommitted: the partitions' owner reads these records again
            log_event(log, "batch abandoned", logging.WARNING, reason=str(why), records=len(records))
            return
        except DeliveryError as err:
            self._rewind(err)
            return
        for record in records:
            self.offsets[(record.topic, record.partition)] = record.offset + 1
        self.metrics.events_consumed.inc(len(records))
        self.policy.add(len(records))
        self.stats.events += len(records)
        self.stats.invalid += len(rejected) + len(failed)
        self.stats.batches += 1

    def checkpoint(self, flush_timeout_s: float = 30.0) -> None:
        """Flush (all acknowledged, or rewind), then commit the offsets processed so far."""
        if not self.offsets:
            return
        try:
            self.producer.flush(flush_timeout_s)
        except DeliveryError as err:
            self._rewind(err)
            return
        self._delivery_backoff.reset()
        outcome = self.consumer.commit(self.offsets)
        self.metrics.commits.labels(outcome).inc()
        if outcome == "committed":
            self.restart_at.update(self.offsets)
        elif outcome == "rebalanced":
            log_event(log, "commit refused after a rebalance; the new owner re-reads those records",
                      logging.WARNING, partitions=len(self.offsets))
        if outcome == "unavailable":  # keep the offsets (still due): the next checkpoint retries them
            self.policy.since = self.policy.clock()
            return
        self.offsets = {}
        self.policy.reset()

    def swap(self, models: Models) -> None:
        """Serve `models` from the next batch on; grow the windows if a model needs longer ones."""
        if models.window_len > self.store.window_len:
            self.store.resize(models.window_len)
        self.models = models
        log_event(log, "serving new models", arms={a: b.manifest.version for a, b in models.arms.items()})

    # -- one batch ------------------------------------------------------------------------------

    def _predict(self, events: list[Event], sources: list[Record]) -> tuple[list[Scored], list[dlq.Rejected]]:
        """Scored predictions for the events; an event whose handling raises becomes a DLQ verdict."""
        if not events:
            return [], []
        try:
            return self._score(events), []
        except (BatchAbandoned, DeliveryError):
            raise
        except Exception as err:
            if len(events) == 1:
                if isinstance(err, ArmFailed):  # the arm's failure rate is a rollout guard rail
                    self.perf.failed(err.version, err.arm, 1, err)
                log_event(log, "message handling failed; sent to the DLQ", logging.ERROR, error=repr(err),
                          partition=sources[0].partition, offset=sources[0].offset)
                return [], [dlq.internal_error(sources[0], err)]
        scored: list[Scored] = []
        failed: list[dlq.Rejected] = []
        for event, record in zip(events, sources):  # find the culprit(s): windows are idempotent
            ok, bad = self._predict([event], [record])
            scored += ok
            failed += bad
        served = [s for s in scored if s.arm != "shadow"]
        return served + [s for s in scored if s.arm == "shadow"], failed

    def _score(self, events: list[Event]) -> list[Scored]:
        windows, marks = self._with_redis(lambda: self._windows(events))
        if marks is not None:  # held for _score_live of this batch (merged: the one-event retries add theirs)
            if self._live_marks is None:
                self._live_marks = marks
            else:
                self._live_marks.update(marks)
        models = self.models  # one reference per batch: a swap takes effect on the next batch
        return predict_batch(models, events, windows, perf=self.perf)

    def _windows(self, events: list[Event]) -> tuple[list, dict | None]:
        """The as-of windows and, with live accuracy on, its stored marks of the batch's users: one
        Redis call (per slot on a cluster) for both, so live scoring needs no read round trip."""
        with self.metrics.redis.time():
            if self.live is None:
                return self.store.append_and_read(events), None
            return self.store.append_and_read_marks(events)

    def _emit(self, scored: list[Scored], sources: list[Record], events: list[Event], consumed_at: float,
              rejected: list[dlq.Rejected]) -> None:
        """Send the predictions, then the dead letters (including predictions that cannot be serialised).

        orjson writes each body: same JSON values as json.dumps (shortest round-trip floats; only the
        exponent spelling differs, 1e-07 vs 1e-7), about 10x cheaper. Bodies hold no non-finite
        number (predict turns those into null or drops them), and orjson's own refusals (e.g. an
        integer beyond 64 bits) still send that one event to the DLQ.
        """
        out, emitting, send = self.settings.output_topic, self.models.emitting, self.producer.send
        emitted: Tally[tuple[str, str]] = Tally()
        sent_at: list[float] = []
        event_ts: list[float] = []
        clock = time.monotonic
        wall_offset = time.time() - clock()  # event-time lag needs wall time: monotonic + this offset
        for item in scored:
            if item.arm not in emitting:
                continue
            now = clock()
            body = item.body
            body["latency_ms"] = round((now - consumed_at) * 1000, 3)
            try:
                value = dumps(body)
            except (TypeError, ValueError) as err:  # orjson.JSONEncodeError is a TypeError
                record = next(r for e, r in zip(events, sources) if e is item.event)
                rejected.append(dlq.internal_error(record, err))
                continue
            event = item.event
            send(out, value, event.user_id.encode())
            sent_at.append(now)
            event_ts.append(event.ts)
            emitted[(item.version, item.arm)] += 1
        if sent_at:
            sent = np.array(sent_at)
            observe_many(self.metrics.event_latency, sent - consumed_at)
            with np.errstate(invalid="ignore", over="ignore"):
                observe_many(self.metrics.event_time_lag, np.maximum(0.0, sent + wall_offset - np.array(event_ts)))
        for bad in rejected:
            self.producer.send(self.settings.dlq_topic, *bad.dead_letter(self.settings.dlq_max_message_bytes))
            self.metrics.events_invalid.labels(bad.reason).inc()
        for (version, arm), count in emitted.items():
            self.metrics.predictions_emitted.labels(version, arm).inc(count)
        if scored:
            self.metrics.batch_size.observe(len({id(s.event) for s in scored}))
        self.stats.predictions += sum(emitted.values())

    def _score_live(self, scored: list[Scored], marks: dict | None = None) -> None:
        """Live accuracy is bookkeeping: an outage pauses like any Redis step, a bug is logged, never fatal.

        `marks`: read with this batch's windows (default: those `_score` held). Stale ones cannot
        count twice (the write compares-and-sets); users missing from them are read by `score`."""
        if marks is None:
            marks, self._live_marks = self._live_marks, None
        try:
            rollout = len(self.models.arms) > 1  # a canary or shadow: the rollout statistics need user buckets
            self._with_redis(lambda: self.live.score(scored, marks, buckets=rollout))
        except BatchAbandoned:
            raise
        except Exception as err:
            self.metrics.live_errors.inc()
            log_event(log, "live scoring failed for a batch; its judgments are skipped", logging.ERROR,
                      error=repr(err))

    # -- outages --------------------------------------------------------------------------------

    def _with_redis(self, step: Callable):
        """Run `step`; while Redis is unavailable, pause every partition, keep polling, and retry."""
        backoff = Backoff(0.1, 5.0)
        try:
            while True:
                try:
                    return step()
                except Exception as err:
                    if not redis_unavailable(err):
                        raise
                    self._pause("redis", err, backoff.failures)
                    self._wait_paused(backoff.next())
        finally:
            if self._paused:
                self._resume("redis")

    def _pause(self, dependency: str, err: BaseException, failures: int) -> None:
        if not self._paused:
            self._paused = True
            self.health.paused = dependency
            self.consumer.pause_all()
            self.metrics.paused.labels(dependency).set(1)
            self.metrics.outages.labels(dependency).inc()
            log_event(log, f"{dependency} unavailable: partitions paused, the batch is held and retried",
                      logging.WARNING, error=repr(err))
        elif failures % 20 == 0:
            log_event(log, f"{dependency} still unavailable", logging.WARNING, retries=failures, error=repr(err))

    def _resume(self, dependency: str) -> None:
        self._paused = False
        self.health.paused = None
        self.consumer.resume_all()
        self.metrics.paused.labels(dependency).set(0)
        log_event(log, f"{dependency} is back: partitions resumed")

    def _wait_paused(self, seconds: float) -> None:
        """Poll with every partition paused (the consumer stays in its group) for about `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            stray = self._poll(min(200, max(1, int((deadline - time.monotonic()) * 1000))))
            if stray:  # fetched before the pause took effect: read them again after the outage
                first: dict[Partition, int] = {}
                for r in stray:
                    first.setdefault((r.topic, r.partition), r.offset)
                self.consumer.seek(first)
                self.consumer.pause_all()
            if self._revoked:
                raise BatchAbandoned("partitions were revoked while Redis was unavailable")
            if self.should_stop():
                raise BatchAbandoned("stopping while Redis was unavailable")
            if time.monotonic() >= deadline:
                return

    def _rewind(self, err: DeliveryError) -> None:
        """The broker did not acknowledge: read again from the last commit, as a restart would."""
        self.metrics.delivery_failures.inc()
        positions = {p: o for p, o in self.restart_at.items() if p in self.consumer.assigned()}
        self.consumer.seek(positions)
        self.offsets = {}
        self.policy.reset()
        delay = self._delivery_backoff.next()
        log_event(log, "delivery failed: rewinding to the last committed offsets", logging.WARNING,
                  error=str(err)[:300], partitions=len(positions), retry_in_s=delay)
        sleep_unless(self.should_stop, delay)

    # -- rebalance listener (called inside consumer.poll) -------------------------------------------

    def revoked(self, partitions: set[Partition]) -> None:
        """Before losing partitions: flush and commit what was processed of them (the usual Kafka
        pattern), so their next owner starts where this member stopped."""
        self.metrics.rebalances.labels("revoked").inc()
        mine = {p: o for p, o in self.offsets.items() if p in partitions}
        outcome = "nothing"
        if mine:
            try:
                self.producer.flush()
                outcome = self.consumer.commit(mine)
            except DeliveryError as err:
                outcome = f"not committed ({err})"
        for p in partitions:
            self.offsets.pop(p, None)
            self.restart_at.pop(p, None)
        self._revoked |= partitions
        log_event(log, "partitions revoked", partitions=sorted(p for _, p in partitions), commit=outcome)

    def assigned(self, partitions: set[Partition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        if self._paused:  # still waiting for Redis: do not fetch the new partitions yet
            self.consumer.pause_all()
        log_event(log, "partitions assigned", partitions=sorted(p for _, p in partitions))

    # -- observability --------------------------------------------------------------------------

    def _observe_lag(self) -> None:
        try:
            lag = self.consumer.lag()
        except Exception as err:  # a position that cannot be known mid-rebalance is not worth a crash
            log_event(log, "lag unavailable", logging.DEBUG, error=repr(err))
            return
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

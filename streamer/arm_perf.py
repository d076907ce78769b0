"""Per-arm model call time and failures: Prometheus here, totals in Redis for the rollout controller.

A rollout's guard rails judge the candidate's arm by its p99 model call time
and its failure rate against the primary's, across every consumer of the
group. Prometheus has them per process (`seqcast_inference_seconds{arm}`,
`seqcast_arm_errors_total{arm}`); the controller reads the group-wide sums
from Redis instead (`{prefix}:model:perf:<version>`, fields `<arm>:calls`,
`<arm>:rows`, `<arm>:errors`, `<arm>:le<i>` = calls that took at most
STEP_BUCKETS[i], the last one +Inf), so it needs no Prometheus server.

The hot path only adds to an in-process table under a lock (one acquire per
arm per batch); the registry thread flushes it with one pipeline of HINCRBYs
every poll (`ModelManager`). These are guard-rail figures, not exactly-once
accounting: a process killed between two flushes loses at most one poll's worth.
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import defaultdict

from streamer.logs import log_event
from streamer.metrics import STEP_BUCKETS, Metrics

log = logging.getLogger("streamer.arm_perf")
FIELDS = ("calls", "rows", "errors")
_N = len(FIELDS) + len(STEP_BUCKETS) + 1  # the counters, then one per bucket and +Inf
FAILURE_LOG_EVERY_S = 60.0  # a failing arm logs once a minute, with the count since, not once per batch


def perf_key(prefix: str, version: str) -> str:
    return f"{prefix}:model:perf:{version}"


class ArmPerf:
    """`observe` each model call, `failed` each call that raised; `flush` sends the sums to Redis."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._failures_since_log = 0
        self._last_failure_log = -math.inf

    def _row(self, version: str, arm: str) -> list[int]:
        row = self._pending.get((version, arm))
        if row is None:
            row = self._pending[(version, arm)] = [0] * _N
        return row

    def observe(self, version: str, arm: str, seconds: float, rows: int) -> None:
        self.metrics.inference.labels(arm).observe(seconds)
        bucket = len(FIELDS) + bisect.bisect_left(STEP_BUCKETS, seconds)
        with self._lock:
            row = self._row(version, arm)
            row[0] += 1
            row[1] += rows
            row[bucket] += 1

    def failed(self, version: str, arm: str, rows: int, err: BaseException) -> None:
        """An arm's model call raised: its `rows` predictions were not made (logged once a minute)."""
        self.metrics.arm_errors.labels(arm).inc(rows)
        with self._lock:
            self._row(version, arm)[2] += rows
        self._failures_since_log += rows
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_EVERY_S:
            log_event(log, "a model arm failed to predict", logging.ERROR, arm=arm, model_version=version,
                      error=repr(err)[:300], failed_predictions=self._failures_since_log)
            self._last_failure_log, self._failures_since_log = now, 0

    def flush(self, client, prefix: str) -> int:
        """Add what was observed since the last flush to Redis; returns the fields written. On a Redis
        error the sums are put back, to go with the next flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        pipe = client.pipeline(transaction=False)
        written = 0
        for (version, arm), row in pending.items():
            for name, amount in zip(_field_names(arm), row):
                if amount:
                    pipe.hincrby(perf_key(prefix, version), name, amount)
                    written += 1
        try:
            pipe.execute()
        except Exception:
            with self._lock:
                for key, row in pending.items():
                    mine = self._row(*key)
                    for i, amount in enumerate(row):
                        mine[i] += amount
            raise
        return written


def _field_names(arm: str) -> list[str]:
    return [f"{arm}:{name}" for name in FIELDS] + [f"{arm}:le{i}" for i in range(len(STEP_BUCKETS) + 1)]


def read_perf(client, prefix: str, version: str) -> dict[str, list[float]]:
    """arm -> [calls, rows, errors, bucket counts...] summed over every instance so far."""
    arms: dict[str, list[float]] = defaultdict(lambda: [0.0] * _N)
    for name, value in client.hgetall(perf_key(prefix, version)).items():
        name = name.decode() if isinstance(name, bytes) else name
        arm, field = name.rsplit(":", 1)
        if field in FIELDS:
            arms[arm][FIELDS.index(field)] += float(value)
        elif field.startswith("le") and field[2:].isdigit() and int(field[2:]) <= len(STEP_BUCKETS):
            arms[arm][len(FIELDS) + int(field[2:])] += float(value)
    return dict(arms)


def quantile(row: list[float], q: float) -> float:
    """The q-quantile of the call times in `row` (read_perf's layout), interpolated within its bucket
    like Prometheus' histogram_quantile; +Inf calls count at the largest finite bound. NaN with no calls."""
    counts = row[len(FIELDS):]
    total = sum(counts)
    if total <= 0:
        return math.nan
    rank, seen, lower = q * total, 0.0, 0.0
    for count, upper in zip(counts, [*STEP_BUCKETS, STEP_BUCKETS[-1]]):
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return STEP_BUCKETS[-1]


def minus(row: list[float], before: list[float] | None) -> list[float]:
    """Counts since `before` (a snapshot taken when a rollout step began)."""
    return list(row) if before is None else [a - b for a, b in zip(row, before)]

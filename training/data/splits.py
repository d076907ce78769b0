"""Train/validation/test splits by position and time, never at random.

A random split of event data leaks the future into training (a model learns
from a user's later events and is scored on earlier ones), and published
numbers are only comparable under the published protocol. Three protocols:

- `leave_last_out`: recommendation (S3Rec, SASRec): per user, the last event is
  the test target, the second-last the validation target, earlier ones train.
- `chronological_split`: generic forecasting: per entity, the earliest events
  train, the latest test, cut by event count in time order.
- `ett_split`: the ETT benchmark (Informer, DLinear, PatchTST) by row index.

Sequence splits return `Targets`: rows of target events in the (user, ts)-sorted
log. A target's window is its user's events *before* it, so its position in the
user's run is exactly the `ends` that `streamer.features.encode_sequence` takes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

from training.data.eventlog import EventLog

ETT_BORDERS_HOURLY = (8640, 11520, 14400)  # 12 / 4 / 4 months of 30 days x 24 hours
ETT_ROWS_PER_HOUR = {"h": 1, "15min": 4}


@dataclass(frozen=True)
class Targets:
    """Target events of one split, ascending; each with its user's run [run_start, run_stop)."""

    rows: np.ndarray
    run_start: np.ndarray
    run_stop: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ends(self) -> np.ndarray:
        """Position of each target in its user's run = number of earlier events = window end."""
        return self.rows - self.run_start

    def by_run(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(run_start, run_stop, ends) per user: slice the log's columns [start:stop] and pass
        `ends` to `encode_sequence`; targets are `ends` (or `ends + k` for a k-step horizon)."""
        if not len(self.rows):
            return
        cuts = np.nonzero(np.diff(self.run_start))[0] + 1
        for group in np.split(np.arange(len(self.rows)), cuts):
            first = group[0]
            yield int(self.run_start[first]), int(self.run_stop[first]), self.ends[group]


@dataclass(frozen=True)
class SequenceSplit:
    """Train, validation and test targets of a sequence protocol, and the users it kept."""

    users: np.ndarray
    train: Targets
    val: Targets
    test: Targets


def _runs(log: EventLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, starts, stops) of the user runs; refuses a log that is not `.sorted()`."""
    runs = log.user_runs()
    users = np.array([user for user, _, _ in runs], dtype=object)
    starts = np.array([a for _, a, _ in runs], dtype=np.int64)
    stops = np.array([b for _, _, b in runs], dtype=np.int64)
    within_run = np.ones(max(len(log) - 1, 0), dtype=bool)
    within_run[stops[:-1] - 1] = False
    if len(set(users)) != len(users) or np.any(np.diff(log.ts)[within_run] < 0):
        raise ValueError("the event log must be sorted by (user, ts): call log.sorted()")
    return users, starts, stops


def _targets(lo: np.ndarray, hi: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> Targets:
    """Targets at rows [lo[i], hi[i]) of every run i, concatenated without a Python loop."""
    counts = np.maximum(hi - lo, 0)
    run = np.repeat(np.arange(len(lo)), counts)
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return Targets(lo[run] + offsets, starts[run], stops[run])


def leave_last_out(log: EventLog, min_events: int = 5) -> SequenceSplit:
    """Per user with >= min_events events: last = test, second-last = validation, the rest train.

    Train targets are positions 1..n-3 (a target needs at least one earlier event);
    the test window includes the validation event, as in S3Rec/SASRec. Users with
    fewer events are left out of all three splits.
    """
    if min_events < 3:
        raise ValueError("min_events must be >= 3 (one event of history, a validation and a test target)")
    users, starts, stops = _runs(log)
    keep = stops - starts >= min_events
    users, starts, stops = users[keep], starts[keep], stops[keep]
    return SequenceSplit(
        users=users,
        train=_targets(starts + 1, stops - 2, starts, stops),
        val=_targets(stops - 2, stops - 1, starts, stops),
        test=_targets(stops - 1, stops, starts, stops),
    )


def chronological_split(log: EventLog, val_frac: float = 0.1, test_frac: float = 0.2,
                        horizon: int = 1) -> SequenceSplit:
    """Per entity, its time-ordered events cut by count: earliest train, then validation, latest test.

    A target row r predicts events r..r+horizon-1, and all of them lie in the
    target's own segment, so no train target reads validation or test values.
    Windows (the events before r) may reach back into earlier segments, as in the
    ETT protocol. Entities are cut independently: for series on one clock (ETT
    channels, tickers) that is a global time cut; for users on different clocks it is not.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1) or horizon < 1:
        raise ValueError(f"need fractions in [0, 1) summing below 1 and horizon >= 1; "
                         f"got {val_frac}, {test_frac}, {horizon}")
    users, starts, stops = _runs(log)
    counts = stops - starts
    val_start = stops - np.round(counts * (val_frac + test_frac)).astype(np.int64)
    test_start = stops - np.round(counts * test_frac).astype(np.int64)
    last = lambda stop: stop - horizon + 1  # one past the last target whose horizon fits
    return SequenceSplit(
        users=users,
        train=_targets(starts + 1, last(val_start), starts, stops),
        val=_targets(np.maximum(val_start, starts + 1), last(test_start), starts, stops),
        test=_targets(np.maximum(test_start, starts + 1), last(stops), starts, stops),
    )


@dataclass(frozen=True)
class EttSplit:
    """ETT protocol rows and windows. A window starting at s reads rows [s, s+lookback)
    and predicts rows [s+lookback, s+lookback+horizon); stride 1."""

    lookback: int
    horizon: int
    train: range
    val: range
    test: range

    def starts(self, split: str) -> np.ndarray:
        """Start row of every window that fits in `split` ('train', 'val' or 'test')."""
        rows: range = getattr(self, split)
        return np.arange(rows.start, rows.stop - self.lookback - self.horizon + 1, dtype=np.int64)


def ett_split(n_rows: int, lookback: int, horizon: int, freq: str = "h") -> EttSplit:
    """Train [0, 8640), validation [8640-L, 11520), test [11520-L, 14400) for hourly rows;
    every boundary x4 for 15-minute rows. Rows from 14400 (x4) on are never used."""
    if freq not in ETT_ROWS_PER_HOUR:
        raise ValueError(f"freq must be one of {sorted(ETT_ROWS_PER_HOUR)}, got {freq!r}")
    train_end, val_end, test_end = (b * ETT_ROWS_PER_HOUR[freq] for b in ETT_BORDERS_HOURLY)
    if lookback < 1 or horizon < 1 or lookback + horizon > train_end or horizon > val_end - train_end:
        raise ValueError(f"lookback {lookback} and horizon {horizon} leave no train or validation window")
    if n_rows < test_end:
        raise ValueError(f"the ETT protocol needs {test_end} rows at freq {freq!r}, the data has {n_rows}")
    return EttSplit(lookback, horizon, range(0, train_end), range(train_end - lookback, val_end),
                    range(val_end - lookback, test_end))


class ZScore(NamedTuple):
    """Per-column mean and std (ddof=0, like sklearn's StandardScaler)."""

    mean: np.ndarray
    std: np.ndarray

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        return (matrix - self.mean) / self.std

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return scaled * self.std + self.mean


def fit_zscore(matrix: np.ndarray, train_rows: range | slice | np.ndarray) -> ZScore:
    """Fit on `matrix[train_rows]` only, so validation and test rows never shape the scaling.
    A constant column gets std 1 rather than a division by zero, also when its std is not exactly
    0 but rounding noise (below 1e-8 of max(1, |mean|)), which would blow the noise up to unit size."""
    if isinstance(train_rows, range):
        train_rows = slice(train_rows.start, train_rows.stop, train_rows.step)
    train = np.asarray(matrix, dtype=np.float64)[train_rows]
    if train.shape[0] == 0:
        raise ValueError("fit_zscore needs at least one training row")
    mean, std = train.mean(axis=0), train.std(axis=0)
    return ZScore(mean, np.where(std >= 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0))

"""EventLog -> training, validation and test windows, with no look-ahead.

Per user (an entity with at least `min_events` events, in event-time order):

- items (leave-last-out, the S3Rec/SASRec protocol): the last event is the
  test target, the second-last the validation target, every earlier event a
  training target; the window is always the events before the target.
- forecasts (horizon H): the last H values are the test target, the H before
  them the validation target, and a training window's H targets all lie
  before the validation block. With H = 1 this is exactly leave-last-out;
  with H > 1 the item head uses the same cuts (its target is the first event
  of each held-out block), so one window serves both heads.

The vocabulary and the value scaler are fitted on training targets and their
windows only, so nothing from validation or test leaks into the features.
Windows are encoded by `streamer.features.encode_sequence`, the same code the
streamer's encoder is tested against (zero train/serve skew).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from streamer.features import OOV_INDEX, PAD_INDEX, ValueScaler, Vocabulary, encode_sequence, scale_values
from training.data.eventlog import EventLog


@dataclass
class Split:
    """Encoded windows plus targets for one split; weights are 0 where a target is absent."""

    inputs: dict[str, np.ndarray]
    item_targets: np.ndarray  # int32 [N]
    item_weights: np.ndarray  # float32 [N]
    value_targets: np.ndarray  # float32 [N, H] (scaled)
    value_weights: np.ndarray  # float32 [N]
    users: np.ndarray  # object [N], the entity of each window

    def __len__(self) -> int:
        return len(self.item_targets)


@dataclass
class Prepared:
    vocab: Vocabulary
    scaler: ValueScaler
    window: int
    horizon: int
    train: Split
    val: Split
    test: Split
    train_item_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [V] popularity


def fit_vocabulary(log: EventLog, train_rows: np.ndarray) -> Vocabulary:
    """Items seen in training rows, most frequent first (ties by id), so indices are deterministic."""
    if log.items is None:
        return Vocabulary([])
    counts = Counter(i for i in log.items[train_rows] if i is not None)
    return Vocabulary(sorted(counts, key=lambda item: (-counts[item], str(item))))


def fit_scaler(log: EventLog, train_rows: np.ndarray, per_entity: bool) -> ValueScaler:
    """z-score on training rows only; per entity when entities are few series (sensors, tickers).

    Statistics in float64; a std that is zero or only rounding noise (below 1e-8 of max(1, |mean|),
    a constant series) becomes 1, so a constant series is shifted, never blown up."""
    if log.values is None:
        return ValueScaler()
    values = log.values[train_rows].astype(np.float64)
    finite = ~np.isnan(values)
    if not finite.any():
        return ValueScaler()

    def stats(x: np.ndarray) -> tuple[float, float]:
        mean, std = float(x.mean()), float(x.std())
        return mean, std if std >= 1e-8 * max(1.0, abs(mean)) else 1.0

    mean, std = stats(values[finite])
    per: dict[str, tuple[float, float]] = {}
    if per_entity:
        users = log.users[train_rows][finite]
        for user in np.unique(users):
            per[str(user)] = stats(values[finite][users == user])
    return ValueScaler(mean, std, per)


def _user_arrays(log: EventLog, start: int, stop: int, vocab: Vocabulary, scaler: ValueScaler):
    user = str(log.users[start])
    ts = log.ts[start:stop]
    items = np.array([vocab.index(i) for i in log.items[start:stop]], np.int32) if log.items is not None \
        else np.zeros(stop - start, np.int32)
    if log.values is not None:
        mean, std = scaler.params(user)
        raw = log.values[start:stop]
        scaled = scale_values(raw, mean, std)
        present = ~np.isnan(raw)
    else:
        scaled = np.zeros(stop - start, np.float32)
        present = np.zeros(stop - start, bool)
    return user, ts, items, scaled, present


def _split_for(ends_by_user: list, arrays: list, window: int, horizon: int) -> Split:
    """Encode the windows ending at `ends` of every user, with their targets."""
    parts = []
    for (user, ts, items, scaled, present), ends in zip(arrays, ends_by_user):
        ends = np.asarray(ends, np.int64)
        if len(ends) == 0:
            continue
        inputs = encode_sequence(ts, items, scaled, ends, window)
        item_t = items[ends]
        item_w = ((item_t != PAD_INDEX) & (item_t != OOV_INDEX)).astype(np.float32)
        H = max(horizon, 1)
        idx = np.minimum(ends[:, None] + np.arange(H)[None, :], len(ts) - 1)
        value_t = scaled[idx]
        value_w = (present[idx].all(axis=1) & (ends + H <= len(ts))).astype(np.float32)
        parts.append((inputs, item_t, item_w, value_t, value_w, np.full(len(ends), user, dtype=object)))
    if not parts:
        raise ValueError("no windows: every user has too few events for this split")
    cat = lambda k: np.concatenate([p[0][k] for p in parts])
    return Split({k: cat(k) for k in parts[0][0]},
                 np.concatenate([p[1] for p in parts]).astype(np.int32),
                 np.concatenate([p[2] for p in parts]),
                 np.concatenate([p[3] for p in parts]).astype(np.float32),
                 np.concatenate([p[4] for p in parts]),
                 np.concatenate([p[5] for p in parts]))


def prepare(log: EventLog, window: int, horizon: int = 0, min_events: int = 5,
            per_entity_scaler: bool | None = None, vocab: Vocabulary | None = None,
            scaler: ValueScaler | None = None) -> Prepared:
    """Split, fit vocabulary and scaler on train, and encode all windows (see module docstring).

    Pass a bundle's `vocab` and `scaler` to evaluate that bundle with its own encoding.
    """
    log = log.sorted()
    H = max(horizon, 1)
    runs = [(u, a, b) for u, a, b in log.user_runs() if b - a >= max(min_events, 2 * H + 1)]
    if not runs:
        raise ValueError(f"no entity has at least {max(min_events, 2 * H + 1)} events")
    train_rows = np.concatenate([np.arange(a, b - 2 * H if horizon > 1 else b - 2) for _, a, b in runs])
    if per_entity_scaler is None:
        per_entity_scaler = log.values is not None and len(runs) <= 100
    vocab = vocab or fit_vocabulary(log, train_rows)
    scaler = scaler or fit_scaler(log, train_rows, per_entity_scaler)
    arrays = [_user_arrays(log, a, b, vocab, scaler) for _, a, b in runs]
    lengths = [b - a for _, a, b in runs]
    if horizon > 1:  # forecast blocks: test = last H, val = the H before, train strictly before
        train_ends = [np.arange(1, n - 3 * H + 1) for n in lengths]
        val_ends = [[n - 2 * H] for n in lengths]
        test_ends = [[n - H] for n in lengths]
    else:  # leave-last-out
        train_ends = [np.arange(1, n - 2) for n in lengths]
        val_ends = [[n - 2] for n in lengths]
        test_ends = [[n - 1] for n in lengths]
    counts = np.bincount(np.concatenate([a[2][: n - 2] for a, n in zip(arrays, lengths)]),
                         minlength=len(vocab)).astype(np.float64)
    counts[[PAD_INDEX, OOV_INDEX]] = 0
    return Prepared(vocab, scaler, window, horizon,
                    _split_for(train_ends, arrays, window, horizon),
                    _split_for(val_ends, arrays, window, horizon),
                    _split_for(test_ends, arrays, window, horizon), counts)

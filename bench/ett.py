"""ETTh1/ETTm1 under the published long-horizon protocol (Informer, DLinear, PatchTST code).

Rows of the wide file are cut by index: train [0, 8640), validation
[8640 - L, 11520), test [11520 - L, 14400) for hourly data, every boundary x4
for 15-minute data (the last rows are never used). A z-score per channel is
fitted on the train rows only and every metric is computed on z-scored values.
Channel independence: each of the 7 columns is an entity with its own series,
one shared model reads them all, and MSE/MAE average every channel, window and
step. Test windows are every window with stride 1, none dropped.

The boundaries and the scaler are `training.data.splits` (`ett_split`,
`fit_zscore`). Windows are built by `streamer.features.encode_sequence` (the serving encoding),
one channel at a time so that ETTm1's test set (80k windows of 512 steps) never
sits in memory at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.features import ValueScaler, Vocabulary, encode_sequence
from training.data.splits import ett_split, fit_zscore
from training.dataset import Prepared, Split

SEASON_STEPS = {"h": 24, "15min": 96}  # one day, for the seasonal-naive baseline


def channel_windows(ts: np.ndarray, series: np.ndarray, starts: np.ndarray, window: int, horizon: int,
                    name: str = "") -> Split:
    """The windows of one z-scored channel that start at `starts`: inputs [N, L], targets [N, H]."""
    ends = np.asarray(starts, np.int64) + window
    values = series.astype(np.float32)
    inputs = encode_sequence(ts, np.zeros(len(ts), np.int32), values, ends, window)
    targets = values[ends[:, None] + np.arange(horizon)[None, :]]
    n = len(ends)
    return Split(inputs, np.zeros(n, np.int32), np.zeros(n, np.float32), targets,
                 np.ones(n, np.float32), np.full(n, name, dtype=object))


def concat_splits(parts: list[Split]) -> Split:
    cat = lambda get: np.concatenate([get(p) for p in parts])
    return Split({k: cat(lambda p: p.inputs[k]) for k in parts[0].inputs}, cat(lambda p: p.item_targets),
                 cat(lambda p: p.item_weights), cat(lambda p: p.value_targets), cat(lambda p: p.value_weights),
                 cat(lambda p: p.users))


@dataclass
class EttData:
    name: str
    ts: np.ndarray
    channels: list[str]
    scaled: np.ndarray  # [rows, channels], z-scored with the train statistics
    scaler: ValueScaler
    freq: str  # "h" or "15min" (`training.data.splits.ett_split`)
    window: int

    def starts(self, which: str, horizon: int, stride: int = 1) -> np.ndarray:
        return ett_split(len(self.ts), self.window, horizon, self.freq).starts(which)[::stride]

    def windows(self, which: str, horizon: int, stride: int = 1, channel: int | None = None) -> Split:
        """Every `stride`-th window of split `which` ('train', 'val', 'test'), all channels or one."""
        starts = self.starts(which, horizon, stride)
        chosen = range(len(self.channels)) if channel is None else [channel]
        return concat_splits([channel_windows(self.ts, self.scaled[:, c], starts, self.window, horizon,
                                              self.channels[c]) for c in chosen])

    def prepared(self, horizon: int, train_stride: int = 1, val_stride: int = 1) -> Prepared:
        """What `training.train.fit` reads (its test split is the validation split: fit never reads it)."""
        val = self.windows("val", horizon, val_stride)
        return Prepared(Vocabulary([]), self.scaler, self.window, horizon,
                        self.windows("train", horizon, train_stride), val, val)


def load_ett_data(ts: np.ndarray, channels: list[str], matrix: np.ndarray, name: str, window: int) -> EttData:
    """Fit the train-only z-score per channel and scale a wide ETT matrix (rows = time steps)."""
    freq = "15min" if np.median(np.diff(ts[:100])) < 3600 else "h"
    zscore = fit_zscore(matrix, ett_split(len(ts), window, 1, freq).train)
    scaler = ValueScaler(0.0, 1.0, {c: (float(m), float(s)) for c, m, s in zip(channels, *zscore)})
    return EttData(name, ts, list(channels), zscore.transform(matrix), scaler, freq, window)

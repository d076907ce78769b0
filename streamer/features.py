"""Window -> model inputs: the one encoding shared by training and serving.

Train/serve skew is the classic streaming-ML bug, so there is exactly one
definition of the model's inputs, and it lives here (the streamer side, which
the trainer imports). A window is a user's most recent events, oldest first,
at most L of them; it is left-padded to L and becomes four arrays:

- `items`  int32   item index (0 = padding or no item, 1 = out of vocabulary)
- `values` float32 the event's value, scaled by the bundle's scaler (0 if none)
- `dts`    float32 log1p(seconds since the previous event in the window), 0 for the first
- `mask`   float32 1 for a real event, 0 for padding

`encode_sequence` builds every window of one long sequence at once (training,
vectorised); `encode_windows` builds a batch of independent windows (serving).
A test proves the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

INPUT_NAMES = ("items", "values", "dts", "mask")
ITEM_SCORES = "item_scores"
FORECAST = "forecast"
PAD_INDEX = 0
OOV_INDEX = 1
# Scaled values are clipped to +-MAX_SCALED: a finite but absurd value (1.5e308 is a valid event) would
# otherwise become inf in float32 and turn the model's outputs into NaN. No real z-score comes near it.
MAX_SCALED = 1e6
RESERVED = ("[PAD]", "[OOV]")


class Vocabulary:
    """Item ids <-> indices. Index = line number of items.txt; lines 0-1 are reserved."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids: list[str] = list(RESERVED) + [str(i) for i in item_ids]
        self._index = {item: idx for idx, item in enumerate(self.item_ids) if idx >= len(RESERVED)}
        if len(self._index) != len(self.item_ids) - len(RESERVED):
            raise ValueError("item vocabulary contains duplicate ids")
        # lookup(item_id, default): the map's own dict.get, bound once; the batch encoder calls it
        # once per window entry (~25k times per batch), where a Python-level method call would show
        self.lookup = self._index.get

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self, item_id: str | None) -> int:
        if item_id is None:
            return PAD_INDEX
        return self._index.get(item_id, OOV_INDEX)

    def save(self, path: Path) -> None:
        path.write_text("".join(f"{item}\n" for item in self.item_ids), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls.from_bytes(path.read_bytes(), path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str | Path) -> "Vocabulary":
        """The vocabulary in items.txt's bytes; `source` names the file in errors.

        Why from bytes: `load_bundle` builds it from the very bytes whose sha256 it checked.
        """
        # universal newlines, as Path.read_text reads: a vocabulary saved on Windows (\r\n) loads the same
        lines = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if tuple(lines[: len(RESERVED)]) != RESERVED:
            raise ValueError(f"{source}: the first lines must be {RESERVED}, got {lines[:2]}")
        return cls(lines[len(RESERVED):])


@dataclass(frozen=True)
class ValueScaler:
    """z-score for `value`: global, optionally overridden per entity (ETT channels, tickers)."""

    mean: float = 0.0
    std: float = 1.0
    per_entity: dict[str, tuple[float, float]] = field(default_factory=dict)

    def params(self, user_id: str) -> tuple[float, float]:
        return self.per_entity.get(user_id, (self.mean, self.std))

    def to_dict(self) -> dict:
        return {"kind": "zscore", "mean": self.mean, "std": self.std,
                "per_entity": {k: [m, s] for k, (m, s) in self.per_entity.items()}}

    @classmethod
    def from_dict(cls, raw: dict) -> "ValueScaler":
        if raw.get("kind", "zscore") != "zscore":
            raise ValueError(f"unknown value scaler kind {raw.get('kind')!r}")
        per = {str(k): (float(v[0]), float(v[1])) for k, v in raw.get("per_entity", {}).items()}
        return cls(float(raw["mean"]), float(raw["std"]), per)


def scale_values(raw: np.ndarray, mean, std) -> np.ndarray:
    """z-scored values as the models read them: float64 arithmetic, clipped to +-MAX_SCALED, then
    float32; NaN (no value) becomes 0. `mean` and `std` broadcast (scalars or per-row arrays)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.clip((raw - mean) / std, -MAX_SCALED, MAX_SCALED)
    return np.where(np.isnan(raw), 0.0, scaled).astype(np.float32)


def log_dt(ts: np.ndarray) -> np.ndarray:
    """log1p of the gap to the previous timestamp (0 for the first; negatives clip to 0, and a gap
    too large for a float64, between timestamps near +-1.8e308, to the largest float64)."""
    out = np.zeros(len(ts), dtype=np.float32)
    if len(ts) > 1:
        with np.errstate(over="ignore"):
            gaps = np.diff(np.asarray(ts, dtype=np.float64))
        out[1:] = np.log1p(np.clip(gaps, 0.0, np.finfo(np.float64).max))
    return out


def encode_sequence(ts: np.ndarray, items: np.ndarray, values: np.ndarray,
                    ends: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """Inputs for the windows seq[max(0, e-window):e] for each e in `ends` (vectorised).

    `ts`, `items`, `values` describe one entity's sequence in event-time order;
    `values` must already be scaled (0 where an event has no value).
    """
    ends = np.asarray(ends, dtype=np.int64)
    n = len(ts)
    pad = lambda arr, dtype: np.concatenate([np.zeros(window, dtype), np.asarray(arr, dtype)])
    dts_full = pad(log_dt(ts), np.float32)
    mask_full = pad(np.ones(n), np.float32)
    # window for end e is padded[e : e + window] (the padding shifts indices by `window`)
    take = lambda full: sliding_window_view(full, window)[ends]
    out = {
        "items": take(pad(items, np.int32)).copy(),
        "values": take(pad(values, np.float32)).copy(),
        "dts": take(dts_full).copy(),
        "mask": take(mask_full).copy(),
    }
    first_real = np.maximum(0, window - ends)  # column of each window's oldest event
    has_event = ends > 0
    out["dts"][np.nonzero(has_event)[0], first_real[has_event]] = 0.0
    return out


def encode_windows(windows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   window: int) -> dict[str, np.ndarray]:
    """Inputs for a batch of independent windows, each (ts, items, scaled values), oldest first."""
    lengths = np.array([len(ts) for ts, _, _ in windows], np.int64)
    if not len(windows):
        return encode_batch(np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.float32), lengths, window)
    return encode_batch(np.concatenate([np.asarray(ts, np.float64) for ts, _, _ in windows]),
                        np.concatenate([np.asarray(items, np.int32) for _, items, _ in windows]),
                        np.concatenate([np.asarray(values, np.float32) for _, _, values in windows]),
                        lengths, window)


def encode_batch(ts: np.ndarray, items: np.ndarray, values: np.ndarray, lengths: np.ndarray,
                 window: int) -> dict[str, np.ndarray]:
    """`encode_windows` on the batch's windows laid end to end (row r holds lengths[r] entries).

    The serving hot path: no Python loop per row. Each row keeps its newest `window` entries,
    right-aligned; the gaps are the same float64 operations as `log_dt` on each row, so the
    result is bit-identical to encoding the rows one by one.
    """
    batch = len(lengths)
    out = {
        "items": np.zeros((batch, window), np.int32),
        "values": np.zeros((batch, window), np.float32),
        "dts": np.zeros((batch, window), np.float32),
        "mask": np.zeros((batch, window), np.float32),
    }
    total = int(lengths.sum()) if batch else 0
    if total == 0:
        return out
    starts = np.cumsum(lengths) - lengths  # offset of each row's first entry
    kept = np.minimum(lengths, window)
    first_kept = starts + lengths - kept  # offset of each row's oldest kept entry
    rows = np.repeat(np.arange(batch), kept)
    flat = np.repeat(first_kept - np.cumsum(kept) + kept, kept) + np.arange(int(kept.sum()))
    cols = flat - np.repeat(first_kept, kept) + np.repeat(window - kept, kept)
    ts_kept = np.asarray(ts, np.float64)[flat]
    gaps = np.zeros(len(flat), np.float64)
    with np.errstate(over="ignore"):
        gaps[1:] = np.diff(ts_kept)
    gaps[np.cumsum(kept)[kept > 0] - kept[kept > 0]] = 0.0  # each row's oldest kept entry has no gap
    dts = np.log1p(np.clip(gaps, 0.0, np.finfo(np.float64).max)).astype(np.float32)
    out["items"][rows, cols] = np.asarray(items)[flat]
    out["values"][rows, cols] = np.asarray(values)[flat]
    out["dts"][rows, cols] = dts
    out["mask"][rows, cols] = 1.0
    return out

"""Baselines scored on the model's own evaluation windows, pure numpy.

A model's HR@10 or MSE means little alone: these say what "no learning"
achieves on exactly the same rows, so the manifest can report the lift.

Recommendation baselines return scores [B, V] that `metrics.rank_of_targets`
ranks like model scores. Their scores are all distinct (ties broken by item
index) so the pessimistic tie rule does not punish them for ties they never
meant. Note that repeat-last-item only differs from popularity when history
items are not excluded from the ranking.

Forecast baselines take the lookback values [B, L] in the model's left-padded
layout (`streamer.features`), an optional mask [B, L] (1 = real event), and the
horizon H, and return [B, H]. Rows with no usable history get `fill` (NaN by
default, so a missing history shows up in the metrics instead of hiding).
"""
from __future__ import annotations

import numpy as np

from streamer.features import PAD_INDEX


def popularity_scores(train_item_counts: np.ndarray) -> np.ndarray:
    """float32 [V]: V for the most frequent item down to 1, ties to the lower index."""
    counts = np.asarray(train_item_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_item_counts must be [V], got shape {counts.shape}")
    order = np.argsort(-counts, kind="stable")
    scores = np.empty(len(counts), dtype=np.float32)
    scores[order] = np.arange(len(counts), 0, -1)
    return scores


def most_popular_scores(train_item_counts: np.ndarray, batch_size: int) -> np.ndarray:
    """The same popularity ranking for every row, as a read-only broadcast view [B, V] (no copy)."""
    return np.broadcast_to(popularity_scores(train_item_counts), (batch_size, len(train_item_counts)))


def repeat_last_item_scores(window_items: np.ndarray, num_items: int,
                            train_item_counts: np.ndarray | None = None) -> np.ndarray:
    """float32 [B, V]: window items by recency (latest highest), then the rest by popularity.

    Without `train_item_counts` the rest fall back to item-index order. Scores
    are a full matrix; for very large B call it per batch of rows.
    """
    items = np.asarray(window_items)
    if items.ndim != 2:
        raise ValueError(f"window_items must be [B, L], got shape {items.shape}")
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"window item indices must lie in [0, {num_items})")
    counts = np.zeros(num_items) if train_item_counts is None else train_item_counts
    if len(counts) != num_items:
        raise ValueError(f"train_item_counts has {len(counts)} items, expected {num_items}")
    scores = np.tile(popularity_scores(counts), (len(items), 1))
    for col in range(items.shape[1]):  # oldest to newest: a repeated item keeps its latest slot
        rows = np.nonzero(items[:, col] != PAD_INDEX)[0]
        scores[rows, items[rows, col]] = num_items + 1 + col
    return scores


def _check_lookback(values: np.ndarray, horizon: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be [B, L], got shape {values.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    real = np.ones(values.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    if real.shape != values.shape:
        raise ValueError(f"mask shape {real.shape} != values shape {values.shape}")
    return values, real


def repeat_last_value(values: np.ndarray, horizon: int, mask: np.ndarray | None = None, *,
                      fill: float = np.nan) -> np.ndarray:
    """[B, H]: each row's last real value, repeated across the horizon (the persistence forecast)."""
    values, real = _check_lookback(values, horizon, mask)
    last_col = values.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1)
    last = np.where(real.any(axis=1), values[np.arange(len(values)), last_col], fill)
    return np.repeat(last[:, None], horizon, axis=1)


def seasonal_naive(values: np.ndarray, horizon: int, mask: np.ndarray | None = None, *,
                   period: int, fill: float = np.nan) -> np.ndarray:
    """[B, H]: step h (1-based) = the value one season before it in the last observed season.

    y_hat[t + h] = y[t + h - period * ceil(h / period)], so for H > period the
    last season repeats rather than reading forecasts of itself. A season-ago
    slot that is padding gets `fill`.
    """
    values, real = _check_lookback(values, horizon, mask)
    window = values.shape[1]
    if not 1 <= period <= window:
        raise ValueError(f"period must lie in [1, L={window}], got {period}")
    cols = window - period + np.arange(horizon) % period
    return np.where(real[:, cols], values[:, cols], fill)


def train_mean(values: np.ndarray, horizon: int, mask: np.ndarray | None = None, *,
               mean: float | np.ndarray) -> np.ndarray:
    """[B, H]: the training mean (a scalar, or one per row for per-entity scalers) for every step."""
    values, _ = _check_lookback(values, horizon, mask)
    per_row = np.broadcast_to(np.asarray(mean, dtype=np.float64), (len(values),))
    return np.repeat(per_row[:, None], horizon, axis=1)

"""Offline evaluation metrics, pure numpy: full-ranking HR/NDCG and MSE/MAE/RMSE.

Ranking protocol (record it next to the numbers in the bundle manifest):

- Full ranking. Every real item is a candidate; there are no sampled
  negatives, because sampled HR/NDCG inflate the numbers and do not even
  preserve the order of models (Krichene & Rendle, KDD 2020).
- Indices 0 (padding) and 1 (out of vocabulary) are never candidates: the
  streamer never recommends them (see `streamer.features`).
- `exclude` removes items per row, typically the user's window, because the
  streamer recommends only items the user has not interacted with in it.
  The target itself is never removed from its own ranking.
- Ties are pessimistic by default: rank = number of other candidates whose
  score is >= the target's. With the common "strictly greater" rule a model
  that collapsed to constant scores would rank every target first and report
  HR@k = 1.0; pessimistic ties give it the worst rank instead.

Ranks are 0-based (0 = the target is the top candidate). With V ~ 12k items
and B ~ 22k users each [B, V] boolean temporary would be ~260 MB (float32
scores ~1 GB), so `rank_of_targets` works through the rows in chunks.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from streamer.features import OOV_INDEX, PAD_INDEX

Exclude = np.ndarray | Sequence[Sequence[int] | np.ndarray] | None


def rank_of_targets(scores: np.ndarray, targets: np.ndarray, exclude: Exclude = None,
                    ignore: Sequence[int] = (PAD_INDEX, OOV_INDEX), *,
                    ties: Literal["pessimistic", "optimistic"] = "pessimistic",
                    chunk_rows: int = 1024) -> np.ndarray:
    """0-based rank of each row's target among that row's candidate items -> int64 [B].

    `scores` [B, V] is never written to, so a read-only broadcast view (e.g. the
    most-popular baseline) costs no memory. `exclude` is a boolean mask [B, V],
    or per-row item indices: a list of arrays, or an int matrix [B, L] such as
    the left-padded window items (padding 0 is ignored anyway). `ties`:
    "pessimistic" counts equal-scored candidates above the target,
    "optimistic" counts only strictly greater ones.
    """
    scores, targets = _check_ranking_inputs(scores, targets, exclude, ignore)
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    ranks = np.empty(len(targets), dtype=np.int64)
    for lo in range(0, len(targets), chunk_rows):
        hi = min(lo + chunk_rows, len(targets))
        ranks[lo:hi] = _rank_chunk(scores[lo:hi], targets[lo:hi],
                                   _exclusion_mask(exclude, lo, hi, scores.shape[1]),
                                   ignore, ties == "pessimistic")
    return ranks


def _check_ranking_inputs(scores: np.ndarray, targets: np.ndarray, exclude: Exclude,
                          ignore: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, V], got shape {scores.shape}")
    if targets.shape != (scores.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be int [{scores.shape[0]}], got {targets.dtype} {targets.shape}")
    num_items = scores.shape[1]
    if len(targets) and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"targets must lie in [0, {num_items}), got [{targets.min()}, {targets.max()}]")
    ignored = np.isin(targets, np.asarray(ignore, dtype=np.int64))
    if ignored.any():
        raise ValueError(f"{int(ignored.sum())} targets are ignored indices {tuple(ignore)} "
                         "(padding/OOV); drop those rows before ranking")
    if exclude is not None and len(exclude) != len(targets):
        raise ValueError(f"exclude has {len(exclude)} rows, targets has {len(targets)}")
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool and exclude.shape != scores.shape:
        raise ValueError(f"a boolean exclude mask must be {scores.shape}, got {exclude.shape}")
    return scores, targets.astype(np.int64, copy=False)


def _exclusion_mask(exclude: Exclude, lo: int, hi: int, num_items: int) -> np.ndarray | None:
    """Rows lo:hi of `exclude` as a boolean mask [hi - lo, V]."""
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
        return exclude[lo:hi]
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        cols = exclude[lo:hi].astype(np.int64).ravel()
        rows = np.repeat(np.arange(hi - lo), exclude.shape[1])
    else:
        per_row = [np.asarray(x, dtype=np.int64).ravel() for x in exclude[lo:hi]]
        rows = np.repeat(np.arange(hi - lo), [len(x) for x in per_row])
        cols = np.concatenate(per_row) if per_row else np.empty(0, np.int64)
    if len(cols) and (cols.min() < 0 or cols.max() >= num_items):
        raise ValueError(f"exclude indices must lie in [0, {num_items})")
    mask = np.zeros((hi - lo, num_items), dtype=bool)
    mask[rows, cols] = True
    return mask


def _rank_chunk(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None,
                ignore: Sequence[int], pessimistic: bool) -> np.ndarray:
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a NaN compares as neither above nor below the target")
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    candidate = np.ones(scores.shape, dtype=bool) if excluded is None else ~excluded
    candidate[:, list(ignore)] = False
    candidate[rows, targets] = False  # the target is not its own competitor
    above = scores >= target_scores if pessimistic else scores > target_scores
    above &= candidate
    return np.count_nonzero(above, axis=1)


def _check_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@k: share of rows whose target is in the top k (rank < k)."""
    ranks = _check_ranks(ranks, k)
    return float(np.mean(ranks < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item per row: mean of 1/log2(rank + 2) if rank < k else 0."""
    ranks = _check_ranks(ranks, k)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float(gains.mean())


def ranking_report(ranks: np.ndarray, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """{"HR@k": ..., "NDCG@k": ...} for each k, in the order of `ks`."""
    report: dict[str, float] = {}
    for k in ks:
        report[f"HR@{k}"] = hit_rate(ranks, k)
        report[f"NDCG@{k}"] = ndcg(ranks, k)
    return report


def hr_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """HR@k for k = 1..max_k as float64 [max_k]; element i is HR@(i + 1)."""
    ranks = _check_ranks(ranks, max_k)
    hits = np.bincount(ranks[ranks < max_k], minlength=max_k)
    return np.cumsum(hits) / len(ranks)


def _check_pair(pred: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same shape required: silently broadcasting [B, H] against [B, 1] is a classic metric bug."""
    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if pred.shape != actual.shape:
        raise ValueError(f"pred shape {pred.shape} != actual shape {actual.shape}")
    if pred.size == 0:
        raise ValueError("no values to evaluate")
    return pred, actual


def mse(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean squared error over every element (NaN propagates, so gaps are not hidden)."""
    pred, actual = _check_pair(pred, actual)
    return float(np.mean((pred - actual) ** 2))


def mae(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error over every element."""
    pred, actual = _check_pair(pred, actual)
    return float(np.mean(np.abs(pred - actual)))


def rmse(pred: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error, in the units of the values."""
    return float(np.sqrt(mse(pred, actual)))


def forecast_report(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """{"MSE", "MAE", "RMSE"} over all elements of any (equal) shape."""
    return {"MSE": mse(pred, actual), "MAE": mae(pred, actual), "RMSE": rmse(pred, actual)}

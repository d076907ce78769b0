"""Full-ranking validation in row batches: the same ranks without a [users, V] score matrix.

`training.train.validation_score` predicts every validation window at once and
ranks afterwards, so it holds all scores: [users, V] float32, 1.1 GB for Beauty
(22k x 12k) and 2.5 GB for a 35k-user, 18k-item catalogue, built by Keras'
predict loop and concatenated before the first rank is counted. Here each batch
of rows is scored and ranked before the next is scored, so memory is
[batch_rows, V] and the ranks are those of the unbatched path for the same
scores (`tests/test_sequence_fit.py` checks this). `ranks_in_batches` ranks
with `training.metrics.rank_of_targets` (any exclusion); validation, which
excludes nothing, ranks inside the scoring graph (`ranks_of_scores`: the same
pessimistic ties and ignored indices 0 and 1), which saves the numpy passes over
[rows, V] that otherwise take as long as the scoring itself.
"""
from __future__ import annotations

import weakref
from typing import Callable

import numpy as np
import tensorflow as tf

from streamer.features import INPUT_NAMES, ITEM_SCORES, OOV_INDEX
from training.dataset import Split
from training.metrics import Exclude, rank_of_targets, ranking_report

ScoreFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def ranks_of_scores(scores, targets):
    """`rank_of_targets(scores, targets)` (no exclusion, pessimistic ties, 0 and 1 ignored) in TensorFlow:
    scores [B, V] float, targets [B] int -> int64 [B]. A NaN score is an error, as there."""
    tf.debugging.assert_equal(tf.reduce_any(tf.math.is_nan(scores)), False,
                              message="scores contain NaN; a NaN compares as neither above nor below the target")
    targets = tf.cast(targets, tf.int32)
    own = tf.gather(scores, targets, axis=1, batch_dims=1)[:, None]
    columns = tf.range(tf.shape(scores)[1])[None, :]
    above = (scores >= own) & (columns > OOV_INDEX) & (columns != targets[:, None])
    return tf.reduce_sum(tf.cast(above, tf.int64), axis=1)


_RANK_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def item_rank_fn(model) -> Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]:
    """(inputs, targets) -> ranks [b] of `model`'s item scores, scored and ranked in one compiled graph.

    Cached per model, so validating every epoch traces the graph once."""
    if model not in _RANK_FNS:
        ref = weakref.ref(model)  # a strong reference in the cached value would keep every model alive

        @tf.function(reduce_retracing=True)
        def ranks(batch, targets):
            return ranks_of_scores(ref()(batch, training=False)[ITEM_SCORES], targets)

        _RANK_FNS[model] = lambda inputs, targets: ranks([tf.constant(inputs[k]) for k in INPUT_NAMES],
                                                         tf.constant(targets)).numpy()
    return _RANK_FNS[model]


def item_score_fn(model) -> ScoreFn:
    """inputs (a dict of [b, L] arrays) -> item scores [b, V] from `model` in inference mode (compiled once)."""
    @tf.function(reduce_retracing=True)
    def scores(batch):
        return model(batch, training=False)[ITEM_SCORES]

    return lambda inputs: scores([tf.constant(inputs[k]) for k in INPUT_NAMES]).numpy()


def ranks_in_batches(score_fn: ScoreFn, inputs: dict[str, np.ndarray], targets: np.ndarray,
                     exclude: Exclude = None, batch_rows: int = 2048) -> np.ndarray:
    """0-based rank of each row's target (as `rank_of_targets`), scoring `batch_rows` rows at a time."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    targets = np.asarray(targets)
    ranks = np.empty(len(targets), dtype=np.int64)
    for lo in range(0, len(targets), batch_rows):
        hi = min(lo + batch_rows, len(targets))
        scores = score_fn({k: v[lo:hi] for k, v in inputs.items()})
        ranks[lo:hi] = rank_of_targets(scores, targets[lo:hi], None if exclude is None else exclude[lo:hi])
    return ranks


def validation_item_ranks(model, split: Split, batch_rows: int = 2048) -> np.ndarray:
    """Ranks (history kept, as `training.train.validation_score` ranks) of the item targets of every row
    with an item weight, `batch_rows` rows at a time: the same as
    `rank_of_targets(model.predict(...)[ITEM_SCORES][rows], split.item_targets[rows])`."""
    rows = np.nonzero(split.item_weights > 0)[0]
    rank_fn, targets = item_rank_fn(model), split.item_targets[rows]
    parts = [rank_fn({k: split.inputs[k][rows[lo:lo + batch_rows]] for k in INPUT_NAMES}, targets[lo:lo + batch_rows])
             for lo in range(0, len(rows), batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def item_validation_score(model, split: Split, batch_rows: int = 2048) -> dict[str, float]:
    """`validation_score` of a model whose only output is the item head, ranked in row batches:
    {'val_HR@10', 'val_NDCG@10', 'score' = val_NDCG@10}."""
    ranks = validation_item_ranks(model, split, batch_rows)
    report = {f"val_{k}": v for k, v in ranking_report(ranks, ks=(10,)).items()}
    report["score"] = report["val_NDCG@10"]
    return report

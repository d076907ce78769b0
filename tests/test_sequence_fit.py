"""All-position training at large catalogues: sampled softmax, refit on validation targets, batched ranking."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from bench.recsys import leave_one_out
from training.data.eventlog import EventLog
from training.metrics import rank_of_targets
from training.sequence_fit import NegativeSampler, sampled_softmax_loss, user_sequences


def _head(rng, rows: int = 7, vocab: int = 30, width: int = 5):
    states = rng.normal(size=(rows, width)).astype(np.float32)
    embeddings = rng.normal(size=(vocab, width)).astype(np.float32)
    bias = rng.normal(size=vocab).astype(np.float32)
    return states, embeddings, bias


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


def test_sampled_softmax_over_the_whole_catalogue_is_the_full_softmax() -> None:
    """Negatives = every real item (the target among them, masked as an accidental hit): the loss is
    exactly the full softmax cross-entropy over the real items 2..V-1."""
    rng = np.random.default_rng(0)
    states, embeddings, bias = _head(rng)
    targets = rng.integers(2, 30, size=7).astype(np.int32)
    negatives, correction = NegativeSampler(30, 10_000, "uniform", seed=0).draw()
    assert negatives.tolist() == list(range(2, 30)) and not correction.any()
    got = float(sampled_softmax_loss(states, targets, embeddings, bias, negatives, correction))
    full = states @ embeddings.T + bias
    assert got == pytest.approx(_cross_entropy(full[:, 2:], targets - 2), rel=1e-5)


def test_accidental_hits_are_masked_per_row() -> None:
    rng = np.random.default_rng(1)
    states, embeddings, bias = _head(rng, rows=2)
    targets = np.array([3, 7], np.int32)
    negatives = np.array([2, 3, 4, 5], np.int32)  # row 0's target is a negative, row 1's is not
    correction = np.full(4, -0.5, np.float32)
    got = float(sampled_softmax_loss(states, targets, embeddings, bias, negatives, correction))
    logits = states @ embeddings.T + bias
    row0 = np.r_[logits[0, 3], logits[0, [2, 4, 5]] + 0.5]  # the target competes once, uncorrected
    row1 = np.r_[logits[1, 7], logits[1, [2, 3, 4, 5]] + 0.5]
    want = np.mean([_cross_entropy(row0[None], np.array([0])), _cross_entropy(row1[None], np.array([0]))])
    assert got == pytest.approx(want, rel=1e-5)
    unmasked = np.r_[logits[0, 3], logits[0, [2, 3, 4, 5]] + 0.5]
    assert _cross_entropy(unmasked[None], np.array([0])) > _cross_entropy(row0[None], np.array([0])) + 1e-3


def test_samplers_draw_real_items_with_their_logq() -> None:
    uniform = NegativeSampler(1002, 100, "uniform", seed=3)
    items, correction = uniform.draw()
    assert len(set(items.tolist())) == 100 and items.min() >= 2 and items.max() <= 1001
    np.testing.assert_allclose(correction, math.log(100 / 1000), rtol=1e-6)
    counts = np.r_[0.0, 0.0, np.arange(1000, dtype=np.float64)]  # popularity grows with the index
    popular = NegativeSampler(1002, 500, "popularity", counts=counts, seed=3)
    draws = np.concatenate([popular.draw()[0] for _ in range(200)])
    assert draws.min() >= 2 and draws.max() <= 1001
    q = (counts[2:] + 1) / (counts[2:] + 1).sum()
    top, bottom = np.mean(draws >= 902), np.mean(draws < 102)
    assert top == pytest.approx(q[900:].sum(), rel=0.05) and bottom == pytest.approx(q[:100].sum(), rel=0.2)
    picks, correction = popular.draw()
    np.testing.assert_allclose(correction, np.log(500 * q[picks - 2]), rtol=1e-5)


def _toy_log() -> EventLog:
    users = np.repeat(np.array(["u1", "u2", "u3"], dtype=object), [9, 5, 3])
    items = np.array(list("abcdefghi") + list("bcdGH") + list("axy"), dtype=object)
    ts = np.concatenate([np.arange(9), np.arange(5), np.arange(3)]).astype(np.float64)
    return EventLog(users, ts, items, None, "toy")


def test_refit_targets_add_the_validation_item_and_never_the_test_item() -> None:
    log = _toy_log()
    data = leave_one_out(log, window=4)
    ids = lambda row: [data.vocab.item_ids[i] for i in row if i > 0]
    _, before = user_sequences(log, data.vocab, window=4)
    inputs, after = user_sequences(log, data.vocab, window=4, include_validation=True)
    # u1 (a..i): train b..g (positions 1..n-3), validation h, test i; u2 (b c d G H): c, d, G, test H;
    # u3 (a x y): no training target, validation x, test y
    assert sorted(ids(before.ravel())) == sorted(list("bcdefg") + list("cd"))
    assert sorted(ids(after.ravel())) == sorted(list("bcdefgh") + list("cdG") + ["x"])
    assert sorted(ids(data.val.item_targets)) == sorted(["h", "G", "x"])
    assert sorted(ids(data.test.item_targets)) == sorted(["i", "H", "y"])
    windows = ids(inputs["items"].ravel()) + ids(after.ravel())
    assert not {"i", "H", "y"} & set(windows)  # a test item is neither an input nor a target


def test_refit_trains_the_best_epoch_count_without_validation() -> None:
    from training.models import ModelSpec
    from training.sequence_fit import fit_all_positions
    from training.train import FitConfig

    rng = np.random.default_rng(0)
    users = np.repeat(np.array([f"u{i}" for i in range(60)], dtype=object), 8)
    starts = rng.integers(0, 20, 60)
    items = np.array([f"i{(s + k) % 20}" for s in starts for k in range(8)], dtype=object)  # i -> i+1
    log = EventLog(users, np.tile(np.arange(8.0), 60), items, None, "toy")
    data = leave_one_out(log, window=6)
    spec = ModelSpec("transformer", 6, 0, len(data.vocab), width=8, heads=1)
    config = FitConfig(epochs=4, batch_size=32, learning_rate=1e-2, patience=2, seed=0)
    result = fit_all_positions(spec, data, log, config, progress=False, negatives=8, refit=True)
    fit, refit = [h for h in result.history if "phase" not in h], [h for h in result.history if "phase" in h]
    assert 1 <= result.best_epoch <= len(fit) and len(refit) == result.best_epoch
    assert all("val_NDCG@10" in h for h in fit) and not any("val_NDCG@10" in h for h in refit)
    assert "refit" in result.stopped_by


def test_batched_ranks_equal_the_unbatched_ranks() -> None:
    from training.ranking_batches import ranks_in_batches

    rng = np.random.default_rng(2)
    weights = rng.integers(-3, 4, (3, 40)).astype(np.float32)  # small integers: exact sums, many ties
    features = rng.integers(-3, 4, (101, 3)).astype(np.float32)
    targets = rng.integers(2, 40, 101)
    history = rng.integers(0, 40, (101, 5))
    score = lambda inputs: inputs["x"] @ weights  # row-independent scores
    want = rank_of_targets(features @ weights, targets, exclude=history)
    for rows in (1, 7, 100, 101, 500):
        got = ranks_in_batches(score, {"x": features}, targets, exclude=history, batch_rows=rows)
        np.testing.assert_array_equal(got, want)


def test_batched_validation_score_matches_validation_score() -> None:
    from training.models import ModelSpec, build_model
    from training.ranking_batches import item_validation_score
    from training.train import validation_score

    log = _toy_log()
    data = leave_one_out(log, window=4)
    model = build_model(ModelSpec("lstm", 4, 0, len(data.vocab), width=8))
    want = validation_score(model, data.val)
    for rows in (2, 2048):
        assert item_validation_score(model, data.val, batch_rows=rows) == pytest.approx(want)


def test_ranks_in_the_graph_equal_rank_of_targets() -> None:
    from training.ranking_batches import ranks_of_scores

    rng = np.random.default_rng(4)
    scores = rng.integers(-2, 3, (64, 25)).astype(np.float32)  # ties everywhere, also with columns 0 and 1
    targets = rng.integers(2, 25, 64)
    np.testing.assert_array_equal(ranks_of_scores(tf.constant(scores), tf.constant(targets)).numpy(),
                                  rank_of_targets(scores, targets))
    scores[3, 7] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        ranks_of_scores(tf.constant(scores), tf.constant(targets))

"""Evaluation building blocks: metrics, baselines and plots on hand-checked cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training import baselines, metrics, plots

# --- forecast metrics --------------------------------------------------------


def test_worked_example_from_the_seed_article() -> None:
    actual = np.array([100, 102, 97, 105, 110])
    predicted = np.array([98, 103, 96, 102, 108])
    report = metrics.forecast_report(predicted, actual)
    assert report["MSE"] == pytest.approx(3.8)
    assert report["MAE"] == pytest.approx(1.8)
    assert report["RMSE"] == pytest.approx(1.9494, abs=1e-4)


def test_forecast_metrics_accept_any_shape_but_not_broadcasting() -> None:
    actual = np.arange(6.0).reshape(2, 3)
    assert metrics.mse(actual + 2, actual) == pytest.approx(4.0)
    assert metrics.rmse(actual - 2, actual) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shape"):
        metrics.mae(actual[:, :1], actual)


# --- full ranking --------------------------------------------------------------
# 8 indices: 0 = padding, 1 = OOV (scored high on purpose: must never count), items 2..7.
SCORES = np.array([
    [9, 9, 0.1, 0.5, 0.3, 0.9, 0.2, 0.4],  # target 3: only item 5 above
    [9, 9, 0.7, 0.7, 0.1, 0.2, 0.3, 0.9],  # target 2: item 7 above, item 3 tied
    [9, 9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 7: last of 6 items
], dtype=np.float32)
TARGETS = np.array([3, 2, 7])
# history per user; user 2 re-interacts with its target 7, which must stay ranked
HISTORY = [[5], [7], [0, 2, 3, 7]]


def test_full_ranking_by_hand() -> None:
    assert metrics.rank_of_targets(SCORES, TARGETS).tolist() == [1, 2, 5]
    assert metrics.rank_of_targets(SCORES, TARGETS, ties="optimistic").tolist() == [1, 1, 5]
    assert metrics.rank_of_targets(SCORES, TARGETS, HISTORY).tolist() == [0, 1, 3]
    assert metrics.rank_of_targets(SCORES, TARGETS, HISTORY, ties="optimistic").tolist() == [0, 0, 3]


def test_exclusion_as_padded_matrix_or_mask_matches_lists() -> None:
    padded = np.array([[0, 0, 0, 5], [0, 0, 0, 7], [0, 2, 3, 7]], dtype=np.int32)
    mask = np.zeros(SCORES.shape, dtype=bool)
    for row, items in enumerate(HISTORY):
        mask[row, items] = True
    assert metrics.rank_of_targets(SCORES, TARGETS, padded).tolist() == [0, 1, 3]
    assert metrics.rank_of_targets(SCORES, TARGETS, mask).tolist() == [0, 1, 3]


def test_constant_scores_rank_last_not_first() -> None:
    ranks = metrics.rank_of_targets(np.zeros((2, 8)), np.array([2, 7]))
    assert ranks.tolist() == [5, 5]


def test_bad_targets_and_nan_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="padding/OOV"):
        metrics.rank_of_targets(SCORES, np.array([3, 1, 7]))
    nan_scores = SCORES.copy()
    nan_scores[0, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.rank_of_targets(nan_scores, TARGETS)


def _reference_ranks(scores: np.ndarray, targets: np.ndarray, exclude: list[np.ndarray]) -> list[int]:
    out = []
    for row, target in enumerate(targets):
        others = [i for i in range(2, scores.shape[1]) if i != target and i not in set(exclude[row])]
        out.append(sum(scores[row, i] >= scores[row, target] for i in others))
    return out


def test_chunking_matches_unchunked_and_a_plain_loop() -> None:
    rng = np.random.default_rng(7)
    batch, num_items = 97, 40
    scores = rng.integers(0, 12, size=(batch, num_items)).astype(np.float32)  # many ties
    targets = rng.integers(2, num_items, size=batch)
    exclude = [rng.integers(0, num_items, size=rng.integers(0, 6)) for _ in range(batch)]
    expected = _reference_ranks(scores, targets, exclude)
    for chunk_rows in (1, 7, 96, 10_000):
        ranks = metrics.rank_of_targets(scores, targets, exclude, chunk_rows=chunk_rows)
        assert ranks.tolist() == expected


def test_hr_ndcg_and_curve() -> None:
    ranks = np.array([0, 1, 3])
    assert metrics.hit_rate(ranks, 1) == pytest.approx(1 / 3)
    assert metrics.hit_rate(ranks, 2) == pytest.approx(2 / 3)
    assert metrics.ndcg(ranks, 2) == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert metrics.ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 3)
    assert metrics.hr_curve(ranks, 4) == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    report = metrics.ranking_report(ranks, ks=(1, 10))
    assert list(report) == ["HR@1", "NDCG@1", "HR@10", "NDCG@10"]
    assert report["NDCG@1"] == pytest.approx(1 / 3)
    assert report["HR@10"] == 1.0


# --- baselines -----------------------------------------------------------------
COUNTS = np.array([100, 50, 3, 7, 7, 1])  # pad/OOV counts are large and must not matter


def test_most_popular_is_a_free_view_with_index_tie_break() -> None:
    scores = baselines.most_popular_scores(COUNTS, batch_size=2)
    assert scores.shape == (2, 6) and not scores.flags.writeable
    # popularity order among items 2..5: 3 (7), 4 (7, tie -> higher index later), 2 (3), 5 (1)
    assert metrics.rank_of_targets(scores, np.array([4, 2])).tolist() == [1, 2]


def test_repeat_last_item_ranks_recency_then_popularity() -> None:
    window = np.array([[0, 2, 5, 2], [0, 0, 0, 0]])
    scores = baselines.repeat_last_item_scores(window, 6, COUNTS)
    order = lambda row: [int(i) for i in np.argsort(-scores[row]) if i >= 2]
    assert order(0) == [2, 5, 3, 4]  # 2 is the latest, 5 before it, then by popularity
    assert order(1) == [3, 4, 2, 5]  # empty window: pure popularity
    by_index = baselines.repeat_last_item_scores(window, 6)
    assert [int(i) for i in np.argsort(-by_index[1]) if i >= 2] == [2, 3, 4, 5]


def test_seasonal_naive_repeats_the_last_season_beyond_one_period() -> None:
    values = np.array([[1.0, 2, 3, 4, 5]])
    assert baselines.seasonal_naive(values, 5, period=2).tolist() == [[4, 5, 4, 5, 4]]
    assert baselines.seasonal_naive(values, 7, period=3).tolist() == [[3, 4, 5, 3, 4, 5, 3]]
    padded = baselines.seasonal_naive(np.array([[0.0, 0, 7, 8]]), 3, np.array([[0, 0, 1, 1]]), period=3)
    assert np.isnan(padded[0, 0]) and padded[0, 1:].tolist() == [7, 8]
    with pytest.raises(ValueError, match="period"):
        baselines.seasonal_naive(values, 3, period=6)


def test_repeat_last_value_and_train_mean() -> None:
    values = np.array([[0.0, 0, 3, 4], [0, 0, 0, 0]])
    mask = np.array([[0, 0, 1, 1], [0, 0, 0, 0]])
    last = baselines.repeat_last_value(values, 2, mask)
    assert last[0].tolist() == [4, 4] and np.isnan(last[1]).all()
    assert baselines.repeat_last_value(values, 2, mask, fill=0.0)[1].tolist() == [0, 0]
    assert baselines.train_mean(values, 3, mean=2.5).tolist() == [[2.5] * 3] * 2
    assert baselines.train_mean(values, 2, mean=np.array([1.0, 2.0])).tolist() == [[1, 1], [2, 2]]


# --- plots ---------------------------------------------------------------------


def test_plots_write_png_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    lookback, actual = rng.normal(size=(3, 24)), rng.normal(size=(3, 6))
    mask = np.ones_like(lookback)
    mask[0, :10] = 0
    forecast_png = plots.plot_forecasts(tmp_path / "sub" / "forecast.png", lookback, actual, actual + 0.1,
                                        baseline=np.zeros_like(actual), titles=["a", "b", "c"], mask=mask)
    curve_png = plots.plot_hr_curve(tmp_path / "hr.png", {
        "model": metrics.hr_curve(np.array([0, 3, 9, 40]), 50),
        "most popular": metrics.hr_curve(np.array([5, 30, 49, 70]), 50),
    })
    for png in (forecast_png, curve_png):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000

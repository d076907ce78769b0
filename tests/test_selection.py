"""The forecast selection guard (training/selection.py) and the two-head validation score."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.ett import channel_windows  # noqa: E402
from streamer.features import FORECAST, INPUT_NAMES  # noqa: E402
from training import baselines  # noqa: E402
from training.models import ModelSpec, build_model  # noqa: E402
from training.selection import baseline_kernels, guard_forecast, start_at_baseline  # noqa: E402
from training.train import validation_score  # noqa: E402

WINDOW, HORIZON, PERIOD = 48, 6, 12


def _windows(series: np.ndarray, count: int = 300):
    ts = np.arange(len(series), dtype=np.float64) * 3600.0
    starts = np.arange(0, min(count, len(series) - WINDOW - HORIZON))
    return channel_windows(ts, series.astype(np.float32), starts, WINDOW, HORIZON)


def _predict(model, split) -> np.ndarray:
    return np.asarray(model.predict([split.inputs[k] for k in INPUT_NAMES], verbose=0)[FORECAST], np.float64)


def _mse(pred: np.ndarray, split) -> float:
    return float(np.mean((pred - split.value_targets.astype(np.float64)) ** 2))


@pytest.mark.parametrize("linear_input,revin", [("norm", True), ("raw", True), ("norm", False), ("both", True)])
def test_guard_serves_repeat_last_when_the_model_is_worse_on_validation(linear_input, revin) -> None:
    """A random walk: persistence is the best forecast there is, an untrained (random) model is far
    worse, so the guard must serve exactly repeat-last-value."""
    walk = np.cumsum(np.random.default_rng(0).normal(size=600))
    val = _windows(walk)
    spec = ModelSpec("lstm", WINDOW, HORIZON, width=8, revin=revin, linear_head=True, linear_input=linear_input)
    model = build_model(spec)
    before = _mse(_predict(model, val), val)
    repeat = _mse(baselines.repeat_last_value(val.inputs["values"], HORIZON), val)
    assert before > repeat  # the premise: the model is worse than the baseline on validation

    chosen = guard_forecast(model, val, WINDOW, HORIZON, period=PERIOD)

    assert chosen.served == "repeat_last_value", chosen
    assert chosen.val_mse["model"] == pytest.approx(before, rel=1e-4)
    served = _predict(model, val)
    np.testing.assert_allclose(served, baselines.repeat_last_value(val.inputs["values"], HORIZON), atol=1e-4)
    assert "above" in chosen.reason and chosen.to_dict()["served"] == "repeat_last_value"


def test_guard_serves_seasonal_naive_on_a_pure_cycle() -> None:
    cycle = np.tile(np.sin(np.arange(PERIOD) * 2 * np.pi / PERIOD) + np.arange(PERIOD) * 0.1, 60)
    val = _windows(cycle)
    model = build_model(ModelSpec("lstm", WINDOW, HORIZON, width=8, revin=True, linear_head=True,
                                  linear_input="raw"))
    chosen = guard_forecast(model, val, WINDOW, HORIZON, period=PERIOD)
    assert chosen.served == f"seasonal_naive_{PERIOD}"
    np.testing.assert_allclose(_predict(model, val), val.value_targets, atol=1e-4)


def test_guard_keeps_a_model_that_beats_the_baselines_and_blends_exactly() -> None:
    """A model started at seasonal naive plus a fitted offset is better than both baselines: it is kept
    unless a blend wins by more than the margin; a blend's served forecast is the arithmetic blend."""
    rng = np.random.default_rng(1)
    cycle = np.tile(np.sin(np.arange(PERIOD) * 2 * np.pi / PERIOD), 60) + rng.normal(scale=0.3, size=720)
    val = _windows(cycle)
    spec = ModelSpec("lstm", WINDOW, HORIZON, width=8, revin=False, linear_head=True, linear_input="norm")
    model = build_model(spec)
    # a smoothed seasonal map: average of the last 3 seasons (beats single-season naive on noisy cycles)
    kernel = np.zeros((WINDOW, HORIZON), np.float32)
    for season in (1, 2, 3):
        kernel[WINDOW - season * PERIOD + np.arange(HORIZON) % PERIOD, np.arange(HORIZON)] = 1 / 3
    model.get_layer("linear_head").set_weights([kernel, np.zeros(HORIZON, np.float32)])
    dense = model.get_layer("forecast_dense")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    smoothed = _predict(model, val)

    chosen = guard_forecast(model, val, WINDOW, HORIZON, period=PERIOD, margin=0.5)
    assert chosen.served == "model", chosen
    assert chosen.val_mse["model"] < min(chosen.val_mse["repeat_last_value"], chosen.val_mse[f"seasonal_naive_{PERIOD}"])
    np.testing.assert_allclose(_predict(model, val), smoothed, atol=1e-5)

    chosen = guard_forecast(model, val, WINDOW, HORIZON, period=PERIOD, margin=0.0)
    if chosen.served.startswith("blend:"):
        _, base, weight = chosen.served.split(":")
        seasonal = baselines.seasonal_naive(val.inputs["values"], HORIZON, period=PERIOD)
        expected = (1 - float(weight)) * smoothed + float(weight) * seasonal
        np.testing.assert_allclose(_predict(model, val), expected, atol=1e-4)
        assert chosen.val_mse[chosen.served] < chosen.val_mse["model"]


def test_baseline_kernels_equal_the_numpy_baselines() -> None:
    values = np.random.default_rng(2).normal(size=(20, WINDOW))
    kernels = baseline_kernels(WINDOW, 30, PERIOD)
    np.testing.assert_allclose(values @ kernels["repeat_last_value"], baselines.repeat_last_value(values, 30))
    np.testing.assert_allclose(values @ kernels[f"seasonal_naive_{PERIOD}"],
                               baselines.seasonal_naive(values, 30, period=PERIOD))
    assert set(baseline_kernels(WINDOW, 30, None)) == {"repeat_last_value"}


def test_a_model_started_at_baseline_forecasts_the_last_value() -> None:
    val = _windows(np.cumsum(np.random.default_rng(3).normal(size=400)))
    model = build_model(ModelSpec("transformer", WINDOW, HORIZON, width=8, heads=2, revin=True, linear_head=True))
    start_at_baseline(model, HORIZON, WINDOW)
    np.testing.assert_allclose(_predict(model, val), baselines.repeat_last_value(val.inputs["values"], HORIZON),
                               atol=1e-4)


def test_two_head_score_normalises_each_head_by_its_baseline() -> None:
    """Both heads: 0.5 log(NDCG / most-popular's) + 0.5 log(repeat-last's MSE / MSE), with the baselines
    as `training.evaluate` scores them on the same validation windows; a forecast head at
    repeat-last contributes exactly 0."""
    import math

    from training.data.synthetic import synthetic_log
    from training.dataset import prepare
    from training.evaluate import evaluate
    from training.train import validation_baselines

    data = prepare(synthetic_log(users=60, items=30, events_per_user=30, seed=5), 20, 3)
    model = build_model(ModelSpec("lstm", 20, 3, len(data.vocab), width=8, linear_head=True))
    start_at_baseline(model, 3, 20)
    reference = validation_baselines(data)
    scored = evaluate(model, data, split="val")
    assert reference["most_popular_NDCG@10"] == pytest.approx(
        scored["items_incl_history"]["most_popular"]["NDCG@10"])
    assert reference["repeat_last_value_MSE"] == pytest.approx(
        scored["forecast"]["scaled"]["repeat_last_value"]["MSE"], rel=1e-5)

    report = validation_score(model, data.val, reference)
    assert report["val_MSE"] == pytest.approx(reference["repeat_last_value_MSE"], rel=1e-4)
    expected = 0.5 * math.log(report["val_NDCG@10"] / reference["most_popular_NDCG@10"])
    assert report["score"] == pytest.approx(expected, abs=1e-4)
    assert validation_score(model, data.val)["score"] == report["val_NDCG@10"]  # no reference: items only


@pytest.mark.parametrize("linear_input", ["both", "norm", "raw"])
def test_shrunk_fine_tuning_serves_exactly_the_blend_of_start_and_epoch(linear_input) -> None:
    """training/shrinkage.py: the weights it keeps forecast (1 - a) * start + a * current, exactly."""
    from training.shrinkage import StartShrinkage
    from training.selection import linear_heads

    val = _windows(np.cumsum(np.random.default_rng(6).normal(size=500)))
    spec = ModelSpec("transformer", WINDOW, HORIZON, width=8, heads=2, revin=True, patch_len=16,
                     linear_head=True, linear_input=linear_input)
    model = build_model(spec)
    start_at_baseline(model, HORIZON, WINDOW)
    start = _predict(model, val)
    shrink = StartShrinkage(model, val, (0.25, 0.5))
    rng = np.random.default_rng(7)
    for layer in [*linear_heads(model).values(), model.get_layer("forecast_dense"), model.get_layer("patch_proj")]:
        layer.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    current = _predict(model, val)
    alpha, mse = shrink.score(model)
    assert alpha in (0.25, 0.5, 1.0)
    assert mse == pytest.approx(_mse((1 - alpha) * start + alpha * current, val), rel=1e-5)
    kept = shrink.weights_at(model, 0.25)
    np.testing.assert_allclose(_predict(model, val), current, atol=1e-6)  # the model itself is untouched
    model.set_weights(kept)
    np.testing.assert_allclose(_predict(model, val), 0.75 * start + 0.25 * current, atol=1e-4)

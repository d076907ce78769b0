"""Test-set evaluation of a model next to its baselines, in the same run, on the same windows.

Recommendations are ranked over the full vocabulary (no sampled negatives),
twice: excluding the items already in the window (what the streamer serves)
and including them (the usual published protocol). Forecasts are scored on the
scaled series and in original units. Baselines: most-popular and
repeat-last-item; repeat-last-value, seasonal naive (one day ago, when the
events are regular enough to define a day) and the training mean.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from streamer.features import FORECAST, ITEM_SCORES
from training import baselines
from training.dataset import Prepared, Split
from training.metrics import forecast_report, hr_curve, rank_of_targets, ranking_report

PredictFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
RANK_PROTOCOL = "leave-last-out per user; full ranking over all items; HR/NDCG@K; pessimistic ties"
FORECAST_PROTOCOL = "last H values per entity; z-score fitted on train; MSE/MAE/RMSE"


def keras_predict_fn(model, batch_size: int = 1024) -> PredictFn:
    from streamer.features import INPUT_NAMES

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = model.predict([inputs[k] for k in INPUT_NAMES], batch_size=batch_size, verbose=0)
        return {k: np.asarray(v) for k, v in out.items()}
    return predict


def season_steps(split: Split, window: int) -> int | None:
    """Events per day from the median gap, if that is a usable seasonal lag (2..window)."""
    dts = split.inputs["dts"][split.inputs["mask"] > 0]
    gaps = np.expm1(dts[dts > 0])
    if len(gaps) == 0:
        return None
    steps = int(round(86400.0 / float(np.median(gaps))))
    return steps if 2 <= steps <= window else None


def _item_block(scores: np.ndarray, split: Split, rows: np.ndarray, counts: np.ndarray,
                exclude_history: bool) -> tuple[dict, dict]:
    window_items = split.inputs["items"][rows]
    exclude = window_items if exclude_history else None
    targets = split.item_targets[rows]
    candidates = {"model": scores[rows],
                  "most_popular": baselines.most_popular_scores(counts, len(targets))}
    if not exclude_history:  # with history excluded, repeat-last-item is most-popular
        candidates["repeat_last_item"] = baselines.repeat_last_item_scores(window_items, len(counts), counts)
    ranks = {name: rank_of_targets(s, targets, exclude=exclude) for name, s in candidates.items()}
    report = {name: ranking_report(r, ks=(10, 50)) for name, r in ranks.items()}
    return report, {name: hr_curve(r, 50) for name, r in ranks.items()}


def _unscale(split: Split, rows: np.ndarray, data: Prepared, arr: np.ndarray) -> np.ndarray:
    params = np.array([data.scaler.params(str(u)) for u in split.users[rows]])
    return arr * params[:, 1:2] + params[:, 0:1]


def _forecast_block(pred: np.ndarray, split: Split, rows: np.ndarray, data: Prepared) -> dict:
    H = data.horizon
    actual = split.value_targets[rows][:, :H]
    lookback, mask = split.inputs["values"][rows], split.inputs["mask"][rows]
    candidates = {"model": pred[rows][:, :H],
                  "repeat_last_value": baselines.repeat_last_value(lookback, H, mask, fill=0.0),
                  "train_mean": baselines.train_mean(lookback, H, mask, mean=0.0)}
    period = season_steps(split, data.window)
    if period:
        candidates[f"seasonal_naive_{period}"] = baselines.seasonal_naive(lookback, H, mask, period=period, fill=0.0)
    return {
        "scaled": {n: forecast_report(p, actual) for n, p in candidates.items()},
        "original_units": {n: forecast_report(_unscale(split, rows, data, p), _unscale(split, rows, data, actual))
                           for n, p in candidates.items()},
    }


def evaluate(model_or_fn, data: Prepared, spec=None, split: str = "test",
             curves: dict | None = None) -> dict:
    """Metrics of the model and the baselines on one split; fills `curves` (HR@1..50) if given."""
    predict = model_or_fn if callable(model_or_fn) and not hasattr(model_or_fn, "predict") \
        else keras_predict_fn(model_or_fn)
    chosen = getattr(data, split)
    outputs = predict(chosen.inputs)
    report: dict = {"split": split}
    if ITEM_SCORES in outputs and chosen.item_weights.sum() > 0:
        rows = np.nonzero(chosen.item_weights > 0)[0]
        served, served_curves = _item_block(outputs[ITEM_SCORES], chosen, rows, data.train_item_counts, True)
        full, _ = _item_block(outputs[ITEM_SCORES], chosen, rows, data.train_item_counts, False)
        report["items"] = {"protocol": RANK_PROTOCOL + "; items in the window excluded (as served)",
                           "windows": int(len(rows)), **served}
        report["items_incl_history"] = {"protocol": RANK_PROTOCOL + "; items in the window kept",
                                        "windows": int(len(rows)), **full}
        if curves is not None:
            curves.update(served_curves)
    if FORECAST in outputs and chosen.value_weights.sum() > 0:
        rows = np.nonzero(chosen.value_weights > 0)[0]
        report["forecast"] = {"protocol": FORECAST_PROTOCOL, "horizon": data.horizon, "windows": int(len(rows)),
                              **_forecast_block(outputs[FORECAST], chosen, rows, data)}
    return report

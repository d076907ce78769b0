"""Forecast-head selection guard: never serve a forecast that validation says is worse than naive.

A trained forecast head can lose to copying the last value (a level shift between
the training years and the test period, a series the encoder cannot read, too
little data). The guard compares, on the validation windows only:

- the trained model;
- the naive baselines written into the model's own linear lookback head
  (repeat-last-value: a one-hot on the newest position; seasonal naive: a
  one-hot one season back), with the encoder's forecast path zeroed;
- blends (1 - a) * model + a * best baseline, a in BLEND_WEIGHTS.

Every candidate is exactly expressible by the model's existing weights (a
blend scales the encoder's last layer and mixes the linear kernels; RevIN's
mean and std cancel out), so the served ONNX graph keeps the same ops and
the parity check still covers it. The rule:

- the model stays unless a candidate beats its validation MSE by more than
  `margin` (the selection noise, `bench.run_ett.keep_margin`);
- if the model's validation MSE is above the best baseline's, it is never
  served: the best baseline-like candidate (a baseline or a blend) is.

Models without a linear head cannot express a baseline; `training.pipeline`
therefore gives every forecast model one. The choice and every candidate's
validation MSE go into the manifest's metrics (`selection`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.features import FORECAST, INPUT_NAMES
from training.dataset import Split
from training.linear_init import LINEAR_LAYERS

BLEND_WEIGHTS = (0.25, 0.5, 0.75)  # weight of the baseline in a blend
ENCODER_LAST = "forecast_dense"
LINEAR_NORM, LINEAR_RAW = LINEAR_LAYERS["norm"], LINEAR_LAYERS["raw"]  # the layer names models.py builds


@dataclass
class Selection:
    served: str  # "model", a baseline name, or "blend:<baseline>:<a>"
    reason: str
    val_mse: dict[str, float] = field(default_factory=dict)
    margin: float = 0.0

    def to_dict(self) -> dict:
        return {"served": self.served, "reason": self.reason, "margin": round(self.margin, 4),
                "val_MSE": {k: round(v, 6) for k, v in self.val_mse.items()}}


def baseline_kernels(window: int, horizon: int, period: int | None) -> dict[str, np.ndarray]:
    """{name: kernel [L, H]} of the naive forecasts as linear maps of the lookback (newest value last).

    repeat_last_value: every step reads position L - 1. seasonal_naive_<p>: step h (0-based) reads
    position L - p + h mod p, as `training.baselines.seasonal_naive` does."""
    repeat = np.zeros((window, horizon), np.float32)
    repeat[window - 1, :] = 1.0
    kernels = {"repeat_last_value": repeat}
    if period and 2 <= period <= window:
        seasonal = np.zeros((window, horizon), np.float32)
        seasonal[window - period + np.arange(horizon) % period, np.arange(horizon)] = 1.0
        kernels[f"seasonal_naive_{period}"] = seasonal
    return kernels


def _layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def linear_heads(model) -> dict[str, object]:
    """The model's linear lookback layers by name (one or both of LINEAR_NORM, LINEAR_RAW)."""
    return {name: layer for name in (LINEAR_RAW, LINEAR_NORM) if (layer := _layer(model, name)) is not None}


def can_guard(model) -> bool:
    return bool(linear_heads(model)) and _layer(model, ENCODER_LAST) is not None


def _forecast_weights(model) -> dict[str, list[np.ndarray]]:
    return {name: layer.get_weights() for name, layer in {**linear_heads(model),
                                                          ENCODER_LAST: model.get_layer(ENCODER_LAST)}.items()}


def _write(model, weights: dict[str, list[np.ndarray]]) -> None:
    for name, values in weights.items():
        model.get_layer(name).set_weights([np.asarray(v, np.float32) for v in values])


def baseline_weights(model, kernel: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Weights that make the model's forecast exactly `kernel` applied to the lookback: the kernel in
    the RevIN-normalised head when there is one (a one-hot pick is de-normalised back to the same
    value, and a model with both heads adds the window mean only through that path), else in the
    raw-lookback head; every other forecast-path weight zero."""
    current = _forecast_weights(model)
    target = LINEAR_NORM if LINEAR_NORM in current else LINEAR_RAW
    out = {name: [np.zeros_like(w) for w in ws] for name, ws in current.items()}
    out[target] = [kernel.astype(np.float32), np.zeros_like(current[target][1])]
    return out


def blend_weights(model_w: dict, base_w: dict, a: float) -> dict[str, list[np.ndarray]]:
    """(1 - a) * model + a * baseline, weight by weight: exact, since the forecast is linear in
    the encoder's last layer and the linear heads (and RevIN's mean cancels: (1-a) + a = 1)."""
    return {name: [(1 - a) * m + a * b for m, b in zip(model_w[name], base_w[name])] for name in model_w}


def start_at_baseline(model, horizon: int, window: int) -> None:
    """Start a model at repeat-last-value (its linear head on the newest value, encoder's last layer
    zero): training then only keeps what improves on the persistence forecast."""
    if can_guard(model):
        _write(model, baseline_weights(model, baseline_kernels(window, horizon, None)["repeat_last_value"]))


def _val_mse(model, val: Split, rows: np.ndarray, horizon: int) -> tuple[float, np.ndarray]:
    inputs = [val.inputs[k][rows] for k in INPUT_NAMES]
    pred = np.asarray(model.predict(inputs, batch_size=2048, verbose=0)[FORECAST], np.float64)
    actual = val.value_targets[rows][:, :horizon].astype(np.float64)
    return float(np.mean((pred - actual) ** 2)), pred


def guard_forecast(model, val: Split, window: int, horizon: int, period: int | None = None,
                   margin: float = 0.0) -> Selection:
    """Choose what the model's forecast head serves (see the module docstring) and write it into
    the model. `margin` is relative: a candidate must beat the model's validation MSE by more than
    margin * MSE to replace it. Returns what was chosen and why."""
    rows = np.nonzero(val.value_weights > 0)[0]
    if not len(rows):
        return Selection("model", "no validation windows with a forecast target")
    if not can_guard(model):
        return Selection("model", "unguarded: the model has no linear lookback head to express a baseline")
    actual = val.value_targets[rows][:, :horizon].astype(np.float64)
    model_w = _forecast_weights(model)
    model_mse, model_pred = _val_mse(model, val, rows, horizon)
    mse, preds, weights = {"model": model_mse}, {}, {"model": model_w}
    for name, kernel in baseline_kernels(window, horizon, period).items():
        weights[name] = baseline_weights(model, kernel)
        _write(model, weights[name])
        mse[name], preds[name] = _val_mse(model, val, rows, horizon)
    best_base = min(preds, key=mse.get)
    for a in BLEND_WEIGHTS:
        name = f"blend:{best_base}:{a}"
        mse[name] = float(np.mean(((1 - a) * model_pred + a * preds[best_base] - actual) ** 2))
        weights[name] = blend_weights(model_w, weights[best_base], a)
    others = min((n for n in mse if n != "model"), key=mse.get)
    if model_mse > mse[best_base]:
        served = others
        reason = f"the model's validation MSE {model_mse:.4g} is above {best_base}'s {mse[best_base]:.4g}"
    elif mse[others] < model_mse * (1 - margin):
        served = others
        reason = f"{others} beats the model on validation by more than the {margin:.1%} noise margin"
    else:
        served = "model"
        reason = f"the model is at or below every baseline on validation ({best_base}: {mse[best_base]:.4g})"
    _write(model, weights[served])
    return Selection(served, reason, mse, margin)

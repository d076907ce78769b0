"""Closed-form start for forecast models with a `linear_head`: ridge regression, then fine-tuning.

A linear map from the (RevIN-normalised) lookback to the horizon is the strong
simple model of long-horizon forecasting (DLinear, RLinear). Its least-squares
solution costs one [L, L] solve, so instead of learning it by SGD the trainer
can start from it: `warm_start_linear_head` fits the ridge solution on the
training windows (on the input the model's `linear_input` names), picks the
ridge strength on the validation windows, writes it into the linear head
layer and zeroes the other forecast path's last layer.
The model then starts exactly at the ridge forecast, and gradient descent (with
early stopping on validation) only keeps what the encoder adds to it.
"""
from __future__ import annotations

import numpy as np

from training.dataset import Split

RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean diagonal of X^T X
_EPS = 1e-5  # the InstanceNorm layer's variance epsilon


def _normalise(split: Split, revin: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(normalised lookback [N, L], normalised targets [N, H], mean [N, 1], std [N, 1]) as the model sees them."""
    values = split.inputs["values"].astype(np.float64)
    mask = split.inputs["mask"].astype(np.float64)
    targets = split.value_targets.astype(np.float64)
    if not revin:
        ones = np.ones((len(values), 1))
        return values, targets, 0 * ones, ones
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    mean = (values * mask).sum(axis=1, keepdims=True) / count
    std = np.sqrt((((values - mean) ** 2) * mask).sum(axis=1, keepdims=True) / count + _EPS)
    return (values - mean) / std * mask, (targets - mean) / std, mean, std


def _gram(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[X 1]^T [X 1] and [X 1]^T Y (a bias column appended)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    return xb.T @ xb, xb.T @ y


def ridge_fit(train: Split, val: Split, revin: bool, horizon: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(kernel [L, H], bias [H], report) of the ridge map, strength chosen by validation MSE (scaled units)."""
    x, y, _, _ = _normalise(train, revin)
    gram, cross = _gram(x, y[:, :horizon])
    scale = float(np.mean(np.diag(gram)[:-1])) or 1.0
    vx, _, vmean, vstd = _normalise(val, revin)
    vtargets = val.value_targets[:, :horizon].astype(np.float64)
    best = None
    for strength in RIDGE_GRID:
        reg = np.eye(len(gram)) * strength * scale
        reg[-1, -1] = 0.0  # the bias is not shrunk
        weights = np.linalg.solve(gram + reg, cross)
        pred = (vx @ weights[:-1] + weights[-1]) * vstd + vmean
        val_mse = float(np.mean((pred - vtargets) ** 2))
        if best is None or val_mse < best[0]:
            best = (val_mse, strength, weights)
    val_mse, strength, weights = best
    return weights[:-1], weights[-1], {"ridge_strength": strength, "val_MSE": val_mse}


LINEAR_LAYERS = {"norm": "linear_head", "raw": "linear_raw_head"}  # by ModelSpec.linear_input


def set_linear_head(model, kernel: np.ndarray, bias: np.ndarray, linear_input: str) -> None:
    """Write a linear map into the model's linear head and zero the last layer of the encoder's
    forecast path, so the model's forecast is exactly that map's."""
    model.get_layer(LINEAR_LAYERS[linear_input]).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    dense = model.get_layer("forecast_dense")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])


def warm_start_linear_head(model, train: Split, val: Split, linear_input: str, horizon: int) -> dict:
    """Fit the ridge map on the lookback `linear_input` names (see `ridge_fit`) and start the model
    at it (see `set_linear_head`)."""
    kernel, bias, report = ridge_fit(train, val, linear_input == "norm", horizon)
    set_linear_head(model, kernel, bias, linear_input)
    return report

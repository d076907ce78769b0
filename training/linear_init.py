"""Closed-form start for forecast models with a `linear_head`: ridge regression, then fine-tuning.

A linear map from the (RevIN-normalised) lookback to the horizon is the strong
simple model of long-horizon forecasting (DLinear, RLinear). Its least-squares
solution costs one [L, L] solve, so instead of learning it by SGD the trainer
can start from it: `warm_start_linear_head` fits the ridge solution on the
training windows (on the input the model's `linear_input` names), picks the
ridge strength on the validation windows, writes it into the linear head
layer and zeroes the other forecast path's last layer (`set_linear_heads` writes a
blend of the two maps into a model with both heads, `ModelSpec.linear_input` "both").
The model then starts exactly at the ridge forecast, and gradient descent (with
early stopping on validation) only keeps what the encoder adds to it.
"""
from __future__ import annotations

import numpy as np

from training.dataset import Split
from training.models import REVIN_STD_FLOOR

RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean diagonal of X^T X


def _normalise(split: Split, revin: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(normalised lookback [N, L], normalised targets [N, H], mean [N, 1], std [N, 1]) as the model
    sees them: the same statistics, and the same std floor, as `training.models.InstanceNorm`."""
    values = split.inputs["values"].astype(np.float64)
    mask = split.inputs["mask"].astype(np.float64)
    targets = split.value_targets.astype(np.float64)
    if not revin:
        ones = np.ones((len(values), 1))
        return values, targets, 0 * ones, ones
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    mean = (values * mask).sum(axis=1, keepdims=True) / count
    var = (((values - mean) ** 2) * mask).sum(axis=1, keepdims=True) / count
    std = np.sqrt(np.maximum(var, REVIN_STD_FLOOR ** 2))
    return (values - mean) / std * mask, (targets - mean) / std, mean, std


def _gram(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[X 1]^T [X 1] and [X 1]^T Y (a bias column appended), every row multiplied by `weight` [N, 1]."""
    xb = np.hstack([x, np.ones((len(x), 1))]) * weight
    return xb.T @ xb, xb.T @ (y * weight)


def ridge_fit(train: Split, val: Split, revin: bool, horizon: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(kernel [L, H], bias [H], report) of the ridge map, strength chosen by validation MSE (scaled units).

    The map works in normalised units but the model's loss is in scaled units: a window's scaled
    error is its normalised error times its std, so each training row is weighted by its std
    (squared error by std^2). Unweighted, a flat window (std at the floor) would count
    1 / floor^2 = 400 times as much as a typical one and fit the bias to its jumps."""
    x, y, _, std = _normalise(train, revin)
    gram, cross = _gram(x, y[:, :horizon], std)
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


def _has_layer(model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def set_linear_heads(model, norm: tuple | None = None, raw: tuple | None = None) -> None:
    """Start the model at a blend of ridge maps: w_norm * norm forecast + w_raw * raw forecast.

    `norm` and `raw` are (kernel, bias) or (kernel, bias, weight) (weight 1 if left out); a head
    given None gets zeros. Each forecast is the ridge's own (`bench.run_ett.ridge_predict`): the
    norm one (x_norm @ k + b) * std + mean, the raw one values @ k + b. The encoder's forecast
    path is zeroed. A "both" model adds the window mean once; where the norm weight is not 1 the
    rest, (1 - w_norm) * mean, is taken off through the raw head (mean = values @ 1/L), exact on
    windows without padding (every ETT window; a padded window's mean covers its real steps)."""
    revin = _has_layer(model, "revin")
    has = {name: _has_layer(model, layer) for name, layer in LINEAR_LAYERS.items()}
    heads = {"norm": norm, "raw": raw}
    for name, given in heads.items():
        if given is not None and not has[name]:
            raise ValueError(f"the model has no {LINEAR_LAYERS[name]} layer for the {name} map")
    weights = {name: 0.0 if given is None else float(given[2]) if len(given) > 2 else 1.0
               for name, given in heads.items()}
    # the model adds the window mean once if it has a norm head after RevIN; the blend wants w_norm of it
    extra_mean = (1.0 if revin and has["norm"] else 0.0) - (weights["norm"] if revin else 0.0)
    if abs(extra_mean) > 0 and not has["raw"]:
        raise ValueError(f"a model with one norm head cannot start at {weights['norm']} x its forecast")
    for name in ("norm", "raw"):
        if not has[name]:
            continue
        layer = model.get_layer(LINEAR_LAYERS[name])
        kernel, bias = (np.zeros(w.shape, np.float64) for w in layer.get_weights())
        if heads[name] is not None:
            kernel, bias = weights[name] * np.asarray(heads[name][0]), weights[name] * np.asarray(heads[name][1])
        if name == "raw" and extra_mean:
            kernel = kernel - extra_mean / kernel.shape[0]
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    dense = model.get_layer("forecast_dense")
    dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])


def set_linear_head(model, kernel: np.ndarray, bias: np.ndarray, linear_input: str) -> None:
    """Write one linear map into the model's linear head (the other head, if any, zeroed) and zero
    the last layer of the encoder's forecast path, so the model's forecast is exactly that map's."""
    set_linear_heads(model, **{linear_input: (kernel, bias)})


def warm_start_linear_head(model, train: Split, val: Split, linear_input: str, horizon: int) -> dict:
    """Fit the ridge map on the lookback `linear_input` ("norm" or "raw") names (see `ridge_fit`)
    and start the model at it (see `set_linear_head`)."""
    if linear_input not in LINEAR_LAYERS:
        raise ValueError(f"warm_start_linear_head fits one map, 'norm' or 'raw', not {linear_input!r}")
    kernel, bias, report = ridge_fit(train, val, linear_input == "norm", horizon)
    set_linear_head(model, kernel, bias, linear_input)
    return report

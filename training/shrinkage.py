"""Fine-tuning shrunk towards its warm start: keep alpha * (what an epoch learnt), alpha chosen on validation.

A forecast model warm-started at a linear map (`training.linear_init`, encoder's
last layer at zero) and then fine-tuned often fits its training years better and
the validation period worse: on ETT a full fine-tuning epoch costs ~10% validation
MSE. Robust fine-tuning (WiSE-FT) interpolates between the start and the
fine-tuned weights instead of choosing one of them. Here the interpolation is
exact on the outputs: the start's encoder path is zero, so

    (1 - alpha) * start + alpha * epoch

is the epoch's model with its encoder's last layer scaled by alpha and each
linear head mixed (1 - alpha) * start + alpha * epoch (RevIN's mean enters both
with weight 1 and cancels). The served graph is unchanged, so export and parity
are too. Each epoch is scored at every alpha in `alphas` (and 1); the best one is
that epoch's validation score, and `training.train.Monitor` keeps it only past
the same noise margin as a plain epoch.
"""
from __future__ import annotations

import numpy as np

from streamer.features import FORECAST, INPUT_NAMES
from training.dataset import Split
from training.selection import _forecast_weights, _write, blend_weights, can_guard


class StartShrinkage:
    """Scores and builds (1 - alpha) * start + alpha * current for a model at its warm start."""

    def __init__(self, model, val: Split, alphas: tuple[float, ...]) -> None:
        if not can_guard(model):
            raise ValueError("shrinkage towards the start needs a linear head and a forecast_dense layer")
        self.rows = np.nonzero(val.value_weights > 0)[0]
        self.inputs = [val.inputs[k][self.rows] for k in INPUT_NAMES]
        self.alphas = tuple(sorted(set(alphas) | {1.0}))
        self.start_weights = _forecast_weights(model)
        self.start_pred = self._predict(model)
        self.actual = val.value_targets[self.rows][:, :self.start_pred.shape[1]].astype(np.float64)

    def _predict(self, model) -> np.ndarray:
        return np.asarray(model.predict(self.inputs, batch_size=2048, verbose=0)[FORECAST], np.float64)

    def score(self, model) -> tuple[float, float]:
        """(best alpha, its validation MSE) for the model's current weights."""
        pred = self._predict(model)
        mse = {a: float(np.mean(((1 - a) * self.start_pred + a * pred - self.actual) ** 2)) for a in self.alphas}
        best = min(mse, key=mse.get)
        return best, mse[best]

    def weights_at(self, model, alpha: float) -> list[np.ndarray]:
        """The full weight list of (1 - alpha) * start + alpha * current; the model itself is left as it is."""
        current = _forecast_weights(model)
        _write(model, blend_weights(self.start_weights, current, alpha))
        weights = model.get_weights()
        _write(model, current)
        return weights

"""Fit a ModelSpec on prepared windows: seeded, budgeted, early-stopped on validation.

The validation score is the metric users care about, not the loss: NDCG@10
(full ranking) when the model has an item head, else the negative forecast
MSE. Training stops when it has not improved for `patience` epochs or when
`max_minutes` runs out, and the best epoch's weights are restored.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
from tqdm.auto import tqdm

from streamer.features import FORECAST, INPUT_NAMES, ITEM_SCORES
from training.dataset import Prepared, Split
from training.models import ModelSpec, build_model


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3
    max_minutes: float | None = None
    seed: int = 0
    forecast_weight: float = 1.0  # loss weight of the forecast head next to the item head
    score_initial: bool = False  # score the weights before epoch 1 too (e.g. after a warm start)
    min_delta: float = 0.0  # an epoch is better only if it beats the best score by this fraction of it


@dataclass
class FitResult:
    model: object
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped_by: str = "epochs"


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def _predict(model, split: Split, batch_size: int = 1024) -> dict[str, np.ndarray]:
    outputs = model.predict([split.inputs[k] for k in INPUT_NAMES], batch_size=batch_size, verbose=0)
    return {k: np.asarray(v) for k, v in outputs.items()}


def validation_score(model, split: Split) -> dict[str, float]:
    """{'score': higher is better, plus the underlying metrics} on a validation split."""
    from training.metrics import rank_of_targets, ranking_report

    outputs = _predict(model, split)
    report: dict[str, float] = {}
    if ITEM_SCORES in outputs and split.item_weights.sum() > 0:
        rows = split.item_weights > 0
        ranks = rank_of_targets(outputs[ITEM_SCORES][rows], split.item_targets[rows])
        report.update({f"val_{k}": v for k, v in ranking_report(ranks, ks=(10,)).items()})
        report["score"] = report["val_NDCG@10"]
    if FORECAST in outputs and split.value_weights.sum() > 0:
        rows = split.value_weights > 0
        mse = float(np.mean((outputs[FORECAST][rows] - split.value_targets[rows]) ** 2))
        report["val_MSE"] = mse
        report.setdefault("score", -mse)
    return report


def _targets(spec: ModelSpec, split: Split) -> tuple[dict, dict]:
    y, w = {}, {}
    if spec.vocab_size > 2:
        y[ITEM_SCORES], w[ITEM_SCORES] = split.item_targets, split.item_weights
    if spec.horizon > 0:
        y[FORECAST], w[FORECAST] = split.value_targets[:, : spec.horizon], split.value_weights
    return y, w


class Monitor(keras.callbacks.Callback):
    """Validation score each epoch, early stopping, time budget, and a tqdm bar over epochs."""

    def __init__(self, val: Split, config: FitConfig, result: FitResult, bar) -> None:
        super().__init__()
        self.val, self.config, self.result, self.bar = val, config, result, bar
        self.best, self.best_weights, self.waited = -math.inf, None, 0
        self.started = time.monotonic()

    def on_train_begin(self, logs=None) -> None:
        if self.config.score_initial:
            self._record(0, float("nan"))

    def _record(self, epoch: int, loss: float) -> dict:
        report = validation_score(self.model, self.val)
        entry = {"epoch": epoch, "loss": loss, **report, "seconds": round(time.monotonic() - self.started, 1)}
        self.result.history.append(entry)
        margin = self.config.min_delta * abs(self.best) if math.isfinite(self.best) else 0.0
        if report["score"] > self.best + margin:
            self.best, self.best_weights, self.waited = report["score"], self.model.get_weights(), 0
            self.result.best_epoch = epoch
        else:
            self.waited += 1
        return entry

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        entry = self._record(epoch + 1, float((logs or {}).get("loss", float("nan"))))
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k not in ("epoch", "score")})
        minutes = (time.monotonic() - self.started) / 60
        if self.waited >= self.config.patience:
            self.model.stop_training, self.result.stopped_by = True, "early stopping"
        elif self.config.max_minutes is not None and minutes >= self.config.max_minutes:
            self.model.stop_training, self.result.stopped_by = True, "time budget"

    def on_train_end(self, logs=None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def fit(spec: ModelSpec, data: Prepared, config: FitConfig, progress: bool = True,
        init: Callable[[keras.Model], object] | None = None) -> FitResult:
    """Build and train a model; returns it with the best validation epoch's weights.

    `init(model)` runs after the model is built and before training (a warm start,
    e.g. `training.linear_init.warm_start_linear_head`).
    """
    seed_everything(config.seed)
    model = build_model(spec)
    if init is not None:
        init(model)
    losses = {}
    if spec.vocab_size > 2:
        losses[ITEM_SCORES] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if spec.horizon > 0:
        losses[FORECAST] = keras.losses.MeanSquaredError()
    weights = {ITEM_SCORES: 1.0, FORECAST: config.forecast_weight}
    model.compile(optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay,
                                                   clipnorm=1.0),
                  loss=losses, loss_weights={k: weights[k] for k in losses})
    y, sample_weight = _targets(spec, data.train)
    result = FitResult(model)
    started = time.monotonic()
    with tqdm(total=config.epochs, desc=f"train {spec.arch}", unit="epoch", disable=not progress) as bar:
        monitor = Monitor(data.val, config, result, bar)
        model.fit([data.train.inputs[k] for k in INPUT_NAMES], y, sample_weight=sample_weight,
                  batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0,
                  callbacks=[monitor])
    result.seconds = time.monotonic() - started
    return result

"""Fit a ModelSpec on prepared windows: seeded, budgeted, early-stopped on validation.

The validation score is the metric users care about, not the loss: NDCG@10
(full ranking) for an item head, the negative MSE for a forecast head. A model
with both heads is scored on both, each against its own naive baseline on the
same validation windows, so that neither head is sacrificed to the other:
score = 0.5 * log(NDCG / most-popular NDCG) + 0.5 * log(repeat-last MSE / MSE)
(0 = both heads at their baselines; +0.1 = about 10% better on one head, or 5% on
both). Training stops when it has not improved for `patience` epochs or when
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
    min_delta: float = 0.0  # an epoch is kept only if it beats the first scored one (a warm start) by this fraction
    # forecast models at a warm start (score_initial): also score each epoch shrunk towards the start,
    # (1 - a) * start + a * epoch for these a (training.shrinkage); () = plain epochs only
    shrink_alphas: tuple[float, ...] = ()


@dataclass
class FitResult:
    model: object
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_alpha: float = 1.0  # the kept epoch's share against the warm start (FitConfig.shrink_alphas)
    seconds: float = 0.0
    stopped_by: str = "epochs"


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def _predict(model, split: Split, batch_size: int = 1024) -> dict[str, np.ndarray]:
    outputs = model.predict([split.inputs[k] for k in INPUT_NAMES], batch_size=batch_size, verbose=0)
    return {k: np.asarray(v) for k, v in outputs.items()}


TINY = 1e-9  # floor of a ratio's terms: a zero NDCG or MSE must not make the score infinite


def validation_baselines(data: Prepared) -> dict[str, float]:
    """The naive scores a two-head model is measured against, on the validation windows:
    most-popular NDCG@10 (full ranking, training counts) and repeat-last-value MSE."""
    from training import baselines
    from training.metrics import rank_of_targets, ranking_report

    val, out = data.val, {}
    if val.item_weights.sum() > 0 and len(data.train_item_counts) > 2:
        rows = val.item_weights > 0
        scores = baselines.most_popular_scores(data.train_item_counts, int(rows.sum()))
        ranks = rank_of_targets(scores, val.item_targets[rows])
        out["most_popular_NDCG@10"] = ranking_report(ranks, ks=(10,))["NDCG@10"]
    if val.value_weights.sum() > 0 and data.horizon > 0:
        rows = val.value_weights > 0
        pred = baselines.repeat_last_value(val.inputs["values"][rows], data.horizon, val.inputs["mask"][rows],
                                           fill=0.0)
        out["repeat_last_value_MSE"] = float(np.mean((pred - val.value_targets[rows][:, :data.horizon]) ** 2))
    return out


def validation_score(model, split: Split, reference: dict[str, float] | None = None) -> dict[str, float]:
    """{'score': higher is better, plus the underlying metrics} on a validation split.

    One head: its NDCG@10, or -MSE. Both heads and a `reference` (`validation_baselines`): the
    two-head score of the module docstring."""
    from training.metrics import ranking_report
    from training.ranking_batches import validation_item_ranks

    # item scores are ranked in row batches (never a [rows, V] matrix); forecasts are predicted whole
    outputs = _predict(model, split) if FORECAST in model.output_names else {}
    report: dict[str, float] = {}
    if ITEM_SCORES in model.output_names and split.item_weights.sum() > 0:
        ranks = validation_item_ranks(model, split)
        report.update({f"val_{k}": v for k, v in ranking_report(ranks, ks=(10,)).items()})
        report["score"] = report["val_NDCG@10"]
    if FORECAST in outputs and split.value_weights.sum() > 0:
        rows = split.value_weights > 0
        horizon = outputs[FORECAST].shape[1]
        mse = float(np.mean((outputs[FORECAST][rows] - split.value_targets[rows][:, :horizon]) ** 2))
        report["val_MSE"] = mse
        report.setdefault("score", -mse)
    reference = reference or {}
    if {"val_NDCG@10", "val_MSE"} <= report.keys() and {"most_popular_NDCG@10", "repeat_last_value_MSE"} <= \
            reference.keys():
        items = math.log(max(report["val_NDCG@10"], TINY) / max(reference["most_popular_NDCG@10"], TINY))
        values = math.log(max(reference["repeat_last_value_MSE"], TINY) / max(report["val_MSE"], TINY))
        report["score"] = 0.5 * items + 0.5 * values
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

    def __init__(self, val: Split, config: FitConfig, result: FitResult, bar,
                 reference: dict[str, float] | None = None) -> None:
        super().__init__()
        self.val, self.config, self.result, self.bar = val, config, result, bar
        self.reference = reference
        self.best, self.best_weights, self.waited = -math.inf, None, 0
        self.best_seen, self.first = -math.inf, None  # for patience; the first score (the warm start's)
        self.shrinkage = None
        self.started = time.monotonic()

    def on_train_begin(self, logs=None) -> None:
        if self.config.score_initial:
            self._record(0, float("nan"))
            if self.config.shrink_alphas:
                from training.shrinkage import StartShrinkage

                self.shrinkage = StartShrinkage(self.model, self.val, self.config.shrink_alphas)

    def _record(self, epoch: int, loss: float) -> dict:
        report = validation_score(self.model, self.val, self.reference)
        alpha = 1.0
        if self.shrinkage is not None:  # forecast-only: the score is -MSE, now at the best shrinkage
            alpha, mse = self.shrinkage.score(self.model)
            report |= {"alpha": alpha, "val_MSE_at_alpha": mse, "score": -mse}
        entry = {"epoch": epoch, "loss": loss, **report, "seconds": round(time.monotonic() - self.started, 1)}
        self.result.history.append(entry)
        score = report["score"]
        self.waited = 0 if score > self.best_seen else self.waited + 1  # patience: any improvement
        self.best_seen = max(self.best_seen, score)
        if self.first is None:
            self.first = score
        # kept: the best epoch so far that beats the first scored one by more than the noise margin
        clears = epoch == self.result.history[0]["epoch"] or \
            score > self.first + self.config.min_delta * abs(self.first)
        if clears and score > self.best:
            self.best = score
            self.best_weights = self.shrinkage.weights_at(self.model, alpha) if alpha < 1.0 \
                else self.model.get_weights()
            self.result.best_epoch, self.result.best_alpha = epoch, alpha
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
        reference = validation_baselines(data) if spec.vocab_size > 2 and spec.horizon > 0 else None
        monitor = Monitor(data.val, config, result, bar, reference)
        model.fit([data.train.inputs[k] for k in INPUT_NAMES], y, sample_weight=sample_weight,
                  batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0,
                  callbacks=[monitor])
    result.seconds = time.monotonic() - started
    return result

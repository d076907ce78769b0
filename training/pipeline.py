"""One call from an event log to a served-ready bundle: prepare, fit, evaluate, export, write.

This is what `seqcast train` runs, what the tests and the demo call, and the
order matters: every forecast model carries a linear lookback head started
at repeat-last-value, so that after fitting the selection guard
(`training.selection`) can serve a baseline or a blend instead of a forecast
head that validation says is worse than naive; the test metrics are computed
with the Keras model (as guarded) before export, the ONNX graph is then checked against that same model on real
windows, and only a bundle that passes the parity check is written.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.features import INPUT_NAMES
from training.data.eventlog import EventLog
from training.dataset import Prepared, prepare
from training.evaluate import evaluate, season_steps
from training.export import check_parity, export_onnx
from training.models import ModelSpec
from training.selection import guard_forecast, start_at_baseline
from training.train import FitConfig, FitResult, fit
from training.bundle_writer import write_bundle

log = logging.getLogger("seqcast.training")
PARITY_WINDOWS = 1024


@dataclass
class TrainOutcome:
    bundle: Path
    spec: ModelSpec
    fit: FitResult
    metrics: dict
    parity: dict
    data: Prepared = field(repr=False)
    seconds: float = 0.0


def parity_inputs(data: Prepared, limit: int = PARITY_WINDOWS) -> dict[str, np.ndarray]:
    """Real windows for the parity check: test, then validation, then training windows."""
    parts = [data.test.inputs, data.val.inputs, data.train.inputs]
    return {k: np.concatenate([p[k] for p in parts])[:limit] for k in INPUT_NAMES}


def build_bundle(log_: EventLog, models_dir: Path, name: str, arch: str = "lstm", window: int = 50,
                 horizon: int = 0, epochs: int = 30, seed: int = 0, max_minutes: float | None = None,
                 width: int = 64, depth: int = 1, heads: int = 1, dropout: float = 0.1,
                 batch_size: int = 256, learning_rate: float = 1e-3, patience: int = 3,
                 top_k: int = 10, revin: bool = False, progress: bool = False) -> Path:
    """Train one model on `log_` and write its bundle; returns the bundle directory."""
    return train_and_export(log_, models_dir, name, ModelSpec(arch, window, horizon, 0, width, depth, heads,
                                                               dropout, revin),
                            FitConfig(epochs, batch_size, learning_rate, patience=patience,
                                      max_minutes=max_minutes, seed=seed),
                            top_k=top_k, progress=progress).bundle


def train_and_export(log_: EventLog, models_dir: Path, name: str, spec: ModelSpec, config: FitConfig,
                     top_k: int = 10, progress: bool = True, use_items: bool = True,
                     signing_key=None, recipe: dict | None = None) -> TrainOutcome:
    """The full pipeline (see module docstring). `spec.vocab_size` is filled from the data, and a
    forecast model always gets its linear lookback head. `recipe` (e.g. the demo's recipe version)
    is stored with the hyperparameters."""
    started = time.monotonic()
    data = prepare(log_, spec.window, spec.horizon)
    has_items = use_items and log_.items is not None and len(data.vocab) > 2
    spec = ModelSpec(**{**spec.to_dict(), "vocab_size": len(data.vocab) if has_items else 0,
                        "linear_head": spec.linear_head or spec.horizon > 0})
    result = fit(spec, data, config, progress=progress,
                 init=lambda model: start_at_baseline(model, spec.horizon, spec.window))
    selection = None
    if spec.horizon > 0:
        selection = guard_forecast(result.model, data.val, spec.window, spec.horizon,
                                   period=season_steps(data.val, spec.window))
        log.info("forecast head: serving %s (%s)", selection.served, selection.reason)
    metrics = evaluate(result.model, data, spec)
    if selection is not None:
        metrics["selection"] = selection.to_dict()
    with tempfile.TemporaryDirectory(prefix="seqcast-export-") as tmp:
        onnx_file = export_onnx(result.model, spec.window, Path(tmp) / "model.onnx")
        parity = check_parity(result.model, onnx_file, parity_inputs(data))
        bundle = write_bundle(
            models_dir, name, onnx_file, data.vocab, data.scaler, arch=spec.arch, window=spec.window,
            horizon=spec.horizon, top_k=top_k, has_items=has_items,
            training_data={"source": log_.source, "events": len(log_), "fingerprint": log_.fingerprint(),
                           "entities": int(len(np.unique(log_.users)))},
            metrics=metrics, parity=parity,
            hyperparameters={**spec.to_dict(), "epochs": config.epochs, "batch_size": config.batch_size,
                             "learning_rate": config.learning_rate, "seed": config.seed,
                             "best_epoch": result.best_epoch, "stopped_by": result.stopped_by,
                             "train_seconds": round(result.seconds, 1), **(recipe or {})},
            signing_key=signing_key,
        )
    return TrainOutcome(bundle, spec, result, metrics, parity, data, time.monotonic() - started)

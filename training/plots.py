"""Evaluation plots written to PNG files for the bundle's report.

Figures are built as `matplotlib.figure.Figure` on an Agg canvas, never through
pyplot: no global backend switch, no GUI, no figures left open across calls,
so the trainer can run headless and in threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_forecasts(path: str | Path, lookback: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                   baseline: np.ndarray | None = None, titles: Sequence[str] | None = None, *,
                   mask: np.ndarray | None = None, baseline_label: str = "baseline") -> Path:
    """One panel per entity: lookback [n, L], then actual vs predicted (and baseline) [n, H].

    Steps are numbered relative to the forecast origin (last lookback step = 0).
    Lookback slots where `mask` is 0 (left padding) are left out, not drawn as zeros.
    """
    lookback = np.asarray(lookback, dtype=np.float64)
    actual, predicted = np.asarray(actual, np.float64), np.asarray(predicted, np.float64)
    n, window = lookback.shape
    horizon = actual.shape[1]
    if predicted.shape != actual.shape or len(actual) != n:
        raise ValueError(f"lookback {lookback.shape}, actual {actual.shape}, predicted {predicted.shape} disagree")
    if mask is not None:
        lookback = np.where(np.asarray(mask) > 0, lookback, np.nan)
    past = np.arange(-window + 1, 1)
    future = np.arange(1, horizon + 1)
    fig = Figure(figsize=(8, 2.6 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for row, ax in enumerate(axes):
        ax.plot(past, lookback[row], color="0.4", label="history")
        ax.plot(future, actual[row], color="black", marker=".", label="actual")
        ax.plot(future, predicted[row], color="tab:blue", marker=".", label="model")
        if baseline is not None:
            ax.plot(future, np.asarray(baseline)[row], color="tab:orange", linestyle="--", label=baseline_label)
        ax.axvline(0.5, color="0.7", linewidth=0.8)
        ax.set_title(titles[row] if titles is not None else f"entity {row}")
        ax.set_ylabel("value")
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("step relative to forecast origin")
    return _save(fig, path)


def plot_hr_curve(path: str | Path, curves: Mapping[str, np.ndarray], *,
                  title: str = "Hit rate by cut-off (full ranking)") -> Path:
    """HR@k against k = 1..len(curve), one line per model or baseline (see `metrics.hr_curve`)."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.set_title(title)
    ax.set_xlabel("k (number of recommendations)")
    ax.set_ylabel("HR@k")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)

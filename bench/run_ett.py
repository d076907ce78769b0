"""One ETT dataset: for each architecture and horizon, train, score on every test window, plot, export.

The recipe (the same for every ETT-like file, nothing tuned to one of them):
channel-independent windows of L = 336 steps; RevIN; the value channel cut
into patches of 16 steps (21 tokens) for a Transformer or an LSTM with a
flatten head straight to the H steps; plus a linear lookback -> horizon head,
started at its ridge-regression solution (`training.linear_init`), the ridge
strength and whether that head reads the RevIN-normalised or the plain scaled
lookback (RLinear or DLinear style) both picked on validation MSE; the ridge
uses every training window (closed form: cheap). Fine-tuning then runs at a
low learning rate with early stopping on validation MSE, starting from the
score of the warm start (epoch 0), and keeps an epoch only if it lowers the
validation MSE by more than the selection noise (`keep_margin`: validation
windows at stride 1 overlap, so a long horizon has few independent ones and
needs a larger gain; a gain within the noise is as likely to lose on the test
period as to win). 15-minute data has 4x
the rows: fine-tuning and its validation use every 4th window (the ridge and
the test use all of them).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from bench.ett import SEASON_STEPS, EttData, load_ett_data
from streamer.features import INPUT_NAMES

WINDOW, PATCH = 336, 16
NOISE_PER_FORECAST = 0.1  # relative spread of one independent forecast's MSE comparison (see keep_margin)
ARCH = {"transformer": dict(width=64, depth=1, heads=4, dropout=0.3),
        "lstm": dict(width=64, depth=1, heads=1, dropout=0.3)}


def keep_margin(val_rows: int, horizon: int) -> float:
    """The relative validation-MSE gain an epoch needs over the best so far to be kept.

    N stride-1 validation windows of H steps cover N + H - 1 rows, which hold only
    (N + H - 1) / H non-overlapping forecasts per channel; the noise of comparing two
    models' MSE shrinks with the square root of that count. ETTh1 (2,880 validation
    rows): 1.8% at H = 96, 5% at H = 720; ETTm1 (11,520 rows): 0.9% to 2.5%.
    """
    independent = max(val_rows / horizon, 1.0)
    return NOISE_PER_FORECAST / math.sqrt(independent)


def _accumulate(totals: dict, name: str, pred: np.ndarray, actual: np.ndarray) -> None:
    err = pred.astype(np.float64) - actual
    sums = totals.setdefault(name, [0.0, 0.0, 0])
    sums[0] += float(np.sum(err ** 2))
    sums[1] += float(np.sum(np.abs(err)))
    sums[2] += err.size


def ridge_predict(kernel: np.ndarray, bias: np.ndarray, split, revin: bool = True) -> np.ndarray:
    from training.linear_init import _normalise

    x, _, mean, std = _normalise(split, revin)
    return (x @ kernel + bias) * std + mean


def score_test(model, data: EttData, horizon: int, ridge: tuple) -> tuple[dict, dict]:
    """MSE/MAE over every channel, test window and step, for the model and the baselines; plus plot rows."""
    from training import baselines

    totals: dict = {}
    plot = None
    period = SEASON_STEPS[data.freq]
    for channel in range(len(data.channels)):
        test = data.windows("test", horizon, 1, channel)
        pred = model.predict([test.inputs[k] for k in INPUT_NAMES], batch_size=2048, verbose=0)["forecast"]
        actual, lookback = test.value_targets.astype(np.float64), test.inputs["values"]
        _accumulate(totals, "model", pred, actual)
        _accumulate(totals, "ridge_warm_start", ridge_predict(ridge[0], ridge[1], test, ridge[2]), actual)
        _accumulate(totals, "repeat_last_value", baselines.repeat_last_value(lookback, horizon), actual)
        _accumulate(totals, f"seasonal_naive_{period}",
                    baselines.seasonal_naive(lookback, horizon, period=period), actual)
        if data.channels[channel] == "OT" or (plot is None and channel == len(data.channels) - 1):
            rows = np.linspace(0, len(test) - 1, 3).astype(int)
            plot = {"lookback": lookback[rows], "actual": actual[rows], "pred": pred[rows],
                    "baseline": baselines.repeat_last_value(lookback[rows], horizon),
                    "titles": [f"{data.name} {data.channels[channel]} test window {r} (z-scored)" for r in rows]}
    windows = totals["model"][2] // horizon
    return {name: {"MSE": s[0] / s[2], "MAE": s[1] / s[2]} for name, s in totals.items()} | \
        {"windows": windows}, plot


def fit_ridge(data: EttData, horizon: int, stride: int) -> dict:
    """The ridge map on every `stride`-th train window, on RevIN-normalised and on plain lookbacks;
    the one with the lower validation MSE wins (closed form, so every window is affordable)."""
    from training.linear_init import ridge_fit

    train, val = data.windows("train", horizon, stride), data.windows("val", horizon, stride)
    fits = {revin: ridge_fit(train, val, revin, horizon) for revin in (True, False)}
    revin = fits[True][2]["val_MSE"] <= fits[False][2]["val_MSE"]
    kernel, bias, report = fits[revin]
    return {"kernel": kernel, "bias": bias, "revin": revin, "ridge_strength": report["ridge_strength"],
            "val_MSE_revin": fits[True][2]["val_MSE"], "val_MSE_raw": fits[False][2]["val_MSE"],
            "train_windows": len(train)}


def run_one(data: EttData, arch: str, horizon: int, ridge: dict, args, minutes: float,
            bundle_dir: Path | None) -> dict:
    from bench.accuracy import export_bundle
    from training.linear_init import set_linear_head
    from training.models import ModelSpec
    from training.plots import plot_forecasts
    from training.train import FitConfig, fit

    stride = 16 if args.quick else (4 if data.freq == "15min" else 1)
    started = time.monotonic()
    prepared = data.prepared(horizon, train_stride=stride, val_stride=stride)
    spec = ModelSpec(arch, data.window, horizon, 0, revin=True, patch_len=PATCH, linear_head=True,
                     linear_input="norm" if ridge["revin"] else "raw", **ARCH[arch])
    val_rows = len(data.starts("val", horizon)) + horizon - 1
    config = FitConfig(epochs=1 if args.quick else 6, batch_size=128, learning_rate=1e-4, patience=2,
                       max_minutes=minutes, seed=args.seed, score_initial=True,
                       min_delta=keep_margin(val_rows, horizon))
    result = fit(spec, prepared, config, progress=True,
                 init=lambda model: set_linear_head(model, ridge["kernel"], ridge["bias"], spec.linear_input))
    train_seconds = time.monotonic() - started
    metrics, plot = score_test(result.model, data, horizon, (ridge["kernel"], ridge["bias"], ridge["revin"]))
    out = {"arch": arch, "horizon": horizon, "window": data.window, "metrics": metrics,
           "ridge": {k: v for k, v in ridge.items() if k not in ("kernel", "bias")}, "best_epoch": result.best_epoch, "stopped_by": result.stopped_by,
           "history": result.history, "train_windows": len(prepared.train), "train_stride": stride,
           "train_seconds": round(train_seconds, 1), "seconds": round(time.monotonic() - started, 1),
           "spec": spec.to_dict(), "keep_margin": round(config.min_delta, 4)}
    png = Path(args.plots) / f"{data.name.lower()}_{arch}_h{horizon}_forecast.png"
    plot_forecasts(png, plot["lookback"], plot["actual"], plot["pred"], plot["baseline"], plot["titles"],
                   baseline_label="repeat last value")
    out["plot"] = str(png)
    if bundle_dir is not None:
        parity = data.windows("test", horizon, 1, 0).inputs
        out.update(export_bundle(result.model, spec, prepared, {k: v[:1024] for k, v in parity.items()},
                                 bundle_dir, f"{data.name.lower()}-{arch}-h{horizon}", metrics, config,
                                 Path(data.name)))
    print(f"{data.name} {arch} H={horizon}: MSE {metrics['model']['MSE']:.4f} MAE {metrics['model']['MAE']:.4f} "
          f"(ridge {metrics['ridge_warm_start']['MSE']:.4f}), best epoch {result.best_epoch}, "
          f"{out['seconds']:.0f} s", flush=True)
    return out


def run(dataset: str, path: Path, args) -> dict:
    from training.data.loaders import load_ett_matrix

    ts, channels, matrix = load_ett_matrix(path)
    data = load_ett_data(ts, channels, matrix, path.name.split(".")[0], WINDOW)
    horizons = args.horizons[:1] if args.quick and len(args.horizons) > 1 else args.horizons
    minutes = args.max_minutes / (len(horizons) * len(args.archs))
    runs = []
    for index, horizon in enumerate(horizons):
        started = time.monotonic()
        ridge = fit_ridge(data, horizon, stride=16 if args.quick else 1)
        ridge["seconds"] = round(time.monotonic() - started, 1)
        for arch in args.archs:
            bundle_dir = None if args.no_bundle or index else Path(args.out) / "models"
            runs.append(run_one(data, arch, horizon, ridge, args, minutes * 0.8, bundle_dir))
    return {"kind": "forecast", "protocol": __doc__.split("\n\n")[1].replace("\n", " "), "runs": runs}

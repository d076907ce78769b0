"""One ETT dataset: for each architecture and horizon, train, score on every test window, plot, export.

The recipe (the same for every ETT-like file, nothing tuned to one of them):
channel-independent windows of L = 336 steps; RevIN; the value channel cut
into patches of 16 steps (21 tokens) for a Transformer or an LSTM with a
flatten head straight to the H steps; plus a linear lookback -> horizon head,
started at its ridge-regression solution (`training.linear_init`): one ridge
on the RevIN-normalised lookback (RLinear style, level invariant) and one on
the plain scaled lookback (DLinear style), each with its ridge strength picked
on validation MSE; the start is the normalised ridge unless the plain one or the
average of both has a validation MSE lower by more than the selection noise
(`keep_margin`, below); the ridges use every training window (closed form:
cheap). Fine-tuning then runs at a low learning rate with early
stopping on validation MSE (patience counts epochs without any improvement),
starting from the score of the warm start (epoch 0); each epoch is also scored
shrunk towards the start, (1 - a) * start + a * epoch for a in SHRINK_ALPHAS
(`training.shrinkage`, exact in the weights), and the best epoch and share are
kept only if they lower the warm start's validation MSE by more than the
selection noise (`keep_margin`: validation windows at stride 1 overlap, so a
long horizon has few independent ones and needs a larger gain; a gain within the
noise is as likely to lose on the test period as to win). Last, the selection
guard (`training.selection`) compares the result with repeat-last-value,
seasonal naive and blends with the better of them on validation, by the same
margin. 15-minute data has 4x the rows: fine-tuning and its validation use
every 4th window (the ridge and the test use all of them).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from bench.ett import SEASON_STEPS, EttData, load_ett_data
from streamer.features import INPUT_NAMES

WINDOW, PATCH = 336, 16
SHRINK_ALPHAS = (0.25, 0.5, 0.75)  # fine-tuning kept at these shares of its change (training/shrinkage.py)
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
    """One ridge map's forecast (scaled units): on the RevIN-normalised lookback if `revin`, else raw."""
    from training.linear_init import _normalise

    x, _, mean, std = _normalise(split, revin)
    return (x @ kernel + bias) * std + mean


RIDGE_BLENDS = {"norm": (1.0, 0.0), "raw": (0.0, 1.0), "average": (0.5, 0.5)}  # (w_norm, w_raw)


def ridge_heads(ridge: dict) -> dict:
    """`fit_ridge`'s chosen start as `training.linear_init.set_linear_heads` arguments (None: weight 0)."""
    weights = {"norm": ridge["weight_norm"], "raw": ridge["weight_raw"]}
    return {name: (ridge["kernel"][name], ridge["bias"][name], w) if w else None for name, w in weights.items()}


def ridge_start_predict(ridge: dict, split) -> np.ndarray:
    """The forecast of `fit_ridge`'s chosen start: w_norm * norm ridge + w_raw * raw ridge; a model
    given `ridge_heads(ridge)` starts exactly there."""
    pred = 0.0
    for name, head in ridge_heads(ridge).items():
        if head is not None:
            pred = pred + head[2] * ridge_predict(head[0], head[1], split, name == "norm")
    return pred


def score_test(model, data: EttData, horizon: int, ridge: dict) -> tuple[dict, dict]:
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
        _accumulate(totals, "ridge_warm_start", ridge_start_predict(ridge, test), actual)
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


def choose_blend(val_mse: dict[str, float], margin: float) -> str:
    """The level-invariant "norm" ridge unless another blend's validation MSE is lower by more than
    the relative `margin` (the selection noise, `keep_margin`); then the lowest of those."""
    better = {name: mse for name, mse in val_mse.items() if mse < val_mse["norm"] * (1.0 - margin)}
    return min(better, key=better.get) if better else "norm"


def fit_ridge(data: EttData, horizon: int, stride: int) -> dict:
    """Ridge maps on every `stride`-th train window, one on the RevIN-normalised lookback (level
    invariant) and one on the plain scaled lookback (DLinear style, which extrapolates a level shift
    badly); the start is the norm map, the raw one or their average (`RIDGE_BLENDS`), chosen by
    `choose_blend` on validation MSE (closed form, so every window is affordable)."""
    from training.linear_init import ridge_fit

    train, val = data.windows("train", horizon, stride), data.windows("val", horizon, stride)
    fits = {name: ridge_fit(train, val, name == "norm", horizon) for name in ("norm", "raw")}
    targets = val.value_targets[:, :horizon].astype(np.float64)
    errors = {name: ridge_predict(kernel, bias, val, name == "norm") - targets
              for name, (kernel, bias, _) in fits.items()}
    val_mse = {blend: float(np.mean((w_norm * errors["norm"] + w_raw * errors["raw"]) ** 2))
               for blend, (w_norm, w_raw) in RIDGE_BLENDS.items()}
    margin = keep_margin(len(data.starts("val", horizon)) + horizon - 1, horizon)
    choice = choose_blend(val_mse, margin)
    return {"kernel": {name: fit[0] for name, fit in fits.items()},
            "bias": {name: fit[1] for name, fit in fits.items()}, "choice": choice,
            "weight_norm": RIDGE_BLENDS[choice][0], "weight_raw": RIDGE_BLENDS[choice][1],
            **{f"val_MSE_{blend}": mse for blend, mse in val_mse.items()}, "keep_margin": round(margin, 4),
            **{f"ridge_strength_{name}": fit[2]["ridge_strength"] for name, fit in fits.items()},
            "train_windows": len(train)}


def run_one(data: EttData, arch: str, horizon: int, ridge: dict, args, minutes: float,
            bundle_dir: Path | None) -> dict:
    from bench.accuracy import export_bundle
    from training.linear_init import set_linear_heads
    from training.models import ModelSpec
    from training.plots import plot_forecasts
    from training.selection import guard_forecast
    from training.train import FitConfig, fit

    stride = 16 if args.quick else (4 if data.freq == "15min" else 1)
    started = time.monotonic()
    prepared = data.prepared(horizon, train_stride=stride, val_stride=stride)
    spec = ModelSpec(arch, data.window, horizon, 0, revin=True, patch_len=PATCH, linear_head=True,
                     linear_input="both", **ARCH[arch])
    val_rows = len(data.starts("val", horizon)) + horizon - 1
    config = FitConfig(epochs=1 if args.quick else 6, batch_size=128, learning_rate=1e-4, patience=2,
                       max_minutes=minutes, seed=args.seed, score_initial=True,
                       min_delta=keep_margin(val_rows, horizon), shrink_alphas=SHRINK_ALPHAS)
    result = fit(spec, prepared, config, progress=True,
                 init=lambda model: set_linear_heads(model, **ridge_heads(ridge)))
    # never serve a forecast that validation says is worse than naive (training/selection.py)
    selection = guard_forecast(result.model, prepared.val, data.window, horizon, period=SEASON_STEPS[data.freq],
                               margin=config.min_delta)
    train_seconds = time.monotonic() - started
    metrics, plot = score_test(result.model, data, horizon, ridge)
    metrics["selection"] = selection.to_dict()
    out = {"arch": arch, "horizon": horizon, "window": data.window, "metrics": metrics,
           "ridge": {k: v for k, v in ridge.items() if k not in ("kernel", "bias")}, "best_epoch": result.best_epoch, "best_alpha": result.best_alpha, "stopped_by": result.stopped_by,
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
          f"(ridge {metrics['ridge_warm_start']['MSE']:.4f}), best epoch {result.best_epoch} "
          f"(alpha {result.best_alpha}), "
          f"serves {selection.served}, "
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

"""The seed article's stock forecaster, redone honestly.

The article: two stacked LSTM(50) layers over a 100-day window of MinMax-scaled
closing prices, predicting the next close. What it left out, and this adds:

- a chronological split (first 80% of days train, of which the last eighth
  validates for early stopping; last 20% test), never a random one;
- MinMax fitted on training days only (the article scaled the whole series,
  leaking the test period's range into training);
- the repeat-last-value baseline scored on the same test days, in the same run,
  in original units (dollars);
- a second model, the same LSTM with RevIN (each window normalised by its own
  mean and std, forecasts de-normalised): with honest MinMax, test prices lie
  above the training range and the article's model saturates; RevIN shows
  whether the architecture or the scaling is to blame.

The model is an ordinary seqcast bundle-ready model (arch "lstm", depth 2,
width 50, window 100, horizon 1), so its windows are encoded by the same
`streamer.features.encode_sequence` the streamer is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.features import ValueScaler, Vocabulary, encode_sequence
from training.baselines import repeat_last_value
from training.dataset import Prepared, Split
from training.metrics import forecast_report

WINDOW = 100
TRAIN_FRACTION = 0.8
VAL_FRACTION_OF_TRAIN = 0.125


ARTICLE = "article model: 2x LSTM(50), L=100"
REVIN = "same LSTM + RevIN"
BASELINE = "repeat_last_value"


@dataclass
class SeedResult:
    table: dict[str, dict[str, float]]  # row name -> MSE/RMSE/MAE in dollars
    dates: np.ndarray
    actual: np.ndarray
    predictions: dict[str, np.ndarray]  # row name -> dollars, baseline included
    cuts: dict[str, int]


def _split(ts, scaled, user: str, ends: np.ndarray) -> Split:
    inputs = encode_sequence(ts, np.zeros(len(ts), np.int32), scaled, ends, WINDOW)
    n = len(ends)
    return Split(inputs, np.zeros(n, np.int32), np.zeros(n, np.float32), scaled[ends][:, None].astype(np.float32),
                 np.ones(n, np.float32), np.full(n, user, dtype=object))


def prepare_series(ts: np.ndarray, prices: np.ndarray, user: str) -> tuple[Prepared, dict[str, int]]:
    """Chronological cuts and a MinMax scaler (as an affine ValueScaler) fitted on training days only."""
    n = len(prices)
    test_start = int(n * TRAIN_FRACTION)
    val_start = int(test_start * (1 - VAL_FRACTION_OF_TRAIN))
    low, high = float(prices[:val_start].min()), float(prices[:val_start].max())
    scaler = ValueScaler(low, high - low)  # (x - min) / (max - min): MinMax
    scaled = ((prices - low) / (high - low)).astype(np.float32)
    data = Prepared(Vocabulary([]), scaler, WINDOW, 1,
                    train=_split(ts, scaled, user, np.arange(WINDOW, val_start)),
                    val=_split(ts, scaled, user, np.arange(val_start, test_start)),
                    test=_split(ts, scaled, user, np.arange(test_start, n)))
    return data, {"rows": n, "train": val_start, "val": test_start - val_start, "test": n - test_start}


def run(path: Path, epochs: int = 50, seed: int = 0, progress: bool = True,
        max_minutes: float | None = None) -> SeedResult:
    """Train the article's model (and the RevIN variant); score both against repeat-last-value."""
    from training.data.loaders import load_stock
    from training.evaluate import keras_predict_fn
    from training.models import ModelSpec
    from training.train import FitConfig, fit

    log = load_stock(path)
    data, cuts = prepare_series(log.ts, log.values, str(log.users[0]))
    test = data.test
    dollars = lambda x: np.asarray(x, np.float64) * data.scaler.std + data.scaler.mean
    predictions = {BASELINE: dollars(repeat_last_value(test.inputs["values"], 1, test.inputs["mask"])[:, 0])}
    config = FitConfig(epochs=epochs, batch_size=32, learning_rate=1e-3, patience=8, seed=seed,
                       max_minutes=max_minutes)
    for name, revin in ((ARTICLE, False), (REVIN, True)):
        spec = ModelSpec("lstm", WINDOW, horizon=1, vocab_size=0, width=50, depth=2, dropout=0.0, revin=revin)
        model = fit(spec, data, config, progress=progress).model
        predictions[name] = dollars(keras_predict_fn(model)(test.inputs)["forecast"][:, 0])
    actual = dollars(test.value_targets[:, 0])
    table = {name: forecast_report(pred, actual) for name, pred in predictions.items()}
    dates = log.ts[cuts["rows"] - cuts["test"]:]
    return SeedResult(table, dates, actual, predictions, cuts)


def plot(result: SeedResult, path: Path, title: str) -> Path:
    """Actual vs model vs baseline over the test period."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    days = np.array(result.dates, dtype="datetime64[s]")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(days, result.actual, label="actual (Adj Close)", color="black", linewidth=1.2)
    colours = {ARTICLE: "tab:blue", REVIN: "tab:green", BASELINE: "tab:orange"}
    for name, pred in result.predictions.items():
        top.plot(days, pred, label=name, color=colours[name], linewidth=1, alpha=0.85)
    top.set_ylabel("price, USD")
    top.set_title(title)
    top.legend()
    for name, pred in result.predictions.items():
        bottom.plot(days, np.abs(pred - result.actual), label=f"|{name} error|", color=colours[name],
                    linewidth=0.8, alpha=0.8)
    bottom.set_ylabel("abs error, USD")
    bottom.set_yscale("log")
    bottom.legend()
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: SeedResult) -> str:
    lines = ["| | MSE (USD²) | RMSE (USD) | MAE (USD) |", "|---|---|---|---|"]
    for name, row in result.table.items():
        lines.append(f"| {name} | {row['MSE']:.2f} | {row['RMSE']:.2f} | {row['MAE']:.2f} |")
    winner = min(result.table, key=lambda name: result.table[name]["MSE"])
    lines += ["", f"Winner on test MSE: **{winner}**."]
    return "\n".join(lines)

"""`seqcast train` and `seqcast evaluate`: the offline commands.

Argument parsing only; TensorFlow is imported inside the handlers, so
`seqcast --help` stays instant and the streamer's commands never load it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from training import demo, dev
from training.data_args import add_data_args, load_data

def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="fit LSTM/Transformer models on an event log and write ONNX bundles",
        description="Fit a sequence model on an event log with chronological splits (leave-last-out per "
        "user for items; last H values for forecasts), compare it with baselines on the test split, export "
        "it to ONNX, check Keras-vs-onnxruntime parity, and write models/<name>/<version>/. Model selection "
        "uses the validation split only: NDCG@10 for items, MSE for forecasts, and both (each against its "
        "naive baseline) when the model has both heads. A forecast head that is worse on validation than "
        "repeat-last-value or seasonal naive is never served: the better baseline, or a blend with it, is "
        "written into the model instead, and the report and the manifest (metrics.selection) say so.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(train)
    train.add_argument("--arch", choices=["lstm", "transformer", "both"], default="lstm")
    train.add_argument("--name", help="bundle name (default: the data source name)")
    train.add_argument("--models-dir", type=Path, default=Path("models"))
    train.add_argument("--window", type=int, default=50, help="L: events per window")
    train.add_argument("--horizon", type=int, default=0,
                       help="H: forecast steps (0 = no forecast head; needs a value column)")
    train.add_argument("--no-items", action="store_true", help="no item head even if the data has items")
    train.add_argument("--width", type=int, default=64)
    train.add_argument("--depth", type=int, default=1)
    train.add_argument("--heads", type=int, default=1, help="attention heads (transformer)")
    train.add_argument("--dropout", type=float, default=0.1)
    train.add_argument("--revin", action="store_true", help="instance-normalise values (RevIN), for forecasting")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--patience", type=int, default=3, help="epochs without validation improvement")
    train.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--top-k", type=int, default=10, help="default number of recommendations served")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--sign-key", type=Path, metavar="PATH",
                       help="Ed25519 private key (PEM, from `seqcast keygen`) to sign each bundle written; "
                       "passphrase from $SIGNING_KEY_PASSWORD")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate", help="score a bundle (ONNX) on the test split, next to baselines; write JSON and PNGs",
        description="Evaluate an exported bundle with onnxruntime on the same chronological test split the "
        "trainer uses: full-ranking HR/NDCG@10,50 and MSE/MAE/RMSE, baselines in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("bundle", type=Path, help="bundle directory models/<name>/<version>")
    add_data_args(evaluate)
    evaluate.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="where metrics.json and PNGs go")
    evaluate.set_defaults(handler=run_evaluate)

    seed = commands.add_parser(
        "seed-example", help="the seed article's stock LSTM, redone with a chronological split and a baseline",
        description="Two stacked LSTM(50) over 100 days of MinMax-scaled Adj Close (the seed article's model), "
        "trained on the first 80%% of days and scored on the last 20%% next to repeat-last-value, in dollars. "
        "Writes a markdown table and a PNG of actual vs model vs baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    seed.add_argument("--data", type=Path, default=Path("../shared/data/stocks/GOOG.csv"),
                      help="daily OHLCV csv (Date,Open,High,Low,Close,Adj Close,Volume)")
    seed.add_argument("--out", type=Path, default=Path("docs/seed_example"))
    seed.add_argument("--epochs", type=int, default=50)
    seed.add_argument("--max-minutes", type=float)
    seed.add_argument("--seed", type=int, default=0)
    seed.set_defaults(handler=run_seed_example)

    demo.add_command(commands)
    dev.add_command(commands)


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_train(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training.data.eventlog import DataError

    try:
        signing_key = _signing_key(args.sign_key)  # a bad key or passphrase fails before any training
        log = load_data(args)  # before TensorFlow loads: a bad file fails in a second
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"seqcast train: {err}", file=sys.stderr)
        return 2
    from training.models import ModelSpec
    from training.pipeline import train_and_export
    from training.report import format_report, verdict
    from training.train import FitConfig
    archs = ["lstm", "transformer"] if args.arch == "both" else [args.arch]
    for arch in archs:
        spec = ModelSpec(arch, args.window, args.horizon, 0, args.width, args.depth, args.heads,
                         args.dropout, args.revin)
        config = FitConfig(args.epochs, args.batch_size, args.lr, args.weight_decay, args.patience,
                           args.max_minutes, args.seed)
        outcome = train_and_export(log, args.models_dir, args.name or log.source, spec, config, args.top_k,
                                   progress=not args.quiet, use_items=not args.no_items, signing_key=signing_key)
        print(f"\n## {arch}: {outcome.bundle}\n")
        if signing_key is not None:  # signed before it was renamed into place (training/bundle_writer.py)
            from streamer.signing import key_id

            print(f"signed with key id {key_id(signing_key.public_key())}")
        print(format_report(outcome.metrics))
        for line in verdict(outcome.metrics):
            print(line)
        print(f"best epoch {outcome.fit.best_epoch} ({outcome.fit.stopped_by}); train {outcome.fit.seconds:.1f} s, "
              f"total {outcome.seconds:.1f} s; parity max |keras-onnx| = {outcome.parity['max_abs_diff']:.2e} "
              f"on {outcome.parity['windows']} windows")
    return 0


def _signing_key(path: Path | None):
    """The private key of --sign-key (SettingsError, a ValueError, naming the file when unusable)."""
    if path is None:
        return None
    from streamer.signing import load_private_key

    return load_private_key(path)


def run_evaluate(args: argparse.Namespace) -> int:
    from streamer.bundle import BundleError, load_bundle
    from training.dataset import prepare
    from training.evaluate import evaluate
    from training.plots import plot_forecasts, plot_hr_curve
    from training.report import format_report

    try:
        bundle = load_bundle(args.bundle, threads=2)
        log = load_data(args)
    except (BundleError, ValueError, FileNotFoundError) as err:
        print(f"seqcast evaluate: {err}", file=sys.stderr)
        return 2
    m = bundle.manifest
    data = prepare(log, m.window, m.horizon, vocab=bundle.vocab, scaler=bundle.scaler)
    curves: dict = {}
    report = evaluate(lambda inputs: bundle.predict(inputs), data, curves=curves)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps({"bundle": f"{m.name}/{m.version}", **report}, indent=2))
    if curves:
        plot_hr_curve(args.out / "hr_at_k.png", curves, title=f"{m.name} {m.arch}: HR@K on the test split")
    if m.horizon > 0:
        test = data.test
        rows = (test.value_weights > 0).nonzero()[0][:4]
        predicted = bundle.predict({k: v[rows] for k, v in test.inputs.items()})["forecast"]
        plot_forecasts(args.out / "forecast.png", test.inputs["values"][rows], test.value_targets[rows][:, :m.horizon],
                       predicted, mask=test.inputs["mask"][rows], titles=[str(u) for u in test.users[rows]])
    print(format_report(report))
    print(f"wrote {args.out}/metrics.json and plots")
    return 0


def run_seed_example(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training import seed_example

    result = seed_example.run(args.data, epochs=args.epochs, seed=args.seed, max_minutes=args.max_minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    table = seed_example.markdown(result)
    cuts = result.cuts
    header = (f"Data: {args.data.name}, {cuts['rows']} trading days; train {cuts['train']}, "
              f"validation {cuts['val']}, test {cuts['test']} (chronological).\n\n")
    (args.out / "results.md").write_text(header + table + "\n")
    seed_example.plot(result, args.out / "forecast.png", f"{args.data.stem}: test period, next-day close")
    print(header + table)
    print(f"wrote {args.out}/results.md and {args.out}/forecast.png")
    return 0

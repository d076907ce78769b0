"""Amazon Beauty / MovieLens 100K: leave-one-out, full ranking, both architectures, baselines, HR@K plot.

The recipe (the same for every sequence file): windows of L = 50 items,
width 64, softmax cross-entropy through the tied item head, AdamW (weight
decay 1e-4), early stopping on validation NDCG@10 with patience 3. Both
architectures train SASRec-style on every position of a user's sequence at
once (`training.sequence_fit`, lr 3e-3, 128 users a batch): the Transformer
with 1 block, 1 head and dropout 0.2 (as eSASRec tuned for Beauty), the LSTM
with 1 layer and dropout 0.3 on its states. The softmax is over every item up
to 16,384 items and over 2,048 shared negatives above that (sampled softmax:
drawn by training popularity, logQ-corrected, accidental hits masked). With refit (the default) a
fresh model then trains for the best epoch count on the training plus
validation targets, the test item never a target. MovieLens also has ratings,
so its models get a forecast head (H = 1: the rating of the next interaction)
next to the item head, scored against repeat-last-value and the training mean;
they train window by window (`training.train.fit`, lr 1e-3, 256 windows a
batch).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.recsys import leave_one_out

WINDOW = 50
FULL_SOFTMAX_UP_TO = 16384  # items (Beauty: 12,101, full softmax won on validation); above, sampled softmax
NEGATIVES = 2048  # shared negatives per batch
SAMPLER = "popularity"  # negatives drawn by training popularity, logQ-corrected
REFIT = True  # retrain for the best epoch count on training + validation targets (training.sequence_fit)
ARCH = {"transformer": dict(width=64, depth=1, heads=1, dropout=0.2),
        "lstm": dict(width=64, depth=1, heads=1, dropout=0.3)}


def _load(dataset: str, path: Path, quick: bool):
    from training.data.loaders import load_movielens, load_sequences

    log = load_sequences(path) if dataset == "beauty" else load_movielens(path)
    if quick:  # the first few hundred users: a smoke run
        keep = np.isin(log.users, np.unique(log.users)[:600])
        log = log.take(np.nonzero(keep)[0])
    return log


def negatives_for(items: int, requested: int | None = None) -> int | None:
    """The recipe's softmax: None (full) for catalogues up to FULL_SOFTMAX_UP_TO items, else NEGATIVES
    sampled negatives; `requested` (0 = full softmax) overrides."""
    if requested is not None:
        return requested or None
    return NEGATIVES if items > FULL_SOFTMAX_UP_TO else None


def run_one(prepared, log, arch: str, args, minutes: float, bundle_dir: Path | None, name: str) -> dict:
    from bench.accuracy import export_bundle
    from training.evaluate import evaluate
    from training.models import ModelSpec
    from training.pipeline import parity_inputs
    from training.plots import plot_hr_curve
    from training.selection import guard_forecast, start_at_baseline
    from training.sequence_fit import fit_all_positions
    from training.train import FitConfig, fit

    started = time.monotonic()
    # a next-rating head carries the linear lookback map the selection guard needs (training.pipeline)
    spec = ModelSpec(arch, prepared.window, prepared.horizon, len(prepared.vocab), **ARCH[arch],
                     linear_head=prepared.horizon > 0)
    all_positions = prepared.horizon == 0
    config = FitConfig(epochs=1 if args.quick else 200, batch_size=128 if all_positions else 256,
                       learning_rate=3e-3 if all_positions else 1e-3, weight_decay=1e-4,
                       patience=3, max_minutes=minutes, seed=args.seed)
    negatives = negatives_for(len(prepared.vocab) - 2, getattr(args, "negatives", None))
    refit = bool(getattr(args, "refit", REFIT))
    sampler = getattr(args, "sampler", None) or SAMPLER
    result = (fit_all_positions(spec, prepared, log, config, negatives=negatives, sampler=sampler, refit=refit)
              if all_positions
              else fit(spec, prepared, config, progress=True,
                       init=lambda model: start_at_baseline(model, spec.horizon, spec.window)))
    selection = None if all_positions else guard_forecast(result.model, prepared.val, spec.window, spec.horizon)
    train_seconds = time.monotonic() - started
    curves: dict = {}
    report = evaluate(result.model, prepared, spec, curves=curves)
    if selection is not None:
        report["selection"] = selection.to_dict()
    png = Path(args.plots) / f"{name}_{arch}_hr_at_k.png"
    plot_hr_curve(png, curves, title=f"{name} {arch}: HR@k, full ranking, history excluded")
    out = {"arch": arch, "window": prepared.window, "metrics": report, "best_epoch": result.best_epoch,
           "stopped_by": result.stopped_by, "history": result.history, "train_windows": len(prepared.train),
           "train_seconds": round(train_seconds, 1), "seconds": round(time.monotonic() - started, 1),
           "spec": spec.to_dict(), "plot": str(png), "objective": "all positions" if all_positions else "per window",
           "negatives": negatives if all_positions else None, "sampler": sampler if negatives else None, "refit": refit and all_positions,
           "hr_curve": {k: [round(float(x), 5) for x in v] for k, v in curves.items()}}
    if bundle_dir is not None:
        out.update(export_bundle(result.model, spec, prepared, parity_inputs(prepared), bundle_dir,
                                 f"{name}-{arch}", report, config, Path(name)))
    model = report["items"]["model"]
    print(f"{name} {arch}: HR@10 {model['HR@10']:.4f} NDCG@10 {model['NDCG@10']:.4f} (history excluded), "
          f"best epoch {result.best_epoch}, {out['seconds']:.0f} s", flush=True)
    return out


def run(dataset: str, path: Path, args) -> dict:
    log = _load(dataset, path, args.quick)
    prepared = leave_one_out(log, 20 if args.quick else WINDOW, horizon=1 if log.values is not None else 0)
    minutes = args.max_minutes / len(args.archs)
    bundle_dir = None if args.no_bundle else Path(args.out) / "models"
    runs = [run_one(prepared, log, arch, args, minutes * 0.85, bundle_dir, dataset) for arch in args.archs]
    return {"kind": "ranking", "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
            "users": int(len(prepared.test)), "items": len(prepared.vocab) - 2, "runs": runs}

"""GOOD and BAD: the two bundles the rollouts compare, trained once into --models-dir.

Training runs in a subprocess (`python -m bench.rollout _train ...`), like bench/stream/bundles.py, so
the benchmark process never imports TensorFlow. GOOD is the LSTM recipe (window 50, next rating as the
forecast head); BAD is the same recipe trained one epoch on the training part with its items shuffled
across events, so its item head learned popularity at best. Both go through the same export, parity
check and manifest as `seqcast train`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.stream.common import ROOT

INDEX = "rollout_bench_models.json"
NAMES = {"good": "rollbench-good", "bad": "rollbench-bad"}


def recipe(args) -> dict:
    """Everything the cached bundles depend on: a change retrains them."""
    return {"data": str(Path(args.data).resolve()), "train_fraction": args.train_fraction, "arch": "lstm",
            "window": 50, "horizon": 1, "width": 64, "batch_size": 256, "learning_rate": 1e-3, "seed": 0,
            "good_epochs": args.epochs, "bad_epochs": 1, "max_minutes": args.max_minutes, "shuffle_seed": 1}


def _headline(metrics: dict) -> dict:
    """Offline test figures from a manifest's metrics: HR@10 against most-popular, next-rating MAE."""
    items, forecast = metrics.get("items", {}), metrics.get("forecast", {}).get("original_units", {})
    return {"HR@10": items.get("model", {}).get("HR@10"),
            "most_popular_HR@10": items.get("most_popular", {}).get("HR@10"),
            "MAE": forecast.get("model", {}).get("MAE"),
            "repeat_last_MAE": forecast.get("repeat_last_value", {}).get("MAE")}


def train_main(argv: list[str]) -> int:
    """`_train MODELS_DIR RECIPE_JSON`: train GOOD and BAD on the training part; write the index."""
    models_dir, spec = Path(argv[0]), json.loads(argv[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.rollout.data import load_split, shuffled_items
    from training.models import ModelSpec
    from training.pipeline import train_and_export
    from training.train import FitConfig

    split = load_split(Path(spec["data"]), spec["train_fraction"])
    logs = {"good": split.train, "bad": shuffled_items(split.train, spec["shuffle_seed"])}
    out = {"recipe": spec, "split": split.describe(), "bundles": {}}
    for role in ("good", "bad"):
        started = time.monotonic()
        epochs = spec[f"{role}_epochs"]
        outcome = train_and_export(
            logs[role], models_dir, NAMES[role],
            ModelSpec(spec["arch"], spec["window"], spec["horizon"], width=spec["width"]),
            FitConfig(epochs=epochs, batch_size=spec["batch_size"], learning_rate=spec["learning_rate"],
                      max_minutes=spec["max_minutes"], seed=spec["seed"]),
            top_k=10, progress=False)
        bundle = outcome.bundle.resolve()
        out["bundles"][role] = {
            "ref": f"{bundle.parent.name}/{bundle.name}", "path": str(bundle), "version": bundle.name,
            "epochs_run": len(outcome.fit.history), "stopped_by": outcome.fit.stopped_by,
            "train_seconds": round(time.monotonic() - started, 1), "offline": _headline(outcome.metrics)}
        print(f"trained {role} ({NAMES[role]}) in {time.monotonic() - started:.0f}s -> {bundle}", file=sys.stderr)
    (models_dir / INDEX).write_text(json.dumps(out, indent=2, default=str))
    return 0


def ensure_models(args, log) -> dict:
    """The GOOD and BAD bundles of MODELS_DIR/rollout_bench_models.json for this recipe, trained first
    (a few minutes, in a subprocess) when missing or made from another recipe."""
    models_dir = Path(args.models_dir).resolve()
    index = models_dir / INDEX
    wanted = recipe(args)
    if index.is_file():
        found = json.loads(index.read_text())
        if found.get("recipe") == wanted and all(Path(b["path"], "manifest.json").is_file()
                                                 for b in found["bundles"].values()):
            found["reused"] = True
            return found
    models_dir.mkdir(parents=True, exist_ok=True)
    log(f"training GOOD ({args.epochs} epochs, <= {args.max_minutes:g} min) and BAD (1 epoch, items shuffled) "
        f"into {models_dir} (one-off) ...")
    subprocess.run([sys.executable, "-m", "bench.rollout", "_train", str(models_dir), json.dumps(wanted)],
                   check=True, cwd=ROOT)
    found = json.loads(index.read_text())
    found["reused"] = False
    return found

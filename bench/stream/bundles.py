"""The two bundles the benchmark serves: an LSTM and a Transformer, trained once into --models-dir.

Training runs in a subprocess (`python -m bench.stream _train ...`): the benchmark process itself
never imports TensorFlow, so its own CPU and memory stay out of the measurements.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.stream.common import ARCHS, HORIZON, ROOT, SELF, WINDOW


def train_main(argv: list[str]) -> int:
    """`_train MODELS_DIR USERS ITEMS EVENTS_PER_USER EPOCHS`: train both bundles, keep the Keras weights."""
    models_dir, users, items, per_user, epochs = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.data.synthetic import synthetic_log
    from training.models import ModelSpec
    from training.pipeline import train_and_export
    from training.train import FitConfig

    log = synthetic_log(users=users, items=items, events_per_user=per_user, seed=0)
    out = {"training_log": {"users": users, "items": items, "events_per_user": per_user, "seed": 0}, "bundles": {}}
    for arch in ARCHS:
        started = time.monotonic()
        outcome = train_and_export(log, models_dir, f"bench-{arch}", ModelSpec(arch, WINDOW, HORIZON),
                                   FitConfig(epochs=epochs, batch_size=256, max_minutes=1.0, seed=0),
                                   top_k=10, progress=False)
        weights = models_dir / "keras" / f"bench-{arch}.weights.h5"
        weights.parent.mkdir(parents=True, exist_ok=True)
        outcome.fit.model.save_weights(weights)
        out["bundles"][arch] = {"bundle": str(outcome.bundle.resolve()), "weights": str(weights.resolve()),
                                "spec": outcome.spec.to_dict(), "train_seconds": round(time.monotonic() - started, 1),
                                "metrics": outcome.metrics}
        print(f"trained {arch} in {time.monotonic() - started:.0f}s -> {outcome.bundle}", file=sys.stderr)
    (models_dir / "bench_models.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


def ensure_bundles(models_dir: Path, users: int, items: int) -> dict:
    """The bundles listed in MODELS_DIR/bench_models.json, trained first when any file is missing."""
    index = models_dir / "bench_models.json"
    if index.is_file():
        found = json.loads(index.read_text())
        if all(Path(b["bundle"], "manifest.json").is_file() and Path(b["weights"]).is_file()
               for b in found["bundles"].values()):
            found["reused"] = True
            return found
    models_dir.mkdir(parents=True, exist_ok=True)
    print(f"training the LSTM and Transformer bundles into {models_dir} (one-off) ...", file=sys.stderr)
    subprocess.run([*SELF, "_train", str(models_dir.resolve()), str(min(users, 4000)), str(items), "20", "1"],
                   check=True, cwd=ROOT)
    found = json.loads(index.read_text())
    found["reused"] = False
    return found

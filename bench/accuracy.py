"""Accuracy on public benchmarks with the papers' protocols, using the servable seqcast models.

    python bench/accuracy.py --dataset etth1            # ETTh1, H = 96/192/336/720, LSTM and Transformer
    python bench/accuracy.py --dataset beauty --arch transformer
    python bench/accuracy.py --dataset all --quick      # a small smoke run of every dataset

For each dataset and architecture it trains the same Keras model that
`seqcast train` writes as a bundle (the four `streamer.features` inputs),
scores it on the test split next to baselines computed on the same windows,
prints a markdown table beside the published anchors, writes JSON and a
markdown table under --out, plots under --plots, and exports the first
configuration of each architecture to an ONNX bundle with the parity check
(`training.export`), so the reported numbers belong to a model that serves.
Protocols: bench/ett.py, bench/recsys.py and docs/accuracy.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import anchors  # noqa: E402

DATASETS = ("etth1", "ettm1", "beauty", "ml100k")
FILES = {"etth1": "ett/ETTh1.csv.gz", "ettm1": "ett/ETTm1.csv.gz", "beauty": "amazon/Beauty.txt",
         "ml100k": "movielens/ml-100k.u.data"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS + ("all",), default="etth1")
    parser.add_argument("--horizons", default="96,192,336,720", help="ETT forecast horizons, comma-separated")
    parser.add_argument("--arch", choices=["lstm", "transformer", "both"], default="both")
    parser.add_argument("--max-minutes", type=float, default=55.0,
                        help="training budget per dataset (all horizons and architectures), split evenly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: few windows, 1 epoch")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "accuracy", help="JSON, tables, bundles")
    parser.add_argument("--plots", type=Path, default=None, help="PNG folder (default: --out)")
    parser.add_argument("--no-bundle", action="store_true", help="skip the ONNX export + bundle")
    parser.add_argument("--negatives", type=int, default=None,
                        help="recommenders: sampled-softmax negatives per batch (0 = full softmax; default: the "
                        "recipe, full softmax up to 16,384 items, 2,048 above)")
    parser.add_argument("--sampler", choices=["popularity", "uniform"], default=None,
                        help="recommenders: how negatives are drawn (default: popularity, logQ-corrected)")
    parser.add_argument("--no-refit", dest="refit", action="store_false",
                        help="recommenders: serve the early-stopped model, without the refit on train + "
                        "validation targets")
    args = parser.parse_args(argv)
    args.horizons = [int(h) for h in args.horizons.split(",")]
    args.archs = ["transformer", "lstm"] if args.arch == "both" else [args.arch]
    args.plots = args.plots or args.out
    return args


def command_line(args: argparse.Namespace, dataset: str) -> str:
    """The command that reproduces one dataset's rows."""
    parts = ["python bench/accuracy.py", f"--dataset {dataset}", f"--arch {args.arch}",
             f"--seed {args.seed}", f"--max-minutes {args.max_minutes:g}"]
    if dataset.startswith("ett"):
        parts.append(f"--horizons {','.join(map(str, args.horizons))}")
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def export_bundle(model, spec, data, parity_inputs: dict, models_dir: Path, name: str, metrics: dict,
                  config, source: Path) -> dict:
    """ONNX export, parity against Keras, bundle write: the proof that the scored model serves."""
    from training.bundle_writer import write_bundle
    from training.export import check_parity, export_onnx

    with tempfile.TemporaryDirectory(prefix="seqcast-acc-") as tmp:
        onnx_file = export_onnx(model, spec.window, Path(tmp) / "model.onnx")
        parity = check_parity(model, onnx_file, parity_inputs)
        bundle = write_bundle(models_dir, name, onnx_file, data.vocab, data.scaler, arch=spec.arch,
                              window=spec.window, horizon=spec.horizon, top_k=10, has_items=spec.vocab_size > 2,
                              training_data={"source": str(source.name)}, metrics=metrics, parity=parity,
                              hyperparameters={**spec.to_dict(), "learning_rate": config.learning_rate,
                                               "batch_size": config.batch_size, "seed": config.seed})
    return {"bundle": str(bundle), "parity_max_abs_diff": parity["max_abs_diff"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras  # noqa: F401  (TensorFlow loads here, after --help)
    from bench import run_ett, run_recsys

    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        started = time.monotonic()
        runner = run_ett.run if dataset.startswith("ett") else run_recsys.run
        result = runner(dataset, args.data_dir / FILES[dataset], args)
        result.update({"dataset": dataset, "command": command_line(args, dataset), "seed": args.seed,
                       "quick": args.quick, "wall_seconds": round(time.monotonic() - started, 1)})
        for run in result["runs"]:
            run["command"] = result["command"]
        table = anchors.table(result)
        print(table, flush=True)
        stem = dataset if args.arch == "both" else f"{dataset}-{args.arch}"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (args.out / f"{stem}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

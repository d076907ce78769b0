"""Epoch time against catalogue size: full vs sampled softmax in all-position training.

Why: the full softmax scores every training position against all V items, so
an epoch's cost grows with V even when users and events stay fixed; a held-out
35k-user, 18k-item catalogue fitted only 9 epochs into 25 minutes. This bench
holds users and events fixed (synthetic sequences, leave-one-out split, the
recipe's model and batch size from `bench/run_recsys.py`) and varies only V,
timing for each V and each objective (full softmax; K shared sampled
negatives):

- train s/epoch: one pass over every training position (`fit_all_positions`),
- val s (batched): the per-epoch validation pass as fit_all_positions runs it
  (`training.ranking_batches`, rows scored and ranked in batches),
- val s (all rows): the same validation through `training.train.validation_score`,
  which first builds the whole [users, V] score matrix (its size is shown),
- val NDCG@10 after the timed epochs (a sanity check that both objectives learn
  the synthetic sequences, not a benchmark of accuracy),
- epochs in budget: how many train + validation epochs fit into the recipe's
  25.5-minute training budget (`--max-minutes 30`, one architecture).

With K >= V - 2 the sampled objective is the full softmax over the real items
(every item is a negative), so the smallest catalogue shows the sampling code's
overhead. TensorFlow's start-up is paid by an untimed warm-up run; the first
epoch of each measurement still includes tracing its graphs (about a second),
so with --epochs 2 or more the times are the mean over the later epochs. Times are wall seconds on this
machine; run it alone.

Synthetic data: item popularity is Zipf-like (exponent 0.8), and each next item
is, with probability 0.5, a fixed function of the previous one (a learnable
transition), else a popularity draw; then every item of the catalogue is put at
one random position, so that the catalogue has exactly the requested size.

Writes runs/catalogue_scaling[-quick].json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUDGET_MINUTES = 30 * 0.85  # bench/run_recsys.py: --max-minutes 30, one architecture


def synthetic_log(users: int, events: int, items: int, seed: int = 0):
    """`users` x `events` interactions over `items` items (see the module docstring)."""
    from training.data.eventlog import EventLog

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(weights / weights.sum())
    popular = lambda n: np.minimum(np.searchsorted(cdf, rng.random(n)), items - 1)
    jump = rng.permutation(items)  # the learnable transition: item -> jump[item]
    seq = np.empty((users, events), np.int64)
    seq[:, 0] = popular(users)
    for t in range(1, events):
        follow = rng.random(users) < 0.5
        seq[:, t] = np.where(follow, jump[seq[:, t - 1]], popular(users))
    flat = seq.ravel()
    cover = min(items, flat.size)  # every item of the catalogue occurs (random positions), so V is exact
    flat[rng.permutation(flat.size)[:cover]] = rng.permutation(items)[:cover]
    names = np.array([f"i{i}" for i in range(items)], dtype=object)
    return EventLog(np.repeat(np.array([f"u{u}" for u in range(users)], dtype=object), events),
                    np.tile(np.arange(events, dtype=np.float64), users), names[flat], None, "synthetic")


def measure(log, arch: str, negatives: int | None, epochs: int, seed: int, sampler: str = "uniform") -> dict:
    """Train `epochs` epochs (no early stopping) and time them and the validation passes."""
    from bench.recsys import leave_one_out
    from bench.run_recsys import ARCH, WINDOW
    from training.models import ModelSpec
    from training.sequence_fit import fit_all_positions
    from training.train import FitConfig, validation_score

    data = leave_one_out(log, WINDOW)
    spec = ModelSpec(arch, WINDOW, 0, len(data.vocab), **ARCH[arch])
    config = FitConfig(epochs=epochs, batch_size=128, learning_rate=3e-3, weight_decay=1e-4,
                       patience=epochs + 1, seed=seed)
    result = fit_all_positions(spec, data, log, config, progress=False, negatives=negatives, sampler=sampler)
    timed = result.history[1:] or result.history  # the first epoch also traces the graphs
    started = time.monotonic()
    unbatched = validation_score(result.model, data.val)
    whole = time.monotonic() - started
    train_s = float(np.mean([h["train_seconds"] for h in timed]))
    val_s = float(np.mean([h["val_seconds"] for h in timed]))
    return {"items": len(data.vocab) - 2, "users": len(data.val), "objective":
            "full softmax" if negatives is None else f"sampled, K={negatives}" + (f" ({sampler})" if sampler != "uniform" else ""),
            "train_seconds": round(train_s, 2), "val_seconds_batched": round(val_s, 2),
            "val_seconds_all_rows": round(whole, 2),
            "score_matrix_mb": round(len(data.val) * len(data.vocab) * 4 / 2**20),
            "val_NDCG@10": round(result.history[-1]["val_NDCG@10"], 4),
            "val_NDCG@10_all_rows": round(unbatched["val_NDCG@10"], 4),
            "epochs_in_budget": int(BUDGET_MINUTES * 60 // (train_s + val_s)),
            "epochs": len(result.history), "training_targets": int(len(data.train))}


def table(rows: list[dict]) -> str:
    head = ("| items | objective | train s/epoch | val s (batched) | val s (all rows) | [users, V] MB "
            "| val NDCG@10 | epochs in 25.5 min |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['items']:,} | {r['objective']} | {r['train_seconds']:.1f} | {r['val_seconds_batched']:.1f} "
             f"| {r['val_seconds_all_rows']:.1f} | {r['score_matrix_mb']:,} | {r['val_NDCG@10']:.4f} "
             f"| {r['epochs_in_budget']} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="2000,5000,10000,20000,40000",
                        help="catalogue sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--users", type=int, default=20_000, help="users (default: %(default)s)")
    parser.add_argument("--events", type=int, default=10, help="events per user (default: %(default)s)")
    parser.add_argument("--negatives", type=int, default=2048,
                        help="K shared sampled negatives per batch (default: %(default)s)")
    parser.add_argument("--sampler", choices=["uniform", "popularity"], default="uniform",
                        help="how negatives are drawn (logQ-corrected either way)")
    parser.add_argument("--arch", choices=["transformer", "lstm"], default="transformer")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per measurement; with 2+ the first (graph tracing) is not timed")
    parser.add_argument("--quick", action="store_true", help="5,000 users, catalogues 2k and 20k: ~1 minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs", help="JSON folder (default: runs/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.items = 5_000, "2000,20000"
    rows = []
    started = time.monotonic()
    measure(synthetic_log(500, args.events, 500, args.seed), args.arch, None, 1, args.seed)  # TF start-up, untimed
    for items in [int(v) for v in args.items.split(",")]:
        log = synthetic_log(args.users, args.events, items, args.seed)
        for negatives in (None, args.negatives):
            rows.append(measure(log, args.arch, negatives, args.epochs, args.seed, args.sampler))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{args.users:,} users x {args.events} events, {args.arch}, L = 50, 128 users a batch, "
          f"{args.epochs} epoch(s) each; {time.monotonic() - started:.0f} s in all\n")
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"catalogue_scaling{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"users": args.users, "events": args.events, "arch": args.arch,
                                "negatives": args.negatives, "sampler": args.sampler, "epochs": args.epochs, "rows": rows,
                                "command": "python bench/catalogue_scaling.py " + " ".join(argv or sys.argv[1:])},
                               indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

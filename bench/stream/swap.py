"""Swap cost (issue 6): promote another bundle mid-run at a fixed rate below saturation and compare
latency around the switch with the steady state before and after it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bench.stream.common import log, summary
from bench.stream.infra import Context
from bench.stream.runs import fixed_rate
from streamer.bundle import MANIFEST, Manifest, write_manifest
from streamer.events import Event


def same_cost_copy(bundle: str) -> str:
    """A second version of `bundle` (same files, manifest version + "-b"): a swap that changes no model cost."""
    src = Path(bundle)
    dst = src.parent / f"{src.name}-b"
    if not (dst / "manifest.json").is_file():
        tmp = src.parent / f".{dst.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        manifest = Manifest.from_file(tmp / MANIFEST)
        manifest.version = dst.name
        write_manifest(tmp, manifest)  # re-sealed: a hand-edited manifest fails its checksums
        tmp.rename(dst)
    return str(dst.resolve())


def swap_windows(ts, latency, e2e, bodies, promoted_at: float, logs: list[dict], started: float) -> dict:
    """When the new version took over (registry watcher, loop, first prediction) and latency in three windows."""
    versions = [b["model"]["name"] + "/" + b["model"]["version"] for b in bodies]
    old = versions[int(np.argmin(ts))]
    new_rows = [i for i, v in enumerate(versions) if v != old]
    if not new_rows:
        return {"swap": {"error": "no prediction of the promoted version"}}
    first_new = float(min(ts[i] for i in new_rows))
    swapped_log = [r["ts"] for r in logs if r.get("msg") == "models swapped" and r["ts"] >= promoted_at - 0.01]
    serving_log = [r["ts"] for r in logs if r.get("msg") == "serving new models" and r["ts"] >= promoted_at - 0.01]
    late_old = sum(1 for i, v in enumerate(versions) if v == old and ts[i] > first_new)

    def window(lo: float, hi: float) -> dict:
        rows = (ts >= lo) & (ts <= hi)
        return {"from_s": round(lo - started, 2), "to_s": round(hi - started, 2),
                "latency_ms": summary(latency[rows]), "e2e_ms": summary(e2e[rows])}
    return {"swap": {
        "old": old, "new": versions[new_rows[0]],
        "promoted_at_s": round(promoted_at - started, 2),
        "manager_loaded_after_s": round(swapped_log[0] - promoted_at, 3) if swapped_log else None,
        "loop_swapped_after_s": round(serving_log[0] - promoted_at, 3) if serving_log else None,
        "first_new_prediction_after_s": round(first_new - promoted_at, 3),
        "old_version_predictions_after_first_new": late_old,
        "steady_before": window(started + 3.0, promoted_at),
        "around_swap": window(first_new - 2.0, first_new + 2.0),
        "steady_after": window(first_new + 2.0, float(ts.max())),
    }}


def swap_rate_for(args, sustained_eps: list[float]) -> float:
    """--swap-rate, or min(lowest --rates, half the slowest sustained throughput rounded down to 100)."""
    if args.swap_rate:
        return args.swap_rate
    return min([min(args.rate_list)] + [max(100.0, 100 * (m // 200)) for m in sustained_eps])


def run_swaps(ctx: Context, args, paths: dict[str, str], prefix: str, events: list[Event], swap_rate: float,
              client: str | None) -> dict:
    """Two swaps of the LSTM service: to a byte-identical copy (pure swap cost) and to the Transformer."""
    from streamer.registry import Registry

    per_run = int(swap_rate * args.swap_seconds)
    targets = {"same cost: LSTM -> a copy of it as a new version": same_cost_copy(paths["lstm"]),
               "LSTM -> Transformer": paths["transformer"]}
    out = {}
    for i, (label, target) in enumerate(targets.items()):
        log(f"[swap] {label} at {swap_rate:g} ev/s ({client}) ...")
        Registry(ctx.client, prefix).promote(str(Path(paths["lstm"]).resolve()))  # start on the LSTM
        chunk = events[i * per_run:(i + 1) * per_run]
        out[label] = fixed_rate(ctx, "lstm", paths["lstm"], prefix, chunk, swap_rate, swap_to=target,
                                swap_after_s=args.swap_seconds / 2, client=client)
    return out

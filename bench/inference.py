"""onnxruntime cost per event of a bundle, alone: no Kafka, no Redis, no encoding (issue 11).

    .venv/bin/python bench/inference.py BUNDLE [BUNDLE ...] [--batch 250 500 1000] [--threads 1 2]

BUNDLE is a bundle version directory (models/<name>/<version>) or a name directory (its
newest version is taken). `--model FILE` times another ONNX file (e.g. a re-export of the
same weights) with the bundle's manifest, so an old and a new export of one model can be
compared on the same windows; outputs are compared with the bundle's own file and the
largest difference is printed.

Inputs are realistic encoded windows: a synthetic event log (training.data.synthetic) over
the bundle's catalogue, encoded with the bundle's vocabulary and scaler by the trainer's
encoder (full windows of L events, as in bench/stream.py's workload). Per configuration:

- `predict`: `Bundle.predict` as the service calls it (slices of INFERENCE_CHUNK rows);
- `raw`: one `session.run` over the whole batch.

Figures: CPU µs per event (time.process_time: every thread of this process, so two
intra-op threads count twice) and wall µs per event; the best of --repeats timed rounds,
each of enough calls to last ~--seconds / --repeats, so other processes on the machine
inflate the figures less. `--profile` prints onnxruntime's per-op kernel time (batch of
the first --batch, one thread) for each bundle.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamer.bundle import MANIFEST, Bundle, load_bundle, make_session  # noqa: E402
from streamer.features import INPUT_NAMES  # noqa: E402


def resolve(path: Path) -> Path:
    """A version directory as is; a name directory -> its newest version."""
    if (path / MANIFEST).is_file():
        return path
    versions = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
    if not versions:
        raise SystemExit(f"{path}: no bundle (no {MANIFEST} in it or in a subdirectory)")
    return versions[-1]


def windows(bundle: Bundle, rows: int, seed: int = 7) -> dict[str, np.ndarray]:
    """`rows` encoded full windows from a synthetic log over the bundle's catalogue."""
    from training.data.synthetic import synthetic_log
    from training.dataset import prepare

    L, items = bundle.manifest.window, max(bundle.manifest.vocab_size - 2, 10)
    per_user = L + 10
    users = max(rows // 4, 50)
    data = prepare(synthetic_log(users=users, items=items, events_per_user=per_user, seed=seed), L,
                   bundle.manifest.horizon, vocab=bundle.vocab, scaler=bundle.scaler)
    parts = [data.train.inputs, data.val.inputs, data.test.inputs]
    full = {k: np.concatenate([p[k] for p in parts]) for k in INPUT_NAMES}
    keep = np.flatnonzero(full["mask"].sum(axis=1) == L)
    if len(keep) < rows:
        raise SystemExit(f"only {len(keep)} full windows, {rows} wanted")
    pick = np.random.default_rng(seed).choice(keep, rows, replace=False)
    return {k: np.ascontiguousarray(v[pick]) for k, v in full.items()}


def time_calls(call, events: int, seconds: float, repeats: int) -> dict:
    """Best-of-`repeats` CPU and wall µs per event of `call()` (each handles `events` events)."""
    call()
    started = time.perf_counter()
    call()
    once = max(time.perf_counter() - started, 1e-6)
    calls = max(1, int(seconds / repeats / once))
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            call()
        cpu.append((time.process_time() - c0) / calls / events * 1e6)
        wall.append((time.perf_counter() - w0) / calls / events * 1e6)
    return {"cpu_us_per_event": round(min(cpu), 1), "wall_us_per_event": round(min(wall), 1),
            "events_per_cpu_s": round(1e6 / min(cpu)), "calls_per_round": calls}


def profile_ops(model_file: Path, feed: dict[str, np.ndarray], calls: int = 10, top: int = 12) -> list[dict]:
    """onnxruntime's kernel time per node (one intra-op thread), largest first, µs per event."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        for _ in range(calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"][:-len("_kernel_time")])] += e["dur"]
    total = sum(per_node.values())
    rows = len(feed[INPUT_NAMES[0]]) * (calls + 1)
    return [{"op": op, "node": node, "us_per_event": round(us / rows, 2), "share": round(us / total, 3)}
            for (op, node), us in per_node.most_common(top)]


def run(args: argparse.Namespace) -> list[dict]:
    results = []
    for given in args.bundles:
        directory = resolve(Path(given))
        bundle = load_bundle(directory)
        model_file = Path(args.model) if args.model else directory / "model.onnx"
        feeds = windows(bundle, max(args.batch))
        label = f"{bundle.manifest.name} ({bundle.manifest.arch}) {model_file}"
        print(f"== {label}", flush=True)
        if args.model:
            reference = bundle.predict(feeds)
            other = make_session(model_file, 1)
            got = dict(zip([o.name for o in other.get_outputs()], other.run(None, feeds)))
            diff = {k: float(np.max(np.abs(got[k] - v))) for k, v in reference.items()}
            print(f"   max |this file - the bundle's model.onnx| per output: {diff}", flush=True)
        if args.profile:
            feed = {k: v[:args.batch[0]] for k, v in feeds.items()}
            for row in profile_ops(model_file, feed):
                print(f"   profile {row['us_per_event']:8.2f} µs/event {100 * row['share']:5.1f}%  "
                      f"{row['op']:<18} {row['node']}", flush=True)
        for threads in args.threads:
            session = make_session(model_file, threads)
            served = Bundle(directory, bundle.manifest, bundle.vocab, bundle.scaler, session)
            for batch in args.batch:
                feed = {k: v[:batch] for k, v in feeds.items()}
                for mode in args.modes:
                    call = (lambda: served.predict(feed)) if mode == "predict" else (lambda: session.run(None, feed))
                    row = {"bundle": str(directory), "model": str(model_file), "arch": bundle.manifest.arch,
                           "threads": threads, "batch": batch, "mode": mode,
                           **time_calls(call, batch, args.seconds, args.repeats)}
                    results.append(row)
                    print(f"   threads {threads}  batch {batch:5d}  {mode:<8} cpu {row['cpu_us_per_event']:7.1f} µs/event"
                          f"  wall {row['wall_us_per_event']:7.1f} µs/event  ({row['events_per_cpu_s']:,} events per CPU s)",
                          flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="bundle version or name directories")
    parser.add_argument("--model", help="time this ONNX file instead of the bundle's model.onnx (one bundle)")
    parser.add_argument("--batch", type=int, nargs="+", default=[250, 500, 1000], help="rows per predict call")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime intra-op threads")
    parser.add_argument("--modes", nargs="+", choices=("predict", "raw"), default=["predict", "raw"])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per configuration (best kept)")
    parser.add_argument("--profile", action="store_true", help="print onnxruntime's per-op time")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.model and len(args.bundles) != 1:
        parser.error("--model needs exactly one bundle")
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

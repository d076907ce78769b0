"""Streaming benchmark (issues 3 and 6): `python -m streamer serve` end to end through Kafka and Redis.

    .venv/bin/python bench/stream.py                 # full run: 200k events, 10k users (~10 min)
    .venv/bin/python bench/stream.py --quick         # smoke run: 20k events
    .venv/bin/python bench/stream.py --profile       # + a cProfile'd LSTM service run (40k events)

What it does, in one process tree on this machine (a real Tansu broker started
here via streamer.embedded, the real Redis at --redis-url, unique key prefixes,
deleted at the end):

1. Bundles: an LSTM and a Transformer (L=50, width 64, item head over the
   --items catalogue + a 3-step forecast head) trained on synthetic data
   (min(--users, 4000) users x 20 events, 1 epoch, <= 1 min of fitting each:
   accuracy does not matter here) with `training.pipeline.train_and_export`
   into --models-dir, once (reused when present; a few minutes). The fitted
   Keras weights are kept beside them for baseline (a). Training runs in a
   subprocess: this process never imports TensorFlow.
2. Workload: one synthetic event log (--users users, a --items catalogue),
   replayed in event-time order. The first --events events are the backlog;
   later slices of the same log feed the fixed-rate, swap, stage and baseline
   runs, so every user's window keeps growing in time order.
3. Per bundle:
   - sustained: the backlog is pre-loaded into a 1-partition input topic, then
     a `serve` subprocess (assign_all_partitions=true: no consumer group join;
     offsets still committed under a unique group id) drains it. events/s =
     predictions / (last - first prediction record timestamp); CPU s per 1k
     events = the service's utime+stime (/proc/<pid>/stat, sampled every
     0.1 s and interpolated at the first and last prediction) per 1000
     predictions. Latency = the predictions' own latency_ms (batch consumed ->
     prediction sent), which under a backlog is bound by the batch time
     (max_poll_records events per batch), not by queueing in Kafka.
   - scale-out (LSTM only): --group-procs services in ONE consumer group drain
     the same backlog from a topic with that many partitions (keyed by user);
     events/s first to last prediction (and over the 10th-90th percentile of
     prediction times, which drops the join and the uneven tail), duplicates
     from a rebalance counted, CPU = all services together.
   - fixed rate: a separate producer process sends --rate events/s, paced per
     event, into a fresh topic the service already reads; its achieved rate
     and worst lag behind schedule are reported. Latency: latency_ms and
     e2e_ms = prediction record timestamp - input record timestamp (the
     producer's send -> the service's send; ms resolution; includes the
     feed's <= 20 ms batching (FEED_LINGER_MS), the broker hop, the fetch
     wait and the loop's queueing, not the output linger). The LSTM is also
     run at --rate with --group-procs services in one consumer group.
   - baseline (a), the seed article's way: Keras `model.predict` on one window
     per event, windows kept in Python dicts (no Kafka, no Redis: an upper
     bound for that approach), in a subprocess; a few hundred events.
   - baseline (b), naive per event: parse, one Redis round trip
     (WindowStore.append_and_read([event])), one onnxruntime call with batch 1,
     one asynchronous produce (same producer settings as the service; the
     `sync` variant waits for the broker's ack each time), in this process.
   ratio = seqcast's sustained events/s / the path's events/s.
4. Swap cost (issue 6): the LSTM service (registry polled every
   registry_poll_ms) at --swap-rate events/s (default: below saturation, see
   --help, so that queueing does not hide the swap); mid-run the Transformer
   bundle is promoted with streamer.registry.Registry(...).promote(<abs bundle
   path>). p99 latency of predictions within +-2 s of the first prediction of
   the new version vs steady state before the promote (and after the swap).
   Two runs: to a byte-identical copy of the LSTM under a new version (the
   pure cost of a swap: load, checksum, warm-up beside the loop, switch) and
   to the Transformer (a swap that also changes the model's cost).
   A fixed-rate run whose e2e latency grows from its first to its last fifth
   is flagged "fell behind": the service was saturated at that rate.
5. Per-stage costs of one batch of --batch events, in this process, with the
   service's own functions in the service's order (consume, parse, Redis
   pipeline, encode, inference, post-processing, JSON + produce, live accuracy).

Event-time lag (prediction time - event ts) is not reported: the synthetic
timestamps are in 2024, so it would only measure the calendar.
Prints a markdown report and writes --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict, deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from streamer.events import Event  # noqa: E402

WINDOW = 50
HORIZON = 3
ARCHS = ("lstm", "transformer")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The paced feed batches for up to 20 ms. With ~1-record batches (linger 2 ms) Tansu's memory engine got
# slower as the topic grew (0.2 -> 0.6 of a core at a constant 700 ev/s within 20 s), and the latency drift
# that caused hid everything else; at 20 ms Tansu stays flat. e2e_ms therefore includes <= 20 ms of feed batching.
FEED_LINGER_MS = 20


# ----------------------------------------------------------------------------- data


def workload(users: int, items: int, total: int, seed: int = 1) -> list[Event]:
    """`total` events of a synthetic log (users x ceil(total/users) events), in event-time order."""
    from training.data.synthetic import synthetic_log

    per_user = max(2, math.ceil(total / users))
    log = synthetic_log(users=users, items=items, events_per_user=per_user, seed=seed)
    return list(log.events())[:total]


def pct(values, q: float) -> float | None:
    return None if len(values) == 0 else round(float(np.percentile(np.asarray(values, np.float64), q)), 2)


def summary(values) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": None if len(values) == 0 else round(float(max(values)), 2)}


# ----------------------------------------------------------------------------- bundles (subprocess: TensorFlow)


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
    index = models_dir / "bench_models.json"
    if index.is_file():
        found = json.loads(index.read_text())
        if all(Path(b["bundle"], "manifest.json").is_file() and Path(b["weights"]).is_file()
               for b in found["bundles"].values()):
            found["reused"] = True
            return found
    models_dir.mkdir(parents=True, exist_ok=True)
    print(f"training the LSTM and Transformer bundles into {models_dir} (one-off) ...", file=sys.stderr)
    subprocess.run([sys.executable, __file__, "_train", str(models_dir), str(min(users, 4000)), str(items), "20", "1"],
                   check=True, cwd=ROOT)
    found = json.loads(index.read_text())
    found["reused"] = False
    return found


# ----------------------------------------------------------------------------- baseline (a): Keras per event


def keras_main(argv: list[str]) -> int:
    """`_keras SPEC_JSON`: Keras model.predict for each event, windows kept in Python; prints JSON."""
    spec_in = json.loads(argv[0])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: F401

    from streamer.bundle import load_bundle
    from streamer.features import INPUT_NAMES
    from streamer.predict import encode
    from streamer.window_store import Window
    from training.models import ModelSpec, build_model

    events = workload(spec_in["users"], spec_in["items"], spec_in["total"])
    start, n = spec_in["start"], spec_in["n"]
    bundle = load_bundle(spec_in["bundle"])
    model = build_model(ModelSpec(**spec_in["spec"]))
    model.load_weights(spec_in["weights"])
    history: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))
    for event in events[:start]:
        history[event.user_id].append(event)

    def one(event: Event):
        window = history[event.user_id]
        window.append(event)
        w = Window(np.array([e.ts for e in window]), [e.item_id for e in window],
                   np.array([np.nan if e.value is None else e.value for e in window]))
        inputs = encode(bundle, [event], [w])
        return inputs, model.predict([inputs[k] for k in INPUT_NAMES], verbose=0)

    warm = events[start:start + 5]
    diffs = []
    for event in warm:  # warm-up, and check the Keras model is the bundle's model
        inputs, out = one(event)
        onnx_out = bundle.predict(inputs)
        diffs += [float(np.max(np.abs(np.asarray(out[k]) - onnx_out[k]))) for k in onnx_out]
    times = []
    cpu0 = time.process_time()
    for event in events[start + 5:start + 5 + n]:
        t0 = time.perf_counter()
        one(event)
        times.append((time.perf_counter() - t0) * 1000)
    cpu = time.process_time() - cpu0
    print(json.dumps({"events": len(times), "events_per_s": round(len(times) / (sum(times) / 1000), 1),
                      "latency_ms": summary(times), "cpu_s_per_1k": round(cpu / (len(times) / 1000), 3),
                      "max_abs_diff_vs_onnx": max(diffs)}))
    return 0


def keras_baseline(arch: str, info: dict, work: dict, start: int, n: int) -> dict:
    spec = {**work, "bundle": info["bundle"], "weights": info["weights"], "spec": info["spec"], "start": start, "n": n}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "_keras", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"keras baseline ({arch}) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


# ----------------------------------------------------------------------------- paced producer (subprocess)


def produce_main(argv: list[str]) -> int:
    """`_produce BROKER TOPIC RATE FILE`: send FILE's `key<TAB>value` lines at RATE events/s; prints JSON."""
    from streamer.transport import Producer

    broker, topic, rate, path = argv[0], argv[1], float(argv[2]), argv[3]
    lines = Path(path).read_bytes().split(b"\n")
    pairs = [line.split(b"\t", 1) for line in lines if line]
    producer = Producer(broker, linger_ms=FEED_LINGER_MS)
    send = producer.send
    behind = []
    print(json.dumps({"ready": True}), flush=True)
    t0 = time.monotonic()
    started_wall = time.time()
    for i, (key, value) in enumerate(pairs):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0.0005:
            time.sleep(delay)
        behind.append(time.monotonic() - due)
        send(topic, value, key)
    sent_s = time.monotonic() - t0
    producer.flush()
    producer.close()
    print(json.dumps({"sent": len(pairs), "started_at": started_wall, "seconds": round(sent_s, 3),
                      "achieved_rate": round(len(pairs) / max(sent_s, 1e-9), 1),
                      "behind_schedule_ms": {"p99": round(float(np.percentile(behind, 99)) * 1000, 2),
                                             "max": round(max(behind) * 1000, 2)}}), flush=True)
    return 0


class PacedProducer:
    def __init__(self, broker: str, topic: str, rate: float, events: list[Event], tmp: Path) -> None:
        path = tmp / f"feed-{uuid.uuid4().hex[:6]}.tsv"
        path.write_bytes(b"".join(e.user_id.encode() + b"\t" + e.to_json_bytes() + b"\n" for e in events))
        self.proc = subprocess.Popen([sys.executable, __file__, "_produce", broker, topic, str(rate), str(path)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        json.loads(self.proc.stdout.readline())  # connected, about to start
        self.started = time.time()

    def result(self, timeout: float) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode:
            raise RuntimeError(f"producer failed ({self.proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- CPU sampling


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, niced, total) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait = parts[:5]
    total = sum(parts[:8])
    return total - idle - iowait, nice, total


class CpuSampler(threading.Thread):
    """Samples process CPU (utime+stime) of named pids and the machine every `interval` s."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, float], tuple]] = []
        self._halt = threading.Event()
        self._take()

    def _take(self) -> None:
        cpu = {}
        for name, pid in self.pids.items():
            try:
                cpu[name] = proc_cpu(pid)
            except (OSError, IndexError):
                pass
        self.samples.append((time.time(), cpu, machine_cpu()))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._take()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self._take()

    def at(self, name: str, t: float) -> float:
        pts = [(s[0], s[1][name]) for s in self.samples if name in s[1]]
        return float(np.interp(t, [p[0] for p in pts], [p[1] for p in pts]))

    def machine_between(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s[0] <= t1] or self.samples[-2:]
        (_, _, a), (_, _, b) = inside[0], inside[-1]
        total = max(b[2] - a[2], 1)
        return {"busy_share": round((b[0] - a[0]) / total, 3), "niced_share": round((b[1] - a[1]) / total, 3)}


# ----------------------------------------------------------------------------- the service subprocess


class ServiceRun:
    def __init__(self, ctx: "Context", bundle: str, prefix: str, input_topic: str, log_name: str,
                 profile: Path | None = None, **settings) -> None:
        from streamer.embedded import free_port

        self.port = free_port()
        self.output_topic = f"bench-out-{uuid.uuid4().hex[:8]}"
        values = {"bootstrap_servers": ctx.broker, "input_topic": input_topic, "output_topic": self.output_topic,
                  "dlq_topic": f"bench-dlq-{uuid.uuid4().hex[:8]}", "group_id": f"bench-{uuid.uuid4().hex[:8]}",
                  "assign_all_partitions": "true", "redis_url": ctx.redis_url, "key_prefix": prefix,
                  "bundle": bundle, "models_dir": str(ctx.models_dir), "metrics_port": self.port,
                  "metrics_host": "127.0.0.1", "log_level": "INFO", "stats_interval_s": 5,
                  "max_poll_records": ctx.batch, **settings}
        self.settings = values
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
        env.update({f"SEQCAST_{k.upper()}": str(v) for k, v in values.items()})
        env["PYTHONPATH"] = str(ROOT)
        self.log_path = ctx.tmp / f"{log_name}.log"
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "streamer", "serve"]
        if profile is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "streamer", "serve"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self._get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout_s}s:\n{self.log_path.read_text()[-3000:]}")

    def emitted(self) -> float:
        try:
            _, text = self._get("/metrics")
        except OSError:
            return 0.0
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith("seqcast_predictions_emitted_total"))

    def wait_emitted(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.emitted() < n:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.emitted():.0f} of {n} predictions after {timeout_s:.0f}s")
            time.sleep(0.25)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text(errors="replace").splitlines()
                if line.startswith("{")]


# ----------------------------------------------------------------------------- the runs


class Context:
    def __init__(self, args, tmp: Path) -> None:
        from streamer.embedded import free_port, start_tansu

        self.args, self.tmp = args, tmp
        self.redis_url, self.batch, self.models_dir = args.redis_url, args.batch, Path(args.models_dir).resolve()
        self.client = redis.Redis.from_url(args.redis_url)
        self.prefixes: list[str] = []
        port = free_port()
        self._tansu_log = open(tmp / "tansu.log", "wb")
        self.tansu = start_tansu(port, self._tansu_log)
        self.broker = f"127.0.0.1:{port}"
        self.redis_pid = int(self.client.info("server")["process_id"])

    def prefix(self, label: str) -> str:
        p = f"bench{uuid.uuid4().hex[:6]}{label}"
        self.prefixes.append(p)
        return p

    def topic(self, label: str, partitions: int = 1) -> str:
        from streamer.transport import create_topics

        name = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        create_topics(self.broker, [name], partitions)
        return name

    def sampler(self, *services: ServiceRun) -> CpuSampler:
        pids = {f"service{i or ''}": svc.proc.pid for i, svc in enumerate(services)}
        s = CpuSampler({**pids, "tansu": self.tansu.pid, "redis": self.redis_pid})
        s.start()
        return s

    def read(self, topic: str, n: int, timeout_s: float = 180.0) -> list:
        from streamer.transport import Consumer

        consumer = Consumer(self.broker, topic, None, assign_all=True)
        records = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(records) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"read {len(records)} of {n} records of {topic}")
                records.extend(consumer.poll(500, 20000))
        finally:
            consumer.close()
        return records

    def close(self) -> None:
        self.tansu.kill()
        self.tansu.wait(10)
        self._tansu_log.close()
        for prefix in self.prefixes:
            keys = list(self.client.scan_iter(match=f"{prefix}:*", count=5000))
            for start in range(0, len(keys), 1000):
                self.client.delete(*keys[start:start + 1000])


def predictions(records) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(record timestamps in s, latency_ms, parsed bodies) of prediction records."""
    bodies = [json.loads(r.value) for r in records]
    return (np.array([r.timestamp_ms / 1000 for r in records]), np.array([b["latency_ms"] for b in bodies]), bodies)


def sustained(ctx: Context, arch: str, bundle: str, prefix: str, topic: str, n: int) -> dict:
    service = ServiceRun(ctx, bundle, prefix, topic, f"sustained-{arch}")
    sampler = ctx.sampler(service)
    try:
        service.wait_emitted(n, timeout_s=max(180.0, n / 300))
    finally:
        sampler.stop()
        code = service.stop()
    records = ctx.read(service.output_topic, n)
    ts, latency, _ = predictions(records)
    first, last = float(ts.min()), float(ts.max())
    span = max(last - first, 1e-3)
    cpu = {name: round((sampler.at(name, last) - sampler.at(name, first)) / (len(records) / 1000), 3)
           for name in ("service", "tansu", "redis")}
    return {"path": "sustained (backlog)", "events": len(records), "seconds": round(span, 2),
            "events_per_s": round(len(records) / span, 1), "latency_ms": summary(latency),
            "cpu_s_per_1k": cpu["service"], "cpu_s_per_1k_other": {"tansu": cpu["tansu"], "redis": cpu["redis"]},
            "machine": sampler.machine_between(first, last), "exit_code": code,
            "service_progress": [r for r in service.logs() if r.get("msg") == "progress"][-3:]}


def group(ctx: Context, arch: str, bundle: str, prefix: str, topic: str, n: int, procs: int) -> dict:
    """`procs` services in ONE consumer group on a `procs`-partition backlog (scale-out on this machine)."""
    group_id = f"bench-group-{uuid.uuid4().hex[:6]}"
    services = [ServiceRun(ctx, bundle, prefix, topic, f"group-{arch}-{i}", group_id=group_id,
                           assign_all_partitions="false", session_timeout_ms=6000) for i in range(procs)]
    sampler = ctx.sampler(*services)
    try:
        deadline = time.monotonic() + max(240.0, n / 300)
        while sum(svc.emitted() for svc in services) < n:
            for svc in services:
                svc._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"group run: not all {n} predictions after the deadline")
            time.sleep(0.25)
        time.sleep(1.0)  # let a rebalance's re-sent predictions (if any) land before counting
        counts = [int(svc.emitted()) for svc in services]
    finally:
        sampler.stop()
        codes = [svc.stop() for svc in services]
    records = [r for svc, c in zip(services, counts) for r in ctx.read(svc.output_topic, c)]
    ts, latency, bodies = predictions(records)
    unique = len({b["event_id"] for b in bodies})
    first, last = float(ts.min()), float(ts.max())
    p10, p90 = (float(x) for x in np.percentile(ts, [10, 90]))
    service_cpu = sum(sampler.at(name, last) - sampler.at(name, first) for name in sampler.pids if name.startswith("service"))
    return {"path": f"{procs} processes, one consumer group, {procs} partitions (backlog)", "events": unique,
            "predictions": len(records), "duplicates": len(records) - unique, "per_process": counts,
            "seconds": round(last - first, 2), "events_per_s": round(unique / max(last - first, 1e-3), 1),
            "events_per_s_p10_p90": round(0.8 * len(records) / max(p90 - p10, 1e-3), 1),
            "latency_ms": summary(latency), "cpu_s_per_1k": round(service_cpu / (unique / 1000), 3),
            "machine": sampler.machine_between(first, last), "exit_codes": codes}


def input_times(ctx: Context, topic: str, n: int) -> dict[str, float]:
    return {json.loads(r.value)["event_id"]: r.timestamp_ms / 1000 for r in ctx.read(topic, n)}


def fixed_rate(ctx: Context, arch: str, bundle: str, prefix: str, events: list[Event], rate: float,
               swap_to: str | None = None, swap_after_s: float = 0.0, procs: int = 1) -> dict:
    """`procs` = 1: one service (assign_all_partitions); > 1: that many in one consumer group, as many partitions."""
    topic = ctx.topic("rate", procs)
    name = f"rate-{arch}{'-swap' if swap_to else ''}"
    if procs == 1:
        services = [ServiceRun(ctx, bundle, prefix, topic, name)]
    else:
        group_id = f"bench-group-{uuid.uuid4().hex[:6]}"
        services = [ServiceRun(ctx, bundle, prefix, topic, f"{name}-{i}", group_id=group_id,
                               assign_all_partitions="false", session_timeout_ms=6000) for i in range(procs)]
    promoted_at = None
    try:
        for service in services:
            service.wait_ready()  # a group member is ready once it has partitions: after the join
        time.sleep(0.5 if procs == 1 else 2.0)
        sampler = ctx.sampler(*services)
        feed = PacedProducer(ctx.broker, topic, rate, events, ctx.tmp)
        if swap_to:
            from streamer.registry import Registry

            time.sleep(max(0.0, feed.started + swap_after_s - time.time()))
            promoted_at = time.time()
            Registry(ctx.client, prefix).promote(str(Path(swap_to).resolve()))
        produced = feed.result(timeout=len(events) / rate + 120)
        deadline = time.monotonic() + 120
        while sum(svc.emitted() for svc in services) < len(events) and time.monotonic() < deadline:
            time.sleep(0.25)
        counts = [int(svc.emitted()) for svc in services]
        sampler.stop()
    finally:
        codes = [svc.stop() for svc in services]
    records = [r for svc, c in zip(services, counts) for r in ctx.read(svc.output_topic, c)]
    sent_at = input_times(ctx, topic, len(events))
    ts, latency, bodies = predictions(records)
    service_cpu = lambda t: sum(sampler.at(n, t) for n in sampler.pids if n.startswith("service"))
    e2e = np.array([(t - sent_at[b["event_id"]]) * 1000 for t, b in zip(ts, bodies)])
    first, last = float(ts.min()), float(ts.max())
    fifth = max(1, len(ts) // 5)
    by_time = e2e[np.argsort(ts, kind="stable")]
    head, fourth, tail = pct(by_time[:fifth], 50), pct(by_time[-2 * fifth:-fifth], 50), pct(by_time[-fifth:], 50)
    out = {"path": f"fixed rate {rate:g}/s", "rate": rate, "procs": procs, "events": len(records), "producer": produced,
           "duplicates": len(records) - len({b["event_id"] for b in bodies}),
           "e2e_p50_first_fifth_ms": head, "e2e_p50_last_fifth_ms": tail,
           # else a queue built up: latency grew through the run (the service is saturated at this rate)
           "keeping_up": bool(tail < 1000 and tail <= 2 * fourth + 50),
           "events_per_s": round(len(records) / max(last - first, 1e-3), 1),
           "latency_ms": summary(latency), "e2e_ms": summary(e2e),
           "cpu_s_per_1k": round((service_cpu(last) - service_cpu(first)) / (len(records) / 1000), 3),
           "machine": sampler.machine_between(first, last), "exit_codes": codes}
    # per second from the start of the feed: [t, predictions, latency_ms p50, p99, e2e p99, CPU s of service,
    # tansu, redis in that second]
    out["timeline"] = []
    for sec in range(int(last - feed.started) + 1):
        lo = feed.started + sec
        rows = (ts >= lo) & (ts < lo + 1)
        if rows.any():
            cpu = [round(service_cpu(lo + 1) - service_cpu(lo), 2),
                   *(round(sampler.at(name, lo + 1) - sampler.at(name, lo), 2) for name in ("tansu", "redis"))]
            out["timeline"].append([sec, int(rows.sum()), pct(latency[rows], 50), pct(latency[rows], 99),
                                    pct(e2e[rows], 99), *cpu])
    if swap_to:
        out.update(swap_windows(ts, latency, e2e, bodies, promoted_at, services[0].logs(), feed.started))
    return out


def same_cost_copy(bundle: str) -> str:
    """A second version of `bundle` (same files, manifest version + "-b"): a swap that changes no model cost."""
    src = Path(bundle)
    dst = src.parent / f"{src.name}-b"
    if not (dst / "manifest.json").is_file():
        import shutil

        tmp = src.parent / f".{dst.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        manifest = json.loads((tmp / "manifest.json").read_text())
        manifest["version"] = dst.name
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.rename(dst)
    return str(dst.resolve())


def swap_windows(ts, latency, e2e, bodies, promoted_at: float, logs: list[dict], started: float) -> dict:
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


def naive(ctx: Context, arch: str, bundle_path: str, prefix: str, events: list[Event], sync_n: int) -> dict:
    """Baseline (b): per event parse, one Redis round trip, one onnxruntime call (batch 1), one produce."""
    from streamer.app import redis_client
    from streamer.bundle import load_bundle
    from streamer.events import parse_event
    from streamer.predict import Models, predict_batch
    from streamer.settings import Settings
    from streamer.transport import Producer
    from streamer.window_store import WindowStore

    settings = Settings(redis_url=ctx.redis_url)
    client = redis_client(settings)
    models = Models.single(load_bundle(bundle_path, settings.inference_threads), settings.top_k)
    store = WindowStore(client, prefix, models.window_len, settings.window_ttl_seconds, settings.window_slack)
    producer = Producer(ctx.broker, linger_ms=settings.producer_linger_ms)
    out_topic = ctx.topic("naive")
    raws = [e.to_json_bytes() for e in events]

    def one(raw: bytes, sync: bool) -> None:
        event = parse_event(raw)
        windows = store.append_and_read([event])
        (scored,) = predict_batch(models, [event], windows)
        body = scored.body
        body["latency_ms"] = 0.0
        producer.send(out_topic, json.dumps(body, separators=(",", ":")).encode(), event.user_id.encode())
        if sync:
            producer.flush()

    results = {}
    for label, chunk, sync in (("async", raws[:len(raws) - sync_n], False), ("sync", raws[len(raws) - sync_n:], True)):
        times = []
        t_all, c_all = time.perf_counter(), time.process_time()
        for raw in chunk:
            t0 = time.perf_counter()
            one(raw, sync)
            times.append((time.perf_counter() - t0) * 1000)
        producer.flush()
        wall, cpu = time.perf_counter() - t_all, time.process_time() - c_all
        results[label] = {"events": len(chunk), "events_per_s": round(len(chunk) / wall, 1),
                          "latency_ms": summary(times), "cpu_s_per_1k": round(cpu / (len(chunk) / 1000), 3)}
    producer.close()
    client.close()
    return results


def stages(ctx: Context, arch: str, bundle_path: str, prefix: str, events: list[Event], backlog_topic: str) -> dict:
    """µs per event of each step of Service.process, with the service's own functions, one batch at a time.

    Each step is timed twice: wall (perf_counter) and CPU of this thread (thread_time); on a shared,
    busy machine the CPU figure is the one to trust, the gap is waiting (Redis, broker, other processes).
    """
    from prometheus_client import CollectorRegistry

    from streamer import dlq
    from streamer.app import redis_client
    from streamer.bundle import load_bundle
    from streamer.http import Health
    from streamer.live_accuracy import LiveScorer
    from streamer.metrics import Metrics
    from streamer.predict import Models, Scored, _bodies, encode
    from streamer.service import Service
    from streamer.settings import Settings
    from streamer.transport import Consumer, Producer, Record
    from streamer.window_store import WindowStore

    settings = Settings(redis_url=ctx.redis_url, key_prefix=prefix, output_topic=ctx.topic("stages"))
    client = redis_client(settings)
    metrics = Metrics.create(CollectorRegistry())
    bundle = load_bundle(bundle_path, settings.inference_threads)
    models = Models.single(bundle, settings.top_k)
    store = WindowStore(client, prefix, models.window_len, settings.window_ttl_seconds, settings.window_slack)
    producer = Producer(ctx.broker, linger_ms=settings.producer_linger_ms)
    live = LiveScorer(client, prefix, settings.window_ttl_seconds, metrics)
    service = Service(settings, None, producer, store, models, metrics, Health(), None, live)
    batch = ctx.batch
    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)

    # consume: kafka-python fetch + decode + Record, from the backlog topic, max_poll_records = batch
    consumer = Consumer(ctx.broker, backlog_topic, None, assign_all=True, max_poll_records=batch)
    first = len(consumer.poll(1000))  # first fetch / metadata
    want, got = min(50 * batch, 25_000, ctx.args.events) - first, 0
    t0, c0 = time.perf_counter(), time.thread_time()
    while got < want and time.perf_counter() - t0 < 60:
        got += len(consumer.poll(500))
    wall["consume"], cpu["consume"] = (time.perf_counter() - t0) / got, (time.thread_time() - c0) / got
    consumer.close()

    names = ("parse", "redis_pipeline", "encode", "inference", "post_process", "emit", "live_accuracy", "flush")
    extra_names = ("emit: json.dumps", "emit: producer.send", "emit: 2 histogram observes")
    counted = 0
    batches = [events[i:i + batch] for i in range(0, len(events) - batch + 1, batch)]
    for index, chunk in enumerate(batches):
        records = [Record("events", 0, i, e.user_id.encode(), e.to_json_bytes(), 0) for i, e in enumerate(chunk)]
        marks = [(time.perf_counter(), time.thread_time())]
        mark = lambda: marks.append((time.perf_counter(), time.thread_time()))
        evs, sources, _ = dlq.split(records)
        mark()
        windows = store.append_and_read(evs)
        mark()
        inputs = encode(bundle, evs, windows)
        mark()
        outputs = bundle.predict(inputs)
        mark()
        bodies = _bodies(bundle, "primary", evs, inputs, outputs, models.top_k)
        scored = [Scored(e, "primary", bundle.manifest.version, b) for e, b in zip(evs, bodies)]
        mark()
        service._emit(scored, sources, evs, time.time(), [])  # json + send + metrics, exactly as served
        mark()
        live.score(scored)
        mark()
        if index % 4 == 3:
            producer.flush()  # the service flushes at each checkpoint (every commit_interval_ms)
        mark()
        # the parts of emit, measured again on the same bodies (not part of the sum)
        sub = [(time.perf_counter(), time.thread_time())]
        blobs = [json.dumps(s.body, separators=(",", ":")).encode() for s in scored]
        sub.append((time.perf_counter(), time.thread_time()))
        for s, blob in zip(scored, blobs):
            producer.send(settings.dlq_topic, blob, s.event.user_id.encode())
        sub.append((time.perf_counter(), time.thread_time()))
        for _ in scored:
            metrics.event_latency.observe(0.01)
            metrics.event_time_lag.observe(1e6)
        sub.append((time.perf_counter(), time.thread_time()))
        if index < 2:
            continue  # warm-up
        counted += len(chunk)
        for group, points in ((names, marks), (extra_names, sub)):
            for name, a, b in zip(group, points, points[1:]):
                wall[name] += b[0] - a[0]
                cpu[name] += b[1] - a[1]
    producer.flush()
    producer.close()
    client.close()
    per = lambda d, k: round(d[k] * 1e6 if k == "consume" else d[k] / counted * 1e6, 1)
    keys = ("consume", *names)
    out = {"batch": batch, "batches": len(batches) - 2,
           "cpu_us_per_event": {k: per(cpu, k) for k in keys}, "wall_us_per_event": {k: per(wall, k) for k in keys},
           "emit_parts_cpu_us": {k: per(cpu, k) for k in extra_names},
           "emit_parts_wall_us": {k: per(wall, k) for k in extra_names}}
    out["cpu_sum_us"] = round(sum(out["cpu_us_per_event"].values()), 1)
    out["wall_sum_us"] = round(sum(out["wall_us_per_event"].values()), 1)
    out["ceiling_events_per_s"] = round(1e6 / out["cpu_sum_us"])
    return out


def profile_report(path: Path, top: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("streamer/(service|window_store|predict|live_accuracy|transport|"
                                               "bundle|dlq|events)", top)
    return buf.getvalue()


# ----------------------------------------------------------------------------- report


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def render(result: dict) -> str:
    a = result["config"]
    lines = [f"# seqcast streaming benchmark", "", "```", result["command"], "```", "",
             f"{a['events']:,} backlog events, {a['users']:,} users, {a['items']:,} items; batch "
             f"(max_poll_records) {a['batch']}; fixed rate {a['rate']:g} ev/s; Tansu {result['env']['broker']}, "
             f"Redis {a['redis_url']}; {result['env']['cpus']} CPUs; load average at start "
             f"{result['env']['loadavg_start']}, at end {result['env']['loadavg_end']}.", "",
             "| bundle | path | events/s | p50 ms | p95 ms | p99 ms | CPU s / 1k events | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arch, runs in result["bundles"].items():
        base = runs.get("sustained", {}).get("events_per_s")

        def row(path, eps, lat, cpu, ratio=True):
            r = "–" if not ratio or not eps or not base else f"{base / eps:,.1f}x"
            lines.append(f"| {arch} | {path} | {fmt(eps)} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | "
                         f"{fmt(lat['p99'])} | {fmt(cpu, 3)} | {r} |")
        if "sustained" in runs:
            s = runs["sustained"]
            row(f"seqcast serve, sustained (backlog; latency_ms is batch-bound)", s["events_per_s"], s["latency_ms"],
                s["cpu_s_per_1k"])
        if "group" in runs:
            g = runs["group"]
            row(f"seqcast serve, sustained, {g['path'].split(',')[0]} in a consumer group "
                f"(p10-p90 rate {g['events_per_s_p10_p90']:,.0f}/s; {g['duplicates']} re-sent)",
                g["events_per_s"], g["latency_ms"], g["cpu_s_per_1k"], ratio=False)
        if "rate" in runs:
            r = runs["rate"]
            prod = r["producer"]
            row(f"seqcast serve @ {a['rate']:g}/s (producer achieved {prod['achieved_rate']:,.0f}/s) latency_ms",
                r["events_per_s"], r["latency_ms"], r["cpu_s_per_1k"], ratio=False)
            state = "kept up" if r["keeping_up"] else (f"fell behind: e2e p50 {fmt(r['e2e_p50_first_fifth_ms'])} ms "
                                                       f"-> {fmt(r['e2e_p50_last_fifth_ms'])} ms")
            row(f"  same run, e2e (producer send -> prediction send); {state}", None, r["e2e_ms"], None, ratio=False)
        if "group_rate" in runs:
            r = runs["group_rate"]
            state = "kept up" if r["keeping_up"] else (f"fell behind: e2e p50 {fmt(r['e2e_p50_first_fifth_ms'])} ms "
                                                       f"-> {fmt(r['e2e_p50_last_fifth_ms'])} ms")
            row(f"seqcast serve @ {a['rate']:g}/s, {r['procs']} processes in a consumer group (producer achieved "
                f"{r['producer']['achieved_rate']:,.0f}/s) latency_ms", r["events_per_s"], r["latency_ms"],
                r["cpu_s_per_1k"], ratio=False)
            row(f"  same run, e2e; {state}", None, r["e2e_ms"], None, ratio=False)
        if "keras" in runs:
            k = runs["keras"]
            row("baseline (a): Keras model.predict per event", k["events_per_s"], k["latency_ms"], k.get("cpu_s_per_1k"))
        if "naive" in runs:
            for label, n in runs["naive"].items():
                row(f"baseline (b): naive per event ({label} produce)", n["events_per_s"], n["latency_ms"],
                    n.get("cpu_s_per_1k"))
    lines += ["", "ratio = seqcast's sustained events/s / that path's events/s (same bundle, same run). "
              "CPU s / 1k events: the service process (all threads) for seqcast serve, the benchmark process "
              "for baseline (b), the Keras process for (a); Tansu's and Redis' own CPU are extra (below). "
              "Baseline latencies are per-event processing times (no queueing). Event-time lag is not "
              "reported: the synthetic timestamps make it meaningless."]
    for arch, runs in result["bundles"].items():
        if "sustained" in runs:
            s = runs["sustained"]
            o = s["cpu_s_per_1k_other"]
            lines.append(f"- {arch} sustained: Tansu {o['tansu']} + Redis {o['redis']} CPU s / 1k events besides the "
                         f"service's {s['cpu_s_per_1k']}; machine busy {s['machine']['busy_share']:.0%} of 2 cores "
                         f"during the run, {s['machine']['niced_share']:.0%} by niced jobs.")
    lstm = result["bundles"].get("lstm", {})
    if "group" in lstm:
        g = lstm["group"]
        lines.append(f"- lstm, {g['path']}: per process {g['per_process']} predictions; machine busy "
                     f"{g['machine']['busy_share']:.0%} of 2 cores, {g['machine']['niced_share']:.0%} by niced jobs.")
    if "sustained" in lstm and "rate" in lstm:
        eps, p99 = lstm["sustained"]["events_per_s"], lstm["rate"]["latency_ms"]["p99"]
        best = max([eps] + [lstm["group"]["events_per_s"]] if "group" in lstm else [eps])
        lines.append(f"- issue 3 targets (LSTM): >= 5,000 events/s sustained: {eps:,.0f} with one process, "
                     f"{best:,.0f} best -> {'met' if best >= 5000 else 'NOT met'}; p99 <= 100 ms at {a['rate']:g} ev/s: "
                     f"{p99} ms with one process -> {'met' if p99 is not None and p99 <= 100 else 'NOT met'}"
                     + (f"; {lstm['group_rate']['latency_ms']['p99']} ms with {lstm['group_rate']['procs']} processes "
                        f"(e2e p99 {lstm['group_rate']['e2e_ms']['p99']} ms)" if "group_rate" in lstm else "") + ".")
    for label, run in result.get("swaps", {}).items():
        sw = run.get("swap", {})
        lines += ["", f"## Model swap ({label}) at {run['rate']:g} ev/s: {sw.get('old')} -> {sw.get('new')}", ""]
        if "error" in sw:
            lines.append(sw["error"])
        else:
            lines += [f"promoted at t={sw['promoted_at_s']} s; the registry watcher had loaded + verified + warmed "
                      f"the new bundle {sw['manager_loaded_after_s']} s after the promote (includes up to one "
                      f"registry_poll_ms); the loop switched after {sw['loop_swapped_after_s']} s; first "
                      f"new-version prediction after {sw['first_new_prediction_after_s']} s; old-version "
                      f"predictions after it: {sw['old_version_predictions_after_first_new']}; the service "
                      f"{'kept up with' if run['keeping_up'] else 'fell behind'} the rate.", "",
                      "| window | t (s) | n | latency_ms p50 | p95 | p99 | max | e2e_ms p50 | p99 | max |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name in ("steady_before", "around_swap", "steady_after"):
                w = sw[name]
                l, e = w["latency_ms"], w["e2e_ms"]
                lines.append(f"| {name.replace('_', ' ')} | {w['from_s']}–{w['to_s']} | {l['n']:,} | {fmt(l['p50'])} | "
                             f"{fmt(l['p95'])} | {fmt(l['p99'])} | {fmt(l['max'])} | {fmt(e['p50'])} | "
                             f"{fmt(e['p99'])} | {fmt(e['max'])} |")
            lines.append("\nper second, t: latency_ms p99 / service CPU s: " + ", ".join(
                f"{row[0]}: {fmt(row[3])}/{row[5]}" for row in run["timeline"]))
    if result.get("stages"):
        lines += ["", f"## Per-stage cost, µs per event (batches of {a['batch']}, in-process, the service's functions)", ""]
        names = list(next(iter(result["stages"].values()))["cpu_us_per_event"])
        lines += ["| bundle | clock | " + " | ".join(names) + " | sum | ceiling ev/s |",
                  "|---|---|" + "---:|" * (len(names) + 2)]
        for arch, st in result["stages"].items():
            for clock in ("cpu", "wall"):
                vals = st[f"{clock}_us_per_event"]
                ceiling = f"{1e6 / st[f'{clock}_sum_us']:,.0f}"
                lines.append(f"| {arch} | {clock} | " + " | ".join(fmt(vals[n]) for n in names)
                             + f" | {fmt(st[f'{clock}_sum_us'])} | {ceiling} |")
        parts = {arch: st["emit_parts_cpu_us"] for arch, st in result["stages"].items()}
        lines.append("\nemit (CPU µs/event) = " + "; ".join(
            f"{arch}: " + ", ".join(f"{k.split(': ')[1]} {v}" for k, v in p.items()) for arch, p in parts.items()))
        lines.append("cpu = this thread's CPU time (trust this on a shared machine), wall = elapsed; consume = "
                     "kafka-python poll from Tansu; ceiling = 1e6 / sum, one core, nothing else running. The "
                     "producer's I/O thread, Tansu and Redis need CPU beside the loop on the same 2 cores.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    internal = {"_train": train_main, "_keras": keras_main, "_produce": produce_main}
    if argv and argv[0] in internal:
        return internal[argv[0]](argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="backlog events per bundle (default 200000)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=3_000, help="catalogue size")
    p.add_argument("--batch", type=int, default=500, help="max_poll_records of the service (default: its default)")
    p.add_argument("--rate", type=float, default=2000.0, help="events/s of the fixed-rate and swap runs")
    p.add_argument("--rate-seconds", type=float, default=20.0, help="length of each fixed-rate run")
    p.add_argument("--swap-seconds", type=float, default=24.0, help="length of the swap run (promote at half)")
    p.add_argument("--swap-rate", type=float, default=0.0,
                   help="events/s of the swap run; 0 = min(--rate, half the slower sustained throughput, "
                        "rounded down to 100), so that the swap is measured below saturation")
    p.add_argument("--keras-events", type=int, default=300, help="events for baseline (a)")
    p.add_argument("--naive-events", type=int, default=3000, help="events for baseline (b), async produce")
    p.add_argument("--naive-sync-events", type=int, default=1000, help="events for baseline (b), sync produce")
    p.add_argument("--stage-batches", type=int, default=12, help="batches for the per-stage costs")
    p.add_argument("--models-dir", default="runs/bench_models", help="bundle cache (trained once)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--out", default="runs/bench_stream.json", help="JSON result file")
    p.add_argument("--archs", default="lstm,transformer", help="bundles to measure")
    p.add_argument("--group-procs", type=int, default=2,
                   help="also drain the backlog with this many LSTM services in one consumer group (0 = skip)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: sustained,group,rate,swap,stages,naive,keras")
    p.add_argument("--profile", action="store_true",
                   help="also run the LSTM service under cProfile (python -m cProfile -m streamer serve) on the "
                        "first 40k backlog events and print the main thread's profile (start-up included)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k events, short rate runs, few baseline events")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.rate_seconds, args.swap_seconds = 20_000, 6.0, 10.0
        args.keras_events, args.naive_events, args.naive_sync_events, args.stage_batches = 50, 600, 200, 6
    skip = set(filter(None, args.skip.split(",")))
    archs = [a for a in args.archs.split(",") if a]
    command = ".venv/bin/python bench/stream.py " + " ".join(shlex.quote(a) for a in argv)
    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]

    models = ensure_bundles(Path(args.models_dir), args.users, args.items)
    rate_n = int(args.rate * args.rate_seconds)
    swap_n = 2 * int(max(args.rate, args.swap_rate) * args.swap_seconds)
    stage_n = args.batch * args.stage_batches
    naive_n = args.naive_events + args.naive_sync_events
    slices, cursor = {}, args.events
    for name, n in (("rate", rate_n), ("rate_group", rate_n), ("swap", swap_n), ("stages", stage_n), ("naive", naive_n),
                    ("keras", args.keras_events + 5)):
        slices[name] = (cursor, cursor + n)
        cursor += n
    work = {"users": args.users, "items": args.items, "total": cursor}
    t0 = time.monotonic()
    events = workload(**work)
    print(f"workload: {len(events):,} events in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    part = lambda name: events[slices[name][0]:slices[name][1]]

    result = {"command": command, "config": {**{k: v for k, v in vars(args).items()}, "slices": slices},
              "models": models, "bundles": {}, "stages": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    ctx = Context(args, tmp)
    result["env"] = {"broker": ctx.broker, "cpus": os.cpu_count(), "loadavg_start": load_start}
    try:
        from streamer.replay import replay
        from streamer.transport import Producer

        backlog = ctx.topic("backlog")
        producer = Producer(ctx.broker)
        t0 = time.monotonic()
        replay(events[:args.events], producer, backlog)
        producer.close()
        result["preload_events_per_s"] = round(args.events / (time.monotonic() - t0))
        print(f"backlog of {args.events:,} events loaded at {result['preload_events_per_s']:,}/s", file=sys.stderr)
        prefixes = {arch: ctx.prefix(arch[0]) for arch in archs}
        paths = {arch: models["bundles"][arch]["bundle"] for arch in ARCHS}
        for arch in archs:
            runs = result["bundles"][arch] = {}
            if "sustained" not in skip:
                print(f"[{arch}] sustained ...", file=sys.stderr)
                runs["sustained"] = sustained(ctx, arch, paths[arch], prefixes[arch], backlog, args.events)
                print(f"[{arch}] {runs['sustained']['events_per_s']:,.0f} ev/s", file=sys.stderr)
        if "group" not in skip and "lstm" in archs and args.group_procs > 1:
            print(f"[lstm] {args.group_procs} processes in a consumer group ...", file=sys.stderr)
            topic = ctx.topic("backlog-group", args.group_procs)
            producer = Producer(ctx.broker)
            replay(events[:args.events], producer, topic)
            producer.close()
            result["bundles"]["lstm"]["group"] = group(ctx, "lstm", paths["lstm"], ctx.prefix("g"), topic,
                                                       args.events, args.group_procs)
            print(f"[lstm] group: {result['bundles']['lstm']['group']['events_per_s']:,.0f} ev/s", file=sys.stderr)
        for arch in archs:
            runs = result["bundles"][arch]
            if "rate" not in skip:
                print(f"[{arch}] {args.rate:g} ev/s for {args.rate_seconds:g}s ...", file=sys.stderr)
                runs["rate"] = fixed_rate(ctx, arch, paths[arch], prefixes[arch], part("rate"), args.rate)
        if "rate" not in skip and "lstm" in archs and args.group_procs > 1:
            print(f"[lstm] {args.rate:g} ev/s, {args.group_procs} processes in a consumer group ...", file=sys.stderr)
            result["bundles"]["lstm"]["group_rate"] = fixed_rate(ctx, "lstm", paths["lstm"], prefixes["lstm"],
                                                                 part("rate_group"), args.rate, procs=args.group_procs)
        if "swap" not in skip and "lstm" in archs:
            swap_rate = args.swap_rate
            if not swap_rate:
                measured = [r["sustained"]["events_per_s"] for r in result["bundles"].values() if "sustained" in r]
                swap_rate = min([args.rate] + [max(100.0, 100 * (m // 200)) for m in measured])
            from streamer.registry import Registry

            per_run = int(swap_rate * args.swap_seconds)
            targets = {"same cost: LSTM -> a copy of it as a new version": same_cost_copy(paths["lstm"]),
                       "LSTM -> Transformer": paths["transformer"]}
            result["swaps"] = {}
            for i, (label, target) in enumerate(targets.items()):
                print(f"[swap] {label} at {swap_rate:g} ev/s ...", file=sys.stderr)
                Registry(ctx.client, prefixes["lstm"]).promote(str(Path(paths["lstm"]).resolve()))  # start on the LSTM
                chunk = part("swap")[i * per_run:(i + 1) * per_run]
                result["swaps"][label] = fixed_rate(ctx, "lstm", paths["lstm"], prefixes["lstm"], chunk, swap_rate,
                                                    swap_to=target, swap_after_s=args.swap_seconds / 2)
        for arch in archs:
            runs = result["bundles"][arch]
            if "stages" not in skip:
                print(f"[{arch}] stages ...", file=sys.stderr)
                result["stages"][arch] = stages(ctx, arch, paths[arch], prefixes[arch], part("stages"), backlog)
            if "naive" not in skip:
                print(f"[{arch}] naive baseline ...", file=sys.stderr)
                runs["naive"] = naive(ctx, arch, paths[arch], prefixes[arch], part("naive"), args.naive_sync_events)
            if "keras" not in skip:
                print(f"[{arch}] keras baseline ...", file=sys.stderr)
                runs["keras"] = keras_baseline(arch, models["bundles"][arch], work, slices["keras"][0],
                                               args.keras_events)
        if args.profile and "lstm" in archs:
            print("[lstm] profiled backlog run ...", file=sys.stderr)
            prof = tmp / "serve.prof"
            service = ServiceRun(ctx, paths["lstm"], ctx.prefix("p"), backlog, "profile", profile=prof)
            try:
                service.wait_emitted(min(args.events, 40_000), timeout_s=240.0)  # includes start-up
            finally:
                service.stop()
            result["profile"] = profile_report(prof)
            Path(args.out).with_suffix(".prof").write_bytes(prof.read_bytes())
    finally:
        ctx.close()
    result["env"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.monotonic() - started, 1)
    report = render(result)
    print(report)
    if result.get("profile"):
        print("\n## cProfile of the LSTM service loop (main thread), by tottime\n\n```\n" + result["profile"] + "```")
    print(f"\n(total {result['seconds']:.0f}s; JSON: {args.out})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

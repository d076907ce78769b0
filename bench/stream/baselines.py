"""What seqcast is compared with, per bundle:

- baseline (a), the seed article's way: Keras `model.predict` on one window per event, windows in
  Python dicts (no Kafka, no Redis: an upper bound for that approach), in a subprocess
  (`python -m bench.stream _keras ...`) so that TensorFlow stays out of this process;
- baseline (b), naive per event: parse, one Redis round trip, one onnxruntime call with batch 1,
  one produce (async, or `sync`: waiting for the broker's ack each time), in this process;
- the onnxruntime-only ceiling: `bundle.predict` alone on batches of max_poll_records encoded,
  realistic windows with the service's default intra-op threads: what the service could reach if
  everything but inference were free. seqcast's share of it = sustained events/s / ceiling.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict, deque

import numpy as np

from bench.stream.common import ROOT, SELF, WINDOW, summary
from bench.stream.feed import workload
from bench.stream.infra import Context
from streamer.events import Event


def python_windows(history: list[Event], events: list[Event]) -> list:
    """Each event's window as of that event (the last WINDOW events of its user, itself included), with
    the users' earlier events from `history`: the windows the service reads from Redis, built in Python."""
    from streamer.window_store import Window

    kept: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))
    for event in history:
        kept[event.user_id].append(event)
    out = []
    for event in events:
        window = kept[event.user_id]
        window.append(event)
        out.append(Window(np.array([e.ts for e in window], np.float64), [e.item_id for e in window],
                          np.array([np.nan if e.value is None else e.value for e in window], np.float64)))
    return out


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
    proc = subprocess.run([*SELF, "_keras", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"keras baseline ({arch}) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


# ----------------------------------------------------------------------------- baseline (b): naive per event


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


# ----------------------------------------------------------------------------- onnxruntime-only ceiling


def ceiling(arch: str, bundle_path: str, history: list[Event], events: list[Event], batch: int) -> dict:
    """onnxruntime alone: `bundle.predict` on consecutive batches of `batch` encoded windows, nothing else.

    The windows are the users' real windows as of each event (built in Python from `history`), encoded
    beforehand, so only inference is timed; the bundle is loaded with the service's default
    inference_threads, as `seqcast serve` loads it. Two batches warm up first. Run in this process while
    no service runs: the broker and Redis are idle, so it is the best the model can do on this machine.
    """
    from streamer.bundle import load_bundle
    from streamer.predict import encode
    from streamer.settings import Settings

    threads = Settings().inference_threads
    bundle = load_bundle(bundle_path, threads)
    windows = python_windows(history, events)
    batches = [encode(bundle, events[i:i + batch], windows[i:i + batch])
               for i in range(0, len(events) - batch + 1, batch)]
    if len(batches) < 3:
        raise ValueError(f"ceiling: {len(events)} events make fewer than 3 batches of {batch}")
    for inputs in batches[:2]:
        bundle.predict(inputs)
    measured = batches[2:]
    n = sum(len(next(iter(inputs.values()))) for inputs in measured)
    times = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for inputs in measured:
        t0 = time.perf_counter()
        bundle.predict(inputs)
        times.append((time.perf_counter() - t0) * 1000)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"path": "onnxruntime only (bundle.predict)", "batch": batch, "batches": len(measured), "events": n,
            "inference_threads": threads, "events_per_s": round(n / wall, 1),
            "events_per_cpu_s": round(n / max(cpu, 1e-9), 1),  # what a core of its own would do: contention-proof
            "cpu_us_per_event": round(cpu / n * 1e6, 1), "wall_us_per_event": round(wall / n * 1e6, 1),
            "batch_ms": summary(times)}

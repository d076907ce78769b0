"""Streamer throughput: per-stage costs in-process, then end to end through Kafka (Tansu) and Redis.

    .venv/bin/python bench/stream.py --bundle models/<name>/<version> [--users 1000 --events-per-user 20]

Stage costs use one batch of `--batch` events (parse, one Redis pipeline,
encode + inference, prediction JSON); the end-to-end figure is events/s of a
`python -m streamer serve` subprocess (no consumer group: assign mode) from its
first to its last prediction, read from the output topic. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from streamer.bundle import load_bundle  # noqa: E402
from streamer.dlq import split  # noqa: E402
from streamer.embedded import free_port, start_tansu  # noqa: E402
from streamer.events import Event  # noqa: E402
from streamer.predict import Models, predict_batch  # noqa: E402
from streamer.replay import replay  # noqa: E402
from streamer.transport import Consumer, Producer, Record, create_topics  # noqa: E402
from streamer.window_store import WindowStore  # noqa: E402


def make_events(users: int, per_user: int, items: int) -> list[Event]:
    return [Event(f"b-{u}-{i}", f"user{u}", 1_700_000_000.0 + i * 60 + u, f"i{(u + i * 7) % items}", float(i % 10))
            for i in range(per_user) for u in range(users)]


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def stages(bundle_dir: str, batch: int, redis_url: str) -> dict:
    bundle = load_bundle(bundle_dir)
    models = Models.single(bundle)
    events = make_events(batch, 60, 50)[-batch:]  # one event per user, each with a full history
    history = make_events(batch, 60, 50)
    records = [Record("events", 0, i, e.user_id.encode(), e.to_json_bytes(), 0) for i, e in enumerate(events)]
    client = redis.Redis.from_url(redis_url)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    store = WindowStore(client, prefix, models.window_len, 600, 32)
    for start in range(0, len(history), 1000):
        store.append_and_read(history[start:start + 1000])
    windows = store.append_and_read(events)
    scored = predict_batch(models, events, windows)
    per_event = lambda seconds: round(seconds / batch * 1e6, 1)
    out = {"batch": batch, "window_len": models.window_len, "us_per_event": {
        "parse": per_event(best_of(lambda: split(records))),
        "redis_pipeline": per_event(best_of(lambda: store.append_and_read(events))),
        "encode_and_predict": per_event(best_of(lambda: predict_batch(models, events, windows))),
        "inference_only": per_event(best_of(lambda: bundle.predict(
            __import__("streamer.predict", fromlist=["encode"]).encode(bundle, events, windows)))),
        "json": per_event(best_of(lambda: [json.dumps(s.body, separators=(",", ":")).encode() for s in scored])),
    }}
    out["us_per_event"]["sum"] = round(sum(v for k, v in out["us_per_event"].items() if k != "inference_only"), 1)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    return out


def end_to_end(bundle_dir: str, events: list[Event], redis_url: str, max_poll_records: int) -> dict:
    port = free_port()
    broker = f"127.0.0.1:{port}"
    tansu = start_tansu(port)
    topics = {k: f"bench-{k}-{uuid.uuid4().hex[:6]}" for k in ("in", "out", "dlq")}
    create_topics(broker, topics.values(), 1)
    producer = Producer(broker)
    started = time.perf_counter()
    replay(events, producer, topics["in"])
    produce_s = time.perf_counter() - started
    producer.close()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")},
           "SEQCAST_BOOTSTRAP_SERVERS": broker, "SEQCAST_INPUT_TOPIC": topics["in"],
           "SEQCAST_OUTPUT_TOPIC": topics["out"], "SEQCAST_DLQ_TOPIC": topics["dlq"], "SEQCAST_BUNDLE": bundle_dir,
           "SEQCAST_ASSIGN_ALL_PARTITIONS": "true", "SEQCAST_METRICS_PORT": "0", "SEQCAST_REDIS_URL": redis_url,
           "SEQCAST_KEY_PREFIX": f"bench{uuid.uuid4().hex[:6]}", "SEQCAST_MAX_POLL_RECORDS": str(max_poll_records),
           "SEQCAST_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryFile() as log:
        service = subprocess.Popen([sys.executable, "-m", "streamer", "serve"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        output = Consumer(broker, topics["out"], None, assign_all=True)
        seen, first, last, latencies = 0, None, None, []
        while seen < len(events):
            batch = output.poll(500, 10000)
            if batch:
                first = first or time.perf_counter()
                last = time.perf_counter()
                seen += len(batch)
                latencies.extend(json.loads(r.value)["latency_ms"] for r in batch[::50])
        service.terminate()
        service.wait(30)
        output.close()
    tansu.kill()
    latencies.sort()
    return {"events": len(events), "produce_events_per_s": round(len(events) / produce_s),
            "stream_events_per_s": round(seen / max(last - first, 1e-9)),
            "latency_ms_p50": latencies[len(latencies) // 2], "latency_ms_p99": latencies[int(len(latencies) * 0.99)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle directory to serve")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500, help="events per batch (max_poll_records)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    result = {"stages": stages(args.bundle, args.batch, args.redis_url),
              "end_to_end": end_to_end(args.bundle, make_events(args.users, args.events_per_user, 50),
                                       args.redis_url, args.batch)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

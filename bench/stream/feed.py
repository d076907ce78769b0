"""The workload and the feeds: the synthetic event log, and a paced producer in its own process.

The paced producer runs in a subprocess (`python -m bench.stream _produce ...`) so that its pacing
does not compete with this process's Kafka consumers and samplers for the GIL.
"""
from __future__ import annotations

import json
import math
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np

from bench.stream.common import FEED_LINGER_MS, ROOT, SELF
from streamer.events import Event


def workload(users: int, items: int, total: int, seed: int = 1) -> list[Event]:
    """`total` events of a synthetic log (users x ceil(total/users) events), in event-time order."""
    from training.data.synthetic import synthetic_log

    per_user = max(2, math.ceil(total / users))
    log = synthetic_log(users=users, items=items, events_per_user=per_user, seed=seed)
    return list(log.events())[:total]


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
    """Sends `events` to `topic` at `rate` events/s from a subprocess; `result()` waits for its report."""

    def __init__(self, broker: str, topic: str, rate: float, events: list[Event], tmp: Path) -> None:
        path = tmp / f"feed-{uuid.uuid4().hex[:6]}.tsv"
        path.write_bytes(b"".join(e.user_id.encode() + b"\t" + e.to_json_bytes() + b"\n" for e in events))
        self.proc = subprocess.Popen([*SELF, "_produce", broker, topic, str(rate), str(path)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        json.loads(self.proc.stdout.readline())  # connected, about to start
        self.started = time.time()

    def result(self, timeout: float) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode:
            raise RuntimeError(f"producer failed ({self.proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])

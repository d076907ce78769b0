"""Constants and small helpers shared by the streaming benchmark's modules."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 50
HORIZON = 3
ARCHS = ("lstm", "transformer")
CLIENTS = ("confluent", "kafka-python")  # values of SEQCAST_KAFKA_CLIENT
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The paced feed batches for up to 20 ms. With ~1-record batches (linger 2 ms) Tansu's memory engine got
# slower as the topic grew (0.2 -> 0.6 of a core at a constant 700 ev/s within 20 s), and the latency drift
# that caused hid everything else; at 20 ms Tansu stays flat. e2e_ms therefore includes <= 20 ms of feed batching.
FEED_LINGER_MS = 20
# How the benchmark starts itself for its internal sub-commands (_train, _keras, _produce): run from ROOT.
SELF = [sys.executable, "-m", "bench.stream"]
STARTED = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, with the seconds since start (the report goes to stdout)."""
    print(f"{time.monotonic() - STARTED:6.0f}s {message}", file=sys.stderr, flush=True)


def pct(values, q: float) -> float | None:
    """The q-th percentile, rounded; None for no values (a row the report prints as '–')."""
    return None if len(values) == 0 else round(float(np.percentile(np.asarray(values, np.float64), q)), 2)


def summary(values) -> dict:
    """n, p50, p95, p99 and max of latencies (ms)."""
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": None if len(values) == 0 else round(float(max(values)), 2)}

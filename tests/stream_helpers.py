"""Helpers for the streamer's end-to-end tests: the offline reference and topic readers.

The offline reference builds every event's window from the event list alone,
in pure numpy (no Redis, no Kafka), with the trainer's vectorised
`encode_sequence`, and runs the bundle on it: what the streamer must match.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from typing import Iterable

import numpy as np

from bench.chaos.checker import predictions_by_id  # noqa: F401 (re-exported for the tests)
from schema_oracle import watch_predictions
from streamer.bundle import Bundle
from streamer.events import Event
from streamer.features import encode_sequence, scale_values
from streamer.replay import replay
from streamer.transport import Consumer, Producer, Record
from streamer.window_store import Window


def offline_predictions(bundle: Bundle, events: Iterable[Event], top_k: int) -> dict[str, dict]:
    """event_id -> {"forecast": [...], "items": [...], "scores": [...], "window": n}, windows as of each event."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    L = bundle.manifest.window
    rows, inputs = [], []
    for user, evs in by_user.items():
        evs = sorted(evs, key=lambda e: (e.ts, e.event_id))  # the store's order
        mean, std = bundle.scaler.params(user)
        ts = np.array([e.ts for e in evs])
        items = np.array([bundle.vocab.index(e.item_id) for e in evs], np.int32)
        raw = np.array([np.nan if e.value is None else e.value for e in evs])
        scaled = scale_values(raw, mean, std)
        inputs.append(encode_sequence(ts, items, scaled, np.arange(1, len(evs) + 1), L))
        rows.extend((e, mean, std) for e in evs)
    batch = {k: np.concatenate([part[k] for part in inputs]) for k in inputs[0]}
    outputs = bundle.predict(batch)
    expected = {}
    for row, (event, mean, std) in enumerate(rows):
        scores = outputs["item_scores"][row]
        seen = set(batch["items"][row].tolist()) | {0, 1}
        best = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen][:top_k]
        expected[event.event_id] = {
            "forecast": (outputs["forecast"][row].astype(np.float64) * std + mean).tolist(),
            "items": [bundle.vocab.item_ids[i] for i in best], "scores": [float(scores[i]) for i in best],
            "window": int(batch["mask"][row].sum())}
    return expected


def assert_matches(prediction: dict, expected: dict, tol: float = 1e-5) -> None:
    eid = prediction["event_id"]
    assert prediction["window"] == expected["window"], eid
    np.testing.assert_allclose(prediction["forecast"], expected["forecast"], rtol=tol, atol=tol, err_msg=eid)
    got_scores = [r["score"] for r in prediction["recommendations"]]
    np.testing.assert_allclose(got_scores, expected["scores"], rtol=tol, atol=tol, err_msg=eid)
    # items may swap only where scores tie within the tolerance
    for got, want, score in zip([r["item_id"] for r in prediction["recommendations"]], expected["items"], got_scores):
        if got != want:
            assert sum(abs(s - score) <= tol for s in expected["scores"]) > 1, (eid, got, want)


def read_until(consumer: Consumer, done, timeout_s: float = 60.0) -> list[Record]:
    """Poll `consumer` until done(records) is true; fail after timeout_s. Records of a prediction topic
    are checked against schemas/v1/prediction.schema.json as they arrive."""
    watch_predictions(consumer)
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while not done(records):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s with {len(records)} records")
        records.extend(consumer.poll(200, 5000))
    return records


def covers(event_ids: set[str]):
    """A `done` predicate: every id in event_ids has a prediction."""
    seen: set[str] = set()
    position = [0]

    def done(records: list[Record]) -> bool:
        for record in records[position[0]:]:
            seen.add(json.loads(record.value)["event_id"])
        position[0] = len(records)
        return event_ids <= seen
    return done


def replay_in_background(broker: str, topic: str, events: list[Event], rate: float) -> threading.Thread:
    def run() -> None:
        producer = Producer(broker, linger_ms=5)
        try:
            replay(events, producer, topic, rate)
        finally:
            producer.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def metric_value(text: str, metric: str, /, **labels: str) -> float:
    """One sample from a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == metric and got == want:
            return float(value)
    return 0.0


def store_batch(bundle: Bundle, rows: int = 48, seed: int = 14) -> tuple[list[Event], list[Window]]:
    """Events and their windows as the window store hands them over: different lengths (shorter and
    longer than L), missing values (NaN) and items (None), an item the vocabulary has never seen."""
    rng = np.random.default_rng(seed)
    known = bundle.vocab.item_ids[2:]  # past [PAD], [OOV]
    events, windows = [], []
    for row in range(rows):
        n = int(rng.integers(1, 2 * bundle.manifest.window))
        ts = 1_700_000_000.0 + np.cumsum(rng.exponential(60.0, n))
        values = rng.normal(10.0, 3.0, n)
        values[rng.random(n) < 0.1] = np.nan
        items: list[str | None] = [str(rng.choice(known)) for _ in range(n)]
        items[int(rng.integers(n))] = None if row % 2 else "never-seen-item"
        events.append(Event(f"e{row}", f"user-{row % 7}", float(ts[-1]), items[-1], float(values[-1])))
        windows.append(Window(ts, items, values))
    return events, windows


def wait_for(condition, timeout_s: float, what: str) -> None:
    """Poll `condition` every 0.1 s; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)

"""The consistency checker, in the spirit of Faust's: what the topics and Redis hold after a chaos run,
compared with the contract and with an uninterrupted reference run of the same input.

Input truth is the events topic itself, read back whole (so producer retries and duplicates are
accounted for exactly): every record is either valid by the contract (its event_id must be
predicted, at least once) or not (its source coordinates must be in the DLQ, with the contract's
reason, and the corpus's label where it has one). On top of that:
- duplicates: every prediction of an event_id carries the same content (latency aside), within
  FLOAT_TOL, and the same content as the reference run's;
- windows: every user's stored events equal the reference's (ts, value, item per event_id, and
  the same arrival order);
- live accuracy: the Redis totals equal the reference's exactly (counts) and to 1e-9 (sums);
- published schemas: predictions (up to SCHEMA_SAMPLE of them, evenly spread) are valid by
  schemas/v1/prediction.schema.json, and every dead letter's seqcast headers by dlq-headers.schema.json.
"""
from __future__ import annotations

import json
import math
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from streamer.events import InvalidEvent, parse_event
from streamer.live_accuracy import read_totals
from streamer.transport import Consumer, Record
from streamer.window_store import ARRIVAL_END, WindowStore

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "v1"
SCHEMA_SAMPLE = 20_000  # predictions checked against the schema (~0.1 ms each): a soak reads a million
FLOAT_TOL = 1e-5  # onnxruntime may round differently when the same row is in a batch of another size


class TopicReader:
    """Every record of a topic from the beginning, read incrementally (no group, nothing committed)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(bootstrap, topic, None, assign_all=True, start="earliest")
        self.records: list[Record] = []

    def poll(self, seconds: float) -> int:
        deadline, got = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            batch = self.consumer.poll(200, 20000)
            self.records += batch
            got += len(batch)
        return got

    def drain(self, idle_s: float = 2.0, max_s: float = 300.0) -> list[Record]:
        """Read until nothing new arrived for idle_s."""
        deadline = time.monotonic() + max_s
        while self.poll(idle_s) and time.monotonic() < deadline:
            pass
        return self.records

    def close(self) -> None:
        self.consumer.close()


@dataclass
class InputTruth:
    """The events topic, classified by the contract: valid event_ids and invalid records' reasons."""

    valid_ids: set[str] = field(default_factory=set)
    valid_records: int = 0
    invalid: dict[tuple[int, int], str] = field(default_factory=dict)  # (partition, offset) -> reason
    labels: dict[tuple[int, int], str | None] = field(default_factory=dict)  # corpus labels, where given
    users: set[str] = field(default_factory=set)
    id_counts: dict[str, int] = field(default_factory=dict)  # event_id -> valid records that carry it

    @classmethod
    def read(cls, records: list[Record], labelled: dict[bytes | None, str | None]) -> "InputTruth":
        truth = cls()
        for r in records:
            coords = (r.partition, r.offset)
            if r.value in labelled:
                truth.labels[coords] = labelled[r.value]
            try:
                event = parse_event(r.value)
            except InvalidEvent as err:
                truth.invalid[coords] = err.reason
                continue
            truth.valid_ids.add(event.event_id)
            truth.valid_records += 1
            truth.users.add(event.user_id)
            truth.id_counts[event.event_id] = truth.id_counts.get(event.event_id, 0) + 1
        return truth


def predictions_by_id(records: list[Record]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        body = json.loads(r.value)
        out[body["event_id"]].append(body)
    return out


def dead_by_source(records: list[Record]) -> dict[tuple[int, int], list[Record]]:
    out: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for r in records:
        h = dict(r.headers)
        out[(int(h["source_partition"]), int(h["source_offset"]))].append(r)
    return out


class Coverage:
    """Which valid events have a prediction and which invalid records a dead letter, so far.

    Incremental: each update parses only the records read since the last one (a soak reads a
    million predictions; re-parsing them all on every check would be quadratic)."""

    def __init__(self, truth: InputTruth) -> None:
        self.truth = truth
        self.predicted: set[str] = set()
        self.dead: set[tuple[int, int]] = set()
        self._read = [0, 0]

    def update(self, predictions: list[Record], dead: list[Record]) -> bool:
        for record in predictions[self._read[0]:]:
            self.predicted.add(json.loads(record.value)["event_id"])
        self.dead |= set(dead_by_source(dead[self._read[1]:]))
        self._read = [len(predictions), len(dead)]
        return self.truth.valid_ids <= self.predicted and self.truth.invalid.keys() <= self.dead


def wait_covered(truth: InputTruth, out: TopicReader, dlq: TopicReader, stall_s: float,
                 on_wait: Callable[[], None] = lambda: None) -> bool:
    """Read both topics until every input record has its verdict; False once `stall_s` pass with
    nothing new on either topic (a backlog that is still being worked off is not a stall: a soak's
    feed ends minutes before the member has caught up)."""
    coverage = Coverage(truth)
    last_progress, seen = time.monotonic(), 0
    while not coverage.update(out.records, dlq.records):
        if len(out.records) + len(dlq.records) > seen:
            seen, last_progress = len(out.records) + len(dlq.records), time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            return False
        out.poll(0.5)
        dlq.poll(0.2)
        on_wait()
    return True


def same_content(a: dict, b: dict, tol: float = FLOAT_TOL) -> bool:
    """Two predictions of one event agree: model, window, items in order, scores and forecast within tol."""
    if (a.get("model"), a.get("window"), a.get("user_id"), a.get("ts")) != \
            (b.get("model"), b.get("window"), b.get("user_id"), b.get("ts")):
        return False
    fa, fb = a.get("forecast"), b.get("forecast")
    if (fa is None) != (fb is None) or (fa is not None and not _close(fa, fb, tol)):
        return False
    ra, rb = a.get("recommendations"), b.get("recommendations")
    if (ra is None) != (rb is None):
        return False
    if ra is None:
        return True
    if not _close([r["score"] for r in ra], [r["score"] for r in rb], tol):
        return False
    # items may swap only where their scores tie within tol
    return all(x["item_id"] == y["item_id"] or abs(x["score"] - y["score"]) <= tol for x, y in zip(ra, rb))


def _close(xs, ys, tol: float) -> bool:
    return len(xs) == len(ys) and all(
        (x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, rel_tol=tol, abs_tol=tol))
        for x, y in zip(xs, ys))


def _identical(a: dict, b: dict) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k != "latency_ms"}
    return strip(a) == strip(b)


@dataclass
class Verdict:
    """The checker's findings for one run; `ok` when nothing was lost, doubled or corrupted."""

    valid_records: int = 0
    valid_ids: int = 0
    invalid: int = 0
    lost_valid: list[str] = field(default_factory=list)
    lost_invalid: list[tuple[int, int]] = field(default_factory=list)
    wrong_reason: list[str] = field(default_factory=list)
    predicted_invalid: list[str] = field(default_factory=list)
    duplicates: int = 0
    differing_duplicates: list[str] = field(default_factory=list)
    not_bit_identical_duplicates: int = 0
    examples: list[dict] = field(default_factory=list)  # a few differing duplicates, for the run's log folder
    differ_from_reference: list[str] = field(default_factory=list)
    windows_compared: int = 0
    windows_differ: list[str] = field(default_factory=list)
    live: dict = field(default_factory=dict)
    live_differ: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    off_schema: list[str] = field(default_factory=list)  # predictions or dead letters breaking schemas/v1

    @property
    def lost(self) -> int:
        return len(self.lost_valid) + len(self.lost_invalid)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.wrong_reason or self.predicted_invalid or self.differing_duplicates
                    or self.differ_from_reference or self.windows_differ or self.live_differ or self.crashes
                    or self.off_schema)

    def problems(self) -> list[str]:
        out = []
        for name in ("lost_valid", "lost_invalid", "wrong_reason", "predicted_invalid", "differing_duplicates",
                     "differ_from_reference", "windows_differ", "live_differ", "crashes", "off_schema"):
            found = getattr(self, name)
            if found:
                out.append(f"{name}: {len(found)} (e.g. {list(found)[:3]})")
        return out


def check_delivery(truth: InputTruth, predictions: list[Record], dead: list[Record],
                   reference: dict[str, list[dict]] | None) -> Verdict:
    """Every valid event predicted (same content each time), every invalid record in the DLQ."""
    v = Verdict(valid_records=truth.valid_records, valid_ids=len(truth.valid_ids), invalid=len(truth.invalid))
    by_id = predictions_by_id(predictions)
    v.lost_valid = sorted(truth.valid_ids - set(by_id))
    v.predicted_invalid = sorted(set(by_id) - truth.valid_ids)
    letters = dead_by_source(dead)
    v.lost_invalid = sorted(set(truth.invalid) - set(letters))
    for coords, reason in truth.invalid.items():
        got = {dict(r.headers)["reason"].decode() for r in letters.get(coords, [])}
        label = truth.labels.get(coords, reason)
        if label != reason:
            v.wrong_reason.append(f"{coords}: the contract says {reason}, the corpus label {label}")
        elif got and got != {reason}:
            v.wrong_reason.append(f"{coords}: the DLQ says {sorted(got)}, the contract {reason}")
    for coords, label in truth.labels.items():
        if label is not None and coords not in truth.invalid:
            v.wrong_reason.append(f"{coords}: the contract accepts it, the corpus label says {label}")
    for event_id, bodies in by_id.items():
        v.duplicates += max(0, len(bodies) - truth.id_counts.get(event_id, 1))  # beyond the input's own copies
        v.not_bit_identical_duplicates += sum(not _identical(bodies[0], other) for other in bodies[1:])
        sent_once = truth.id_counts.get(event_id, 0) == 1
        if sent_once and any(not same_content(bodies[0], other) for other in bodies[1:]):
            v.differing_duplicates.append(event_id)
            if len(v.examples) < 5:
                v.examples.append({"event_id": event_id, "predictions": bodies})
        if reference is not None and event_id in reference:
            # An id the input carried twice (a producer retry, or reused for another event) may get two
            # different predictions in any run: a copy arriving after more than window_slack newer events
            # of its user sees a trimmed window. So: each prediction must be one the reference also made.
            wanted = reference[event_id]
            if any(not any(same_content(body, want) for want in wanted) for body in bodies):
                v.differ_from_reference.append(event_id)
                if len(v.examples) < 10:
                    v.examples.append({"event_id": event_id, "predictions": bodies, "reference": wanted})
    v.off_schema = off_schema(predictions, dead)
    return v


def off_schema(predictions: list[Record], dead: list[Record], sample: int = SCHEMA_SAMPLE) -> list[str]:
    """Where the topics break the published schemas: 'topic[partition]@offset: path: message'."""
    from jsonschema import Draft202012Validator

    from streamer.dlq import DLQ_HEADERS

    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator(json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text()))

    out: list[str] = []
    stride = max(1, len(predictions) // sample) if sample else 1
    prediction, headers = validator("prediction"), validator("dlq-headers")
    checks = [(prediction, r, json.loads(r.value)) for r in predictions[::stride]]
    checks += [(headers, r, {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers if k in DLQ_HEADERS})
               for r in dead]
    for schema, record, body in checks:
        for error in schema.iter_errors(body):
            path = "/".join(map(str, error.absolute_path)) or "(root)"
            out.append(f"{record.topic}[{record.partition}]@{record.offset}: {path}: {error.message[:120]}")
    return out


def _normalised(stored: dict[str, bytes]) -> dict[str, tuple[bytes, int]]:
    """event_id -> (payload without its arrival number, arrival rank): arrival numbers may differ by
    the replays of an event trimmed on arrival (each takes a number), their order may not."""
    by_arrival = sorted(stored, key=lambda i: struct.unpack("<d", stored[i][16:ARRIVAL_END])[0])
    rank = {event_id: n for n, event_id in enumerate(by_arrival)}
    return {i: (p[:16] + p[ARRIVAL_END:], rank[i]) for i, p in stored.items()}


def check_state(v: Verdict, users: set[str], chaos: WindowStore, reference: WindowStore, version: str) -> None:
    """Windows and live totals of the chaos run equal the uninterrupted reference run's."""
    for user in sorted(users):
        v.windows_compared += 1
        if _normalised(chaos.stored(user)) != _normalised(reference.stored(user)):
            v.windows_differ.append(user)
    got = read_totals(chaos.client, chaos.prefix, version)
    want = read_totals(reference.client, reference.prefix, version)
    v.live = {arm: {k: t.get(k, 0.0) for k in ("items_scored", "hits", "forecast_scored", "forecast_skipped",
                                                "abs_error")} for arm, t in got.items()}
    for arm in set(got) | set(want):
        g, w = got.get(arm, {}), want.get(arm, {})
        for name in ("items_scored", "hits", "forecast_scored", "forecast_skipped"):
            if g.get(name, 0.0) != w.get(name, 0.0):
                v.live_differ.append(f"{arm}:{name} {g.get(name, 0.0):.0f} != reference {w.get(name, 0.0):.0f}")
        if not math.isclose(g.get("abs_error", 0.0), w.get("abs_error", 0.0), rel_tol=1e-9):
            v.live_differ.append(f"{arm}:abs_error {g.get('abs_error')} != reference {w.get('abs_error')}")
        if not math.isfinite(g.get("abs_error", 0.0)):
            v.live_differ.append(f"{arm}:abs_error is not finite")

"""Live accuracy: score each user's previous prediction when their next event arrives.

For every event, the prediction the user received at their previous event is
judged against what they actually did: was the item in the top-K (HR@K), how
far was the first forecast step from the value (absolute error, original
units)? Totals go to Prometheus (`seqcast_live_*`, per model version and arm)
and to Redis (`{prefix}:model:live:<version>`, so `seqcast models list` can
show them across every consumer of the group).

State is bounded: the last prediction per user and role ("served" = primary or
canary, "shadow") in `{prefix}:{<user>}:last`, a hash that shares the
window's hash tag and TTL. Each stored prediction carries its event's
(ts, event_id); an event scores and replaces it only if it comes strictly
later in that order. So a batch re-read after a crash scores nothing twice,
and a late (out-of-order) event is neither scored nor remembered.

Round trips: one pipeline to read the users' last predictions, one to write
the new ones and the totals, per batch.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from streamer.metrics import Metrics
from streamer.predict import SHADOW, Scored

HEADS = ("items", "forecast")


@dataclass(frozen=True)
class LastPrediction:
    ts: float
    event_id: str
    version: str
    arm: str
    forecast0: float | None
    items: frozenset[str] | None

    def to_bytes(self) -> bytes:
        items = None if self.items is None else sorted(self.items)
        return json.dumps([self.ts, self.event_id, self.version, self.arm, self.forecast0, items]).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LastPrediction":
        ts, event_id, version, arm, forecast0, items = json.loads(raw)
        return cls(ts, event_id, version, arm, forecast0, None if items is None else frozenset(items))

    @classmethod
    def of(cls, scored: Scored) -> "LastPrediction":
        body = scored.body
        forecast = body.get("forecast")
        recs = body.get("recommendations")
        return cls(scored.event.ts, scored.event.event_id, scored.version, scored.arm,
                   None if not forecast else float(forecast[0]),
                   None if recs is None else frozenset(r["item_id"] for r in recs))


@dataclass
class Tally:
    items_scored: int = 0
    hits: int = 0
    forecast_scored: int = 0
    abs_error: float = 0.0


def role_of(scored: Scored) -> str:
    return "shadow" if scored.arm == SHADOW else "served"


def judge(previous: LastPrediction, scored: Scored, tally: Tally) -> None:
    """Add the verdict on `previous` given the event that followed it."""
    event = scored.event
    if previous.items is not None and event.item_id is not None:
        tally.items_scored += 1
        tally.hits += event.item_id in previous.items
    if previous.forecast0 is not None and event.value is not None:
        tally.forecast_scored += 1
        tally.abs_error += abs(event.value - previous.forecast0)


class LiveScorer:
    """`score(scored)` after each batch: judge previous predictions, remember the new ones."""

    def __init__(self, client, prefix: str, ttl_seconds: int, metrics: Metrics) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.metrics = metrics

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:last"

    def totals_key(self, version: str) -> str:
        return f"{self.prefix}:model:live:{version}"

    def score(self, batch: Sequence[Scored]) -> dict[tuple[str, str], Tally]:
        """Judge and remember; returns the batch's tallies by (version, arm)."""
        if not batch:
            return {}
        last = self._read(dict.fromkeys(s.event.user_id for s in batch))
        tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
        changed: set[tuple[str, str]] = set()
        for scored in batch:
            slot = (scored.event.user_id, role_of(scored))
            previous = last.get(slot)
            if previous is not None:
                if (scored.event.ts, scored.event.event_id) <= (previous.ts, previous.event_id):
                    continue  # a replay or a late event: judged (or skipped) before, keep the newer state
                judge(previous, scored, tallies[(previous.version, previous.arm)])
            last[slot] = LastPrediction.of(scored)
            changed.add(slot)
        self._write(last, changed, tallies)
        self._observe(tallies)
        return tallies

    def _read(self, users) -> dict[tuple[str, str], LastPrediction]:
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(self.key(user))
        found = {}
        for user, fields in zip(users, pipe.execute()):
            for role, raw in fields.items():
                role = role.decode() if isinstance(role, bytes) else role
                found[(user, role)] = LastPrediction.from_bytes(raw)
        return found

    def _write(self, last, changed, tallies) -> None:
        pipe = self.client.pipeline(transaction=False)
        for user, role in changed:
            key = self.key(user)
            pipe.hset(key, role, last[(user, role)].to_bytes())
            if self.ttl_seconds > 0:
                pipe.expire(key, self.ttl_seconds)
        for (version, arm), t in tallies.items():
            key = self.totals_key(version)
            pipe.hincrby(key, f"{arm}:items_scored", t.items_scored)
            pipe.hincrby(key, f"{arm}:hits", t.hits)
            pipe.hincrby(key, f"{arm}:forecast_scored", t.forecast_scored)
            pipe.hincrbyfloat(key, f"{arm}:abs_error", t.abs_error)
        pipe.execute()

    def _observe(self, tallies) -> None:
        m = self.metrics
        for (version, arm), t in tallies.items():
            m.live_scored.labels(version, arm, "items").inc(t.items_scored)
            m.live_scored.labels(version, arm, "forecast").inc(t.forecast_scored)
            m.live_hits.labels(version, arm).inc(t.hits)
            m.live_abs_error.labels(version, arm).inc(t.abs_error)


def read_totals(client, prefix: str, version: str) -> dict[str, dict[str, float]]:
    """arm -> {"items_scored", "hits", "HR", "forecast_scored", "abs_error", "MAE"} from Redis."""
    raw = client.hgetall(f"{prefix}:model:live:{version}")
    arms: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in raw.items():
        field = field.decode() if isinstance(field, bytes) else field
        arm, name = field.split(":", 1)
        arms[arm][name] = float(value)
    for t in arms.values():
        t["HR"] = t["hits"] / t["items_scored"] if t.get("items_scored") else float("nan")
        t["MAE"] = t["abs_error"] / t["forecast_scored"] if t.get("forecast_scored") else float("nan")
    return dict(arms)

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

Exactly once, under crashes: the new "last prediction" marks and the totals
they account for are written by ONE Lua script (`WRITE_SCRIPT`), so a kill
can never leave marks without their totals (judgments lost) or totals
without their marks (judgments counted twice). The script also
compares-and-sets: a user's marks are written only if they still hold what
this batch read, so two members that briefly process the same user during a
rebalance cannot both count. On Redis Cluster, one script call covers the
users of one hash slot, and the totals are sharded by slot
(`{prefix}:model:live:<version>:{<tag>}`, listed in `...:shards`) so each call
touches keys of its own slot only; `read_totals` sums the shards.

Bad numbers never reach the totals: an absolute error that is not finite, or
larger than MAX_SCALED standard deviations of the user's scaler (an input far
outside anything the model can forecast), is skipped and counted
(`seqcast_live_skipped_total{reason}` and `<arm>:forecast_skipped`), and a
total that would overflow is left as it is (counted as `overflow`).

Round trips: one pipeline to read the users' last predictions, one to write,
per batch.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from redis.exceptions import NoScriptError

from streamer.features import MAX_SCALED
from streamer.metrics import Metrics
from streamer.predict import SHADOW, Scored
from streamer.slots import SlotTags

HEADS = ("items", "forecast")
SKIP_REASONS = ("not_finite", "out_of_range", "overflow")
TALLY_FIELDS = ("items_scored", "hits", "forecast_scored", "abs_error", "forecast_skipped")

# KEYS: every key the call touches. ARGV: n_ops, ttl, then per op:
#   last_key_index, role, expected (stored bytes, "" = absent), new (bytes), n_incs,
#   then n_incs x (totals_key_index, field, amount)
# An op whose last-prediction slot no longer holds `expected` is skipped with its increments.
# Increments are summed per (key, field) over the applied ops; a float total that would stop being
# finite is left unchanged. Returns {skipped ops (1-based), overflowed fields}.
WRITE_SCRIPT = """
local n_ops, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local pos, skipped, sums, order = 3, {}, {}, {}
for op = 1, n_ops do
  local key, role, expected, new = KEYS[tonumber(ARGV[pos])], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local n_incs = tonumber(ARGV[pos + 4])
  pos = pos + 5
  local current = redis.call('HGET', key, role) or ''
  local apply = current == expected
  if apply then
    redis.call('HSET', key, role, new)
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  else
    skipped[#skipped + 1] = op
  end
  for _ = 1, n_incs do
    if apply then
      local slot = ARGV[pos] .. '\\0' .. ARGV[pos + 1]
      if sums[slot] == nil then
        sums[slot] = 0
        order[#order + 1] = {KEYS[tonumber(ARGV[pos])], ARGV[pos + 1], slot}
      end
      sums[slot] = sums[slot] + tonumber(ARGV[pos + 2])
    end
    pos = pos + 3
  end
end
local overflowed = 0
for _, entry in ipairs(order) do
  local key, fieldname, amount = entry[1], entry[2], sums[entry[3]]
  if amount ~= 0 then
    local now = tonumber(redis.call('HGET', key, fieldname) or '0')
    local after = now + amount
    if after == after and after ~= math.huge and after ~= -math.huge then
      redis.call('HINCRBYFLOAT', key, fieldname, string.format('%.17g', amount))
    else
      overflowed = overflowed + 1
    end
  end
end
return {skipped, overflowed}
"""


@dataclass(frozen=True)
class LastPrediction:
    ts: float
    event_id: str
    version: str
    arm: str
    forecast0: float | None
    items: frozenset[str] | None
    scale: float = 1.0  # the std of the user's scaler in that version: the yardstick for absurd errors

    def to_bytes(self) -> bytes:
        items = None if self.items is None else sorted(self.items)
        return json.dumps([self.ts, self.event_id, self.version, self.arm, self.forecast0, items,
                           self.scale]).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LastPrediction":
        ts, event_id, version, arm, forecast0, items, *rest = json.loads(raw)
        return cls(ts, event_id, version, arm, forecast0, None if items is None else frozenset(items),
                   float(rest[0]) if rest else 1.0)

    @classmethod
    def of(cls, scored: Scored) -> "LastPrediction":
        body = scored.body
        forecast = body.get("forecast")
        recs = body.get("recommendations")
        first = None if not forecast or forecast[0] is None else float(forecast[0])
        return cls(scored.event.ts, scored.event.event_id, scored.version, scored.arm, first,
                   None if recs is None else frozenset(r["item_id"] for r in recs), scored.scale)


@dataclass(slots=True)
class Tally:
    items_scored: int = 0
    hits: int = 0
    forecast_scored: int = 0
    abs_error: float = 0.0
    forecast_skipped: int = 0

    def add(self, other: "Tally") -> None:
        for name in TALLY_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def increments(self) -> list[tuple[str, int | float]]:
        """(field, amount) for every non-zero total (what the write script adds)."""
        return [(name, value) for name in TALLY_FIELDS if (value := getattr(self, name))]


class UserUpdate:
    """One (user, role) slot's change in a batch: what was read, what to write, what it accounts for.

    Plain slots, and the tallies made only when a judgment happens: one of these per user per batch
    is on the hot path."""

    __slots__ = ("user", "role", "expected", "new", "tallies", "skips")

    def __init__(self, user: str, role: str, expected: bytes) -> None:
        self.user, self.role = user, role
        self.expected = expected  # the stored mark as read (b"" = none): the compare-and-set guard
        self.new: LastPrediction | None = None
        self.tallies: dict[tuple[str, str], Tally] = {}
        self.skips: dict[str, int] = {}

    def tally(self, version: str, arm: str) -> Tally:
        key = (version, arm)
        found = self.tallies.get(key)
        if found is None:
            found = self.tallies[key] = Tally()
        return found


def role_of(scored: Scored) -> str:
    return "shadow" if scored.arm == SHADOW else "served"


def judge(previous: LastPrediction, scored: Scored, update: UserUpdate) -> None:
    """Add the verdict on `previous` given the event that followed it."""
    event = scored.event
    tally = update.tally(previous.version, previous.arm)
    if previous.items is not None and event.item_id is not None:
        tally.items_scored += 1
        tally.hits += event.item_id in previous.items
    if previous.forecast0 is not None and event.value is not None:
        error = abs(event.value - previous.forecast0)
        reason = None if math.isfinite(error) else "not_finite"
        if reason is None and error > MAX_SCALED * previous.scale:
            reason = "out_of_range"
        if reason is None:
            tally.forecast_scored += 1
            tally.abs_error += error
        else:
            tally.forecast_skipped += 1
            update.skips[reason] = update.skips.get(reason, 0) + 1


class LiveScorer:
    """`score(scored)` after each batch: judge previous predictions, remember the new ones."""

    def __init__(self, client, prefix: str, ttl_seconds: int, metrics: Metrics) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.metrics = metrics
        self.slots = SlotTags(client)  # None-like on a single Redis: one call, unsharded totals
        self._sha = client.script_load(WRITE_SCRIPT)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:last"

    def totals_key(self, version: str, shard: str | None = None) -> str:
        base = f"{self.prefix}:model:live:{version}"
        return base if shard is None else f"{base}:{{{shard}}}"

    def score(self, batch: Sequence[Scored]) -> dict[tuple[str, str], Tally]:
        """Judge and remember; returns the tallies written, by (version, arm)."""
        if not batch:
            return {}
        users = list(dict.fromkeys(s.event.user_id for s in batch))
        stored = self._read(users)
        updates: dict[tuple[str, str], UserUpdate] = {}
        last: dict[tuple[str, str], LastPrediction] = {}
        for scored in batch:
            slot = (scored.event.user_id, role_of(scored))
            if slot not in updates:
                raw = stored.get(slot, b"")
                updates[slot] = UserUpdate(slot[0], slot[1], raw)
                if raw:
                    last[slot] = LastPrediction.from_bytes(raw)
            previous = last.get(slot)
            if previous is not None:
                if (scored.event.ts, scored.event.event_id) <= (previous.ts, previous.event_id):
                    continue  # a replay or a late event: judged (or skipped) before, keep the newer state
                judge(previous, scored, updates[slot])
            last[slot] = updates[slot].new = LastPrediction.of(scored)
        written = [u for u in updates.values() if u.new is not None]
        applied = self._write(written)
        return self._observe(applied)

    def _read(self, users: list[str]) -> dict[tuple[str, str], bytes]:
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(self.key(user))
        found = {}
        for user, fields in zip(users, pipe.execute()):
            for role, raw in fields.items():
                found[(user, role.decode() if isinstance(role, bytes) else role)] = raw
        return found

    def _write(self, updates: list[UserUpdate]) -> list[UserUpdate]:
        """Run the write script per slot group; returns the updates that were applied."""
        if not updates:
            return []
        groups: dict[str | None, list[UserUpdate]] = defaultdict(list)
        for update in updates:
            groups[self.slots.tag_for(self.key(update.user))].append(update)
        pipe = self.client.pipeline(transaction=False)
        calls = []
        for shard, group in groups.items():
            keys, argv = self._call(shard, group)
            if shard is not None:  # the shard index lives in another slot: listed first, idempotently
                for version in {v for u in group for v, _ in u.tallies}:
                    pipe.sadd(f"{self.totals_key(version)}:shards", shard)
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *argv)
            calls.append(group)
        try:
            replies = pipe.execute()
        except NoScriptError:  # Redis restarted or failed over: reload; ops that did run now fail their CAS
            self._sha = self.client.script_load(WRITE_SCRIPT)
            return self._write(updates)
        results = [r for r in replies if isinstance(r, list)]
        applied = []
        for group, (skipped, overflowed) in zip(calls, results):
            refused = set(skipped)
            applied += [u for n, u in enumerate(group, 1) if n not in refused]
            if overflowed:
                self.metrics.live_skipped.labels("overflow").inc(overflowed)
        return applied

    def _call(self, shard: str | None, group: list[UserUpdate]) -> tuple[list[str], list]:
        keys: dict[str, int] = {}
        index = lambda key: keys.setdefault(key, len(keys) + 1)
        argv: list = [len(group), self.ttl_seconds]
        for update in group:
            incs = [(index(self.totals_key(version, shard)), f"{arm}:{name}", amount)
                    for (version, arm), tally in update.tallies.items() for name, amount in tally.increments()]
            argv += [index(self.key(update.user)), update.role, update.expected, update.new.to_bytes(), len(incs)]
            for key_index, name, amount in incs:
                argv += [key_index, name, repr(amount) if isinstance(amount, float) else amount]
        return list(keys), argv

    def _observe(self, applied: list[UserUpdate]) -> dict[tuple[str, str], Tally]:
        m = self.metrics
        totals: dict[tuple[str, str], Tally] = defaultdict(Tally)
        for update in applied:
            for key, tally in update.tallies.items():
                totals[key].add(tally)
            for reason, count in update.skips.items():
                m.live_skipped.labels(reason).inc(count)
        for (version, arm), t in totals.items():
            m.live_scored.labels(version, arm, "items").inc(t.items_scored)
            m.live_scored.labels(version, arm, "forecast").inc(t.forecast_scored)
            m.live_hits.labels(version, arm).inc(t.hits)
            m.live_abs_error.labels(version, arm).inc(t.abs_error)
        return dict(totals)


def read_totals(client, prefix: str, version: str) -> dict[str, dict[str, float]]:
    """arm -> {"items_scored", "hits", "HR", "forecast_scored", "abs_error", "MAE", ...} from Redis,
    summed over the slot shards on Redis Cluster."""
    base = f"{prefix}:model:live:{version}"
    shards = [s.decode() if isinstance(s, bytes) else s for s in client.smembers(f"{base}:shards")]
    arms: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key in [base, *(f"{base}:{{{shard}}}" for shard in sorted(shards))]:
        for name, value in client.hgetall(key).items():
            name = name.decode() if isinstance(name, bytes) else name
            arm, stat = name.split(":", 1)
            arms[arm][stat] += float(value)
    out = {}
    for arm, t in arms.items():
        t = dict(t)
        t["HR"] = t.get("hits", 0.0) / t["items_scored"] if t.get("items_scored") else float("nan")
        t["MAE"] = t.get("abs_error", 0.0) / t["forecast_scored"] if t.get("forecast_scored") else float("nan")
        out[arm] = t
    return out

"""Live accuracy: score each user's previous prediction when their next event arrives.

For every event, the prediction the user received at their previous event is
judged against what they actually did: was the item in the top-K (HR@K), how
far was the first forecast step from the value (absolute error, original
units)? Totals go to Prometheus (`seqcast_live_*`, per model version and arm)
and to Redis (`{prefix}:model:live:<version>`, so `seqcast models list` can
show them across every consumer of the group). With a shadow, its verdict on an
event is also paired with the served arm's verdict on the same event
(`{prefix}:model:paired:<shadow version>`): the rollout controller's paired
test needs the per-event differences, summed with their squares
(`streamer.live_totals` names every field).

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
rebalance cannot both count, and marks read earlier (by the window call, see
below) can never be counted twice either. On Redis Cluster, one script call
covers the users of one hash slot, and the totals are sharded by slot
(`{prefix}:model:live:<version>:{<tag>}`, listed in `...:shards`) so each call
touches keys of its own slot only; `read_totals` sums the shards.

Bad numbers never reach the totals: an absolute error that is not finite, or
larger than MAX_SCALED standard deviations of the user's scaler (an input far
outside anything the model can forecast), is skipped and counted
(`seqcast_live_skipped_total{reason}` and `<arm>:forecast_skipped`), and a
total that would overflow is left as it is (counted as `overflow`).

Round trips: none to read (the service passes the marks that the window
store's batch call returned with the windows, `WindowStore.append_and_read_marks`;
without them `score` reads them itself, one pipeline), one to write, per batch.

Mark encoding: the same JSON list as before this change, [ts, event_id,
version, arm, forecast0, items, scale], written with orjson (items in
recommendation order instead of sorted: readers make a set of them). Old and
new members read each other's marks, so a rolling upgrade needs no new key
and misreads nothing. A mark orjson cannot write (a non-finite forecast, an
id with a lone surrogate) is written by the json module (NaN tokens), which
both versions read.
"""
from __future__ import annotations

import json
import math
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import orjson
from redis.exceptions import NoScriptError

from streamer.features import MAX_SCALED
from streamer.live_totals import (TALLY_FIELDS, bucket_key, bucket_of, paired_bucket_key, paired_key,
                                  totals_key)
from streamer.live_totals import read_paired, read_totals  # noqa: F401  (re-exported: the readers' old home)
from streamer.metrics import Metrics
from streamer.predict import SHADOW, Scored
from streamer.slots import SlotTags

HEADS = ("items", "forecast")
SKIP_REASONS = ("not_finite", "out_of_range", "overflow")
# kinds of totals: one arm's own, a shadow paired with the served arm on the same events, and both split
# by user bucket (`streamer.live_totals.bucket_of`)
ARM, PAIR, BUCKET, PAIR_BUCKET = 1, 2, 3, 4
KEYS_BY_KIND = {ARM: totals_key, PAIR: paired_key, BUCKET: bucket_key, PAIR_BUCKET: paired_bucket_key}
_WIDTH = 8  # amounts per tally (an arm's uses the first six)
_TALLY = struct.Struct("<H" + "d" * _WIDTH)  # group number, then the amounts in TALLY_FIELDS / PAIR_FIELDS order

# KEYS: every key the call touches. ARGV: ttl, n_groups, n_groups x (totals_key_index, label, kind), then per op:
#   last_key_index, role, expected (stored bytes, "" = absent), new (bytes), tallies
# where tallies = n x <uint16 group><8 float64 amounts> (struct, no number parsing), named by the group's
# kind: 1 = an arm's TALLY_FIELDS (label = arm), 2 = a pair's PAIR_FIELDS (label = the served version),
# 3 = BUCKET_FIELDS (label = arm:b<k>), 4 = PAIR_BUCKET_FIELDS (label = served version:b<k>).
# An op whose last-prediction slot no longer holds `expected` is skipped with its tallies.
# Amounts are summed per (group, field) over the applied ops in op order; a total that would stop
# being finite is left unchanged. Returns {skipped ops (1-based), overflowed fields}.
WRITE_SCRIPT = """
local call, unpack_s = redis.call, struct.unpack
local ttl, n_groups = tonumber(ARGV[1]), tonumber(ARGV[2])
local group_key, group_arm, group_kind, pos = {}, {}, {}, 3
for g = 1, n_groups do
  group_key[g], group_arm[g], group_kind[g] = KEYS[tonumber(ARGV[pos])], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
end
local skipped, sums, order, op = {}, {}, {}, 0
while pos <= #ARGV do
  op = op + 1
  local key, role, expected, tallies = KEYS[tonumber(ARGV[pos])], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 4]
  if (call('HGET', key, role) or '') == expected then
    call('HSET', key, role, ARGV[pos + 3])
    if ttl > 0 then call('EXPIRE', key, ttl) end
    for at = 1, #tallies, 66 do
      local g, a, b, c, d, e, f, h, i = unpack_s('<Hdddddddd', tallies, at)
      local s = sums[g]
      if s == nil then
        s = {0, 0, 0, 0, 0, 0, 0, 0}
        sums[g] = s
        order[#order + 1] = g
      end
      s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8] = s[1] + a, s[2] + b, s[3] + c, s[4] + d, s[5] + e,
        s[6] + f, s[7] + h, s[8] + i
    end
  else
    skipped[#skipped + 1] = op
  end
  pos = pos + 5
end
local names = {{'items_scored', 'hits', 'forecast_scored', 'abs_error', 'forecast_skipped', 'sq_error'},
  {'pairs_items', 'hit_diff', 'hit_diff_sq', 'base_hits', 'pairs_forecast', 'err_diff', 'err_diff_sq',
   'base_abs_error'},
  {'items_scored', 'hits', 'forecast_scored', 'abs_error'},
  {'pairs_items', 'hit_diff', 'pairs_forecast', 'err_diff'}}
local overflowed = 0
for _, g in ipairs(order) do
  local key, s, kind_names = group_key[g], sums[g], names[group_kind[g]]
  for f = 1, #kind_names do
    local amount = s[f]
    if amount ~= 0 then
      local fieldname = group_arm[g] .. ':' .. kind_names[f]
      local after = tonumber(call('HGET', key, fieldname) or '0') + amount
      if after == after and after ~= math.huge and after ~= -math.huge then
        call('HINCRBYFLOAT', key, fieldname, string.format('%.17g', amount))
      else
        overflowed = overflowed + 1
      end
    end
  end
end
return {skipped, overflowed}
"""

# A mark, decoded: (ts, event_id, version, arm, forecast0 or None, items (list) or None, scale)
Mark = tuple


def encode_mark(mark: Mark) -> bytes:
    """The stored form: a JSON list (orjson; the json module for what orjson refuses, e.g. NaN)."""
    forecast0 = mark[4]
    if forecast0 is None or math.isfinite(forecast0):
        try:
            return orjson.dumps(mark)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(list(mark)).encode()


def decode_mark(raw: bytes) -> Mark:
    """Either writer's mark (orjson or json module, old sorted items or new ordered ones)."""
    try:
        ts, event_id, version, arm, forecast0, items, *rest = orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN / Infinity tokens
        ts, event_id, version, arm, forecast0, items, *rest = json.loads(raw)
    return ts, event_id, version, arm, forecast0, items, float(rest[0]) if rest else 1.0


def mark_of(scored: Scored) -> Mark:
    body = scored.body
    forecast = body.get("forecast")
    recs = body.get("recommendations")
    first = forecast[0] if forecast else None
    event = scored.event
    return (event.ts, event.event_id, scored.version, scored.arm, None if first is None else float(first),
            None if recs is None else [r["item_id"] for r in recs], scored.scale)


@dataclass(frozen=True)
class LastPrediction:
    """A mark as an object (tools and tests; the hot path keeps the plain tuple)."""

    ts: float
    event_id: str
    version: str
    arm: str
    forecast0: float | None
    items: frozenset[str] | None
    scale: float = 1.0  # the std of the user's scaler in that version: the yardstick for absurd errors

    def to_bytes(self) -> bytes:
        items = None if self.items is None else sorted(self.items)
        return encode_mark((self.ts, self.event_id, self.version, self.arm, self.forecast0, items, self.scale))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LastPrediction":
        ts, event_id, version, arm, forecast0, items, scale = decode_mark(raw)
        return cls(ts, event_id, version, arm, forecast0, None if items is None else frozenset(items), scale)

    @classmethod
    def of(cls, scored: Scored) -> "LastPrediction":
        ts, event_id, version, arm, forecast0, items, scale = mark_of(scored)
        return cls(ts, event_id, version, arm, forecast0, None if items is None else frozenset(items), scale)


@dataclass(slots=True)
class Tally:
    items_scored: int = 0
    hits: int = 0
    forecast_scored: int = 0
    abs_error: float = 0.0
    forecast_skipped: int = 0
    sq_error: float = 0.0

    def add(self, other: "Tally") -> None:
        for name in TALLY_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def increments(self) -> list[tuple[str, int | float]]:
        """(field, amount) for every non-zero total."""
        return [(name, value) for name in TALLY_FIELDS if (value := getattr(self, name))]


class UserUpdate:
    """One (user, role) slot's change in a batch: what was read, what to write, what it accounts for.

    Plain slots; the tallies (kind, version, label) -> [8 amounts] are made only when a judgment
    happens: (ARM, version, arm) for the arm's own totals, (PAIR, shadow version, served version)
    for a shadow judged on the same event as the served arm (kept on the shadow's update, so the
    shadow mark's compare-and-set guards the pair against a double count too)."""

    __slots__ = ("user", "role", "expected", "last", "new", "tallies", "skips", "bucket")

    def __init__(self, user: str, role: str, expected: bytes, buckets: bool = True) -> None:
        self.user, self.role = user, role
        # the label suffix of this user's bucket totals; None: not kept (no rollout arm is serving)
        self.bucket = f":b{bucket_of(user)}" if buckets else None
        self.expected = expected  # the stored mark as read (b"" = none): the compare-and-set guard
        self.last: Mark | None = decode_mark(expected) if expected else None
        self.new: Mark | None = None
        self.tallies: dict[tuple[int, str, str], list] | None = None
        self.skips: dict[str, int] | None = None

    def tally(self, key: tuple[int, str, str]) -> list:
        tallies = self.tallies
        if tallies is None:
            tallies = self.tallies = {}
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = [0, 0, 0, 0.0, 0, 0.0, 0, 0.0]
        return tally


def role_of(scored: Scored) -> str:
    return "shadow" if scored.arm == SHADOW else "served"


Verdict = tuple  # (hit: bool | None, error: float | None): None where that head was not judged


def judge(previous: Mark, scored: Scored, update: UserUpdate) -> Verdict:
    """Add the verdict on `previous` given the event that followed it; returns that verdict."""
    event = scored.event
    tally = update.tally((ARM, previous[2], previous[3]))
    bucket = None if update.bucket is None else update.tally((BUCKET, previous[2], previous[3] + update.bucket))
    items, forecast0 = previous[5], previous[4]
    hit = error = None
    if items is not None and event.item_id is not None:
        hit = event.item_id in items
        tally[0] += 1
        tally[1] += hit
        if bucket is not None:
            bucket[0] += 1
            bucket[1] += hit
    if forecast0 is not None and event.value is not None:
        error = abs(event.value - forecast0)
        reason = None if math.isfinite(error) else "not_finite"
        if reason is None and error > MAX_SCALED * previous[6]:
            reason = "out_of_range"
        if reason is None:
            tally[2] += 1
            tally[3] += error
            tally[5] += error * error
            if bucket is not None:
                bucket[2] += 1
                bucket[3] += error
        else:
            error = None
            tally[4] += 1
            skips = update.skips
            if skips is None:
                skips = update.skips = {}
            skips[reason] = skips.get(reason, 0) + 1
    return hit, error


def pair(served: tuple[Mark, Verdict], shadow_previous: Mark, shadow_verdict: Verdict, update: UserUpdate) -> None:
    """Add the paired difference of a shadow and the served arm judged on the same event, when both
    predictions were made at the same previous event (a shadow added later, or re-added, may hold an
    older one) and both have the head."""
    served_previous, (hit_b, err_b) = served
    if (served_previous[0], served_previous[1]) != (shadow_previous[0], shadow_previous[1]):
        return
    hit_c, err_c = shadow_verdict
    if (hit_b is None or hit_c is None) and (err_b is None or err_c is None):
        return
    tally = update.tally((PAIR, shadow_previous[2], served_previous[2]))
    bucket = None if update.bucket is None else \
        update.tally((PAIR_BUCKET, shadow_previous[2], served_previous[2] + update.bucket))
    if hit_b is not None and hit_c is not None:
        _add_difference(tally, 0, hit_c - hit_b, hit_b)
        if bucket is not None:
            bucket[0] += 1
            bucket[1] += hit_c - hit_b
    if err_b is not None and err_c is not None:
        _add_difference(tally, 4, err_b - err_c, err_b)
        if bucket is not None:
            bucket[2] += 1
            bucket[3] += err_b - err_c


def _add_difference(tally: list, at: int, d: float, baseline: float) -> None:
    """One pair of a head into PAIR_FIELDS[at:at + 4]: count, d, d^2, the served arm's own amount."""
    tally[at] += 1
    tally[at + 1] += d
    tally[at + 2] += d * d
    tally[at + 3] += baseline


class LiveScorer:
    """`score(scored, marks)` after each batch: judge previous predictions, remember the new ones."""

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
        return totals_key(self.prefix, version, shard)

    def score(self, batch: Sequence[Scored], marks: dict[str, dict[str, bytes]] | None = None,
              buckets: bool = True) -> dict[tuple[str, str], Tally]:
        """Judge and remember; returns the tallies written, by (version, arm).

        `buckets`: also keep the totals by user bucket (what a rollout's statistics read). The service
        keeps them only while a canary or shadow serves: with the primary alone nothing compares
        arms, and they cost about 5% of throughput (up to 64 more totals per arm per batch).

        `marks`: user -> {role: stored mark} as read for this batch (WindowStore.append_and_read_marks);
        users missing from it are read here. A mark changed since it was read only costs its judgment
        (the write's compare-and-set refuses it), never a double count.

        With a shadow (its predictions come after all served ones, `predict_batch`), each served
        verdict is kept by event so the shadow's verdict on the same event can be paired with it."""
        if not batch:
            return {}
        marks = {} if marks is None else marks
        missing = [u for u in dict.fromkeys(s.event.user_id for s in batch) if u not in marks]
        if missing:
            marks = {**marks, **self.read_marks(missing)}
        updates: dict[tuple[str, str], UserUpdate] = {}
        pairing = batch[-1].arm == SHADOW
        served_verdicts: dict[int, tuple[Mark, Verdict]] = {}
        for scored in batch:
            event = scored.event
            shadow = scored.arm == SHADOW
            slot = (event.user_id, "shadow" if shadow else "served")
            update = updates.get(slot)
            if update is None:
                update = updates[slot] = UserUpdate(slot[0], slot[1], marks[slot[0]].get(slot[1], b""), buckets)
            previous = update.last
            if previous is not None:
                if (event.ts, event.event_id) <= (previous[0], previous[1]):
                    continue  # a replay or a late event: judged (or skipped) before, keep the newer state
                verdict = judge(previous, scored, update)
                if pairing:
                    if not shadow:
                        served_verdicts[id(event)] = (previous, verdict)
                    elif (served := served_verdicts.get(id(event))) is not None:
                        pair(served, previous, verdict, update)
            update.last = update.new = mark_of(scored)
        written = [u for u in updates.values() if u.new is not None]
        applied = self._write(written)
        return self._observe(applied)

    def read_marks(self, users: list[str]) -> dict[str, dict[str, bytes]]:
        """user -> {role: stored mark}: one pipeline (when the window call did not read them)."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(self.key(user))
        return {user: {(r.decode() if isinstance(r, bytes) else r): raw for r, raw in fields.items()}
                for user, fields in zip(users, pipe.execute())}

    def _write(self, updates: list[UserUpdate]) -> list[UserUpdate]:
        """Run the write script per slot group; returns the updates that were applied."""
        if not updates:
            return []
        groups: dict[str | None, list[UserUpdate]] = defaultdict(list)
        if self.slots.cluster:
            for update in updates:
                groups[self.slots.tag_for(self.key(update.user))].append(update)
        else:
            groups[None] = updates
        pipe = self.client.pipeline(transaction=False)
        calls = []
        for shard, group in groups.items():
            keys, argv, bases = self._call(shard, group)
            if shard is not None:  # the shard index lives in another slot: listed first, idempotently
                for base in bases:
                    pipe.sadd(f"{base}:shards", shard)
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *argv)
            calls.append(group)
        try:
            replies = pipe.execute()
        except NoScriptError:  # Redis restarted or failed over: reload; ops that did run now fail their CAS
            self._sha = self.client.script_load(WRITE_SCRIPT)
            return self._write(updates)
        results = [r for r in replies if isinstance(r, list)]
        applied: list[UserUpdate] = []
        overflowed = 0
        for group, (skipped, overflow) in zip(calls, results):
            if skipped:
                refused = set(skipped)
                applied += [u for n, u in enumerate(group, 1) if n not in refused]
            else:
                applied += group
            overflowed += overflow
        if overflowed:
            self.metrics.live_skipped.labels("overflow").inc(overflowed)
        return applied

    def _call(self, shard: str | None, group: list[UserUpdate]) -> tuple[list[str], list, set[str]]:
        """KEYS and ARGV of one write-script call, and the base totals keys it adds to."""
        keys: dict[str, int] = {}
        numbers: dict[tuple[int, str, str], int] = {}  # (kind, version, label) -> group number
        header: list = []
        ops: list = []
        bases: set[str] = set()
        pack, ttl, prefix = _TALLY.pack, self.ttl_seconds, self.prefix
        for update in group:
            tallies = b""
            if update.tallies:
                parts = []
                for group_key, t in update.tallies.items():
                    g = numbers.get(group_key)
                    if g is None:
                        g = numbers[group_key] = len(numbers) + 1
                        kind, version, label = group_key
                        name = KEYS_BY_KIND[kind]
                        bases.add(name(prefix, version))
                        header += (keys.setdefault(name(prefix, version, shard), len(keys) + 1), label, kind)
                    parts.append(pack(g, *t))
                tallies = b"".join(parts)
            index = keys.setdefault(f"{prefix}:{{{update.user}}}:last", len(keys) + 1)
            ops += (index, update.role, update.expected, encode_mark(update.new), tallies)
        return list(keys), [ttl, len(numbers), *header, *ops], bases

    def _observe(self, applied: list[UserUpdate]) -> dict[tuple[str, str], Tally]:
        """Prometheus, once per batch per label set; returns the applied tallies by (version, arm)."""
        m = self.metrics
        sums: dict[tuple[str, str], list] = {}
        skips: dict[str, int] = {}
        for update in applied:
            if update.tallies:
                for (kind, version, arm), t in update.tallies.items():
                    if kind != ARM:
                        continue  # pairs are for the rollout controller (Redis), not per-process metrics
                    s = sums.get((version, arm))
                    if s is None:
                        sums[(version, arm)] = list(t)
                    else:
                        for i in range(6):
                            s[i] += t[i]
            if update.skips:
                for reason, count in update.skips.items():
                    skips[reason] = skips.get(reason, 0) + count
        for reason, count in skips.items():
            m.live_skipped.labels(reason).inc(count)
        totals = {}
        for (version, arm), s in sums.items():
            t = totals[(version, arm)] = Tally(*s[:6])
            m.live_scored.labels(version, arm, "items").inc(t.items_scored)
            m.live_scored.labels(version, arm, "forecast").inc(t.forecast_scored)
            m.live_hits.labels(version, arm).inc(t.hits)
            m.live_abs_error.labels(version, arm).inc(t.abs_error)
        return totals

"""Per-user event windows in Redis: one Lua call per batch (per hash slot on Redis Cluster), one round trip.

Layout, for user U (the `{U}` hash tag puts the keys in one Redis Cluster slot):
  {prefix}:{U}:win  ZSET  member = event_id, score = ts    -> order by (ts, event_id)
  {prefix}:{U}:ev   HASH  event_id -> payload (below); field "" -> the user's arrival counter
  {prefix}:{U}:last HASH  live accuracy's marks (streamer/live_accuracy.py); only read here

For each event of the call, in batch order, the script inserts with ZADD NX
(an event_id already present changes nothing: replays are idempotent),
numbers each new event with the user's arrival counter, trims to the `keep`
greatest (ts, event_id) entries, and reads the window AS OF the event: the
`window_len` entries at or before it in (ts, event_id) order *that had
arrived by the time it did* (arrival number <= its own), oldest first. A
newly inserted event has the greatest arrival number of its user, so only a
replayed event needs the arrival test. Without the arrival rule, an event
re-read after a crash would see events that arrived after it but sort before
it (a late event, a timestamp tie) and its second prediction would differ from
its first. The kept set is "the newest `keep` of everything ever inserted",
whatever the arrival order, so replays and crashes converge to the same
state. `keep` = window_len + slack: the slack lets an event re-processed
after a crash see the same window again even though newer events were stored
before the crash. An event older than everything kept (very late) gets a
window of itself alone. The TTL of a user's keys is refreshed once per call
(the call is atomic, so this equals refreshing it after each event).

Atomic per user: a script runs alone, so each user's events of a call are
applied in batch order with nothing in between. One call per batch makes
Redis busy for the whole batch (~tens of ms for 500 events); `max_per_call`
(default 100) bounds that by splitting a batch into several calls, still one
pipeline: other clients wait at most one call, and a call's Lua heap stays small.
On Redis Cluster the events are grouped per hash slot (a script may only
touch one slot), one call per slot, all in one pipeline.

Payloads are binary ("<ts float64><value float64><arrival float64><item
utf-8>", value NaN = none, item empty = none). The reply of a call is
[pairs, items, marks]: pairs = the (ts, value) float64 pairs of every
event's window, back to back, then one uint32 window length per event;
items = every window's items joined by newlines; marks = (user number,
role, stored mark) triples of `:last` when asked for. Python decodes a whole
call with two `np.frombuffer` and one `split` (the client must use
decode_responses=False). Items are stored raw (the vocabulary differs per
model version); a newline or backslash inside an id is escaped. Layout
version 2 (the arrival number) uses new key suffixes (`win`, `ev`; version 1
used `w`, `e`), so an old payload is never misread: windows start empty after
that upgrade and the old keys expire with their TTL. The batch script keeps
layout version 2 unchanged, so members running the per-event script and the
batch script can share a Redis during a rolling upgrade.
"""
from __future__ import annotations

import re
import struct
from collections import defaultdict
from typing import NamedTuple, Sequence

import numpy as np
from redis.exceptions import NoScriptError

from streamer.events import Event
from streamer.slots import SlotTags

# KEYS: per user of the call: window index, payload hash, marks hash. ARGV[1]: "1" = return the marks;
# then per event: event_id, <uint32 user number (1-based)><float64 ts><float64 value><item utf-8>.
# The three limits are baked into the script text (one script per configuration).
SCRIPT = """
local keep, window, ttl = {keep}, {window}, {ttl}
local call, sub, unpack_s, pack_s = redis.call, string.sub, struct.unpack, struct.pack
local pairs_out, items_out, counts = {{}}, {{}}, {{}}
local np, touched = 0, {{}}
local function emit(p)
  np = np + 1
  pairs_out[np] = sub(p, 1, 16)
  items_out[np] = sub(p, 25)
end
for e = 2, #ARGV, 2 do
  local id, arg = ARGV[e], ARGV[e + 1]
  local u, ts = unpack_s('<Id', arg)
  local zkey, hkey = KEYS[3 * u - 2], KEYS[3 * u - 1]
  touched[u] = true
  local payload = sub(arg, 5)
  local stored, arrival, fresh
  if call('ZADD', zkey, 'NX', string.format('%.17g', ts), id) == 1 then
    fresh = true
    arrival = call('HINCRBY', hkey, '', 1)
    stored = sub(payload, 1, 16) .. pack_s('<d', arrival) .. sub(payload, 17)
    call('HSET', hkey, id, stored)
    local excess = call('ZCARD', zkey) - keep
    while excess > 0 do
      local n = math.min(excess, 1000)
      local old = call('ZRANGE', zkey, 0, n - 1)
      call('ZREMRANGEBYRANK', zkey, 0, n - 1)
      call('HDEL', hkey, unpack(old))
      excess = excess - n
    end
  else
    stored = call('HGET', hkey, id)
    if stored then arrival = unpack_s('<d', stored, 17) end
  end
  local rank = arrival and call('ZRANK', zkey, id)
  local before = np
  if rank then
    local hi, chunks, got = rank, {{}}, 0
    while got < window and hi >= 0 do
      local lo = math.max(0, hi - (window - got) + 1)
      local found = call('HMGET', hkey, unpack(call('ZRANGE', zkey, lo, hi)))
      if fresh and got == 0 and #chunks == 0 then
        -- a new event arrived last: every entry before it passes the arrival rule
        local complete = true
        for i = 1, #found do if not found[i] then complete = false break end end
        if complete then
          for i = 1, #found do emit(found[i]) end
          break
        end
      end
      local kept = {{}}
      for i = 1, #found do
        local p = found[i]
        if p and (fresh or unpack_s('<d', p, 17) <= arrival) then kept[#kept + 1] = p end
      end
      got = got + #kept
      chunks[#chunks + 1] = kept
      hi = lo - 1
    end
    for c = #chunks, 1, -1 do
      local kept = chunks[c]
      for i = 1, #kept do emit(kept[i]) end
    end
  else
    emit(stored or (sub(payload, 1, 16) .. pack_s('<d', 0) .. sub(payload, 17)))
  end
  counts[#counts + 1] = pack_s('<I', np - before)
end
local marks = {{}}
for u in pairs(touched) do
  if ttl > 0 then
    call('EXPIRE', KEYS[3 * u - 2], ttl)
    call('EXPIRE', KEYS[3 * u - 1], ttl)
  end
  if ARGV[1] == '1' then
    local found = call('HGETALL', KEYS[3 * u])
    for i = 1, #found, 2 do
      marks[#marks + 1] = u
      marks[#marks + 1] = found[i]
      marks[#marks + 1] = found[i + 1]
    end
  end
end
return {{table.concat(pairs_out) .. table.concat(counts), table.concat(items_out, '\\n'), marks}}
"""

ARRIVAL_END = 24  # payload bytes 16..24 hold the arrival number; the item starts after
_UNESCAPE = re.compile(r"\\(.)", re.S)
_PACK = struct.Struct("<dd").pack
_ARG = struct.Struct("<Idd").pack
_NAN = float("nan")
_ROLES = {b"served": "served", b"shadow": "shadow"}

Marks = dict  # user_id -> {role: stored mark} of live accuracy (`{prefix}:{user}:last`); {} = none stored


class Window(NamedTuple):
    """A user's events as of one event, oldest first; values NaN and items None where absent."""

    ts: np.ndarray  # float64
    items: list[str | None]
    values: np.ndarray  # float64


def _item(event: Event) -> bytes:
    item = event.item_id or ""
    if "\\" in item or "\n" in item:
        item = item.replace("\\", "\\\\").replace("\n", "\\n")
    return item.encode()


def payload(event: Event) -> bytes:
    """The stored form of one event: 8-byte ts, 8-byte value (NaN = none), then the item's UTF-8."""
    return _PACK(event.ts, _NAN if event.value is None else event.value) + _item(event)


def parse_call(reply: list, n_events: int, windows: list, positions: Sequence[int]) -> None:
    """Decode one call's [pairs + counts, items, marks] into `windows` at `positions` (batch order)."""
    blob, items_blob = reply[0], reply[1]
    pair_bytes = len(blob) - 4 * n_events
    counts = np.frombuffer(blob, "<u4", n_events, pair_bytes).tolist()
    table = np.frombuffer(blob, "<f8", pair_bytes // 8).reshape(-1, 2).T.copy()  # rows: ts, values
    ts_all, values_all = table[0], table[1]
    text = items_blob.decode()
    items = text.split("\n")
    if "\\" in text:
        items = [_unescape(i) for i in items]
    if "" in items:
        items = [i or None for i in items]
    start = 0
    for position, n in zip(positions, counts):
        end = start + n
        windows[position] = Window(ts_all[start:end], items[start:end], values_all[start:end])
        start = end


def _unescape(item: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), item)


class WindowStore:
    """`append_and_read(events)`: store each event and return its as-of window, in one round trip;
    `append_and_read_marks(events)` also returns live accuracy's stored marks of the batch's users."""

    def __init__(self, client, prefix: str, window_len: int, ttl_seconds: int, slack: int = 0,
                 max_per_call: int = 100) -> None:
        if window_len <= 0:
            raise ValueError(f"window_len must be positive, got {window_len}")
        self.client = client  # redis.Redis or redis.RedisCluster
        self.prefix = prefix
        self.window_len = window_len
        self.keep = window_len + slack
        self.ttl_seconds = ttl_seconds
        self.slack = slack
        self.max_per_call = max_per_call  # events per script call (0 = a whole batch or slot group)
        if client.get_encoder().decode_responses:
            raise ValueError("the window store needs a Redis client with decode_responses=False (binary replies)")
        self.slots = SlotTags(client)
        self._load_script()

    def _load_script(self) -> None:
        self._script = SCRIPT.format(keep=self.keep, window=self.window_len, ttl=int(self.ttl_seconds))
        sha = self.client.script_load(self._script)
        self._sha = sha.decode() if isinstance(sha, bytes) else sha

    def resize(self, window_len: int) -> None:
        """Serve longer windows from now on (a promoted model with a larger L); between batches only."""
        if window_len != self.window_len:
            self.window_len, self.keep = window_len, window_len + self.slack
            self._load_script()

    def keys(self, user_id: str) -> tuple[str, str]:
        base = f"{self.prefix}:{{{user_id}}}"
        return f"{base}:win", f"{base}:ev"

    def marks_key(self, user_id: str) -> str:
        """Live accuracy's `{prefix}:{user}:last` (LiveScorer.key): same hash tag as the window."""
        return f"{self.prefix}:{{{user_id}}}:last"

    def append_and_read(self, events: Sequence[Event]) -> list[Window]:
        """Each event's as-of window, in batch order (the marks are not read)."""
        return self._append(events, False)[0]

    def append_and_read_marks(self, events: Sequence[Event]) -> tuple[list[Window], Marks]:
        """Each event's as-of window, and {user: {role: stored mark}} of live accuracy for every user of
        the batch ({} = none stored), read by the same atomic call (no separate read round trip)."""
        return self._append(events, True)

    def _append(self, events: Sequence[Event], with_marks: bool) -> tuple[list[Window], Marks]:
        if not events:
            return [], {}
        calls = self._calls(events, with_marks)
        replies = self._run(calls)
        if any(isinstance(r, NoScriptError) for r in replies):  # Redis restarted or failed over
            self.client.script_load(self._script)
            replies = self._run(calls)  # safe: the script is idempotent
        windows: list = [None] * len(events)
        marks: Marks = {}
        for (users, positions, _, _), reply in zip(calls, replies):
            if isinstance(reply, Exception):
                raise reply
            parse_call(reply, len(positions), windows, positions)
            if with_marks:
                for user in users:
                    marks.setdefault(user, {})
                found = reply[2]
                for i in range(0, len(found), 3):
                    role = found[i + 1]
                    marks[users[found[i] - 1]][_ROLES.get(role) or role.decode()] = found[i + 2]
        return windows, marks

    def _calls(self, events: Sequence[Event], with_marks: bool) -> list[tuple[list[str], list[int], list, list]]:
        """(users, event positions, KEYS, ARGV) per script call."""
        if self.slots.cluster:
            by_slot: dict[int, list[int]] = defaultdict(list)
            slot_of = self.slots.slot
            for position, event in enumerate(events):
                by_slot[slot_of(self.keys(event.user_id)[0])].append(position)
            groups = list(by_slot.values())
        else:
            groups = [list(range(len(events)))]
        if self.max_per_call:
            step = self.max_per_call
            groups = [g[i:i + step] for g in groups for i in range(0, len(g), step)]
        prefix, flag = self.prefix, b"1" if with_marks else b"0"
        calls = []
        for positions in groups:
            number: dict[str, int] = {}
            keys: list[str] = []
            argv: list = [flag]
            for position in positions:
                event = events[position]
                user = event.user_id
                u = number.get(user)
                if u is None:
                    u = number[user] = len(number) + 1
                    base = f"{prefix}:{{{user}}}"
                    keys += (f"{base}:win", f"{base}:ev", f"{base}:last")
                value = event.value
                argv += (event.event_id, _ARG(u, event.ts, _NAN if value is None else value) + _item(event))
            calls.append((list(number), positions, keys, argv))
        return calls

    def _run(self, calls: list) -> list:
        pipe = self.client.pipeline(transaction=False)
        command, sha = pipe.execute_command, self._sha
        for _, _, keys, argv in calls:  # not .evalsha(): ClusterPipeline blocks that name
            command("EVALSHA", sha, len(keys), *keys, *argv)
        return pipe.execute(raise_on_error=False)

    def read(self, user_id: str) -> Window:
        """The newest window_len stored events of a user (for tools and tests; not the hot path)."""
        zkey, hkey = self.keys(user_id)
        ids = self.client.zrange(zkey, -self.window_len, -1)
        rows = [p for p in (self.client.hmget(hkey, ids) if ids else []) if p is not None]
        ts, values = (np.array([struct.unpack("<dd", r[:16])[i] for r in rows]) for i in (0, 1))
        return Window(ts, [_unescape(r[ARRIVAL_END:].decode()) or None for r in rows], values)

    def stored(self, user_id: str) -> dict[str, bytes]:
        """event_id -> stored payload, without the arrival counter (consistency checks compare these)."""
        raw = self.client.hgetall(self.keys(user_id)[1])
        return {k.decode(): v for k, v in raw.items() if k != b""}

    def event_ids(self, user_id: str) -> list[str]:
        """Every kept event id of a user, in window order (tests: no event stored twice)."""
        return [i.decode() if isinstance(i, bytes) else i for i in self.client.zrange(self.keys(user_id)[0], 0, -1)]

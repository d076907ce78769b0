"""Per-user event windows in Redis: one Lua call per event, one pipeline (round trip) per batch.

Layout, for user U (the `{U}` hash tag puts both keys in one Redis Cluster slot):
  {prefix}:{U}:win  ZSET  member = event_id, score = ts    -> order by (ts, event_id)
  {prefix}:{U}:ev   HASH  event_id -> payload (below); field "" -> the user's arrival counter

The script inserts with ZADD NX (an event_id already present changes nothing:
replays are idempotent), numbers each new event with the user's arrival
counter, trims to the `keep` greatest (ts, event_id) entries, refreshes the
TTL and returns the window AS OF the event: the `window_len` entries at or
before it in (ts, event_id) order *that had arrived by the time it did*
(arrival number <= its own), oldest first. Without the arrival rule, an event
re-read after a crash would see events that arrived after it but sort before
it (a late event, a timestamp tie) and its second prediction would differ from
its first. The kept set is "the newest `keep` of everything ever inserted",
whatever the arrival order, so replays and crashes converge to the same
state. `keep` = window_len + slack: the slack lets an event re-processed
after a crash see the same window again even though newer events were stored
before the crash. An event older than everything kept (very late) gets a
window of itself alone.

Payloads are binary ("<ts float64><value float64><arrival float64><item
utf-8>", value NaN = none, item empty = none) and the window comes back as ONE
string per event, b"<n>:<n ts><n values><items joined by newlines>", so
Python decodes it with two `np.frombuffer` and one `split` instead of parsing
~L entries (the client must use decode_responses=False). Items are stored raw
(the vocabulary differs per model version); a newline or backslash inside an
id is escaped. Layout version 2 (the arrival number) uses new key suffixes
(`win`, `ev`; version 1 used `w`, `e`), so an old payload is never misread:
windows start empty after the upgrade and the old keys expire with their TTL.
"""
from __future__ import annotations

import re
import struct
from typing import NamedTuple, Sequence

import numpy as np
from redis.exceptions import NoScriptError

from streamer.events import Event

# KEYS: window index, payload hash; ARGV: event_id, payload. The three limits are baked into the
# script text (one script per configuration) so that each call carries as few arguments as possible.
SCRIPT = """
local zkey, hkey, id, payload = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local keep, window, ttl = {keep}, {window}, {ttl}
local ts = string.format('%.17g', struct.unpack('<d', payload))
local stored, arrival
if redis.call('ZADD', zkey, 'NX', ts, id) == 1 then
  arrival = redis.call('HINCRBY', hkey, '', 1)
  stored = string.sub(payload, 1, 16) .. struct.pack('<d', arrival) .. string.sub(payload, 17)
  redis.call('HSET', hkey, id, stored)
  local excess = redis.call('ZCARD', zkey) - keep
  while excess > 0 do
    local n = math.min(excess, 1000)
    local old = redis.call('ZRANGE', zkey, 0, n - 1)
    redis.call('ZREMRANGEBYRANK', zkey, 0, n - 1)
    redis.call('HDEL', hkey, unpack(old))
    excess = excess - n
  end
else
  stored = redis.call('HGET', hkey, id)
  if stored then arrival = struct.unpack('<d', stored, 17) end
end
if ttl > 0 then
  redis.call('EXPIRE', zkey, ttl)
  redis.call('EXPIRE', hkey, ttl)
end
local rank = redis.call('ZRANK', zkey, id)
local newest_first = {{}}
if rank and arrival then
  local hi = rank
  while #newest_first < window and hi >= 0 do
    local lo = math.max(0, hi - (window - #newest_first) + 1)
    local found = redis.call('HMGET', hkey, unpack(redis.call('ZRANGE', zkey, lo, hi)))
    for i = #found, 1, -1 do
      local p = found[i]
      if p and struct.unpack('<d', p, 17) <= arrival then newest_first[#newest_first + 1] = p end
    end
    hi = lo - 1
  end
else
  newest_first[1] = stored or (string.sub(payload, 1, 16) .. struct.pack('<d', 0) .. string.sub(payload, 17))
end
local times, values, items = {{}}, {{}}, {{}}
for i = #newest_first, 1, -1 do
  local p = newest_first[i]
  times[#times + 1] = string.sub(p, 1, 8)
  values[#values + 1] = string.sub(p, 9, 16)
  items[#items + 1] = string.sub(p, 25)
end
return #times .. ':' .. table.concat(times) .. table.concat(values) .. table.concat(items, '\\n')
"""

ARRIVAL_END = 24  # payload bytes 16..24 hold the arrival number; the item starts after
_UNESCAPE = re.compile(r"\\(.)", re.S)
_PACK = struct.Struct("<dd").pack
_NAN = float("nan")


class Window(NamedTuple):
    """A user's events as of one event, oldest first; values NaN and items None where absent."""

    ts: np.ndarray  # float64
    items: list[str | None]
    values: np.ndarray  # float64


def payload(event: Event) -> bytes:
    """The stored form of one event: 8-byte ts, 8-byte value (NaN = none), then the item's UTF-8."""
    value = _NAN if event.value is None else event.value
    item = event.item_id or ""
    if "\\" in item or "\n" in item:
        item = item.replace("\\", "\\\\").replace("\n", "\\n")
    return _PACK(event.ts, value) + item.encode()


def parse_window(blob: bytes) -> Window:
    """Decode the script's reply: b"<n>:" + n float64 ts + n float64 values + items joined by newlines."""
    colon = blob.index(b":")
    n = int(blob[:colon])
    start = colon + 1
    ts = np.frombuffer(blob, "<f8", n, start)
    values = np.frombuffer(blob, "<f8", n, start + 8 * n)
    items_text = blob[start + 16 * n:].decode()
    if n == 0:
        return Window(ts, [], values)
    items = items_text.split("\n")
    if "\\" in items_text:
        items = [_unescape(i) for i in items]
    return Window(ts, [i or None for i in items], values)


def _unescape(item: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), item)


class WindowStore:
    """`append_and_read(events)`: store each event and return its as-of window, in one round trip."""

    def __init__(self, client, prefix: str, window_len: int, ttl_seconds: int, slack: int = 0) -> None:
        if window_len <= 0:
            raise ValueError(f"window_len must be positive, got {window_len}")
        self.client = client  # redis.Redis or redis.RedisCluster
        self.prefix = prefix
        self.window_len = window_len
        self.keep = window_len + slack
        self.ttl_seconds = ttl_seconds
        self.slack = slack
        if client.get_encoder().decode_responses:
            raise ValueError("the window store needs a Redis client with decode_responses=False (binary replies)")
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

    def append_and_read(self, events: Sequence[Event]) -> list[Window]:
        if not events:
            return []
        results = self._run(events)
        if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted or failed over
            self.client.script_load(self._script)
            results = self._run(events)  # safe: the script is idempotent
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [parse_window(r) for r in results]

    def _run(self, events: Sequence[Event]) -> list:
        pipe = self.client.pipeline(transaction=False)
        command, sha, keys = pipe.execute_command, self._sha, self.keys
        for event in events:  # not .evalsha(): ClusterPipeline blocks that name
            command("EVALSHA", sha, 2, *keys(event.user_id), event.event_id, payload(event))
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

"""Per-user event windows in Redis: one Lua call per event, one pipeline (round trip) per batch.

Layout, for user U (the `{U}` hash tag puts both keys in one Redis Cluster slot):
  {prefix}:{U}:w  ZSET  member = event_id, score = ts    -> order by (ts, event_id)
  {prefix}:{U}:e  HASH  event_id -> payload (below)

The script inserts with ZADD NX (an event_id already present changes nothing:
replays are idempotent), trims to the `keep` greatest (ts, event_id) entries,
refreshes the TTL and returns the window AS OF the event: the `window_len`
entries at or before it in (ts, event_id) order, oldest first. The kept set is
"the newest `keep` of everything ever inserted", whatever the arrival order,
so replays and crashes converge to the same state. `keep` = window_len +
slack: the slack lets an event re-processed after a crash see the same
window again even though newer events were stored before the crash. An event
older than everything kept (very late) gets a window of itself alone.

Payloads are binary ("<ts float64><value float64><item utf-8>", value NaN =
none, item empty = none) and the window comes back as ONE string per event,
b"<n>:<n ts><n values><items joined by newlines>", so Python decodes it with
two `np.frombuffer` and one `split` instead of parsing ~L entries (the client
must use decode_responses=False). Items are stored raw (the vocabulary
differs per model version); a newline or backslash inside an id is escaped.
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
if redis.call('ZADD', zkey, 'NX', ts, id) == 1 then
  redis.call('HSET', hkey, id, payload)
  local excess = redis.call('ZCARD', zkey) - keep
  while excess > 0 do
    local n = math.min(excess, 1000)
    local old = redis.call('ZRANGE', zkey, 0, n - 1)
    redis.call('ZREMRANGEBYRANK', zkey, 0, n - 1)
    redis.call('HDEL', hkey, unpack(old))
    excess = excess - n
  end
end
if ttl > 0 then
  redis.call('EXPIRE', zkey, ttl)
  redis.call('EXPIRE', hkey, ttl)
end
local rank = redis.call('ZRANK', zkey, id)
local payloads = {{payload}}
if rank then
  local ids = redis.call('ZRANGE', zkey, math.max(0, rank - window + 1), rank)
  payloads = redis.call('HMGET', hkey, unpack(ids))
end
local times, values, items = {{}}, {{}}, {{}}
for _, p in ipairs(payloads) do
  if p then
    times[#times + 1] = string.sub(p, 1, 8)
    values[#values + 1] = string.sub(p, 9, 16)
    items[#items + 1] = string.sub(p, 17)
  end
end
return #times .. ':' .. table.concat(times) .. table.concat(values) .. table.concat(items, '\\n')
"""

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
        return f"{base}:w", f"{base}:e"

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
        return Window(ts, [_unescape(r[16:].decode()) or None for r in rows], values)

    def event_ids(self, user_id: str) -> list[str]:
        """Every kept event id of a user, in window order (tests: no event stored twice)."""
        return [i.decode() if isinstance(i, bytes) else i for i in self.client.zrange(self.keys(user_id)[0], 0, -1)]

"""What each running service actually serves, as a heartbeat in Redis.

The registry says what *should* serve; a service that refuses a bad bundle
keeps serving the old one, so the registry alone can claim a version is
active that no process runs. Each service's `ModelManager` therefore writes
what it serves into one hash, `<prefix>:model:served` (one key for every
instance, so it lives on one slot and works unchanged on Redis Cluster):

- field: the instance id, `<hostname>-<pid>-<4 hex>`, made once per process
- value: JSON `{instance, host, pid, updated_at, interval_s, epoch, arms:
  {primary|canary|shadow: {ref, version}}, canary_percent, refused}` where
  `refused` is null or `{epoch, ref, error}`: the registry change this
  instance refused and still does not serve.

Hash fields cannot expire on Redis 7.0, so staleness is the reader's job: an
entry older than `stale_after_s` (3 x its own heartbeat interval, at least
15 s) is not live and is ignored; one older than `PRUNE_AFTER_S` is deleted.
A cleanly stopped service deletes its own field. `updated_at` is the
writer's wall clock, compared with the reader's: clocks must agree to well
under 15 s (NTP does).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field

from redis.exceptions import RedisError

from streamer.logs import log_event

log = logging.getLogger("streamer.served")

MIN_STALE_S = 15.0  # a live instance has written within this (or 3 x its interval, if longer)
PRUNE_AFTER_S = 600.0  # readers delete entries this old: a crashed or killed instance
ERROR_CHARS = 200  # refusal messages name files and checksums; keep them one readable line


def served_key(prefix: str) -> str:
    return f"{prefix}:model:served"


@functools.cache
def _instance_id(pid: int) -> str:
    return f"{socket.gethostname()}-{pid}-{secrets.token_hex(2)}"


def instance_id() -> str:
    """This process's id; keyed by pid so a forked child gets its own."""
    return _instance_id(os.getpid())


def short_error(text: str) -> str:
    """The first line of an error message, cut to ERROR_CHARS."""
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= ERROR_CHARS else line[:ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class Served:
    """One instance's report: what it serves, and what registry change it refused (if any)."""

    instance: str
    host: str
    pid: int
    updated_at: float
    interval_s: float
    epoch: int
    arms: dict[str, dict] = field(default_factory=dict)  # arm -> {"ref": ..., "version": ...}
    canary_percent: float = 0.0
    refused: dict | None = None  # {"epoch": ..., "ref": ..., "error": ...}

    @property
    def stale_after_s(self) -> float:
        return max(MIN_STALE_S, 3 * self.interval_s)

    def age(self, now: float) -> float:
        return max(0.0, now - self.updated_at)

    def serves(self, ref: str, arm: str) -> bool:
        return self.arms.get(arm, {}).get("ref") == ref

    @classmethod
    def parse(cls, raw: bytes | str) -> "Served":
        body = json.loads(raw)
        return cls(**{k: body[k] for k in cls.__dataclass_fields__ if k in body})


class Heartbeat:
    """Writes this process's entry; never raises, warns once per Redis outage."""

    def __init__(self, client, prefix: str, interval_s: float, instance: str | None = None) -> None:
        self.client = client
        self.key = served_key(prefix)
        self.interval_s = interval_s
        self.instance = instance or instance_id()
        self.last_beat = float("-inf")  # monotonic time of the last successful write
        self._failing = False

    def due(self) -> bool:
        return time.monotonic() - self.last_beat >= self.interval_s

    def beat(self, epoch: int, arms: dict[str, dict], canary_percent: float, refused: dict | None) -> bool:
        """Write the entry now; False (after one warning per outage) when Redis is unreachable."""
        entry = Served(self.instance, socket.gethostname(), os.getpid(), time.time(), self.interval_s, epoch,
                       arms, canary_percent, refused)
        return self._try(lambda: self.client.hset(self.key, self.instance, json.dumps(asdict(entry))))

    def clear(self) -> bool:
        """Remove the entry: a cleanly stopped instance serves nothing."""
        return self._try(lambda: self.client.hdel(self.key, self.instance))

    def _try(self, command) -> bool:
        try:
            command()
        except (RedisError, OSError) as err:
            if not self._failing:
                log_event(log, "served heartbeat failed; retrying quietly", logging.WARNING, error=repr(err))
            self._failing = True
            return False
        if self._failing:
            log_event(log, "served heartbeat restored")
        self._failing = False
        self.last_beat = time.monotonic()
        return True


def read_served(client, prefix: str, now: float | None = None) -> tuple[list[Served], list[Served]]:
    """(live, stale) reports, sorted by host and pid; deletes entries older than PRUNE_AFTER_S.

    An entry that does not parse is treated as ancient and pruned: it cannot say what serves.
    """
    now = time.time() if now is None else now
    live, stale, prune = [], [], []
    for instance, raw in client.hgetall(served_key(prefix)).items():
        try:
            entry = Served.parse(raw)
        except (ValueError, TypeError):
            prune.append(instance)
            continue
        age = entry.age(now)
        if age > max(PRUNE_AFTER_S, entry.stale_after_s):
            prune.append(instance)
        elif age > entry.stale_after_s:
            stale.append(entry)
        else:
            live.append(entry)
    if prune:
        client.hdel(served_key(prefix), *prune)
    order = lambda e: (e.host, e.pid, e.instance)  # noqa: E731
    return sorted(live, key=order), sorted(stale, key=order)

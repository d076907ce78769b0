"""The model registry in Redis: which bundle version serves which traffic.

Keys (DESIGN.md names, values are bundle references `<name>/<version>`,
relative to the models directory):

- `sc:model:active`  the primary version, serves every user not on the canary
- `sc:model:canary`  JSON `{"ref": "<name>/<version>", "percent": P}`, optional
- `sc:model:shadow`  a version scored on live traffic whose predictions are not emitted, optional
- `sc:model:history` list of previously active refs, newest first (for rollback)
- `sc:model:epoch`   incremented on every change; services poll this one key
- `sc:model:served`  hash written by the services, not the CLI: what each instance
                     actually serves (a refused bundle is named above but served by
                     nobody); see `streamer.served`

The CLI writes, the services read: a service polls `epoch` every second or
so and re-reads the three role keys only when it moved. Each key is read
with its own command (no MGET), so this works unchanged on Redis Cluster.

A ref names a bundle inside the models directory and nothing else: whoever can
write these keys must not be able to make a service load an arbitrary
directory of its host. `ref_problem` is the syntactic half of that rule (no
`..`, no NUL or backslash); `streamer.rollout.resolve` adds the filesystem half:
the ref, symlinks followed, must lie under the models directory (an absolute
path is accepted only when it does). Both the CLI and the services apply it;
the one exception is a service's own `--bundle`, which it seeds into an empty
registry and may serve by that ref even from outside.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

ROLES = ("active", "canary", "shadow")
HISTORY_LIMIT = 20


@dataclass(frozen=True)
class Assignment:
    """Which refs serve which traffic right now; `canary_percent` in [0, 100]."""

    active: str | None = None
    canary: str | None = None
    canary_percent: float = 0.0
    shadow: str | None = None

    def refs(self) -> set[str]:
        return {r for r in (self.active, self.canary, self.shadow) if r}


def ref_problem(ref: str | None) -> str | None:
    """Why `ref` cannot be a registry ref, whatever the models directory (see `streamer.rollout.resolve`), or None."""
    if not ref or not ref.strip():
        return "empty"
    if "\x00" in ref or "\\" in ref:
        return "contains a NUL or a backslash"
    if ".." in PurePosixPath(ref).parts:
        return "contains '..' (refs must stay inside the models directory)"
    return None


def on_canary(user_id: str, percent: float) -> bool:
    """Stable routing: the same user always lands in the same arm (crc32, not Python's salted hash)."""
    if percent <= 0:
        return False
    return zlib.crc32(user_id.encode("utf-8")) % 10_000 < percent * 100


class Registry:
    """Read and change the registry; every change bumps the epoch."""

    def __init__(self, redis_client, prefix: str = "sc") -> None:
        self.redis = redis_client
        self.prefix = prefix

    def key(self, role: str) -> str:
        return f"{self.prefix}:model:{role}"

    def epoch(self) -> int:
        return int(self.redis.get(self.key("epoch")) or 0)

    def read(self) -> Assignment:
        pipe = self.redis.pipeline(transaction=False)
        for role in ROLES:
            pipe.get(self.key(role))
        active, canary, shadow = (v.decode() if isinstance(v, bytes) else v for v in pipe.execute())
        canary_ref, percent = None, 0.0
        if canary:
            spec = json.loads(canary)
            canary_ref, percent = spec["ref"], float(spec["percent"])
        return Assignment(active, canary_ref, percent, shadow)

    def _commit(self, pipe) -> None:
        pipe.incr(self.key("epoch"))
        pipe.execute()

    def promote(self, ref: str) -> None:
        """Make `ref` the active version; the old active goes on the history; a canary of `ref` ends."""
        current = self.read()
        pipe = self.redis.pipeline(transaction=False)
        if current.active and current.active != ref:
            pipe.lpush(self.key("history"), current.active)
            pipe.ltrim(self.key("history"), 0, HISTORY_LIMIT - 1)
        pipe.set(self.key("active"), ref)
        if current.canary == ref:
            pipe.delete(self.key("canary"))
        self._commit(pipe)

    def set_canary(self, ref: str | None, percent: float = 0.0) -> None:
        if ref is not None and not 0 < percent <= 100:
            raise ValueError(f"canary percent must be in (0, 100], got {percent}")
        pipe = self.redis.pipeline(transaction=False)
        if ref is None:
            pipe.delete(self.key("canary"))
        else:
            pipe.set(self.key("canary"), json.dumps({"ref": ref, "percent": percent}))
        self._commit(pipe)

    def set_shadow(self, ref: str | None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.key("shadow")) if ref is None else pipe.set(self.key("shadow"), ref)
        self._commit(pipe)

    def set_roles(self, canary: tuple[str, float] | None, shadow: str | None) -> None:
        """Canary (ref, percent) and shadow in one change (one epoch): a rollout moving from shadow to
        canary never shows the services a moment with neither."""
        if canary is not None and not 0 < canary[1] <= 100:
            raise ValueError(f"canary percent must be in (0, 100], got {canary[1]}")
        pipe = self.redis.pipeline(transaction=False)
        if canary is None:
            pipe.delete(self.key("canary"))
        else:
            pipe.set(self.key("canary"), json.dumps({"ref": canary[0], "percent": canary[1]}))
        pipe.delete(self.key("shadow")) if shadow is None else pipe.set(self.key("shadow"), shadow)
        self._commit(pipe)

    def rollback(self) -> str:
        """Re-activate the previous version and drop any canary; returns the ref now active."""
        previous = self.redis.lpop(self.key("history"))
        if previous is None:
            raise LookupError("no previous version to roll back to")
        previous = previous.decode() if isinstance(previous, bytes) else previous
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.key("active"), previous)
        pipe.delete(self.key("canary"))
        self._commit(pipe)
        return previous

    def history(self) -> list[str]:
        return [h.decode() if isinstance(h, bytes) else h for h in self.redis.lrange(self.key("history"), 0, -1)]

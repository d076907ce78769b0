"""Telling an outage from a bad message, and waiting one out without busy-looping.

The loop must treat the two very differently. A dependency that is down
(Redis refusing connections, a cluster without a majority, a broker that does
not acknowledge) says nothing about the message being handled: the batch is
held and retried until the dependency is back, and nothing is sent to the
dead-letter topic. Anything else that goes wrong while handling a message is
about that message, and must not stop the partition: it goes to the DLQ.
`redis_unavailable` is the dividing line for Redis errors.
"""
from __future__ import annotations

import time
from typing import Callable

import redis.exceptions as rex

# Errors that mean "Redis cannot serve us right now", whatever the command was.
_UNAVAILABLE = (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, rex.ClusterDownError,
                rex.TryAgainError, rex.MasterDownError, rex.ReadOnlyError, rex.SlotNotCoveredError,
                rex.OutOfMemoryError, rex.MaxConnectionsError)
# The same, when redis-py reports them as a plain ResponseError (they arrive as the reply's first word).
_UNAVAILABLE_REPLIES = ("OOM", "LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS",
                        "MISCONF", "BUSY")


def redis_unavailable(err: BaseException) -> bool:
    """True when `err` says Redis is (temporarily) not serving, as opposed to a problem with the data.

    A permission the ACL user lacks counts as "not serving": it says nothing about the message, so
    dead-lettering would lose every event until the ACL is fixed; holding the batch loses none."""
    if isinstance(err, rex.ClusterError) and "slot" in str(err).lower():
        return True  # e.g. "all slots are not covered", a cluster mid-failover
    if isinstance(err, rex.NoPermissionError) or "user executing the script can't run" in str(err):
        return True  # NOPERM, at top level or inside a script (see streamer.security.describe_redis_failure)
    if isinstance(err, _UNAVAILABLE):
        return True
    return isinstance(err, rex.ResponseError) and str(err).split(" ", 1)[0] in _UNAVAILABLE_REPLIES


class Backoff:
    """Exponential delays between retries: first `first_s`, doubling up to `max_s`; `reset()` on success."""

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.delay_s = first_s
        self.failures = 0

    def next(self) -> float:
        """The delay to wait now (and count one more failure)."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.max_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.delay_s = self.first_s
        self.failures = 0


def sleep_unless(stop: Callable[[], bool], seconds: float, step_s: float = 0.1) -> None:
    """Sleep up to `seconds`, waking every `step_s` to see whether the process should stop."""
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(step_s, left))

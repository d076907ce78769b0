"""Replay events onto a topic, in the order given, at a steady rate: the load generator and demo feed.

Takes `Event`s (not files) so the streamer never depends on the trainer's
loaders; `seqcast replay` reads the file and passes `EventLog.events()`,
which yields them in event-time order, as live traffic would arrive.
"""
from __future__ import annotations

import itertools
import time
from typing import Iterable

from streamer.events import Event
from streamer.transport import Producer

CHUNK = 100  # rate control and progress updates happen per chunk, not per event


def replay(events: Iterable[Event], producer: Producer, topic: str, rate: float = 0.0,
           limit: int | None = None, progress=None) -> int:
    """Send each event as JSON (key = user id); `rate` events/s (0 = as fast as possible).

    `progress` is an optional tqdm-like object (`update(n)`). Returns the number sent,
    after a flush that raises if any was not acknowledged.
    """
    started = time.monotonic()
    sent = 0
    stream = iter(events if limit is None else itertools.islice(events, limit))
    while chunk := list(itertools.islice(stream, CHUNK)):
        for event in chunk:
            producer.send(topic, event.to_json_bytes(), event.user_id.encode())
        sent += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    return sent

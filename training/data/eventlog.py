"""EventLog: an event file held as columns, the trainer's one in-memory format.

Every loader returns an EventLog; splits, training windows, evaluation and
`seqcast replay` all read it. Columns rather than a list of `Event` objects
because the datasets reach a million rows and numpy keeps that in tens of MB.
Rows are kept sorted by (user, ts, original row order): each user's events are
one contiguous, time-ordered run, which is what windows and leave-last-out need.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from streamer.events import Event


class DataError(ValueError):
    """A bad input file. The message names the file and, where known, the line and column."""

    def __init__(self, path: object, problem: str, line: int | None = None, column: str | None = None) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")


@dataclass
class EventLog:
    """Columns of equal length; `items` is None or an object array (None = no item);
    `values` is None or float64 (NaN = no value)."""

    users: np.ndarray  # object (str)
    ts: np.ndarray  # float64 epoch seconds
    items: np.ndarray | None
    values: np.ndarray | None
    source: str  # short dataset name, used in event ids and the manifest

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("ts", "items", "values"):
            col = getattr(self, name)
            if col is not None and len(col) != n:
                raise ValueError(f"column {name} has {len(col)} rows, users has {n}")
        if self.items is None and self.values is None:
            raise ValueError("an event log needs items or values")

    def __len__(self) -> int:
        return len(self.users)

    def sorted(self) -> "EventLog":
        """Rows ordered by (user, ts), ties kept in file order (stable)."""
        order = np.lexsort((np.arange(len(self)), self.ts, self.users.astype(str)))
        return self.take(order)

    def take(self, rows: np.ndarray) -> "EventLog":
        pick = lambda col: None if col is None else col[rows]
        return EventLog(self.users[rows], self.ts[rows], pick(self.items), pick(self.values), self.source)

    def user_runs(self) -> list[tuple[str, int, int]]:
        """(user, start, stop) of each user's contiguous run; requires a sorted log."""
        if len(self) == 0:
            return []
        users = self.users
        change = np.nonzero(users[1:] != users[:-1])[0] + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [len(self)]])
        return [(str(users[a]), int(a), int(b)) for a, b in zip(starts, stops)]

    def event_id(self, row: int) -> str:
        return f"{self.source}-{row}"

    def events(self, order: np.ndarray | None = None) -> Iterator[Event]:
        """Events in `order` (default: event time across all users, as a live stream would see them)."""
        if order is None:
            order = np.argsort(self.ts, kind="stable")
        for row in order:
            item = None if self.items is None else self.items[row]
            value = None if self.values is None or np.isnan(self.values[row]) else float(self.values[row])
            yield Event(self.event_id(int(row)), str(self.users[row]), float(self.ts[row]), item, value)

    def fingerprint(self) -> str:
        """sha256 over the content, so a manifest names exactly the data it was trained on."""
        digest = hashlib.sha256()
        digest.update("\x1f".join(map(str, self.users)).encode())
        digest.update(np.ascontiguousarray(self.ts, dtype=np.float64).tobytes())
        if self.items is not None:
            digest.update("\x1f".join("" if i is None else str(i) for i in self.items).encode())
        if self.values is not None:
            digest.update(np.ascontiguousarray(self.values, dtype=np.float64).tobytes())
        return digest.hexdigest()

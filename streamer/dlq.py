"""The dead-letter path: split a batch into valid events and rejected records (errors as data).

A rejected record goes to the DLQ topic byte-for-byte unchanged (same key,
same value, its own headers kept), with these headers added so that an
operator can find, understand and replay it:

  reason            one of streamer.events.REASONS (bounded: also the metric label)
  detail            a human-readable explanation (at most 200 characters)
  source_topic      where it was read
  source_partition  decimal
  source_offset     decimal
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from streamer.events import Event, InvalidEvent, parse_event
from streamer.transport import Record

DLQ_HEADERS = ("reason", "detail", "source_topic", "source_partition", "source_offset")


@dataclass(frozen=True, slots=True)
class Rejected:
    record: Record
    reason: str
    detail: str

    def headers(self) -> list[tuple[str, bytes]]:
        r = self.record
        added = [("reason", self.reason.encode()), ("detail", self.detail[:200].encode()),
                 ("source_topic", r.topic.encode()), ("source_partition", str(r.partition).encode()),
                 ("source_offset", str(r.offset).encode())]
        return [*(h for h in r.headers if h[0] not in DLQ_HEADERS), *added]


def split(records: Sequence[Record]) -> tuple[list[Event], list[Record], list[Rejected]]:
    """(valid events, their records, rejected records), each in input order."""
    events: list[Event] = []
    sources: list[Record] = []
    rejected: list[Rejected] = []
    for record in records:
        try:
            events.append(parse_event(record.value))
            sources.append(record)
        except InvalidEvent as err:
            rejected.append(Rejected(record, err.reason, err.detail))
    return events, sources, rejected

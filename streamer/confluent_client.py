"""The confluent-kafka (librdkafka) backend of `streamer.transport`: the default client.

librdkafka does the fetching, batching, compression-free framing and CRCs in C threads, so
Python pays only for the calls it makes (bench/kafka_clients.py measures both backends).

How our contract maps onto librdkafka, measured against Tansu with confluent-kafka 2.16.1:
- Commits: enable.auto.commit=false AND enable.auto.offset.store=false; `commit()` sends the
  explicit offsets synchronously. ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID /
  REBALANCE_IN_PROGRESS / _ASSIGNMENT_LOST are "rebalanced", anything else (timeouts,
  coordinator gone, connection errors) "unavailable". librdkafka's synchronous commit has no
  timeout of its own, and against a hung broker (SIGSTOP: connections open, nothing answers)
  it did not return for minutes; so it runs on a daemon thread (a stuck one must not hold up
  the process's exit) that the caller waits COMMIT_TIMEOUT_MS for (5 s, as with
  kafka-python): "unavailable" after that, and no further commit is sent while that one is
  unanswered (a late answer cannot then overwrite newer offsets). `close()` waits for such a
  commit (it hung too), so it is waited for CLOSE_TIMEOUT_S the same way. Inside on_revoke the
  commit runs on the polling thread itself: from another thread it waited for the callback
  to return (a 5 s "unavailable" for every revoke); a rebalance means the broker is answering.
  Inside on_lost (session expired) a commit is "rebalanced" at once: the generation is gone.
- Polling: librdkafka's consume(n, timeout) waits until it has n messages or the timeout is
  up; kafka-python's poll returns as soon as anything is there. `poll()` keeps the latter
  (a quiet stream is not held up for a full timeout): take what is queued, else wait for one
  message, then take what arrived with it. fetch.wait.max.ms=100 as before.
- Rebalances (classic, eager protocol; Tansu does not answer KIP-848's group.protocol=consumer):
  on_revoke relays `revoked()` to the owner before the partitions go (it may still commit
  them: the generation is still valid), on_assign assigns first, then relays `assigned()`
  (so the owner can pause the new partitions). `close()` detaches the owner first: leaving
  the group revokes everything, and close never commits.
- A classic join on Tansu takes about session_timeout/2, as with kafka-python (2.1 s at
  3 s, 5.1 s at 10 s, measured for both clients); heartbeat = session_timeout/3 as before.
- `broker_reachable()` and `lag()` read state librdkafka already has, never a round trip:
  reachability from the statistics callback (every STATS_INTERVAL_MS: some broker's
  connection is UP, and none has had a request waiting with nothing received for
  BROKER_STALE_S); lag from the fetch-cached high watermark minus the position.
- Producer: acks=all, enable.idempotence=true (works on Tansu: InitProducerId for a
  non-transactional producer is answered; transactions are not used; the first flush of a
  new producer takes ~0.5 s, librdkafka's timer for asking the id), linger from settings,
  message.max.bytes = max_request_bytes. Delivery reports are requested for failures only
  (delivery.report.only.error), so a million acknowledged messages cost no Python callbacks;
  the callback passed with each send belongs to the current epoch. A full local queue makes
  send() wait up to max_block_ms (as kafka-python blocks), then raise DeliveryError. A fatal
  producer error (idempotence state lost) fails the flush and the next send starts a new
  librdkafka producer.
- Logs: librdkafka's log lines go to the "kafka.librdkafka" logger (rate-limited like
  kafka-python's by streamer.logs), connection-close chatter off.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future, TimeoutError as WaitTimeout
from typing import Any, Iterable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer as RdConsumer, KafkaError, KafkaException
from confluent_kafka import Producer as RdProducer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamer import transport
from streamer.confluent_refusals import Refusals
from streamer.security import PLAINTEXT, KafkaSecurity, SecurityError
from streamer.transport import (BROKER_STALE_S, COMMIT_TIMEOUT_MS, MAX_FRAME_BYTES, RECONNECT_BACKOFF_MAX_MS,
                                BrokerUnavailable, CommitOutcome, DeliveryError, Headers, Partition,
                                RebalanceListener, Record, TransportError)

log = logging.getLogger("streamer.transport")
client_log = logging.getLogger("kafka.librdkafka")
SOCKET_TIMEOUT_MS = 10_000  # any request (a commit too) unanswered this long fails; librdkafka's default is 60 s
STATS_INTERVAL_MS = 1000
ADMIN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
_MEMBERSHIP = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
               KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID}
_SIZE_REFUSALS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
_UNAVAILABLE = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
                KafkaError._RESOLVE, KafkaError._WAIT_COORD, KafkaError.REQUEST_TIMED_OUT,
                KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
                KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NETWORK_EXCEPTION}


def unavailable(err: BaseException) -> bool:
    """True for librdkafka errors that waiting can fix (no broker, timeouts, coordinator moving)."""
    if not isinstance(err, KafkaException) or not err.args or not isinstance(err.args[0], KafkaError):
        return False
    error: KafkaError = err.args[0]
    return error.code() in _UNAVAILABLE or (error.retriable() and not error.fatal())


def _common(bootstrap_servers: str, security: KafkaSecurity | None) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers, "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            "socket.timeout.ms": SOCKET_TIMEOUT_MS, "logger": client_log, "log.connection.close": False,
            **(security or PLAINTEXT).confluent_options()}


def _in_background(name: str, call, **kwargs) -> Future:
    """`call(**kwargs)` on a daemon thread: for librdkafka calls that take no timeout of their own."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(call(**kwargs))
        except BaseException as err:  # handed to whoever waits on the future
            future.set_exception(err)
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _code(err: KafkaException) -> int:
    return err.args[0].code() if err.args and isinstance(err.args[0], KafkaError) else KafkaError.UNKNOWN


class Consumer(transport.Consumer):
    """Reads `topic` as a group member, or (assign_all=True) all its partitions directly."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str | None, *, assign_all: bool = False,
                 max_poll_records: int = 500, session_timeout_ms: int = 10000, start: str = "earliest",
                 client: str | None = None, security: KafkaSecurity | None = None) -> None:
        """`start` applies where the group has no committed offset ("earliest" or "latest");
        group_id=None (with assign_all) reads without committing anything (tail, tools)."""
        self.topic = topic
        self.refusals = Refusals(security, bootstrap_servers, "consumer")
        self.listener: RebalanceListener | None = None
        self.max_poll_records = max_poll_records
        self._brokers_ok = False
        self._commit: Future | None = None  # the last commit sent, possibly still unanswered
        self._in_revoke = False  # inside on_revoke: commit on this thread (see commit)
        self._lost = False  # inside on_lost: the generation is gone, a commit cannot succeed
        self._consumer = RdConsumer({
            **_common(bootstrap_servers, security), "error_cb": self.refusals,
            # librdkafka needs a group.id even to assign partitions; a reader's is never used to commit
            "group.id": group_id or f"seqcast-reader-{uuid.uuid4().hex[:12]}",
            "client.id": f"seqcast-{group_id or 'reader'}",
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": start,
            "session.timeout.ms": session_timeout_ms, "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
            "fetch.wait.max.ms": 100, "receive.message.max.bytes": MAX_FRAME_BYTES,
            "enable.partition.eof": False, "allow.auto.create.topics": False,
            "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self._on_stats,
        })
        if assign_all:
            partitions = self._partitions(topic)
            offset = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}[start] if group_id is None else None
            self._consumer.assign([TopicPartition(topic, p) if offset is None else TopicPartition(topic, p, offset)
                                   for p in partitions])
        else:
            self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)

    def _partitions(self, topic: str) -> list[int]:
        try:
            found = self._consumer.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
        except KafkaException as err:
            self._consumer.close()
            raise BrokerUnavailable(f"no metadata for {topic!r}: {err}") from err
        if found is None or found.error is not None or not found.partitions:
            self._consumer.close()
            raise TransportError(f"topic {topic!r} does not exist or has no partitions")
        return sorted(found.partitions)

    # -- rebalance relay (librdkafka calls these inside consume) ------------------------------------

    def _on_revoke(self, consumer: RdConsumer, partitions: list[TopicPartition]) -> None:
        self._in_revoke = True
        try:
            if self.listener is not None and partitions:
                self.listener.revoked({(tp.topic, tp.partition) for tp in partitions})
        finally:
            self._in_revoke = False
            consumer.unassign()

    def _on_lost(self, consumer: RdConsumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (the session expired): the owner is told as for a
        revoke, and its commit is answered "rebalanced" without asking the broker."""
        self._lost = True
        try:
            self._on_revoke(consumer, partitions)
        finally:
            self._lost = False

    def _on_assign(self, consumer: RdConsumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)  # first: the owner may pause them
        if self.listener is not None:
            self.listener.assigned({(tp.topic, tp.partition) for tp in partitions})

    def _on_stats(self, stats_json: str) -> None:
        """Reachability from librdkafka's own view of its broker connections (no round trip)."""
        brokers = [b for b in json.loads(stats_json).get("brokers", {}).values() if b.get("nodeid", -1) >= 0]
        up = [b for b in brokers if b.get("state") == "UP"]
        stale = [b for b in up if b.get("waitresp_cnt", 0) > 0 and b.get("rxidle", -1) > BROKER_STALE_S * 1e6]
        self._brokers_ok = bool(up) and not stale

    # -- the contract -----------------------------------------------------------------------------

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        """Up to max_records records: what is queued now, else the first to arrive within timeout_ms
        together with whatever came with it."""
        wanted = max_records or self.max_poll_records
        try:
            messages = self._consumer.consume(wanted, 0)
            if not messages and timeout_ms > 0:
                first = self._consumer.poll(timeout_ms / 1000)
                if first is not None:
                    messages = [first, *self._consumer.consume(wanted - 1, 0)] if wanted > 1 else [first]
        except KafkaException as err:
            log.warning("poll failed; retrying on the next poll: %r", err)
            time.sleep(min(timeout_ms, 1000) / 1000)
            return []
        records: list[Record] = []
        append = records.append
        for m in messages:
            error = m.error()
            if error is not None:  # per-partition fetch errors; librdkafka retries them itself
                if error.code() != KafkaError._PARTITION_EOF:
                    client_log.warning("consume error on %s [%s]: %s", m.topic(), m.partition(), error)
                continue
            headers = m.headers()
            append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1],
                          tuple(headers) if headers else ()))
        return records

    def commit(self, offsets: dict[Partition, int]) -> CommitOutcome:
        """Commit next-offsets {(topic, partition): offset of the next record to read} (see transport)."""
        if not offsets:
            return "committed"
        if self._lost:
            return "rebalanced"
        if self._commit is not None and not self._commit.done():
            log.warning("an earlier offset commit is still unanswered; keeping the offsets for the next checkpoint")
            return "unavailable"
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if self._in_revoke:  # from another thread this commit waited for the callback to end: 5 s lost
                result = self._consumer.commit(offsets=tps, asynchronous=False)
            else:
                self._commit = _in_background("seqcast-commit", self._consumer.commit, offsets=tps,
                                              asynchronous=False)
                result = self._commit.result(timeout=COMMIT_TIMEOUT_MS / 1000)
        except WaitTimeout:
            log.warning("offset commit unanswered after %d ms; keeping the offsets for the next checkpoint",
                        COMMIT_TIMEOUT_MS)
            return "unavailable"
        except KafkaException as err:
            return self._outcome(_code(err), err)
        for tp in result or ():
            if tp.error is not None:
                return self._outcome(tp.error.code(), tp.error)
        return "committed"

    @staticmethod
    def _outcome(code: int, err: object) -> CommitOutcome:
        if code in _MEMBERSHIP:
            return "rebalanced"
        log.warning("offset commit failed; keeping the offsets for the next checkpoint: %s", err)
        return "unavailable"

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def assigned(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause_all(self) -> None:
        """Stop fetching (membership and heartbeats go on in librdkafka's threads)."""
        owned = self._consumer.assignment()
        if owned:
            self._consumer.pause(owned)

    def resume_all(self) -> None:
        owned = self._consumer.assignment()
        if owned:
            self._consumer.resume(owned)

    def seek(self, positions: dict[Partition, int]) -> None:
        """Read again from these offsets (partitions no longer assigned are skipped)."""
        owned = self.assigned()
        for (topic, partition), offset in positions.items():
            if (topic, partition) in owned:
                try:
                    self._consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as err:  # e.g. the partition is being (un)assigned right now
                    log.warning("seek %s[%s] to %s failed: %r", topic, partition, offset, err)

    def broker_reachable(self) -> bool:
        """True when librdkafka's last statistics (at most STATS_INTERVAL_MS old) show a broker
        connection UP, with no request waiting BROKER_STALE_S without anything received."""
        return self._brokers_ok

    def lag(self) -> dict[int, int]:
        """Records behind the high watermark, per assigned partition (cached from the last fetch)."""
        owned = self._consumer.assignment()
        out = {}
        for tp in self._consumer.position(owned) if owned else ():
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:  # a fetch has answered and a record was consumed
                out[tp.partition] = max(0, high - tp.offset)
        return out

    def close(self) -> None:
        """Leave the group; the owner is not told (leaving revokes everything), nothing is committed."""
        self.listener = None
        try:
            _in_background("seqcast-close", self._consumer.close).result(timeout=CLOSE_TIMEOUT_S)
        except WaitTimeout:
            log.warning("consumer close unanswered after %ss; the group drops this member at its session timeout",
                        CLOSE_TIMEOUT_S)
        except (KafkaException, RuntimeError) as err:  # a broker that is gone must not turn a clean stop into a crash
            log.warning("consumer close: %r", err)


class Producer(transport.Producer):
    """Asynchronous sends; `flush()` raises if any send since the last flush failed (see transport)."""

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 5, max_block_ms: int = 10000,
                 max_request_bytes: int = 2 * 1024 * 1024, client: str | None = None,
                 security: KafkaSecurity | None = None) -> None:
        self.refusals = Refusals(security, bootstrap_servers, "producer")
        # murmur2_random: the Java client's (and kafka-python's, kafkajs's) key hash, so one user's events and
        # predictions land on the same partition whichever client wrote them; librdkafka's default differs
        self._config = {**_common(bootstrap_servers, security), "acks": "all", "enable.idempotence": True,
                        "partitioner": "murmur2_random", "linger.ms": linger_ms, "batch.size": 256 * 1024,
                        "message.max.bytes": max_request_bytes, "delivery.report.only.error": True,
                        "error_cb": self._on_error}
        self._producer = RdProducer(self._config)
        self._max_block_s = max_block_ms / 1000
        self._sent = 0
        self._epoch = 0
        self._failed: list[tuple[int, BaseException]] = []  # (epoch, error), from delivery callbacks
        self._delivered = functools.partial(self._on_delivery, 0)
        self._fatal: KafkaError | None = None

    def _on_delivery(self, epoch: int, err: KafkaError | None, _msg) -> None:
        if err is not None:
            self._failed.append((epoch, KafkaException(err)))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():  # e.g. idempotence state lost: this librdkafka producer can deliver nothing more
            self._fatal = err
        self.refusals(err)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        if self._fatal is not None and self._sent == 0:  # the failing epoch was reported: start afresh
            self._restart()
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=list(headers) if headers else None,
                                       on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: wait for deliveries, as kafka-python blocks
                now = time.monotonic()
                deadline = deadline or now + self._max_block_s
                if now >= deadline:
                    raise DeliveryError(f"send to {topic} refused: local queue full for {self._max_block_s}s") from None
                self._producer.poll(0.05)
            except KafkaException as err:
                if _code(err) in _SIZE_REFUSALS:  # like kafka-python: this message fails, reported by flush
                    self._failed.append((self._epoch, err))
                    break
                raise DeliveryError(f"send to {topic} refused: {err!r}") from err
        self._sent += 1

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every pending send; return how many there were, or raise DeliveryError."""
        epoch, self._epoch = self._epoch, self._epoch + 1
        sent, self._sent = self._sent, 0
        self._delivered = functools.partial(self._on_delivery, self._epoch)
        remaining = self._producer.flush(timeout_s)
        failed = [exc for e, exc in self._failed if e == epoch]
        self._failed = [(e, exc) for e, exc in self._failed if e > epoch]
        if self._fatal is not None:
            raise DeliveryError(f"the producer failed fatally ({self._fatal}); {sent} messages not acknowledged")
        if remaining:
            raise DeliveryError(f"flush did not complete in {timeout_s}s: {remaining} messages unacknowledged")
        if failed:
            raise DeliveryError(f"{len(failed)} of {sent} messages were not acknowledged: {failed[0]!r}")
        return sent

    def _restart(self) -> None:
        log.warning("replacing the producer after a fatal error: %s", self._fatal)
        self._discard(0.0)
        self._producer = RdProducer(self._config)
        self._fatal = None

    def _discard(self, timeout_s: float) -> None:
        left = self._producer.flush(timeout_s)
        if left:  # undeliverable within the deadline: drop them (their epoch already failed or will)
            self._producer.purge()
            self._producer.flush(0)
            log.warning("producer closed with %d messages unacknowledged", left)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._discard(timeout_s)
        except (KafkaException, RuntimeError) as err:
            log.warning("producer close: %r", err)


def _admin(bootstrap_servers: str, security: KafkaSecurity | None) -> tuple[AdminClient, Refusals]:
    refusals = Refusals(security, bootstrap_servers, "admin")
    # Tansu creates a topic that Metadata merely asks about unless the request says not to
    return AdminClient({**_common(bootstrap_servers, security), "allow.auto.create.topics": False,
                        "client.id": "seqcast-admin", "error_cb": refusals}), refusals


def _failed(err: KafkaException, refusals: Refusals, what: str, admin: AdminClient) -> Exception:
    """SecurityError when the broker refused us (waiting will not help), else BrokerUnavailable
    or TransportError as the error says."""
    admin.poll(0.1)  # error_cb runs from poll: collect what the failed request saw
    if refusals.last:
        return SecurityError(refusals.last)
    if unavailable(err):
        return BrokerUnavailable(f"{what}: {err}")
    return TransportError(f"{what}: {err}")


def create_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 1, *,
                  security: KafkaSecurity | None = None) -> None:
    """Create topics that do not exist yet (existing ones are left as they are). Only missing ones
    are asked for: a broker checks the Create ACL before it looks whether the topic exists, and a
    least-privilege account (Confluent Cloud, MSK) usually has none for topics made in advance."""
    admin, refusals = _admin(bootstrap_servers, security)  # kept until the results are in: destroying it fails them
    try:
        existing = set(admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    except KafkaException as err:
        raise _failed(err, refusals, "listing topics", admin) from err
    new = [NewTopic(name, partitions, 1) for name in dict.fromkeys(names) if name not in existing]
    if not new:
        return
    futures = admin.create_topics(new, request_timeout=ADMIN_TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as err:
            if _code(err) == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise _failed(err, refusals, f"creating {name}", admin) from err


def partition_count(bootstrap_servers: str, topic: str, *, security: KafkaSecurity | None = None) -> int:
    """Partitions of `topic` (0 if it does not exist)."""
    admin, refusals = _admin(bootstrap_servers, security)
    try:
        found = admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
    except KafkaException as err:
        failure = _failed(err, refusals, f"no metadata for {topic!r}", admin)
        raise (failure if isinstance(failure, SecurityError) else BrokerUnavailable(str(failure))) from err
    return 0 if found is None or found.error is not None else len(found.partitions)


def check_connection(bootstrap_servers: str, security: KafkaSecurity | None = None, timeout_s: float = 5.0) -> None:
    """One metadata request as the clients would make it: SecurityError when the broker refuses
    the credentials or the certificates (librdkafka reports those only to error_cb, and the
    request itself fails as a bare transport error). Unreachable brokers are not an error here."""
    admin, refusals = _admin(bootstrap_servers, security)
    future = _in_background("seqcast-check", admin.list_topics, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s + 1
    while not future.done() and refusals.last is None and time.monotonic() < deadline:
        admin.poll(0.1)  # error_cb runs from poll: a refusal shows within milliseconds, an answer ends the wait
    admin.poll(0)
    if refusals.last:
        raise SecurityError(refusals.last)

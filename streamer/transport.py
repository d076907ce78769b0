"""Kafka, behind the smallest surface the streamer needs, with two interchangeable clients.

`Consumer(...)` and `Producer(...)` build the backend named by `client` ("confluent":
confluent-kafka / librdkafka, streamer/confluent_client.py; "kafka-python": pure Python,
streamer/kafka_python_client.py); None means DEFAULT_CLIENT. Only those two modules import
a Kafka client, and each is imported when first used. Both keep the same contract:

Consumer: `poll()` returns a flat list of `Record`s (up to max_poll_records, as soon as any
are there); nothing is committed until `commit(offsets)` is called with explicit next-offsets
(auto-commit is off), and `close()` never commits, so an unprocessed record is never marked
done. Membership changes are ordinary events, not errors: the rebalance listener tells the
owner (`RebalanceListener`) before partitions are revoked (inside poll), so it can flush and
commit what it processed, and `commit()` reports a commit refused by a rebalance or an
unreachable broker as an outcome ("rebalanced", "unavailable"), never an exception.
`lag()` comes from the high watermark that fetch responses carry (no extra round trip):
ListOffsets(latest) on Tansu returns the last *batch*'s base offset + 1, not the high
watermark. `broker_reachable()` says whether a broker connection is up and answering.
Security: both backends take a `KafkaSecurity` (SASL/TLS); a refusal (bad credentials, an
untrusted certificate) raises streamer.security.SecurityError with an operator's sentence,
which is not "unavailable": waiting will not fix it.
Producer: `send()` is asynchronous; `flush()` waits for every send since the previous flush
and raises `DeliveryError` if any failed, so "flushed" means "acknowledged by the broker"
(acks=all). Each flush opens a new epoch: a send of an earlier epoch that fails after its
flush already raised (and the caller rewound) does not fail the next flush.

Which client: confluent-kafka costs a fraction of kafka-python's CPU per message (figures in
bench/kafka_clients.py's docstring and the README), so it is the default; kafka-python stays
supported (no native code, and the client these tests were first written against).
Tansu quirks both backends live with: a classic group join takes about session_timeout/2
and a restart after SIGKILL also waits for the dead member's session to expire; the next-gen
consumer group protocol (KIP-848, group.protocol=consumer) is not answered; Metadata for a
missing topic may create it unless auto-creation is off in the request.
"""
from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import Iterable, Literal, NamedTuple, Protocol, Sequence

from streamer.security import KafkaSecurity

Headers = Sequence[tuple[str, bytes]]
Partition = tuple[str, int]  # (topic, partition)
CommitOutcome = Literal["committed", "rebalanced", "unavailable"]
CLIENTS = ("confluent", "kafka-python")
DEFAULT_CLIENT = "confluent"
_MODULES = {"confluent": "streamer.confluent_client", "kafka-python": "streamer.kafka_python_client"}
MAX_FRAME_BYTES = 100_000_000  # the largest fetch response (hence message) the consumer accepts
COMMIT_TIMEOUT_MS = 5000
# kafka-python backs reconnects off up to 30 s (Java: 1 s, librdkafka: 10 s): after an outage that long,
# recovery waited up to 30 s more. 2 s caps the wait and costs one connect attempt per 2 s while it is down.
RECONNECT_BACKOFF_MAX_MS = 2000
BROKER_STALE_S = 10.0  # a request unanswered for this long means the broker is not serving us


class TransportError(RuntimeError):
    """The broker cannot be used as configured (e.g. a topic to read does not exist)."""


class BrokerUnavailable(RuntimeError):
    """The broker did not answer in time or cannot be reached: worth waiting for (see broker_unavailable)."""


class DeliveryError(RuntimeError):
    """At least one produced message was not acknowledged; nothing may be committed."""


def backend(client: str | None = None) -> ModuleType:
    """The module implementing `client` (None: DEFAULT_CLIENT), imported on first use."""
    name = client or DEFAULT_CLIENT
    if name not in _MODULES:
        raise TransportError(f"unknown Kafka client {name!r} (known: {', '.join(CLIENTS)})")
    return import_module(_MODULES[name])


def broker_unavailable(err: BaseException) -> bool:
    """True when `err` says the broker cannot be reached or answered too late (worth waiting for),
    as opposed to a refusal that waiting will not fix (authorisation, a bad configuration)."""
    if isinstance(err, (DeliveryError, BrokerUnavailable)):
        return True
    loaded = (sys.modules.get(name) for name in _MODULES.values())  # a backend never used raised nothing
    return any(module.unavailable(err) for module in loaded if module is not None)


class Record(NamedTuple):
    """One consumed message. A NamedTuple (immutable, compared by value) rather than a frozen
    dataclass: building one costs 0.6 µs instead of 2.0, and a poll builds one per record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


class RebalanceListener(Protocol):
    """What the consumer's owner does when group membership moves partitions (called inside poll)."""

    def revoked(self, partitions: set[Partition]) -> None: ...

    def assigned(self, partitions: set[Partition]) -> None: ...


class Consumer:
    """Reads `topic` as a group member, or (assign_all=True) all its partitions directly.

    `Consumer(bootstrap, topic, group_id, ..., client=None, security=None)` returns the chosen
    backend's subclass (`security`: a streamer.security.KafkaSecurity, None = plaintext); the
    methods below are the contract every backend keeps.
    """

    listener: RebalanceListener | None = None
    topic: str

    def __new__(cls, *args, client: str | None = None, **kwargs) -> "Consumer":
        if cls is Consumer:
            cls = backend(client).Consumer
        return super().__new__(cls)

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        """Records fetched since the last poll; [] (logged) when the client reports an error."""
        raise NotImplementedError

    def commit(self, offsets: dict[Partition, int]) -> CommitOutcome:
        """Commit next-offsets {(topic, partition): offset of the next record to read}.

        "rebalanced": the group moved on since those records were polled; their new owner reads
        them again (at-least-once), so the caller forgets these offsets. "unavailable": the broker
        did not answer in time; the caller keeps the offsets and commits them later.
        """
        raise NotImplementedError

    def assignment(self) -> list[int]:
        raise NotImplementedError

    def assigned(self) -> set[Partition]:
        raise NotImplementedError

    def pause_all(self) -> None:
        """Stop fetching (membership and heartbeats go on: poll() keeps the consumer in its group)."""
        raise NotImplementedError

    def resume_all(self) -> None:
        raise NotImplementedError

    def seek(self, positions: dict[Partition, int]) -> None:
        """Read again from these offsets (partitions no longer assigned are skipped)."""
        raise NotImplementedError

    def broker_reachable(self) -> bool:
        """True when a connection to a broker is up and no request on it waits too long."""
        raise NotImplementedError

    def lag(self) -> dict[int, int]:
        """Records behind the high watermark, per assigned partition (from the last fetch)."""
        raise NotImplementedError

    def close(self) -> None:
        """Leave the group without committing anything."""
        raise NotImplementedError


class Producer:
    """Asynchronous sends; `flush()` raises if any send since the last flush failed.

    `Producer(bootstrap, linger_ms=..., max_block_ms=..., max_request_bytes=..., client=None,
    security=None)` returns the chosen backend's subclass.
    """

    def __new__(cls, *args, client: str | None = None, **kwargs) -> "Producer":
        if cls is Producer:
            cls = backend(client).Producer
        return super().__new__(cls)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        """Queue one message; DeliveryError when the client refuses it outright (no buffer space)."""
        raise NotImplementedError

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every pending send; return how many there were, or raise DeliveryError."""
        raise NotImplementedError

    def close(self, timeout_s: float = 5.0) -> None:
        raise NotImplementedError


def create_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 1, *,
                  client: str | None = None, security: KafkaSecurity | None = None) -> None:
    """Create topics that do not exist yet (existing ones are left as they are)."""
    backend(client).create_topics(bootstrap_servers, names, partitions, security=security)


def partition_count(bootstrap_servers: str, topic: str, *, client: str | None = None,
                    security: KafkaSecurity | None = None) -> int:
    """Partitions of `topic` (0 if it does not exist)."""
    return backend(client).partition_count(bootstrap_servers, topic, security=security)


def check_connection(bootstrap_servers: str, *, client: str | None = None,
                     security: KafkaSecurity | None = None, timeout_s: float = 5.0) -> None:
    """SecurityError (streamer.security) when the brokers refuse these credentials or this TLS
    setup; nothing when they accept, or cannot be reached at all (the clients wait for those)."""
    backend(client).check_connection(bootstrap_servers, security, timeout_s)


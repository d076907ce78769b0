"""What the demo puts on the events topic, and what it reads back from the dead-letter topic.

`Feed` is a thread that replays the events (`streamer.replay.replay`, so the
same code path as `seqcast replay`) in segments, with one malformed message
between segments, so the DLQ path is exercised spread across the run; it
stops at the next event once `stop` is set, and then skips the flushes (after
a stop nobody reads the events topic any more; a flush waits up to 30 s when
the broker is slow) and closes its producer, which waits at most 5 s. The
thread is a daemon, so one stuck in a flush that began before the stop cannot
hold the demo's exit. `replay_events` builds the
replay: a fresh synthetic log (training seed + 1, same users and catalogue),
in stream order, so the model is scored on data it never saw.

Both Kafka clients here take the demo's `Settings`: its broker, Kafka client and security
(the user's SASL/TLS settings for a --bootstrap cluster, plaintext for the embedded Tansu).
"""
from __future__ import annotations

import argparse
import math
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the demo's --help must not load Kafka
    from streamer.settings import Settings
    from streamer.transport import Producer

MALFORMED = (  # one per DLQ reason the demo shows; --bad-events N cycles through them
    b'{"event_id": "bad-1", "user_id": "u1", "ts": ',
    b'["not", "an", "object"]',
    b'{"event_id": "bad-3", "ts": 1704067200, "item_id": "i1"}',
    b'{"event_id": "bad-4", "user_id": "u1", "ts": 1704067200, "value": "high"}',
    b"\xff\xfe not utf-8",
)


class Feed(threading.Thread):
    """Replays the events with `bad` malformed messages spread evenly among them; stops when `stop` is set."""

    def __init__(self, settings: Settings, topic: str, events: list, bad: int, rate: float) -> None:
        super().__init__(name="demo-feed", daemon=True)
        self.settings, self.topic, self.events, self.bad, self.rate = settings, topic, events, bad, rate
        self.stop = threading.Event()
        self.started_at = math.nan
        self.valid_sent = self.malformed_sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from streamer.replay import replay
        from streamer.transport import Producer

        settings, producer = self.settings, None
        try:  # every failure from here on, a refused connection included, is reported by the main thread
            producer = Producer(settings.bootstrap_servers, client=settings.kafka_client,
                                security=settings.kafka_security())
            sink = UntilStopped(producer, self.stop)
            self.started_at = time.monotonic()
            cuts = [len(self.events) * (k + 1) // (self.bad + 1) for k in range(self.bad)] + [len(self.events)]
            start = 0
            for k, cut in enumerate(cuts):
                segment = self._until_stopped(self.events[start:cut])
                self.valid_sent += replay(segment, sink, self.topic, self.rate)
                start = cut
                if k < self.bad and not self.stop.is_set():
                    sink.send(self.topic, MALFORMED[k % len(MALFORMED)], b"malformed")
                    self.malformed_sent += 1
            sink.flush()
        except BaseException as err:  # reported by the main thread
            self.error = err
        finally:
            if producer is not None:
                _close_quietly(producer)

    def _until_stopped(self, events):
        for event in events:
            if self.stop.is_set():
                return
            yield event


class UntilStopped:
    """The feed's producer as `replay` sees it: flushes are skipped once `stop` is set, so a Ctrl-C
    does not wait for acknowledgements of events that no one will read."""

    def __init__(self, producer: Producer, stop: threading.Event) -> None:
        self.producer, self.stop = producer, stop

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        self.producer.send(topic, value, key)

    def flush(self) -> int:
        return 0 if self.stop.is_set() else self.producer.flush()


def _close_quietly(producer: Producer) -> None:
    """Close the producer, which waits at most 5 s for what is still in flight. A failure here is not
    worth a word: either the feed was stopped (nobody reads the rest) or `Feed.error` already says it."""
    try:
        producer.close()
    except Exception:  # kafka-python raises KafkaTimeoutError when the broker did not answer in time
        pass


def replay_events(args: argparse.Namespace) -> list:
    """--events events of a fresh synthetic log (seed + 1, same users and catalogue), in stream order."""
    from training.data.synthetic import synthetic_log

    per_user = math.ceil(args.events / args.users)
    log = synthetic_log(args.users, args.items, per_user, args.seed + 1)
    log.source = "demo"  # event ids demo-<row>
    return list(log.events())[: args.events]


def read_dlq(settings: Settings, topic: str, expected: int, timeout_s: float = 10.0) -> Counter:
    """Reasons of the messages on the dead-letter topic (waits up to timeout_s for `expected` of them)."""
    from streamer.transport import Consumer

    consumer = Consumer(settings.bootstrap_servers, topic, None, assign_all=True, start="earliest",
                        client=settings.kafka_client, security=settings.kafka_security())
    reasons: Counter = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and sum(reasons.values()) < expected:
            for record in consumer.poll(200):
                reasons[dict(record.headers).get("reason", b"?").decode()] += 1
        for record in consumer.poll(300):  # anything beyond `expected` shows up too
            reasons[dict(record.headers).get("reason", b"?").decode()] += 1
    finally:
        consumer.close()
    return reasons

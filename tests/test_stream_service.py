"""End-to-end: the service in a subprocess, a real Tansu broker, the real Redis, a trained bundle.

These runs read all partitions without a consumer group (assign_all_partitions),
so no test here pays for a group join; test_stream_delivery.py covers groups.
"""
from __future__ import annotations

import json
import random
import time

import pytest

from stream_helpers import assert_matches, covers, metric_value, offline_predictions, predictions_by_id, read_until
from streamer.events import Event, parse_event
from streamer.replay import replay
from streamer.window_store import WindowStore

pytestmark = pytest.mark.slow


@pytest.fixture
def topics(topic_factory):
    return {"input_topic": topic_factory(2, "events"), "output_topic": topic_factory(2, "predictions"),
            "dlq_topic": topic_factory(1, "dlq")}


def skew_events() -> list[Event]:
    from training.data.synthetic import synthetic_log

    events = list(synthetic_log(users=40, items=50, events_per_user=25, seed=7).events())
    extra = [Event("x-oov", "u01", events[-1].ts + 10, "never-seen-item", 50.0),
             Event("x-value-only", "u02", events[-1].ts + 11, None, 42.0),
             Event("x-item-only", "u03", events[-1].ts + 12, "i3", None),
             Event("x-new-user", "brand-new", events[-1].ts + 13, "i7", 12.5)]
    return events + extra


def test_streamed_predictions_equal_offline_batch_predictions(broker, topics, producer, consumer_factory,
                                                               service_factory, bundle):
    events = skew_events()
    replay(events, producer, topics["input_topic"])
    output = consumer_factory(topics["output_topic"])
    service = service_factory(assign_all_partitions=True, **topics)
    records = read_until(output, covers({e.event_id for e in events}))
    by_id = predictions_by_id(records)
    assert len(records) == len(events) and len(by_id) == len(events)  # exactly one each
    expected = offline_predictions(bundle, events, bundle.manifest.top_k)
    for event in events:
        (prediction,) = by_id[event.event_id]
        assert prediction["user_id"] == event.user_id and prediction["ts"] == event.ts
        assert prediction["model"] == {"name": "tiny", "version": bundle.manifest.version, "arch": "lstm",
                                       "arm": "primary"}
        assert prediction["latency_ms"] >= 0
        assert_matches(prediction, expected[event.event_id])
    assert {r.key.decode() for r in records} == {e.user_id for e in events}
    service.wait_ready()


BAD_MESSAGES = [  # (value, reason)
    (b"x" * (64 * 1024 + 1), "too_large"),
    (b'{"event_id": "\xff\xfe"}', "not_utf8"),
    (b"{not json", "not_json"),
    (None, "not_json"),  # tombstone
    (b"[1, 2, 3]", "not_object"),
    (b'{"user_id": "u1", "ts": 1, "item_id": "a"}', "missing_field"),
    (b'{"event_id": "b1", "user_id": "u1", "ts": 1}', "no_payload"),
    (b'{"event_id": 5, "user_id": "u1", "ts": 1, "item_id": "a"}', "wrong_type"),
    (b'{"event_id": "b2", "user_id": "u1", "ts": 1, "value": "high"}', "wrong_type"),
    (b'{"event_id": "", "user_id": "u1", "ts": 1, "item_id": "a"}', "bad_id"),
    (b'{"event_id": "b3", "user_id": "u1", "ts": 1, "value": NaN}', "not_finite"),
    (b'{"event_id": "b4", "user_id": "u1", "ts": "yesterday", "item_id": "a"}', "bad_ts"),
    (b'{"event_id": "b5", "user_id": "' + b"u" * 129 + b'", "ts": 1, "item_id": "a"}', "bad_id"),
]


def mixed_stream(seed: int = 0) -> tuple[list[tuple[bytes | None, str | None]], list[Event]]:
    """Bad messages shuffled among valid ones: [(value, reason or None)], valid events."""
    valid = [Event(f"ok-{i}", f"user-{i % 7}", 1_700_000_000.0 + i, f"i{i % 13}", float(i % 5)) for i in range(60)]
    stream = [(e.to_json_bytes(), None) for e in valid] + list(BAD_MESSAGES)
    random.Random(seed).shuffle(stream)
    return stream, valid


def test_bad_messages_go_to_the_dlq_unchanged_and_the_service_stays_up(topics, producer, consumer_factory,
                                                                        service_factory):
    stream, valid = mixed_stream()
    for value, _ in stream:
        producer.send(topics["input_topic"], value, b"k", [("trace", b"t-1")])
    producer.flush()
    dlq, output = consumer_factory(topics["dlq_topic"]), consumer_factory(topics["output_topic"])
    service = service_factory(assign_all_partitions=True, **topics)
    dead = read_until(dlq, lambda rs: len(rs) >= len(BAD_MESSAGES))
    read_until(output, covers({e.event_id for e in valid}))
    got = sorted((r.value or b"", dict(r.headers)["reason"].decode()) for r in dead)
    assert got == sorted((v or b"", reason) for v, reason in BAD_MESSAGES)
    for record in dead:
        headers = dict(record.headers)
        assert headers["trace"] == b"t-1" and record.key == b"k" and headers["detail"]
        assert headers["source_topic"].decode() == topics["input_topic"]
        assert int(headers["source_partition"]) in (0, 1) and int(headers["source_offset"]) >= 0
    service.wait_ready()  # still up and ready after all of that
    assert service.proc.poll() is None


def test_metrics_count_events_predictions_and_dlq(topics, producer, consumer_factory, service_factory, bundle):
    stream, valid = mixed_stream(seed=1)
    for value, _ in stream:
        producer.send(topics["input_topic"], value)
    producer.flush()
    output = consumer_factory(topics["output_topic"])
    service = service_factory(assign_all_partitions=True, **topics)
    read_until(output, covers({e.event_id for e in valid}))
    service.wait_ready()
    # predictions can arrive before their batch's bookkeeping ends; batch_size is recorded last
    deadline = time.monotonic() + 30
    while metric_value(service.get("/metrics")[1], "seqcast_batch_size_sum") < len(valid):
        assert time.monotonic() < deadline, "metrics did not catch up"
        time.sleep(0.1)
    text = service.get("/metrics")[1]
    version = bundle.manifest.version
    assert metric_value(text, "seqcast_events_consumed_total") == len(stream)
    assert metric_value(text, "seqcast_predictions_emitted_total", model_version=version, arm="primary") == len(valid)
    for reason in {r for _, r in BAD_MESSAGES}:
        want = sum(1 for _, r in BAD_MESSAGES if r == reason)
        assert metric_value(text, "seqcast_events_invalid_total", reason=reason) == want, reason
    assert metric_value(text, "seqcast_event_latency_seconds_count") == len(valid)
    assert metric_value(text, "seqcast_batch_size_sum") == len(valid)
    assert metric_value(text, "seqcast_model_info", name="tiny", version=version, arch="lstm", arm="primary") == 1
    assert metric_value(text, "seqcast_consumer_lag", partition="0") == 0
    assert metric_value(text, "seqcast_inference_seconds_count", arm="primary") >= 1
    assert metric_value(text, "seqcast_redis_seconds_count") >= 1
    health = json.loads(service.get("/healthz")[1])
    assert health == {"ready": True, "model": True, "redis": True, "broker": True}


def test_out_of_order_events_end_up_in_event_time_order(topics, producer, consumer_factory, service_factory,
                                                       redis_client, key_prefix):
    events = [Event(f"e{i:03d}", f"u{i % 3}", 1_000.0 + i, f"i{i}", float(i)) for i in range(45)]
    arrival = random.Random(3).sample(events, len(events))
    for event in arrival:
        producer.send(topics["input_topic"], event.to_json_bytes(), event.user_id.encode())
    producer.flush()
    output = consumer_factory(topics["output_topic"])
    service_factory(assign_all_partitions=True, window_len=30, **topics)
    by_id = predictions_by_id(read_until(output, covers({e.event_id for e in events})))
    store = WindowStore(redis_client, key_prefix, window_len=30, ttl_seconds=60)
    for user in ("u0", "u1", "u2"):
        mine = [e for e in events if e.user_id == user]
        window = store.read(user)
        assert window.ts.tolist() == sorted(e.ts for e in mine)
        assert window.items == [e.item_id for e in sorted(mine, key=lambda e: e.ts)]
        seen: list[Event] = []
        for event in (e for e in arrival if e.user_id == user):  # as-of: only earlier, already-arrived events
            seen.append(event)
            assert by_id[event.event_id][0]["window"] == sum(1 for s in seen if s.ts <= event.ts)


def test_replayed_file_round_trips_through_parse_event():
    for event in skew_events()[:50]:
        assert parse_event(event.to_json_bytes()) == event


class FaultyStore(WindowStore):
    """Fault injection: the real window store, except that it raises for one user (a stand-in for any bug
    that a particular message triggers; no real message does since issue 10's fixes)."""

    def append_and_read(self, events):
        if any(e.user_id == "boom" for e in events):
            raise RuntimeError("injected fault for user boom")
        return super().append_and_read(events)

    def append_and_read_marks(self, events):  # the service's call when live accuracy is on
        if any(e.user_id == "boom" for e in events):
            raise RuntimeError("injected fault for user boom")
        return super().append_and_read_marks(events)


def test_a_message_whose_handling_raises_goes_to_the_dlq_and_the_rest_are_predicted(
        broker, topics, producer, consumer_factory, redis_client, key_prefix, bundle, kafka_client):
    """Issue 10 #2: any exception while handling one message sends that message to the DLQ as internal_error."""
    import threading

    from prometheus_client import CollectorRegistry

    from streamer.http import Health
    from streamer.live_accuracy import LiveScorer
    from streamer.metrics import Metrics
    from streamer.predict import Models
    from streamer.service import Service
    from streamer.settings import Settings
    from streamer.transport import Consumer, Producer

    events = [Event(f"f{i}", "boom" if i in (3, 11) else f"user-{i % 4}", 1000.0 + i, f"i{i % 9}", float(i))
              for i in range(16)]
    replay(events, producer, topics["input_topic"])
    settings = Settings(bootstrap_servers=broker, key_prefix=key_prefix, **topics)
    metrics = Metrics.create(CollectorRegistry())
    store = FaultyStore(redis_client, key_prefix, 20, 600, 32)
    consumer = Consumer(broker, topics["input_topic"], "isolation", assign_all=True, client=kafka_client)
    service_producer = Producer(broker, client=kafka_client)
    service = Service(settings, consumer, service_producer, store, Models.single(bundle), metrics, Health(),
                      live=LiveScorer(redis_client, key_prefix, 600, metrics))
    done = threading.Event()
    runner = threading.Thread(target=service.run, args=(done.is_set,), daemon=True)
    runner.start()
    try:
        good = {e.event_id for e in events if e.user_id != "boom"}
        predicted = read_until(consumer_factory(topics["output_topic"]), covers(good))
        dead = read_until(consumer_factory(topics["dlq_topic"]), lambda rs: len(rs) >= 2)
    finally:
        done.set()
        runner.join(timeout=30)
        consumer.close()
        service_producer.close()
    assert {json.loads(r.value)["event_id"] for r in predicted} == good
    assert sorted(json.loads(r.value)["event_id"] for r in dead) == ["f11", "f3"]  # the messages, unchanged
    for record in dead:
        headers = dict(record.headers)
        assert headers["reason"] == b"internal_error" and b"injected fault for user boom" in headers["detail"]
    assert metrics.events_invalid.labels("internal_error")._value.get() == 2
    assert not runner.is_alive()

"""Delivery under failure, on a real consumer group: SIGKILL loses nothing, SIGTERM commits and exits 0.

Events are replayed at a steady rate in the background while the service is
killed and restarted, so every kill lands mid-stream with records processed
but not yet committed.
"""
from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from stream_helpers import assert_matches, covers, offline_predictions, predictions_by_id, read_until, replay_in_background
from streamer.events import Event
from streamer.replay import replay
from streamer.window_store import WindowStore

pytestmark = pytest.mark.slow


def stream_events(users: int, seed: int):
    from training.data.synthetic import synthetic_log

    return list(synthetic_log(users=users, items=50, events_per_user=30, seed=seed).events())


@pytest.fixture
def topics(topic_factory):
    return {"input_topic": topic_factory(2, "events"), "output_topic": topic_factory(2, "predictions"),
            "dlq_topic": topic_factory(1, "dlq")}


def drain(consumer, seen: set[str], records: list) -> None:
    """Read what the output topic has now: poll until a poll comes back empty (at most ~1 s)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        batch = consumer.poll(200, 10000)
        records.extend(batch)
        seen.update(json.loads(record.value)["event_id"] for record in batch)
        if not batch and seen:
            return


def test_sigkill_mid_stream_loses_nothing_and_changes_no_window_twice(
        broker, topics, consumer_factory, service_factory, bundle, redis_client, key_prefix):
    events = stream_events(users=80, seed=3)  # 2400 events over ~30 s; each restart takes ~4 s (more on a busy CI)
    all_ids = {e.event_id for e in events}
    output = consumer_factory(topics["output_topic"])
    feeder = replay_in_background(broker, topics["input_topic"], events, rate=80)
    records: list = []
    seen: set[str] = set()
    kills = 0
    for _ in range(3):
        service = service_factory(max_poll_records=50, **topics)
        service.wait_ready()
        time.sleep(1.0)
        drain(output, seen, records)
        if len(seen) == len(all_ids):  # a slow restart let the stream finish: a later kill would prove nothing
            service.signal(signal.SIGTERM)
            service.wait()
            break
        service.signal(signal.SIGKILL)
        assert service.wait() == -signal.SIGKILL
        kills += 1
    assert kills >= 2, f"only {kills} kill(s) landed mid-stream"
    assert seen, "the killed services had produced predictions"
    service_factory(max_poll_records=50, **topics)
    feeder.join(timeout=60)
    records += read_until(output, covers(all_ids - seen), timeout_s=90)
    by_id = predictions_by_id(records)
    assert set(by_id) == all_ids  # every event predicted at least once
    expected = offline_predictions(bundle, events, bundle.manifest.top_k)
    for event_id, predictions in by_id.items():  # re-processed events saw their original window
        for prediction in predictions:
            assert_matches(prediction, expected[event_id])
    duplicates = sum(len(p) - 1 for p in by_id.values())
    print(f"\n{len(records)} predictions for {len(all_ids)} events ({duplicates} re-sent after kills)")

    reference = WindowStore(redis_client, key_prefix + "-ref", window_len=20, ttl_seconds=600, slack=32)
    for start in range(0, len(events), 97):  # an uninterrupted run of the same events
        reference.append_and_read(events[start:start + 97])
    served = WindowStore(redis_client, key_prefix, window_len=20, ttl_seconds=600, slack=32)
    for user in {e.user_id for e in events}:
        ids = served.event_ids(user)
        assert len(ids) == len(set(ids)) == len(served.stored(user))
        assert ids == reference.event_ids(user)
        assert served.stored(user) == reference.stored(user)  # payloads and arrival numbers too
        got, want = served.read(user), reference.read(user)
        assert got.items == want.items and got.ts.tolist() == want.ts.tolist()
    for key in redis_client.scan_iter(match=f"{key_prefix}-ref:*"):
        redis_client.delete(key)


def test_sigterm_mid_stream_commits_exits_zero_and_restart_resumes_without_gap(
        broker, topics, consumer_factory, service_factory):
    events = stream_events(users=60, seed=4)  # 1800 events over ~12 s
    all_ids = {e.event_id for e in events}
    output = consumer_factory(topics["output_topic"])
    feeder = replay_in_background(broker, topics["input_topic"], events, rate=150)
    first = service_factory(**topics)
    first.wait_ready()
    time.sleep(1.5)
    first.signal(signal.SIGTERM)
    assert first.wait(timeout_s=20) == 0
    assert any(line["msg"] == "stopped cleanly" for line in first.logs())
    records = read_until(output, lambda rs: len(rs) > 0, timeout_s=10)
    assert feeder.is_alive(), "SIGTERM must land mid-stream"
    service_factory(**topics)
    feeder.join(timeout=60)
    records += read_until(output, covers(all_ids - {json.loads(r.value)["event_id"] for r in records}), timeout_s=60)
    counts = Counter(json.loads(r.value)["event_id"] for r in records)
    assert set(counts) == all_ids  # no gap
    assert max(counts.values()) == 1  # and nothing twice: the graceful stop committed what it produced


@pytest.mark.parametrize("late", [Event("x", "a", 150.0, "ix", 1.5), Event("a", "a", 300.0, "ia", 3.0)],
                         ids=["late event", "timestamp tie"])
def test_a_prediction_re_emitted_after_a_crash_equals_the_first(broker, topics, producer, consumer_factory,
                                                                  service_factory, late):
    """Issue 10 #5: with nothing committed, a1 (ts 100), a2 (ts 200 or 300), then a later-arriving event
    that sorts before a2 (ts 150, or a tie at a2's ts with a smaller id); after SIGKILL and restart the
    re-emitted a2 prediction must be the first one, not one whose window includes the later arrival."""
    a2_ts = 300.0 if late.event_id == "a" else 200.0
    first_batch = [Event("a1", "a", 100.0, "i1", 1.0), Event("m" if late.event_id == "a" else "a2", "a", a2_ts,
                                                             "i2", 2.0)]
    output = consumer_factory(topics["output_topic"])
    service = service_factory(assign_all_partitions=True, commit_interval_ms=600_000, **topics)
    replay(first_batch, producer, topics["input_topic"])
    records = read_until(output, covers({e.event_id for e in first_batch}))
    replay([late], producer, topics["input_topic"])
    records += read_until(output, covers({late.event_id}))
    service.signal(signal.SIGKILL)
    service.wait()
    service_factory(assign_all_partitions=True, **topics)  # re-reads all three: nothing was committed
    again = read_until(output, lambda rs: len(rs) >= 3)
    by_id = predictions_by_id(records + again)
    target = first_batch[1].event_id
    first, second = by_id[target]
    assert first["window"] == second["window"] == 2
    strip = lambda p: {k: v for k, v in p.items() if k != "latency_ms"}
    assert strip(first) == strip(second)

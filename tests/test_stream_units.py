"""Fast checks of the streamer's small parts: settings, commit policy, top-K, DLQ headers, transport, CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stream_helpers import read_until
from streamer.dlq import split
from streamer.predict import recommendations, top_items
from streamer.service import CommitPolicy
from streamer.settings import Settings, SettingsError
from streamer.transport import Consumer, DeliveryError, Record

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_settings_from_env_and_overrides():
    s = Settings.from_env({"SEQCAST_MAX_POLL_RECORDS": "64", "SEQCAST_ASSIGN_ALL_PARTITIONS": "true",
                           "SEQCAST_STATS_INTERVAL_S": "2.5", "OTHER": "x"}, group_id="g", top_k=None)
    assert (s.max_poll_records, s.assign_all_partitions, s.stats_interval_s, s.group_id, s.top_k) == (64, True, 2.5, "g", 0)


@pytest.mark.parametrize("env, overrides, message", [
    ({"SEQCAST_MAX_POLL_RECORD": "1"}, {}, "SEQCAST_MAX_POLL_RECORD"),
    ({}, {"max_poll_record": 1}, "max_poll_record"),
    ({"SEQCAST_MAX_POLL_RECORDS": "lots"}, {}, "SEQCAST_MAX_POLL_RECORDS"),
    ({"SEQCAST_REDIS_CLUSTER": "maybe"}, {}, "SEQCAST_REDIS_CLUSTER"),
    ({}, {"max_poll_records": 0}, "max_poll_records"),
    ({}, {"output_topic": "events"}, "differ"),
])
def test_settings_errors_name_the_key(env, overrides, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env, **overrides)


def test_settings_are_frozen_and_pick_the_newest_bundle(tmp_path):
    for version in ("2026-01-01T00-00-00Z-aa", "2026-02-01T00-00-00Z-bb"):
        (tmp_path / "m" / version).mkdir(parents=True)
    s = Settings(models_dir=str(tmp_path), model_name="m")
    assert s.bundle_path().name == "2026-02-01T00-00-00Z-bb"
    with pytest.raises(Exception):
        s.group_id = "x"  # type: ignore[misc]
    with pytest.raises(SettingsError, match="bundle"):
        Settings().bundle_path()


def test_commit_policy_interval_or_count():
    now = [0.0]
    policy = CommitPolicy(interval_ms=1000, max_records=100, clock=lambda: now[0])
    assert not policy.due()
    policy.add(10)
    assert not policy.due()
    now[0] = 1.0
    assert policy.due()
    policy.reset()
    policy.add(100)
    assert policy.due()
    every_batch = CommitPolicy(0, 0, clock=lambda: now[0])
    every_batch.add(1)
    assert every_batch.due()


def test_top_items_exclude_window_items_and_reserved_indices():
    scores = np.array([[9, 8, 1, 5, 4, 3], [9, 9, 6, 5, 4, 7]], np.float32)
    window = np.array([[0, 3], [1, 5]], np.int32)
    best, best_scores = top_items(scores, window, 2)
    assert best.tolist() == [[4, 5], [2, 3]]
    assert best_scores.tolist() == [[4, 3], [6, 5]]
    recs = recommendations(*top_items(scores, window, 99), ["PAD", "OOV", "a", "b", "c", "d"])
    assert [[r["item_id"] for r in row] for row in recs] == [["c", "d", "a"], ["a", "b", "c"]]


def test_split_routes_bad_records_with_headers():
    records = [Record("events", 1, 7, b"k", b'{"event_id":"a","user_id":"u","ts":1,"value":2}', 0),
               Record("events", 1, 8, None, b"nope", 0, (("trace", b"x"),))]
    events, sources, rejected = split(records)
    assert [e.event_id for e in events] == ["a"] and sources == records[:1]
    (bad,) = rejected
    headers = dict(bad.headers())
    assert headers["reason"] == b"not_json" and headers["source_offset"] == b"8"
    assert headers["source_partition"] == b"1" and headers["trace"] == b"x"


def test_transport_round_trip_commit_and_lag(broker, topic_factory, producer):
    topic = topic_factory(1)
    for i in range(10):
        producer.send(topic, f"v{i}".encode(), b"k", [("h", b"1")])
    assert producer.flush() == 10
    first = Consumer(broker, topic, "g-" + topic, assign_all=True)
    records = read_until(first, lambda rs: len(rs) == 10, timeout_s=10)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(10)]
    assert records[0].headers == (("h", b"1"),) and records[0].key == b"k"
    assert first.lag() == {0: 0}
    assert first.commit({(topic, 0): 4})  # records 0-3 are done, 4-9 are not
    first.close()
    again = Consumer(broker, topic, "g-" + topic, assign_all=True)
    rest = read_until(again, lambda rs: len(rs) >= 6, timeout_s=10)
    assert [r.offset for r in rest] == list(range(4, 10))
    again.close()


def test_producer_raises_when_a_send_cannot_be_delivered(producer, topic_factory):
    topic = topic_factory()
    with pytest.raises(DeliveryError, match="1 of 2"):  # refused at send time or at flush time
        producer.send(topic, b"fine")
        producer.send(topic, b"x" * (3 * 1024 * 1024))  # over max_request_size
        producer.flush()
    producer.send(topic, b"fine")
    assert producer.flush() == 1  # the failure was reported once and cleared


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_inspect_accepts_a_good_bundle_and_refuses_a_tampered_one(bundle_dir, tmp_path):
    good = run_cli("inspect", str(bundle_dir))
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["window"] == 20
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle_dir, tampered)
    with open(tampered / "items.txt", "a") as fh:
        fh.write("extra\n")
    bad = run_cli("inspect", str(tampered))
    assert bad.returncode == 1 and "sha256" in bad.stderr


def test_cli_replay_sends_synthetic_events_in_event_time_order(broker, topic_factory, consumer_factory):
    topic = topic_factory()
    result = run_cli("replay", "synthetic:users=5,items=10,events=4", "--topic", topic, "--limit", "15",
                     "--bootstrap-servers", broker)
    assert result.returncode == 0, result.stderr
    records = read_until(consumer_factory(topic), lambda rs: len(rs) >= 15, timeout_s=10)
    ts = [json.loads(r.value)["ts"] for r in sorted(records, key=lambda r: r.offset)]
    assert len(records) == 15 and ts == sorted(ts)


def test_cli_help_answers_questions():
    result = run_cli("serve", "--help")
    assert result.returncode == 0 and "SEQCAST_" in result.stdout and "--bundle" in result.stdout


def test_health_names_what_is_not_usable(redis_client):
    import time

    import redis

    from streamer.http import Health

    health = Health(redis_client=redis.Redis(port=1, socket_connect_timeout=0.2), model_loaded=True)
    assert health.check() == {"model": True, "redis": False, "broker": False}
    health.redis_client, health.assigned, health.last_poll = redis_client, True, time.monotonic()
    assert all(health.check().values())
    health.last_poll -= 60  # the loop stopped polling
    assert health.check()["broker"] is False

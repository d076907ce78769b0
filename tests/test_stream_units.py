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
from streamer.transport import DEFAULT_CLIENT, Consumer, DeliveryError, Record

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


def test_settings_choose_a_known_kafka_client():
    assert Settings().kafka_client == DEFAULT_CLIENT == "confluent"
    assert Settings.from_env({"SEQCAST_KAFKA_CLIENT": "kafka-python"}).kafka_client == "kafka-python"
    with pytest.raises(SettingsError, match="kafka_client"):
        Settings.from_env({"SEQCAST_KAFKA_CLIENT": "java"})


def test_transport_round_trip_commit_and_lag(broker, topic_factory, producer, kafka_client):
    topic = topic_factory(1)
    for i in range(10):
        producer.send(topic, f"v{i}".encode(), b"k", [("h", b"1")])
    assert producer.flush() == 10
    first = Consumer(broker, topic, "g-" + topic, assign_all=True, client=kafka_client)
    assert type(first).__module__.endswith(kafka_client.replace("-", "_") + "_client")
    records = read_until(first, lambda rs: len(rs) == 10, timeout_s=10)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(10)]
    assert records[0].headers == (("h", b"1"),) and records[0].key == b"k"
    assert first.lag() == {0: 0}
    read_until(first, lambda _: first.broker_reachable(), timeout_s=5)  # librdkafka's: from its statistics
    assert first.commit({(topic, 0): 4}) == "committed"  # records 0-3 are done, 4-9 are not
    first.close()
    again = Consumer(broker, topic, "g-" + topic, assign_all=True, client=kafka_client)
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


class RecordingListener:
    """The service's side of a rebalance, reduced to what the test checks: it commits what it read of
    the revoked partitions (as Service.revoked does) and records every call."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer, self.calls, self.read, self.outcomes = consumer, [], {}, []
        consumer.listener = self

    def revoked(self, partitions) -> None:
        still_mine = self.consumer.assigned() >= partitions  # called BEFORE the partitions go
        self.calls.append(("revoked", partitions, still_mine))
        self.outcomes.append(self.consumer.commit({p: o for p, o in self.read.items() if p in partitions}))

    def assigned(self, partitions) -> None:
        self.calls.append(("assigned", partitions, True))

    def poll(self) -> None:
        for r in self.consumer.poll(100):
            self.read[(r.topic, r.partition)] = r.offset + 1


def test_rebalance_relays_revoked_before_assigned_and_commits_never_raise(broker, topic_factory, producer,
                                                                          kafka_client):
    import time

    topic = topic_factory(2)
    for i in range(40):
        producer.send(topic, f"v{i}".encode(), f"k{i}".encode())
    producer.flush()
    group, both = "g-" + topic, {(topic, 0), (topic, 1)}
    make = lambda: Consumer(broker, topic, group, session_timeout_ms=3000, client=kafka_client)
    a = RecordingListener(make())
    started = time.monotonic()
    while a.consumer.assigned() != both:
        assert time.monotonic() - started < 30, "first member never joined"
        a.poll()
    joined_s = time.monotonic() - started
    b = RecordingListener(make())
    started = time.monotonic()
    while len(a.consumer.assigned()) != 1 or len(b.consumer.assigned()) != 1:
        assert time.monotonic() - started < 30, (a.calls, b.calls)
        a.poll()
        b.poll()
    split_s = time.monotonic() - started
    assert a.consumer.assigned() | b.consumer.assigned() == both
    b.consumer.close()  # b leaves: a gets both partitions back
    started = time.monotonic()
    while a.consumer.assigned() != both:
        assert time.monotonic() - started < 30, a.calls
        a.poll()
    print(f"\n{kafka_client}: join {joined_s:.1f}s, second member {split_s:.1f}s, "
          f"back to one member {time.monotonic() - started:.1f}s; commits on revoke: {a.outcomes}")
    kinds = [kind for kind, partitions, _ in a.calls if partitions]  # kafka-python also revokes set() at a join
    assert kinds[0] == "assigned" and kinds[-1] == "assigned" and kinds.count("revoked") >= 2
    assert all(still_mine for kind, _, still_mine in a.calls if kind == "revoked")
    assert a.calls[-1][1] <= both and a.consumer.assigned() == both
    assert a.outcomes and set(a.outcomes) == {"committed"}, a.outcomes  # before the partitions go: still valid
    a.poll()
    assert a.consumer.commit({p: 1 for p in both}) in ("committed", "rebalanced")  # after the rebalance
    a.consumer.close()
    stale = b.consumer  # closed: its commit is refused, not raised, whatever the backend says
    try:
        assert stale.commit({(topic, 0): 1}) in ("committed", "rebalanced", "unavailable")
    except RuntimeError:  # kafka-python / librdkafka refuse any call on a closed consumer
        pass


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
    assert health.check()["broker"] is False  # polling, but the client has no live broker connection
    health.broker_ok = True
    assert all(health.check().values())
    health.paused = "redis"  # the loop holds its batch waiting for Redis: not ready, even if PING answers now
    assert health.check()["redis"] is False
    health.paused = None
    health.last_poll -= 60  # the loop stopped polling
    assert health.check()["broker"] is False


def test_a_record_too_large_for_the_dlq_goes_as_a_bounded_record():
    from streamer.dlq import Rejected

    huge = Record("events", 3, 1234, b"k" * 5000, b"v" * 3_000_000, 0, (("trace", b"t-1"),))
    value, key, headers = Rejected(huge, "too_large", "3000000 bytes > 65536").dead_letter(1_000_000)
    h = dict(headers)
    assert len(value) == len(key) == 1024 and value == b"v" * 1024
    assert h["reason"] == b"too_large" and h["truncated"] == b"true" and h["original_bytes"] == b"3005008"  # key + value + header bytes
    assert (h["source_topic"], h["source_partition"], h["source_offset"]) == (b"events", b"3", b"1234")
    assert "trace" not in h  # the original's own headers could be what is too large
    small = Record("events", 0, 7, b"k", b"{not json", 0, (("trace", b"t-1"),))
    value, key, headers = Rejected(small, "not_json", "x").dead_letter(1_000_000)
    assert (value, key) == (b"{not json", b"k") and dict(headers)["trace"] == b"t-1" and "truncated" not in dict(headers)


def test_split_never_raises_and_an_unexpected_error_is_an_internal_error():
    weird = Record("events", 0, 1, None, 12345, 0)  # not bytes: parse_event fails with a TypeError
    events, _, rejected = split([weird, Record("events", 0, 2, None, b"[]", 0)])
    assert events == [] and [r.reason for r in rejected] == ["internal_error", "not_object"]
    assert rejected[0].detail.startswith("TypeError")


def test_dlq_detail_with_a_lone_surrogate_is_still_a_valid_header():
    from streamer.dlq import Rejected

    headers = dict(Rejected(Record("t", 0, 0, None, b"x", 0), "bad_ts", "ts '\ud800' is bad").headers())
    assert headers["detail"] == b"ts '\\ud800' is bad"


def test_kafka_client_log_repeats_are_rate_limited_ours_are_not():
    from streamer.logs import RepeatFilter

    repeat = RepeatFilter(every_s=30.0)
    kept = [repeat.filter(_record("kafka.conn", f"<conn node {n} port 90{n}>: refused", t)) for n, t in
            [(1, 0.0), (2, 1.0), (3, 29.0), (4, 31.0)]]
    assert kept == [True, False, False, True]
    assert all(repeat.filter(_record("streamer.service", "progress", t)) for t in (0.0, 0.1, 0.2))


def _record(name: str, msg: str, created: float):
    import logging

    rec = logging.LogRecord(name, logging.ERROR, "", 0, msg, (), None)
    rec.created = created
    return rec

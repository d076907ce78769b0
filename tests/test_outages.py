"""Dependencies that are down when the service starts (issue 10 #7): it waits, not ready, instead of exiting
(exiting turned an outage into a crash loop), and serves once they are back. Outages while it runs are
the chaos suite's redis and broker scenarios (tests/test_chaos.py)."""
from __future__ import annotations

import signal
import time

import pytest

from bench.chaos.infra import Broker, ChaosRedis, Fleet
from stream_helpers import covers, read_until
from streamer.events import Event
from streamer.replay import replay
from streamer.transport import Consumer, Producer, create_topics

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path, bundle_dir, kafka_client):
    """A proxied broker, a Redis that can be stopped, and a fleet of `serve` members (per Kafka client)."""
    broker, redis_server = Broker(tmp_path, proxied=True), ChaosRedis(tmp_path)
    create_topics(broker.bootstrap, ["events", "predictions", "dlq"], 1)
    fleet = Fleet(tmp_path, bootstrap_servers=broker.bootstrap, redis_url=redis_server.url, key_prefix="outage",
                  bundle=str(bundle_dir), input_topic="events", output_topic="predictions", dlq_topic="dlq",
                  assign_all_partitions=True, kafka_client=kafka_client)
    yield broker, redis_server, fleet
    fleet.kill_all()
    broker.stop()
    redis_server.close()


def stays_down(member, seconds: float, part: str) -> None:
    """The member stays alive and says not ready, naming `part`, for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code, body = member.healthz()
        assert member.alive(), member.log_path.read_text()[-2000:]
        assert code in (0, 503) and body.get(part) is not True, body
        time.sleep(0.5)


def serves(broker: Broker, member) -> None:
    events = [Event(f"o{i}", f"u{i % 3}", 100.0 + i, f"i{i}", float(i)) for i in range(6)]
    producer = Producer(broker.bootstrap)
    replay(events, producer, "events")
    producer.close()
    consumer = Consumer(broker.bootstrap, "predictions", None, assign_all=True)
    try:
        read_until(consumer, covers({e.event_id for e in events}), timeout_s=60)
    finally:
        consumer.close()
    assert member.healthz()[0] == 200


def test_redis_down_at_start_is_waited_for(world):
    broker, redis_server, fleet = world
    redis_server.stop()
    member = fleet.start()
    stays_down(member, 8.0, "redis")
    redis_server.start()
    fleet.wait_ready([member], timeout_s=60)
    serves(broker, member)
    assert "waiting for redis" in member.log_path.read_text()


def test_broker_down_at_start_is_waited_for_and_sigterm_still_stops_it(world):
    broker, _, fleet = world
    broker.cut()
    member = fleet.start()
    stays_down(member, 8.0, "broker")
    broker.restore()
    fleet.wait_ready([member], timeout_s=60)
    serves(broker, member)
    broker.cut()  # and a stop during an outage is still a clean stop
    time.sleep(2)
    member.signal(signal.SIGTERM)
    assert member.proc.wait(timeout=30) == 0

"""Both Kafka backends place a key where the Java client would (murmur2), so a user's events and predictions
share a partition whichever client, seqcast's or a team's own (examples/), wrote them."""
from __future__ import annotations

import pytest
from kafka.partitioner.default import DefaultPartitioner

from stream_helpers import read_until

PARTITIONS = 6


@pytest.mark.slow
def test_a_key_lands_on_the_java_clients_partition(topic_factory, producer, consumer_factory):
    topic = topic_factory(PARTITIONS, "keys")
    keys = [f"user-{k}".encode() for k in range(40)]
    for key in keys:
        producer.send(topic, b"{}", key)
    producer.flush()
    records = read_until(consumer_factory(topic), lambda got: len(got) >= len(keys), timeout_s=30)
    java = DefaultPartitioner()
    expected = {key: java(key, list(range(PARTITIONS)), list(range(PARTITIONS))) for key in keys}
    assert {r.key: r.partition for r in records} == expected
    assert len(set(expected.values())) > 1, "the keys must spread, or the test shows nothing"

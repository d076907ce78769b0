"""schemas/v1 end to end: a deterministic corpus of schema-accepted and schema-refused messages through
a real `seqcast serve` (Tansu, Redis, the tiny bundle). Every accepted message gets exactly one
prediction that validates against prediction.schema.json; every refused one lands on the dead-letter
topic unchanged, with the service's reason, and headers that validate against dlq-headers.schema.json.

The corpus is seeded (tests/schema_corpus.corpus), so a run is repeatable; its verdicts are the
schema's, with the documented differences applied (contract_verdict), exactly as the property test
in tests/test_schemas.py judges them.
"""
from __future__ import annotations

from collections import Counter

import pytest

from schema_corpus import corpus
from schema_oracle import DIFFERENCES, contract_verdict, header_dict, schema_errors, strict_json
from stream_helpers import covers, read_until
from streamer.events import REASONS, Event, InvalidEvent, parse_event
from streamer.transport import DEFAULT_CLIENT

pytestmark = pytest.mark.slow

USERS = ["u-0", "u-1", "sensor-3", "\U0001F600-user"]


def classified(seed: int = 2) -> tuple[list[bytes], dict[str, tuple[bytes, Event]], list[bytes], set[str]]:
    """([message] to send, {event_id: (message, Event)} accepted, [message] refused, differences seen).
    Messages in the documented nesting band (either verdict is the contract) are left out: this run
    wants one answer per message."""
    messages, accepted, refused, differences = [], {}, [], set()
    for raw in corpus(seed, USERS, valid=40, mutated=48):
        verdict = contract_verdict(raw)
        if verdict.or_not_json:
            continue
        messages.append(raw)
        differences.update(verdict.differences)
        if verdict.accept:
            event = parse_event(raw)
            assert event.event_id not in accepted, "the corpus gives every accepted message its own event_id"
            accepted[event.event_id] = (raw, event)
        else:
            refused.append(raw)
    return messages, accepted, refused, differences


@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_schema_verdicts_hold_end_to_end(topics, producer, consumer_factory, service_factory) -> None:
    messages, accepted, refused, differences = classified()
    assert len(accepted) >= 40 and len(refused) >= 20, (len(accepted), len(refused))
    assert differences == {d.name for d in DIFFERENCES}, differences  # the seed reaches every difference
    for raw in messages:
        producer.send(topics["input_topic"], raw, b"k", [("trace", b"schema-e2e")])
    producer.flush()
    output, dlq = consumer_factory(topics["output_topic"]), consumer_factory(topics["dlq_topic"])
    service = service_factory(assign_all_partitions=True, **topics)

    predictions = read_until(output, covers(set(accepted)))
    dead = read_until(dlq, lambda rs: len(rs) >= len(refused))
    predictions += output.poll(1000)  # anything more would be a duplicate or a stray
    dead += dlq.poll(500)

    bodies = [strict_json(r.value) for r in predictions]
    for body in bodies:
        assert schema_errors("prediction", body) == [], body
    per_id = Counter(body["event_id"] for body in bodies)
    assert per_id == Counter(set(accepted)), "exactly one prediction per accepted event, none for a refused one"
    for body in bodies:
        _, event = accepted[body["event_id"]]
        assert (body["user_id"], body["ts"]) == (event.user_id, event.ts)

    assert Counter(r.value for r in dead) == Counter(refused), "every refused message, unchanged, once"
    for record in dead:
        headers = header_dict(record.headers)
        assert schema_errors("dlq-headers", headers) == [], headers
        with pytest.raises(InvalidEvent) as err:
            parse_event(record.value)
        assert headers["reason"] == err.value.reason != "internal_error"
        assert headers["reason"] in REASONS and headers["trace"] == "schema-e2e"
        assert headers["source_topic"] == topics["input_topic"] and record.key == b"k"
    assert {header_dict(r.headers)["reason"] for r in dead} == set(REASONS) - {"internal_error"}
    assert service.proc.poll() is None

"""schemas/v1 against the service's own validation (streamer/events.py), no broker.

The oracle is the schema: bytes decoded as strict JSON (tests/schema_corpus.strict_json), then
jsonschema's Draft202012Validator. Schema accepts => parse_event returns that Event; schema refuses =>
parse_event raises InvalidEvent with a reason other than internal_error. The only exceptions are the
documented differences (schema_corpus.DIFFERENCES, listed with the same names in schemas/README.md),
each recognised by its own predicate, and the standard-library path (parse_event_stdlib) must give the
same Event or the same reason as parse_event on every message.

Events are generated from the schema with hypothesis-jsonschema, one property at a time: 0.23.1's
`from_schema` fails on every object schema with `properties` under hypothesis 6.170 ("'many' object
has no attribute 'more'": it calls a Hypothesis internal that no longer exists), so the object is
assembled here from the schema's own `properties` and `required`, and the validator checks the result.
"""
from __future__ import annotations

import calendar
import json
import random
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from schema_corpus import BAD_UTF8, NUMBER_SPELLINGS, TS_STRINGS, mutate, spell, with_text
from schema_oracle import (DIFFERENCES, SCHEMA_NAMES, Verdict, contract_verdict, expected_ts, header_dict,
                           load_schema, schema_errors, service_recursion_limit, ts_pattern, validator,
                           watch_predictions)
from streamer.dlq import DETAIL_CHARS, Rejected, internal_error, record_bytes, split
from streamer.events import (MAX_ID_CHARS, MAX_MESSAGE_BYTES, REASONS, Event, InvalidEvent, parse_event,
                            parse_event_stdlib)
from streamer.transport import Record

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the schemas themselves ------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_schema_is_draft_2020_12_with_its_versioned_id(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:seqcast:schema:{name}:v1"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_schemas_examples_validate(name: str) -> None:
    examples = load_schema(name)["examples"]
    assert examples
    for example in examples:
        assert schema_errors(name, example) == [], example


def test_the_event_examples_are_events_to_the_service() -> None:
    for example in load_schema("event")["examples"]:
        event = parse_event(json.dumps(example).encode())
        assert event.to_dict() == {k: expected_ts(v) if k == "ts" else v for k, v in example.items()}


def test_the_dlq_reason_enum_is_the_services_closed_set() -> None:
    assert load_schema("dlq-headers")["properties"]["reason"]["enum"] == list(REASONS)


# --- agreement: the schema's verdict is the service's --------------------------------------------------

def outcome(parse, raw: bytes | None) -> Event | str:
    """The Event, or the InvalidEvent's reason (any other exception propagates: a bug)."""
    try:
        return parse(raw)
    except InvalidEvent as err:
        assert err.reason in REASONS
        return err.reason


def assert_agrees(raw: bytes | None) -> Verdict:
    """parse_event and parse_event_stdlib against the schema's verdict (documented differences applied)."""
    verdict = contract_verdict(raw)
    with service_recursion_limit():
        fast, slow = outcome(parse_event, raw), outcome(parse_event_stdlib, raw)
    shown = repr(raw[:300]) if raw is not None else "None"
    if verdict.or_not_json and fast == "not_json":
        pass  # TOO_DEEP's band
    elif verdict.accept:
        assert isinstance(fast, Event), f"schema accepts {verdict.differences}, service says {fast}: {shown}"
        assert_event_is(fast, verdict.doc)
    else:
        assert isinstance(fast, str), f"schema refuses {verdict}, service accepts {fast}: {shown}"
        assert fast != "internal_error", shown
        if verdict.reason is not None:
            assert fast == verdict.reason, f"{verdict.differences} means {verdict.reason}, got {fast}: {shown}"
    if not (verdict.or_not_json and slow == "not_json"):
        assert repr(slow) == repr(fast), f"stdlib {slow!r} != orjson path {fast!r}: {shown}"
    return verdict


def assert_event_is(event: Event, doc: dict) -> None:
    value = doc.get("value")
    assert (event.event_id, event.user_id, event.item_id, event.type) == \
        (doc["event_id"], doc["user_id"], doc.get("item_id"), doc.get("type"))
    assert event.value == (None if value is None else float(value))
    assert event.ts == expected_ts(doc["ts"])


@cache
def property_strategy(name: str, null: bool = True) -> st.SearchStrategy:
    """hypothesis-jsonschema's strategy for one property of the event schema (without null if asked)."""
    schema = load_schema("event")["properties"][name]
    if not null and isinstance(schema.get("type"), list):
        schema = {**schema, "type": [t for t in schema["type"] if t != "null"]}
    return from_schema(schema)


@st.composite
def schema_events(draw) -> dict:
    """An event made of schema-generated properties: the required ones, some optional ones (null
    included), an item_id or value where the anyOf needs one, and unknown fields of any JSON."""
    schema = load_schema("event")
    event = {name: draw(property_strategy(name)) for name in schema["required"]}
    for name in schema["properties"]:
        if name not in event and draw(st.booleans()):
            event[name] = draw(property_strategy(name))
    if not validator("event").is_valid(event):  # the anyOf: neither a string item_id nor a number value
        field = draw(st.sampled_from(["item_id", "value"]))
        event[field] = draw(property_strategy(field, null=False))
    extra = st.text(max_size=6).filter(lambda k: k not in schema["properties"])
    event.update(draw(st.dictionaries(extra, from_schema({}), max_size=2)))
    return event


@PROPERTY
@given(schema_events(), st.randoms(use_true_random=False))
def test_schema_generated_events_are_accepted_as_written(event: dict, rnd: random.Random) -> None:
    assert validator("event").is_valid(event), event
    verdict = assert_agrees(spell(event, rnd))
    assert verdict.accept and verdict.differences == ()


@PROPERTY
@given(schema_events(), st.randoms(use_true_random=False))
def test_mutated_events_get_the_schemas_verdict(event: dict, rnd: random.Random) -> None:
    assert_agrees(mutate(event, rnd))


# --- the edges, every one of them, every run --------------------------------------------------------------

def edge_messages() -> list[bytes | None]:
    """Each number spelling in ts and value, each ts string, each non-UTF-8 byte, lone surrogates in
    each field, sizes and depths at the limits, on the schema's examples."""
    rng = random.Random(0)
    messages: list[bytes | None] = [None, b"", b"null", b"[]", b"{}", b'"e"']
    for example in load_schema("event")["examples"]:
        for spelling in NUMBER_SPELLINGS:
            messages += [with_text(example, "ts", spelling, rng), with_text(example, "value", spelling, rng)]
        messages += [spell({**example, "ts": ts}, rng) for ts in TS_STRINGS]
        raw = spell(example, rng)
        messages += [raw[:i] + bad + raw[i:] for bad in BAD_UTF8 for i in (0, 5, len(raw) - 1)]
        messages += [raw[:i] for i in range(len(raw))]
        for field in ("event_id", "user_id", "item_id", "type", "ts"):
            messages += [spell({**example, field: f"x{lone}"}, rng) for lone in ("\ud800", "\udfff")]
            messages.append(spell({**example, field: "\ud83d\ude00"}, rng))  # a valid pair: one character
        for field in ("event_id", "user_id", "item_id"):
            messages += [spell({**example, field: text}, rng)
                         for text in ("", "a" * MAX_ID_CHARS, "a" * (MAX_ID_CHARS + 1), "\U0001F600" * MAX_ID_CHARS)]
        messages += [spell({k: v for k, v in example.items() if k not in ("item_id", "value")}, rng),
                     spell({**example, "item_id": None, "value": None}, rng)]
        pad = json.dumps({**example, "pad": ""}, separators=(",", ":")).encode()
        messages += [pad[:-2] + b"p" * (size - len(pad)) + b'"}' for size in
                     (MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1)]
        messages += [with_text(example, "nest", "[" * (depth - 1) + "]" * (depth - 1), rng)
                     for depth in (512, 513, 1000, 1024, 1025, 5000)]
    return messages


def test_edge_messages_get_the_schemas_verdict_and_every_difference_is_seen() -> None:
    seen: set[str] = set()
    for raw in edge_messages():
        seen.update(assert_agrees(raw).differences)
    assert seen == {d.name for d in DIFFERENCES}  # no documented difference is dead weight


def test_a_64_kib_message_is_the_last_size_accepted() -> None:
    example = load_schema("event")["examples"][0]
    pad = json.dumps({**example, "pad": ""}, separators=(",", ":")).encode()
    at_limit = pad[:-2] + b"p" * (MAX_MESSAGE_BYTES - len(pad)) + b'"}'
    assert len(at_limit) == MAX_MESSAGE_BYTES and isinstance(parse_event(at_limit), Event)
    assert outcome(parse_event, at_limit[:-2] + b'p"}') == "too_large"


def test_the_ts_patterns_calendar_is_the_one_the_service_reads() -> None:
    """Every year's 29 February and the days around every month's end: the pattern accepts exactly the
    real dates (proleptic Gregorian, years 0001-9999), and the service reads each one it accepts."""
    pattern = ts_pattern()
    dates = [(year, 2, 29) for year in range(0, 10000)]
    dates += [(year, month, day) for year in (1, 4, 100, 400, 1900, 2000, 2023, 2024, 9999)
              for month in range(0, 14) for day in (0, 1, 28, 29, 30, 31, 32)]
    wrong = []
    for year, month, day in dates:
        text = f"{year:04d}-{month:02d}-{day:02d}"
        real = 1 <= year and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
        if bool(pattern.search(text)) != real:
            wrong.append(text)
        if year % 7 == 0 or (month, day) != (2, 29):  # the service too (a sample of the 10,000 leap days)
            assert_agrees(json.dumps({"event_id": "e", "user_id": "u", "ts": text, "value": 1}).encode())
    assert wrong == []


def test_the_ts_patterns_clock_and_offsets_are_the_services() -> None:
    pattern = ts_pattern()
    for hour in range(26):
        for minute in (0, 59, 60):
            for second in ("", ":00", ":59", ":60", ":59.5"):
                text = f"2024-03-01T{hour:02d}:{minute:02d}{second}"
                assert bool(pattern.search(text)) == (hour < 24 and minute < 60 and second != ":60"), text
                assert_agrees(json.dumps({"event_id": "e", "user_id": "u", "ts": text, "value": 1}).encode())
    for sign in "+-":
        for hour in range(26):
            for minute in (0, 30, 59, 60):
                text = f"2024-03-01T12:00{sign}{hour:02d}:{minute:02d}"
                assert bool(pattern.search(text)) == (hour < 24 and minute < 60), text
                assert_agrees(json.dumps({"event_id": "e", "user_id": "u", "ts": text, "value": 1}).encode())


# --- dead-letter headers ---------------------------------------------------------------------------------

SOURCE = "events-schema"
OWN_HEADERS = (("trace", b"t-1"), ("reason", b"spoofed"), ("binary", b"\xff\xfe"))


def dead_letters() -> list[Rejected]:
    """Rejected records from `split` (one of each reason it can name, a long detail, a lone surrogate
    in a field), and `internal_error` verdicts whose detail is long or holds lone surrogates."""
    values = [b"x" * (MAX_MESSAGE_BYTES + 1), b"\xff{}", b"{not json", None, b"[1]",
              b'{"user_id":"u","ts":1,"value":1}', b'{"event_id":5,"user_id":"u","ts":1,"value":1}',
              b'{"event_id":"","user_id":"u","ts":1,"value":1}', b'{"event_id":"e","user_id":"u","ts":1,"value":NaN}',
              json.dumps({"event_id": "e", "user_id": "u", "ts": "\U0001F600" * 60, "value": 1}).encode(),
              b'{"event_id":"e","user_id":"u","ts":1}', b'{"event_id":"e","user_id":"u\\ud800","ts":1,"value":1}',
              b'{"event_id":"ok","user_id":"u","ts":1,"value":1}']
    records = [Record(SOURCE, 3, 1000 + i, b"k", value, 0, OWN_HEADERS) for i, value in enumerate(values)]
    events, _, rejected = split(records)
    assert [e.event_id for e in events] == ["ok"]
    assert {r.reason for r in rejected} == set(REASONS) - {"internal_error"}
    assert any(len(r.detail) > DETAIL_CHARS for r in rejected), "a detail longer than the header keeps"
    record = Record(SOURCE, 0, 7, None, b"{}", 0, ())
    return rejected + [internal_error(record, RuntimeError("boom " * 200)),
                       internal_error(record, UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")),
                       internal_error(record, ValueError("x\ud800" * 150))]


def assert_dlq_headers(headers, rejected: Rejected) -> dict[str, str]:
    got = header_dict(headers)
    assert len(got) == len(headers), f"a header name repeats: {headers}"
    assert schema_errors("dlq-headers", got) == [], (rejected.reason, got)
    assert (got["reason"], got["source_topic"]) == (rejected.reason, rejected.record.topic)
    assert int(got["source_offset"]) == rejected.record.offset
    return got


def test_dead_letter_headers_validate() -> None:
    for rejected in dead_letters():
        value, key, headers = rejected.dead_letter()
        got = assert_dlq_headers(headers, rejected)
        assert (value, key) == (rejected.record.value, rejected.record.key)
        own = {k: v for k, v in rejected.record.headers if k != "reason"}
        assert {k: got[k].encode() if k != "binary" else v for k, v in own.items()} == own  # kept as they were


def test_bounded_dead_letter_headers_validate() -> None:
    for rejected in dead_letters():
        value, key, headers = rejected.dead_letter(max_bytes=1)  # every record over the limit
        got = assert_dlq_headers(headers, rejected)
        assert (got["truncated"], got["original_bytes"]) == ("true", str(record_bytes(rejected.record)))
        assert "trace" not in got and len(value or b"") <= 1024


def test_a_dead_letter_detail_is_at_most_200_characters_after_escaping() -> None:
    """The header is UTF-8 text: a lone surrogate in a detail is escaped (backslashreplace), and the
    escaped text must still fit the schema's maxLength 200."""
    record = Record(SOURCE, 0, 7, None, b"{}", 0, ())
    for err in (ValueError("\ud800" * 300), ValueError("a" * 199 + "\udfff")):
        _, _, headers = internal_error(record, err).dead_letter()
        detail = dict(headers)["detail"].decode("utf-8")
        assert len(detail) <= DETAIL_CHARS, f"detail has {len(detail)} characters"


# --- the prediction check the end-to-end readers apply (tests/conftest.py, tests/stream_helpers.py) ------

class ListConsumer:
    """Stands in for a Consumer: the check needs only `topic` and `poll`."""

    def __init__(self, topic: str, values: list[bytes]) -> None:
        self.topic = topic
        self.records = [Record(topic, 0, i, b"u7", v, 0, ()) for i, v in enumerate(values)]

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        return self.records


def test_the_prediction_check_passes_the_example_and_catches_drift() -> None:
    example = load_schema("prediction")["examples"][0]
    good = json.dumps(example).encode()
    assert watch_predictions(ListConsumer("predictions-ab12", [good])).poll(0) != []
    drifted = [json.dumps({**example, "score": 1}).encode(),  # a field the schema does not know
               json.dumps({k: v for k, v in example.items() if k != "latency_ms"}).encode(),
               json.dumps({**example, "forecast": []}).encode(),
               good.replace(b"3.9", b"NaN"), good.replace(b'"primary"', b'"shadow"')]
    for value in drifted:
        with pytest.raises(AssertionError, match="prediction predictions-ab12"):
            watch_predictions(ListConsumer("predictions-ab12", [value])).poll(0)
    assert watch_predictions(ListConsumer("dlq-ab12", drifted)).poll(0)  # other topics are not predictions
    consumer = ListConsumer("predictions", [good])
    assert watch_predictions(watch_predictions(consumer)) is consumer  # once, however often it is asked

"""The message schemas (schemas/v1/) as the tests judge messages with them: loaded and compiled once, a
strict-JSON oracle, the documented differences between the event schema and the service (DIFFERENCES: the
list schemas/README.md gives, each with its own predicate), the verdict a message should get, and the checks
the end-to-end tests' readers apply to predictions and dead-letter headers.

Why one module: the property test (tests/test_schemas.py) and the end-to-end run (tests/test_schema_stream.py)
must classify a message the same way. The messages themselves come from tests/schema_corpus.py.
"""
from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from jsonschema import Draft202012Validator

from streamer.events import MAX_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "schemas" / "v1"
SCHEMA_NAMES = ("event", "prediction", "dlq-headers")
DBL_MAX = sys.float_info.max
FLOAT_EDGE = 2 ** 1024 - 2 ** 970  # the least magnitude that rounds to infinity as a double
ORJSON_MAX_DEPTH = 1024  # orjson's nesting limit (the service's fast decoder)
STDLIB_SAFE_DEPTH = 512  # up to this depth the stdlib fallback never runs out of interpreter recursion
SERVICE_RECURSION_LIMIT = 1000  # CPython's default, which `seqcast serve` keeps (Hypothesis raises it in tests)


@cache
def load_schema(name: str) -> dict:
    """schemas/v1/<name>.schema.json as a dict."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


@cache
def validator(name: str) -> Draft202012Validator:
    """A compiled draft 2020-12 validator (formats are annotations only, as the draft says)."""
    return Draft202012Validator(load_schema(name))


# --- the oracle's JSON: RFC 8259, nothing more ----------------------------------------------------

class NotJson(Exception):
    """The bytes are not one JSON text (RFC 8259), e.g. not UTF-8, NaN, truncated."""


def _no_constants(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def _integer(text: str) -> int | Decimal:
    """Exact integers; past Python's 4300-digit int() limit a Decimal (still exact, still a number)."""
    return int(text) if len(text) <= 4000 else Decimal(text)


def strict_json(raw: bytes) -> Any:
    """The JSON value of `raw`, or NotJson. Strict: UTF-8 only (RFC 8259 section 8.1), no NaN or
    Infinity constants, numbers as written (integers exact, 1e999 is a number too big for a float,
    which the schema's bounds then refuse). Nesting up to ORJSON_MAX_DEPTH is decoded (the
    recursion limit is raised for the call); deeper documents are a documented difference."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotJson(str(err)) from None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2 * ORJSON_MAX_DEPTH)
    try:
        return json.loads(text, parse_constant=_no_constants, parse_int=_integer)
    except ValueError as err:  # JSONDecodeError is a ValueError
        raise NotJson(str(err)) from None
    finally:
        sys.setrecursionlimit(limit)


@contextmanager
def service_recursion_limit() -> Iterator[None]:
    """Run the service's parser under the recursion limit the service has: the stdlib fallback's depth
    limit is the interpreter's, and Hypothesis raises it while a test runs."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(SERVICE_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects in `raw` (the top-level object counts 1), strings skipped;
    a byte scan, so it works on documents too deep or too broken to decode."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


# --- documented differences: where the schema and the service may disagree, and how ----------------

class Difference(NamedTuple):
    """One documented difference: its name (used in schemas/README.md) and its doc sentence."""

    name: str
    doc: str


TOO_LARGE = Difference(
    "too_large",
    "A message over 64 KiB (65,536 bytes) is refused as `too_large` whatever it holds: JSON Schema "
    "describes the decoded value and cannot measure bytes.")
LONE_SURROGATE = Difference(
    "lone_surrogate",
    "A JSON string may spell a lone surrogate (\"\\ud800\"); the schema accepts it as a string, the service "
    "refuses one in event_id, user_id, item_id or type as `not_utf8` (it has no UTF-8 spelling, so it "
    "could not become a Redis or Kafka key).")
TOO_DEEP = Difference(
    "too_deep",
    "Nesting deeper than 1024 arrays/objects (orjson's limit) is refused as `not_json`, even inside an "
    "unknown field the schema ignores; from about 990 levels on it may be too, because the standard "
    "library's decoder, which the service also uses for some valid messages (a ts or value of 0 with "
    "\"-0\" anywhere in the text), stops at the interpreter's recursion limit.")
TS_PROFILE = Difference(
    "ts_profile",
    "The service reads every `ts` string that Python 3.11's datetime.fromisoformat reads after stripping "
    "whitespace and turning `Z` into +00:00 (basic format 20240101, week dates 2024-W01-1, hour-only "
    "2024-01-01T00, any one-character date/time separator, `,` for the decimal point, +0100 and "
    "+01:00:30 offsets, a date with an offset, surrounding whitespace); the schema's pattern is the "
    "RFC 3339 profile only, so a producer validating with the schema is stricter, never looser.")
FLOAT_EDGE_DIFF = Difference(
    "float_edge",
    "A number whose magnitude lies above 1.7976931348623157e308 but below 2^1024 - 2^970 (the largest "
    "double plus half an ulp) rounds to the largest double, and the service reads it as that finite "
    "number; a validator that compares exactly (Python's jsonschema on integer literals, a decimal or "
    "big-number validator, Tansu's) refuses it by `maximum`/`minimum`, while one on doubles accepts it.")
DIFFERENCES = (TOO_LARGE, LONE_SURROGATE, TOO_DEEP, TS_PROFILE, FLOAT_EDGE_DIFF)

ID_FIELDS = ("event_id", "user_id", "item_id")
TEXT_FIELDS = ("event_id", "user_id", "item_id", "type")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate_field(doc: dict) -> bool:
    """LONE_SURROGATE's predicate: a string the service checks holds a surrogate code point (a decoded
    valid pair is one astral character, so any surrogate left is a lone one)."""
    return any(isinstance(doc.get(f), str) and _SURROGATE.search(doc[f]) for f in TEXT_FIELDS)


@cache
def ts_string_schema() -> dict:
    """The event schema's `ts` branch for strings (the RFC 3339 profile)."""
    (branch,) = [b for b in load_schema("event")["properties"]["ts"]["oneOf"] if b.get("type") == "string"]
    return branch


@cache
def ts_pattern() -> re.Pattern:
    return re.compile(ts_string_schema()["pattern"])


@cache
def ts_string_validator() -> Draft202012Validator:
    return Draft202012Validator(ts_string_schema())


def iso_epoch(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 string read the way the contract says (Python 3.11's
    fromisoformat, surrounding whitespace stripped, Z = UTC, naive = UTC); None if unreadable."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        return None


def service_only_ts(ts: object) -> bool:
    """TS_PROFILE's predicate: a ts string outside the schema's string branch that fromisoformat reads."""
    return (isinstance(ts, str) and not ts_string_validator().is_valid(ts)
            and iso_epoch(ts) is not None)


def beyond_float_literal(number: object) -> bool:
    """FLOAT_EDGE_DIFF's predicate: an exact number over the schema's bound that still rounds to a
    finite double."""
    return (isinstance(number, (int, Decimal)) and not isinstance(number, bool)
            and DBL_MAX < abs(number) < FLOAT_EDGE)


SCHEMA_TS = "2024-01-01T00:00:00Z"  # stands in for a ts the schema's profile lacks, to judge the rest


@dataclass(frozen=True)
class Verdict:
    """What the contract says of one message: accepted (doc = the decoded event) or refused (reason =
    the one reason a documented difference fixes; None = any reason but internal_error), and which
    documented differences decided it."""

    accept: bool
    reason: str | None = None
    differences: tuple[str, ...] = ()
    doc: dict | None = None
    or_not_json: bool = False  # TOO_DEEP's band: refusing as not_json is also the contract


def contract_verdict(raw: bytes | None) -> Verdict:
    """The event schema's verdict on `raw`, corrected only by the documented differences."""
    if raw is None:
        return Verdict(False)  # a tombstone: no JSON text at all
    if len(raw) > MAX_MESSAGE_BYTES:
        return Verdict(False, "too_large", (TOO_LARGE.name,))
    depth = json_depth(raw)
    if depth > ORJSON_MAX_DEPTH:
        return Verdict(False, "not_json", (TOO_DEEP.name,))
    try:
        doc = strict_json(raw)
    except NotJson:
        return Verdict(False)
    verdict = _doc_verdict(doc, doc, ())
    if depth > STDLIB_SAFE_DEPTH:
        return replace(verdict, differences=verdict.differences + (TOO_DEEP.name,), or_not_json=True)
    return verdict


def _doc_verdict(doc: Any, original: Any, seen: tuple[str, ...]) -> Verdict:
    if validator("event").is_valid(doc):
        if has_lone_surrogate_field(doc):
            return Verdict(False, "not_utf8", seen + (LONE_SURROGATE.name,))
        return Verdict(True, None, seen, original)
    if isinstance(doc, dict):
        if service_only_ts(doc.get("ts")):
            return _doc_verdict({**doc, "ts": SCHEMA_TS}, original, seen + (TS_PROFILE.name,))
        for field in ("ts", "value"):
            if beyond_float_literal(doc.get(field)):
                return _doc_verdict({**doc, field: 1.0}, original, seen + (FLOAT_EDGE_DIFF.name,))
    return Verdict(False, None, seen)


def expected_ts(ts: object) -> float:
    """The epoch seconds an accepted event's ts stands for."""
    if isinstance(ts, str):
        epoch = iso_epoch(ts)
        assert epoch is not None, ts
        return epoch
    return float(ts)  # type: ignore[arg-type]


def schema_errors(name: str, instance: Any) -> list[str]:
    """Every violation of schemas/v1/<name>, as 'path: message' lines (empty when valid)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
            for e in validator(name).iter_errors(instance)]


# --- predictions read by the end-to-end tests -------------------------------------------------------

def is_prediction_topic(topic: str) -> bool:
    """The tests' prediction topics: `predictions` (tests/test_outages.py) and the `topics` fixtures'
    `predictions-<uuid>`."""
    return topic == "predictions" or topic.startswith("predictions-")


def check_predictions(records: Iterable) -> None:
    """Fail (AssertionError naming the record) on a record of a prediction topic whose value is not
    strict JSON or not valid by schemas/v1/prediction.schema.json."""
    for record in records:
        if not is_prediction_topic(record.topic):
            continue
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            body = strict_json(record.value or b"")
        except NotJson as err:
            raise AssertionError(f"prediction {where} is not JSON: {err}") from None
        errors = schema_errors("prediction", body)
        assert not errors, f"prediction {where} breaks prediction.schema.json: {errors}\n{record.value[:500]!r}"


def watch_predictions(consumer: Any) -> Any:
    """Make `consumer.poll` check every prediction it returns (idempotent; other topics untouched)."""
    if getattr(consumer, "_predictions_checked", False) or not is_prediction_topic(consumer.topic):
        return consumer
    poll = consumer.poll

    def checked_poll(*args: Any, **kwargs: Any) -> list:
        records = poll(*args, **kwargs)
        check_predictions(records)
        return records
    consumer.poll = checked_poll
    consumer._predictions_checked = True
    return consumer


# --- DLQ headers --------------------------------------------------------------------------------------

def header_dict(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """Kafka headers as the dlq-headers schema sees them: name -> UTF-8 text (strict for seqcast's own
    headers; a message's own header that is not UTF-8 is opaque to the schema, so it is replaced)."""
    from streamer.dlq import DLQ_HEADERS

    out: dict[str, str] = {}
    for name, value in headers:
        raw = value or b""
        out[name] = raw.decode("utf-8") if name in DLQ_HEADERS else raw.decode("utf-8", "replace")
    return out

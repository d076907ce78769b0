"""The event contract: what one message on the `events` topic must look like.

Every message is decoded and validated here, in one place, by both the
streamer (live traffic) and the trainer's loaders (files). A message that fails
raises `InvalidEvent` whose `reason` is one short, bounded label: it becomes
the `reason` header on the dead-letter topic and the `reason` label of
`seqcast_events_invalid_total`, so the set of reasons is closed (`REASONS`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from orjson import loads as _fast_loads

MAX_MESSAGE_BYTES = 64 * 1024
MAX_ID_CHARS = 128
# "-0" not followed by a digit: where a JSON number token may be a negative zero ("-0", "-0.0", "-0e3").
# A date or an offset ("2024-01-05", "-05:00") always has a digit after "-0", so it does not match.
_NEGATIVE_ZERO = re.compile(rb"-0(?![0-9])")

REASONS = (
    "too_large",  # message over 64 KiB
    "not_utf8",  # bytes are not valid UTF-8, or a string holds a lone surrogate ("\\ud800")
    "not_json",  # not parseable as JSON
    "not_object",  # JSON, but not an object
    "missing_field",  # event_id, user_id or ts absent
    "wrong_type",  # a field has the wrong JSON type
    "bad_id",  # an id is empty or longer than 128 characters
    "not_finite",  # value or ts is NaN or infinite
    "bad_ts",  # ts is a string that is not ISO-8601
    "no_payload",  # neither item_id nor value
    "internal_error",  # valid as far as validation goes, but handling it raised (a bug or a model blow-up)
)


class InvalidEvent(ValueError):
    """A message that breaks the event contract; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event. `ts` is always epoch seconds (float)."""

    event_id: str
    user_id: str
    ts: float
    item_id: str | None = None
    value: float | None = None
    type: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"event_id": self.event_id, "user_id": self.user_id, "ts": self.ts}
        if self.item_id is not None:
            out["item_id"] = self.item_id
        if self.value is not None:
            out["value"] = self.value
        if self.type is not None:
            out["type"] = self.type
        return out

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def parse_ts(raw: object) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive means UTC)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidEvent("wrong_type", f"ts must be a number or ISO-8601 string, got {type(raw).__name__}")
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.timestamp()
        except (ValueError, OverflowError):  # not ISO-8601, or a date outside what epoch seconds can hold
            raise InvalidEvent("bad_ts", f"ts {_text(raw, 40)} is not an ISO-8601 time in range") from None
    try:
        ts = float(raw)
    except OverflowError:  # an int too large for a float (loaders pass Python ints through)
        raise InvalidEvent("not_finite", "ts overflows a float") from None
    if not math.isfinite(ts):
        raise InvalidEvent("not_finite", "ts is not finite")
    return ts


def _id_field(obj: dict, name: str, required: bool) -> str | None:
    raw = obj.get(name)
    if raw is None:
        if required:
            raise InvalidEvent("missing_field", f"{name} is required")
        return None
    if not isinstance(raw, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string, got {type(raw).__name__}")
    if not 1 <= len(raw) <= MAX_ID_CHARS:
        raise InvalidEvent("bad_id", f"{name} must have 1..{MAX_ID_CHARS} characters, has {len(raw)}")
    _require_unicode(name, raw)
    return raw


def _require_unicode(name: str, text: str) -> None:
    """Refuse a string with a lone surrogate: JSON can spell one ("\\ud800"), but it cannot be encoded
    as UTF-8, so it would fail later as a Redis key or a Kafka message key."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InvalidEvent("not_utf8", f"{name} holds a lone surrogate at character {err.start}") from None


def _text(raw: str, limit: int) -> str:
    """A printable excerpt of untrusted text for a detail message (escapes surrogates, no newlines)."""
    return ascii(raw[:limit])


def _value_field(obj: dict) -> float | None:
    raw = obj.get("value")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidEvent("wrong_type", f"value must be a number, got {type(raw).__name__}")
    try:
        value = float(raw)
    except OverflowError:
        raise InvalidEvent("not_finite", "value overflows a float") from None
    if not math.isfinite(value):
        raise InvalidEvent("not_finite", "value is not finite")
    return value


def event_from_dict(obj: object) -> Event:
    """Validate a decoded JSON value against the contract."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"expected a JSON object, got {type(obj).__name__}")
    event_id = _id_field(obj, "event_id", required=True)
    user_id = _id_field(obj, "user_id", required=True)
    if "ts" not in obj or obj["ts"] is None:
        raise InvalidEvent("missing_field", "ts is required")
    ts = parse_ts(obj["ts"])
    item_id = _id_field(obj, "item_id", required=False)
    value = _value_field(obj)
    if item_id is None and value is None:
        raise InvalidEvent("no_payload", "an event needs item_id or value (or both)")
    kind = obj.get("type")
    if kind is not None:
        if not isinstance(kind, str):
            raise InvalidEvent("wrong_type", f"type must be a string, got {type(kind).__name__}")
        _require_unicode("type", kind)
    return Event(event_id, user_id, ts, item_id, value, kind)  # type: ignore[arg-type]


def _reject_constant(name: str) -> float:
    raise InvalidEvent("not_finite", f"{name} is not a finite number")


def parse_event(raw: bytes | None) -> Event:
    """Decode one Kafka message value into an Event, or raise InvalidEvent.

    Fast path: orjson (about 5x cheaper than the standard library on a typical event). It is used
    only where its reading is the standard library's: any document orjson refuses (invalid UTF-8,
    a lone surrogate, NaN/Infinity, a number beyond float64, nesting past 1024, ...) is decoded
    again by `parse_event_stdlib`, which names the reason; and where a ts or value reads as the
    integer 0 while the text holds a "-0" that may be a number (no digit after it, unlike the
    "-01" of a date), the sign orjson drops decides, so that case goes the slow way too. A property
    test holds the two paths to the same Event or the same reason.
    """
    if raw is None:
        raise InvalidEvent("not_json", "message has no value (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = _fast_loads(raw)
    except Exception:
        return parse_event_stdlib(raw)
    if type(obj) is dict and (obj.get("ts") == 0 or obj.get("value") == 0) and _NEGATIVE_ZERO.search(raw):
        return parse_event_stdlib(raw)
    return event_from_dict(obj)


def parse_event_stdlib(raw: bytes | None) -> Event:
    """`parse_event` with the standard library's decoder: the reference, and the path that names
    why a message orjson refused is invalid."""
    if raw is None:
        raise InvalidEvent("not_json", "message has no value (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidEvent("not_utf8", f"byte {err.start} is not UTF-8") from None
    try:
        # parse_int=float: a 400-digit integer becomes inf (-> not_finite below) instead of an int that
        # overflows later, and the 4300-digit limit on int() never applies
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=float)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError) as err:
        raise InvalidEvent("not_json", str(err)[:120]) from None
    return event_from_dict(obj)

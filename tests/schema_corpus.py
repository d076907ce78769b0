"""Messages for the schema tests: a generator of events spelled as JSON text (random.Random API, so it
serves both the seeded end-to-end corpus and hypothesis' property test), mutations that break or keep the
contract (the oracle in tests/schema_oracle.py, not the mutation, says which), and the Tansu registry writer.
"""
from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from schema_oracle import DBL_MAX, FLOAT_EDGE, ID_FIELDS, ORJSON_MAX_DEPTH, TEXT_FIELDS, json_depth, load_schema
from streamer.events import MAX_ID_CHARS, MAX_MESSAGE_BYTES


# --- a message generator (random.Random API: seeded for the corpus, hypothesis' for the property) ---

NUMBER_SPELLINGS = (  # JSON text for ts or value; the oracle, not this list, says which are valid
    "NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "9" * 400, "-" + "9" * 400,
    "9" * 5000, str(int(DBL_MAX) + 1), str(-int(DBL_MAX) - 1), str(FLOAT_EDGE - 1), str(FLOAT_EDGE),
    str(int(DBL_MAX)), "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
    "-1.7976931348623157e+308", "-0", "-0.0", "0e0", "5e-324", "1e-400", "01", "+1", ".5", "1.", "0x10",
    "1_000", "1e", "--1", "1e308", "-1e308", "1704067200", "1704067200.5",
)
TS_STRINGS = (
    # impossible or malformed: both refuse
    "2023-02-29", "2100-02-29", "1900-02-29", "2024-02-30", "2024-04-31", "2024-06-31", "2024-13-01",
    "2024-00-10", "2024-01-00", "0000-01-01", "10000-01-01", "2024-01-01T24:00", "2024-01-01T24:00:00",
    "2024-01-01T23:60", "2024-01-01T23:59:60", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00-24:00",
    "2024-01-01T00:00:00.", "2024-01-01T", "2024-1-1", "2024-01", "2024", "yesterday", "", " ", "T",
    "2024-01-01T00:00:00+00:00Z", "2024-001", "2024-01-01T00:00:00 +00:00", "2024-01-01\ud800",
    "\u0662\u0660\u0662\u0664-01-01",
    # valid edges of the profile: both accept
    "2000-02-29", "1600-02-29", "2024-02-29T23:59:59.999999999+23:59", "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59", "0001-01-01", "9999-12-31", "2024-01-01 00:00", "2024-01-01T00:00Z",
    "2024-01-01T00:00:00-00:00", "2024-01-01\n",
    # the service's extra forms (TS_PROFILE)
    "20240101", "2024-W01-1", "2024W011", "2024-01-01T00", "2024-01-01t00:00", "2024-01-01x00:00",
    " 2024-01-01 ", "\t2024-01-01T00:00:00Z\n", "2024-01-01Z", "2024-01-01T00:00:00,5",
    "2024-01-01T00:00+0100", "2024-01-01T00:00:00+01:00:30", "2024-01-01+01:00", "2024-01-01T0000",
    "2024-01-01T00:00:00.5+01", "2024-01-01\u200300:00", "\u20032024-01-01",
)
BAD_UTF8 = (b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80",
            b"\xe2\x82")
TYPE_SWAPS = (True, False, None, [], [1, "a"], {}, {"k": 1}, 0, -1.5, 7, "text", "12")
SURROGATES = ("\ud800", "\udfff", "\ud83d", "\ude00")
RAW_SLOT = "\x00slot\x00"  # replaced by raw JSON text after spelling


def random_text(rng: random.Random, length: int, astral: bool = False) -> str:
    """`length` printable characters, some of them non-ASCII (astral ones if asked)."""
    pool = "abcxyz0189-_.:/ éßЖ中" + ("\U0001F600\U00010348" if astral else "")
    return "".join(rng.choice(pool) for _ in range(length))


def random_ts(rng: random.Random, index: int) -> float | int | str:
    """A ts inside the schema's profile: epoch seconds (int or float) or an RFC 3339 string."""
    base = 1_704_067_200 + 60 * index
    kind = rng.randrange(5)
    if kind == 0:
        return base
    if kind == 1:
        return base + rng.random()
    moment = datetime.fromtimestamp(base, timezone.utc)
    if kind == 2:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == 3:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f") + rng.choice(["", "Z", "+00:00", "-00:00"])
    return moment.strftime("%Y-%m-%dT%H:%M") + "Z"


def random_event(rng: random.Random, users: list[str], index: int) -> dict:
    """A schema-valid event (event_id unique per index) from a seeded generator."""
    event: dict = {"event_id": f"e{index}-{rng.randrange(10**6)}", "user_id": rng.choice(users),
                   "ts": random_ts(rng, index)}
    payload = rng.choice(("item", "value", "both"))
    if payload in ("item", "both"):
        event["item_id"] = rng.choice(["1", "2", "3", "i7", "never-seen", random_text(rng, 8)])
    if payload in ("value", "both"):
        event["value"] = rng.choice([float(rng.randrange(-50, 50)), rng.uniform(-1e3, 1e3), 0, 21.5])
    if rng.random() < 0.3:
        event["type"] = rng.choice(["view", "buy", "rating", None, ""])
    if rng.random() < 0.2:
        event["item_id" if "item_id" not in event else "value"] = None  # an explicit null: same as absent
    return event


def spell(obj: Any, rng: random.Random) -> bytes:
    """JSON text of obj, in one of several spellings (escaped or raw UTF-8, spaced or compact);
    a RAW_SLOT string is later replaced by raw JSON text (`with_text`)."""
    ascii_only = rng.random() < 0.5
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")])
    text = json.dumps(obj, ensure_ascii=ascii_only, separators=separators)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only the escaped spelling is UTF-8
        return json.dumps(obj, ensure_ascii=True, separators=separators).encode()


def _nested_text(depth: int, rng: random.Random) -> str:
    """JSON text nested `depth` arrays/objects deep (built as text: json.dumps would recurse)."""
    opens = [rng.choice(["[", '{"n":']) for _ in range(depth)]
    closes = ["]" if o == "[" else "}" for o in reversed(opens)]
    return "".join(opens) + rng.choice(["", "1"] if opens[-1] == "[" else ["1", '"x"']) + "".join(closes)


def _unknown_key(rng: random.Random, obj: dict) -> str:
    while True:
        key = rng.choice(["extra", "source", "meta", "props", "ts2", "Value", "EVENT_ID", "é", ""]) \
            + str(rng.randrange(100))
        if key not in obj and key not in load_schema("event")["properties"]:
            return key


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -7, 10**30, 1e300, -2.5e-300, rng.uniform(-1e9, 1e9)])
    if kind == 3:
        return random_text(rng, rng.randrange(12), astral=True)
    if kind == 4:
        return rng.choice(["", "2024-01-01", "null"])
    if kind in (5, 6):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng, 3): _json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def with_text(obj: dict, field: str, spelling: str, rng: random.Random) -> bytes:
    """obj spelled with `spelling` as the raw JSON text of `field` (a number as written, a deep nest)."""
    text = spell({**obj, field: RAW_SLOT}, rng)
    return text.replace(json.dumps(RAW_SLOT).encode(), spelling.encode(), 1)


def _pad_to(obj: dict, size: int, rng: random.Random) -> bytes:
    """obj with an unknown `pad` string, spelled compactly, exactly `size` bytes long."""
    base = json.dumps({**obj, "pad": ""}, separators=(",", ":"), ensure_ascii=True).encode()
    return json.dumps({**obj, "pad": "p" * max(0, size - len(base))}, separators=(",", ":"),
                      ensure_ascii=True).encode()


def mutate(obj: dict, rng: random.Random) -> bytes:
    """A message made from a valid event by one of the brief's mutations. Some results are still
    valid (an unknown field, a 128-character id, a null optional field): the oracle decides."""
    obj = dict(obj)
    kind = rng.randrange(18)
    if kind == 0:  # drop a required field
        obj.pop(rng.choice(["event_id", "user_id", "ts"]), None)
    elif kind == 1:  # another JSON type in a field
        obj[rng.choice(["event_id", "user_id", "ts", "item_id", "value", "type"])] = rng.choice(TYPE_SWAPS)
    elif kind == 2:  # id lengths: empty, 129 (refused), 128 (accepted), 128 astral characters (accepted)
        field = rng.choice(ID_FIELDS)
        obj[field] = rng.choice(["", random_text(rng, MAX_ID_CHARS + 1), random_text(rng, MAX_ID_CHARS),
                                 random_text(rng, MAX_ID_CHARS, astral=True), "\U0001F600" * MAX_ID_CHARS,
                                 "\U0001F600" * (MAX_ID_CHARS + 1)])
    elif kind == 3:  # numbers spelled in the JSON text (NaN, 1e999, 400 digits, the float edge, ...)
        return with_text(obj, rng.choice(["ts", "value"]), rng.choice(NUMBER_SPELLINGS), rng)
    elif kind == 4:  # ts strings: impossible dates, hour 24, the service's extra forms, random ones
        obj["ts"] = rng.choice(TS_STRINGS) if rng.random() < 0.7 else random_date_string(rng)
    elif kind == 5:  # no payload: item_id and value both removed or null
        for field in ("item_id", "value"):
            if rng.random() < 0.5:
                obj.pop(field, None)
            else:
                obj[field] = None
    elif kind == 6:  # not an object at the top level
        return spell(rng.choice([[obj], "event", 1704067200, None, True, [], 1.5]), rng)
    elif kind == 7:  # truncated JSON
        raw = spell(obj, rng)
        return raw[:rng.randrange(len(raw))]
    elif kind == 8:  # bytes that are not UTF-8, anywhere
        raw = spell(obj, rng)
        at = rng.randrange(len(raw) + 1)
        return raw[:at] + rng.choice(BAD_UTF8) + raw[at:]
    elif kind == 9:  # unknown fields (valid)
        for _ in range(rng.randrange(1, 4)):
            obj[_unknown_key(rng, obj)] = _json_value(rng)
    elif kind == 10:  # a lone surrogate in a string, known field or not
        target = rng.choice([*TEXT_FIELDS, "ts", "unknown key", "unknown value"])
        lone = rng.choice(SURROGATES)
        if target == "unknown key":
            obj[f"k{lone}"] = 1
        elif target == "unknown value":
            obj["note"] = f"n{lone}"
        else:
            obj[target] = f"{obj.get(target) if isinstance(obj.get(target), str) else 'x'}{lone}"
    elif kind == 11:  # sizes around the 64 KiB limit
        return _pad_to(obj, rng.choice([MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1,
                                        70_000]), rng)
    elif kind == 12:  # deep nesting in an unknown field (the document's depth is one more)
        depth = rng.choice([2, 30, ORJSON_MAX_DEPTH - 1, ORJSON_MAX_DEPTH, 3000])
        return with_text(obj, "nest", _nested_text(depth, rng), rng)
    elif kind == 13:  # a key given twice: the last one counts (both decoders)
        raw = spell(obj, rng)
        field = rng.choice(["user_id", "value", "ts", "event_id"])
        return raw[:-1] + b"," + json.dumps(field).encode() + b":" + json.dumps(rng.choice(TYPE_SWAPS)).encode() + b"}"
    elif kind == 14:  # around the text: whitespace (valid), a BOM, trailing garbage or comma
        raw = spell(obj, rng)
        return rng.choice([b" \n\t\r" + raw + b"\n ", b"\xef\xbb\xbf" + raw, raw + b"x", raw[:-1] + b",}",
                           raw + b" " + raw])
    elif kind == 15:  # null in a required field
        obj[rng.choice(["event_id", "user_id", "ts"])] = None
    elif kind == 16:  # nulls and empties in optional fields
        obj[rng.choice(["item_id", "value", "type"])] = rng.choice([None, "", 0])
    else:  # two mutations at once
        return _two(obj, rng)
    return spell(obj, rng)


def _two(obj: dict, rng: random.Random) -> bytes:
    """A field-level mutation on top of another one (both on the decoded object, where the first
    result still decodes to a shallow object)."""
    first = mutate(obj, rng)
    if json_depth(first) > 50:
        return first
    try:
        again = json.loads(first.decode("utf-8"))  # NaN and friends decode, and spell again as they were
    except ValueError:  # not UTF-8 (UnicodeDecodeError is one), not JSON, an integer past 4300 digits
        return first
    return mutate(again, rng) if isinstance(again, dict) else first


def random_date_string(rng: random.Random) -> str:
    """A date-time string with random fields in and out of range (the calendar's edges included)."""
    year = rng.choice([rng.randrange(0, 10000), 1900, 2000, 2100, 2023, 2024, 1600, 4])
    month, day = rng.randrange(0, 14), rng.choice([rng.randrange(0, 33), 28, 29, 30, 31])
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if rng.random() < 0.6:
        text += f"{rng.choice('T ')}{rng.randrange(0, 26):02d}:{rng.randrange(0, 62):02d}"
        if rng.random() < 0.5:
            text += f":{rng.randrange(0, 62):02d}"
        text += rng.choice(["", "Z", f"+{rng.randrange(0, 25):02d}:{rng.randrange(0, 61):02d}", "-05:30"])
    return text


def corpus(seed: int, users: list[str], valid: int, mutated: int) -> list[bytes]:
    """A deterministic mix of messages: `valid` schema-valid events (the schema's own examples among
    them) and `mutated` mutations of others, in a seeded order. Mutations that stay valid keep a
    unique event_id."""
    rng = random.Random(seed)
    examples = [dict(e, event_id=f"{e['event_id']}-{seed}", user_id=users[i % len(users)])
                for i, e in enumerate(load_schema("event")["examples"])]
    messages = [spell(e, rng) for e in examples]
    messages += [spell(random_event(rng, users, i), rng) for i in range(len(examples), valid)]
    for i in range(mutated):
        base = random_event(rng, users, valid + i)
        base["event_id"] = f"m{i}-{rng.randrange(10**6)}"
        messages.append(mutate(base, rng))
    rng.shuffle(messages)
    return messages


# --- Tansu's schema registry ----------------------------------------------------------------------------

def write_tansu_registry(directory: Path, value_schemas: Mapping[str, dict]) -> list[Path]:
    """`<topic>.json` for each topic, as `tansu broker --schema-registry file://DIR` reads it: the product's
    own writer (training.broker_schema), which `seqcast dev --validate` uses."""
    from training.broker_schema import write_registry

    return write_registry(directory, value_schemas)

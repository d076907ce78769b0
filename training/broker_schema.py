"""Broker-side validation with Tansu: a schema registry directory built from the shipped message schemas.

Tansu (`tansu broker --schema-registry file://DIR`) validates every produced record of a topic that has a
`<topic>.json` in DIR, and refuses the whole produce request with INVALID_RECORD (87) when one record breaks
it. Tansu 0.6 reads that file as a schema of the record, not of its value: `properties.value` judges the
value and `properties.key` the key. So the message schema goes under `properties.value` (the plain event
schema would be misread: its own `value` field's schema would judge the whole message), and no key schema is
written, because seqcast's keys are raw user ids, not JSON. A file Tansu cannot compile is silently ignored
(everything accepted): tests/test_broker_schema.py checks that this one makes it refuse.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas" / "v1"


def shipped_schema(name: str) -> dict:
    """schemas/v1/<name>.schema.json of this checkout, as a dict."""
    path = SCHEMAS_DIR / f"{name}.schema.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the schemas ship with the seqcast source tree (schemas/v1), "
                         "run from a checkout") from None


def write_registry(directory: Path, value_schemas: Mapping[str, dict]) -> list[Path]:
    """Write `<topic>.json` for each topic, wrapping its message schema as Tansu reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, schema in value_schemas.items():
        path = directory / f"{topic}.json"
        path.write_text(json.dumps({"type": "object", "properties": {"value": schema}}, indent=1), encoding="utf-8")
        written.append(path)
    return written


def write_event_registry(directory: Path, topic: str) -> Path:
    """A registry directory in which `topic` is checked against the shipped event schema."""
    write_registry(directory, {topic: shipped_schema("event")})
    return directory

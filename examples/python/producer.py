#!/usr/bin/env python3
"""Send seqcast events to Kafka: JSON lines from a file or stdin (and/or --demo N made-up ones).

Each event is checked against schemas/v1/event.schema.json before it is sent; an invalid one
is refused here (message on stderr), so it never reaches the service's dead-letter topic.
Requires: pip install confluent-kafka jsonschema
"""
from __future__ import annotations

import argparse
import fileinput
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

SCHEMA = Path(__file__).resolve().parent.parent.parent / "schemas" / "v1" / "event.schema.json"
MAX_BYTES = 64 * 1024  # the service refuses larger messages (a limit JSON Schema cannot state)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Validate seqcast events and send them to Kafka (key = user_id).",
        epilog="Exit status: 0 all sent, 1 some refused as invalid, 2 some not delivered.")
    parser.add_argument("file", nargs="?", help="JSON lines to send ('-' = stdin; default: stdin unless --demo)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
                        help="broker list (default: $KAFKA_BOOTSTRAP or localhost:9092)")
    parser.add_argument("--topic", default="events", help="topic to send to (default: events)")
    parser.add_argument("--schema", type=Path, default=SCHEMA, help="event JSON Schema (default: %(default)s)")
    parser.add_argument("--demo", type=int, default=0, metavar="N", help="also send N generated demo events")
    parser.add_argument("--check", action="store_true",
                        help="only validate: print 'N<TAB>accept' or 'N<TAB>reject<TAB>why' per line, send nothing")
    return parser.parse_args()


def demo_events(n: int):
    """(label, line) pairs of made-up events."""
    run = uuid.uuid4().hex[:8]  # unique ids per run: a repeated event_id is treated as a replay
    for i in range(n):
        event = {"event_id": f"demo-{run}-{i}", "user_id": f"demo-user-{i % 3}", "ts": time.time(),
                 "item_id": ["1196", "260", "2571", "1210"][i % 4], "value": round(random.uniform(1, 5), 1),
                 "type": "rating"}
        yield f"demo {i + 1}", json.dumps(event)


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; Kafka consumers won't


def check(line: str, validator: Draft202012Validator) -> tuple[dict | None, bytes | str]:
    """(event, bytes to send), or (None, why it is refused)."""
    try:
        event = json.loads(line, parse_constant=_no_constants)
    except ValueError as err:
        return None, f"not JSON: {err}"
    error = best_match(validator.iter_errors(event))
    if error is not None:
        return None, f"{error.message} (at {error.json_path})"
    try:
        value = json.dumps(event, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, "a string holds a lone surrogate (not UTF-8)"
    return (event, value) if len(value) <= MAX_BYTES else (None, f"{len(value)} bytes > {MAX_BYTES}")


def main() -> int:
    args = parse_args()
    validator = Draft202012Validator(json.loads(args.schema.read_text()))
    lines = demo_events(args.demo)  # (label, text): "demo N" or the input's line number
    if args.file or not args.demo:
        source = fileinput.input(files=(args.file or "-",), encoding="utf-8")  # "-" is stdin
        lines = (item for chunk in (lines, enumerate(source, 1)) for item in chunk)
    producer = None if args.check else Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",                # the write is on every in-sync replica before it counts as delivered
        "enable.idempotence": True,   # a retried send cannot duplicate or reorder messages of one partition
        # murmur2, the Java client's and kafkajs's key->partition mapping (librdkafka's default differs):
        # a user's events land on the same partition whichever client sent them
        "partitioner": "murmur2_random",
        "linger.ms": 5,
    })
    sent, refused, failed = 0, 0, 0

    def on_delivery(err, msg) -> None:  # called from poll()/flush(), once per message
        nonlocal failed
        if err is not None:
            failed += 1
            print(f"delivery failed for key {msg.key()!r}: {err}", file=sys.stderr)

    for label, line in lines:
        if not line.strip():
            continue
        event, value = check(line, validator)
        refused += event is None
        if args.check:
            print(f"{label}\taccept" if event is not None else f"{label}\treject\t{value}")
        elif event is None:
            print(f"line {label}: refused: {value}", file=sys.stderr)
        else:
            while True:
                try:  # key = user_id: one user's events stay in order on one partition
                    producer.produce(args.topic, value, event["user_id"].encode("utf-8"), on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then retry
                    producer.poll(0.5)
            sent += 1
            producer.poll(0)  # serve delivery callbacks
    if producer is not None:
        failed += producer.flush(30)  # messages still undelivered after 30 s count as failed
        print(f"sent {sent - failed}, refused {refused}, failed {failed}", file=sys.stderr)
    return 2 if failed else 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Read seqcast predictions in a consumer group, once per event_id, and print them.

Delivery is at-least-once: after a service crash, a rebalance or a broker outage the same
prediction (same event_id, same content) can arrive again, so this keeps the first per
event_id and drops the rest.
Requires: pip install confluent-kafka
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections import OrderedDict

from confluent_kafka import Consumer, KafkaError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Print seqcast predictions, deduplicated by event_id.")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"),
                        help="broker list (default: $KAFKA_BOOTSTRAP or localhost:9092)")
    parser.add_argument("--topic", default="predictions", help="topic to read (default: predictions)")
    parser.add_argument("--group", default="seqcast-example-consumer", help="consumer group id (default: %(default)s)")
    parser.add_argument("--dedup-window", type=int, default=100_000, metavar="N",
                        help="remember the last N event_ids (default: 100000)")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="stop after N new predictions (0: never)")
    parser.add_argument("--json", action="store_true", help="print each prediction as one JSON line")
    parser.add_argument("--session-timeout-ms", type=int, default=45_000,
                        help="group session timeout (default: 45000; on Tansu a group join takes about half)")
    return parser.parse_args()


class SeenIds:
    """The last `size` event_ids, least recently seen dropped first.

    Bounded is enough: a prediction comes again only from the stretch the service had not
    committed when it crashed or lost its partitions (seconds of traffic), so a duplicate is
    never more than that many messages behind its first copy. Size the window well above the
    predictions of that stretch (the default covers 100,000).
    """

    def __init__(self, size: int) -> None:
        self.size, self.ids = size, OrderedDict()

    def first_time(self, event_id: str) -> bool:
        if event_id in self.ids:
            self.ids.move_to_end(event_id)
            return False
        self.ids[event_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True


def line(prediction: dict) -> str:
    top3 = ",".join(r["item_id"] for r in prediction.get("recommendations", [])[:3]) or "-"
    forecast = prediction.get("forecast") or [None]  # a head the model lacks is absent; a step may be null
    return f"{prediction['event_id']}\t{prediction['user_id']}\ttop3={top3}\tforecast0={forecast[0]}"


def main() -> int:
    args = parse_args()
    # At-least-once. Offsets are *stored* only after a message is handled (printed or dropped as a
    # duplicate) and the client auto-commits stored offsets every 5 s and on close(). A crash loses
    # at most 5 s of commits: those messages are read again and the dedup window drops them. This
    # costs no commit round trip per message (enable.auto.commit=false + commit() after each one
    # would, or would need hand-made batching).
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # we call store_offsets() after handling each message
        "auto.offset.reset": "earliest",    # a new group starts at the beginning; a known one resumes
        "session.timeout.ms": args.session_timeout_ms,
    })
    # Ctrl-C and `kill` ask for a stop, which happens between messages: the one being handled is finished
    # and its offset stored, so close() commits exactly what was printed.
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    seen, printed = SeenIds(args.dedup_window), 0
    try:
        consumer.subscribe([args.topic])
        while not stopping and (not args.limit or printed < args.limit):
            msg = consumer.poll(0.5)  # at most this long between a Ctrl-C and the stop
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"consumer error: {msg.error()}", file=sys.stderr)
                continue
            try:
                prediction = json.loads(msg.value())
                event_id = prediction["event_id"]
            except (TypeError, ValueError, KeyError) as err:  # not ours: skip it rather than stop
                print(f"skipped offset {msg.offset()}: {err!r}", file=sys.stderr)
                consumer.store_offsets(message=msg)
                continue
            if seen.first_time(event_id):
                print(json.dumps(prediction) if args.json else line(prediction), flush=True)
                printed += 1
            consumer.store_offsets(message=msg)  # handled: may be committed now
    finally:
        consumer.close()  # commits the stored offsets and leaves the group (no wait for a session timeout)
    print(f"{printed} predictions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

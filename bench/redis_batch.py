"""CPU per event of the service's Redis work (windows + live-accuracy read + write), before vs after.

Why: issue 11 needs ~100 µs per event for the whole service process and Redis
shares the same two cores, so both the client-side and the server-side cost of
the per-batch Redis steps are measured here, on the same Redis, in one run:
  - service CPU (this thread's CPU time, time.thread_time) for the window call and
    for LiveScorer.score, per event;
  - Redis CPU: utime+stime of the redis-server process (/proc/<pid>/stat) over the
    measured batches, per event. By default the script starts a private redis-server
    (same binary as the shared one) so that nobody else's traffic counts in it;
    --shared-redis uses 127.0.0.1:6379 instead (find its pid with pgrep).

Each code tree (e.g. `--before /tmp/wt-redis`, a `git worktree add /tmp/wt-redis HEAD`,
and `--after .`) runs in its own subprocess that imports `streamer` from that
tree. The scenario is realistic steady state: `--users` users whose windows are
pre-filled to `--prefill` events (written directly in the stored layout, version 2,
which both trees share) and who all hold a live-accuracy mark; then `--batches`
batches of `--batch` events over random users and `--items` items, in event-time order.

    .venv/bin/python bench/redis_batch.py --before /tmp/wt-redis --after .
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path


def redis_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pid(port: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"redis-server.*[: ]{port}\\b"], capture_output=True, text=True).stdout.split()
    if not out:
        raise SystemExit(f"no redis-server process listening on :{port} found with pgrep")
    return int(out[0])


def worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import redis
    from prometheus_client import CollectorRegistry

    from streamer.events import Event
    from streamer.live_accuracy import LiveScorer
    from streamer.metrics import Metrics
    from streamer.predict import Scored
    from streamer.window_store import WindowStore, payload

    client = redis.Redis(host=args.host, port=args.port, socket_timeout=30)
    prefix = f"bench-rb-{os.getpid()}"
    rng = random.Random(args.seed)
    users = [f"user-{u}" for u in range(args.users)]
    items = [f"item-{i}" for i in range(args.items)]
    store = WindowStore(client, prefix, args.window, 3600, args.slack)
    live = LiveScorer(client, prefix, 3600, Metrics.create(CollectorRegistry()))
    batched = hasattr(store, "append_and_read_marks")

    # pre-fill the windows in the stored layout (ts, value, arrival, item), and one mark per user
    pipe = client.pipeline(transaction=False)
    t = 1_000_000.0
    for n, user in enumerate(users):
        zkey, hkey = store.keys(user)
        members, fields = {}, {"": args.prefill}
        for k in range(args.prefill):
            event = Event(f"p{n}-{k}", user, t + k, rng.choice(items), rng.gauss(0, 1))
            raw = payload(event)
            members[event.event_id] = event.ts
            fields[event.event_id] = raw[:16] + struct.pack("<d", k + 1) + raw[16:]
        pipe.zadd(zkey, members)
        pipe.hset(hkey, mapping=fields)
        pipe.expire(zkey, 3600)
        pipe.expire(hkey, 3600)
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()

    def body(event: Event) -> dict:
        recs = [{"item_id": i, "score": rng.random()} for i in rng.sample(items, args.top_k)]
        return {"forecast": [rng.gauss(0, 1), rng.gauss(0, 1)], "recommendations": recs}

    t = 2_000_000.0
    for start in range(0, args.users, args.batch):
        marks_batch = [Event(f"m-{u}", u, t, None, 0.0) for u in users[start:start + args.batch]]
        live.score([Scored(e, "primary", "v1", body(e), 1.0) for e in marks_batch])

    def batch_events(b: int) -> list[Event]:
        base = 3_000_000.0 + b * args.batch
        return [Event(f"b{b}-{k}", rng.choice(users), base + k, rng.choice(items), rng.gauss(0, 1))
                for k in range(args.batch)]

    pid = args.redis_pid or redis_pid(args.port)
    cpu = {"windows": 0.0, "live": 0.0}
    wall = {"windows": 0.0, "live": 0.0}
    redis_s = 0.0
    counted = 0
    for b in range(args.warmup + args.batches):
        events = batch_events(b)
        r0, w0, c0 = redis_cpu_s(pid), time.perf_counter(), time.thread_time()
        if batched:
            windows, marks = store.append_and_read_marks(events)
        else:
            windows, marks = store.append_and_read(events), None
        w1, c1 = time.perf_counter(), time.thread_time()
        assert len(windows) == len(events)
        scored = [Scored(e, "primary", "v1", body(e), 1.0) for e in events]
        w2, c2 = time.perf_counter(), time.thread_time()
        if batched:
            live.score(scored, marks)
        else:
            live.score(scored)
        w3, c3, r3 = time.perf_counter(), time.thread_time(), redis_cpu_s(pid)
        if b < args.warmup:
            continue
        counted += len(events)
        cpu["windows"] += c1 - c0
        cpu["live"] += c3 - c2
        wall["windows"] += w1 - w0
        wall["live"] += w3 - w2
        redis_s += r3 - r0
    keys = list(client.scan_iter(match=f"{prefix}:*", count=2000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])
    us = lambda s: round(s / counted * 1e6, 1)
    import streamer

    return {"tree": args.tree, "streamer": str(Path(streamer.__file__).parent), "batched_api": batched, "events": counted,
            "service_cpu_us": {"windows": us(cpu["windows"]), "live": us(cpu["live"]),
                               "total": us(cpu["windows"] + cpu["live"])},
            "service_wall_us": {"windows": us(wall["windows"]), "live": us(wall["live"])},
            "redis_cpu_us": us(redis_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="code tree of the baseline (e.g. a worktree of HEAD)")
    parser.add_argument("--after", default=".", help="code tree to compare (default: this checkout)")
    parser.add_argument("--tree", help=argparse.SUPPRESS)  # worker mode: measure one tree, print JSON
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379, help="with --shared-redis: the Redis to use")
    parser.add_argument("--shared-redis", dest="own_redis", action="store_false",
                        help="use the Redis at --host:--port instead of starting a private redis-server")
    parser.add_argument("--redis-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--window", type=int, default=50, help="window_len L")
    parser.add_argument("--slack", type=int, default=32, help="window_slack (the service default)")
    parser.add_argument("--prefill", type=int, default=50, help="stored events per user before the run")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="alternate before/after this many times")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.tree:
        print(json.dumps(worker(args)))
        return
    trees = [t for t in (args.before, args.after) if t]
    passthrough = [a for a in sys.argv[1:]]
    server = None
    if args.own_redis:  # a private server: another client of a shared Redis would count in its CPU
        import shutil

        from streamer.embedded import free_port, wait_for_port

        args.port = free_port()
        server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(args.port),
                                   "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(args.port)
        passthrough += ["--port", str(args.port), "--shared-redis", "--redis-pid", str(server.pid)]
    rows = []
    try:
        for _ in range(args.repeat):
            for tree in trees:
                out = subprocess.run([sys.executable, __file__, *passthrough, "--tree", tree],
                                     capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
    print(f"\n{'tree':<20} {'svc windows':>12} {'svc live':>9} {'svc total':>10} {'redis':>7}   (CPU µs/event)")
    for r in rows:
        s = r["service_cpu_us"]
        print(f"{r['tree']:<20} {s['windows']:>12} {s['live']:>9} {s['total']:>10} {r['redis_cpu_us']:>7}")


if __name__ == "__main__":
    main()

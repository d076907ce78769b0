"""The soak: many users with full windows, streamed by one member, memory watched all along.

Every user's window is first filled to its bound (L + slack events, written through the real
window store), so the stream runs at the steady state where each new event trims an old one.
Then `per_user` events per user are streamed through one member while its RSS is sampled; Redis
memory is read before the preload, after it and at the end. Reported: RSS at the start, at a
quarter of the stream and at the end (growth after warm-up is the leak indicator), and Redis bytes
per user (INFO used_memory delta, and MEMORY USAGE of a sample of users' keys).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from bench.chaos.harness import ChaosRun, Row
from bench.chaos.workload import event_messages, valid_events
from streamer.events import Event

PRELOAD_BATCH = 5000
RSS_GROWTH_LIMIT = 0.25  # RSS may grow this much after the first quarter of the stream before it is a finding


def preload(run: ChaosRun, users: list[str], say) -> int:
    """Fill every user's window to keep = L + slack with older events (same store, same script)."""
    store = run.store(run.prefix)
    keep = store.keep
    rng = np.random.default_rng(7)
    written, batch = 0, []
    for n, user in enumerate(users):
        base = 1_600_000_000.0 + n
        for k in range(keep):
            batch.append(Event(f"pre-{n}-{k}", user, base + 60.0 * k, f"i{int(rng.integers(50))}", float(k % 9)))
        if len(batch) >= PRELOAD_BATCH:
            store.append_and_read(batch)
            written += len(batch)
            batch = []
        if (n + 1) % 10_000 == 0:
            say(f"soak: preloaded {n + 1}/{len(users)} users")
    if batch:
        store.append_and_read(batch)
        written += len(batch)
    return written


def redis_bytes_per_user(run: ChaosRun, users: list[str], sample: int = 200) -> float:
    client = run.redis.client()
    picked = users[:: max(1, len(users) // sample)][:sample]
    total = 0
    for user in picked:
        for suffix in ("win", "ev", "last"):
            total += client.memory_usage(f"{run.prefix}:{{{user}}}:{suffix}", samples=0) or 0
    return total / len(picked)


class RssSampler(threading.Thread):
    def __init__(self, member, every_s: float) -> None:
        super().__init__(daemon=True)
        self.member, self.every_s = member, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(self.every_s):
            if self.member.alive():
                self.samples.append((time.monotonic() - started, self.member.rss_bytes()))


def run_soak(ctx, p: dict) -> Row:
    run = ChaosRun("soak", ctx.soak_bundle, ctx.work_dir, partitions=2, max_poll_records=500)
    try:
        events = valid_events(p["users"], p["per_user"], seed=6, late=0.0, ties=0.0, duplicates=0.0, extremes=0)
        users = sorted({e.user_id for e in events})
        client = run.redis.client()
        before = client.info("memory")["used_memory"]
        t0 = time.monotonic()
        preloaded = preload(run, users, ctx.say)
        after_preload = client.info("memory")["used_memory"]
        ctx.say(f"soak: {preloaded} events preloaded in {time.monotonic() - t0:.0f}s")
        member = run.fleet.start()
        run.fleet.wait_ready()
        sampler = RssSampler(member, p["sample_s"])
        sampler.start()
        stream_started = time.monotonic()
        run.feed(event_messages(events), 0)
        verdict = run.finish(compare_state=False)
        stream_s = time.monotonic() - stream_started
        sampler.stop.set()
        end_memory = client.info("memory")["used_memory"]
        per_user = redis_bytes_per_user(run, users)
        rss = [b for _, b in sampler.samples] or [0]
        quarter = rss[len(rss) // 4]
        growth = (rss[-1] - quarter) / quarter if quarter else 0.0
        notes = [f"{len(users)} users, windows preloaded to {run.store(run.prefix).keep} events each "
                 f"({preloaded} events, {(after_preload - before) / len(users):.0f} B/user of used_memory)",
                 f"stream of {len(events)} events in {stream_s:.0f}s ({len(events) / stream_s:.0f} events/s "
                 f"end to end, feed and checks included)",
                 f"member RSS MiB: start {rss[0] / 2**20:.0f}, quarter {quarter / 2**20:.0f}, "
                 f"peak {max(rss) / 2**20:.0f}, end {rss[-1] / 2**20:.0f} (growth after the first quarter "
                 f"{growth:+.1%}; {len(rss)} samples)",
                 f"Redis: {per_user:.0f} B/user by MEMORY USAGE (window, payloads, last prediction); "
                 f"used_memory {before / 2**20:.0f} -> {after_preload / 2**20:.0f} -> {end_memory / 2**20:.0f} MiB"]
        if growth > RSS_GROWTH_LIMIT:
            run.notes.append(f"RSS grew {growth:.0%} after the first quarter of the stream")
        row = run.row(verdict, f"{len(events)} events, {len(users)} users, full windows", notes)
        row.extra = {"rss_samples": sampler.samples, "redis_bytes_per_user": per_user}
        return row
    finally:
        run.close()

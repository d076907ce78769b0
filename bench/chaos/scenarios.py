"""The chaos scenarios: what each one breaks, how often, and what it measures on the way.

Each takes a `ChaosRun`-building context (`bundle`, `work_dir`) and a size ("ci": a short run
for every CI build; "full": the figures in docs/reliability.md) and returns a `Row`.
- killer: SIGKILL the only member at random moments mid-stream, restart it each time;
- rebalance: 3 members on 6 partitions; members are killed, stopped (SIGTERM) and added;
- redis: the Redis the members use goes away (a clean shutdown, AOF kept) twice;
- broker: the broker is cut off (connections reset and refused) and then hangs (SIGSTOP);
- poison: labelled poison and hypothesis-generated messages mixed into valid traffic;
- soak: many users with full windows (L=50) streamed by one member; RSS and Redis bytes per user.
"""
from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.chaos.harness import ChaosRun, Row
from bench.chaos.infra import Member
from bench.chaos.workload import (event_messages, generated_poison, interleave, labelled_poison, valid_events)

SIZES: dict[str, dict[str, dict]] = {
    "killer": {"ci": dict(users=60, per_user=50, rate=50, kills=5),
               "full": dict(users=300, per_user=100, rate=100, kills=25)},
    "rebalance": {"ci": dict(users=120, per_user=40, rate=70, changes=10),
                  "full": dict(users=300, per_user=100, rate=100, changes=30)},
    "redis": {"ci": dict(users=80, per_user=60, rate=100, outages=(10, 35)),
              "full": dict(users=200, per_user=100, rate=100, outages=(10, 120))},
    "broker": {"ci": dict(users=80, per_user=50, rate=100, cut_s=15, hang_s=15),
               "full": dict(users=200, per_user=100, rate=100, cut_s=60, hang_s=30)},
    "poison": {"ci": dict(generated=2000, users=40, per_user=50, rate=0, big=False),
               "full": dict(generated=10_000, users=200, per_user=50, rate=0, big=True)},
    "soak": {"ci": dict(users=2000, per_user=10, sample_s=2.0),
             "full": dict(users=100_000, per_user=10, sample_s=10.0)},
}


@dataclass
class Context:
    bundle: Path  # a small bundle for the delivery scenarios
    soak_bundle: Path  # an L=50 bundle for the soak
    work_dir: Path
    say: Callable[[str], None] = print


def killer(ctx: Context, size: str) -> Row:
    p = SIZES["killer"][size]
    run = ChaosRun("killer", ctx.bundle, ctx.work_dir, partitions=2, max_poll_records=50)
    try:
        rng = random.Random(1)
        member = run.fleet.start()
        run.fleet.wait_ready()
        run.feed(event_messages(valid_events(p["users"], p["per_user"], seed=1)), p["rate"])
        kills = 0
        while kills < p["kills"]:
            time.sleep(rng.uniform(0.5, 3.0))
            member.signal(signal.SIGKILL)
            member.proc.wait()
            kills += 1
            ctx.say(f"killer: SIGKILL {kills}/{p['kills']} (fed {run.feeder.sent})")
            member = run.fleet.start()
            run.fleet.wait_ready([member])
        if not run.feeder.is_alive():
            run.notes.append("the feed ended before the last kill")
        return run.row(run.finish(), f"{kills} SIGKILL")
    finally:
        run.close()


def rebalance(ctx: Context, size: str) -> Row:
    """Membership changes at random moments, some while the previous rebalance is still going."""
    p = SIZES["rebalance"][size]
    run = ChaosRun("rebalance", ctx.bundle, ctx.work_dir, partitions=6, max_poll_records=100)
    try:
        rng = random.Random(2)
        for _ in range(3):
            run.fleet.start()
        run.fleet.wait_ready()
        run.feed(event_messages(valid_events(p["users"], p["per_user"], seed=2)), p["rate"])
        changes: list[str] = []
        recoveries: list[float] = []
        since = time.time()  # of the last membership change
        while len(changes) < p["changes"]:
            pause = rng.uniform(2.0, 7.0)
            if changes:  # time from the last change until the live members own every partition again
                took = _until_assigned(run.fleet, since, 6, pause)
                if took is not None:
                    recoveries.append(took)
                time.sleep(max(0.0, pause - (took or pause)))
            else:
                time.sleep(pause)
            alive = run.fleet.alive()
            action = rng.choice(["kill", "term", "add"]) if 2 <= len(alive) <= 3 else \
                ("add" if len(alive) < 2 else rng.choice(["kill", "term"]))
            if action == "add":
                run.fleet.start()
            else:
                rng.choice(alive).signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
            changes.append(action)
            since = time.time()
            ctx.say(f"rebalance: {action} ({len(changes)}/{p['changes']}; fed {run.feeder.sent})")
        if not run.feeder.is_alive():
            run.notes.append("the feed ended before the last membership change")
        if not run.fleet.alive():
            run.fleet.start()
        counts = {a: changes.count(a) for a in ("kill", "term", "add")}
        faults = f"{len(changes)} membership changes ({counts['kill']} kill, {counts['term']} SIGTERM, " \
                 f"{counts['add']} add)"
        recoveries.sort()
        note = (f"every partition owned again after a change: median {recoveries[len(recoveries) // 2]:.1f}s, "
                f"max {recoveries[-1]:.1f}s over {len(recoveries)} changes (session timeout 3 s); "
                f"{len(changes) - 1 - len(recoveries)} changes came before the previous one settled"
                if recoveries else "no change settled before the next one")
        return run.row(run.finish(), faults, [note])
    finally:
        run.close()


def _until_assigned(fleet, since: float, partitions: int, timeout_s: float) -> float | None:
    """Seconds after `since` until the live members' latest assignments (logged after `since`) cover
    every partition, watched for at most timeout_s; None if they did not within it."""
    import json

    while time.time() - since < timeout_s:
        owned: set[int] = set()
        for member in fleet.alive():
            latest: list[int] = []
            for line in member.log_path.read_text(errors="replace").splitlines():
                if '"partitions assigned"' in line or '"partitions revoked"' in line:
                    entry = json.loads(line)
                    if entry["ts"] > since:
                        latest = entry["partitions"] if entry["msg"] == "partitions assigned" else []
            owned |= set(latest)
        if len(owned) == partitions:
            return round(time.time() - since, 1)
        time.sleep(0.2)
    return None


def _watch(members: list[Member], want: Callable[[int, dict], bool], timeout_s: float) -> float | None:
    """Seconds until every member's /healthz satisfies `want`, or None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(want(*m.healthz()) for m in members):
            return round(time.monotonic() - started, 1)
        time.sleep(0.25)
    return None


def redis(ctx: Context, size: str) -> Row:
    p = SIZES["redis"][size]
    run = ChaosRun("redis", ctx.bundle, ctx.work_dir, partitions=2, max_poll_records=100)
    try:
        members = [run.fleet.start(), run.fleet.start()]
        run.fleet.wait_ready()
        run.feed(event_messages(valid_events(p["users"], p["per_user"], seed=3)), p["rate"])
        notes = []
        for outage_s in p["outages"]:
            time.sleep(3)
            run.redis.stop()
            down = _watch(members, lambda code, body: code == 503 and body.get("redis") is False, 15)
            time.sleep(outage_s)
            alive = all(m.alive() for m in members)
            run.redis.start()
            back = _watch(members, lambda code, body: code == 200, 60)
            notes.append(f"{outage_s}s outage: /healthz 503 after {down}s, 200 again {back}s after Redis "
                         f"returned; members alive through it: {alive}")
            ctx.say(f"redis: {notes[-1]}")
            if down is None or back is None or not alive:
                run.notes.append(notes[-1])
        faults = " + ".join(f"{s}s" for s in p["outages"]) + " Redis outages"
        return run.row(run.finish(), faults, notes)
    finally:
        run.close()


def broker(ctx: Context, size: str) -> Row:
    p = SIZES["broker"][size]
    run = ChaosRun("broker", ctx.bundle, ctx.work_dir, partitions=2, proxied=True, max_poll_records=100)
    try:
        member = run.fleet.start()
        run.fleet.wait_ready()
        outage = {"on": False}
        run.feed(event_messages(valid_events(p["users"], p["per_user"], seed=4)), p["rate"],
                 paused=lambda: outage["on"])
        notes = []
        for kind, seconds, start, end in (("cut", p["cut_s"], run.broker.cut, run.broker.restore),
                                          ("hang", p["hang_s"], run.broker.hang, run.broker.resume)):
            time.sleep(4)
            outage["on"] = True
            start()
            down = _watch([member], lambda code, body: code == 503 and body.get("broker") is False, seconds)
            time.sleep(max(0.0, seconds - (down or seconds)))
            end()
            outage["on"] = False
            back = _watch([member], lambda code, body: code == 200, 60)
            notes.append(f"broker {kind} for {seconds}s: /healthz 503 (broker false) after {down}s, "
                         f"200 again {back}s after it returned; member alive: {member.alive()}")
            ctx.say(f"broker: {notes[-1]}")
            if down is None or back is None or not member.alive():
                run.notes.append(notes[-1])
        return run.row(run.finish(), f"broker cut {p['cut_s']}s + hung (SIGSTOP) {p['hang_s']}s", notes)
    finally:
        run.close()


def poison(ctx: Context, size: str) -> Row:
    p = SIZES["poison"][size]
    run = ChaosRun("poison", ctx.bundle, ctx.work_dir, partitions=2, max_poll_records=200)
    try:
        labelled = labelled_poison(1_000_000, p["big"])
        corpus = labelled + generated_poison(p["generated"], seed=5)
        valid = event_messages(valid_events(p["users"], p["per_user"], seed=5))
        run.fleet.start()
        run.fleet.start()
        run.fleet.wait_ready()
        run.feed(interleave(valid, corpus, seed=5), p["rate"])
        labels = {m.value: m.reason for m in labelled}
        faults = f"{len(corpus)} poison messages ({len(labelled)} labelled, {p['generated']} generated)"
        return run.row(run.finish(labels), faults)
    finally:
        run.close()


def soak(ctx: Context, size: str) -> Row:
    from bench.chaos.soak import run_soak

    return run_soak(ctx, SIZES["soak"][size])


SCENARIOS: dict[str, Callable[[Context, str], Row]] = {
    "killer": killer, "rebalance": rebalance, "redis": redis, "broker": broker, "poison": poison, "soak": soak,
}

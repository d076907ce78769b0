"""The service runs: sustained (drain a backlog), a consumer group draining it, and fixed-rate feeds.

Every run starts real `seqcast serve` subprocesses (bench.stream.infra.ServiceRun) with the Kafka
client under test (SEQCAST_KAFKA_CLIENT), and charges CPU seconds per 1k events to the services,
Redis and the Tansu broker between the first and the last prediction.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from bench.stream.common import pct, summary
from bench.stream.feed import PacedProducer
from bench.stream.infra import Context, CpuSampler, ServiceRun
from streamer.events import Event


def predictions(records) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(record timestamps in s, latency_ms, parsed bodies) of prediction records."""
    bodies = [json.loads(r.value) for r in records]
    return (np.array([r.timestamp_ms / 1000 for r in records]), np.array([b["latency_ms"] for b in bodies]), bodies)


def cpu_fields(sampler: CpuSampler, first: float, last: float, events: int) -> dict:
    """The CPU columns of a run: the services' s / 1k events, and Tansu's and Redis' beside them."""
    cpu = sampler.per_1k(first, last, events)
    return {"cpu_s_per_1k": cpu["service"], "cpu_s_per_1k_other": {"tansu": cpu["tansu"], "redis": cpu["redis"]},
            "machine": sampler.machine_between(first, last)}


def group_services(ctx: Context, bundle: str, prefix: str, topic: str, name: str, procs: int,
                   client: str | None) -> list[ServiceRun]:
    """`procs` services in ONE consumer group (a real join, not assign_all_partitions)."""
    group_id = f"bench-group-{uuid.uuid4().hex[:6]}"
    return [ServiceRun(ctx, bundle, prefix, topic, f"{name}-{i}", client=client, group_id=group_id,
                       assign_all_partitions="false", session_timeout_ms=6000) for i in range(procs)]


def sustained(ctx: Context, arch: str, bundle: str, prefix: str, topic: str, n: int,
              client: str | None = None) -> dict:
    """One service (assign_all_partitions) drains an n-event backlog; events/s first to last prediction."""
    service = ServiceRun(ctx, bundle, prefix, topic, f"sustained-{arch}-{client}", client=client)
    sampler = ctx.sampler(service)
    try:
        service.wait_emitted(n, timeout_s=max(180.0, n / 300))
    finally:
        sampler.stop()
        code = service.stop()
    records = ctx.read(service.output_topic, n)
    ts, latency, _ = predictions(records)
    first, last = float(ts.min()), float(ts.max())
    span = max(last - first, 1e-3)
    return {"path": "sustained (backlog)", "client": client, "events": len(records), "seconds": round(span, 2),
            "events_per_s": round(len(records) / span, 1), "latency_ms": summary(latency),
            **cpu_fields(sampler, first, last, len(records)), "exit_code": code,
            "service_progress": [r for r in service.logs() if r.get("msg") == "progress"][-3:]}


def group(ctx: Context, arch: str, bundle: str, prefix: str, topic: str, n: int, procs: int,
          client: str | None = None) -> dict:
    """`procs` services in ONE consumer group on a `procs`-partition backlog (scale-out on this machine)."""
    services = group_services(ctx, bundle, prefix, topic, f"group-{arch}-{client}", procs, client)
    sampler = ctx.sampler(*services)
    try:
        deadline = time.monotonic() + max(240.0, n / 300)
        while sum(svc.emitted() for svc in services) < n:
            for svc in services:
                svc.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"group run: not all {n} predictions after the deadline")
            time.sleep(0.25)
        time.sleep(1.0)  # let a rebalance's re-sent predictions (if any) land before counting
        counts = [int(svc.emitted()) for svc in services]
    finally:
        sampler.stop()
        codes = [svc.stop() for svc in services]
    records = [r for svc, c in zip(services, counts) for r in ctx.read(svc.output_topic, c)]
    ts, latency, bodies = predictions(records)
    unique = len({b["event_id"] for b in bodies})
    first, last = float(ts.min()), float(ts.max())
    p10, p90 = (float(x) for x in np.percentile(ts, [10, 90]))
    return {"path": f"{procs} processes, one consumer group, {procs} partitions (backlog)", "client": client,
            "events": unique, "predictions": len(records), "duplicates": len(records) - unique,
            "per_process": counts, "seconds": round(last - first, 2),
            "events_per_s": round(unique / max(last - first, 1e-3), 1),
            "events_per_s_p10_p90": round(0.8 * len(records) / max(p90 - p10, 1e-3), 1),
            "latency_ms": summary(latency), **cpu_fields(sampler, first, last, unique), "exit_codes": codes}


def input_times(ctx: Context, topic: str, n: int) -> dict[str, float]:
    """event_id -> the input record's broker timestamp (s): the producer's send time."""
    return {json.loads(r.value)["event_id"]: r.timestamp_ms / 1000 for r in ctx.read(topic, n)}


def fixed_rate(ctx: Context, arch: str, bundle: str, prefix: str, events: list[Event], rate: float,
               swap_to: str | None = None, swap_after_s: float = 0.0, procs: int = 1,
               client: str | None = None) -> dict:
    """`procs` = 1: one service (assign_all_partitions); > 1: that many in one consumer group, as many partitions.

    With `swap_to`, that bundle is promoted in the registry `swap_after_s` after the feed starts
    (bench.stream.swap reads the result).
    """
    topic = ctx.topic("rate", procs)
    name = f"rate-{arch}-{client}-{rate:g}{'-swap' if swap_to else ''}"
    if procs == 1:
        services = [ServiceRun(ctx, bundle, prefix, topic, name, client=client)]
    else:
        services = group_services(ctx, bundle, prefix, topic, name, procs, client)
    promoted_at = None
    try:
        for service in services:
            service.wait_ready()  # a group member is ready once it has partitions: after the join
        time.sleep(0.5 if procs == 1 else 2.0)
        sampler = ctx.sampler(*services)
        feed = PacedProducer(ctx.broker, topic, rate, events, ctx.tmp)
        if swap_to:
            from streamer.registry import Registry

            time.sleep(max(0.0, feed.started + swap_after_s - time.time()))
            promoted_at = time.time()
            Registry(ctx.client, prefix).promote(str(Path(swap_to).resolve()))
        produced = feed.result(timeout=len(events) / rate + 120)
        deadline = time.monotonic() + 120
        while sum(svc.emitted() for svc in services) < len(events) and time.monotonic() < deadline:
            time.sleep(0.25)
        counts = [int(svc.emitted()) for svc in services]
        sampler.stop()
    finally:
        codes = [svc.stop() for svc in services]
    records = [r for svc, c in zip(services, counts) for r in ctx.read(svc.output_topic, c)]
    sent_at = input_times(ctx, topic, len(events))
    ts, latency, bodies = predictions(records)
    e2e = np.array([(t - sent_at[b["event_id"]]) * 1000 for t, b in zip(ts, bodies)])
    first, last = float(ts.min()), float(ts.max())
    fifth = max(1, len(ts) // 5)
    by_time = e2e[np.argsort(ts, kind="stable")]
    head, fourth, tail = pct(by_time[:fifth], 50), pct(by_time[-2 * fifth:-fifth], 50), pct(by_time[-fifth:], 50)
    out = {"path": f"fixed rate {rate:g}/s", "client": client, "rate": rate, "procs": procs, "events": len(records),
           "producer": produced, "duplicates": len(records) - len({b["event_id"] for b in bodies}),
           "e2e_p50_first_fifth_ms": head, "e2e_p50_last_fifth_ms": tail,
           # else a queue built up: latency grew through the run (the service is saturated at this rate)
           "keeping_up": bool(tail < 1000 and tail <= 2 * fourth + 50),
           "events_per_s": round(len(records) / max(last - first, 1e-3), 1),
           "latency_ms": summary(latency), "e2e_ms": summary(e2e),
           **cpu_fields(sampler, first, last, len(records)), "exit_codes": codes}
    # per second from the start of the feed: [t, predictions, latency_ms p50, p99, e2e p99, CPU s of service,
    # tansu, redis in that second]
    out["timeline"] = []
    for sec in range(int(last - feed.started) + 1):
        lo = feed.started + sec
        rows = (ts >= lo) & (ts < lo + 1)
        if rows.any():
            cpu = [round(sampler.services_at(lo + 1) - sampler.services_at(lo), 2),
                   *(round(sampler.at(name, lo + 1) - sampler.at(name, lo), 2) for name in ("tansu", "redis"))]
            out["timeline"].append([sec, int(rows.sum()), pct(latency[rows], 50), pct(latency[rows], 99),
                                    pct(e2e[rows], 99), *cpu])
    if swap_to:
        from bench.stream.swap import swap_windows

        out.update(swap_windows(ts, latency, e2e, bodies, promoted_at, services[0].logs(), feed.started))
    return out

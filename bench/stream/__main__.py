"""`python -m bench.stream`: parse the options, plan the workload's slices, run every part, report.

Also the entry of the benchmark's own subprocesses: `python -m bench.stream _train|_keras|_produce ...`.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bench.stream  # noqa: E402
from bench.stream.baselines import ceiling, keras_baseline, keras_main, naive  # noqa: E402
from bench.stream.bundles import ensure_bundles, train_main  # noqa: E402
from bench.stream.common import ARCHS, CLIENTS, log  # noqa: E402
from bench.stream.feed import produce_main, workload  # noqa: E402
from bench.stream.infra import Context, ServiceRun  # noqa: E402
from bench.stream.report import render, targets  # noqa: E402
from bench.stream.runs import fixed_rate, group, sustained  # noqa: E402
from bench.stream.stages import profile_report, stages  # noqa: E402
from bench.stream.swap import run_swaps, swap_rate_for  # noqa: E402

PARTS = ("sustained", "group", "rate", "group_rate", "swap", "stages", "ceiling", "naive", "keras")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=bench.stream.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="backlog events per bundle (default 200000)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=3_000, help="catalogue size")
    p.add_argument("--batch", type=int, default=500, help="max_poll_records of the service (default: its default)")
    p.add_argument("--clients", default=",".join(CLIENTS),
                   help="Kafka clients of the service (SEQCAST_KAFKA_CLIENT), comma list (default: %(default)s)")
    p.add_argument("--rates", default="2000,5000", help="events/s of the fixed-rate runs, comma list")
    p.add_argument("--rate-seconds", type=float, default=20.0, help="length of each fixed-rate run")
    p.add_argument("--swap-seconds", type=float, default=24.0, help="length of the swap run (promote at half)")
    p.add_argument("--swap-rate", type=float, default=0.0,
                   help="events/s of the swap run; 0 = min(lowest --rates, half the slowest sustained throughput, "
                        "rounded down to 100), so that the swap is measured below saturation")
    p.add_argument("--keras-events", type=int, default=300, help="events for baseline (a)")
    p.add_argument("--naive-events", type=int, default=3000, help="events for baseline (b), async produce")
    p.add_argument("--naive-sync-events", type=int, default=1000, help="events for baseline (b), sync produce")
    p.add_argument("--stage-batches", type=int, default=12, help="batches for the per-stage costs")
    p.add_argument("--ceiling-batches", type=int, default=40, help="batches for the onnxruntime-only ceiling")
    p.add_argument("--models-dir", default="runs/bench_models", help="bundle cache (trained once)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--out", default="runs/bench_stream.json", help="JSON result file")
    p.add_argument("--archs", default=",".join(ARCHS), help="bundles to measure")
    p.add_argument("--group-procs", type=int, default=2,
                   help="also drain the backlog, and feed each rate to the LSTM, with this many services in one "
                        "consumer group (0 = skip)")
    p.add_argument("--skip", default="", help=f"comma list of parts to skip: {','.join(PARTS)}")
    p.add_argument("--stages-only", action="store_true",
                   help="only the per-stage table: process the --events backlog in-process (untimed, so windows "
                        "and live-accuracy state are as in a full run), then time --stage-batches batches")
    p.add_argument("--profile", action="store_true",
                   help="also run the LSTM service under cProfile (python -m cProfile -m streamer serve) on the "
                        "first 40k backlog events and print the main thread's profile (start-up included)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5k events, 2 s per rate, 8 s swaps, few baseline and stage events (about 2 "
                        "minutes with one bundle and one client, e.g. --archs lstm --clients confluent)")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.rate_seconds, args.swap_seconds = 5_000, 2.0, 8.0
        args.keras_events, args.naive_events, args.naive_sync_events = 20, 200, 50
        args.stage_batches, args.ceiling_batches = 5, 6
    args.rate_list = [float(r) for r in args.rates.split(",") if r]
    args.client_list = [c for c in args.clients.split(",") if c]
    args.arch_list = [a for a in args.archs.split(",") if a]
    args.skip_set = set(filter(None, args.skip.split(",")))
    for name, values, known in (("--clients", args.client_list, CLIENTS), ("--archs", args.arch_list, ARCHS),
                                ("--skip", args.skip_set, PARTS)):
        if set(values) - set(known):
            p.error(f"{name}: unknown {sorted(set(values) - set(known))} (known: {', '.join(known)})")
    return args


def plan(args) -> dict[str, tuple[int, int]]:
    """[start, end) of each later slice of the log, after the backlog; the same in every mode, so a
    --stages-only run times the same events as the stages of a full run."""
    rate_ns = {f"{r:g}": int(r * args.rate_seconds) for r in args.rate_list}
    swap_n = 2 * int(max(min(args.rate_list), args.swap_rate) * args.swap_seconds)
    sizes = [*((f"rate@{r}", n) for r, n in rate_ns.items()), *((f"rate_group@{r}", n) for r, n in rate_ns.items()),
             ("swap", swap_n), ("stages", args.batch * args.stage_batches * len(args.client_list)),
             ("naive", args.naive_events + args.naive_sync_events), ("keras", args.keras_events + 5),
             ("ceiling", args.batch * (args.ceiling_batches + 2))]
    slices, cursor = {}, args.events
    for name, n in sizes:
        slices[name] = (cursor, cursor + n)
        cursor += n
    return slices


def load_backlog(ctx: Context, events, partitions: int = 1, label: str = "backlog") -> str:
    """A fresh topic with `events` in it (keyed by user), produced with the default client."""
    from streamer.replay import replay
    from streamer.transport import Producer

    topic = ctx.topic(label, partitions)
    producer = Producer(ctx.broker)
    replay(events, producer, topic)
    producer.close()
    return topic


def run_services(ctx: Context, args, events, slices, models: dict, result: dict) -> dict:
    """The `seqcast serve` runs for every bundle x client; returns the (arch, client) -> prefix map."""
    part = lambda name: events[slices[name][0]:slices[name][1]]
    skip, paths = args.skip_set, {arch: models["bundles"][arch]["bundle"] for arch in ARCHS}
    prefixes = {(arch, c): ctx.prefix(f"{arch[0]}{i}") for arch in args.arch_list
                for i, c in enumerate(args.client_list)}
    t0 = time.monotonic()
    backlog = load_backlog(ctx, events[:args.events])
    result["preload_events_per_s"] = round(args.events / (time.monotonic() - t0))
    log(f"backlog of {args.events:,} events loaded at {result['preload_events_per_s']:,}/s")
    result["backlog_topic"] = backlog
    per = {(arch, c): result["bundles"].setdefault(arch, {}).setdefault("clients", {}).setdefault(c, {})
           for arch, c in prefixes}
    if "sustained" not in skip:
        for (arch, c), runs in per.items():
            log(f"[{arch} {c}] sustained ...")
            runs["sustained"] = sustained(ctx, arch, paths[arch], prefixes[arch, c], backlog, args.events, c)
            log(f"[{arch} {c}] {runs['sustained']['events_per_s']:,.0f} ev/s")
    if "group" not in skip and args.group_procs > 1:
        topic = load_backlog(ctx, events[:args.events], args.group_procs, "backlog-group")
        for (arch, c), runs in per.items():
            log(f"[{arch} {c}] {args.group_procs} processes in a consumer group ...")
            runs["group"] = group(ctx, arch, paths[arch], ctx.prefix("g"), topic, args.events, args.group_procs, c)
            log(f"[{arch} {c}] group: {runs['group']['events_per_s']:,.0f} ev/s")
    for rate in args.rate_list:
        key = f"{rate:g}"
        for (arch, c), runs in per.items():
            if "rate" not in skip:
                log(f"[{arch} {c}] {key} ev/s for {args.rate_seconds:g}s ...")
                runs.setdefault("rates", {})[key] = fixed_rate(ctx, arch, paths[arch], prefixes[arch, c],
                                                                part(f"rate@{key}"), rate, client=c)
            if arch == "lstm" and "group_rate" not in skip and args.group_procs > 1:
                log(f"[{arch} {c}] {key} ev/s, {args.group_procs} processes in a consumer group ...")
                runs.setdefault("group_rates", {})[key] = fixed_rate(
                    ctx, arch, paths[arch], prefixes[arch, c], part(f"rate_group@{key}"), rate,
                    procs=args.group_procs, client=c)
    if "swap" not in skip and "lstm" in args.arch_list:
        measured = [r["sustained"]["events_per_s"] for r in per.values() if "sustained" in r]
        client = args.client_list[0]
        result["swaps"] = run_swaps(ctx, args, paths, prefixes["lstm", client], part("swap"),
                                    swap_rate_for(args, measured), client)
    return prefixes


def run_in_process(ctx: Context, args, events, slices, models: dict, result: dict, prefixes: dict,
                   backlog: str) -> None:
    """Stages, ceiling and baselines: in this process (Keras in a subprocess), no service running."""
    part = lambda name: events[slices[name][0]:slices[name][1]]
    skip, work = args.skip_set, {"users": args.users, "items": args.items, "total": len(events)}
    for arch in args.arch_list:
        path = models["bundles"][arch]["bundle"]
        prefix = prefixes.get((arch, args.client_list[0])) or ctx.prefix(arch[0])
        runs = result["bundles"].setdefault(arch, {})
        if "stages" not in skip:  # each client on the same windows, with its own next slice of the log
            warm = events[:args.events] if args.stages_only else []
            n = args.batch * args.stage_batches
            for i, client in enumerate(args.client_list):
                log(f"[{arch} {client}] stages ...")
                chunk = part("stages")[i * n:(i + 1) * n]
                result["stages"][f"{arch}, {client}"] = stages(ctx, arch, path, prefix, chunk, backlog, args.events,
                                                               warm if i == 0 else [], client)
        if args.stages_only:
            continue
        if "ceiling" not in skip:
            log(f"[{arch}] onnxruntime-only ceiling ...")
            runs["ceiling"] = ceiling(arch, path, events[:args.events], part("ceiling"), args.batch)
            log(f"[{arch}] ceiling {runs['ceiling']['events_per_s']:,.0f} ev/s")
        if "naive" not in skip:
            log(f"[{arch}] naive baseline ...")
            runs["naive"] = naive(ctx, arch, path, prefix, part("naive"), args.naive_sync_events)
        if "keras" not in skip:
            log(f"[{arch}] keras baseline ...")
            runs["keras"] = keras_baseline(arch, models["bundles"][arch], work, slices["keras"][0], args.keras_events)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    internal = {"_train": train_main, "_keras": keras_main, "_produce": produce_main}
    if argv and argv[0] in internal:
        return internal[argv[0]](argv[1:])
    args = parse_args(argv)
    command = ".venv/bin/python -m bench.stream " + " ".join(shlex.quote(a) for a in argv)
    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    models = ensure_bundles(Path(args.models_dir), args.users, args.items)
    slices = plan(args)
    work = {"users": args.users, "items": args.items, "total": max(end for _, end in slices.values())}
    t0 = time.monotonic()
    events = workload(**work)
    log(f"workload: {len(events):,} events in {time.monotonic() - t0:.1f}s")
    # The workload is hundreds of thousands of live objects that a service process does not hold: left to
    # the cyclic GC, its full collections would charge ~50 µs/event to whichever in-process stage allocates.
    gc.collect()
    gc.freeze()
    config = {k: v for k, v in vars(args).items() if not k.endswith(("_list", "_set"))}
    result = {"command": command, "config": {**config, "slices": slices}, "models": models, "bundles": {},
              "stages": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    ctx = Context(args, tmp)
    result["env"] = {"broker": ctx.broker, "cpus": os.cpu_count(), "loadavg_start": load_start}
    try:
        if args.stages_only:
            backlog = load_backlog(ctx, events[:min(args.events, 50 * args.batch, 25_000)])
            run_in_process(ctx, args, events, slices, models, result, {}, backlog)
        else:
            prefixes = run_services(ctx, args, events, slices, models, result)
            run_in_process(ctx, args, events, slices, models, result, prefixes, result["backlog_topic"])
            result["targets"] = targets(result)
        if args.profile and "lstm" in args.arch_list and not args.stages_only:
            log("[lstm] profiled backlog run ...")
            prof = tmp / "serve.prof"
            service = ServiceRun(ctx, models["bundles"]["lstm"]["bundle"], ctx.prefix("p"), result["backlog_topic"],
                                 "profile", profile=prof, client=args.client_list[0])
            try:
                service.wait_emitted(min(args.events, 40_000), timeout_s=240.0)  # includes start-up
            finally:
                service.stop()
            result["profile"] = profile_report(prof)
            Path(args.out).with_suffix(".prof").write_bytes(prof.read_bytes())
    finally:
        ctx.close()
    result["env"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.monotonic() - started, 1)
    print(render(result))
    if result.get("profile"):
        print("\n## cProfile of the LSTM service loop (main thread), by tottime\n\n```\n" + result["profile"] + "```")
    print(f"\n(total {result['seconds']:.0f}s; JSON: {args.out})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

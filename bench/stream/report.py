"""The markdown report of one run (docs/benchmarks.md is made from it) and the issue 11 targets."""
from __future__ import annotations

TARGET_EVENTS_PER_S = 10_000  # issue 11: LSTM, one process, sustained
TARGET_P99_MS, TARGET_P99_RATE = 25.0, 5000.0  # p99 latency_ms at 5,000 events/s
TARGET_SHARE = 0.5  # of the onnxruntime-only ceiling


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def rate_key(rate: float) -> str:
    return f"{rate:g}"


def verdict(value: float | None, target: float, higher_is_better: bool, unit: str, scale: float = 1.0,
            gap_unit: str | None = None) -> dict:
    """{"value", "met", "text"}: "met" or "NOT met (by X)", X = the distance to the target."""
    if value is None:
        return {"value": None, "met": None, "text": "not measured"}
    met = value >= target if higher_is_better else value <= target
    gap = abs(target - value) * scale
    shown = f"{value * scale:,.1f}{unit}" if scale != 1.0 else f"{fmt(float(value))}{unit}"
    return {"value": value, "met": met,
            "text": f"{shown}: met" if met else f"{shown}: NOT met (by {gap:,.1f}{gap_unit or unit})"}


def targets(result: dict) -> dict:
    """Issue 11's three targets (LSTM, one process) for each Kafka client, and which client is best
    (the highest sustained events/s): the verdicts the closing note quotes."""
    lstm = result["bundles"].get("lstm", {})
    ceiling = lstm.get("ceiling", {}).get("events_per_s")
    per_client = {}
    for client, runs in lstm.get("clients", {}).items():
        eps = runs.get("sustained", {}).get("events_per_s")
        p99 = runs.get("rates", {}).get(rate_key(TARGET_P99_RATE), {}).get("latency_ms", {}).get("p99")
        share = eps / ceiling if eps and ceiling else None
        per_client[client] = {
            "sustained": verdict(eps, TARGET_EVENTS_PER_S, True, " events/s"),
            "p99_at_5000": verdict(p99, TARGET_P99_MS, False, " ms"),
            "ceiling_share": verdict(share, TARGET_SHARE, True, "%", scale=100.0, gap_unit=" points")}
    measured = {c: t["sustained"]["value"] for c, t in per_client.items() if t["sustained"]["value"]}
    best = max(measured, key=measured.get) if measured else None
    return {"clients": per_client, "best_client": best, "ceiling_events_per_s": ceiling}


def _state(run: dict) -> str:
    if run["keeping_up"]:
        return "kept up"
    return f"fell behind: e2e p50 {fmt(run['e2e_p50_first_fifth_ms'])} ms -> {fmt(run['e2e_p50_last_fifth_ms'])} ms"


def service_rows(result: dict) -> list[str]:
    """The seqcast serve runs: one row per bundle x client x path (sustained, group, each fixed rate)."""
    lines = ["| bundle | Kafka client | path | events/s | p50 ms | p95 ms | p99 ms | CPU s / 1k events: service | "
             "Redis | broker |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arch, per_arch in result["bundles"].items():
        for client, runs in per_arch.get("clients", {}).items():
            def row(path: str, run: dict | None, lat: dict, with_cpu: bool = True) -> None:
                eps = run["events_per_s"] if run and with_cpu else None
                cpu = run["cpu_s_per_1k"] if run and with_cpu else None
                other = run.get("cpu_s_per_1k_other", {}) if run and with_cpu else {}
                lines.append(f"| {arch} | {client} | {path} | {fmt(eps)} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | "
                             f"{fmt(lat['p99'])} | {fmt(cpu, 3)} | {fmt(other.get('redis'), 3)} | "
                             f"{fmt(other.get('tansu'), 3)} |")
            if "sustained" in runs:
                s = runs["sustained"]
                row("sustained, 1 process (backlog; latency_ms is batch-bound)", s, s["latency_ms"])
            if "group" in runs:
                g = runs["group"]
                row(f"sustained, {g['path'].split(',')[0]} in a consumer group (p10-p90 rate "
                    f"{g['events_per_s_p10_p90']:,.0f}/s; {g['duplicates']} re-sent)", g, g["latency_ms"])
            for label, key in (("1 process", "rates"), ("processes in a consumer group", "group_rates")):
                for rate, r in runs.get(key, {}).items():
                    procs = "1 process" if key == "rates" else f"{r['procs']} {label}"
                    row(f"@ {rate}/s, {procs} (producer achieved {r['producer']['achieved_rate']:,.0f}/s) latency_ms",
                        r, r["latency_ms"])
                    row(f"  same run, e2e (producer send -> prediction send); {_state(r)}", None, r["e2e_ms"])
    return lines if len(lines) > 2 else []


def baseline_rows(result: dict) -> list[str]:
    """The onnxruntime-only ceiling, seqcast's share of it, and baselines (a) and (b), per bundle."""
    a = result["config"]
    lines = ["", "## The onnxruntime-only ceiling and the baselines", "",
             "| bundle | path | events/s | p50 ms | p95 ms | p99 ms | CPU s / 1k events | seqcast vs it |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arch, per_arch in result["bundles"].items():
        sustained = {c: r["sustained"]["events_per_s"] for c, r in per_arch.get("clients", {}).items()
                     if "sustained" in r}
        best = max(sustained.values()) if sustained else None
        if "ceiling" in per_arch:
            c = per_arch["ceiling"]
            share = ", ".join(f"{client} {eps / c['events_per_s']:.0%}" for client, eps in sustained.items()) or "–"
            lines.append(f"| {arch} | onnxruntime only: bundle.predict, batches of {c['batch']}, "
                         f"{c['inference_threads']} intra-op thread(s) (batch ms; per CPU second "
                         f"{fmt(c.get('events_per_cpu_s'))} ev/s) | {fmt(c['events_per_s'])} | "
                         f"{fmt(c['batch_ms']['p50'])} | {fmt(c['batch_ms']['p95'])} | {fmt(c['batch_ms']['p99'])} | "
                         f"{fmt(c['cpu_us_per_event'] / 1000, 3)} | share {share} |")

        def row(path: str, run: dict) -> None:
            ratio = f"{best / run['events_per_s']:,.1f}x" if best and run["events_per_s"] else "–"
            lat = run["latency_ms"]
            lines.append(f"| {arch} | {path} | {fmt(run['events_per_s'])} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | "
                         f"{fmt(lat['p99'])} | {fmt(run.get('cpu_s_per_1k'), 3)} | {ratio} |")
        if "keras" in per_arch:
            row("baseline (a): Keras model.predict per event", per_arch["keras"])
        for label, n in per_arch.get("naive", {}).items():
            row(f"baseline (b): naive per event ({label} produce)", n)
    lines += ["", f"share = seqcast's sustained events/s (one process, per Kafka client) / the onnxruntime-only "
              f"events/s of the same bundle and batch ({a['batch']}), measured in this run while no service "
              f"runs (per CPU second: what one core of its own would do, the figure to trust on a busy machine); for the baselines, seqcast's best sustained events/s / that path's events/s. CPU s / "
              f"1k events: this process for the ceiling and baseline (b), the Keras process for (a). Baseline "
              f"latencies are per-event processing times (no queueing)."]
    return lines


def target_rows(result: dict) -> list[str]:
    t = result.get("targets") or targets(result)
    if not t["clients"]:
        return []
    clients = list(t["clients"])
    lines = ["", "## Issue 11 targets (LSTM bundle, one process)", "",
             "| target | " + " | ".join(clients) + " |", "|---|" + "---|" * len(clients)]
    for key, label in (("sustained", f">= {TARGET_EVENTS_PER_S:,} events/s sustained"),
                       ("p99_at_5000", f"p99 latency_ms <= {TARGET_P99_MS:g} ms at {TARGET_P99_RATE:,.0f} events/s"),
                       ("ceiling_share", f">= {TARGET_SHARE:.0%} of the onnxruntime-only ceiling")):
        lines.append(f"| {label} | " + " | ".join(t["clients"][c][key]["text"] for c in clients) + " |")
    best = t["best_client"]
    if best:
        verdicts = t["clients"][best]
        met = sum(1 for v in verdicts.values() if v["met"])
        lines.append(f"\nBest Kafka client (highest sustained events/s): {best}; {met} of 3 targets met with it.")
    return lines


def notes(result: dict) -> list[str]:
    lines = []
    for arch, per_arch in result["bundles"].items():
        for client, runs in per_arch.get("clients", {}).items():
            for key in ("sustained", "group"):
                if key in runs:
                    s = runs[key]
                    extra = f"; per process {s['per_process']} predictions" if key == "group" else ""
                    lines.append(f"- {arch}, {client}, {key}: machine busy {s['machine']['busy_share']:.0%} of "
                                 f"{result['env']['cpus']} cores, {s['machine']['niced_share']:.0%} by niced "
                                 f"jobs{extra}.")
    return lines


def swap_rows(result: dict) -> list[str]:
    lines = []
    for label, run in result.get("swaps", {}).items():
        sw = run.get("swap", {})
        lines += ["", f"## Model swap ({label}) at {run['rate']:g} ev/s ({run.get('client')}): "
                      f"{sw.get('old')} -> {sw.get('new')}", ""]
        if "error" in sw:
            lines.append(sw["error"])
            continue
        lines += [f"promoted at t={sw['promoted_at_s']} s; the registry watcher had loaded + verified + warmed "
                  f"the new bundle {sw['manager_loaded_after_s']} s after the promote (includes up to one "
                  f"registry_poll_ms); the loop switched after {sw['loop_swapped_after_s']} s; first "
                  f"new-version prediction after {sw['first_new_prediction_after_s']} s; old-version "
                  f"predictions after it: {sw['old_version_predictions_after_first_new']}; the service "
                  f"{'kept up with' if run['keeping_up'] else 'fell behind'} the rate.", "",
                  "| window | t (s) | n | latency_ms p50 | p95 | p99 | max | e2e_ms p50 | p99 | max |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in ("steady_before", "around_swap", "steady_after"):
            w = sw[name]
            lat, e = w["latency_ms"], w["e2e_ms"]
            lines.append(f"| {name.replace('_', ' ')} | {w['from_s']}–{w['to_s']} | {lat['n']:,} | {fmt(lat['p50'])} | "
                         f"{fmt(lat['p95'])} | {fmt(lat['p99'])} | {fmt(lat['max'])} | {fmt(e['p50'])} | "
                         f"{fmt(e['p99'])} | {fmt(e['max'])} |")
        lines.append("\nper second, t: latency_ms p99 / service CPU s: " + ", ".join(
            f"{row[0]}: {fmt(row[3])}/{row[5]}" for row in run["timeline"]))
    return lines


def stage_rows(result: dict, batch: int) -> list[str]:
    if not result.get("stages"):
        return []
    names: list[str] = []
    for st in result["stages"].values():
        names += [n for n in st["cpu_us_per_event"] if n not in names]
    lines = ["", f"## Per-stage cost, µs per event (batches of {batch}, in-process, Service.process)", "",
             "| bundle | clock | " + " | ".join(names) + " | sum | ceiling ev/s |",
             "|---|---|" + "---:|" * (len(names) + 2)]
    for arch, st in result["stages"].items():
        for clock in ("cpu", "wall"):
            vals = st[f"{clock}_us_per_event"]
            ceiling = f"{1e6 / st[f'{clock}_sum_us']:,.0f}" if st[f"{clock}_sum_us"] else "–"
            lines.append(f"| {arch} | {clock} | " + " | ".join(fmt(vals.get(n)) for n in names)
                         + f" | {fmt(st[f'{clock}_sum_us'])} | {ceiling} |")
    parts = {arch: st.get("emit_parts_cpu_us", {}) for arch, st in result["stages"].items()}
    if any(parts.values()):
        lines.append("\nemit parts, measured again on the same bodies (CPU µs/event) = " + "; ".join(
            f"{arch}: " + ", ".join(f"{k.split(': ')[1]} {v}" for k, v in p.items()) for arch, p in parts.items()))
    lines.append("cpu = this thread's CPU time (trust this on a shared machine), wall = elapsed. Each batch runs "
                 "through the service's own Service.process; a stage's time excludes the stages it calls; emit = "
                 "JSON + metrics, produce = Producer.send; other = the rest of process; flush = the producer "
                 "flush of each checkpoint; consume = the consumer's poll from Tansu. ceiling = 1e6 / sum, one "
                 "core, nothing else running. The producer's I/O thread, Tansu and Redis need CPU beside the loop "
                 "on the same cores.")
    return lines


def render(result: dict) -> str:
    a = result["config"]
    env = result["env"]
    lines = ["# seqcast streaming benchmark", "", "```", result["command"], "```", ""]
    if not a.get("stages_only"):
        lines += [f"{a['events']:,} backlog events, {a['users']:,} users, {a['items']:,} items; batch "
                  f"(max_poll_records) {a['batch']}; fixed rates {a['rates']} ev/s; Kafka clients {a['clients']}; "
                  f"Tansu {env['broker']}, Redis {a['redis_url']}; {env['cpus']} CPUs; load average at start "
                  f"{env['loadavg_start']}, at end {env.get('loadavg_end')}.", ""]
        lines += service_rows(result)
        lines += ["", "CPU s / 1k events: the service process(es) (all threads), Redis and the Tansu broker, each "
                  "between the first and the last prediction. Event-time lag is not reported: the synthetic "
                  "timestamps make it meaningless.", *notes(result)]
        lines += baseline_rows(result)
        lines += target_rows(result)
        lines += swap_rows(result)
    lines += stage_rows(result, a["batch"])
    return "\n".join(lines)

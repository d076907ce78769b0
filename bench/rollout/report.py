"""The benchmark's markdown: headline figures, every decision with its evidence, and the caveats."""
from __future__ import annotations

from pathlib import Path

NOTES_MARKER = "<!-- hand-written notes below: kept when the benchmark rewrites this file -->"
VERB = {"rolled_back": "rolled back", "promoted": "promoted", "aborted": "aborted"}


def _n(x) -> str:
    return "–" if x is None else f"{x:,.0f}"


def _heads_n(heads: dict) -> str:
    return " / ".join(f"{_n(heads[h]['n'])}" if h in heads else "–" for h in ("items", "forecast"))


def _policy_text(p: dict) -> str:
    steps = "/".join(f"{x:g}" for x in p["steps"])
    return (f"shadow >= {p['shadow_min_scored']} paired judgments (<= {p['shadow_max_seconds']:g} s), canary steps "
            f"{steps}% of users, each >= {p['step_min_scored']} candidate judgments and >= {p['step_min_seconds']:g} s "
            f"(<= {p['step_max_seconds']:g} s), heads {'+'.join(p['heads'])}, at most {p['max_regression']:.0%} "
            f"worse, alpha {p['alpha']:g}, beta {p['beta']:g}, min_evidence {p['min_evidence']}")


def _policy_line(config: dict) -> str:
    """The policy the rollouts ran under (as stored in their state), and how it differs from the defaults."""
    from streamer.rollout_policy import Policy

    effective = next((s["policy"] for s in config["scenarios"] if s.get("policy")), None) or Policy().to_dict()
    if not config.get("policy_file"):
        return f"**the DEFAULT policy** (`seqcast rollout start REF`, no overrides): {_policy_text(effective)}"
    changes = ", ".join(f"{k} = {v}" for k, v in config["policy_overrides"].items())
    return (f"**NOT the default policy**: `--policy {config['policy_file']}` sets {changes}; in full: "
            f"{_policy_text(effective)}")


def total_scored(s: dict) -> float:
    """Candidate judgments behind the rollout's decisions: each phase/step's scored count at its decision."""
    return sum(d.get("step_scored") or 0 for d in s.get("decisions", []))


def headline(s: dict) -> str:
    served = s.get("served") or {}
    share = (f"; the candidate served {_n(served.get('candidate_canary'))} predictions to users before the end "
             f"({served.get('candidate_canary_share_during', 0):.1%} of the {_n(served.get('during_rollout'))} made "
             f"during the rollout)") if served else ""
    if s.get("end_reason") == "decided":
        ok = "as expected" if s["outcome"] == s["expect"] else f"NOT as expected ({s['expect']} was)"
        last = s["decisions"][-1] if s.get("decisions") else {}
        paired = " (paired with the primary's on the same events)" if last.get("from") == "shadow" else ""
        return (f"**{s['label']}: {VERB.get(s['outcome'], s['outcome'])} ({ok}) {s['end_s']:.0f} s after "
                f"`seqcast rollout start`**, decided {last.get('at_s', 0):.1f} s after it in {last.get('from', '?')} on "
                f"{_n(last.get('step_scored'))} scored candidate predictions in that phase{paired} (head n items/forecast {_heads_n(last.get('heads', {}))}), "
                f"{_n(total_scored(s))} scored over the whole rollout, {_n(last.get('events_replayed'))} events "
                f"replayed by then ({_n(s.get('warmup_events'))} of them before the start){share}.")
    ev = s.get("last_evidence") or {}
    verdicts = ", ".join(f"{h} {v['verdict']}" for h, v in ev.get("heads", {}).items()) or "none"
    why = ("the replay ran out" if s.get("end_reason") == "traffic ran out"
           else f"the {s.get('end_s', 0):.0f} s timeout passed")
    return (f"**{s['label']}: NO decision: {why}** ({_n((s.get('replay') or {}).get('sent'))} events replayed) with "
            f"the rollout in {ev.get('phase', '?')} after {s.get('end_s', 0):.0f} s; that step had "
            f"{_n(ev.get('step_scored'))} scored candidate predictions in {_n(ev.get('elapsed_in_step_s'))} s "
            f"(head n items/forecast {_heads_n(ev.get('heads', {}))}, verdicts "
            f"{verdicts}){share}.")


def decision_table(s: dict) -> list[str]:
    lines = ["| decision | from -> to | at s | scored in step | head n (items / forecast) | items Δ [lower, upper] vs -tol "
             "| forecast Δ [lower, upper] vs -tol | events replayed | candidate served by then | reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = list(s.get("decisions", []))
    if s.get("end_reason") != "decided":
        ev = s.get("last_evidence") or {}
        rows.append({"outcome": f"(none: {s.get('end_reason')})", "from": ev.get("phase", "?"), "to": "",
                     "at_s": s.get("end_s"), "step_scored": ev.get("step_scored"), "heads": ev.get("heads", {}),
                     "events_replayed": (s.get("replay") or {}).get("sent"), "reason": "last evidence seen"})
    for d in rows:
        cells = []
        for head in ("items", "forecast"):
            h = d.get("heads", {}).get(head)
            cells.append("–" if not h else f"{h['estimate']:+.4f} [{h['lower']:+.4f}, {h['upper']:+.4f}] vs "
                         f"{-h['tolerance']:+.4f} ({h['verdict']})")
        late = " (after the replay ended)" if d.get("after_replay_ended") else ""
        lines.append(f"| {d['outcome']}{late} | {d['from']} -> {d['to'] or '…'} | {d.get('at_s', 0):.1f} | "
                     f"{_n(d.get('step_scored'))} | {_heads_n(d.get('heads', {}))} | {cells[0]} | {cells[1]} | "
                     f"{_n(d.get('events_replayed'))} | {_n(d.get('candidate_served_by_then'))} | "
                     f"{d.get('reason', '').replace('|', '/')} |")
    return lines


def kept_up(s: dict) -> str:
    served, replay = s.get("served") or {}, s.get("replay") or {}
    if not served:
        return f"service: not read back (replay {replay})"
    once = (served["missing"] == 0 and served["duplicates"] == 0)
    return (f"Kept up: {'yes' if once and s.get('max_consumer_lag', 0) < 5000 else 'NO'}: {_n(served['sent'])} events "
            f"replayed at {replay.get('achieved_rate', 0):,.0f}/s, {_n(served['distinct_events'])} predicted "
            f"({served['missing']} missing, {served['duplicates']} twice), largest consumer lag seen "
            f"{_n(s.get('max_consumer_lag'))} events (p95 {_n(s.get('p95_consumer_lag'))}; seqcast_consumer_lag every "
            f"0.5 s); predictions by "
            f"version/arm: {', '.join(f'{k}: {v:,}' for k, v in served['by_version_arm'].items())}.")


def render(result: dict) -> str:
    sp, m = result["split"], result["machine"]
    good, bad = result["models"]["bundles"]["good"], result["models"]["bundles"]["bad"]
    lines = [f"# Rollout benchmark: what the default policy costs at {result['rate']:,.0f} events/s", "",
             f"- Command: `{result['command']}`",
             f"- Date: {result['date']}; machine: {m['cores']} cores ({m['cpu']}), load average "
             f"{m['loadavg_start'][0]:.2f} at the start, {m.get('loadavg_end', [float('nan')])[0]:.2f} at the end "
             "(the machine is shared: other jobs may have run meanwhile)",
             f"- Data: `{Path(sp['file']).name}` cut at the {sp['train_fraction']:.0%} quantile of event time "
             f"({sp['cut']}): models trained on {sp['train_events']:,} events of {sp['train_users']:,} users "
             f"({sp['train_from']} to the cut); live stream = the {sp['live_events']:,} later events of "
             f"{sp['live_users']:,} users ({sp['live_users_also_in_train']:,} of them also before the cut, up to "
             f"{sp['live_to']}), {sp['replayed_at_most']:,} of them replayed, in event-time order at "
             f"{result['rate']:,.0f} events/s, never looped",
             f"- GOOD `{good['ref']}`: LSTM, window 50, next-rating head, {good['epochs_run']} epoch(s) "
             f"({good['stopped_by']}, {good['train_seconds']:.0f} s); offline test HR@10 {good['offline']['HR@10']:.4f} "
             f"(most-popular {good['offline']['most_popular_HR@10']:.4f}), next-rating MAE {good['offline']['MAE']:.3f}",
             f"- BAD `{bad['ref']}`: same recipe, 1 epoch on the training part with its items shuffled; offline HR@10 "
             f"{bad['offline']['HR@10']:.4f}, MAE {bad['offline']['MAE']:.3f}", ""]
    for i, config in enumerate(result["configurations"]):
        title = ("Default policy" if not config.get("policy_file") else
                 f"Configuration {i + 1}, NOT the defaults: {', '.join(f'{k} {v}' for k, v in config['policy_overrides'].items())}")
        lines += [f"## {title}", "", "Policy: " + _policy_line(config), ""]
        lines += ["- " + headline(s) for s in config["scenarios"]] + [""]
        for s in config["scenarios"]:
            lines += [f"### {s['label']} (expected: {VERB.get(s['expect'], s['expect'])})", ""]
            lines += decision_table(s) + [""]
            served = s.get("served") or {}
            if served.get("candidate_primary_after"):
                lines += [f"After the promotion the candidate served {served['candidate_primary_after']:,} more "
                          "predictions as the primary until the replay was stopped.", ""]
            lines += [kept_up(s), ""]
    return "\n".join(lines)


def write_doc(path: Path, report: str) -> None:
    """Write the report, keeping whatever follows NOTES_MARKER in the existing file."""
    notes = ""
    if path.is_file():
        text = path.read_text()
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    path.write_text(report.rstrip() + "\n\n" + NOTES_MARKER + (notes if notes else "\n"))

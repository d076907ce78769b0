"""One scenario: a `seqcast serve`, the replay at the rate, `seqcast rollout start REF`, and the rollout
followed in Redis until it ends, the traffic runs out, or the timeout.

The replay runs on a thread of this process through streamer.replay (the same pacing `seqcast replay`
uses); the rollout is read with RolloutStore directly rather than `seqcast rollout status --json` every
half second, which would start a Python process twice a second on a 2-core machine.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.stream.common import FEED_LINGER_MS, ROOT, log
from bench.stream.infra import Context, ServiceRun

POLL_S = 0.5
PROGRESS_S = 15.0
METRIC_LINE = re.compile(r'^(seqcast_[a-z_]+)\{([^}]*)\} ([0-9.eE+-]+|NaN)$')


class Replayer(threading.Thread):
    """Sends `events` to `topic` at `rate` events/s (streamer.replay), counting what it has sent when."""

    def __init__(self, broker: str, topic: str, events: list, rate: float) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.events, self.rate = broker, topic, events, rate
        self.sent = 0
        self.marks: list[tuple[float, int]] = []
        self.started_at = self.finished_at = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def update(self, n: int) -> None:  # streamer.replay's progress hook, once per chunk of 100
        self.sent += n
        self.marks.append((time.time(), self.sent))

    def run(self) -> None:
        from streamer.replay import replay
        from streamer.transport import Producer

        producer = Producer(self.broker, linger_ms=FEED_LINGER_MS)
        halt = self._halt

        def until_halted():
            for event in self.events:
                if halt.is_set():
                    return
                yield event

        self.started_at = time.time()
        self.marks.append((self.started_at, 0))
        try:
            replay(until_halted(), producer, self.topic, self.rate, progress=self)
        except BaseException as err:  # reported by the scenario, not lost on a thread
            self.error = err
        finally:
            self.finished_at = time.time()
            producer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    @property
    def done(self) -> bool:
        return self.finished_at > 0

    def sent_at(self, t: float) -> int:
        """Events sent by wall time t (interpolated between chunks)."""
        if not self.marks:
            return 0
        ts, ns = zip(*self.marks)
        return int(np.interp(t, ts, ns))

    def achieved_rate(self) -> float:
        end = self.finished_at or time.time()
        return self.sent / max(end - self.started_at, 1e-9)


def scrape(service: ServiceRun) -> dict:
    """The service's /metrics: predictions emitted per (version, arm) and the consumer lag."""
    try:
        _, text = service._get("/metrics")
    except OSError:
        return {}
    out: dict = {"emitted": Counter(), "lag": 0.0}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))
        if name == "seqcast_predictions_emitted_total":
            out["emitted"][(labels.get("model_version"), labels.get("arm"))] += value
        elif name == "seqcast_consumer_lag":
            out["lag"] += value
    return out


def rollout_start(ctx: Context, prefix: str, ref: str, policy_file: str | None) -> subprocess.CompletedProcess:
    """`seqcast rollout start REF` as an operator would type it (the default policy unless a file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "seqcast_cli", "rollout", "--redis-url", ctx.redis_url, "--key-prefix", prefix,
           "--models-dir", str(ctx.models_dir), "start", ref]
    if policy_file:
        cmd += ["--policy", str(Path(policy_file).resolve())]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _heads(evidence: dict | None) -> dict:
    keep = ("n", "candidate", "baseline", "estimate", "lower", "upper", "tolerance", "verdict")
    return {h: {k: v[k] for k in keep} for h, v in ((evidence or {}).get("heads") or {}).items()}


def _short(evidence: dict | None) -> str:
    if not evidence:
        return "no evidence yet"
    heads = "; ".join(f"{h} n={v['n']:.0f} d={v['estimate']:+.4f} [{v['lower']:+.4f},{v['upper']:+.4f}] "
                      f"tol {v['tolerance']:.4f} {v['verdict']}" for h, v in _heads(evidence).items())
    return f"{evidence.get('step_scored', 0):.0f} scored in {evidence.get('elapsed_s', 0):.0f}s; {heads or 'no heads'}"


def run_scenario(ctx: Context, args, label: str, primary: dict, candidate: dict, expect: str, events: list,
                 policy_file: str | None, tag: str) -> dict:
    """Run one rollout end to end and return what the report needs (see bench/rollout/__init__.py)."""
    from streamer.rollout_state import RolloutStore

    prefix, topic = ctx.prefix(tag), ctx.topic(f"rollout-{tag}")
    service = ServiceRun(ctx, primary["path"], prefix, topic, f"serve-{tag}", registry_poll_ms=500)
    store = RolloutStore(ctx.client, prefix)
    out: dict = {"label": label, "expect": expect, "primary": primary["ref"], "candidate": candidate["ref"],
                 "service_log": str(service.log_path)}
    replayer = Replayer(ctx.broker, topic, events, args.rate)
    try:
        service.wait_ready()
        log(f"[{label}] service ready; replaying {len(events):,} events at {args.rate:g}/s, rollout start in "
            f"{args.warmup_s:g}s")
        replayer.start()
        time.sleep(args.warmup_s)
        started = rollout_start(ctx, prefix, candidate["ref"], policy_file)
        t0 = time.time()
        if started.returncode != 0:
            raise RuntimeError(f"seqcast rollout start failed ({started.returncode}): {started.stderr.strip()}")
        out["start_output"] = started.stdout.strip()
        out["warmup_events"] = replayer.sent_at(t0)
        log(f"[{label}] {started.stdout.strip().splitlines()[0]}")
        out.update(follow(ctx, args, label, service, store, replayer, t0))
    finally:
        replayer.stop()
        out["replay"] = {"sent": replayer.sent, "of": len(events), "achieved_rate": round(replayer.achieved_rate(), 1),
                         "seconds": round((replayer.finished_at or time.time()) - replayer.started_at, 1),
                         "error": repr(replayer.error) if replayer.error else None}
        try:
            if replayer.sent and service.proc.poll() is None:
                out["served"] = served(ctx, service, replayer.sent, out, candidate["version"])
        finally:
            out["service_exit"] = service.stop()
    return out


def follow(ctx: Context, args, label: str, service: ServiceRun, store, replayer: Replayer, t0: float) -> dict:
    """Poll the rollout until it is terminal and applied, the traffic ran out (+ --grace-s), or --timeout."""
    seen: list[dict] = []
    max_lag, lag_samples, last_progress, ran_out_at, last_evidence = 0.0, [], 0.0, None, None
    end_reason, state = "timeout", None
    while True:
        service.check_alive()
        now = time.time()
        _, state = store.load()
        decisions = list(reversed(store.decisions(50)))
        for d in decisions[len(seen):]:
            seen.append(d)
            log(f"[{label}] decision at {d['at'] - t0:.1f}s: {d['outcome']} ({d['from']} -> {d['to']}): {d['reason']}")
        evidence = store.evidence()
        if evidence and state is not None and evidence.get("rollout") == state.id:
            last_evidence = evidence
        metrics = scrape(service)
        if metrics:
            lag_samples.append(metrics["lag"])
            max_lag = max(max_lag, metrics["lag"])
        if state is not None and state.terminal and state.applied:
            end_reason = "decided"
            break
        if replayer.done and ran_out_at is None:
            ran_out_at = now
            log(f"[{label}] the replay ended ({replayer.sent:,} events) with the rollout in {state.describe()}; "
                f"waiting {args.grace_s:g}s for a last decision")
        if ran_out_at is not None and now - ran_out_at >= args.grace_s:
            end_reason = "traffic ran out"
            break
        if now - t0 >= args.timeout:
            break
        if now - last_progress >= PROGRESS_S:
            last_progress = now
            log(f"[{label}] {now - t0:5.0f}s {state.describe() if state else '?'}: {_short(last_evidence)}; "
                f"replayed {replayer.sent:,}; lag {metrics.get('lag', float('nan')):.0f}")
        time.sleep(POLL_S)
    end = time.time()
    result = {"end_reason": end_reason, "outcome": state.phase if state else None,
              "end_s": round(end - t0, 1), "state_reason": state.reason if state else None,
              "policy": state.policy if state else None, "rollout_id": state.id if state else None,
              "t0": t0, "replay_ended_s": round(replayer.finished_at - t0, 1) if replayer.done else None,
              "max_consumer_lag": max_lag,
              "p95_consumer_lag": float(np.percentile(lag_samples, 95)) if lag_samples else None}
    result["decisions"] = [{
        "outcome": d["outcome"], "from": d["from"], "to": d["to"], "reason": d["reason"],
        "at_s": round(d["at"] - t0, 1), "at": d["at"], "by": d.get("by"),
        "after_replay_ended": bool(replayer.done and d["at"] > replayer.finished_at),
        "step_scored": (d.get("evidence") or {}).get("step_scored"),
        "elapsed_in_step_s": (d.get("evidence") or {}).get("elapsed_s"),
        "heads": _heads(d.get("evidence")), "guard": (d.get("evidence") or {}).get("guard"),
        "events_replayed": replayer.sent_at(d["at"])} for d in seen]
    if end_reason != "decided":
        result["last_evidence"] = {"phase": state.describe() if state else None,
                                   "step_scored": (last_evidence or {}).get("step_scored"),
                                   "elapsed_in_step_s": (last_evidence or {}).get("elapsed_s"),
                                   "heads": _heads(last_evidence)}
        log(f"[{label}] stopped ({end_reason}) after {end - t0:.0f}s in {state.describe() if state else '?'}: "
            f"{_short(last_evidence)}")
    return result


def served(ctx: Context, service: ServiceRun, sent: int, out: dict, version: str) -> dict:
    """Read every prediction back: what the candidate served (by arm, and by each decision's time),
    its share of the predictions made during the rollout, and whether every event was predicted once."""
    try:
        service.wait_emitted(sent, timeout_s=180)
    except RuntimeError as err:
        log(f"[{out['label']}] {err}")
    metrics = scrape(service)
    records = ctx.read(service.output_topic, int(sum(metrics.get("emitted", {}).values()) or sent), 240)
    rows = []
    for r in records:
        body = json.loads(r.value)
        rows.append((body["event_id"], body["model"]["version"], body["model"]["arm"], r.timestamp_ms / 1000))
    ids = Counter(r[0] for r in rows)
    t0 = out.get("t0", 0.0)
    end = t0 + out.get("end_s", 0.0)
    during = [r for r in rows if t0 <= r[3] <= end]
    canary = [r for r in rows if r[1] == version and r[2] == "canary"]
    for d in out.get("decisions", []):
        d["candidate_served_by_then"] = sum(1 for r in canary if r[3] <= d["at"])
    return {"predictions": len(rows), "distinct_events": len(ids), "sent": sent,
            "duplicates": sum(c - 1 for c in ids.values() if c > 1), "missing": max(sent - len(ids), 0),
            "by_version_arm": {f"{v}/{a}": n for (v, a), n in sorted(Counter((r[1], r[2]) for r in rows).items())},
            "during_rollout": len(during), "candidate_canary": len(canary),
            "candidate_canary_share_during": round(len(canary) / max(len(during), 1), 4),
            "candidate_primary_after": sum(1 for r in rows if r[1] == version and r[2] == "primary"),
            "candidate_shadow_emitted": sum(1 for r in rows if r[1] == version and r[2] == "shadow"),
            "metrics_emitted": {f"{v}/{a}": n for (v, a), n in sorted(metrics.get("emitted", {}).items())}}

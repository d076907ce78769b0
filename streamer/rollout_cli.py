"""`seqcast rollout start|status|abort|history|controller`: rollouts that decide for themselves.

`start` only writes the rollout into Redis (`streamer.rollout_state`); a
controller acts on it: a thread of every `seqcast serve` (setting
`rollout_controller`, on by default) or `seqcast rollout controller` as its
own process. The manual commands (`seqcast models promote|canary|shadow|
rollback`) stay the fallback; a manual change of the registry mid-rollout
stops the rollout and leaves the registry as the person set it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import fields

from streamer.rollout_policy import Policy, PolicyError
from streamer.settings import Settings, SettingsError

POLICY_HELP = {
    "shadow_min_scored": "paired judgments in the shadow phase before it may go on; 0 = no shadow phase",
    "shadow_max_seconds": "the shadow phase's time limit; still undecided then = rolled back",
    "steps": "canary steps, percent of users, comma-separated; after the last one: promoted",
    "step_min_scored": "candidate predictions scored during a canary step before it may go on",
    "step_min_seconds": "shortest canary step, seconds",
    "step_max_seconds": "longest canary step; still undecided then = rolled back",
    "heads": "heads that decide, where both models have them: items (HR@K), forecast (MAE)",
    "max_regression": "largest tolerated loss, relative to the primary (0.02 = 2%% of its HR, or 2%% more MAE)",
    "alpha": "chance of rolling back a model within tolerance (split over the heads)",
    "beta": "chance of going on with a model worse than tolerated (split over the heads)",
    "min_evidence": "no statistical call on fewer judgments",
    "max_error_rate": "guard rail: candidate predictions failed / asked, per step",
    "max_latency_ratio": "guard rail: candidate p99 model call <= RATIO x primary p99 + slack",
    "latency_slack_ms": "guard rail: the slack of the latency rail, ms",
    "guard_min_calls": "model calls per arm before the latency rail is judged",
}


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "rollout", help="automated rollouts: shadow, canary steps, promoted or rolled back on live accuracy",
        description="Roll a model version out by itself: a shadow phase (scored on the same events as the "
        "primary, never emitted), then canary steps (5 -> 25 -> 50% of users by default), each judged on live "
        "HR@K and MAE by a sequential test that stays valid however often it looks, with guard rails on the "
        "candidate's failures and p99 model call time. A regression beyond tolerance, a broken guard rail or a "
        "step that stays undecided rolls back; otherwise the candidate is promoted. See docs/rollouts.md.")
    p.add_argument("--redis-url", help="default: SEQCAST_REDIS_URL or redis://127.0.0.1:6379/0")
    p.add_argument("--key-prefix", help="default: SEQCAST_KEY_PREFIX or sc")
    p.add_argument("--models-dir", help="default: SEQCAST_MODELS_DIR or models")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start rolling REF out against the active version",
                               description="Start a rollout of REF (<name>/<version> under the models directory) "
                               "against the active version. Defaults: " + _defaults())
    start.add_argument("ref", metavar="REF")
    start.add_argument("--policy", metavar="FILE", help="JSON object of policy fields (flags below win over it)")
    for f in fields(Policy):
        start.add_argument("--" + f.name.replace("_", "-"), dest=f.name, metavar="X", help=POLICY_HELP.get(f.name))
    start.add_argument("--no-verify", action="store_true", help="skip the local checksum, signature and warm-up check")
    start.add_argument("--wait", action="store_true", help="follow the rollout to its end, a line per decision; "
                       "exit 0 if promoted, 1 if rolled back or aborted (for deploy pipelines)")
    status = actions.add_parser("status", help="phase, weight, evidence so far and the decision boundary")
    status.add_argument("--json", action="store_true", help="the state and evidence as JSON")
    actions.add_parser("abort", help="roll the current rollout back now")
    history = actions.add_parser("history", help="past decisions with their evidence, newest first")
    history.add_argument("--count", type=int, default=20, help="how many, newest first (default 20)")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    controller = actions.add_parser("controller", help="run a controller (its own process; competes for the lease)",
                                    description="Run the rollout controller until SIGTERM/SIGINT. Any number may run "
                                    "(and every `seqcast serve` with rollout_controller on runs one): they share one "
                                    "lease in Redis and only its holder acts. Serves /metrics on --metrics-port.")
    controller.add_argument("--metrics-port", type=int, default=9109, help="0 = no HTTP server (default 9109)")
    controller.add_argument("--metrics-host", default="0.0.0.0")
    controller.add_argument("--interval-s", type=float, default=1.0, help="seconds between two ticks")
    controller.add_argument("--lease-s", type=float, default=10.0,
                            help="the lease lasts this long unless renewed: how soon another controller takes "
                            "over from a dead one (default 10)")
    p.set_defaults(handler=cmd_rollout)


def _defaults() -> str:
    d = Policy()
    return (f"shadow until {d.shadow_min_scored} paired judgments, canary steps {'/'.join(f'{s:g}' for s in d.steps)}% "
            f"(each >= {d.step_min_scored} scored and >= {d.step_min_seconds:g} s), at most "
            f"{d.max_regression * 100:g}% worse, alpha {d.alpha:g}, beta {d.beta:g}.")


def cmd_rollout(args: argparse.Namespace) -> int:
    import redis

    from streamer.bundle import BundleError
    from streamer.connections import check_redis, redis_client
    from streamer.security import SecurityError

    try:
        settings = Settings.from_env(redis_url=args.redis_url, key_prefix=args.key_prefix, models_dir=args.models_dir)
        client = redis_client(settings)
        check_redis(settings, client)
        if args.action == "start":
            return start(args, settings, client)
        if args.action == "status":
            return status(args, settings, client)
        if args.action == "abort":
            return abort(settings, client)
        if args.action == "history":
            return history(args, settings, client)
        return run_controller(args, settings, client)
    except (SettingsError, SecurityError, BundleError, PolicyError, LookupError, ValueError, redis.RedisError) as err:
        print(f"seqcast rollout: {err}", file=sys.stderr)
        return 2


def _version(settings: Settings, ref: str) -> str:
    from streamer.bundle import Manifest
    from streamer.rollout import resolve

    return Manifest.from_file(resolve(settings.models_dir, ref) / "manifest.json").version


def start(args: argparse.Namespace, settings: Settings, client) -> int:
    from streamer.models_cli import _ref
    from streamer.registry import Registry
    from streamer.rollout_state import RolloutStore, new_state, redis_now

    policy = Policy.from_file(args.policy) if args.policy else Policy()
    policy = policy.with_overrides({f.name: getattr(args, f.name) if f.name in LIST_FIELDS
                                    else _number(getattr(args, f.name)) for f in fields(Policy)})
    ref = _ref(settings, args.ref, not args.no_verify)
    registry, store = Registry(client, settings.key_prefix), RolloutStore(client, settings.key_prefix)
    current = registry.read()
    if not current.active:
        raise LookupError("no active model to compare with: promote one first (seqcast models promote REF)")
    if current.active == ref:
        raise ValueError(f"{ref} is already the active version")
    if current.canary or current.shadow:
        busy = ", ".join(f"{role} {r}" for role, r in (("canary", current.canary), ("shadow", current.shadow)) if r)
        raise ValueError(f"the registry already has a {busy}: end it first "
                         "(seqcast models canary --off / seqcast models shadow --off)")
    raw, running = store.load()
    if running is not None and not running.terminal:
        raise ValueError(f"rollout {running.id} of {running.ref} is in progress ({running.describe()}): "
                         "wait for it or `seqcast rollout abort`")
    state = new_state(ref, _version(settings, ref), current.active, _version(settings, current.active),
                      policy.to_dict(), now=redis_now(client))
    if not store.commit(raw, state):
        raise ValueError("another rollout was started at the same moment; see `seqcast rollout status`")
    steps = " -> ".join(f"{s:g}%" for s in policy.steps)
    first = f"shadow (>= {policy.shadow_min_scored} paired judgments), then " if policy.shadow else ""
    print(f"rollout {state.id}: {ref} against {current.active}: {first}canary {steps}, then promoted "
          f"(at most {policy.max_regression:.0%} worse; alpha {policy.alpha:g}, beta {policy.beta:g})")
    holder = store.lease_holder()
    print(f"controller: {holder}" if holder else
          "controller: none holds the lease yet; every `seqcast serve` with rollout_controller on runs one, "
          "or start `seqcast rollout controller`", flush=True)
    return wait_for_end(store, state.id) if args.wait else 0


def wait_for_end(store, rollout_id: str, poll_s: float = 1.0) -> int:
    """Follow the rollout, a line per decision, until it ends: 0 promoted, 1 rolled back or aborted
    (a deploy pipeline can gate on it). Ctrl-C stops following, not the rollout."""
    seen = 0
    try:
        while True:
            mine = [d for d in reversed(store.decisions(50)) if d.get("rollout") == rollout_id]
            for d in mine[seen:]:
                print(f"{d['outcome']}: {d['from']} -> {d['to']}: {d['reason']}", flush=True)
            seen = len(mine)
            _, state = store.load()
            if state is None or state.id != rollout_id:
                print("the rollout was replaced by another one", file=sys.stderr)
                return 1
            if state.terminal and state.applied:
                print(f"rollout {rollout_id}: {state.phase}", flush=True)
                return 0 if state.phase == "promoted" else 1
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print("stopped following; the rollout goes on (seqcast rollout status)", file=sys.stderr)
        return 130


LIST_FIELDS = ("steps", "heads")  # comma-separated on the command line; Policy.from_dict splits them


def _number(raw: str | None):
    """A flag's value as a number where it reads as one; otherwise as given, for Policy to name."""
    if raw is None or not raw.strip():
        return raw
    try:
        return int(raw) if raw.strip().lstrip("-").isdigit() else float(raw)
    except ValueError:
        return raw  # not a number: Policy names the problem


def status(args: argparse.Namespace, settings: Settings, client) -> int:
    from streamer.rollout_state import RolloutStore, redis_now

    store = RolloutStore(client, settings.key_prefix)
    _, state = store.load()
    evidence = store.evidence()
    if args.json:
        print(json.dumps({"state": None if state is None else json.loads(state.to_json()),
                          "evidence": evidence, "controller": store.lease_holder(),
                          "decisions": store.decisions(5)}, indent=2))
        return 0
    print(render_status(state, evidence, store.lease_holder(), store.decisions(3), redis_now(client)))
    return 0


def render_status(state, evidence: dict | None, holder: str | None, decisions: list[dict],
                  now: float | None = None) -> str:
    """The status as text; `now` on the clock the rollout's times were written with (Redis's)."""
    now = time.time() if now is None else now
    _ago = lambda at: f"{max(0.0, now - at):.0f} s ago"  # noqa: E731
    if state is None:
        return "no rollout yet (seqcast rollout start REF)"
    policy = Policy.from_dict(state.policy)
    lines = [f"rollout {state.id}: {state.ref} ({state.version}) against {state.baseline_ref}",
             f"phase: {state.describe()}" + ("" if state.applied else " (being applied)") +
             f"; candidate serves {state.weight:g}% of users; started {_ago(state.started_at)}",
             f"controller: {holder or 'none holds the lease'}", f"last reason: {state.reason}"]
    if not state.terminal and evidence and evidence.get("rollout") == state.id:
        shadow = state.phase == "shadow"
        need = policy.shadow_min_scored if shadow else policy.step_min_scored
        window = (f"0..{policy.shadow_max_seconds:g} s" if shadow
                  else f"{policy.step_min_seconds:g}..{policy.step_max_seconds:g} s")
        lines.append(f"this {'phase' if shadow else 'step'}: {evidence['step_scored']:.0f}/{need} scored, "
                     f"{evidence['elapsed_s']:.0f} s of {window}; evidence as of {_ago(evidence['at'])}")
        lines.append("  head      n        candidate  primary    delta [lower, upper]            boundary  verdict")
        for head, h in evidence["heads"].items():
            metric = "HR" if head == "items" else "MAE"
            lines.append(f"  {head:<9} {h['n']:<8.0f} {metric} {h['candidate']:<6.4g} {h['baseline']:<10.4g} "
                         f"{h['estimate']:+.4f} [{h['lower']:+.4f}, {h['upper']:+.4f}]  "
                         f"{-h['tolerance']:+.4f}   {h['verdict']}")
        if not evidence["heads"]:
            lines.append("  (no judgments yet: predictions are scored when the user's next event arrives)")
        guard = evidence.get("guard") or {}
        if guard:
            lines.append("guard rails: " + ", ".join(f"{k} {v:.4g}" for k, v in guard.items()
                                                     if isinstance(v, (int, float)) and math.isfinite(v)))
        lines.append("rolls back when an upper bound < boundary or a guard rail breaks; goes on when every lower "
                     "bound > boundary with the step's minimum judgments and time")
    for d in decisions:
        lines.append(f"decision {_ago(d['at'])}: {d['outcome']} ({d['from']} -> {d['to']}): {d['reason']}")
    return "\n".join(lines)


def abort(settings: Settings, client) -> int:
    from streamer.registry import Registry
    from streamer.rollout_controller import apply, next_state
    from streamer.rollout_state import RolloutStore, redis_now

    store, registry = RolloutStore(client, settings.key_prefix), Registry(client, settings.key_prefix)
    for _ in range(10):  # a controller may move the state between our read and our write: read again
        raw, state = store.load()
        if state is not None and state.terminal and not state.applied and not state.hands_off:
            apply(registry, state)  # ended but not yet applied (a killed abort, no controller): finish it
            store.commit(raw, state.moved(applied=True, applied_at=redis_now(client)))
            print(f"rollout {state.id} was already {state.phase}; the registry now matches: "
                  f"active {registry.read().active}")
            return 0
        if state is None or state.terminal:
            raise LookupError("no rollout in progress" + (f" (the last one {state.phase})" if state else ""))
        new = next_state(state, "abort", "aborted by an operator (seqcast rollout abort)")
        decision = {"rollout": state.id, "ref": state.ref, "version": state.version, "baseline": state.baseline_ref,
                    "outcome": "abort", "from": state.describe(), "to": new.describe(), "reason": new.reason,
                    "at": redis_now(client), "by": "seqcast rollout abort", "evidence": store.evidence()}
        if store.commit(raw, new, decision=decision):
            apply(registry, new)
            store.commit(new.to_json(), new.moved(applied=True, applied_at=redis_now(client)))
            print(f"rollout {state.id} aborted in {state.describe()}: {state.ref} no longer serves; "
                  f"active: {registry.read().active}")
            return 0
    raise ValueError("the rollout kept changing under the abort; try again")


def history(args: argparse.Namespace, settings: Settings, client) -> int:
    from streamer.rollout_state import RolloutStore

    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    decisions = RolloutStore(client, settings.key_prefix).decisions(args.count)
    for d in decisions:
        if args.json:
            print(json.dumps(d, sort_keys=True))
        else:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d["at"]))
            print(f"{at}  {d['rollout']}  {d['ref']}  {d['outcome']:<8} {d['from']} -> {d['to']}: {d['reason']}")
    if not decisions and not args.json:
        print("no rollout decisions yet")
    return 0


def run_controller(args: argparse.Namespace, settings: Settings, client) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from streamer.logs import configure, log_event, redact
    from streamer.rollout_controller import Controller, RolloutMetrics

    configure(settings.log_level)
    redact(*settings.secrets())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    registry = CollectorRegistry()
    metrics = RolloutMetrics.create(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, args.metrics_host, registry)
    if not 0 < args.interval_s < args.lease_s:
        raise SettingsError(f"--interval-s ({args.interval_s}) must be positive and shorter than --lease-s "
                            f"({args.lease_s}), or the lease lapses between two ticks")
    controller = Controller(client, settings.key_prefix, metrics, interval_s=args.interval_s,
                            lease_ms=int(args.lease_s * 1000), stop=stop)
    controller.run(stop.is_set)
    log_event(logging.getLogger("streamer.rollout_controller"), "rollout controller stopped")
    return 0

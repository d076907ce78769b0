"""The rollout controller: shadow, canary steps, then promote or roll back, by itself.

Like Flagger, but the metric is whether the model's predictions come true
(live HR@K and MAE, `streamer.live_accuracy`), judged by a sequential test
that stays valid however often it looks (`streamer.sequential`), with guard
rails on the candidate arm's failures and p99 model call time.

Where it runs: `seqcast rollout controller` (its own small process) and,
unless `rollout_controller` is off, a thread of every `seqcast serve`. All of
them compete for one lease in Redis; only the holder acts, and every change
it makes is a compare-and-set that also checks the lease
(`streamer.rollout_state`), so two controllers never act on one rollout at
once, and a controller killed mid-step is completed, not repeated, by the
next holder. Each tick (about a second):

1. hold the lease (or stand by);
2. if the registry does not match the state yet (`applied: false`), make it
   match (idempotent writes), snapshot the live totals and start the step's clock;
3. otherwise check nobody changed the registry by hand (then abort: a
   person took over) and no live service refused the candidate's bundle (then
   roll back: it cannot be served), gather the evidence, publish it, and judge: a guard rail
   broken or a head worse than tolerated -> rollback; every head not worse
   with the step's minimum judgments and time -> advance (or promote after
   the last step); the step's time is up -> rollback (undecided is not good
   enough to go on).

A decision is one compare-and-set (state + decision history), logged as a
JSON line and counted in Prometheus (`seqcast_rollout_*`).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.logs import log_event
from streamer.registry import Assignment, Registry
from streamer.rollout_evidence import Evidence, gather, snapshot
from streamer.rollout_policy import Policy
from streamer.served import read_served
from streamer.rollout_state import (ABORTED, CANARY, OUTCOMES, PHASES, PROMOTED, ROLLED_BACK, SHADOW,
                                    RolloutState, RolloutStore, owner_id, redis_now)

log = logging.getLogger("streamer.rollout_controller")
LEASE_MS = 10_000
SETTLE_S = 60.0  # how long after its end a rollout still undoes late writes of its earlier steps


class RolloutMetrics(NamedTuple):
    phase: Gauge  # {phase}
    weight: Gauge
    decisions: Counter  # {outcome}
    leader: Gauge
    delta: Gauge  # {head, bound}
    scored: Gauge  # {head}

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "RolloutMetrics":
        p = "seqcast_rollout_"
        metrics = cls(
            Gauge(p + "phase", "1 for the current rollout phase (idle, shadow, canary, promoted, rolled_back, "
                  "aborted), 0 for the others; set by the controller holding the lease.", ["phase"],
                  registry=registry),
            Gauge(p + "weight", "Percent of users served by the rollout's candidate (0 in shadow, 100 promoted).",
                  registry=registry),
            Counter(p + "decisions", "Rollout decisions taken by this controller, by outcome.", ["outcome"],
                    registry=registry),
            Gauge(p + "leader", "1 while this process holds the rollout controller lease.", registry=registry),
            Gauge(p + "delta", "Evidence: candidate minus primary, higher is better (HR@K, or minus MAE); "
                  "bound: estimate, lower, upper, tolerance (reported as -tolerance).", ["head", "bound"],
                  registry=registry),
            Gauge(p + "scored", "Judgments in the current evidence, by head.", ["head"], registry=registry),
        )
        for outcome in OUTCOMES:
            metrics.decisions.labels(outcome)
        for phase in PHASES:
            metrics.phase.labels(phase).set(1 if phase == "idle" else 0)
        return metrics

    def show(self, state: RolloutState | None, evidence: Evidence | None) -> None:
        current = "idle" if state is None else state.phase
        for phase in PHASES:
            self.phase.labels(phase).set(1 if phase == current else 0)
        self.weight.set(0.0 if state is None else state.weight)
        if state is None or state.terminal:  # no evidence is current: no stale bounds on the dashboard
            self.delta.clear()
            self.scored.clear()
        for head, h in (evidence.heads if evidence else {}).items():
            for bound, value in (("estimate", h.estimate), ("lower", h.lower), ("upper", h.upper),
                                 ("tolerance", -h.tolerance)):
                self.delta.labels(head, bound).set(value)
            self.scored.labels(head).set(h.n)


def judge(policy: Policy, state: RolloutState, evidence: Evidence) -> tuple[str, str] | None:
    """(outcome, reason) to act on now, or None to keep gathering evidence. Pure."""
    if evidence.breach:
        return "rollback", f"guard rail: {evidence.breach}"
    for h in evidence.heads.values():
        if h.verdict == "worse":
            metric = "HR@K" if h.head == "items" else "MAE"
            return "rollback", (f"{h.head} head worse than tolerated: {metric} {h.candidate:.4g} vs primary "
                                f"{h.baseline:.4g}; delta upper bound {h.upper:.4g} < -{h.tolerance:.4g} "
                                f"after {h.n:g} judgments")
    shadow = state.phase == SHADOW
    min_scored = policy.shadow_min_scored if shadow else policy.step_min_scored
    min_s = 0.0 if shadow else policy.step_min_seconds
    heads = evidence.heads.values()
    if evidence.step_scored >= min_scored and evidence.elapsed_s >= min_s and heads:
        last = state.phase == CANARY and state.step == len(policy.steps) - 1
        outcome = "promote" if last else "advance"
        if all(h.verdict == "not_worse" for h in heads):
            shown = ", ".join(f"{h.head} delta lower bound {h.lower:.4g} > -{h.tolerance:.4g}" for h in heads)
            return outcome, f"not worse than tolerated ({shown})"
        if state.phase == CANARY and policy.shadow:
            # non-inferiority was shown in shadow, paired on the same events (beta); a canary step guards
            # against what shadow cannot see, and goes on once its minimums pass with no regression found
            return outcome, (f"no regression beyond tolerance in {evidence.step_scored:.0f} judgments of this step "
                             "(not worse than tolerated was shown in shadow)")
    max_s = policy.shadow_max_seconds if shadow else policy.step_max_seconds
    if evidence.elapsed_s >= max_s:
        return "rollback", (f"undecided after {evidence.elapsed_s:.0f} s in {state.describe()} "
                            f"(max {max_s:g} s): not shown to be within tolerance")
    return None


def next_state(state: RolloutState, outcome: str, reason: str) -> RolloutState:
    """The state a decision leads to (applied: false until the registry matches it)."""
    if outcome == "advance":
        return state.moved(phase=CANARY, step=state.step + 1, applied=False, reason=reason)
    phase = {"promote": PROMOTED, "rollback": ROLLED_BACK, "abort": ABORTED}[outcome]
    return state.moved(phase=phase, applied=False, reason=reason)


def matches(state: RolloutState, current: Assignment) -> bool:
    """Whether the registry is what `state` wants (its roles only; other refs are not ours)."""
    ref = state.ref
    if state.phase == SHADOW:
        return current.shadow == ref and current.canary != ref
    if state.phase == CANARY:
        return current.shadow != ref and current.canary == ref and current.canary_percent == state.weight
    if state.phase == PROMOTED:
        return current.active == ref and ref not in (current.canary, current.shadow)
    return ref not in (current.canary, current.shadow)


def apply(registry: Registry, state: RolloutState) -> bool:
    """Make the registry match `state`; idempotent (writes only what differs). True if it wrote."""
    current = registry.read()
    if matches(state, current):
        return False
    ref = state.ref
    if state.phase == PROMOTED:
        if current.active != ref:
            registry.promote(ref)  # ends a canary of ref too
            current = registry.read()
    canary = (current.canary, current.canary_percent) if current.canary and current.canary != ref else None
    shadow = current.shadow if current.shadow != ref else None
    if state.phase == SHADOW:
        shadow = ref
    elif state.phase == CANARY:
        canary = (ref, state.weight)
    if (canary, shadow) != ((current.canary, current.canary_percent) if current.canary else None, current.shadow):
        registry.set_roles(canary, shadow)
    return True


class Controller:
    """One controller: `tick()` does one round; `start()` runs it on a thread until `stop()`."""

    def __init__(self, client, prefix: str, metrics: RolloutMetrics | None = None, owner: str | None = None,
                 interval_s: float = 1.0, lease_ms: int = LEASE_MS, clock: Callable[[], float] | None = None,
                 stop: threading.Event | None = None) -> None:
        self.store = RolloutStore(client, prefix)
        self.registry = Registry(client, prefix)
        self.client, self.prefix = client, prefix
        self.metrics = metrics
        self.owner = owner or owner_id()
        self.interval_s, self.lease_ms = interval_s, lease_ms
        self.clock = clock or (lambda: redis_now(client))  # one clock for every controller: Redis's
        self._stop = stop or threading.Event()  # set by stop() or, for the own process, by SIGTERM
        self._thread: threading.Thread | None = None
        self._failures = 0

    def tick(self) -> str | None:
        """One round; returns the outcome decided in it, if any."""
        leader = self.store.hold_lease(self.owner, self.lease_ms)
        if self.metrics:
            self.metrics.leader.set(1 if leader else 0)
        if not leader:
            return None
        raw, state = self.store.load()
        if state is None:
            if self.metrics:
                self.metrics.show(None, None)
            return None
        if not state.applied:
            self._complete(raw, state)
            return None
        now = self.clock()
        if state.terminal:
            self._settle(state, now)
            if self.metrics:
                self.metrics.show(state, None)
            return None
        current = self.registry.read()
        if current.active != state.baseline_ref:
            return self.decide(raw, state, "abort", f"the active model was changed by hand to {current.active}; "
                               "the rollout stops comparing against a primary that no longer serves",
                               hands_off=True)
        if not matches(state, current):
            return self.decide(raw, state, "abort", "the registry's canary/shadow was changed by hand: "
                               "a person took over this rollout", hands_off=True)
        refused = [entry for entry in read_served(self.client, self.prefix, now)[0]
                   if entry.refused and entry.refused.get("ref") == state.ref]
        if refused:  # a bundle the services will not load cannot be judged, nor served: stop now
            return self.decide(raw, state, "rollback", f"the candidate was refused by {len(refused)} live "
                               f"instance(s): {refused[0].refused.get('error')}")
        evidence = gather(self.client, self.prefix, state, now)
        self.store.publish_evidence({"rollout": state.id, "at": now, **evidence.to_dict()})
        if self.metrics:
            self.metrics.show(state, evidence)
        verdict = judge(Policy.from_dict(state.policy), state, evidence)
        if verdict is None:
            return None
        return self.decide(raw, state, *verdict, evidence=evidence)

    def decide(self, raw: str, state: RolloutState, outcome: str, reason: str,
               evidence: Evidence | None = None, hands_off: bool = False) -> str | None:
        """Record `outcome` (compare-and-set with the decision) and make the registry follow, unless
        `hands_off` (a person changed the registry: the controller stops and leaves it as they set it)."""
        new = next_state(state, outcome, reason)
        if hands_off:
            new = new.moved(applied=True, hands_off=True, applied_at=self.clock())
        now = self.clock()
        decision = {"rollout": state.id, "ref": state.ref, "version": state.version, "baseline": state.baseline_ref,
                    "outcome": outcome, "from": state.describe(), "to": new.describe(), "reason": reason,
                    "at": now, "by": self.owner, "evidence": evidence.to_dict() if evidence else None}
        if not self.store.commit(raw, new, self.owner, decision):
            return None  # the state moved (an operator's abort) or the lease was lost: read again next tick
        log_event(log, "rollout decision", outcome=outcome, rollout=state.id, ref=state.ref, phase_from=state.describe(),
                  phase_to=new.describe(), reason=reason, evidence=decision["evidence"])
        if self.metrics:
            self.metrics.decisions.labels(outcome).inc()
        if not new.applied:
            self._complete(new.to_json(), new)
        return outcome

    def _settle(self, state: RolloutState, now: float) -> None:
        """For SETTLE_S after a rollout ended, undo a late registry write of an older step (a controller
        that stalled past its lease, or one racing an operator's abort, may land one just after the
        end); after that the registry is the operators' again. Never for a hands-off end."""
        if state.hands_off or not state.applied or now - state.applied_at > SETTLE_S:
            return
        if not matches(state, self.registry.read()) and apply(self.registry, state):
            log_event(log, "rollout end re-applied: a late write of an earlier step was undone", logging.WARNING,
                      rollout=state.id, ref=state.ref, phase=state.describe())

    def _complete(self, raw: str, state: RolloutState) -> None:
        """Registry to match `state`, then `applied: true` with the step's snapshots and clock."""
        if self.store.load()[0] != raw:
            return  # moved on since it was read (an operator's abort, another controller): not ours to apply
        apply(self.registry, state)
        now = self.clock()
        changes: dict = {"applied": True, "applied_at": now}
        if state.phase in (SHADOW, CANARY):
            phase_snapshot, step_snapshot = snapshot(self.client, self.prefix, state)
            new_phase = state.phase_started_at == 0.0 or state.phase == SHADOW or state.step == 0
            changes.update(step_snapshot=step_snapshot, step_started_at=now, phase_snapshot=phase_snapshot)
            if new_phase:
                changes["phase_started_at"] = now
        if self.store.commit(raw, state.moved(**changes), self.owner):
            log_event(log, "rollout step applied", rollout=state.id, ref=state.ref, phase=state.describe())
        if self.metrics:
            self.metrics.show(state.moved(**changes), None)

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> "Controller":
        self._thread = threading.Thread(target=self.run, args=(self._stop.is_set,), name="rollout-controller",
                                        daemon=True)
        self._thread.start()
        return self

    def run(self, should_stop: Callable[[], bool]) -> None:
        log_event(log, "rollout controller started", owner=self.owner, interval_s=self.interval_s)
        while not should_stop():
            try:
                self.tick()
                if self._failures:
                    log_event(log, "rollout controller works again", failures=self._failures)
                    self._failures = 0
            except Exception as err:  # Redis down, a bug: never fatal for a service that hosts it
                if self._failures == 0:
                    log_event(log, "rollout controller tick failed; retrying", logging.WARNING, error=repr(err))
                self._failures += 1
            self._stop.wait(self.interval_s)
        try:
            self.store.release_lease(self.owner)
        except Exception:
            pass  # it expires on its own

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

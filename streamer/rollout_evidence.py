"""The evidence a rollout is judged on, read from the live totals in Redis.

Per head (HR@K for items, MAE for the forecast), a time-uniform confidence
sequence on delta = candidate - primary in "higher is better" units
(`streamer.sequential`):

- shadow phase, PAIRED: both models predicted the same events for the same
  users; the paired totals (`streamer.live_totals.read_paired`) hold the sum
  of the per-event differences and of their squares;
- canary phase, UNPAIRED: disjoint user sets (crc32 of the user id); each
  arm's own totals, counted from when the canary phase began (the canary
  arm of the candidate against the primary arm of the baseline).

The tolerance is `max_regression` times the primary's own level over the
same judgments (its HR, or its MAE), so "2% worse" means the same thing for
a catalogue with HR 0.05 and one with HR 0.6. alpha (a false "worse") is split
over the heads that decide and over the two phases (Bonferroni: any head in
either phase can roll back), so it bounds the false rollbacks of a whole
rollout; beta is not, since going on needs every head's lower bound, and a
truly worse head passes only if its own bound is wrong. Guard rails compare the candidate's arm
with the primary over the current step: failure rate, and p99 model call time.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from streamer.arm_perf import FIELDS as PERF_FIELDS
from streamer.arm_perf import minus, quantile, read_perf
from streamer.live_totals import PAIR_FIELDS, TALLY_FIELDS, read_buckets, read_paired, read_totals
from streamer.rollout_policy import Policy
from streamer.rollout_state import CANARY, SHADOW, RolloutState
from streamer.sequential import (MIN_CLUSTERS, Moments, cluster_variance, decide, paired_estimate,
                                 sequential_interval, tau_for, unpaired_estimate)


@dataclass
class HeadEvidence:
    head: str
    n: float  # pairs (shadow) or the smaller arm's judgments (canary)
    estimate: float
    lower: float
    upper: float
    tolerance: float  # the regression tolerated, in the head's units (delta < -tolerance is "worse")
    baseline: float  # the primary's HR or MAE over the same judgments
    candidate: float
    verdict: str  # worse | not_worse | undecided
    clusters: int = 0  # user buckets behind the variance (0: none reported; the per-event variance alone)


@dataclass
class Evidence:
    phase: str
    heads: dict[str, HeadEvidence] = field(default_factory=dict)
    step_scored: float = 0.0  # candidate judgments since the step (or the shadow phase) began
    elapsed_s: float = 0.0  # since the step (or the shadow phase) began
    guard: dict = field(default_factory=dict)
    breach: str | None = None  # a guard rail broken, in words

    def to_dict(self) -> dict:
        return asdict(self)


def candidate_arm(state: RolloutState) -> str:
    return "shadow" if state.phase == SHADOW else "canary"


def snapshot(client, prefix: str, state: RolloutState) -> tuple[dict, dict]:
    """(phase snapshot, step snapshot) of the totals for the phase/step `state` is entering."""
    arm = candidate_arm(state)
    cand_totals = read_totals(client, prefix, state.version).get(arm, {})
    step = {"candidate": {f: cand_totals.get(f, 0.0) for f in TALLY_FIELDS},
            "perf_candidate": read_perf(client, prefix, state.version).get(arm),
            "perf_baseline": read_perf(client, prefix, state.baseline_version).get("primary")}
    if state.phase == CANARY and state.phase_snapshot and state.step > 0:
        return state.phase_snapshot, step  # a later canary step: the canary phase's evidence goes on accumulating
    base_totals = read_totals(client, prefix, state.baseline_version).get("primary", {})
    # the primary's record before this phase: it sets tau (where the interval is tightest) without
    # looking at the data the phase then tests
    phase: dict = {"prior": {f: base_totals.get(f, 0.0) for f in TALLY_FIELDS}}
    if state.phase == SHADOW:
        phase["paired"] = read_paired(client, prefix, state.version).get(state.baseline_version, {})
        phase["paired_buckets"] = read_buckets(client, prefix, state.version, state.baseline_version, paired=True)
    else:
        phase.update(candidate=step["candidate"], baseline=phase["prior"],
                     buckets_candidate=read_buckets(client, prefix, state.version, "canary"),
                     buckets_baseline=read_buckets(client, prefix, state.baseline_version, "primary"))
    return phase, step


def _since(now: dict, before: dict | None, names: tuple[str, ...]) -> dict[str, float]:
    before = before or {}
    return {f: now.get(f, 0.0) - before.get(f, 0.0) for f in names}


def gather(client, prefix: str, state: RolloutState, now: float) -> Evidence:
    policy = Policy.from_dict(state.policy)
    arm = candidate_arm(state)
    evidence = Evidence(state.phase, elapsed_s=max(0.0, now - state.step_started_at))
    cand_now = read_totals(client, prefix, state.version).get(arm, {})
    base_now = read_totals(client, prefix, state.baseline_version).get("primary", {})
    step = _since(cand_now, state.step_snapshot.get("candidate"), TALLY_FIELDS)
    evidence.step_scored = max(step["items_scored"], step["forecast_scored"])
    # the candidate arm's and the primary's own totals over the phase (the shadow phase has one step)
    cand = _since(cand_now, state.phase_snapshot.get("candidate") or state.step_snapshot.get("candidate"),
                  TALLY_FIELDS)
    base = _since(base_now, state.phase_snapshot.get("prior"), TALLY_FIELDS)
    snap = state.phase_snapshot
    if state.phase == SHADOW:
        pairs = _since(read_paired(client, prefix, state.version).get(state.baseline_version, {}),
                       snap.get("paired"), PAIR_FIELDS)
        heads = _paired_heads(pairs, policy)
        evidence.step_scored = max(pairs["pairs_items"], pairs["pairs_forecast"])
        pair_buckets = _buckets_since(read_buckets(client, prefix, state.version, state.baseline_version, True),
                                      snap.get("paired_buckets"))
        clusters = {head: cluster_variance(*_columns(pair_buckets, at)) for head, at in HEAD_COLUMNS.items()}
    else:
        heads = _unpaired_heads(cand, base, policy)
        cand_buckets = _buckets_since(read_buckets(client, prefix, state.version, "canary"),
                                      snap.get("buckets_candidate"))
        base_buckets = _buckets_since(read_buckets(client, prefix, state.baseline_version, "primary"),
                                      snap.get("buckets_baseline"))
        clusters = {}
        for head, at in HEAD_COLUMNS.items():
            (v_c, g_c), (v_b, g_b) = (cluster_variance(*_columns(b, at)) for b in (cand_buckets, base_buckets))
            clusters[head] = (v_c + v_b, min(g_c, g_b))
    planned = policy.shadow_min_scored if state.phase == SHADOW else policy.step_min_scored
    evidence.heads = _judge_heads(heads, policy, snap.get("prior") or {}, planned, clusters)
    evidence.guard, evidence.breach = guard_rails(client, prefix, state, arm, policy)
    skipped = unjudged_forecasts(cand, base, policy)
    if evidence.breach is None and skipped:
        evidence.breach = skipped
    return evidence


HEAD_COLUMNS = {"items": 0, "forecast": 2}  # where a head's (count, sum) sit in a bucket's amounts


def _buckets_since(now: dict[str, list[float]], before: dict | None) -> dict[str, list[float]]:
    before = before or {}
    return {b: [x - y for x, y in zip(amounts, before.get(b, [0.0] * len(amounts)))] for b, amounts in now.items()}


def _columns(buckets: dict[str, list[float]], at: int) -> tuple[list[float], list[float]]:
    """(counts, sums) of one head across the buckets that reported any."""
    rows = [amounts for amounts in buckets.values() if amounts[at] > 0]
    return [r[at] for r in rows], [r[at + 1] for r in rows]


def unjudged_forecasts(cand: dict[str, float], base: dict[str, float], policy: Policy) -> str | None:
    """A forecast that is not finite, or absurd (beyond MAX_SCALED stds), is kept out of the MAE
    (`streamer.live_accuracy`), so a candidate forecasting nonsense would never be judged worse on MAE:
    its share of such forecasts must stay within max_error_rate of the primary's."""
    if "forecast" not in policy.heads:
        return None
    def share(t: dict[str, float]) -> tuple[float, float]:
        asked = t["forecast_scored"] + t["forecast_skipped"]
        return (t["forecast_skipped"] / asked if asked else 0.0), asked
    cand_share, asked = share(cand)
    base_share, _ = share(base)
    if cand["forecast_skipped"] >= 3 and cand_share > base_share + policy.max_error_rate:
        return (f"forecasts left unjudged (not finite or absurd) {cand_share:.2%} of {asked:g} against the "
                f"primary's {base_share:.2%}: more than max_error_rate {policy.max_error_rate:.2%} above it")
    return None


# a head's raw evidence before the interval: (diff-or-candidate Moments, baseline Moments or None,
# baseline level, candidate level, sign) where sign turns "higher is better" back into the metric
_Raw = tuple


def _paired_heads(p: dict[str, float], policy: Policy) -> dict[str, _Raw]:
    heads = {}
    if "items" in policy.heads and p["pairs_items"] > 0:
        n = p["pairs_items"]
        base = p["base_hits"] / n
        heads["items"] = (Moments(n, p["hit_diff"], p["hit_diff_sq"]), None, base, base + p["hit_diff"] / n)
    if "forecast" in policy.heads and p["pairs_forecast"] > 0:
        n = p["pairs_forecast"]
        base = p["base_abs_error"] / n
        heads["forecast"] = (Moments(n, p["err_diff"], p["err_diff_sq"]), None, base, base - p["err_diff"] / n)
    return heads


def _unpaired_heads(cand: dict[str, float], base: dict[str, float], policy: Policy) -> dict[str, _Raw]:
    heads = {}
    if "items" in policy.heads and cand["items_scored"] > 0 and base["items_scored"] > 0:
        c = Moments(cand["items_scored"], cand["hits"], cand["hits"])  # a hit is 0 or 1: x^2 = x
        b = Moments(base["items_scored"], base["hits"], base["hits"])
        heads["items"] = (c, b, b.total / b.n, c.total / c.n)
    if "forecast" in policy.heads and cand["forecast_scored"] > 0 and base["forecast_scored"] > 0 \
            and _squares_cover(cand) and _squares_cover(base):
        c = Moments(cand["forecast_scored"], -cand["abs_error"], cand["sq_error"])  # x = -|error|
        b = Moments(base["forecast_scored"], -base["abs_error"], base["sq_error"])
        heads["forecast"] = (c, b, -b.total / b.n, -c.total / c.n)
    return heads


PRIOR_MIN = 100  # judgments of the primary before the phase needed to trust its variance for tau


def prior_variance(head: str, prior: dict[str, float], base_level: float) -> float:
    """Variance of one observation's difference between two arms like the primary (2 x its own
    variance), from the primary's record before the phase; without one, from the phase's own level
    (a Bernoulli p(1-p), or an error whose sd is its mean), a data-dependent fallback."""
    if head == "items":
        n, hits = prior.get("items_scored", 0.0), prior.get("hits", 0.0)
        p = hits / n if n >= PRIOR_MIN else min(max(base_level, 0.0), 1.0)
        return 2 * max(p * (1 - p), 0.01)
    n = prior.get("forecast_scored", 0.0)
    if n >= PRIOR_MIN:
        mae = prior["abs_error"] / n
        var = max(prior.get("sq_error", 0.0) / n - mae * mae, 0.0)
        return 2 * max(var, 0.01 * mae * mae, 1e-12)
    return 2 * max(base_level * base_level, 1e-12)


def _squares_cover(t: dict[str, float]) -> bool:
    """Whether the squared errors can be those of the absolute errors (sum e^2 >= (sum e)^2 / n). Members
    older than the squares (a rolling upgrade) add errors without squares: their variance would read as
    zero, an interval confident from nothing, so the forecast head waits until the upgrade is done."""
    return t["sq_error"] * t["forecast_scored"] >= t["abs_error"] ** 2 * (1 - 1e-9)


def _judge_heads(heads: dict[str, _Raw], policy: Policy, prior: dict[str, float], planned: int,
                 clusters: dict[str, tuple[float, int]] | None = None) -> dict[str, HeadEvidence]:
    """Each head's interval and verdict. `clusters`: head -> (cluster-robust variance of the estimate,
    user buckets behind it); the larger of it and the per-event variance is used, and no call is made
    on fewer than MIN_CLUSTERS buckets (a handful of users cannot vouch for a model, however many
    events they make). Without bucket totals (members older than them), the per-event variance alone."""
    out = {}
    # a false rollback may come from any head in any phase: alpha is split over both (Bonferroni), so an
    # equal model is wrongly rolled back at most alpha per rollout; going on needs every head in every
    # phase, so beta needs no split (an intersection-union test)
    k = len(policy.heads) * (2 if policy.shadow else 1)  # fixed before the data: not the heads seen so far
    for head, (sample, baseline, base_level, cand_level) in heads.items():
        tolerance = policy.max_regression * abs(base_level)
        # tau: the mixture is tightest where a decision is planned (the phase's minimum judgments)
        tau = float(tau_for(prior_variance(head, prior, base_level), max(planned, policy.min_evidence, 1),
                            policy.alpha / k))
        # the variance floor's prior sd of one observation: a hit difference spans [-1, 1], a hit
        # [0, 1]; a forecast error is on the scale of the primary's MAE
        scale = (1.0 if baseline is None else 0.5) if head == "items" else max(abs(base_level), 1e-9)
        if baseline is None:
            estimate, variance, n = paired_estimate(sample, scale)
        else:
            estimate, variance, n = unpaired_estimate(sample, baseline, scale)
        v_cluster, groups = (clusters or {}).get(head, (0.0, 0))
        interval = sequential_interval(estimate, max(float(variance), v_cluster), n, policy.beta, policy.alpha / k, tau)
        verdict = decide(interval, tolerance, policy.min_evidence)
        if 0 < groups < MIN_CLUSTERS:
            verdict = "undecided"
        out[head] = HeadEvidence(head, float(interval.n), _f(interval.estimate), _f(interval.lower),
                                 _f(interval.upper), tolerance, base_level, cand_level, verdict, groups)
    return out


def _f(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else (math.copysign(1e300, x) if math.isinf(x) else math.nan)


def guard_rails(client, prefix: str, state: RolloutState, arm: str, policy: Policy) -> tuple[dict, str | None]:
    """The candidate arm's failure rate and p99 call time against the primary's, over this step."""
    cand = read_perf(client, prefix, state.version).get(arm)
    base = read_perf(client, prefix, state.baseline_version).get("primary")
    cand = minus(cand, state.step_snapshot.get("perf_candidate")) if cand else None
    base = minus(base, state.step_snapshot.get("perf_baseline")) if base else None
    calls, rows, errors = (PERF_FIELDS.index(f) for f in ("calls", "rows", "errors"))
    guard: dict = {}
    breach = None
    if cand is not None:
        asked = cand[rows] + cand[errors]
        guard["candidate_failed"], guard["candidate_asked"] = cand[errors], asked
        if asked > 0:
            guard["candidate_error_rate"] = cand[errors] / asked
            if cand[errors] / asked > policy.max_error_rate and cand[errors] >= 3:
                breach = (f"error rate {cand[errors] / asked:.2%} of the candidate's predictions "
                          f"({cand[errors]:g} of {asked:g}) > max_error_rate {policy.max_error_rate:.2%}")
    if cand is not None and base is not None:
        guard["candidate_calls"], guard["baseline_calls"] = cand[calls], base[calls]
        if min(cand[calls], base[calls]) >= max(1, policy.guard_min_calls):
            p99_c, p99_b = quantile(cand, 0.99), quantile(base, 0.99)
            guard["candidate_p99_ms"], guard["baseline_p99_ms"] = p99_c * 1000, p99_b * 1000
            limit = policy.max_latency_ratio * p99_b + policy.latency_slack_ms / 1000
            guard["p99_limit_ms"] = limit * 1000
            if breach is None and p99_c > limit:
                breach = (f"p99 model call {p99_c * 1000:.1f} ms > {policy.max_latency_ratio:g} x primary's "
                          f"{p99_b * 1000:.1f} ms + {policy.latency_slack_ms:g} ms")
    return guard, breach

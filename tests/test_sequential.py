"""streamer.sequential: error rates of the always-valid test under continuous monitoring, by simulation.

Thousands of monitored experiments run at once (numpy arrays as Moments fields); each is
looked at every STEP observations up to STEP * LOOKS per arm, and the first look that
decides is what a controller would act on. The key claim (docs/rollouts.md) is the A/A
one: the sequential interval's false "worse" rate stays under alpha at every-look
monitoring, while the classic z-interval, fed the same estimates and decided by the same
`decide_many`, does not.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.sequential import (
    MIN_SAMPLE,
    NOT_WORSE,
    UNDECIDED,
    WORSE,
    Interval,
    Moments,
    decide,
    decide_many,
    fixed_sample_interval,
    mixture_half_width,
    one_sided_level,
    optimal_ratio,
    paired_estimate,
    paired_interval,
    tau_for,
    unpaired_estimate,
    unpaired_interval,
)

RUNS, STEP, LOOKS = 2000, 50, 200  # 2,000 experiments, a look every 50 observations, 10,000 per arm
ALPHA = 0.05
TUNED_AT = 2000  # tau makes the boundary narrowest at this many observations per arm
Z99 = 2.5758  # two-sided 99% normal quantile, for the Monte Carlo slack


def mc_upper(rate: float, runs: int = RUNS) -> float:
    """Upper end of the 99% normal-approximation interval of a binomial proportion `rate` over `runs`."""
    return rate + Z99 * math.sqrt(rate * (1 - rate) / runs)


def _looks() -> np.ndarray:
    return np.broadcast_to(STEP * np.arange(1, LOOKS + 1, dtype=float), (RUNS, LOOKS))


def bernoulli_arm(rng: np.random.Generator, p: float) -> Moments:
    """Cumulative hits of RUNS independent arms at every look (total_sq == total for 0/1)."""
    hits = np.cumsum(rng.binomial(STEP, p, (RUNS, LOOKS)), axis=1).astype(float)
    return Moments(_looks(), hits, hits)


def paired_hits(rng: np.random.Generator, both: float, c_only: float,
                b_only: float) -> tuple[Moments, Moments, Moments]:
    """(diff, candidate, baseline) of paired hit/miss verdicts: one multinomial per block of pairs."""
    counts = rng.multinomial(STEP, [both, c_only, b_only, 1 - both - c_only - b_only], (RUNS, LOOKS))
    cum = np.cumsum(counts, axis=1).astype(float)
    d = cum[..., 1] - cum[..., 2]
    d_sq = cum[..., 1] + cum[..., 2]
    hits_c, hits_b = cum[..., 0] + cum[..., 1], cum[..., 0] + cum[..., 2]
    return Moments(_looks(), d, d_sq), Moments(_looks(), hits_c, hits_c), Moments(_looks(), hits_b, hits_b)


def exponential_arms(rng: np.random.Generator, mae_c: float, mae_b: float) -> tuple[Moments, Moments]:
    """Two independent arms of exponential absolute errors, negated ("higher is better")."""
    sums = np.zeros((2, RUNS, LOOKS))
    squares = np.zeros((2, RUNS, LOOKS))
    for look in range(LOOKS):
        for arm, mae in enumerate((mae_c, mae_b)):
            err = rng.exponential(mae, (RUNS, STEP))
            sums[arm, :, look] = err.sum(axis=1)
            squares[arm, :, look] = (err * err).sum(axis=1)
    sums, squares = np.cumsum(sums, axis=2), np.cumsum(squares, axis=2)
    return Moments(_looks(), -sums[0], squares[0]), Moments(_looks(), -sums[1], squares[1])


def paired_errors(rng: np.random.Generator) -> Moments:
    """A/A paired forecast errors: err = shared + own, both Exp(0.5), so both arms have MAE 1 and correlate."""
    d_sum = np.zeros((RUNS, LOOKS))
    d_sq = np.zeros((RUNS, LOOKS))
    for look in range(LOOKS):
        d = rng.exponential(0.5, (RUNS, STEP)) - rng.exponential(0.5, (RUNS, STEP))  # err_b - err_c
        d_sum[:, look], d_sq[:, look] = d.sum(axis=1), (d * d).sum(axis=1)
    return Moments(_looks(), np.cumsum(d_sum, axis=1), np.cumsum(d_sq, axis=1))


def ever(interval: Interval, tolerance: float, kind: str) -> float:
    """Fraction of runs with at least one look decided `kind`."""
    return float((decide_many(interval, tolerance) == kind).any(axis=1).mean())


def first_decisions(interval: Interval, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per run: the first decision that is not "undecided" (or "undecided") and the n it came at (inf if none)."""
    decisions = decide_many(interval, tolerance)
    decided = decisions != UNDECIDED
    at = np.argmax(decided, axis=1)
    some = decided.any(axis=1)
    kinds = np.where(some, decisions[np.arange(RUNS), at], UNDECIDED)
    return kinds, np.where(some, STEP * (at + 1.0), np.inf)


def _aa_unpaired_hits(rng):
    c, b = bernoulli_arm(rng, 0.1), bernoulli_arm(rng, 0.1)
    return (unpaired_interval(c, b, ALPHA, ALPHA, tau_for(2 * 0.09, TUNED_AT, ALPHA), scale=0.5),
            unpaired_estimate(c, b, scale=0.5))


def _aa_paired_hits(rng):
    diff, _, _ = paired_hits(rng, both=0.07, c_only=0.03, b_only=0.03)  # both arms HR 0.10, correlated
    return paired_interval(diff, ALPHA, ALPHA, tau_for(0.06, TUNED_AT, ALPHA)), paired_estimate(diff)


def _aa_unpaired_mae(rng):
    c, b = exponential_arms(rng, 1.0, 1.0)
    return (unpaired_interval(c, b, ALPHA, ALPHA, tau_for(2.0, TUNED_AT, ALPHA), scale=1.0),
            unpaired_estimate(c, b, scale=1.0))


def _aa_paired_mae(rng):
    diff = paired_errors(rng)
    return paired_interval(diff, ALPHA, ALPHA, tau_for(0.5, TUNED_AT, ALPHA), scale=1.0), paired_estimate(diff, 1.0)


@pytest.mark.parametrize("scenario, seed", [(_aa_unpaired_hits, 11), (_aa_paired_hits, 12),
                                            (_aa_unpaired_mae, 13), (_aa_paired_mae, 14)],
                         ids=["unpaired-HR0.1", "paired-HR0.1", "unpaired-exp-MAE", "paired-exp-MAE"])
def test_aa_false_worse_rate_under_continuous_monitoring(scenario, seed) -> None:
    sequential, estimate = scenario(np.random.default_rng(seed))
    fixed = fixed_sample_interval(*estimate, ALPHA, ALPHA)
    np.testing.assert_array_equal(sequential.estimate, fixed.estimate)  # only the boundary differs
    seq_rate, fixed_rate = ever(sequential, 0.0, WORSE), ever(fixed, 0.0, WORSE)
    final_look = Interval(*(np.asarray(f)[:, -1:] for f in (fixed.estimate, fixed.lower, fixed.upper, fixed.n)))
    once_rate = float((decide_many(final_look, 0.0) == WORSE).mean())
    rates = (f"A/A, tolerance 0, {RUNS} runs x {LOOKS} looks: sequential ever 'worse' {seq_rate:.4f}, "
             f"fixed-sample z ever 'worse' {fixed_rate:.4f}, fixed-sample at the last look only {once_rate:.4f}")
    assert seq_rate <= mc_upper(ALPHA), rates
    assert fixed_rate > 2 * ALPHA, rates
    # the z-interval is right for the one look it was made for: peeking is what breaks it
    assert abs(once_rate - ALPHA) <= Z99 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS), rates


@pytest.mark.parametrize("tuned_at", [100, 50_000])
def test_aa_level_holds_whatever_tau_and_without_the_minimum_sample(tuned_at) -> None:
    """Rare hits (HR 0.02, the least normal case), tau tuned far too early or far too late, min_n = 0."""
    rng = np.random.default_rng(15)
    c, b = bernoulli_arm(rng, 0.02), bernoulli_arm(rng, 0.02)
    interval = unpaired_interval(c, b, ALPHA, ALPHA, tau_for(2 * 0.0196, tuned_at, ALPHA), scale=0.5)
    rate = float((decide_many(interval, 0.0, min_n=0) == WORSE).any(axis=1).mean())
    assert rate <= mc_upper(ALPHA), (
        f"A/A HR 0.02, tau tuned at n = {tuned_at}, no minimum sample: ever 'worse' {rate:.4f}")


def test_clearly_worse_arm_is_called_worse_early() -> None:
    rng = np.random.default_rng(21)
    c, b = bernoulli_arm(rng, 0.10), bernoulli_arm(rng, 0.20)
    interval = unpaired_interval(c, b, ALPHA, ALPHA, tau_for(0.09 + 0.16, TUNED_AT, ALPHA), scale=0.5)
    kinds, at = first_decisions(interval, tolerance=0.05 * 0.20)
    worse, median_n = float((kinds == WORSE).mean()), float(np.median(at))
    message = f"HR 0.10 vs 0.20: first decision 'worse' in {worse:.4f} of runs, median at n = {median_n:.0f} per arm"
    assert worse >= 0.99, message
    assert median_n <= 1000, message


def test_clearly_better_arm_is_called_not_worse() -> None:
    rng = np.random.default_rng(22)
    c, b = bernoulli_arm(rng, 0.12), bernoulli_arm(rng, 0.10)
    interval = unpaired_interval(c, b, ALPHA, ALPHA, tau_for(0.1056 + 0.09, TUNED_AT, ALPHA), scale=0.5)
    kinds, at = first_decisions(interval, tolerance=0.05 * 0.10)
    not_worse, worse = float((kinds == NOT_WORSE).mean()), float((kinds == WORSE).mean())
    message = (f"HR 0.12 vs 0.10, tolerance 5%: first decision 'not_worse' in {not_worse:.4f}, 'worse' in "
               f"{worse:.4f} of runs, median at n = {np.median(at):.0f} per arm")
    assert not_worse >= 0.95, message
    assert worse <= mc_upper(ALPHA), message


def test_better_forecaster_is_called_not_worse() -> None:
    rng = np.random.default_rng(23)
    c, b = exponential_arms(rng, 0.9, 1.0)  # MAE 10% lower
    interval = unpaired_interval(c, b, ALPHA, ALPHA, tau_for(0.81 + 1.0, TUNED_AT, ALPHA), scale=1.0)
    kinds, _ = first_decisions(interval, tolerance=0.05 * 1.0)
    not_worse = float((kinds == NOT_WORSE).mean())
    assert not_worse >= 0.95, f"MAE 0.9 vs 1.0, tolerance 5%: first decision 'not_worse' in {not_worse:.4f} of runs"


def test_regression_beyond_tolerance_is_rarely_called_not_worse() -> None:
    rng = np.random.default_rng(31)
    alpha_lower, tolerance = 0.05, 0.05 * 0.10  # 5% of the baseline's HR
    c, b = bernoulli_arm(rng, 0.0949), bernoulli_arm(rng, 0.10)  # delta = -0.0051, just beyond -0.005
    interval = unpaired_interval(c, b, alpha_lower, ALPHA, tau_for(0.18, TUNED_AT, ALPHA), scale=0.5)
    rate = ever(interval, tolerance, NOT_WORSE)
    assert rate <= mc_upper(alpha_lower), (
        f"delta -0.0051 < -tolerance 0.005: ever 'not_worse' in {rate:.4f} of runs (alpha_lower {alpha_lower})")


def test_paired_differences_give_a_narrower_interval_than_independent_arms() -> None:
    diff, c, b = paired_hits(np.random.default_rng(41), both=0.07, c_only=0.03, b_only=0.03)
    tau = tau_for(0.18, TUNED_AT, ALPHA)  # the same tau and variance floor for both: only the variance differs
    paired, unpaired = paired_interval(diff, ALPHA, ALPHA, tau), unpaired_interval(c, b, ALPHA, ALPHA, tau)
    np.testing.assert_allclose(paired.estimate, unpaired.estimate)  # same pairs, same mean difference
    ratio = (np.asarray(paired.upper) - paired.lower) / (np.asarray(unpaired.upper) - unpaired.lower)
    assert np.all(ratio < 1), f"paired/unpaired width ratio up to {ratio.max():.3f}"
    late = float(np.median(ratio[:, -1]))
    # var(d) = 0.06 against 0.09 + 0.09 for independent arms: sqrt(1/3) = 0.577 for a width proportional
    # to sqrt(V); the mixture boundary grows a little faster than that as V shrinks below its tuned point
    assert 0.5 < late < 0.65, f"median paired/unpaired width ratio at n = {STEP * LOOKS}: {late:.3f}"


@pytest.mark.parametrize("name, make", [
    ("no pairs", lambda: paired_interval(Moments(0, 0, 0), ALPHA, ALPHA, 0.01)),
    ("one pair", lambda: paired_interval(Moments(1, 1, 1), ALPHA, ALPHA, 0.01)),
    ("40 identical pairs", lambda: paired_interval(Moments(40, 0, 0), ALPHA, ALPHA, 0.01)),
    ("one event per arm, same error", lambda: unpaired_interval(
        Moments(1, -2.0, 4.0), Moments(1, -2.0, 4.0), ALPHA, ALPHA, 0.1, scale=2.0)),
    ("no hits in 60 per arm", lambda: unpaired_interval(Moments(60, 0, 0), Moments(60, 0, 0), ALPHA, ALPHA, 0.01,
                                                         scale=0.5)),
    ("empty candidate arm", lambda: unpaired_interval(Moments(0, 0, 0), Moments(500, 50, 50), ALPHA, ALPHA, 0.01,
                                                       scale=0.5)),
])
@pytest.mark.parametrize("tolerance", [0.0, 0.05])
def test_degenerate_starts_decide_nothing(name, make, tolerance) -> None:
    interval = make()
    width = interval.upper - interval.lower
    assert width > 0, f"{name}: zero-width interval {interval}"
    if interval.n > 0:
        assert math.isfinite(width), f"{name}: {interval}"
    else:
        assert interval.lower == -math.inf and interval.upper == math.inf, f"{name}: {interval}"
    # even with the minimum sample switched off, the floor alone keeps these undecided
    assert decide(interval, tolerance, min_n=0) == UNDECIDED, f"{name}, tolerance {tolerance}: {interval}"
    assert decide(interval, tolerance) == UNDECIDED


def test_many_identical_pairs_are_evidence_not_nothing() -> None:
    """2,000 pairs that all agree bound the discordance (rule of three: < 3/2000): 'not_worse' at a 5% tolerance."""
    interval = paired_interval(Moments(2000, 0, 0), ALPHA, ALPHA, tau_for(0.06, TUNED_AT, ALPHA))
    assert 0 < interval.upper - interval.lower < 0.01, interval
    assert decide(interval, 0.005) == NOT_WORSE, interval
    assert decide(interval, 0.0) == UNDECIDED, interval  # "at least as good" cannot follow from a tie


def test_decide_rules_and_the_array_twin_agree() -> None:
    lower = np.array([-0.30, -0.30, -0.04, 0.01, -0.06, -0.30])
    upper = np.array([-0.20, 0.10, 0.10, 0.20, -0.05, -0.20])
    n = np.array([500, 500, 500, 500, 500, MIN_SAMPLE - 1])
    interval = Interval((lower + upper) / 2, lower, upper, n)
    expected = [WORSE, UNDECIDED, NOT_WORSE, NOT_WORSE, UNDECIDED, UNDECIDED]  # -0.05 is not < -0.05
    assert list(decide_many(interval, 0.05)) == expected
    assert [decide(Interval(*(float(np.asarray(f)[i]) for f in (interval.estimate, lower, upper, n))), 0.05)
            for i in range(len(n))] == expected
    assert decide(Interval(0.0, -0.01, 0.01, 500), 0.0) == UNDECIDED
    with pytest.raises(ValueError):
        decide(Interval(0.0, -0.01, 0.01, 500), -0.01)


def test_moments_and_snapshots() -> None:
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 3.0])
    m = Moments(len(values), values.sum(), (values * values).sum())
    assert m.mean == pytest.approx(values.mean())
    assert m.variance == pytest.approx(values.var(ddof=1))
    assert Moments(1, 5.0, 25.0).variance == 0 and Moments(0, 0, 0).variance == 0
    assert Moments(3, 3.0, 3.0 - 1e-15).variance == 0  # cancellation never goes negative
    since = m.minus(Moments(2, 1.0, 1.0))
    assert (since.n, since.total, since.total_sq) == (4, values[2:].sum(), (values[2:] ** 2).sum())
    with pytest.raises(ValueError):
        Moments(2, 1.0, 1.0).minus(m)


def test_boundary_formula_and_tau() -> None:
    v, alpha, tau2 = 1e-4, 0.05, 8e-4
    expected = math.sqrt(2 * v * (v + tau2) / tau2 * math.log(math.sqrt((v + tau2) / v) / alpha))
    assert float(mixture_half_width(v, alpha, tau2)) == pytest.approx(expected)
    assert float(mixture_half_width(0.0, alpha, tau2)) == 0
    assert float(mixture_half_width(math.inf, alpha, tau2)) == math.inf
    # tau_for puts the narrowest boundary (relative to sqrt(V)) at the requested n
    level = float(one_sided_level(ALPHA))
    tau = float(tau_for(0.18, 2000, ALPHA))
    ns = np.arange(200, 20000, 50.0)
    relative = mixture_half_width(0.18 / ns, level, tau**2) / np.sqrt(0.18 / ns)
    assert abs(ns[np.argmin(relative)] - 2000) <= 50
    r = optimal_ratio(level)
    assert r == pytest.approx(2 * math.log(1 / level) + math.log1p(r))

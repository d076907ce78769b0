"""Always-valid comparison of a candidate model with the baseline on live accuracy (pure, numpy only).

The rollout controller looks at the live totals every few seconds and acts on the
first decision it sees. A fixed-sample test (estimate +- z * standard error) read
that way is wrong: with a look every 50 events its false alarm rate is several times
its nominal level (tests/test_sequential.py measures it). This module gives a
confidence *sequence* instead, an interval valid at every look at once, so stopping
at the first look that decides keeps the error rates.

Method: the normal-mixture sequential probability ratio test (mSPRT) of Johari,
Koomen, Pekelis and Walsh, equivalently the Gaussian-mixture asymptotic confidence
sequence of Howard et al. and Waudby-Smith et al. With V the variance of the
estimate and a N(0, tau^2) mixture over the effect, the values delta0 not rejected
at level alpha are

    |estimate - delta0| < sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / alpha))

(`mixture_half_width`). Everything is in "higher is better" units (hits; forecast
errors negated), delta = candidate - baseline, and every function works element-wise
on numpy arrays as well as on floats, so a simulation can run thousands of
monitored experiments at once. docs/rollouts.md, "The statistics", explains the
choices (tau, the variance floor, the two alphas, the minimum sample) and the limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

WORSE, NOT_WORSE, UNDECIDED = "worse", "not_worse", "undecided"

# Pseudo-observations behind the variance floor (`floored_variance`): the prior variance
# scale^2 counts as this many observations, so its weight fades like PSEUDO_COUNT / n.
PSEUDO_COUNT = 2.0
# No decision on fewer observations (pairs, or the smaller arm): the interval's validity is
# asymptotic (central limit theorem plus a plug-in variance), and a handful of Bernoulli
# trials with p = 0.1 is far from normal. The variance floor and tau already make early
# intervals wide; this is the last guard against a decision from almost nothing.
MIN_SAMPLE = 100.0
_FIXED_POINT_ITERATIONS = 50  # `optimal_ratio`


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one sample in "higher is better" orientation: count, sum, sum of squares.

    Exactly what the live totals hold (hits: total_sq = total; forecast: total = -sum of
    errors, total_sq = sum of squared errors; a pair: sums of the differences). Fields may
    be numpy arrays (one sample per element).
    """

    n: ArrayLike
    total: ArrayLike
    total_sq: ArrayLike

    @property
    def mean(self) -> ArrayLike:
        """total / n; nan where n == 0 (no estimate from no data). A float for scalar fields."""
        n = np.asarray(self.n, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return _plain(np.where(n > 0, np.asarray(self.total, dtype=float) / np.where(n > 0, n, 1.0), np.nan))

    @property
    def sum_sq_dev(self) -> ArrayLike:
        """Sum of squared deviations from the mean, clipped at 0 (float sums can cancel to a tiny negative)."""
        n = np.asarray(self.n, dtype=float)
        total = np.asarray(self.total, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ss = np.asarray(self.total_sq, dtype=float) - np.where(n > 0, total * total / np.where(n > 0, n, 1.0), 0.0)
        return _plain(np.maximum(ss, 0.0))

    @property
    def variance(self) -> ArrayLike:
        """Sample variance (divisor n - 1), never negative; 0 where n < 2. A float for scalar fields."""
        n = np.asarray(self.n, dtype=float)
        return _plain(np.where(n >= 2, np.asarray(self.sum_sq_dev) / np.where(n >= 2, n - 1.0, 1.0), 0.0))

    def minus(self, other: Moments) -> Moments:
        """The counts since `other` was snapshotted (totals only grow, so a phase is a difference).

        ValueError when a count would go negative: the snapshot is not from this counter
        (totals were reset or belong to another version), and a difference would be nonsense.
        """
        n = np.asarray(self.n, dtype=float) - np.asarray(other.n, dtype=float)
        if np.any(n < 0):
            raise ValueError(f"snapshot has more observations than the current totals (n difference {n})")
        return Moments(_plain(n), _plain(np.asarray(self.total, dtype=float) - np.asarray(other.total, dtype=float)),
                       _plain(np.asarray(self.total_sq, dtype=float) - np.asarray(other.total_sq, dtype=float)))


@dataclass(frozen=True)
class Interval:
    """Time-uniform confidence interval on delta = candidate - baseline ("higher is better").

    n is the effective sample size: pairs (paired) or the smaller arm (unpaired). lower is
    -inf and upper +inf when there is no data. Fields may be numpy arrays.
    """

    estimate: ArrayLike
    lower: ArrayLike
    upper: ArrayLike
    n: ArrayLike


def _plain(x: np.ndarray) -> ArrayLike:
    """A 0-d array back to a float, so scalar callers get scalars."""
    return float(x) if np.ndim(x) == 0 else x


def floored_variance(m: Moments, scale: ArrayLike, pseudo_count: float = PSEUDO_COUNT) -> np.ndarray:
    """Per-observation variance used by the intervals: the sample variance, never below a shrunk floor.

    Floor = (sum of squared deviations + pseudo_count * scale^2) / (n - 1 + pseudo_count): the
    sample variance after adding pseudo_count observations at mean +- scale. It is never 0
    (so a degenerate start -- one observation, or all first pairs identical -- cannot give a
    zero-width interval) and its pull fades like pseudo_count / n. `scale` is a prior standard
    deviation of one observation: for a metric bounded in a range of width w, w / 2 is the
    largest standard deviation it can have (Popoviciu), so 0.5 for hits and 1 for paired hit
    differences make the floor conservative; for a hit rate this is the conjugate shrinkage of
    p(1-p) toward 1/4, its value at p = 1/2. Forecast errors are unbounded: pass the
    baseline's MAE (errors with sd about their mean, like exponential ones).
    """
    n = np.asarray(m.n, dtype=float)
    scale = np.asarray(scale, dtype=float)
    shrunk = (np.asarray(m.sum_sq_dev) + pseudo_count * scale * scale) / np.maximum(n - 1.0 + pseudo_count, 1e-12)
    return np.maximum(np.asarray(m.variance), shrunk)


def mixture_half_width(variance_of_estimate: ArrayLike, alpha: ArrayLike, tau2: ArrayLike) -> np.ndarray:
    """Half-width of the normal-mixture (mSPRT) confidence sequence at level alpha.

    sqrt(2 V (V + tau2) / tau2 * log(sqrt((V + tau2) / V) / alpha)): the boundary where the
    mixture likelihood ratio, N(0, tau2) over the effect, reaches 1 / alpha. Ville's
    inequality makes the crossing probability over *all* looks at most alpha. Returns 0 for
    V == 0 and +inf for V == +inf (no data); broadcasts over numpy arrays.
    """
    v = np.asarray(variance_of_estimate, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    tau2 = np.asarray(tau2, dtype=float)
    if np.any(tau2 <= 0) or np.any((alpha <= 0) | (alpha >= 1)):
        raise ValueError("tau2 must be > 0 and alpha in (0, 1)")
    finite = np.isfinite(v) & (v > 0)
    safe_v = np.where(finite, v, 1.0)
    with np.errstate(over="ignore"):
        w2 = 2.0 * safe_v * (safe_v + tau2) / tau2 * (0.5 * np.log((safe_v + tau2) / safe_v) - np.log(alpha))
    return np.where(finite, np.sqrt(w2), np.where(v > 0, np.inf, 0.0))


def optimal_ratio(alpha: float) -> float:
    """r = tau^2 / V that makes the mixture boundary narrowest at a given V: r = 2 log(1/alpha) + log(1 + r).

    (Setting the derivative of the squared half-width in r to zero.) alpha is the level the
    boundary is computed at (`one_sided_level` of the bound's alpha).
    """
    r = 1.0
    for _ in range(_FIXED_POINT_ITERATIONS):  # a contraction: converges to machine precision long before
        r = 2.0 * math.log(1.0 / alpha) + math.log1p(r)
    return r


def tau_for(variance_per_observation: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """The tau that makes the boundary narrowest after n observations (pairs, or per arm).

    variance_per_observation: of one pair's difference (paired), or s_c^2 + s_b^2 with equal
    arms (unpaired), known *before* the phase (the baseline's own history): tau must not be
    chosen from the data it then tests. n: where a decision is wanted (the traffic expected in
    the step's planned duration). The interval is valid for any tau; tau only moves where it
    is tightest. alpha: the bound's alpha, as passed to the interval functions.
    """
    v = np.asarray(variance_per_observation, dtype=float) / np.asarray(n, dtype=float)
    return np.sqrt(optimal_ratio(float(one_sided_level(alpha))) * v)


def paired_estimate(diff: Moments, scale: ArrayLike = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, variance of the estimate, n) from the per-pair differences: mean d, s_d^2 / n.

    s_d^2 is floored (`floored_variance`); n == 0 gives an infinite variance.
    """
    n = np.asarray(diff.n, dtype=float)
    with np.errstate(divide="ignore"):
        v = np.where(n > 0, floored_variance(diff, scale) / np.where(n > 0, n, 1.0), np.inf)
    return np.asarray(diff.mean), v, n


def unpaired_estimate(candidate: Moments, baseline: Moments,
                      scale: ArrayLike = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean_c - mean_b, s_c^2/n_c + s_b^2/n_b, min(n_c, n_b)) for two independent arms, variances floored."""
    _, v_c, n_c = paired_estimate(candidate, scale)
    _, v_b, n_b = paired_estimate(baseline, scale)
    return np.asarray(candidate.mean) - np.asarray(baseline.mean), v_c + v_b, np.minimum(n_c, n_b)


def _interval(estimate: np.ndarray, lower_width: np.ndarray, upper_width: np.ndarray, n: np.ndarray) -> Interval:
    with np.errstate(invalid="ignore"):
        lower = np.where(np.isfinite(lower_width), estimate - lower_width, -np.inf)
        upper = np.where(np.isfinite(upper_width), estimate + upper_width, np.inf)
    return Interval(_plain(np.asarray(estimate, dtype=float)), _plain(lower), _plain(upper), _plain(n))


def one_sided_level(alpha: ArrayLike) -> np.ndarray:
    """The level 2 alpha / (1 + alpha) at which the symmetric boundary is a one-sided test at level alpha.

    The symmetric mixture M mixes N(0, tau^2) over the effect lambda; its half over lambda > 0,
    doubled, M+, is itself a mixture martingale with mean 1, so P(ever M+ >= 1/alpha) <= alpha
    (Ville). Past the upper side of the boundary (estimate above delta0) the lambda < 0 half
    contributes at most 1/2, so M <= M+/2 + 1/2: reaching M >= (1 + alpha) / (2 alpha) forces
    M+ >= 1/alpha. Each bound is therefore a one-sided level-alpha test, instead of the
    roughly alpha/2 the symmetric boundary at alpha would give.
    """
    alpha = np.asarray(alpha, dtype=float)
    return 2.0 * alpha / (1.0 + alpha)


MIN_CLUSTERS = 8  # user buckets with judgments before a cluster variance is trusted (`cluster_variance`)


def cluster_variance(counts: ArrayLike, totals: ArrayLike) -> tuple[float, int]:
    """(variance of the overall mean, clusters) from per-cluster counts and sums: the cluster-robust
    (sandwich) variance G/(G-1) x sum_g (S_g - n_g mean)^2 / N^2 over the G non-empty clusters.

    Judgments of one user are correlated (heavy users, taste), so s^2/n from per-event sums
    understates the variance of the mean by the design effect. With every user's judgments in one
    cluster (a user bucket), clusters are independent and this estimate counts users, not events.
    Infinite with fewer than 2 clusters.
    """
    n = np.asarray(counts, dtype=float)
    t = np.asarray(totals, dtype=float)
    keep = n > 0
    n, t = n[keep], t[keep]
    g = int(keep.sum())
    if g < 2:
        return math.inf, g
    mean = t.sum() / n.sum()
    return float(g / (g - 1) * ((t - n * mean) ** 2).sum() / n.sum() ** 2), g


def sequential_interval(estimate: ArrayLike, variance_of_estimate: ArrayLike, n: ArrayLike,
                        alpha_lower: float, alpha_upper: float, tau: ArrayLike) -> Interval:
    """The confidence sequence from an estimate and its variance.

    P(lower ever above the true delta) <= alpha_lower and P(upper ever below it) <= alpha_upper,
    over all looks (asymptotically: plug-in variance, central limit theorem). Each bound is the
    symmetric boundary at `one_sided_level` of its alpha.
    """
    tau2 = np.asarray(tau, dtype=float) ** 2
    return _interval(np.asarray(estimate, dtype=float),
                     mixture_half_width(variance_of_estimate, one_sided_level(alpha_lower), tau2),
                     mixture_half_width(variance_of_estimate, one_sided_level(alpha_upper), tau2),
                     np.asarray(n, dtype=float))


def paired_interval(diff: Moments, alpha_lower: float, alpha_upper: float, tau: ArrayLike,
                    *, scale: ArrayLike = 1.0) -> Interval:
    """Confidence sequence on delta from paired differences (shadow: both arms judged on the same events).

    diff: n pairs, sum of d, sum of d^2 with d = candidate - baseline ("higher is better").
    scale: prior standard deviation of one d for the variance floor (1 for hit differences;
    for forecast differences the baseline's MAE).
    """
    return sequential_interval(*paired_estimate(diff, scale), alpha_lower, alpha_upper, tau)


def unpaired_interval(candidate: Moments, baseline: Moments, alpha_lower: float, alpha_upper: float,
                      tau: ArrayLike, *, scale: ArrayLike = 1.0) -> Interval:
    """Confidence sequence on delta from two independent arms (canary: disjoint users).

    scale: prior standard deviation of one observation for the variance floor (0.5 or 1 for
    hits; for forecast errors the baseline's MAE).
    """
    return sequential_interval(*unpaired_estimate(candidate, baseline, scale), alpha_lower, alpha_upper, tau)


def fixed_sample_interval(estimate: ArrayLike, variance_of_estimate: ArrayLike, n: ArrayLike,
                          alpha_lower: float, alpha_upper: float) -> Interval:
    """The classic z-interval for the same estimate and variance: estimate - z(1 - alpha_lower) sqrt(V),
    estimate + z(1 - alpha_upper) sqrt(V) (each bound a one-sided test, like the sequential ones).

    Valid for ONE look at a sample size fixed in advance; here only so the tests and the docs
    can show what continuous monitoring does to it. Never use it to decide a rollout.
    """
    v = np.asarray(variance_of_estimate, dtype=float)
    z_lower = NormalDist().inv_cdf(1.0 - alpha_lower)
    z_upper = NormalDist().inv_cdf(1.0 - alpha_upper)
    sd = np.sqrt(v)
    return _interval(np.asarray(estimate, dtype=float), z_lower * sd, z_upper * sd, np.asarray(n, dtype=float))


def decide_many(interval: Interval, tolerance: ArrayLike, min_n: float = MIN_SAMPLE) -> np.ndarray:
    """Element-wise `decide`: an array of "worse" / "not_worse" / "undecided".

    "worse": upper < -tolerance (the whole interval is a regression beyond tolerance);
    "not_worse": lower > -tolerance; anything else, including n < min_n or no data, is
    "undecided".
    """
    tolerance = np.asarray(tolerance, dtype=float)
    if np.any(tolerance < 0):
        raise ValueError("tolerance must be >= 0 (an absolute amount of regression allowed)")
    lower = np.asarray(interval.lower, dtype=float)
    upper = np.asarray(interval.upper, dtype=float)
    enough = np.asarray(interval.n, dtype=float) >= min_n
    return np.where(enough & (upper < -tolerance), WORSE,
                    np.where(enough & (lower > -tolerance), NOT_WORSE, UNDECIDED))


def decide(interval: Interval, tolerance: float, min_n: float = MIN_SAMPLE) -> str:
    """"worse" | "not_worse" | "undecided" for one interval (the scalar face of `decide_many`).

    tolerance >= 0, absolute, in the metric's units (the controller: max_regression x
    |baseline mean|). With tolerance 0, "not_worse" means "at least as good".
    """
    return str(decide_many(interval, tolerance, min_n).item())

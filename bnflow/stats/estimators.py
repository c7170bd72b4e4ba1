"""Small estimators that compare two arms of runs (STATS.md): Welch t, TOST, rank tests, P(A better), bootstrap.

Every test works on a *test scale* on which "no effect" is 0: a difference of means, or the log of a ratio. The
caller maps a ratio-scale margin m to log(m) and reports exp() of estimates and CI bounds, so a CI on the ratio scale
is the exponentiated CI on the log scale (never a symmetric interval around the ratio).

All functions are pure: arrays in, numbers out; randomness only through an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALTERNATIVES = ("two-sided", "less", "greater")


@dataclass(frozen=True)
class Contrast:
    """An effect on the test scale with its standard error and (Welch–Satterthwaite) degrees of freedom.

    se and df are NaN when an arm has fewer than 2 values (no variance estimate).
    """

    estimate: float
    se: float
    df: float


@dataclass(frozen=True)
class TTest:
    """A t test of a Contrast: statistic, p-value and the two-sided CI of the effect (NaN when se is 0 or NaN)."""

    statistic: float
    p_value: float
    ci_low: float
    ci_high: float


def _vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """A 1-D float64 copy of `x`; NaNs are the caller's business (evaluation drops and counts them first)."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(v).any():
        raise ValueError(f"{name}: contains NaN; drop (and count) missing runs before testing")
    return v


def _satterthwaite(va: float, na: int, vb: float, nb: int) -> float:
    """Welch–Satterthwaite df for a sum of two variance components va, vb (already divided by n)."""
    den = va**2 / (na - 1) + vb**2 / (nb - 1)
    return (va + vb) ** 2 / den if den > 0 else math.nan


def welch_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Contrast:
    """mean(a) − mean(b) with Welch's unpooled SE and Satterthwaite df.

    Args:
        a, b: per-run values of arm A and arm B, shape (n_a,), (n_b,); for `*_log` metrics these are logs, and the
            difference is a log ratio.
    """
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.size == 0 or b.size == 0:
        raise ValueError("welch_difference: both arms need at least one value")
    est = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Contrast(est, math.nan, math.nan)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    return Contrast(est, float(math.sqrt(va + vb)), _satterthwaite(va, a.size, vb, b.size))


def log_mean_ratio(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Contrast:
    """log(mean a / mean b) with a delta-method Welch SE: the log restricted-mean ratio for capped times.

    For steps_to_acc90 capped at a common budget τ, mean(a) is the restricted mean time to threshold (STATS.md), so
    estimate, CI and test all concern the same quantity. Var(log mean) ≈ s²/(n·mean²); the two components are combined
    with Satterthwaite's df exactly as in Welch's test.

    Args:
        a, b: positive per-run values (e.g. steps, capped at τ), shape (n_a,), (n_b,).
    """
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.size == 0 or b.size == 0:
        raise ValueError("log_mean_ratio: both arms need at least one value")
    ma, mb = float(a.mean()), float(b.mean())
    if ma <= 0 or mb <= 0:
        raise ValueError(f"log_mean_ratio: arm means must be > 0, got {ma} and {mb}")
    est = math.log(ma) - math.log(mb)
    if a.size < 2 or b.size < 2:
        return Contrast(est, math.nan, math.nan)
    va = a.var(ddof=1) / (a.size * ma**2)
    vb = b.var(ddof=1) / (b.size * mb**2)
    return Contrast(est, float(math.sqrt(va + vb)), _satterthwaite(va, a.size, vb, b.size))


def one_sample(a: Sequence[float] | np.ndarray, reference: float) -> Contrast:
    """mean(a) − reference with SE s/√n and n − 1 df (arm B is a constant, e.g. chance accuracy 0.1).

    Args:
        a: per-run values, shape (n,).
        reference: the constant arm B stands for, in the metric's units.
    """
    a = _vector(a, "a")
    if a.size == 0:
        raise ValueError("one_sample: the arm needs at least one value")
    est = float(a.mean() - reference)
    if a.size < 2:
        return Contrast(est, math.nan, math.nan)
    return Contrast(est, float(a.std(ddof=1) / math.sqrt(a.size)), float(a.size - 1))


def t_test(c: Contrast, *, null: float = 0.0, alternative: str = "two-sided", ci_level: float = 0.95) -> TTest:
    """Test H0: effect = `null` (one-sided: ≥ or ≤ null) with t = (estimate − null)/se on c.df df.

    Args:
        c: the contrast on the test scale.
        null: the boundary under H0, on the test scale (0, or a margin such as log(1.25)).
        alternative: "two-sided", "less" (H1: effect < null) or "greater" (H1: effect > null).
        ci_level: coverage of the two-sided CI returned alongside (independent of `null` and `alternative`).
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not (c.se > 0 and c.df > 0 and math.isfinite(c.se) and math.isfinite(c.df)):
        return TTest(math.nan, math.nan, math.nan, math.nan)
    t = (c.estimate - null) / c.se
    if alternative == "two-sided":
        p = 2.0 * stats.t.sf(abs(t), c.df)
    elif alternative == "less":
        p = stats.t.cdf(t, c.df)
    else:
        p = stats.t.sf(t, c.df)
    q = stats.t.ppf(0.5 + ci_level / 2.0, c.df)
    return TTest(float(t), float(min(p, 1.0)), c.estimate - q * c.se, c.estimate + q * c.se)


def tost(c: Contrast, low: float, high: float) -> tuple[float, float]:
    """Two one-sided tests of equivalence, H1: low < effect < high; returns (statistic, p) of the binding test.

    p = max(p of H0 effect ≤ low, p of H0 effect ≥ high): equivalence at level α needs both rejected.
    """
    if not low < high:
        raise ValueError(f"tost: need low < high, got {low}, {high}")
    lower = t_test(c, null=low, alternative="greater")
    upper = t_test(c, null=high, alternative="less")
    if math.isnan(lower.p_value) or math.isnan(upper.p_value):
        return math.nan, math.nan
    binding = lower if lower.p_value >= upper.p_value else upper
    return binding.statistic, binding.p_value


def rank_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    alternative: str,
    rng: np.random.Generator,
    shift: float = 0.0,
    n_resamples: int = 20000,
) -> float:
    """Permutation p-value of the Mann–Whitney U of (a − shift) vs b, using mid-ranks so ties are handled exactly.

    With no ties this equals `scipy.stats.mannwhitneyu(method="exact")`; with ties (runs censored at the same
    budget) it stays exact, where the exact Mann–Whitney table assumes none. The null distribution is enumerated
    when the number of splits is ≤ n_resamples (5 vs 5: 252), else sampled from `rng`.

    Args:
        a, b: per-run values on the test scale, shape (n_a,), (n_b,).
        alternative: "less" means a − shift tends to be smaller than b.
        rng: source of the Monte Carlo permutations (unused when enumerated).
        shift: margin on the test scale, so a one-sided test against a non-inferiority margin is a shifted test.
    """
    a, b = _vector(a, "a") - shift, _vector(b, "b")
    ranks = stats.rankdata(np.concatenate([a, b]))
    offset = a.size * (a.size + 1) / 2.0

    def u_statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(x, axis=axis) - offset

    res = stats.permutation_test(
        (ranks[: a.size], ranks[a.size :]), u_statistic, permutation_type="independent", vectorized=True,
        n_resamples=n_resamples, alternative=alternative, rng=rng,
    )
    return float(res.pvalue)


def sign_flip_test(
    x: Sequence[float] | np.ndarray, *, alternative: str, rng: np.random.Generator, n_resamples: int = 20000
) -> float:
    """Permutation p-value for H0: x is symmetric about 0, by flipping signs of the mean (exact when 2^n ≤ n_resamples).

    Args:
        x: per-run differences from the reference (and margin), shape (n,).
        alternative: "less" means x tends to be below 0.
        rng: source of the Monte Carlo sign flips (unused when enumerated).
    """
    x = _vector(x, "x")
    res = stats.permutation_test(
        (x,), lambda v, axis: np.mean(v, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=n_resamples, alternative=alternative, rng=rng,
    )
    return float(res.pvalue)


def prob_a_better(a: np.ndarray, b: np.ndarray, direction: str) -> np.ndarray | float:
    """P(A better than B): the fraction of (a, b) pairs where a is better, ties counting one half (= U / (n_a n_b)).

    Args:
        a, b: values with shapes (..., n_a) and (..., n_b); leading axes (e.g. bootstrap resamples) broadcast.
        direction: "lower" if a smaller metric is better for A, "higher" otherwise.
    """
    diff = np.asarray(a, dtype=np.float64)[..., :, None] - np.asarray(b, dtype=np.float64)[..., None, :]
    wins = diff < 0 if direction == "lower" else diff > 0
    score = np.mean(wins + 0.5 * (diff == 0), axis=(-2, -1))
    return float(score) if np.ndim(score) == 0 else score


def bootstrap_ci(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    rng: np.random.Generator,
    n_resamples: int = 2000,
    ci_level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI, resampling each sample with replacement within itself (stratified by arm).

    At n ≤ 5 per arm percentile intervals under-cover (STATS.md): callers flag them.

    Args:
        samples: one 1-D array per arm, shapes (n_i,).
        statistic: maps resampled arrays of shapes (n_resamples, n_i) to values of shape (n_resamples,).
        rng: the only source of randomness (seed it from (stats seed, claim id)).
    """
    draws = [np.asarray(s)[rng.integers(0, len(s), size=(n_resamples, len(s)))] for s in samples]
    values = np.asarray(statistic(*draws), dtype=np.float64)
    lo, hi = np.quantile(values, [(1.0 - ci_level) / 2.0, (1.0 + ci_level) / 2.0])
    return float(lo), float(hi)


def wilson_interval(x: int, n: int, ci_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion x/n (well behaved at 0/n and n/n, unlike the Wald interval)."""
    if n <= 0:
        raise ValueError("wilson_interval: n must be > 0")
    z = stats.norm.ppf(0.5 + ci_level / 2.0)
    p = x / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(x_a: int, n_a: int, x_b: int, n_b: int, ci_level: float = 0.95) -> tuple[float, float, float]:
    """Difference of proportions x_a/n_a − x_b/n_b with Newcombe's hybrid score CI (Newcombe 1998, method 10).

    Returns (estimate, ci_low, ci_high).
    """
    pa, pb = x_a / n_a, x_b / n_b
    la, ua = wilson_interval(x_a, n_a, ci_level)
    lb, ub = wilson_interval(x_b, n_b, ci_level)
    d = pa - pb
    return d, d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2), d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)


def fisher_p(x_a: int, n_a: int, x_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value for successes x_a of n_a vs x_b of n_b."""
    return float(stats.fisher_exact([[x_a, n_a - x_a], [x_b, n_b - x_b]]).pvalue)

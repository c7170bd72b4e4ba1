"""Small estimators that compare two arms of runs (STATS.md): t tests (paired, Welch, one-sample), TOST, bootstrap,
and exact tests of proportions. Rank tests and P(A better) live in bnflow.stats.ranks.

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


def as_values(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """A 1-D float64 copy of `x`; NaNs are the caller's business (evaluation drops and counts them first)."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(v).any():
        raise ValueError(f"{name}: contains NaN; drop (and count) missing runs before testing")
    return v


def _variance(x: np.ndarray) -> float:
    """Sample variance; 0 when the values agree to 12 significant digits (rounding, not spread, would else give a
    t statistic of 1e16: runs.csv itself keeps 6 digits)."""
    if np.ptp(x) <= 1e-12 * max(1.0, float(np.max(np.abs(x)))):
        return 0.0
    return float(x.var(ddof=1))


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
    a, b = as_values(a, "a"), as_values(b, "b")
    if a.size == 0 or b.size == 0:
        raise ValueError("welch_difference: both arms need at least one value")
    est = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Contrast(est, math.nan, math.nan)
    va, vb = _variance(a) / a.size, _variance(b) / b.size
    return Contrast(est, float(math.sqrt(va + vb)), _satterthwaite(va, a.size, vb, b.size))


def log_mean_ratio(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Contrast:
    """log(mean a / mean b) with a delta-method Welch SE: the log restricted-mean ratio for capped times.

    For steps_to_acc90 capped at a common budget τ, mean(a) is the restricted mean time to threshold (STATS.md), so
    estimate, CI and test all concern the same quantity. Var(log mean) ≈ s²/(n·mean²); the two components are combined
    with Satterthwaite's df exactly as in Welch's test.

    Args:
        a, b: positive per-run values (e.g. steps, capped at τ), shape (n_a,), (n_b,).
    """
    a, b = as_values(a, "a"), as_values(b, "b")
    if a.size == 0 or b.size == 0:
        raise ValueError("log_mean_ratio: both arms need at least one value")
    ma, mb = float(a.mean()), float(b.mean())
    if ma <= 0 or mb <= 0:
        raise ValueError(f"log_mean_ratio: arm means must be > 0, got {ma} and {mb}")
    est = math.log(ma) - math.log(mb)
    if a.size < 2 or b.size < 2:
        return Contrast(est, math.nan, math.nan)
    va = _variance(a) / (a.size * ma**2)
    vb = _variance(b) / (b.size * mb**2)
    return Contrast(est, float(math.sqrt(va + vb)), _satterthwaite(va, a.size, vb, b.size))


def one_sample(a: Sequence[float] | np.ndarray, reference: float) -> Contrast:
    """mean(a) − reference with SE s/√n and n − 1 df (arm B is a constant, e.g. chance accuracy 0.1).

    Args:
        a: per-run values, shape (n,).
        reference: the constant arm B stands for, in the metric's units.
    """
    a = as_values(a, "a")
    if a.size == 0:
        raise ValueError("one_sample: the arm needs at least one value")
    est = float(a.mean() - reference)
    if a.size < 2:
        return Contrast(est, math.nan, math.nan)
    return Contrast(est, math.sqrt(_variance(a) / a.size), float(a.size - 1))


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
    if c.se == 0 and math.isfinite(c.estimate):
        # Every run equal (e.g. every noisy-standard run diverged to chance): the limit se -> 0 of the t test,
        # a point CI and p 0 or 1. Callers flag it (zero_variance); a NaN here would hide the strongest evidence.
        diff = c.estimate - null
        if diff == 0:
            return TTest(math.nan, 1.0, c.estimate, c.estimate)
        p = {"two-sided": 0.0, "less": float(diff > 0), "greater": float(diff < 0)}[alternative]
        return TTest(math.copysign(math.inf, diff), p, c.estimate, c.estimate)
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


def fisher_p(x_a: int, n_a: int, x_b: int, n_b: int, alternative: str = "two-sided") -> float:
    """Fisher exact p-value for successes x_a of n_a vs x_b of n_b.

    alternative: "greater" (H1: arm A's success proportion is higher), "less", or "two-sided".
    """
    table = [[x_a, n_a - x_a], [x_b, n_b - x_b]]
    return float(stats.fisher_exact(table, alternative=alternative).pvalue)


def mcnemar_exact_p(a: np.ndarray, b: np.ndarray, alternative: str) -> float:
    """Exact McNemar test for paired 0/1 outcomes: a binomial test on the discordant pairs (paired seeds).

    Args:
        a, b: 0/1 outcomes of arms A and B, aligned by seed, shape (n,).
        alternative: "greater" (H1: A succeeds more often than B), "less", or "two-sided".
    """
    a, b = as_values(a, "a") != 0, as_values(b, "b") != 0
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5, alternative=alternative).pvalue)

"""Rank-based tests and their distribution-free CIs (STATS.md): the robustness tests of every claim, and the primary
test of a claim whose arm holds an infinite value (a blown-up probe or a diverged run, ranked worst).

Everything works on the test scale (a difference, or a log ratio) and compares values by rank, so ±inf is a value
like any other: the largest or smallest. Exact where the number of permutations allows, else sampled from an
explicit `numpy.random.Generator`. P(A better) is the descriptive effect size every claim reports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from bnflow.stats.estimators import as_values


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
    a, b = as_values(a, "a") - shift, as_values(b, "b")
    ranks = stats.rankdata(np.concatenate([a, b]))
    offset = a.size * (a.size + 1) / 2.0

    def u_statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(x, axis=axis) - offset

    res = stats.permutation_test(
        (ranks[: a.size], ranks[a.size :]), u_statistic, permutation_type="independent", vectorized=True,
        n_resamples=n_resamples, alternative=alternative, rng=rng,
    )
    return float(res.pvalue)


def _sign_patterns(n: int, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """±1 signs, shape (patterns, n): all 2^n when 2^n ≤ n_resamples (exact), else n_resamples draws from `rng`."""
    if 2**n <= n_resamples:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        return 1 - 2 * bits, True
    return 1 - 2 * rng.integers(0, 2, size=(n_resamples, n)), False


def _permutation_p(null: np.ndarray, observed: float, alternative: str, exact: bool) -> float:
    """p of `observed` in a permutation null; scipy's conventions (ties count, two-sided = twice the smaller tail,
    Monte Carlo p = (k + 1)/(n + 1) so it is never 0)."""
    tol = 1e-12 * max(1.0, abs(observed))
    k_greater, k_less = int(np.sum(null >= observed - tol)), int(np.sum(null <= observed + tol))
    n = null.size
    p_greater, p_less = (k_greater / n, k_less / n) if exact else ((k_greater + 1) / (n + 1), (k_less + 1) / (n + 1))
    return {"greater": p_greater, "less": p_less}.get(alternative, min(1.0, 2.0 * min(p_greater, p_less)))


def sign_flip_test(
    x: Sequence[float] | np.ndarray, *, alternative: str, rng: np.random.Generator, n_resamples: int = 20000
) -> float:
    """Permutation p-value for H0: x is symmetric about 0, by flipping signs of the mean (exact when 2^n ≤ n_resamples).

    Args:
        x: per-run differences from the reference (and margin), shape (n,).
        alternative: "less" means x tends to be below 0.
        rng: source of the Monte Carlo sign flips (unused when enumerated).
    """
    x = as_values(x, "x")
    signs, exact = _sign_patterns(x.size, n_resamples, rng)
    return _permutation_p(signs @ x / x.size, float(x.mean()), alternative, exact)


def prob_a_better(a: np.ndarray, b: np.ndarray, direction: str) -> np.ndarray | float:
    """P(A better than B): the fraction of (a, b) pairs where a is better, ties counting one half (= U / (n_a n_b)).

    Compares values, never subtracts them, so infinite values (blow-ups, ranked worst) tie with each other.

    Args:
        a, b: values with shapes (..., n_a) and (..., n_b); leading axes (e.g. bootstrap resamples) broadcast.
        direction: "lower" if a smaller metric is better for A, "higher" otherwise.
    """
    x = np.asarray(a, dtype=np.float64)[..., :, None]
    y = np.asarray(b, dtype=np.float64)[..., None, :]
    wins = x < y if direction == "lower" else x > y
    score = np.mean(wins + 0.5 * (x == y), axis=(-2, -1))
    return float(score) if np.ndim(score) == 0 else score


@functools.lru_cache(maxsize=64)
def signed_rank_null_counts(n: int) -> tuple[int, ...]:
    """Number of sign patterns of ranks 1..n giving each T+ = 0..n(n+1)/2 (Wilcoxon's null, no ties)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.int64)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return tuple(int(c) for c in counts)


@functools.lru_cache(maxsize=256)
def rank_sum_null_counts(n_a: int, n_b: int) -> tuple[int, ...]:
    """Number of splits giving each Mann–Whitney U = 0..n_a·n_b (no ties).

    Recursion on the largest value: in arm A it beats all n_b values of B (shift by n_b), else it is B's.
    """
    if n_a == 0 or n_b == 0:
        return (1,)
    counts = np.zeros(n_a * n_b + 1, dtype=np.int64)
    left = rank_sum_null_counts(n_a - 1, n_b)
    counts[n_b:n_b + len(left)] += left
    right = rank_sum_null_counts(n_a, n_b - 1)
    counts[:len(right)] += right
    return tuple(int(c) for c in counts)


def _order_statistic_ci(values: np.ndarray, null_counts: Sequence[int], ci_level: float) -> tuple[float, float, float]:
    """(median, lower, upper) of `values` with the distribution-free CI [v_(k), v_(M+1−k)] (1-based, sorted).

    k is the largest j with P(T ≤ j − 1) ≤ (1 − ci_level)/2 under `null_counts`; no such j (too few runs for the
    level) gives (−inf, inf). NaN values (inf − inf: two blow-ups) count as ties at 0.
    """
    v = np.sort(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf))
    cdf = np.cumsum(null_counts) / float(np.sum(null_counts))
    k = int(np.sum(cdf <= (1.0 - ci_level) / 2.0 + 1e-12))
    with np.errstate(invalid="ignore"):
        centre = float(np.median(v))
    if k < 1:
        return centre, -math.inf, math.inf
    return centre, float(v[k - 1]), float(v[v.size - k])


def walsh_ci(d: Sequence[float] | np.ndarray, ci_level: float = 0.95) -> tuple[float, float, float]:
    """Hodges–Lehmann estimate of a paired shift (median of Walsh averages) with Wilcoxon's exact CI.

    Args:
        d: per-seed differences on the test scale (may hold ±inf: blow-ups), shape (n,).

    Returns:
        (estimate, ci_low, ci_high); the CI is (−inf, inf) when n is too small for the level (n ≤ 5 at 95%).
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    i, j = np.triu_indices(d.size)
    with np.errstate(invalid="ignore"):
        walsh = d[i] / 2.0 + d[j] / 2.0
    return _order_statistic_ci(walsh, signed_rank_null_counts(d.size), ci_level)


def hodges_lehmann_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      ci_level: float = 0.95) -> tuple[float, float, float]:
    """Hodges–Lehmann shift a − b (median of all pairwise differences) with the exact Mann–Whitney CI."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        diffs = (a[:, None] - b[None, :]).reshape(-1)
    return _order_statistic_ci(diffs, rank_sum_null_counts(a.size, b.size), ci_level)


def signed_rank_test(d: Sequence[float] | np.ndarray, *, alternative: str, rng: np.random.Generator,
                     n_resamples: int = 20000) -> tuple[float, float]:
    """Wilcoxon signed-rank test of H0 "d is symmetric about 0": (T+, p), by flipping the signs of mid-ranks.

    Exact (every sign pattern) when 2^n ≤ n_resamples, else sampled from `rng`. Zeros (and inf − inf) are dropped,
    infinite differences get the top ranks, so blow-ups count as the largest shifts, never as missing values.

    Args:
        d: per-seed differences on the test scale minus any margin, shape (n,).
        alternative: "greater" (H1: d tends to be positive), "less" or "two-sided".
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return 0.0, 1.0
    ranks = stats.rankdata(np.abs(d))
    observed = float(ranks[d > 0].sum())
    signs, exact = _sign_patterns(d.size, n_resamples, rng)
    p = _permutation_p((signs > 0) @ ranks, observed, alternative, exact)
    return observed, p

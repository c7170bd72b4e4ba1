"""Verdict rules and flags (STATS.md "Verdicts"), all on the test scale where "no effect" is 0 (a difference or a log
ratio); margins and sesoi are mapped there first (log for the ratio scale).

- supported: the adjusted p is below alpha AND the two-sided CI lies entirely on the claimed side of no effect
  (superiority), of the margin (non-inferiority), or inside the band (equivalence). A p above alpha never supports
  anything, so "no significant difference" is never read as "not worse".
- not_reproduced (superiority only): the CI lies entirely inside (−s, s), s the claim's smallest effect of interest
  on the test scale (|log sesoi| for a ratio): any effect is smaller than the claim's. Lets a null result fail. It
  takes precedence over contradicted (registry v3): a CI inside the band that also lies on the other side of no
  effect is a negligible effect the wrong way, flagged opposite_side, not a contradiction of the claim.
- contradicted: the CI lies entirely on the other side (of no effect, of the margin, outside the band) and, for
  superiority, reaches beyond the no-effect band. This uses the unadjusted CI, so the bar for contradicting a
  paper's claim is lower than for supporting it.
- inconclusive: everything else, including a claim that could not be tested (n < 2, no variance, no values).
- not_run_yet: an arm has no run at all in runs.csv (a partial grid), or lacks a seed of the claim's `seeds` range;
  decided before any test.
- post_hoc: every evaluated claim of the post_hoc family (bnflow.stats.evaluate), whatever these rules say.
For one-sided tests (non-inferiority, TOST, C8's exact test) a 95% two-sided CI is stricter than the test at
alpha = 0.05 (it matches a one-sided 2.5% test, the usual convention for non-inferiority trials), so there the CI
decides.

Flags (sorted, ';'-separated) explain a row: small_n (an arm has 1-4 runs), n<2 (no t test possible), unpaired (both
arms are runs but their seeds differ: Welch), censoring>50%, zero_variance, bootstrap_n<=5 (the bootstrap CI of P(A
better) in claims.json rests on <= 5 runs per arm and under-covers), robustness_disagrees (the robustness test and
the primary test fall on different sides of alpha, unadjusted; only where the robustness test can reach alpha at
this n, i.e. its smallest possible p, robust_min_p in claims.json, is below alpha), inf_rank_primary (an arm holds
an infinite value: the rank test is primary), robustness_floor (the exact robustness test cannot reach alpha at this
n, e.g. the sign flip of 5 seeds: p >= 0.0625, so its p neither confirms nor contradicts), seeds_missing (not_run_yet:
the claim's seed range is not all run), opposite_side (not_reproduced, and the CI also lies entirely on the other
side of no effect), diverged_runs (diverged runs are in the arms, kept with the values
summarize gave them), missing_excluded (runs without a value were left out, counted in n_excluded), no_values (an
arm has runs but no values: not measured), not_in_grid (a not_run_yet arm is not even in train.grid), underpowered
(inconclusive rows only: the CI is wider than the effect it should resolve), below_sesoi (supported or contradicted,
yet the CI lies inside the sesoi band: a real but negligible effect).
"""

from __future__ import annotations

import math


def sesoi_on_test_scale(sesoi: float | None, scale: str) -> float | None:
    """|log sesoi| on the ratio scale, the magnitude on the difference scale; None when the claim has none."""
    if sesoi is None:
        return None
    return abs(math.log(sesoi)) if scale == "ratio" else abs(sesoi)


def margin_on_test_scale(margin: float | None, scale: str) -> float | None:
    """log(margin) on the ratio scale, the margin itself on the difference scale."""
    if margin is None:
        return None
    return math.log(margin) if scale == "ratio" else margin


def decide_verdict(claim_type: str, direction: str, *, p_adj: float, ci_low: float, ci_high: float, alpha: float,
                   margin: float | None = None, sesoi: float | None = None) -> str:
    """supported | contradicted | not_reproduced | inconclusive from the adjusted p and the CI (test scale).

    Args:
        claim_type: "superiority", "non_inferiority" or "equivalence".
        direction: "lower" or "higher": which side of the null/margin is favourable to arm A.
        p_adj: adjusted p-value of the claim's test (NaN when untestable).
        ci_low, ci_high: two-sided CI of the effect on the test scale (±inf allowed: rank CIs at small n).
        margin: non-inferiority boundary, or equivalence half-width, on the test scale (log ratio or difference).
        sesoi: superiority only, the smallest effect of interest on the test scale, a magnitude > 0.
    """
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    significant = p_adj < alpha  # False for NaN
    if claim_type == "equivalence":
        half = abs(margin)
        if significant and -half < ci_low and ci_high < half:
            return "supported"
        if ci_low >= half or ci_high <= -half:
            return "contradicted"
        return "inconclusive"
    bound = 0.0 if claim_type == "superiority" else margin
    # Flip signs so that "favourable" always means "above the bound".
    sign = -1.0 if direction == "lower" else 1.0
    lo, hi = sorted((sign * ci_low, sign * ci_high))
    if significant and lo > sign * bound:
        return "supported"
    if claim_type == "superiority" and sesoi is not None and -sesoi < ci_low and ci_high < sesoi:
        return "not_reproduced"  # before contradicted: a negligible effect the wrong way (flag opposite_side)
    if hi < sign * bound:
        return "contradicted"
    return "inconclusive"


def resolution_needed(claim_type: str, margin: float | None, sesoi: float | None) -> float:
    """The CI half-width (test scale) above which a row cannot resolve what it asks: the sesoi for superiority (a
    wider CI can neither exclude 0 at an effect of that size nor fit inside the no-effect band), the null-to-margin
    distance otherwise (then even a true null effect could not show non-inferiority or equivalence at this n)."""
    if claim_type == "superiority":
        return sesoi if sesoi is not None else math.inf
    return abs(margin)


def verdict_flags(verdict: str, claim_type: str, direction: str, *, ci: tuple[float, float], margin: float | None,
                  sesoi: float | None) -> set[str]:
    """The flags that depend on the verdict: underpowered (inconclusive only), below_sesoi (supported, the CI
    inside the no-effect band) and opposite_side (not_reproduced, the CI wholly on the unclaimed side of 0)."""
    lo, hi = ci
    flags: set[str] = set()
    if math.isnan(lo) or math.isnan(hi):
        return flags
    if verdict == "inconclusive" and (hi - lo) / 2.0 > resolution_needed(claim_type, margin, sesoi):
        flags.add("underpowered")
    if verdict in ("supported", "contradicted") and sesoi is not None and -sesoi < lo and hi < sesoi:
        flags.add("below_sesoi")
    if verdict == "not_reproduced" and (hi < 0 if direction == "higher" else lo > 0):
        flags.add("opposite_side")
    return flags


def inconclusive_reason(claim_type: str, direction: str, *, p_adj: float, ci: tuple[float, float], alpha: float,
                        margin: float | None, sesoi: float | None) -> str:
    """Why an evaluated row is inconclusive, as a code claims.md turns into a sentence:

    untestable (no CI), unbounded_ci (a rank CI at too small n), adjusted_p (the unadjusted CI is on the claimed
    side but the adjusted p is not below alpha), ci_crosses (the CI holds both no effect / the margin and effects
    on the claimed side).
    """
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return "untestable"
    if math.isinf(lo) and math.isinf(hi):
        return "unbounded_ci"
    sign = -1.0 if direction == "lower" else 1.0
    flo, _ = sorted((sign * lo, sign * hi))
    if claim_type == "equivalence":
        on_side = -abs(margin) < lo and hi < abs(margin)
    else:
        on_side = flo > sign * (0.0 if claim_type == "superiority" else margin)
    if on_side and not p_adj < alpha:
        return "adjusted_p"
    return "ci_crosses"

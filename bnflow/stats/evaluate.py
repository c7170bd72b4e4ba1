"""Evaluate the claims registry on a runs table (STATS.md "Tests and decisions"): one row of evidence per claim.

Per claim, on the test scale (a difference, or a log ratio; ratio-scale numbers are reported as exp() of it):
- primary test: paired by seed where both arms hold the same seed indices (a one-sample t on the per-seed
  differences); a one-sample t against a reference arm (chance, 2/lr); Welch's t when seeds differ (time to
  threshold: the log restricted-mean ratio); a one-sided Fisher exact test for a proportion (reached_acc90).
  Superiority: two-sided; non-inferiority: one-sided against the margin; equivalence: TOST.
- an arm holding ±inf (a blown-up probe, a diverged run's loss) makes the rank test primary: Wilcoxon's signed rank
  (paired, with the Hodges–Lehmann CI from Walsh averages) or Mann–Whitney (unpaired, Hodges–Lehmann CI).
- robustness in claims.json: the exact sign-flip test (paired), the rank permutation test (unpaired) or McNemar's
  exact test (paired proportions), and, for paired claims, the unpaired Welch row.
A claim with a `seeds` range uses only those seeds, and is not_run_yet until an arm holds every one of them.
Then p-values are adjusted per family (vocab.FAMILY_METHODS: Holm, BH or none) and bnflow.stats.decide gives the
verdict (post_hoc for every evaluated claim of the post_hoc family). Every resampling runs on arms sorted by seed,
from generators seeded by (stats seed, claim id), so runs.csv's row order never changes a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bnflow.config import ClaimSpec, check_claim
from bnflow.errors import ConfigError, DataError
from bnflow.stats.decide import (decide_verdict, inconclusive_reason, margin_on_test_scale, sesoi_on_test_scale,
                                 verdict_flags)
from bnflow.stats.estimators import (bootstrap_ci, fisher_p, log_mean_ratio, mcnemar_exact_p, newcombe_difference,
                                     one_sample, t_test, tost, welch_difference)
from bnflow.stats.multiplicity import adjust, family_method
from bnflow.stats.ranks import (hodges_lehmann_ci, prob_a_better, rank_test, sign_flip_test, signed_rank_test,
                                walsh_ci)
from bnflow.stats.registry import (METRICS, Arm, cell_of, check_runs, claim_rng, group_runs, is_reference,
                                   natural_key, reference_arm, select_arm)
from bnflow.vocab import POST_HOC, REFERENCE_ARMS

COLUMNS = ("claim_id", "family", "hypothesis", "metric", "scale", "arm_a", "arm_b", "lr", "n_a", "n_b", "n_excluded",
           "estimate", "ci_low", "ci_high", "ci_level", "margin", "test", "alternative", "statistic", "p_raw", "p_adj",
           "adj_method", "alpha", "prob_a_better", "verdict", "flags")
NAN = math.nan


@dataclass
class _Outcome:
    """One claim's CSV row (p_adj and verdict filled in later), JSON extras, flags, and what the verdict needs."""

    row: dict
    extra: dict
    flags: set = field(default_factory=set)
    ci: tuple[float, float] = (NAN, NAN)  # two-sided CI on the test scale
    not_run: bool = False


def _alternative(claim: ClaimSpec, kind: str) -> str:
    if claim.type == "equivalence":
        return "tost"
    if claim.type == "superiority" and kind != "binary":
        return "two-sided"  # a one-directional binary claim gets a one-sided exact test (C8)
    return "less" if claim.direction == "lower" else "greater"


def _shifted(test, claim: ClaimSpec, margin: float | None, alternative: str) -> tuple[float, float]:
    """(statistic, p) of `test(shift, alternative)` for the claim's hypothesis: no shift (superiority), the margin
    (non-inferiority), or both band ends (equivalence: the larger p, as TOST)."""
    if claim.type == "superiority":
        return test(0.0, alternative)
    if claim.type == "non_inferiority":
        return test(margin, alternative)
    low, high = test(-abs(margin), "greater"), test(abs(margin), "less")
    return max(low, high, key=lambda r: r[1])


def _test_scale(kind: str, a: Arm, b: Arm, claim: ClaimSpec, extra: dict, flags: set) -> tuple[np.ndarray, ...]:
    """(ta, tb, va, vb): values on the test scale and on the metric's own scale (times capped at the budget)."""
    va, vb = a.values.copy(), b.values.copy()
    if kind == "censored_time":
        # Restricted mean up to the budget common to both arms (STATS.md): cap every time there.
        tau = float(min(a.budget.min(), b.budget.min()))
        cens_a, cens_b = a.censored | (va >= tau), b.censored | (vb >= tau)
        va[cens_a], vb[cens_b] = tau, tau
        if max(cens_a.mean(), cens_b.mean()) > 0.5:
            flags.add("censoring>50%")
        extra.update(restriction_steps=tau, n_censored_a=int(cens_a.sum()), n_censored_b=int(cens_b.sum()),
                     restricted_mean_ratio=float(va.mean() / vb.mean()))
    if kind in ("censored_time", "positive"):
        if (va <= 0).any() or (vb <= 0).any():
            raise DataError(f"claim {claim.id}: {claim.metric} must be > 0 in every run; check runs.csv")
        return np.log(va), np.log(vb), va, vb
    return va, vb, va, vb


def _evaluate_one(groups: Mapping, claim: ClaimSpec, *, seed: int, ci_level: float,
                  grid: Sequence[str] | None) -> _Outcome:
    """Evaluate one claim up to its raw p-value (multiplicity and verdict need the whole family)."""
    kind, ref = METRICS[claim.metric].kind, is_reference(claim)
    margin = margin_on_test_scale(claim.margin, claim.scale)
    alternative = _alternative(claim, kind)
    a = select_arm(groups, claim, claim.arm_a)
    b = reference_arm(claim) if ref else select_arm(groups, claim, claim.arm_b)
    row = dict(claim_id=claim.id, family=claim.family, hypothesis=claim.hypothesis, metric=claim.metric,
               scale=claim.scale, arm_a=claim.arm_a, arm_b=claim.arm_b, lr=claim.lr, n_a=a.n, n_b=NAN if ref else b.n,
               n_excluded=a.n_excluded + b.n_excluded, estimate=NAN, ci_low=NAN, ci_high=NAN, ci_level=ci_level,
               margin=NAN if claim.margin is None else claim.margin, test="", alternative=alternative, statistic=NAN,
               p_raw=NAN, p_adj=NAN, adj_method="", alpha=claim.alpha, prob_a_better=NAN, verdict="inconclusive",
               flags="")
    extra = dict(figure=claim.figure, direction=claim.direction, sesoi=claim.sesoi, rationale=claim.rationale,
                 model=claim.model, seeds=None if claim.seeds is None else list(claim.seeds), paired=False,
                 robust_test="none", robust_p=NAN, df=NAN, mean_a=NAN, mean_b=NAN,
                 n_diverged_a=a.n_diverged, n_diverged_b=b.n_diverged, prob_a_better_ci_low=NAN,
                 prob_a_better_ci_high=NAN)
    if ref:
        extra.update(reference=claim.reference, reference_label=REFERENCE_ARMS[claim.arm_b])
    out = _Outcome(row, extra)
    arms = [(v, arm) for v, arm in ((claim.arm_a, a), (claim.arm_b, b)) if not (ref and v == claim.arm_b)]
    absent = [cell_of(claim, v) for v, arm in arms if arm.n_runs == 0 and not arm.missing_seeds]
    partial = {cell_of(claim, v): list(arm.missing_seeds) for v, arm in arms if arm.missing_seeds}
    if absent or partial:
        if absent:
            extra["missing_cells"] = absent
        if partial:  # a claim's named seeds, not all run yet: never a smaller n
            extra["missing_seeds"] = partial
            out.flags.add("seeds_missing")
        if grid is not None and any(c not in grid for c in absent):
            out.flags.add("not_in_grid")
        row["verdict"], out.not_run = "not_run_yet", True
        return out
    if row["n_excluded"]:
        out.flags.add("missing_excluded")
    if a.n_diverged + b.n_diverged:
        out.flags.add("diverged_runs")
    present = (a.n,) if ref else (a.n, b.n)
    if min(present) == 0:
        out.flags.add("no_values")
        return out
    if min(present) < 5:
        out.flags.add("small_n")
    paired = not ref and np.array_equal(a.seeds, b.seeds)
    if not ref and not paired:
        out.flags.add("unpaired")
    extra["paired"] = bool(paired)
    ta, tb, va, vb = _test_scale(kind, a, b, claim, extra, out.flags)
    with np.errstate(invalid="ignore"):
        extra.update(mean_a=float(va.mean()), mean_b=float(vb.mean()))
    finite = bool(np.isfinite(ta).all() and np.isfinite(tb).all())
    if kind != "binary" and finite and min(present) < 2:
        out.flags.add("n<2")  # a t test needs a variance in every sampled arm: nothing to test, only to report
        return out
    rng_robust, rng_boot = claim_rng(seed, claim.id, 2)
    if kind == "binary":
        res = _binary(claim, va, vb, paired, alternative, ci_level)
    elif finite:
        res = _t_tests(claim, kind, ta, tb, va, vb, ref, paired, margin, alternative, ci_level, rng_robust)
    else:
        out.flags.add("inf_rank_primary")
        res = _rank_tests(claim, ta, tb, ref, paired, margin, alternative, ci_level, rng_robust)
    test, est, lo, hi, stat, p, extras = res
    extra.update(extras)
    if extra.get("se") == 0:
        out.flags.add("zero_variance")
    to_report = np.exp if claim.scale == "ratio" else float
    row.update(test=test, estimate=float(to_report(est)), statistic=stat, p_raw=p)
    for key in ("welch_estimate", "welch_ci_low", "welch_ci_high"):
        if key in extra:
            extra[key] = float(to_report(extra[key]))
    if not (math.isnan(lo) or math.isnan(hi)):
        row.update(ci_low=float(to_report(lo)), ci_high=float(to_report(hi)))
        out.ci = (lo, hi)
    row["prob_a_better"] = prob_a_better(ta, tb, claim.direction)
    if ref:  # a constant arm B is not resampled
        boot = bootstrap_ci([ta], lambda x: prob_a_better(x, tb, claim.direction), rng=rng_boot, ci_level=ci_level)
    else:
        boot = bootstrap_ci([ta, tb], lambda x, y: prob_a_better(x, y, claim.direction), rng=rng_boot,
                            ci_level=ci_level)
    extra.update(prob_a_better_ci_low=boot[0], prob_a_better_ci_high=boot[1])
    if min(present) <= 5:
        out.flags.add("bootstrap_n<=5")
    robust_p = extra["robust_p"]
    # An exact test that cannot reach alpha at this n (the sign flip of 5 seeds: p >= 2/32) says nothing by not
    # rejecting (flag robustness_floor): only a robustness test that could have agreed may disagree.
    able = extra.get("robust_min_p", 0.0) < claim.alpha
    if not math.isnan(robust_p) and not able:
        out.flags.add("robustness_floor")
    if not (math.isnan(robust_p) or math.isnan(p)) and able and (p < claim.alpha) != (robust_p < claim.alpha):
        out.flags.add("robustness_disagrees")
    return out


def _binary(claim: ClaimSpec, va: np.ndarray, vb: np.ndarray, paired: bool, alternative: str,
            ci_level: float) -> tuple:
    """A proportion: one-sided Fisher exact test, Newcombe's CI of the difference, McNemar's exact test if paired."""
    xa, xb = int(va.sum()), int(vb.sum())
    est, lo, hi = newcombe_difference(xa, va.size, xb, vb.size, ci_level)
    p = fisher_p(xa, va.size, xb, vb.size, alternative)
    extras = {"robust_test": "mcnemar_exact", "robust_p": mcnemar_exact_p(va, vb, alternative),
              "robust_min_p": 0.5 ** va.size} if paired else {}
    # Fisher's test conditions on the margins: its statistic is arm A's count of successes.
    return "fisher_exact", est, lo, hi, float(xa), p, extras


def _t_tests(claim: ClaimSpec, kind: str, ta, tb, va, vb, ref: bool, paired: bool, margin: float | None,
             alternative: str, ci_level: float, rng: np.random.Generator) -> tuple:
    """The primary t test (paired, one-sample or Welch) and its robustness rows, all on the test scale."""
    def welch():
        return log_mean_ratio(va, vb) if kind == "censored_time" else welch_difference(ta, tb)

    def decide_t(contrast):
        two = t_test(contrast, ci_level=ci_level)
        if claim.type == "superiority":
            return two, (two.statistic, two.p_value)
        if claim.type == "equivalence":
            return two, tost(contrast, -abs(margin), abs(margin))
        one = t_test(contrast, null=margin, alternative=alternative, ci_level=ci_level)
        return two, (one.statistic, one.p_value)

    log_kind = kind in ("log", "positive", "censored_time")
    if ref or paired:
        d = ta - (claim.reference if ref else tb)
        contrast, test = one_sample(d, 0.0), "one_sample_t" if ref else ("paired_t_log" if log_kind else "paired_t")
        two, (stat, p) = decide_t(contrast)
        robust = _shifted(lambda s, alt: (NAN, sign_flip_test(d - s, alternative=alt, rng=rng)), claim, margin,
                          alternative)
        extras = {"robust_test": "sign_flip", "robust_p": robust[1],
                  "robust_min_p": min(1.0, (2.0 if alternative == "two-sided" else 1.0) / 2.0 ** d.size)}
        if paired:  # the unpaired Welch row stays as a second robustness check (STATS.md)
            unpaired = welch()
            w_two, (_, w_p) = decide_t(unpaired)
            extras.update(welch_estimate=unpaired.estimate, welch_ci_low=w_two.ci_low, welch_ci_high=w_two.ci_high,
                          welch_p=w_p)
    else:
        contrast = welch()
        test = "welch_t_log_rmst" if kind == "censored_time" else ("welch_t_log" if log_kind else "welch_t")
        two, (stat, p) = decide_t(contrast)
        robust = _shifted(lambda s, alt: (NAN, rank_test(ta, tb, shift=s, alternative=alt, rng=rng)), claim, margin,
                          alternative)
        extras = {"robust_test": "permutation_u", "robust_p": robust[1],
                  "robust_min_p": min(1.0, (2.0 if alternative == "two-sided" else 1.0) / math.comb(ta.size + tb.size,
                                                                                                  ta.size))}
    extras.update(df=contrast.df, se=contrast.se)
    return test, contrast.estimate, two.ci_low, two.ci_high, stat, p, extras


def _rank_tests(claim: ClaimSpec, ta, tb, ref: bool, paired: bool, margin: float | None, alternative: str,
                ci_level: float, rng: np.random.Generator) -> tuple:
    """Rank-based primary test when an arm holds ±inf: signed rank (paired or reference) or Mann–Whitney."""
    if ref or paired:
        with np.errstate(invalid="ignore"):
            d = np.nan_to_num(ta - (claim.reference if ref else tb), nan=0.0, posinf=np.inf, neginf=-np.inf)
        est, lo, hi = walsh_ci(d, ci_level)
        stat, p = _shifted(lambda s, alt: signed_rank_test(d - s, alternative=alt, rng=rng), claim, margin,
                           alternative)
        return "wilcoxon_signed_rank", est, lo, hi, stat, p, {}
    est, lo, hi = hodges_lehmann_ci(ta, tb, ci_level)

    def mann_whitney(shift: float, alt: str) -> tuple[float, float]:
        u = prob_a_better(ta - shift, tb, "higher") * ta.size * tb.size  # U of arm A, ties counting one half
        return float(u), rank_test(ta, tb, shift=shift, alternative=alt, rng=rng)

    stat, p = _shifted(mann_whitney, claim, margin, alternative)
    return "mann_whitney", est, lo, hi, stat, p, {}


def evaluate_claims(runs: pd.DataFrame, claims: Sequence[ClaimSpec], *, seed: int, ci_level: float = 0.95,
                    grid: Sequence[str] | None = None) -> pd.DataFrame:
    """Evaluate every claim on a runs table: a DataFrame with exactly COLUMNS, one row per claim, in natural order.

    Per-claim extras that are not CSV columns (figure, sesoi, rationale, robustness tests, the Welch row of a paired
    claim, bootstrap CI of P(A better), arm means, censoring counts, missing cells, why a row is inconclusive) are in
    `df.attrs["extras"]`, keyed by claim id, for claims.json and claims.md.

    Args:
        runs: one row per run (model, variant, lr, seed, diverged, step_budget, metric columns), any row order.
        claims: validated claims (parse_claims).
        seed: the stats seed; each claim's randomness comes from (seed, claim id).
        ci_level: coverage of every two-sided CI (t, Newcombe, rank, bootstrap).
        grid: the cell ids of train.grid, to say whether a not-run-yet cell is in the grid at all.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0, got {seed!r}")
    if not 0 < ci_level < 1:
        raise ConfigError(f"ci_level: must be in (0, 1), got {ci_level!r}")
    claims = tuple(claims)
    ids = [c.id for c in claims]
    for i, c in enumerate(claims):
        check_claim(c, f"claims[{i}]")
        if ids.index(c.id) != i:
            raise ConfigError(f"claims[{i}].id: duplicate id {c.id!r}; ids must be unique")
    check_runs(runs, claims)
    groups = group_runs(runs)
    results = [_evaluate_one(groups, c, seed=int(seed), ci_level=ci_level, grid=grid) for c in claims]
    for family in sorted({c.family for c in claims}):
        members = [i for i, c in enumerate(claims) if c.family == family]
        method = family_method(family)
        for i, p in zip(members, adjust([results[i].row["p_raw"] for i in members], method)):
            results[i].row.update(p_adj=float(p), adj_method=method)
            results[i].extra["family_size"] = len(members)
    for c, out in zip(claims, results):
        if not out.not_run:
            _decide(c, out)
        out.row["flags"] = ";".join(sorted(out.flags))
    order = sorted(range(len(claims)), key=lambda i: natural_key(ids[i]))
    df = pd.DataFrame([results[i].row for i in order], columns=list(COLUMNS))
    df.attrs["extras"] = {ids[i]: results[i].extra for i in order}
    return df


def _decide(claim: ClaimSpec, out: _Outcome) -> None:
    """Verdict, verdict-dependent flags and (inconclusive rows) the reason, from the adjusted p and the CI."""
    row = out.row
    margin = margin_on_test_scale(claim.margin, claim.scale)
    sesoi = sesoi_on_test_scale(claim.sesoi, claim.scale)
    row["verdict"] = decide_verdict(claim.type, claim.direction, p_adj=row["p_adj"], ci_low=out.ci[0],
                                    ci_high=out.ci[1], alpha=claim.alpha, margin=margin, sesoi=sesoi)
    if claim.family == POST_HOC:  # the look that generated a hypothesis cannot confirm it, whatever the numbers
        row["verdict"] = POST_HOC
        return
    out.flags |= verdict_flags(row["verdict"], claim.type, claim.direction, ci=out.ci, margin=margin, sesoi=sesoi)
    if row["verdict"] == "inconclusive":
        out.extra["reason"] = inconclusive_reason(claim.type, claim.direction, p_adj=row["p_adj"], ci=out.ci,
                                                  alpha=claim.alpha, margin=margin, sesoi=sesoi)

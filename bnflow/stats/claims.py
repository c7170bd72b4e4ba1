"""The claims registry and its evaluation on a runs table (STATS.md): one row of evidence and a verdict per claim.

A claim compares one per-run summary (`metric`) between two arms (variants of one model at one lr), or one arm
against a constant (`arm_b: chance`). Everything is computed on a test scale where "no effect" is 0 (a difference,
or a log ratio); ratio-scale results are reported as exp() of it. The verdict rules, in `decide_verdict`, are:

- supported: adjusted p < alpha AND the two-sided CI lies entirely on the favourable side of the null
  (superiority) or of the margin (non-inferiority), or inside the band (equivalence). A p above alpha never
  supports anything, so "no significant difference" is never read as "not worse".
- contradicted: the CI lies entirely on the unfavourable side (of the null, of the margin, outside the band).
  This uses the unadjusted CI, so the bar for contradicting a paper's claim is lower than for supporting it.
  For one-sided tests (non-inferiority, TOST) a 95% two-sided CI is stricter than the test at alpha = 0.05 (it
  matches a one-sided 2.5% test, the usual convention for non-inferiority trials), so there the CI decides.
- inconclusive: everything else, including a claim that could not be tested (missing arm, n = 1, no variance).

Flags (sorted, ';'-separated): missing_arm (an arm has no usable run: nothing is estimated); small_n (an arm has
1-4 runs); underpowered (only on inconclusive rows: the CI half-width on the test scale exceeds |estimate| for
superiority, or |margin| otherwise, i.e. more seeds are needed); censoring>50% (over half of either arm never reached
the threshold); diverged_excluded / missing_excluded (a diverged / non-diverged run had no value and was left out,
counted in n_excluded); zero_variance (all runs equal: no t test); bootstrap_n<=5 (the bootstrap CI of P(A better)
in claims.json rests on <= 5 runs per arm and under-covers); robustness_disagrees (the rank or sign-flip test and
the primary test fall on different sides of alpha, unadjusted).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from bnflow.config import ClaimSpec, check_claim, parse_claims
from bnflow.vocab import CHANCE, CLAIM_METRICS
from bnflow.errors import ConfigError, DataError
from bnflow.stats.estimators import (bootstrap_ci, fisher_p, log_mean_ratio, newcombe_difference, one_sample,
                                     prob_a_better, rank_test, sign_flip_test, t_test, tost, welch_difference)
from bnflow.stats.multiplicity import adjust, family_method

VERDICTS = ("supported", "contradicted", "inconclusive")
COLUMNS = ("claim_id", "family", "hypothesis", "metric", "scale", "arm_a", "arm_b", "lr", "n_a", "n_b", "n_excluded",
           "estimate", "ci_low", "ci_high", "ci_level", "margin", "test", "alternative", "statistic", "p_raw", "p_adj",
           "adj_method", "alpha", "prob_a_better", "verdict", "flags")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class MetricSpec:
    """How a per-run summary is compared.

    kind: "log" (values are natural logs: differences are log ratios), "censored_time" (steps capped at the budget:
    log restricted-mean ratio), "continuous" (difference of means), "binary" (0/1: difference of proportions).
    """

    kind: str
    scale: str
    models: tuple[str, ...]


METRICS: dict[str, MetricSpec] = {name: MetricSpec(*spec) for name, spec in CLAIM_METRICS.items()}


def claim_rng(seed: int, claim_id: str, n_streams: int) -> list[np.random.Generator]:
    """Independent generators for one claim, keyed by (stats seed, sha256 of the claim id), never Python's hash()."""
    key = int.from_bytes(hashlib.sha256(claim_id.encode("utf-8")).digest()[:16], "big")
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, key]).spawn(n_streams)]


def decide_verdict(claim_type: str, direction: str, *, p_adj: float, ci_low: float, ci_high: float, alpha: float,
                   margin: float | None = None) -> str:
    """supported | contradicted | inconclusive from the adjusted p and the CI, all on the test scale (null = 0).

    Args:
        claim_type: "superiority", "non_inferiority" or "equivalence".
        direction: "lower" or "higher": which side of the null/margin is favourable to arm A.
        p_adj: adjusted p-value of the claim's test (NaN when untestable).
        ci_low, ci_high: two-sided CI of the effect on the test scale.
        margin: non-inferiority boundary, or equivalence half-width, on the test scale (log ratio or difference).
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
    if hi < sign * bound:
        return "contradicted"
    return "inconclusive"


# ------------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class _Arm:
    """The analysed values of one arm after dropping (and counting) runs whose metric is missing."""

    values: np.ndarray  # (n,) float64; censored times are capped later, at the budget common to both arms
    censored: np.ndarray  # (n,) bool; only for censored_time metrics
    budget: np.ndarray  # (n,) float64 step budgets; only for censored_time metrics
    n_excluded: int
    diverged_excluded: int


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _arm(runs: pd.DataFrame, claim: ClaimSpec, variant: str, kind: str) -> _Arm:
    """Select the runs of one arm and apply STATS.md's missing-value rules.

    A diverged run is never dropped from time-to-threshold (censored at its budget) or from reached_acc90
    (did not reach); for other metrics its NaN is excluded, counted in n_excluded and flagged.
    """
    mask = ((runs["model"] == claim.model) & (runs["variant"] == variant)
            & np.isclose(_column(runs, "lr"), claim.lr, rtol=1e-9, atol=0.0))
    sel = runs[mask]
    values, diverged = _column(sel, claim.metric), sel["diverged"].to_numpy(dtype=bool)
    censored = np.zeros(values.size, dtype=bool)
    budget = np.full(values.size, np.nan)
    if kind == "censored_time":
        budget = _column(sel, "step_budget")
        censored = np.nan_to_num(_column(sel, f"{claim.metric}_censored")) != 0
        censored |= np.isnan(values) & diverged
        values = np.where(censored, budget, values)
    elif kind == "binary":
        values = np.where(np.isnan(values) & diverged, 0.0, values)
    keep = ~np.isnan(values)
    return _Arm(values[keep], censored[keep], budget[keep], int((~keep).sum()), int((~keep & diverged).sum()))


def _analysis_test(claim: ClaimSpec, kind: str) -> tuple[str, str]:
    """(test, alternative) columns for a claim: the declared primary test, also stated when it could not run."""
    if claim.arm_b == CHANCE:
        test = "one_sample_t"
    else:
        test = {"continuous": "welch_t", "log": "welch_t_log", "censored_time": "welch_t_log_rmst",
                "binary": "fisher_exact"}[kind]
    if claim.type == "superiority":
        return test, "two-sided"
    if claim.type == "equivalence":
        return test, "tost"
    return test, "less" if claim.direction == "lower" else "greater"


@dataclass
class _Outcome:
    """One claim's CSV row (p_adj and verdict filled in later), JSON extras, and what the verdict needs."""

    row: dict
    extra: dict
    ci: tuple[float, float]  # two-sided CI on the test scale
    margin: float | None  # on the test scale
    wide: bool = False  # CI half-width exceeds the effect it should resolve


def _evaluate_one(runs: pd.DataFrame, claim: ClaimSpec, *, seed: int, ci_level: float) -> _Outcome:
    """Evaluate one claim up to its raw p-value (multiplicity and verdict need the whole family)."""
    kind = METRICS[claim.metric].kind
    test, alternative = _analysis_test(claim, kind)
    ratio = claim.scale == "ratio"
    margin_t = None if claim.margin is None else (math.log(claim.margin) if ratio else claim.margin)
    a = _arm(runs, claim, claim.arm_a, kind)
    chance = claim.arm_b == CHANCE
    b = _Arm(np.array([claim.reference]), np.zeros(1, bool), np.full(1, np.nan), 0, 0) if chance else \
        _arm(runs, claim, claim.arm_b, kind)
    n_a, n_b = a.values.size, (math.nan if chance else b.values.size)  # a constant arm has no runs: NA
    nan = math.nan
    row = dict(claim_id=claim.id, family=claim.family, hypothesis=claim.hypothesis, metric=claim.metric,
               scale=claim.scale, arm_a=claim.arm_a, arm_b=claim.arm_b, lr=claim.lr, n_a=n_a, n_b=n_b,
               n_excluded=a.n_excluded + b.n_excluded, estimate=nan, ci_low=nan, ci_high=nan, ci_level=ci_level,
               margin=nan if claim.margin is None else claim.margin, test=test, alternative=alternative,
               statistic=nan, p_raw=nan, p_adj=nan, adj_method="", alpha=claim.alpha, prob_a_better=nan,
               verdict="inconclusive", flags="")
    extra = dict(robust_test="none", robust_p=nan, df=nan, mean_a=nan, mean_b=nan,
                 prob_a_better_ci_low=nan, prob_a_better_ci_high=nan)
    if chance:
        extra["reference"] = claim.reference
    flags = set()
    if a.diverged_excluded + b.diverged_excluded:
        flags.add("diverged_excluded")
    if a.n_excluded + b.n_excluded > a.diverged_excluded + b.diverged_excluded:
        flags.add("missing_excluded")
    present = (n_a,) if chance else (n_a, n_b)
    if min(present) == 0:
        flags.add("missing_arm")
        row["flags"] = ";".join(sorted(flags))
        return _Outcome(row, extra, (nan, nan), margin_t)
    if min(present) < 5:
        flags.add("small_n")
    if kind != "binary" and min(present) < 2:
        # a t-test needs a variance in every sampled arm: with one run there is nothing to test, only to report
        flags.add("n<2")
        row["flags"] = ";".join(sorted(flags))
        return _Outcome(row, extra, (nan, nan), margin_t)
    va, vb = a.values, b.values
    if kind == "censored_time":
        # Restricted mean up to the budget common to both arms (STATS.md): cap every time there.
        tau = float(min(a.budget.min(), b.budget.min()))
        va, vb = np.minimum(va, tau), np.minimum(vb, tau)
        cens_a, cens_b = a.censored | (va >= tau), b.censored | (vb >= tau)
        va[cens_a], vb[cens_b] = tau, tau
        if max(cens_a.mean(), cens_b.mean()) > 0.5:
            flags.add("censoring>50%")
        if (va <= 0).any() or (vb <= 0).any():
            raise DataError(f"claim {claim.id}: {claim.metric} must be > 0 steps; check runs.csv")
        extra.update(restriction_steps=tau, n_censored_a=int(cens_a.sum()), n_censored_b=int(cens_b.sum()))
    extra.update(mean_a=float(va.mean()), mean_b=float(vb.mean()))
    rng_robust, rng_boot = claim_rng(seed, claim.id, 2)
    # Rank-based statistics see times on the log scale, where a ratio margin is a shift.
    ta, tb = (np.log(va), np.log(vb)) if kind == "censored_time" else (va, vb)
    est, lo, hi, stat, p, extra["df"], se = _primary(claim, kind, va, vb, margin_t, alternative, ci_level)
    if se == 0:  # every run of both arms has the same value: no t test is possible
        flags.add("zero_variance")
    if kind != "binary":  # Fisher's test is already exact
        extra.update(_robust(claim, ta, tb, margin_t, alternative, rng_robust))

    to_report = math.exp if ratio else float
    row.update(estimate=to_report(est), statistic=stat, p_raw=p)
    wide = False
    if not math.isnan(lo):
        row.update(ci_low=to_report(lo), ci_high=to_report(hi))
        # The CI is wider than the effect it should resolve: |estimate| for superiority, the null-to-margin
        # distance otherwise (then even a true null effect could not show non-inferiority at this n).
        wide = (hi - lo) / 2.0 > (abs(est) if margin_t is None else abs(margin_t))
    row["prob_a_better"] = prob_a_better(ta, tb, claim.direction)
    if chance:
        boot = bootstrap_ci([ta], lambda x: prob_a_better(x, tb, claim.direction), rng=rng_boot, ci_level=ci_level)
    else:
        boot = bootstrap_ci([ta, tb], lambda x, y: prob_a_better(x, y, claim.direction), rng=rng_boot,
                            ci_level=ci_level)
    extra.update(prob_a_better_ci_low=boot[0], prob_a_better_ci_high=boot[1])
    if min(present) <= 5:
        flags.add("bootstrap_n<=5")
    robust_p = extra["robust_p"]
    if not (math.isnan(robust_p) or math.isnan(p)) and (p < claim.alpha) != (robust_p < claim.alpha):
        flags.add("robustness_disagrees")
    row["flags"] = ";".join(sorted(flags))
    return _Outcome(row, extra, (lo, hi), margin_t, wide)


def _primary(claim: ClaimSpec, kind: str, va: np.ndarray, vb: np.ndarray, margin_t: float | None,
             alternative: str, ci_level: float) -> tuple[float, ...]:
    """The declared test on the test scale: (estimate, ci_low, ci_high, statistic, p, df, se); df, se NaN for Fisher."""
    if kind == "binary":
        xa, xb = int(va.sum()), int(vb.sum())
        est, lo, hi = newcombe_difference(xa, va.size, xb, vb.size, ci_level)
        # Fisher's test conditions on the margins: its statistic is arm A's count of successes.
        return est, lo, hi, float(xa), fisher_p(xa, va.size, xb, vb.size), math.nan, math.nan
    if claim.arm_b == CHANCE:
        contrast = one_sample(va, claim.reference)
    elif kind == "censored_time":
        contrast = log_mean_ratio(va, vb)
    else:
        contrast = welch_difference(va, vb)
    two_sided = t_test(contrast, ci_level=ci_level)
    if claim.type == "superiority":
        stat, p = two_sided.statistic, two_sided.p_value
    elif claim.type == "equivalence":
        stat, p = tost(contrast, -abs(margin_t), abs(margin_t))
    else:
        one_sided = t_test(contrast, null=margin_t, alternative=alternative, ci_level=ci_level)
        stat, p = one_sided.statistic, one_sided.p_value
    return contrast.estimate, two_sided.ci_low, two_sided.ci_high, stat, p, contrast.df, contrast.se


def _robust(claim: ClaimSpec, ta: np.ndarray, tb: np.ndarray, margin_t: float | None, alternative: str,
            rng: np.random.Generator) -> dict:
    """The robustness test of the same hypothesis on the test scale: a rank permutation test (Mann–Whitney U),
    or sign flips of the differences from the constant when arm B is chance."""
    if claim.arm_b == CHANCE:
        name = "sign_flip_mean"

        def test(shift: float, alt: str) -> float:
            return sign_flip_test(ta - claim.reference - shift, alternative=alt, rng=rng)
    else:
        name = "permutation_u"

        def test(shift: float, alt: str) -> float:
            return rank_test(ta, tb, shift=shift, alternative=alt, rng=rng)
    if claim.type == "superiority":
        p = test(0.0, "two-sided")
    elif claim.type == "equivalence":
        p = max(test(-abs(margin_t), "greater"), test(abs(margin_t), "less"))
    else:
        p = test(margin_t, alternative)
    return {"robust_test": name, "robust_p": p}


def _check_runs(runs: pd.DataFrame, claims: Sequence[ClaimSpec]) -> None:
    """DataError unless the runs table has the columns the claims need, no NA in `diverged` and no duplicate runs."""
    needed = {"model", "variant", "lr", "seed", "diverged"}
    for c in claims:
        needed.add(c.metric)
        if METRICS[c.metric].kind == "censored_time":
            needed |= {f"{c.metric}_censored", "step_budget"}
    missing = sorted(needed - set(runs.columns))
    if missing:
        raise DataError(f"runs table: missing column(s) {', '.join(missing)} needed by the claims; "
                        "rerun the summarise step that writes runs.csv")
    for column in ("diverged", "step_budget"):
        if column in needed and runs[column].isna().any():
            raise DataError(f"runs table: column {column!r} has missing values; every run needs one")
    dup = runs.duplicated(["model", "variant", "lr", "seed"], keep=False)
    if dup.any():
        r = runs[dup].iloc[0]
        raise DataError(f"runs table: run {r['model']}-{r['variant']}-lr{r['lr']:g}-s{r['seed']} appears more than "
                        "once; each (model, variant, lr, seed) must be one row")


def evaluate_claims(runs: pd.DataFrame, claims: Sequence[ClaimSpec], *, seed: int,
                    ci_level: float = 0.95) -> pd.DataFrame:
    """Evaluate every claim on a runs table: a DataFrame with exactly COLUMNS, one row per claim, sorted by claim_id.

    Per-claim extras that are not CSV columns (robustness test and p, bootstrap CI of P(A better), arm means,
    Welch df, censoring counts) are in `df.attrs["extras"]`, keyed by claim id, for claims.json.

    Args:
        runs: pandas DataFrame, one row per run (model, variant, lr, seed, diverged, step_budget, metric columns).
        claims: validated claims (parse_claims).
        seed: the stats seed; each claim's randomness comes from (seed, claim id).
        ci_level: coverage of every two-sided CI (Welch, Newcombe, bootstrap).
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
    _check_runs(runs, claims)
    results = [_evaluate_one(runs, c, seed=int(seed), ci_level=ci_level) for c in claims]
    for family in sorted({c.family for c in claims}):
        members = [i for i, c in enumerate(claims) if c.family == family]
        method = family_method(family)
        for i, p in zip(members, adjust([results[i].row["p_raw"] for i in members], method)):
            results[i].row.update(p_adj=float(p), adj_method=method)
    for c, out in zip(claims, results):
        row = out.row
        row["verdict"] = decide_verdict(c.type, c.direction, p_adj=row["p_adj"], ci_low=out.ci[0],
                                        ci_high=out.ci[1], alpha=c.alpha, margin=out.margin)
        # "underpowered" explains an inconclusive verdict (more seeds needed), so it only accompanies that one.
        if out.wide and row["verdict"] == "inconclusive":
            row["flags"] = ";".join(sorted(filter(None, [*row["flags"].split(";"), "underpowered"])))
    order = sorted(range(len(claims)), key=lambda i: ids[i])
    df = pd.DataFrame([results[i].row for i in order], columns=list(COLUMNS))
    df.attrs["extras"] = {ids[i]: results[i].extra for i in order}
    return df

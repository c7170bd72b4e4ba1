"""Tests for bnflow.stats: estimators against closed forms, textbook tables and second implementations, multiplicity
against textbook examples, verdict rules branch by branch, claim evaluation on a hand-made runs table (paired and
unpaired, blow-ups, divergence, partial grids, row order), and the claims.csv golden file."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnflow.config import parse_claims, read_yaml
from bnflow.errors import DataError
from bnflow.stats import COLUMNS, VERDICTS, decide_verdict, evaluate_claims, format_number
from bnflow.stats.decide import inconclusive_reason
from bnflow.stats.estimators import (fisher_p, log_mean_ratio, mcnemar_exact_p, newcombe_difference, one_sample,
                                     t_test, tost, welch_difference, wilson_interval)
from bnflow.stats.multiplicity import adjust, benjamini_hochberg, family_method, holm
from bnflow.stats.ranks import (hodges_lehmann_ci, prob_a_better, rank_sum_null_counts, rank_test, sign_flip_test,
                                signed_rank_null_counts, signed_rank_test, walsh_ci)
from bnflow.stats.registry import claim_rng
from bnflow.stats.sentences import claim_sentence
from bnflow.stats.write import (claims_csv_text, claims_json_obj, claims_md_text, format_cell, write_claims_csv,
                                write_claims_json, write_claims_md)

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = read_yaml(ROOT / "params.yaml")["claims"]  # the registry itself, never a copy
CLAIMS = parse_claims(REGISTRY)
GOLDEN = Path(__file__).parent / "data" / "claims_golden.csv"
A = np.array([1.0, 2.0, 3.0, 4.0])
B = np.array([2.0, 4.0, 6.0, 8.0, 10.0])


def _welch_by_hand(a, b, level):
    """Welch's t by its textbook formulas: (estimate, se, df, CI)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    est = np.mean(a) - np.mean(b)
    q = stats.t.ppf(1 - (1 - level) / 2, df)
    return est, se, df, (est - q * se, est + q * se)


# ------------------------------------------------------------------------------------------------------ estimators
def test_welch_difference_matches_closed_form_and_scipy():
    est, se, df, (lo, hi) = _welch_by_hand(A, B, 0.9)
    c = welch_difference(A, B)
    assert (c.estimate, c.se, c.df) == pytest.approx((est, se, df), rel=1e-12)
    res = t_test(c, ci_level=0.9)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.9)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10) == (lo, hi)


def test_one_sided_test_against_a_margin_is_the_shifted_t():
    est, se, df, _ = _welch_by_hand(A, B, 0.95)
    c = welch_difference(A, B)
    assert t_test(c, null=-1.0, alternative="greater").p_value == pytest.approx(stats.t.sf((est + 1.0) / se, df))
    assert stats.ttest_ind(A + 1.0, B, equal_var=False, alternative="less").pvalue == pytest.approx(
        t_test(c, null=-1.0, alternative="less").p_value)


def test_tost_is_the_larger_of_two_one_sided_p_values():
    est, se, df, _ = _welch_by_hand(A, B, 0.95)
    for low, high in [(-6.0, 6.0), (-4.0, 1.0), (-10.0, -2.0)]:
        p_low, p_high = stats.t.sf((est - low) / se, df), stats.t.cdf((est - high) / se, df)
        stat, p = tost(welch_difference(A, B), low, high)
        assert p == pytest.approx(max(p_low, p_high), rel=1e-12)
        assert stat == pytest.approx((est - (low if p_low >= p_high else high)) / se)


def test_log_mean_ratio_is_the_delta_method_welch_on_restricted_means():
    a, b = np.array([2.0, 4.0, 6.0]), np.array([10.0, 10.0, 7.0, 13.0])
    c = log_mean_ratio(a, b)
    va, vb = np.var(a, ddof=1) / (3 * 4.0**2), np.var(b, ddof=1) / (4 * 10.0**2)
    assert (c.estimate, c.se) == pytest.approx((math.log(0.4), math.sqrt(va + vb)))
    assert c.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 3))


def test_paired_t_is_scipy_ttest_rel_and_one_sample_matches_ttest_1samp():
    a, b = np.array([1.1, 2.3, 2.9, 4.2, 5.0]), np.array([1.0, 2.0, 3.1, 3.9, 4.4])
    res = t_test(one_sample(a - b, 0.0), ci_level=0.9)
    ref = stats.ttest_rel(a, b)
    assert (res.statistic, res.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert (res.ci_low, res.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.9)))
    x = np.array([0.11, 0.09, 0.13, 0.12])
    assert t_test(one_sample(x, 0.1), null=0.05, alternative="less").p_value == pytest.approx(
        stats.ttest_1samp(x, 0.15, alternative="less").pvalue)
    assert math.isnan(t_test(welch_difference([1.0], [2.0, 3.0])).p_value)  # n = 1: no variance


def test_zero_variance_is_the_limit_of_the_t_test_not_a_missing_value():
    # five runs all exactly at chance: the CI is the point, the test is decided (p 0 or 1), never NaN
    res = t_test(one_sample([0.1] * 5, 0.1), null=0.05, alternative="less")
    assert (res.p_value, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
    assert t_test(one_sample([0.1] * 5, 0.1), null=-0.05, alternative="less").p_value == 1.0
    assert t_test(welch_difference([2.0, 2.0], [2.0, 2.0])).p_value == 1.0


def test_proportions_match_newcombe_1998_fisher_and_mcnemar_by_hand():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.8415 / 13.8415), abs=1e-4)  # z²/(n + z²)
    est, lo, hi = newcombe_difference(56, 70, 48, 80)  # Newcombe (1998), example (a), method 10
    assert (est, round(lo, 4), round(hi, 4)) == (pytest.approx(0.2), 0.0524, 0.3339)
    assert fisher_p(5, 5, 0, 5) == pytest.approx(2 / 252)  # two of the C(10, 5) tables are as extreme
    assert fisher_p(5, 5, 0, 5, "greater") == pytest.approx(1 / 252)  # one-sided: only the observed one
    assert fisher_p(5, 5, 0, 5, "less") == pytest.approx(1.0)
    # 4 discordant pairs, all for A: one-sided binomial 1/2^4
    assert mcnemar_exact_p(np.array([1, 1, 1, 1, 0]), np.zeros(5), "greater") == pytest.approx(1 / 16)


# ----------------------------------------------------------------------------------------------------------- ranks
def test_rank_test_equals_exact_mann_whitney_without_ties():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.0, 1.0, 5), rng.normal(1.0, 1.0, 6)
    for alt in ("two-sided", "less", "greater"):
        exact = stats.mannwhitneyu(a, b, alternative=alt, method="exact").pvalue
        assert rank_test(a, b, alternative=alt, rng=np.random.default_rng(0)) == pytest.approx(exact, rel=1e-9)
    assert rank_test(a, b, shift=0.3, alternative="less", rng=np.random.default_rng(0)) == pytest.approx(
        stats.mannwhitneyu(a - 0.3, b, alternative="less", method="exact").pvalue)


def test_rank_test_with_ties_enumerates_all_splits():
    a, b = np.array([1.0, 1.0, 2.0]), np.array([1.0, 3.0, 3.0])
    pooled = np.concatenate([a, b])

    def u(idx):  # U of the group `idx` with mid-ranks, as Mann and Whitney define it
        x, y = pooled[list(idx)], np.delete(pooled, list(idx))
        return sum((xi > yi) + 0.5 * (xi == yi) for xi in x for yi in y)

    null = [u(idx) for idx in itertools.combinations(range(6), 3)]
    expected = np.mean([v <= u((0, 1, 2)) + 1e-12 for v in null])
    assert rank_test(a, b, alternative="less", rng=np.random.default_rng(0)) == pytest.approx(expected)


def test_sign_flip_test_enumerates_signs():
    # Only the all-positive sign pattern reaches the observed mean of [1, 2, 3]: p = 1/8.
    assert sign_flip_test([1.0, 2.0, 3.0], alternative="greater", rng=np.random.default_rng(0)) == pytest.approx(1 / 8)


def test_null_counts_by_brute_force():
    for n in (1, 4, 6):
        sums = [sum(s) for r in range(n + 1) for s in itertools.combinations(range(1, n + 1), r)]
        assert signed_rank_null_counts(n) == tuple(np.bincount(sums))
    for n_a, n_b in ((1, 3), (3, 4), (5, 5)):
        us = [sum(x > y for x in idx for y in set(range(n_a + n_b)) - set(idx))
              for idx in itertools.combinations(range(n_a + n_b), n_a)]
        assert rank_sum_null_counts(n_a, n_b) == tuple(np.bincount(us))


def test_signed_rank_test_matches_scipy_exact_wilcoxon():
    d = np.array([0.3, -1.2, 2.5, 0.7, 1.9, -0.4, 3.1])
    for alt in ("two-sided", "greater", "less"):
        ref = stats.wilcoxon(d, alternative=alt, method="exact")
        assert signed_rank_test(d, alternative=alt, rng=np.random.default_rng(0))[1] == pytest.approx(ref.pvalue)
    # an infinite difference is the largest shift, zeros are dropped: same p as a huge finite value
    big = signed_rank_test(np.array([1e300, 0.5, 0.2, 0.0, 0.9]), alternative="greater", rng=np.random.default_rng(0))
    inf = signed_rank_test(np.array([np.inf, 0.5, 0.2, 0.0, 0.9]), alternative="greater", rng=np.random.default_rng(0))
    assert big == inf == (10.0, pytest.approx(1 / 16))


def test_rank_cis_use_the_textbook_critical_values():
    # Wilcoxon signed rank, two-sided 0.05: n = 5 has no critical value (unbounded CI); n = 6: T = 0 -> k = 1
    # (min, max of the Walsh averages = of the data); n = 8: T = 3 -> k = 4.
    assert walsh_ci([1.0, 2.0, 3.0, 4.0, 5.0])[1:] == (-math.inf, math.inf)
    d6 = np.array([0.5, -0.2, 1.5, 0.9, 2.0, 0.1])
    assert walsh_ci(d6) == (pytest.approx(np.median([(x + y) / 2 for x, y in itertools.combinations_with_replacement(
        d6, 2)])), -0.2, 2.0)
    d8 = np.array([0.3, -1.2, 2.5, 0.7, 1.9, -0.4, 3.1, 1.1])
    walsh = np.sort([(x + y) / 2 for x, y in itertools.combinations_with_replacement(d8, 2)])
    assert walsh_ci(d8)[1:] == (pytest.approx(walsh[3]), pytest.approx(walsh[36 - 4]))
    # Mann-Whitney, two-sided 0.05, 5 vs 5: critical U = 2 -> k = 3
    a, b = np.array([1.0, 4.0, 6.0, 9.0, 10.0]), np.array([0.0, 2.0, 3.0, 5.0, 7.5])
    diffs = np.sort((a[:, None] - b[None, :]).ravel())
    assert hodges_lehmann_ci(a, b) == (pytest.approx(np.median(diffs)), diffs[2], diffs[25 - 3])


def test_prob_a_better_counts_pairs_with_half_ties_and_infinities_tie():
    a, b = np.array([1.0, 2.0]), np.array([2.0, 3.0, 4.0])
    assert prob_a_better(a, b, "lower") == pytest.approx(5.5 / 6)  # 1 beats 2, 3, 4; 2 ties 2, beats 3, 4
    assert prob_a_better(a, b, "lower") == pytest.approx(stats.mannwhitneyu(b, a, method="exact").statistic / 6)
    assert prob_a_better([np.inf, 1.0], [np.inf, 2.0], "lower") == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_claim_rng_depends_on_seed_and_id_not_on_python_hash():
    draw = claim_rng(0, "C1", 2)[1].random()
    assert draw == claim_rng(0, "C1", 2)[1].random()
    assert draw != claim_rng(0, "C2a", 2)[1].random() and draw != claim_rng(1, "C1", 2)[1].random()
    code = "from bnflow.stats.registry import claim_rng; print(repr(claim_rng(0, 'C1', 2)[1].random()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert float(out) == draw


# ---------------------------------------------------------------------------------------------------- multiplicity
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
           0.6528, 0.7590, 1.000]


def test_holm_and_benjamini_hochberg_on_the_1995_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert int((holm(BH_1995) < 0.05).sum()) == 3  # Bonferroni-type procedures reject 3 of the 15 ...
    adjusted = benjamini_hochberg(BH_1995)
    assert int((adjusted <= 0.05).sum()) == 4  # ... and the FDR procedure 4 (Benjamini & Hochberg 1995, §4)
    assert adjusted == pytest.approx(stats.false_discovery_control(BH_1995))


def test_missing_p_values_count_in_the_family_and_stay_missing():
    out = holm([0.01, np.nan, 0.02])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.03, 0.04])
    assert adjust([0.2, np.nan], "none")[0] == 0.2
    assert [family_method(f) for f in ("primary", "secondary_lp", "exploratory")] == ["holm", "bh", "none"]


# --------------------------------------------------------------------------------------------------------- verdict
L125, L08, S = math.log(1.25), math.log(0.8), abs(math.log(0.9))


@pytest.mark.parametrize("claim_type, direction, p_adj, lo, hi, margin, sesoi, expected", [
    ("superiority", "lower", 0.01, -2.0, -1.0, None, S, "supported"),
    ("superiority", "lower", 0.01, 1.0, 2.0, None, S, "contradicted"),
    ("superiority", "lower", 0.30, -1.0, 1.0, None, S, "inconclusive"),
    ("superiority", "lower", 0.06, -2.0, -0.1, None, S, "inconclusive"),  # CI excludes 0, adjusted p does not pass
    ("superiority", "lower", 0.40, -0.05, 0.08, None, S, "not_reproduced"),  # CI inside (log 0.9, -log 0.9)
    ("superiority", "lower", 0.40, -0.05, 0.2, None, S, "inconclusive"),  # reaches beyond the sesoi band
    ("superiority", "lower", 0.01, -0.09, -0.02, None, S, "supported"),  # significant but below the sesoi: flagged
    ("superiority", "higher", 0.01, 1.0, 2.0, None, S, "supported"),
    ("superiority", "higher", 0.01, -2.0, -1.0, None, S, "contradicted"),
    ("superiority", "higher", 0.20, -math.inf, math.inf, None, S, "inconclusive"),  # unbounded rank CI
    ("superiority", "higher", np.nan, np.nan, np.nan, None, S, "inconclusive"),
    ("non_inferiority", "lower", 0.01, -0.1, 0.1, L125, None, "supported"),
    ("non_inferiority", "lower", 0.30, -0.1, 0.1, L125, None, "inconclusive"),  # p > 0.05 never supports
    ("non_inferiority", "lower", 0.01, 0.3, 0.5, L125, None, "contradicted"),
    ("non_inferiority", "lower", 0.40, -0.01, 0.01, L125, None, "inconclusive"),  # no not_reproduced here
    ("non_inferiority", "higher", 0.01, -0.1, 0.3, L08, None, "supported"),
    ("non_inferiority", "higher", 0.01, -0.5, -0.3, L08, None, "contradicted"),
    ("equivalence", "lower", 0.01, -0.1, 0.1, 0.2, None, "supported"),
    ("equivalence", "lower", 0.01, -0.1, 0.25, 0.2, None, "inconclusive"),
    ("equivalence", "higher", 0.01, 0.3, 0.5, 0.2, None, "contradicted"),
])
def test_verdict_rules(claim_type, direction, p_adj, lo, hi, margin, sesoi, expected):
    assert decide_verdict(claim_type, direction, p_adj=p_adj, ci_low=lo, ci_high=hi, alpha=0.05, margin=margin,
                          sesoi=sesoi) == expected


def test_inconclusive_reasons():
    common = dict(alpha=0.05, margin=None, sesoi=S)
    assert inconclusive_reason("superiority", "lower", p_adj=0.08, ci=(-0.5, -0.1), **common) == "adjusted_p"
    assert inconclusive_reason("superiority", "lower", p_adj=0.3, ci=(-0.5, 0.2), **common) == "ci_crosses"
    assert inconclusive_reason("superiority", "lower", p_adj=0.3, ci=(-math.inf, math.inf), **common) == \
        "unbounded_ci"
    assert inconclusive_reason("superiority", "lower", p_adj=np.nan, ci=(np.nan, np.nan), **common) == "untestable"


# ------------------------------------------------------------------------------------------------------ evaluation
F = np.array([0.94, 1.0, 1.07, 0.97, 1.03])  # per-seed factors: fixed, no RNG, so the golden file is stable
G = np.array([-1.0, 0.3, 1.0, -0.5, 0.2])


def _run(model, variant, lr, seed, **metrics):
    row = dict(model=model, variant=variant, lr=lr, seed=seed, diverged=False, step_budget=15000,
               steps_to_acc90=np.nan, steps_to_acc90_censored=False)
    return row | metrics


def _early(shift: float, g: float) -> dict:
    """The registry-v3 early-window peaks of one synthetic run (logs): `shift` apart between arms, spread `g`."""
    return dict(band_peak_early_log=3.0 + shift + 0.3 * g, grad_change_peak_early_log=1.0 + shift / 3 + 0.2 * g,
                beta_peak_early_log=8.0 + shift / 10 + 0.4 * g)


def synthetic_runs() -> pd.DataFrame:
    """A fixed runs table exercising every claim kind: censoring, divergence, blow-ups, unpaired seeds, absent cells."""
    rows = []
    std_steps = [9000, 11000, 15000, 10000, 15000]  # seed 2 censored, seed 4 diverged before 90% (censored)
    for s in range(5):
        band = math.inf if s == 3 else 1.5 + 0.15 * G[s]  # seed 3's loss probe blew up: +inf, ranked worst
        rows.append(_run("vgg", "standard", 0.1, s, steps_to_acc90=std_steps[s], diverged=s == 4,
                         steps_to_acc90_censored=s in (2, 4), final_train_acc=0.98 + 0.004 * G[s],
                         loss_band_log=band, grad_change_log=0.25 + 0.2 * G[s], beta_q90_log=2.0 + 0.1 * G[s],
                         ics_rel_log=-1.0 + 0.1 * G[s], ics_cos=0.3 + 0.02 * G[s], act_drift_log=-3.0,
                         edge_ratio=2.0 + 0.1 * G[s]) | _early(0.0, G[s]))
        rows.append(_run("vgg", "bn", 0.1, s, steps_to_acc90=4000 * F[s], final_train_acc=0.99 + 0.003 * G[::-1][s],
                         loss_band_log=0.5 + 0.1 * G[::-1][s], grad_change_log=0.2 + 0.2 * G[::-1][s],
                         beta_q90_log=1.0 + 0.1 * G[::-1][s], ics_rel_log=-0.95 + 0.1 * G[::-1][s],
                         ics_cos=0.28 + 0.02 * G[::-1][s], act_drift_log=-3.1 + 0.1 * G[s],
                         edge_ratio=1.05 + 0.05 * G[::-1][s]) | _early(-1.5, G[::-1][s]))
        rows.append(_run("vgg", "noisy_bn", 0.1, s, steps_to_acc90=4400 * F[::-1][s], diverged=s == 2,
                         final_train_acc=0.985 + 0.003 * G[s], act_drift_log=-1.5 + 0.1 * G[(s + 1) % 5]))
        # noisy_bn seed 2 reached 90% and diverged later: its time counts (summarize did not censor it)
        rows.append(_run("vgg", "noisy_standard", 0.1, s, final_train_acc=0.1, diverged=True))  # all at chance
        rows.append(_run("vgg", "l1", 0.1, s, steps_to_acc90=5000 * F[(s + 2) % 5], loss_band_log=0.6 + 0.1 * G[s]))
        if s < 3:  # l2 has seeds 0-2 only: unpaired against the 5 standard runs
            rows.append(_run("vgg", "l2", 0.1, s, steps_to_acc90=5200 * F[s], loss_band_log=0.7 + 0.1 * G[s]))
        rows.append(_run("vgg", "bn", 0.5, s, reached_acc90=True))
        rows.append(_run("vgg", "standard", 0.5, s, diverged=s < 3, reached_acc90=False))
        for k, (variant, shift) in enumerate((("bn", -2.0), ("standard", 0.0))):
            g = G[(s + 2 * k) % 5]  # the two arms' seed spreads differ: no exactly constant per-seed difference
            rows.append(_run("dln", variant, 1e-6, s, loss_band_log=shift + 0.2 * g,
                             grad_change_log=shift / 50 + 0.1 * g, beta_q90_log=shift / 4 + 0.3 * g,
                             ics_rel_log=shift + 0.1 * g,
                             train_loss_auc_log=2.0 + shift / 10 + 0.01 * g, edge_ratio=1.0 + 0.1 * g)
                        | _early(shift, g))
    return pd.DataFrame(rows)


# A fixed grid, whatever part of it params.yaml commits (its train.grid grows as cells are run, and the not_in_grid
# flags of the golden file would follow it): the DLN cells, the reduced-scale core grid and the paper-scale VGG cells,
# as workflow/paper-vgg.yaml lists them. The l1/l2/linf and lr 0.01 reduced-scale cells are not in it.
PAPER_VGG = [f"vgg-{v}-lr{lr}" for v, lr in (("standard", 0.1), ("bn", 0.1), ("standard", 0.5), ("bn", 0.5),
                                              ("standard", 0.01), ("bn", 0.01), ("noisy_bn", 0.1),
                                              ("noisy_standard", 0.1), ("l1", 0.1), ("l2", 0.1), ("linf", 0.1))]
DLN = [f"dln-{v}-lr{lr}" for v, lr in (("standard", "1e-06"), ("bn", "1e-06"), ("l1", "1e-06"), ("l2", "1e-06"),
                                        ("linf", "1e-06"), ("standard", "1e-07"), ("bn", "1e-07"))]
VGG_CPU = [f"vgg_cpu-{v}-lr{lr}" for v, lr in (("standard", 0.1), ("bn", 0.1), ("standard", 0.5), ("bn", 0.5),
                                                ("noisy_bn", 0.1), ("noisy_standard", 0.1))]
GRID = [*PAPER_VGG, *DLN, *VGG_CPU]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return evaluate_claims(synthetic_runs(), CLAIMS, seed=0, grid=GRID)


def _row(table, claim_id):
    return table.set_index("claim_id").loc[claim_id]


def _arm(variant, metric, model="vgg", lr=0.1):
    runs = synthetic_runs()
    pick = runs[(runs.model == model) & (runs.variant == variant) & (runs.lr == lr)].sort_values("seed")
    return pick[metric].to_numpy(dtype=float)


def test_table_has_the_specified_columns_in_natural_order(table):
    assert tuple(table.columns) == COLUMNS
    ids = list(table["claim_id"])
    assert [i for i in ids if not i.endswith("_cpu")][:14] == [
        "C1", "C2a", "C2b", "C2c", "C3", "C3e", "C4", "C4e", "C5", "C5e", "C6", "C6_lr001", "C6cos", "C6cos_lr001"]
    assert all(ids[ids.index(i) + 1] == f"{i}_cpu" for i in ids if f"{i}_cpu" in ids)  # each twin after its claim
    assert ids.index("C9") < ids.index("C10") < ids.index("C11") < ids.index("C3_dln") < ids.index("C11_dln")
    assert set(table["verdict"]) <= set(VERDICTS) and {"supported", "not_run_yet"} <= set(table["verdict"])


def test_paired_time_to_threshold_is_a_t_test_on_per_seed_log_ratios(table):
    r = _row(table, "C1")
    a, b = _arm("bn", "steps_to_acc90"), np.minimum(_arm("standard", "steps_to_acc90"), 15000)
    ref = stats.ttest_rel(np.log(a), np.log(b))
    assert (r["test"], r["n_a"], r["n_b"], r["n_excluded"]) == ("paired_t_log", 5, 5, 0)
    assert r["p_raw"] == pytest.approx(ref.pvalue) and r["estimate"] == pytest.approx(np.exp(np.mean(np.log(a / b))))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(np.exp(ref.confidence_interval(0.95))))
    extra = table.attrs["extras"]["C1"]
    assert extra["paired"] and (extra["n_censored_b"], extra["restriction_steps"]) == (2, 15000.0)
    assert extra["restricted_mean_ratio"] == pytest.approx(a.mean() / b.mean())
    # robustness rows: the exact sign flip of the log ratios, and the unpaired Welch on restricted means
    assert extra["robust_p"] == pytest.approx(2 / 32)  # every log ratio is negative: 2 of 32 sign patterns as extreme
    c = log_mean_ratio(a, b)
    assert extra["welch_p"] == pytest.approx(t_test(c).p_value) and extra["welch_estimate"] == pytest.approx(
        a.mean() / b.mean())
    assert "diverged_runs" in r["flags"].split(";") and r["verdict"] == "supported"


def test_unpaired_arms_fall_back_to_welch(table):
    r = _row(table, "C7_l2")
    assert (r["test"], r["n_a"], r["n_b"]) == ("welch_t_log_rmst", 3, 5)
    assert {"unpaired", "small_n"} <= set(r["flags"].split(";"))
    assert table.attrs["extras"]["C7_l2"]["robust_test"] == "permutation_u"


def test_an_infinite_value_makes_the_rank_test_primary(table):
    r = _row(table, "C3")  # standard seed 3 has loss_band_log = +inf (a blown-up probe)
    a, b = _arm("bn", "loss_band_log"), _arm("standard", "loss_band_log")
    d = a - b
    ranks = stats.rankdata(np.abs(np.where(np.isinf(d), -1e300, d)))
    observed = ranks[d > 0].sum()
    null = [sum(r_ for r_, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=5)]
    p = min(1.0, 2 * min(np.mean(np.array(null) >= observed), np.mean(np.array(null) <= observed)))
    assert (r["test"], r["p_raw"]) == ("wilcoxon_signed_rank", pytest.approx(p))
    assert "inf_rank_primary" in r["flags"].split(";")
    assert (r["ci_low"], r["ci_high"]) == (0.0, math.inf)  # n = 5: no exact 95% signed-rank CI (exp of ±inf)
    assert r["verdict"] == "inconclusive" and table.attrs["extras"]["C3"]["reason"] == "unbounded_ci"
    u = _row(table, "C7band_l2")  # l2 (3 seeds) vs standard (5, one +inf): Mann-Whitney
    big = np.where(np.isinf(_arm("standard", "loss_band_log")), 1e300, _arm("standard", "loss_band_log"))
    assert (u["test"], u["p_raw"]) == ("mann_whitney", pytest.approx(
        stats.mannwhitneyu(_arm("l2", "loss_band_log"), big, method="exact").pvalue))


def test_diverged_runs_are_kept_as_the_worst_outcome(table):
    extra = table.attrs["extras"]["C2a"]  # noisy_bn seed 2 reached 90% before it diverged: not censored
    assert (extra["n_diverged_a"], extra["n_censored_a"]) == (1, 0)
    assert _row(table, "C2a")["n_a"] == 5
    c9 = _row(table, "C9")  # every noisy-standard run diverged: chance accuracy, the strongest evidence
    assert (c9["n_a"], c9["n_excluded"], c9["estimate"], c9["verdict"]) == (5, 0, 0.0, "supported")
    assert {"zero_variance", "diverged_runs"} <= set(c9["flags"].split(";"))
    c8 = _row(table, "C8")  # 5/5 BN vs 0/5 standard (3 diverged, counted as not reaching)
    assert (c8["n_b"], c8["test"], c8["alternative"], c8["estimate"]) == (5, "fisher_exact", "greater", 1.0)
    assert c8["p_raw"] == pytest.approx(1 / 252)  # one-sided exact: only the observed table is as extreme
    assert table.attrs["extras"]["C8"]["robust_p"] == pytest.approx(1 / 32)  # McNemar: 5 discordant pairs


def test_partial_grid_claims_are_not_run_yet_and_say_which_cells(table):
    r = _row(table, "C7_linf")
    assert r["verdict"] == "not_run_yet" and math.isnan(r["estimate"]) and math.isnan(r["p_raw"])
    assert table.attrs["extras"]["C7_linf"]["missing_cells"] == ["vgg-linf-lr0.1"]
    assert table.attrs["extras"]["C14_dln"]["missing_cells"] == ["dln-bn-lr1e-07", "dln-standard-lr1e-07"]
    assert "not_in_grid" not in r["flags"]
    md = " ".join(claims_md_text(table).split())  # the paragraphs are wrapped
    assert "no runs of vgg-linf-lr0.1 in runs.csv" in md and "dvc repro train@vgg-linf-lr0.1" in md
    # a not-run-yet claim still counts in its family's multiplicity (declared before the results existed)
    assert table.attrs["extras"]["C7_l1"]["family_size"] == 9


def test_holm_over_the_primary_family(table):
    primary = table[table.family == "primary"]
    assert len(primary) == 9 and set(primary["adj_method"]) == {"holm"}
    assert primary["p_adj"].to_numpy() == pytest.approx(holm(primary["p_raw"].to_numpy()), nan_ok=True)


def test_null_result_is_not_reproduced():
    runs = pd.DataFrame([_run("dln", v, 1e-6, s, train_loss_auc_log=2.0 + 0.01 * G[(s + k) % 5])
                         for k, v in enumerate(("bn", "standard")) for s in range(5)])
    r = evaluate_claims(runs, [c for c in CLAIMS if c.id == "C12_dln"], seed=0).iloc[0]
    assert r["verdict"] == "not_reproduced" and 0.9 < r["ci_low"] and r["ci_high"] < 1 / 0.9


def test_bootstrap_ci_of_prob_a_better_matches_the_exact_bootstrap_distribution():
    a, b = np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.6, 0.7])
    runs = pd.DataFrame([_run("vgg", v, 0.1, s, ics_cos=x) for v, xs in (("bn", a), ("standard", b))
                         for s, x in enumerate(xs)])
    evaluate = evaluate_claims(runs, [c for c in CLAIMS if c.id == "C6cos"], seed=0)
    extra = evaluate.attrs["extras"]["C6cos"]
    # all 27 x 27 equally likely resamples of the two arms: the exact bootstrap distribution of P(bn lower)
    values = [prob_a_better(np.array(x), np.array(y), "lower") for x in itertools.product(a, repeat=3)
              for y in itertools.product(b, repeat=3)]
    lo, hi = np.quantile(values, [0.025, 0.975])
    assert (extra["prob_a_better_ci_low"], extra["prob_a_better_ci_high"]) == pytest.approx((lo, hi), abs=0.03)


def test_row_order_of_runs_csv_never_changes_a_byte(tmp_path):
    runs = synthetic_runs()
    texts = []
    for order, frame in enumerate((runs, runs.sample(frac=1.0, random_state=7), runs.iloc[::-1])):
        df = evaluate_claims(frame.reset_index(drop=True), CLAIMS, seed=0)
        texts.append((claims_csv_text(df), str(claims_json_obj(df)), claims_md_text(df)))
    assert texts[0] == texts[1] == texts[2]


def test_runs_table_problems_raise_data_errors():
    runs = synthetic_runs()
    with pytest.raises(DataError, match="missing column.*step_budget"):
        evaluate_claims(runs.drop(columns="step_budget"), CLAIMS[:1], seed=0)
    with pytest.raises(DataError, match=r"run vgg-bn-lr0.1-s0 appears more than once"):
        evaluate_claims(pd.concat([runs, runs.iloc[[1]]]), CLAIMS[:1], seed=0)


# -------------------------------------------------------------------------------------------------------- outputs
def test_number_formatter():
    assert [format_number(x) for x in (0.123456, 123456.0, 1e-6, -0.0, np.nan, None, 7, math.inf)] == \
        ["0.1235", "1.235e+05", "1e-06", "0", "", "", "7", "inf"]
    assert format_cell("p_adj", 0.0123456) == "0.0123" and format_cell("n_b", np.nan) == ""


def test_sentences_say_why(table):
    extras = table.attrs["extras"]
    row = _row(table, "C10").copy()
    row["claim_id"] = "C10"
    c10 = claim_sentence(row, extras["C10"])
    assert "edge of stability" in c10 and "chance" not in c10
    row = _row(table, "C4").copy()
    row["claim_id"], row["verdict"], row["p_adj"] = "C4", "inconclusive", 0.08
    extra = dict(extras["C4"], reason="adjusted_p")
    text = claim_sentence(row, extra)
    assert "unadjusted 95% CI lies below 1, but the Holm-adjusted p is not below alpha 0.05" in text
    assert "all 9 claims of the primary family" in text


def _sentence(table, claim_id):
    """(row, claims.md paragraph) of one claim of an evaluated table."""
    row = _row(table, claim_id).copy()
    row["claim_id"] = claim_id
    return row, claim_sentence(row, table.attrs["extras"][claim_id])


def test_a_time_claim_with_every_run_censored_says_its_ratio_measures_the_budget(table):
    """C1_cpu at the reduced scale: no run of either arm reached 90%, so the ratio is 1 by construction."""
    assert "Every run of both arms is censored" not in _sentence(table, "C1")[1]  # 2 of 5
    runs = synthetic_runs()
    pick = (runs.model == "vgg") & (runs.lr == 0.1) & runs.variant.isin(["bn", "standard"])
    runs.loc[pick, "steps_to_acc90"], runs.loc[pick, "steps_to_acc90_censored"] = 15000, True
    row, text = _sentence(evaluate_claims(runs, [c for c in CLAIMS if c.id == "C1"], seed=0, grid=GRID), "C1")
    assert (row["estimate"], row["verdict"]) == (1.0, "not_reproduced")  # the registered rule, unchanged
    assert ("Every run of both arms is censored: none reached the threshold within 15000 steps, so the ratio is 1 by "
            "construction and measures the step budget, not the arms.") in text
    assert "no evidence that the effect is absent" in text


def test_a_reach_fraction_of_zero_in_both_arms_says_it_measures_the_budget(table):
    """C8_cpu at the reduced scale: no run of either arm reached 90% at lr 0.5, so the difference is 0 by construction."""
    assert "No run of either arm reached the threshold" not in _sentence(table, "C8")[1]  # 5/5
    runs = synthetic_runs()
    pick = (runs.model == "vgg") & (runs.lr == 0.5) & runs.variant.isin(["bn", "standard"])
    runs.loc[pick, "reached_acc90"] = False
    row, text = _sentence(evaluate_claims(runs, [c for c in CLAIMS if c.id == "C8"], seed=0, grid=GRID), "C8")
    assert (row["estimate"], row["verdict"]) == (0.0, "not_reproduced")  # the registered rule, unchanged
    assert ("No run of either arm reached the threshold (0 of 5, 0 of 5), so the difference is 0 by construction and "
            "measures the step budget, not the arms.") in text
    assert "no evidence that the effect is absent" in text


def test_claims_csv_matches_the_golden_file(table):
    text = claims_csv_text(table)
    if os.environ.get("BNFLOW_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
        pytest.skip(f"rewrote {GOLDEN}; review the diff before committing it")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_reruns_write_byte_identical_files(tmp_path):
    outputs = []
    for name in ("first", "second"):
        df = evaluate_claims(synthetic_runs(), CLAIMS, seed=0)
        folder = tmp_path / name
        write_claims_csv(df, folder / "claims.csv")
        write_claims_json(df, folder / "claims.json")
        write_claims_md(df, folder / "claims.md")
        assert sorted(p.name for p in folder.iterdir()) == ["claims.csv", "claims.json", "claims.md"]  # no temp files
        outputs.append([(folder / f).read_bytes() for f in ("claims.csv", "claims.json", "claims.md")])
    assert outputs[0] == outputs[1]
    assert outputs[0][2].decode().count("\n### ") == len(CLAIMS)

"""Tests for bnflow.stats: estimators against closed forms and second implementations, multiplicity against
textbook examples, verdict rules branch by branch, claim parsing errors, and the claims.csv golden file."""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from bnflow.errors import ConfigError, DataError
from bnflow.stats import (COLUMNS, ClaimSpec, decide_verdict, evaluate_claims, format_number,
                          parse_claims, write_claims_csv, write_claims_json, write_claims_md)
from bnflow.stats.claims import VERDICTS, claim_rng
from bnflow.stats.estimators import (bootstrap_ci, fisher_p, log_mean_ratio, newcombe_difference, one_sample,
                                     prob_a_better, rank_test, sign_flip_test, t_test, tost, welch_difference,
                                     wilson_interval)
from bnflow.stats.multiplicity import adjust, benjamini_hochberg, family_method, holm
from bnflow.stats.report import claims_csv_text, format_cell
from bnflow.config import read_yaml

DEFAULT_CLAIMS = [c for c in read_yaml(Path(__file__).resolve().parents[1] / "params.yaml")["claims"]
                  if c["family"] != "exploratory"]  # the registry itself (the paper claims)

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
    assert (res.ci_low, res.ci_high) == pytest.approx((lo, hi), rel=1e-12)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.9)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_one_sided_test_against_a_margin_is_the_shifted_t():
    est, se, df, _ = _welch_by_hand(A, B, 0.95)
    c = welch_difference(A, B)
    margin = -1.0
    assert t_test(c, null=margin, alternative="greater").p_value == pytest.approx(stats.t.sf((est - margin) / se, df))
    assert t_test(c, null=margin, alternative="less").p_value == pytest.approx(stats.t.cdf((est - margin) / se, df))
    assert stats.ttest_ind(A - margin, B, equal_var=False, alternative="less").pvalue == pytest.approx(
        t_test(c, null=margin, alternative="less").p_value)


def test_tost_is_the_larger_of_two_one_sided_p_values():
    est, se, df, _ = _welch_by_hand(A, B, 0.95)
    for low, high in [(-6.0, 6.0), (-4.0, 1.0), (-10.0, -2.0)]:
        p_low = stats.t.sf((est - low) / se, df)
        p_high = stats.t.cdf((est - high) / se, df)
        stat, p = tost(welch_difference(A, B), low, high)
        assert p == pytest.approx(max(p_low, p_high), rel=1e-12)
        binding = low if p_low >= p_high else high
        assert stat == pytest.approx((est - binding) / se)


def test_log_mean_ratio_is_the_delta_method_welch_on_restricted_means():
    a, b = np.array([2.0, 4.0, 6.0]), np.array([10.0, 10.0, 7.0, 13.0])
    c = log_mean_ratio(a, b)
    va, vb = np.var(a, ddof=1) / (3 * 4.0**2), np.var(b, ddof=1) / (4 * 10.0**2)
    assert c.estimate == pytest.approx(math.log(4.0 / 10.0))
    assert c.se == pytest.approx(math.sqrt(va + vb))
    assert c.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 3))


def test_one_sample_matches_scipy_and_untestable_cases_give_nan():
    x = np.array([0.11, 0.09, 0.13, 0.12])
    res = t_test(one_sample(x, 0.1), null=0.05, alternative="less")
    assert res.p_value == pytest.approx(stats.ttest_1samp(x, 0.15, alternative="less").pvalue)
    assert math.isnan(t_test(welch_difference([1.0], [2.0, 3.0])).p_value)  # n = 1: no variance
    assert math.isnan(t_test(welch_difference([2.0, 2.0], [3.0, 3.0])).p_value)  # se = 0


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
        x = pooled[list(idx)]
        y = np.delete(pooled, list(idx))
        return sum((xi > yi) + 0.5 * (xi == yi) for xi in x for yi in y)

    observed = u((0, 1, 2))
    null = [u(idx) for idx in itertools.combinations(range(6), 3)]
    expected = np.mean([v <= observed + 1e-12 for v in null])
    assert rank_test(a, b, alternative="less", rng=np.random.default_rng(0)) == pytest.approx(expected)


def test_sign_flip_test_enumerates_signs():
    # Only the all-positive sign pattern reaches the observed mean of [1, 2, 3]: p = 1/8.
    assert sign_flip_test([1.0, 2.0, 3.0], alternative="greater", rng=np.random.default_rng(0)) == pytest.approx(1 / 8)


def test_prob_a_better_counts_pairs_with_half_ties():
    a, b = np.array([1.0, 2.0]), np.array([2.0, 3.0, 4.0])
    # lower is better: 1 beats 2, 3, 4; 2 ties 2 and beats 3, 4 -> 5.5 of 6 pairs
    assert prob_a_better(a, b, "lower") == pytest.approx(5.5 / 6)
    assert prob_a_better(a, b, "higher") == pytest.approx(0.5 / 6)
    u = stats.mannwhitneyu(b, a, method="exact").statistic
    assert prob_a_better(a, b, "lower") == pytest.approx(u / 6)


def test_bootstrap_is_seeded_and_covers_the_resampling_range():
    def mean(x):
        return x.mean(axis=-1)

    data = [np.array([0.0, 1.0, 5.0])]
    # Each extreme resample (all 0, all 5) has probability 1/27 > 2.5%: the percentile CI is exactly (0, 5).
    assert bootstrap_ci(data, mean, rng=np.random.default_rng(3), n_resamples=4000) == (0.0, 5.0)
    assert bootstrap_ci([np.full(4, 2.5)], mean, rng=np.random.default_rng(3)) == (2.5, 2.5)
    cont = [np.array([0.3, 1.7, 2.2, 4.1, 5.0, 5.5])]
    first = bootstrap_ci(cont, mean, rng=np.random.default_rng(7), ci_level=0.5)
    assert first == bootstrap_ci(cont, mean, rng=np.random.default_rng(7), ci_level=0.5)
    assert first != bootstrap_ci(cont, mean, rng=np.random.default_rng(8), ci_level=0.5)


def test_claim_rng_depends_on_seed_and_id_not_on_python_hash():
    draw = claim_rng(0, "C1", 2)[1].random()
    assert draw == claim_rng(0, "C1", 2)[1].random()
    assert draw != claim_rng(0, "C2", 2)[1].random() and draw != claim_rng(1, "C1", 2)[1].random()
    code = "from bnflow.stats.claims import VERDICTS, claim_rng; print(repr(claim_rng(0, 'C1', 2)[1].random()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert float(out) == draw


def test_proportions_match_newcombe_1998_and_fisher_by_hand():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.8415 / 13.8415), abs=1e-4)  # z²/(n + z²)
    est, lo, hi = newcombe_difference(56, 70, 48, 80)  # Newcombe (1998), example (a), method 10
    assert (est, round(lo, 4), round(hi, 4)) == (pytest.approx(0.2), 0.0524, 0.3339)
    assert fisher_p(5, 5, 0, 5) == pytest.approx(2 / 252)  # two of the C(10, 5) tables are as extreme


# ---------------------------------------------------------------------------------------------------- multiplicity
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
           0.6528, 0.7590, 1.000]


def test_holm_by_hand_and_on_benjamini_hochberg_1995():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Benjamini & Hochberg (1995), section 4: Bonferroni-type procedures reject 3 of the 15 hypotheses at 0.05 ...
    assert int((holm(BH_1995) < 0.05).sum()) == 3


def test_benjamini_hochberg_on_the_1995_example_and_against_scipy():
    # ... and the FDR procedure rejects 4.
    adjusted = benjamini_hochberg(BH_1995)
    assert int((adjusted <= 0.05).sum()) == 4
    assert adjusted == pytest.approx(stats.false_discovery_control(BH_1995))
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_missing_p_values_count_in_the_family_and_stay_missing():
    out = holm([0.01, np.nan, 0.02])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.03, 0.04])
    assert adjust([0.2, np.nan], "none")[0] == 0.2
    assert [family_method(f) for f in ("primary", "secondary_lp", "exploratory")] == ["holm", "bh", "none"]


# --------------------------------------------------------------------------------------------------------- verdict
L125, L08 = math.log(1.25), math.log(0.8)


@pytest.mark.parametrize("claim_type, direction, p_adj, lo, hi, margin, expected", [
    ("superiority", "lower", 0.01, -2.0, -1.0, None, "supported"),
    ("superiority", "lower", 0.01, 1.0, 2.0, None, "contradicted"),
    ("superiority", "lower", 0.30, -1.0, 1.0, None, "inconclusive"),
    ("superiority", "lower", 0.06, -2.0, -0.1, None, "inconclusive"),  # CI excludes 0 but adjusted p does not pass
    ("superiority", "higher", 0.01, 1.0, 2.0, None, "supported"),
    ("superiority", "higher", 0.01, -2.0, -1.0, None, "contradicted"),
    ("superiority", "higher", np.nan, np.nan, np.nan, None, "inconclusive"),
    ("non_inferiority", "lower", 0.01, -0.1, 0.1, L125, "supported"),
    ("non_inferiority", "lower", 0.30, -0.1, 0.1, L125, "inconclusive"),  # p > 0.05 never supports
    ("non_inferiority", "lower", 0.30, -0.3, 0.5, L125, "inconclusive"),  # "no significant difference" is not support
    ("non_inferiority", "lower", 0.01, 0.3, 0.5, L125, "contradicted"),
    ("non_inferiority", "higher", 0.01, -0.1, 0.3, L08, "supported"),
    ("non_inferiority", "higher", 0.20, -0.1, 0.3, L08, "inconclusive"),
    ("non_inferiority", "higher", 0.01, -0.5, -0.3, L08, "contradicted"),
    ("equivalence", "lower", 0.01, -0.1, 0.1, 0.2, "supported"),
    ("equivalence", "lower", 0.01, -0.1, 0.25, 0.2, "inconclusive"),
    ("equivalence", "lower", 0.20, -0.1, 0.1, 0.2, "inconclusive"),
    ("equivalence", "higher", 0.01, 0.3, 0.5, 0.2, "contradicted"),
])
def test_verdict_rules(claim_type, direction, p_adj, lo, hi, margin, expected):
    assert decide_verdict(claim_type, direction, p_adj=p_adj, ci_low=lo, ci_high=hi, alpha=0.05,
                          margin=margin) == expected


# -------------------------------------------------------------------------------------------------- parse_claims
def _entry(**changes):
    entry = dict(DEFAULT_CLAIMS[2])  # C2_auc: non-inferiority on the difference scale
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def test_default_claims_parse_and_survive_yaml():
    specs = parse_claims(DEFAULT_CLAIMS)
    assert parse_claims(yaml.safe_load(yaml.safe_dump(DEFAULT_CLAIMS))) == specs
    ids = {s.id for s in specs}
    assert {"C1", "C2_steps", "C2_auc", "C7_l1", "C7_l2", "C7_linf", "C8", "C9", "C3_dln", "C6_dln"} <= ids
    assert {s.id for s in specs if s.family == "primary"} == {"C1", "C2_steps", "C2_auc", "C3", "C4", "C5", "C6"}
    assert {s.lr for s in specs if s.model == "dln"} == {1e-6} and [s.lr for s in specs if s.id == "C8"] == [0.5]


@pytest.mark.parametrize("raw, message", [
    ({"margin": 0.0, "metric": "ics_rel_log", "direction": "higher", "scale": "ratio"},
     "claims[1].margin: must be > 0"),
    ({"margin": 0.01}, "claims[1].margin: must be < 0 for a non-inferiority claim where higher is better"),
    ({"margin": None}, "claims[1].margin: a non_inferiority claim needs a margin"),
    ({"type": "superiority"}, "claims[1].margin: a superiority claim takes no margin"),
    ({"metric": "accuracy"}, "claims[1].metric: unknown value 'accuracy'"),
    ({"arm_a": "gn"}, "claims[1].arm_a: unknown value 'gn'"),
    ({"type": "better"}, "claims[1].type: unknown value 'better'"),
    ({"family": "secondary"}, "claims[1].family: unknown value 'secondary'"),
    ({"id": "C1"}, "claims[1].id: duplicate id 'C1' (also claims[0])"),
    ({"colour": "red"}, "claims[1]: unknown key(s) colour"),
    ({"lr": "1e-6"}, "claims[1].lr: must be a number, got str '1e-6' (YAML reads 1e-6 as text"),
    ({"scale": "ratio"}, "claims[1].scale: 'train_acc_auc' is compared on the 'difference' scale"),
    ({"model": "dln"}, "claims[1].metric: 'train_acc_auc' is not measured for model 'dln'"),
    ({"arm_b": "chance"}, "claims[1].reference: give a reference value exactly when arm_b is 'chance'"),
    ({"alpha": 0.9}, "claims[1].alpha: must be in (0, 0.5]"),
])
def test_parse_claims_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_claims([DEFAULT_CLAIMS[0], _entry(**raw)])


def test_parse_claims_rejects_missing_keys_and_non_lists():
    entry = _entry()
    del entry["direction"]
    with pytest.raises(ConfigError, match=re.escape("claims[0].direction: missing")):
        parse_claims([entry])
    with pytest.raises(ConfigError, match="claims: must be a non-empty list"):
        parse_claims({"C1": DEFAULT_CLAIMS[0]})


# ------------------------------------------------------------------------------------------------------ evaluation
F = np.array([0.94, 1.0, 1.07, 0.97, 1.03])  # per-seed factors: fixed, no RNG, so the golden file is stable
G = np.array([-1.0, 0.3, 1.0, -0.5, 0.2])


def _run(model, variant, lr, seed, **metrics):
    row = dict(model=model, variant=variant, lr=lr, seed=seed, diverged=False, n_steps=15000, step_budget=15000,
               steps_to_acc90=np.nan, steps_to_acc90_censored=False)
    row.update(metrics)
    return row


def synthetic_runs() -> pd.DataFrame:
    """A small fixed runs table exercising every claim kind: censoring, divergence, a small arm, a missing arm."""
    rows = []
    std_steps = [9000, 11000, 15000, 10000, np.nan]  # seed 2 censored, seed 4 diverged before 90%
    for s in range(5):
        rows.append(_run("vgg", "standard", 0.1, s, steps_to_acc90=std_steps[s], steps_to_acc90_censored=s == 2,
                         diverged=s == 4, train_acc_auc=0.6 + 0.01 * G[s], loss_range_log=1.5 + 0.15 * G[s],
                         grad_change_log=0.25 + 0.2 * G[s], beta_smooth_log=np.nan if s == 4 else 2.0 + 0.1 * G[s],
                         ics_rel_log=-1.0 + 0.1 * G[s]))
        rows.append(_run("vgg", "bn", 0.1, s, steps_to_acc90=4000 * F[s], train_acc_auc=0.7 + 0.01 * G[s],
                         loss_range_log=0.5 + 0.1 * G[::-1][s], grad_change_log=0.2 + 0.2 * G[::-1][s],
                         beta_smooth_log=1.0 + 0.1 * G[::-1][s], ics_rel_log=-0.95 + 0.1 * G[::-1][s]))
        rows.append(_run("vgg", "noisy_bn", 0.1, s, steps_to_acc90=4400 * F[::-1][s],
                         train_acc_auc=0.69 + 0.01 * G[::-1][s]))
        rows.append(_run("vgg", "l1", 0.1, s, steps_to_acc90=5000 * F[(s + 2) % 5]))
        if s < 3:
            rows.append(_run("vgg", "l2", 0.1, s, steps_to_acc90=5200 * F[s]))
        rows.append(_run("vgg", "noisy_standard", 0.1, s, final_train_acc=0.102 + 0.004 * G[s]))
        rows.append(_run("vgg", "bn", 0.5, s, reached_acc90=True))
        rows.append(_run("vgg", "standard", 0.5, s, diverged=s < 3, reached_acc90=np.nan if s < 3 else False))
        for variant, shift in (("bn", -2.0), ("standard", 0.0)):
            rows.append(_run("dln", variant, 1e-6, s, loss_range_log=shift + 0.2 * G[s],
                             grad_change_log=shift / 50 + 0.1 * G[(s + 1) % 5], beta_smooth_log=shift / 4 + 0.3 * G[s],
                             ics_rel_log=shift + 0.1 * G[(s + 3) % 5]))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return evaluate_claims(synthetic_runs(), parse_claims(DEFAULT_CLAIMS), seed=0)


def _row(table, claim_id):
    return table.set_index("claim_id").loc[claim_id]


def test_table_has_exactly_the_specified_columns_sorted_by_id(table):
    assert tuple(table.columns) == COLUMNS
    assert list(table["claim_id"]) == sorted(table["claim_id"])
    assert set(table["verdict"]) == set(VERDICTS)


def test_censored_and_diverged_times_use_the_restricted_mean(table):
    r = _row(table, "C1")
    capped_std = np.array([9000, 11000, 15000, 10000, 15000.0])  # the diverged run is censored at the budget
    assert (r["n_a"], r["n_b"], r["n_excluded"]) == (5, 5, 0)
    assert r["estimate"] == pytest.approx(np.mean(4000 * F) / capped_std.mean())
    extra = table.attrs["extras"]["C1"]
    assert (extra["n_censored_b"], extra["restriction_steps"]) == (2, 15000.0)
    assert "censoring>50%" not in r["flags"]


def test_censoring_flag_above_half():
    runs = pd.DataFrame([_run("vgg", v, 0.1, s, steps_to_acc90=15000 if (v == "standard" and s < 3) else 5000 + s,
                              steps_to_acc90_censored=v == "standard" and s < 3)
                         for v in ("bn", "standard") for s in range(5)])
    r = evaluate_claims(runs, parse_claims(DEFAULT_CLAIMS[:1]), seed=0).iloc[0]
    assert "censoring>50%" in r["flags"].split(";")


def test_diverged_runs_are_excluded_counted_and_flagged_for_landscape_metrics(table):
    r = _row(table, "C5")
    assert (r["n_a"], r["n_b"], r["n_excluded"]) == (5, 4, 1)
    assert "diverged_excluded" in r["flags"].split(";") and "small_n" in r["flags"].split(";")


def test_welch_claim_matches_scipy_and_holm_runs_over_the_primary_family(table):
    runs = synthetic_runs()
    pick = runs[(runs.model == "vgg") & (runs.lr == 0.1)]
    a = pick[pick.variant == "bn"]["loss_range_log"]
    b = pick[pick.variant == "standard"]["loss_range_log"]
    r = _row(table, "C3")
    assert r["p_raw"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert r["estimate"] == pytest.approx(math.exp(a.mean() - b.mean()))
    primary = table[table.family == "primary"]
    assert primary["p_adj"].to_numpy() == pytest.approx(holm(primary["p_raw"].to_numpy()))
    assert set(primary["adj_method"]) == {"holm"}


def test_missing_arm_gives_an_empty_estimate_and_inconclusive(table):
    r = _row(table, "C7_linf")
    assert r["verdict"] == "inconclusive" and r["flags"] == "missing_arm" and math.isnan(r["estimate"])
    assert format_cell("estimate", r["estimate"]) == ""
    assert _row(table, "C7_l2")["flags"].split(";").count("small_n") == 1


def test_proportion_claim_counts_diverged_runs_as_not_reaching(table):
    r = _row(table, "C8")
    assert (r["n_b"], r["n_excluded"], r["test"], r["estimate"]) == (5, 0, "fisher_exact", 1.0)
    assert r["p_raw"] == pytest.approx(2 / 252)


def test_chance_claim_is_a_one_sample_test_against_reference_plus_margin(table):
    x = 0.102 + 0.004 * G
    r = _row(table, "C9")
    assert r["p_raw"] == pytest.approx(stats.ttest_1samp(x, 0.1 + 0.05, alternative="less").pvalue)
    assert (r["estimate"], r["verdict"]) == (pytest.approx(0.002), "supported")
    assert table.attrs["extras"]["C9"]["robust_test"] == "sign_flip_mean"


def _two_arm_runs(metric, a_values, b_values):
    return pd.DataFrame([_run("vgg", v, 0.1, s, **{metric: x}) for v, xs in (("bn", a_values), ("standard", b_values))
                         for s, x in enumerate(xs)])


EQUIVALENCE = dict(id="E1", family="exploratory", hypothesis="BN leaves the ICS cosine unchanged", metric="ics_cos",
                   model="vgg", arm_a="bn", arm_b="standard", lr=0.1, type="equivalence", direction="higher",
                   margin=0.05)


def test_equivalence_claim_runs_tost_unadjusted():
    a, b = 0.5 + 0.01 * G, 0.49 + 0.01 * G[::-1]
    r = evaluate_claims(_two_arm_runs("ics_cos", a, b), parse_claims([EQUIVALENCE]), seed=0).iloc[0]
    est, se, df, (lo, hi) = _welch_by_hand(a, b, 0.95)
    expected = max(stats.t.sf((est + 0.05) / se, df), stats.t.cdf((est - 0.05) / se, df))
    assert (r["p_raw"], r["p_adj"], r["ci_low"], r["ci_high"]) == pytest.approx((expected, expected, lo, hi))
    assert (r["alternative"], r["adj_method"], r["verdict"]) == ("tost", "none", "supported")


def test_identical_runs_give_zero_variance_and_no_verdict():
    r = evaluate_claims(_two_arm_runs("ics_cos", [0.5] * 5, [0.5] * 5), parse_claims([EQUIVALENCE]), seed=0).iloc[0]
    assert r["verdict"] == "inconclusive" and "zero_variance" in r["flags"].split(";")
    assert r["estimate"] == 0 and math.isnan(r["p_raw"]) and r["prob_a_better"] == 0.5


def test_runs_table_problems_raise_data_errors():
    runs = synthetic_runs()
    with pytest.raises(DataError, match="missing column.*step_budget"):
        evaluate_claims(runs.drop(columns="step_budget"), parse_claims(DEFAULT_CLAIMS[:1]), seed=0)
    with pytest.raises(DataError, match=r"run vgg-bn-lr0.1-s0 appears more than once"):
        evaluate_claims(pd.concat([runs, runs.iloc[[1]]]), parse_claims(DEFAULT_CLAIMS[:1]), seed=0)


# -------------------------------------------------------------------------------------------------------- outputs
def test_number_formatter():
    assert [format_number(x) for x in (0.123456, 123456.0, 1e-6, -0.0, np.nan, None, 7)] == \
        ["0.1235", "1.235e+05", "1e-06", "0", "", "", "7"]
    assert format_cell("p_adj", 0.0123456) == "0.0123" and format_cell("n_b", np.nan) == ""


def test_claims_csv_matches_the_golden_file(table):
    text = claims_csv_text(table)
    if os.environ.get("BNFLOW_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
        pytest.skip(f"rewrote {GOLDEN}; review the diff before committing it")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_reruns_write_byte_identical_files(tmp_path):
    outputs = []
    for name in ("first", "second"):
        df = evaluate_claims(synthetic_runs(), parse_claims(DEFAULT_CLAIMS), seed=0)
        folder = tmp_path / name
        write_claims_csv(df, folder / "claims.csv")
        write_claims_json(df, folder / "claims.json")
        write_claims_md(df, folder / "claims.md")
        assert sorted(p.name for p in folder.iterdir()) == ["claims.csv", "claims.json", "claims.md"]  # no temp files
        outputs.append([(folder / f).read_bytes() for f in ("claims.csv", "claims.json", "claims.md")])
    assert outputs[0] == outputs[1]
    md = outputs[0][2].decode()
    assert md.count("\n- **") == len(DEFAULT_CLAIMS) and "C7_linf" in md


def test_claimspec_is_frozen():
    spec = parse_claims(DEFAULT_CLAIMS[:1])[0]
    assert isinstance(spec, ClaimSpec)
    with pytest.raises(AttributeError):
        spec.alpha = 0.1

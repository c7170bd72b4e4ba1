"""The claims registry's rules on small hand-made runs tables, each test aimed at one rule that only the golden file
used to guard (STATS.md "Registry v3 additions"): BH within each secondary family and not across them, the verdict
read from the adjusted p, the sesoi on the test's (log) scale, not_reproduced before contradicted, per-claim seeds
(and a partial seed set that never shrinks n), post hoc claims, the robustness floor, and the outputs that diff well.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnflow.config import parse_claims, read_yaml
from bnflow.stats import evaluate_claims
from bnflow.stats.multiplicity import benjamini_hochberg, family_method
from bnflow.stats.sentences import claim_sentence
from bnflow.stats.write import VERDICT_CODES, claims_md_text, claims_metrics_obj, write_claims_metrics
from bnflow.vocab import CLAIM_VERDICTS, FAMILY_METHODS
from conftest import ROOT

CLAIMS = {c.id: c for c in parse_claims(read_yaml(ROOT / "params.yaml")["claims"])}
G = np.array([-1.0, 0.3, 1.0, -0.5, 0.2])  # mean 0, sample sd 0.7714: a per-seed spread with a hand-computable t
EARLY = ("band_peak_early_log", "grad_change_peak_early_log", "beta_peak_early_log")


def runs_table(model: str, lr: float, seeds, values: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """One row per (variant, seed): values[variant][metric] holds one value per seed."""
    rows = []
    for variant, metrics in values.items():
        for k, s in enumerate(seeds):
            rows.append(dict(model=model, variant=variant, lr=lr, seed=s, diverged=False, step_budget=1000)
                        | {m: float(v[k]) for m, v in metrics.items()})
    return pd.DataFrame(rows)


def paired(model: str, lr: float, seeds, diffs: dict[str, np.ndarray], base: float = 3.0) -> pd.DataFrame:
    """bn and standard arms whose per-seed log differences bn − standard are exactly `diffs[metric]`."""
    standard = {m: base + 0.1 * np.resize(G, len(seeds)) for m in diffs}
    return runs_table(model, lr, seeds, {"standard": standard, "bn": {m: standard[m] + d for m, d in diffs.items()}})


def row_of(table: pd.DataFrame, claim_id: str) -> pd.Series:
    return table.set_index("claim_id").loc[claim_id]


# -------------------------------------------------------------------------------------------------- multiplicity
def test_bh_is_applied_within_each_secondary_family_and_not_across_them():
    """Two secondary families side by side: each one's p_adj is BH over its own claims only."""
    lp = {c: CLAIMS[c] for c in ("C7band_l1", "C7band_l2", "C7band_linf")}  # secondary_lp, loss_band_log, vgg
    dln = {c: CLAIMS[c] for c in ("C3_dln", "C4_dln", "C5_dln")}  # secondary_dln
    vgg = runs_table("vgg", 0.1, range(5), {
        "standard": {"loss_band_log": 1.0 + 0.1 * G},
        "l1": {"loss_band_log": 1.0 + 0.1 * G - 0.06 + 0.05 * G[::-1]},
        "l2": {"loss_band_log": 1.0 + 0.1 * G - 0.04 + 0.05 * G[::-1]},
        "linf": {"loss_band_log": 1.0 + 0.1 * G - 0.3 + 0.05 * G[::-1]}})
    dl = paired("dln", 1e-6, range(5), {"loss_band_log": -0.05 + 0.05 * G, "grad_change_log": -0.2 + 0.05 * G,
                                        "beta_q90_log": 0.01 + 0.05 * G})
    table = evaluate_claims(pd.concat([vgg, dl], ignore_index=True), [*lp.values(), *dln.values()], seed=0)
    for family, ids in (("secondary_lp", list(lp)), ("secondary_dln", list(dln))):
        part = table.set_index("claim_id").loc[ids]
        assert set(part["adj_method"]) == {"bh"} and set(part["family"]) == {family}
        assert part["p_adj"].to_numpy() == pytest.approx(benjamini_hochberg(part["p_raw"].to_numpy()))
        assert not np.allclose(part["p_adj"], part["p_raw"])  # BH changed something: it is not switched off
    across = benjamini_hochberg(table["p_raw"].to_numpy())
    assert not np.allclose(table["p_adj"].to_numpy(), across)  # one BH over both families would differ


def test_the_family_method_table_covers_every_family():
    assert {family_method(f) for f in FAMILY_METHODS} == {"holm", "bh", "none"}
    assert [family_method(f) for f in ("primary_cpu", "secondary_noisy_cpu", "secondary_lp_cpu",
                                       "secondary_lr_cpu", "early_cpu", "exploratory_cpu")] == \
        ["holm", "bh", "bh", "bh", "holm", "none"]
    assert [family_method(f) for f in ("dln_early", "early", "post_hoc")] == ["holm", "holm", "none"]
    with pytest.raises(ValueError, match="unknown claims family 'secondary'"):
        family_method("secondary")


def test_the_verdict_reads_the_adjusted_p_not_the_raw_one():
    """C3e's per-seed log ratios -0.5 + 0.45 G: t = -0.5 / (0.45 · 0.7714 / √5) = -3.22, p ≈ 0.032 < 0.05; Holm
    over the early family's three claims (the others at p = 1) makes it 3p ≈ 0.097: inconclusive, not supported."""
    runs = paired("vgg", 0.1, range(5), {EARLY[0]: -0.5 + 0.45 * G, EARLY[1]: 0.1 * G, EARLY[2]: 0.1 * G})
    table = evaluate_claims(runs, [CLAIMS["C3e"], CLAIMS["C4e"], CLAIMS["C5e"]], seed=0)
    r = row_of(table, "C3e")
    expected = stats.ttest_1samp(-0.5 + 0.45 * G, 0.0).pvalue
    assert r["p_raw"] == pytest.approx(expected) and r["p_raw"] < 0.05
    assert r["p_adj"] == pytest.approx(3 * expected) and r["adj_method"] == "holm"
    assert r["ci_high"] < 1  # the unadjusted CI lies on the claimed side: only p_adj stops it
    assert r["verdict"] == "inconclusive" and table.attrs["extras"]["C3e"]["reason"] == "adjusted_p"


# ------------------------------------------------------------------------------------------------------ verdicts
@pytest.mark.parametrize("claim_id, half_width, expected", [
    ("C12_dln", 0.3, "inconclusive"),  # sesoi 0.9: band ±|log 0.9| = ±0.105; a CI of ±0.3 reaches beyond it
    ("C12_dln", 0.09, "not_reproduced"),
    ("C12_dln_sesoi05", 0.6, "not_reproduced"),  # sesoi 0.5: band ±0.693; ±0.6 lies inside it
])
def test_the_sesoi_band_is_on_the_log_scale_for_ratio_claims(claim_id, half_width, expected):
    """A mean-zero CI of half-width h (per-seed log ratios k·G, h = t_0.975,4 · k · 0.7714/√5) against the band."""
    claim = CLAIMS["C12_dln"]
    if claim_id.endswith("sesoi05"):
        claim = dataclasses.replace(claim, sesoi=0.5)
    k = half_width / (stats.t.ppf(0.975, 4) * np.std(G, ddof=1) / math.sqrt(5))
    runs = paired("dln", 1e-6, range(5), {"train_loss_auc_log": k * G})
    r = evaluate_claims(runs, [claim], seed=0).iloc[0]
    assert (math.log(r["ci_low"]), math.log(r["ci_high"])) == pytest.approx((-half_width, half_width))
    assert r["verdict"] == expected


def test_not_reproduced_takes_precedence_over_contradicted():
    """Per-seed log ratios 0.05 + 0.01 G: the CI (≈ 0.04, 0.06) lies above 0 (standard better) and inside ±0.105."""
    runs = paired("dln", 1e-6, range(5), {"train_loss_auc_log": 0.05 + 0.01 * G})
    table = evaluate_claims(runs, [CLAIMS["C12_dln"]], seed=0)
    r = table.iloc[0]
    assert 1 < r["ci_low"] and r["ci_high"] < 1 / 0.9
    assert r["verdict"] == "not_reproduced" and "opposite_side" in r["flags"].split(";")
    assert "other side of 1" in claim_sentence(r, table.attrs["extras"]["C12_dln"])
    # beyond the band on the wrong side it is a contradiction
    far = evaluate_claims(paired("dln", 1e-6, range(5), {"train_loss_auc_log": 0.5 + 0.01 * G}),
                          [CLAIMS["C12_dln"]], seed=0).iloc[0]
    assert far["verdict"] == "contradicted" and "opposite_side" not in far["flags"]


# --------------------------------------------------------------------------------------------------------- seeds
def dln_20_seeds(early_effect: float = -1.0, posthoc_effect: float = -3.0) -> pd.DataFrame:
    """DLN bn vs standard, seeds 0-19: log ratios `posthoc_effect` on seeds 0-4, `early_effect` on 5-19."""
    spread = np.resize(G, 20) * 0.2
    d = np.where(np.arange(20) < 5, posthoc_effect, early_effect) + spread
    return paired("dln", 1e-6, range(20), {m: d for m in EARLY})


DLN_EARLY = ("C3e_dln", "C4e_dln", "C5e_dln", "C3e_dln_posthoc", "C4e_dln_posthoc", "C5e_dln_posthoc")


def test_a_claim_uses_only_its_seeds():
    table = evaluate_claims(dln_20_seeds(), [CLAIMS[c] for c in DLN_EARLY], seed=0)
    confirm, look = row_of(table, "C3e_dln"), row_of(table, "C3e_dln_posthoc")
    assert (confirm["n_a"], confirm["n_b"], look["n_a"], look["n_b"]) == (15, 15, 5, 5)
    d = -1.0 + np.resize(G, 20)[5:] * 0.2  # seeds 5-19 only: the estimate never sees seeds 0-4's -3
    assert confirm["estimate"] == pytest.approx(math.exp(d.mean()))
    assert confirm["p_raw"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert look["estimate"] == pytest.approx(math.exp(-3.0 + (G * 0.2).mean()))
    assert "seeds 5–19" in " ".join(claims_md_text(table).split())
    assert table.attrs["extras"]["C3e_dln"]["seeds"] == [5, 19]


def test_a_partial_seed_set_is_not_run_yet_never_a_smaller_n():
    runs = dln_20_seeds()
    runs = runs[~((runs.variant == "bn") & (runs.seed == 12))].reset_index(drop=True)
    table = evaluate_claims(runs, [CLAIMS[c] for c in DLN_EARLY], seed=0)
    r = row_of(table, "C3e_dln")
    assert r["verdict"] == "not_run_yet" and math.isnan(r["p_raw"]) and "seeds_missing" in r["flags"]
    assert table.attrs["extras"]["C3e_dln"]["missing_seeds"] == {"dln-bn-lr1e-06": [12]}
    md = " ".join(claims_md_text(table).split())
    assert "dln-bn-lr1e-06 lacks seed(s) 12" in md
    assert row_of(table, "C3e_dln_posthoc")["n_a"] == 5  # seeds 0-4 are all there: evaluated
    # only seeds 0-4 run (the committed DLN half): the fresh-seed claims wait for all of 5-19
    half = evaluate_claims(dln_20_seeds()[lambda t: t.seed < 5], [CLAIMS["C3e_dln"]], seed=0)
    assert half.iloc[0]["verdict"] == "not_run_yet" and half.attrs["extras"]["C3e_dln"]["missing_seeds"] == {
        "dln-bn-lr1e-06": list(range(5, 20)), "dln-standard-lr1e-06": list(range(5, 20))}


def test_post_hoc_claims_are_never_supported_nor_adjusted():
    table = evaluate_claims(dln_20_seeds(), [CLAIMS[c] for c in DLN_EARLY], seed=0)
    for cid in DLN_EARLY[3:]:
        r = row_of(table, cid)
        assert r["p_raw"] < 1e-4 and r["ci_high"] < 0.5  # by the rules alone it would be supported
        assert (r["verdict"], r["adj_method"], r["p_adj"]) == ("post_hoc", "none", r["p_raw"])
    row = row_of(table, "C3e_dln_posthoc").copy()
    row["claim_id"] = "C3e_dln_posthoc"
    text = claim_sentence(row, table.attrs["extras"]["C3e_dln_posthoc"])
    assert "generated by the look at seeds 0–4" in text and "never supported" in text and "C3e_dln" in text
    confirm = row_of(table, "C3e_dln")
    assert confirm["verdict"] == "supported" and confirm["adj_method"] == "holm"
    assert "p_adj" in claims_md_text(table) and "(Holm over dln_early, 3 claims)" in claims_md_text(table)
    assert "(not adjusted: post hoc)" in claims_md_text(table)


def test_robustness_floor_is_flagged_and_said_at_n_5_only():
    table = evaluate_claims(dln_20_seeds(), [CLAIMS[c] for c in DLN_EARLY], seed=0)
    five, fifteen = row_of(table, "C3e_dln_posthoc"), row_of(table, "C3e_dln")
    assert table.attrs["extras"]["C3e_dln_posthoc"]["robust_min_p"] == pytest.approx(0.0625)
    assert "robustness_floor" in five["flags"] and "robustness_floor" not in fifteen["flags"]
    row = five.copy()
    row["claim_id"] = "C3e_dln_posthoc"
    assert "cannot reach alpha 0.05 at this n (its smallest possible p is 0.0625)" in claim_sentence(
        row, table.attrs["extras"]["C3e_dln_posthoc"])


# ------------------------------------------------------------------------------------------------------- outputs
def test_claims_metrics_holds_numbers_only_and_a_code_per_verdict(tmp_path):
    assert set(VERDICT_CODES) == set(CLAIM_VERDICTS) and len(set(VERDICT_CODES.values())) == len(VERDICT_CODES)
    table = evaluate_claims(dln_20_seeds()[lambda t: t.seed < 5], [CLAIMS[c] for c in DLN_EARLY], seed=0)
    obj = claims_metrics_obj(table)
    assert obj["C3e_dln"] == {"verdict": VERDICT_CODES["not_run_yet"]}  # no nulls to churn
    r = row_of(table, "C3e_dln_posthoc")
    assert obj["C3e_dln_posthoc"] == {"verdict": 5, "estimate": float(f"{r['estimate']:.4g}"),
                                      "ci_low": float(f"{r['ci_low']:.4g}"), "ci_high": float(f"{r['ci_high']:.4g}"),
                                      "p_adj": float(f"{r['p_adj']:.3g}")}
    write_claims_metrics(table, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == obj


def test_claims_md_changes_one_short_line_when_one_number_changes():
    table = evaluate_claims(dln_20_seeds(), [CLAIMS[c] for c in DLN_EARLY], seed=0)
    before = claims_md_text(table).splitlines()
    changed = table.copy()
    changed.attrs = table.attrs
    changed.loc[changed.claim_id == "C3e_dln", "estimate"] *= 1.01
    after = claims_md_text(changed).splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1
    assert all(len(line) <= 120 for line in before if not line.startswith("- hypothesis"))

"""The claims registry in params.yaml (read from the file, never copied) against STATS.md "Claims registry v2" and
"Registry v3 additions" (early-window claims, seeds, post hoc claims, the reduced-scale twins), its validation
(errors name the key path) and the vocabulary it is written in."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from bnflow.config import parse_claims, read_yaml
from bnflow.errors import ConfigError
from bnflow.stats.registry import METRIC_TEXT, natural_key
from bnflow.summarize import COLUMNS as RUNS_COLUMNS
from bnflow.vocab import CLAIM_METRICS, CLASSIFIERS, MODELS

ROOT = Path(__file__).resolve().parents[1]
RAW = read_yaml(ROOT / "params.yaml")["claims"]
SPECS = {c.id: c for c in parse_claims(RAW)}

# STATS.md's table, row by row: id -> (family, metric, model, arm_a, arm_b, lr, type, direction, scale, sesoi/margin)
V, D = "vgg", "dln"
STATS_TABLE = {
    "C1": ("primary", "steps_to_acc90", V, "bn", "standard", 0.1, "superiority", "lower", "ratio", 0.9),
    "C2a": ("primary", "steps_to_acc90", V, "noisy_bn", "standard", 0.1, "superiority", "lower", "ratio", 0.9),
    "C2b": ("primary", "final_train_acc", V, "noisy_bn", "bn", 0.1, "non_inferiority", "higher", "difference", -0.02),
    "C2c": ("primary", "act_drift_log", V, "noisy_bn", "bn", 0.1, "superiority", "higher", "ratio", 1.25),
    "C3": ("primary", "loss_band_log", V, "bn", "standard", 0.1, "superiority", "lower", "ratio", 0.9),
    "C4": ("primary", "grad_change_log", V, "bn", "standard", 0.1, "superiority", "lower", "ratio", 0.9),
    "C5": ("primary", "beta_q90_log", V, "bn", "standard", 0.1, "superiority", "lower", "ratio", 0.9),
    "C6": ("primary", "ics_rel_log", V, "bn", "standard", 0.1, "non_inferiority", "higher", "ratio", 0.8),
    "C6cos": ("primary", "ics_cos", V, "bn", "standard", 0.1, "non_inferiority", "lower", "difference", 0.1),
    **{f"C7_{p}": ("secondary_lp", "steps_to_acc90", V, p, "standard", 0.1, "superiority", "lower", "ratio", 0.9)
       for p in ("l1", "l2", "linf")},
    **{f"C7bn_{p}": ("secondary_lp", "steps_to_acc90", V, p, "bn", 0.1, "non_inferiority", "lower", "ratio", 1.5)
       for p in ("l1", "l2", "linf")},
    **{f"C7band_{p}": ("secondary_lp", "loss_band_log", V, p, "standard", 0.1, "superiority", "lower", "ratio", 0.9)
       for p in ("l1", "l2", "linf")},
    "C8": ("secondary_lr", "reached_acc90", V, "bn", "standard", 0.5, "superiority", "higher", "difference", 0.5),
    "C9": ("secondary_noisy", "final_train_acc", V, "noisy_standard", "chance", 0.1, "non_inferiority", "lower",
           "difference", 0.05),
    "C3_dln": ("secondary_dln", "loss_band_log", D, "bn", "standard", 1e-6, "superiority", "lower", "ratio", 0.9),
    "C4_dln": ("secondary_dln", "grad_change_log", D, "bn", "standard", 1e-6, "superiority", "lower", "ratio", 0.9),
    "C5_dln": ("secondary_dln", "beta_q90_log", D, "bn", "standard", 1e-6, "superiority", "lower", "ratio", 0.9),
    "C6_dln": ("secondary_dln", "ics_rel_log", D, "bn", "standard", 1e-6, "non_inferiority", "higher", "ratio", 0.8),
    "C12_dln": ("secondary_dln", "train_loss_auc_log", D, "bn", "standard", 1e-6, "superiority", "lower", "ratio",
                0.9),
    "C13_dln": ("secondary_dln", "train_loss_auc_log", D, "l1", "bn", 1e-6, "superiority", "lower", "ratio", 0.9),
}
E = ("superiority", "lower", "ratio", 0.5)  # registry v3: bn/standard < 1, sesoi 0.5
EARLY = {"C3e": "band_peak_early_log", "C4e": "grad_change_peak_early_log", "C5e": "beta_peak_early_log"}
# STATS.md "Registry v3 additions": id -> (family, metric, model, lr, seeds)
V3_TABLE = {
    **{cid: ("early", metric, V, 0.1, None) for cid, metric in EARLY.items()},
    **{f"{cid}_dln": ("dln_early", metric, D, 1e-6, (5, 19)) for cid, metric in EARLY.items()},
    **{f"{cid}_dln_posthoc": ("post_hoc", metric, D, 1e-6, (0, 4)) for cid, metric in EARLY.items()},
}
V2_DLN = ("C3_dln", "C4_dln", "C5_dln", "C6_dln", "C12_dln", "C13_dln", "C14_dln", "C11_dln")  # seeds as run: 0-4
# exploratory (STATS.md: BN increases ICS on the DLN at lr 1e-7; ICS claims at VGG lr 0.01; λ_max vs 2/lr)
EXPLORATORY = {
    "C14_dln": ("ics_rel_log", D, "bn", "standard", 1e-7, "superiority", "higher"),
    "C6_lr001": ("ics_rel_log", V, "bn", "standard", 0.01, "non_inferiority", "higher"),
    "C6cos_lr001": ("ics_cos", V, "bn", "standard", 0.01, "non_inferiority", "lower"),
    "C10": ("edge_ratio", V, "bn", "2/lr", 0.1, "equivalence", "lower"),
    "C11": ("edge_ratio", V, "bn", "standard", 0.1, "superiority", "lower"),
    "C11_dln": ("edge_ratio", D, "bn", "standard", 1e-6, "superiority", "lower"),
}


def test_the_registry_is_stats_md_table_row_by_row():
    paper = set(STATS_TABLE) | set(EXPLORATORY) | set(V3_TABLE)
    twins = {f"{c}_cpu" for c in paper if SPECS[c].model == V}
    assert set(SPECS) == paper | twins
    for cid, (family, metric, model, a, b, lr, kind, direction, scale, bound) in STATS_TABLE.items():
        c = SPECS[cid]
        assert (c.family, c.metric, c.model, c.arm_a, c.arm_b, c.lr, c.type, c.direction, c.scale) == (
            family, metric, model, a, b, pytest.approx(lr), kind, direction, scale), cid
        assert (c.sesoi if kind == "superiority" else c.margin) == pytest.approx(bound), cid
    for cid, (metric, model, a, b, lr, kind, direction) in EXPLORATORY.items():
        c = SPECS[cid]
        assert (c.family, c.metric, c.model, c.arm_a, c.arm_b, c.lr, c.type, c.direction) == (
            "exploratory", metric, model, a, b, pytest.approx(lr), kind, direction), cid
    assert SPECS["C9"].reference == 0.1 and SPECS["C10"].reference == 1.0
    for cid, (family, metric, model, lr, seeds) in V3_TABLE.items():
        c = SPECS[cid]
        assert (c.family, c.metric, c.model, c.arm_a, c.arm_b, c.lr, c.seeds) == (
            family, metric, model, "bn", "standard", pytest.approx(lr), seeds), cid
        assert (c.type, c.direction, c.scale, c.sesoi) == E, cid
    assert all(SPECS[c].seeds == (0, 4) for c in V2_DLN)
    assert all(c.seeds is None for c in SPECS.values() if c.model != D)


def test_every_vgg_claim_has_a_reduced_scale_twin():
    """Same metric, arms, lr, type, direction, sesoi/margin, rationale and figure; model vgg_cpu; id and family
    suffixed _cpu; the hypothesis says so."""
    vgg = [c for c in SPECS.values() if c.model == V]
    assert {c.id for c in vgg} >= {"C1", "C2a", "C2b", "C2c", "C3", "C3e", "C4e", "C5e", "C8", "C9", "C10", "C11",
                                   "C6_lr001", "C6cos_lr001"}
    for c in vgg:
        twin = SPECS[f"{c.id}_cpu"]
        assert twin == dataclasses.replace(c, id=f"{c.id}_cpu", family=f"{c.family}_cpu", model="vgg_cpu",
                                           hypothesis=f"{c.hypothesis} (reduced-scale VGG)"), c.id
    assert {c.family for c in SPECS.values() if c.model == "vgg_cpu"} == {
        "primary_cpu", "early_cpu", "secondary_lp_cpu", "secondary_lr_cpu", "secondary_noisy_cpu", "exploratory_cpu"}


def test_hypotheses_state_a_direction_not_a_minimum_effect():
    """STATS.md v3: "at least X" only where the test is against X (a non-inferiority margin), never for a sesoi."""
    for c in SPECS.values():
        if c.type == "superiority":
            assert not re.search(r"at least|by \d|\d(\.\d+)?x\b", c.hypothesis), c.id


def test_every_claim_declares_its_figure_and_its_threshold_with_a_reason():
    for c in SPECS.values():
        assert c.figure.strip()
        if c.type == "superiority":
            assert c.sesoi is not None and c.margin is None, c.id
        else:
            assert c.margin is not None and c.sesoi is None and c.rationale, c.id
    assert {c.id for c in SPECS.values() if c.family == "primary"} == {"C1", "C2a", "C2b", "C2c", "C3", "C4", "C5",
                                                                     "C6", "C6cos"}
    assert {c.id for c in SPECS.values() if c.family == "primary_cpu"} == {
        f"{c}_cpu" for c in ("C1", "C2a", "C2b", "C2c", "C3", "C4", "C5", "C6", "C6cos")}


def test_the_vocabulary_the_registry_is_written_in():
    assert "loss_range_log" not in CLAIM_METRICS and "beta_smooth_log" not in CLAIM_METRICS  # replaced in v2
    assert set(METRIC_TEXT) == set(CLAIM_METRICS)  # every metric has its sentence phrase
    assert set(CLAIM_METRICS) <= set(RUNS_COLUMNS)  # and is a runs.csv column
    for name, (kind, _, models) in CLAIM_METRICS.items():
        is_accuracy = "acc" in name
        assert models == (CLASSIFIERS if is_accuracy else MODELS), name


def test_claims_sort_naturally():
    ids = ["C10", "C2b", "C3_dln", "C1", "C11_dln", "C9", "C2a", "C11", "C7bn_l1", "C7_l1"]
    assert sorted(ids, key=natural_key) == ["C1", "C2a", "C2b", "C7_l1", "C7bn_l1", "C9", "C10", "C11", "C3_dln",
                                            "C11_dln"]


def _entry(index: int, **changes):
    entry = dict(RAW[index])
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


C2B, C1 = next(i for i, e in enumerate(RAW) if e["id"] == "C2b"), next(i for i, e in enumerate(RAW) if e["id"] == "C1")


@pytest.mark.parametrize("base, raw, message", [
    (C2B, {"margin": 0.01}, "claims[1].margin: must be < 0 for a non-inferiority claim where higher is better"),
    (C2B, {"margin": None}, "claims[1].margin: a non_inferiority claim needs a margin"),
    (C2B, {"rationale": None}, "claims[1].rationale: a non_inferiority claim needs a one-line rationale"),
    (C2B, {"sesoi": 0.9}, "claims[1].sesoi: a non_inferiority claim takes a margin, not a sesoi"),
    (C1, {"sesoi": None}, "claims[1].sesoi: a superiority claim needs its smallest effect of interest"),
    (C1, {"sesoi": 1.1}, "claims[1].sesoi: must be in (0, 1) on the ratio scale when lower is better"),
    (C1, {"margin": 1.2}, "claims[1].margin: a superiority claim takes no margin"),
    (C1, {"figure": None}, "claims[1].figure: missing"),
    (C1, {"figure": " "}, "claims[1].figure: must be a non-empty string"),
    (C2B, {"metric": "accuracy"}, "claims[1].metric: unknown value 'accuracy'"),
    (C2B, {"metric": "loss_range_log", "scale": "ratio"}, "claims[1].metric: unknown value 'loss_range_log'"),
    (C2B, {"arm_a": "g n"}, "claims[1].arm_a: unknown value 'g n'"),
    (C2B, {"family": "secondary_control"}, "claims[1].family: unknown value 'secondary_control'"),
    (C2B, {"id": "C1"}, "claims[1].id: duplicate id 'C1' (also claims[0])"),
    (C2B, {"colour": "red"}, "claims[1]: unknown key(s) colour"),
    (C2B, {"lr": "1e-6"}, "claims[1].lr: must be a number, got str '1e-6' (YAML reads 1e-6 as text"),
    (C2B, {"scale": "ratio"}, "claims[1].scale: 'final_train_acc' is compared on the 'difference' scale"),
    (C2B, {"model": "dln"}, "claims[1].metric: 'final_train_acc' is not measured for model 'dln'"),
    (C2B, {"arm_b": "2/lr"}, "claims[1].reference: give a reference value exactly when arm_b is one of chance, 2/lr"),
    (C2B, {"alpha": 0.9}, "claims[1].alpha: must be in (0, 0.5]"),
    (C1, {"seeds": [5]}, "claims[1].seeds: must be [first, last], two integer seed indices (inclusive), got [5]"),
    (C1, {"seeds": [5, "19"]}, "claims[1].seeds: must be [first, last], two integer seed indices"),
    (C1, {"seeds": [True, 3]}, "claims[1].seeds: must be [first, last], two integer seed indices"),
    (C1, {"seeds": 5}, "claims[1].seeds: must be [first, last]"),
    (C1, {"seeds": [19, 5]}, "claims[1].seeds: must be [first, last] with 0 <= first <= last, got [19, 5]"),
    (C1, {"seeds": [-1, 4]}, "claims[1].seeds: must be [first, last] with 0 <= first <= last, got [-1, 4]"),
    (C2B, {"family": "post_hoc_cpu"}, "claims[1].family: unknown value 'post_hoc_cpu'"),
])
def test_parse_claims_errors_name_the_key(base, raw, message):
    first = dict(RAW[C1], id="C0") if base == C1 else RAW[C1]
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_claims([first, _entry(base, **raw)])


def test_parse_claims_survives_yaml_and_rejects_non_lists():
    assert parse_claims(yaml.safe_load(yaml.safe_dump(RAW))) == tuple(SPECS.values())
    with pytest.raises(ConfigError, match="claims: must be a non-empty list"):
        parse_claims({"C1": RAW[0]})


def test_a_claim_arm_must_be_a_variant_or_a_declared_plug_in(raw_params):
    """parse_claims cannot know the plug-ins; params validation checks every arm against train.plugins."""
    from bnflow.config import from_dict

    raw_params["claims"][0]["arm_a"] = "gn"
    with pytest.raises(ConfigError, match=r"^claims\[0\]\.arm_a: unknown value 'gn'; choose a variant .* or a plug-in"):
        from_dict(raw_params)

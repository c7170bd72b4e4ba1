"""Per-run summaries (runs.csv) on hand-made tables, and the stats step's byte-identical outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bnflow.config import load_params
from bnflow.stats.step import run_stats
from bnflow.summarize import COLUMNS, accuracy_summaries, probe_summaries, write_runs_csv
from conftest import ROOT

CFG = load_params(ROOT / "params.yaml").summarize.__class__(
    acc_threshold=0.9, smooth_window=2, auc_steps=30, final_window=2, probe_window=(0.0, 1.0), curvature_warmup=0.5)


def metrics(accs, *, step=10, test=None) -> pd.DataFrame:
    rows = [{"step": i * step, "split": "train", "loss": 1.0 - a, "acc": a} for i, a in enumerate(accs)]
    rows += [{"step": s, "split": "test", "loss": 0.5, "acc": a} for s, a in (test or {}).items()]
    return pd.DataFrame(rows)


def test_steps_to_threshold_uses_the_smoothed_curve():
    # smoothed (window 2): 0.1, 0.5, 0.85, 0.9 -> first >= 0.9 at step 30 (raw 0.95 at step 20 is not enough)
    out = accuracy_summaries(metrics([0.1, 0.9, 0.8, 1.0, 1.0]), CFG, budget=40, diverged=False)
    assert out["steps_to_acc90"] == 30 and not out["steps_to_acc90_censored"] and out["reached_acc90"]
    assert out["train_acc_auc"] == pytest.approx((0.1 + 0.9 + 0.8) / 3)  # steps 0, 10, 20 < 30
    assert out["final_train_acc"] == pytest.approx(1.0)


def test_never_reaching_the_threshold_is_censored_at_the_budget():
    out = accuracy_summaries(metrics([0.1, 0.2, 0.3], test={20: 0.25}), CFG, budget=20, diverged=False)
    assert out["steps_to_acc90"] == 20 and out["steps_to_acc90_censored"] and not out["reached_acc90"]
    assert out["final_test_acc"] == 0.25


def test_a_diverged_run_is_censored_and_has_no_final_numbers():
    out = accuracy_summaries(metrics([0.1, 0.2, float("nan")]), CFG, budget=100, diverged=True)
    assert out["steps_to_acc90"] == 100 and out["steps_to_acc90_censored"] and not out["reached_acc90"]
    assert math.isnan(out["final_train_acc"]) and math.isnan(out["train_acc_auc"])


def test_probe_summaries_are_means_of_logs_over_the_window():
    land = pd.DataFrame({"step": [0, 0, 10, 10], "eta": [1, 2, 1, 2], "loss": [1.0, 3.0, 2.0, 2.5],
                         "grad_change": [1.0, 4.0, 2.0, 1.0], "ratio": [1.0, 2.0, 8.0, 0.5]})
    ics = pd.DataFrame({"step": [0, 0, 10], "layer": [5, 10, 5], "rel": [0.5, 2.0, 1.0], "cos": [0.5, 0.7, 0.9]})
    out = probe_summaries(land, ics, CFG, budget=10, diverged=False)
    assert out["loss_range_log"] == pytest.approx((math.log(2.0) + math.log(0.5)) / 2)
    assert out["grad_change_log"] == pytest.approx((math.log(4.0) + math.log(2.0)) / 2)
    assert out["beta_smooth_log"] == pytest.approx((math.log(2.0) + math.log(8.0)) / 2)
    assert out["ics_rel_log"] == pytest.approx((math.log(0.5) + math.log(2.0) + 0.0) / 3)
    assert out["ics_cos"] == pytest.approx(0.7)
    half = CFG.__class__(**{**CFG.__dict__, "probe_window": (0.5, 1.0)})
    assert probe_summaries(land, ics, half, budget=10, diverged=False)["loss_range_log"] == pytest.approx(math.log(0.5))
    assert all(math.isnan(v) for v in probe_summaries(land, ics, CFG, budget=10, diverged=True).values())


def test_edge_ratio_averages_lr_lambda_over_checkpoints_after_warmup():
    from bnflow.summarize import edge_ratio

    curv = pd.DataFrame({"step": [0, 50, 100], "lr_lambda_max": [9.0, 2.0, 2.4]})
    assert edge_ratio(curv, CFG, budget=100, diverged=False) == pytest.approx((1.0 + 1.2) / 2)  # steps >= 50
    assert math.isnan(edge_ratio(curv, CFG, budget=100, diverged=True))
    assert math.isnan(edge_ratio(None, CFG, budget=100, diverged=False))


def runs_table(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for variant, scale in (("bn", 0.5), ("standard", 1.0)):
        for seed in range(5):
            rows.append({"model": "vgg", "variant": variant, "lr": 0.1, "seed": seed, "cell": f"vgg-{variant}-lr0.1",
                         "run_id": f"{variant}-lr0.1-s{seed}", "diverged": False, "n_steps": 100, "step_budget": 100,
                         "wall_s": 1.0, "steps_to_acc90": float(rng.integers(20, 60) * scale * 2),
                         "steps_to_acc90_censored": False, "reached_acc90": True,
                         "train_acc_auc": rng.uniform(0.5, 0.9), "final_train_acc": 1.0, "final_train_loss": 0.01,
                         "final_test_acc": 0.8, "loss_range_log": rng.normal(0, 0.1) + math.log(scale),
                         "grad_change_log": rng.normal(), "beta_smooth_log": rng.normal(),
                         "ics_rel_log": rng.normal(), "ics_cos": rng.uniform(0, 1),
                         "edge_ratio": rng.uniform(0.9, 1.1) if variant == "bn" else rng.uniform(2, 3)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_stats_outputs_are_byte_identical_on_rerun(tmp_path):
    params = load_params(ROOT / "params.yaml")
    write_runs_csv(runs_table(np.random.default_rng(3)), tmp_path / "runs.csv")
    first = run_stats(params, tmp_path / "runs.csv", tmp_path / "a")
    run_stats(params, tmp_path / "runs.csv", tmp_path / "b")
    for name in ("claims.csv", "claims.json", "claims.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    c3 = first.set_index("claim_id").loc["C3"]
    assert c3.verdict == "supported" and c3.estimate == pytest.approx(0.5, rel=0.2)
    assert first.set_index("claim_id").loc["C7_l1"].verdict == "inconclusive"  # no l1 runs: flagged, not a crash
    assert "missing_arm" in first.set_index("claim_id").loc["C7_l1"]["flags"]


def test_one_run_per_arm_gives_inconclusive_claims_not_a_crash(tmp_path):
    params = load_params(ROOT / "params.yaml")
    runs = runs_table(np.random.default_rng(4))
    write_runs_csv(runs[runs.seed == 0], tmp_path / "runs.csv")
    table = run_stats(params, tmp_path / "runs.csv", tmp_path / "out").set_index("claim_id")
    for claim in ("C3", "C10"):
        assert table.loc[claim].verdict == "inconclusive" and "n<2" in table.loc[claim]["flags"]

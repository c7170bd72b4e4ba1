"""Per-run summaries (runs.csv) on hand-made tables and on a hand-made results tree: every summary against a number
computed by hand, blow-ups and divergence as the worst value (never skipped), partial grids, missing outputs."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnflow.config import from_dict, load_params, read_yaml
from bnflow.errors import DataError
from bnflow.io import RUN_TABLE
from bnflow.results import load_runs, missing_cells, present_cells
from bnflow.errors import ConfigError
from bnflow.summarize import (COLUMNS, EARLY, accuracy_summaries, act_drift_log, early_peak_summaries, edge_ratio,
                              ics_summaries, landscape_summaries, loss_summaries, nearest_rank_quantile,
                              probe_summaries, summarize)
from conftest import ROOT

CFG = load_params(ROOT / "params.yaml").summarize.__class__(
    acc_threshold=0.9, smooth_window=2, auc_steps=30, final_window=2, probe_window=(0.0, 1.0), curvature_warmup=0.5,
    early_fraction=0.1)


def metrics(accs, *, step=10, test=None, losses=None) -> pd.DataFrame:
    losses = losses if losses is not None else [1.0 - a for a in accs]
    rows = [{"step": i * step, "split": "train", "loss": x, "acc": a} for i, (a, x) in enumerate(zip(accs, losses))]
    rows += [{"step": s, "split": "test", "loss": 0.5, "acc": a} for s, a in (test or {}).items()]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- training curves
def test_steps_to_threshold_uses_the_smoothed_curve():
    # smoothed (window 2): 0.1, 0.5, 0.85, 0.9, 1.0 -> first >= 0.9 at step 30 (raw 0.9 at step 10 is not enough)
    out = accuracy_summaries(metrics([0.1, 0.9, 0.8, 1.0, 1.0], test={40: 0.7}), CFG, 40, diverged_at=None,
                             n_classes=10)
    assert out["steps_to_acc90"] == 30 and not out["steps_to_acc90_censored"] and out["reached_acc90"]
    assert out["train_acc_auc"] == pytest.approx((0.1 + 0.9 + 0.8) / 3)  # steps 0, 10, 20 each hold 10 steps of 30
    assert out["final_train_acc"] == pytest.approx(1.0) and out["final_test_acc"] == 0.7


def test_never_reaching_the_threshold_is_censored_at_the_budget():
    out = accuracy_summaries(metrics([0.1, 0.2, 0.3], test={20: 0.25}), CFG, 20, diverged_at=None, n_classes=10)
    assert out["steps_to_acc90"] == 20 and out["steps_to_acc90_censored"] and not out["reached_acc90"]
    assert out["final_test_acc"] == 0.25


def test_reaching_but_not_holding_the_threshold_is_not_reached():
    out = accuracy_summaries(metrics([0.95, 0.95, 0.3, 0.3], test={30: 0.3}), CFG, 30, diverged_at=None,
                             n_classes=10)
    assert out["steps_to_acc90"] == 0 and not out["steps_to_acc90_censored"] and not out["reached_acc90"]


def test_a_run_that_reaches_90_then_diverges_keeps_its_time_and_counts_chance_afterwards():
    # steps 0..30 logged, loss NaN at step 40: diverged there. Smoothed (window 2): 0.5, 0.725, 0.95 -> hit at 20.
    m = metrics([0.5, 0.95, 0.95, 1.0, 0.6], losses=[1.0, 0.1, 0.1, 0.1, float("nan")])
    cfg = CFG.__class__(**{**CFG.__dict__, "auc_steps": 60})
    out = accuracy_summaries(m, cfg, 100, diverged_at=40, n_classes=10)
    assert out["steps_to_acc90"] == 20 and not out["steps_to_acc90_censored"]
    assert not out["reached_acc90"]  # it does not hold 90% at the end: it sits at chance
    assert (out["final_train_acc"], out["final_test_acc"]) == (0.1, 0.1)
    # 10 steps each at 0.5, 0.95, 0.95, 1.0, then chance 0.1 from step 40 to 60
    assert out["train_acc_auc"] == pytest.approx((10 * (0.5 + 0.95 + 0.95 + 1.0) + 20 * 0.1) / 60)
    assert loss_summaries(m, cfg, diverged=True) == {"final_train_loss": math.inf, "train_loss_auc_log": math.inf}


def test_a_run_that_diverges_before_the_threshold_is_censored_at_the_budget():
    m = metrics([0.1, 0.95, 0.95], losses=[1.0, 1.0, float("inf")])
    out = accuracy_summaries(m, CFG, 100, diverged_at=20, n_classes=4)
    assert out["steps_to_acc90"] == 100 and out["steps_to_acc90_censored"] and not out["reached_acc90"]
    assert out["train_acc_auc"] == pytest.approx((10 * 0.1 + 10 * 0.95 + 10 * 0.25) / 30)  # chance 1/4 from 20


def test_loss_summaries_by_hand():
    m = metrics([0.0] * 4, losses=[4.0, 2.0, 1.0, 0.5])
    out = loss_summaries(m, CFG, diverged=False)
    assert out["final_train_loss"] == pytest.approx(0.75)
    assert out["train_loss_auc_log"] == pytest.approx(np.mean(np.log([4.0, 2.0, 1.0, 0.5])))


# --------------------------------------------------------------------------------------------------------- probes
LAND = pd.DataFrame({"step": [0, 0, 10, 10], "eta": [1, 2, 1, 2], "loss": [1.0, 3.0, 2.0, 2.5],
                     "grad_change": [1.0, 4.0, 2.0, 1.0], "ratio": [1.0, 2.0, 8.0, 0.5],
                     "loss0": [2.0, 2.0, 1.0, 1.0], "grad_norm": [2.0, 2.0, 4.0, 4.0],
                     "direction": ["gradient"] * 4})  # landscape.csv's layout (README "probe tables")
ICS = pd.DataFrame({"step": [0, 0, 10], "layer": [5, 10, 5], "l2": [1.0, 1.0, 1.0], "rel": [0.5, 2.0, 1.0],
                    "cos": [0.5, 0.7, 0.9]})


def test_landscape_summaries_are_per_probe_bands_as_ratios():
    out = landscape_summaries(LAND)
    assert out["loss_band_log"] == pytest.approx((math.log(3.0 / 1.0) + math.log(2.5 / 2.0)) / 2)
    assert out["grad_change_log"] == pytest.approx((math.log(4.0) + math.log(2.0)) / 2)
    assert out["beta_q90_log"] == pytest.approx(math.log(8.0))  # β_eff per step: 2, 8; ⌈0.9·2⌉ = 2nd smallest


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("column", ["loss", "grad_change", "ratio"])
def test_a_blown_up_eta_makes_the_probe_the_worst_value(bad, column):
    land = LAND.copy()
    land.loc[1, column] = bad  # one η of the first probe
    out = landscape_summaries(land)
    assert out["loss_band_log"] == math.inf and out["grad_change_log"] == math.inf
    assert out["beta_q90_log"] == math.inf  # 2 probes: the 90th percentile is the largest, the blown-up one


def test_beta_quantile_is_nearest_rank_and_ranks_a_blow_up_last():
    assert nearest_rank_quantile(np.arange(1.0, 11.0), 0.9) == 9.0
    assert nearest_rank_quantile(np.array([*range(1, 10), math.inf], dtype=float), 0.9) == 9.0
    assert nearest_rank_quantile(np.array([*range(1, 9), math.inf, math.inf], dtype=float), 0.9) == math.inf


def test_early_peaks_by_hand():
    # loss/loss0: 0.5, 1.5 (step 0), 2, 2.5 (step 10); grad_change/grad_norm: 0.5, 2, 0.5, 0.25; ratio max 8
    out = early_peak_summaries(LAND)
    assert out == pytest.approx({"band_peak_early_log": math.log(2.5), "grad_change_peak_early_log": math.log(2.0),
                                 "beta_peak_early_log": math.log(8.0)})


def test_the_early_window_is_the_first_early_fraction_of_the_budget():
    tables = {"landscape": LAND}
    whole = probe_summaries(tables, CFG, 100, diverged=False)  # window [0, 10]: both probes
    assert [whole[k] for k in EARLY] == pytest.approx([math.log(2.5), math.log(2.0), math.log(8.0)])
    first = probe_summaries(tables, CFG, 50, diverged=False)  # window [0, 5]: step 0 only
    assert [first[k] for k in EARLY] == pytest.approx([math.log(1.5), math.log(2.0), math.log(2.0)])
    # the whole-run summaries keep their own window (probe_window [0, 1]): both probes
    assert first["beta_q90_log"] == pytest.approx(math.log(8.0))
    late = LAND.assign(step=LAND.step + 20)  # no probe at steps <= 10
    assert [probe_summaries({"landscape": late}, CFG, 100, diverged=False)[k] for k in EARLY] == [None] * 3
    assert [probe_summaries({"landscape": late}, CFG, 100, diverged=True)[k] for k in EARLY] == [math.inf] * 3


@pytest.mark.parametrize("column", ["loss", "grad_change", "ratio", "loss0", "grad_norm"])
def test_a_blown_up_value_in_the_early_window_makes_every_peak_inf(column):
    land = LAND.copy()
    land.loc[3, column] = float("nan")  # step 10, inside the window at budget 100, outside it at budget 50
    assert [probe_summaries({"landscape": land}, CFG, 100, diverged=False)[k] for k in EARLY] == [math.inf] * 3
    assert all(math.isfinite(probe_summaries({"landscape": land}, CFG, 50, diverged=False)[k]) for k in EARLY)
    land.loc[3, column] = float("inf")
    assert early_peak_summaries(land) == dict.fromkeys(EARLY, math.inf)


@pytest.mark.parametrize("value, message", [(0.0, "must be > 0"), (1.5, "must be <= 1"), ("0.1", "expected a number")])
def test_early_fraction_is_validated(value, message):
    raw = read_yaml(ROOT / "params.yaml")
    raw["summarize"]["early_fraction"] = value
    with pytest.raises(ConfigError, match=rf"^summarize\.early_fraction: {message}"):
        from_dict(raw)


def test_ics_summaries_and_their_blow_up():
    out = ics_summaries(ICS)
    assert out["ics_rel_log"] == pytest.approx((math.log(0.5) + math.log(2.0) + 0.0) / 3)
    assert out["ics_cos"] == pytest.approx(0.7)
    bad = ICS.copy()
    bad.loc[2, "cos"] = float("nan")
    assert ics_summaries(bad) == {"ics_rel_log": math.inf, "ics_cos": -math.inf}


def test_act_drift_by_hand():
    # channel (2, 0): means 0, 1, 2 (sample sd 1), var 1 (std 1) -> 1; channel (2, 1): means constant -> 0
    act = pd.DataFrame({"step": [0, 10, 20] * 2, "layer": [2] * 6, "channel": [0, 0, 0, 1, 1, 1],
                        "mean": [0.0, 1.0, 2.0, 5.0, 5.0, 5.0], "var": [1.0, 1.0, 1.0, 4.0, 4.0, 4.0]})
    assert act_drift_log(act) == pytest.approx(math.log(0.5))
    act.loc[4, "var"] = float("inf")
    assert act_drift_log(act) == math.inf
    assert act_drift_log(act[act.step == 0].assign(var=1.0)) is None  # one probed step: no drift to measure


def test_probe_window_and_diverged_runs_without_probes_in_it():
    tables = {"landscape": LAND, "ics": ICS, "act_channels": pd.DataFrame()}
    half = CFG.__class__(**{**CFG.__dict__, "probe_window": (0.5, 1.0)})
    out = probe_summaries(tables, half, 10, diverged=False)
    assert out["loss_band_log"] == pytest.approx(math.log(2.5 / 2.0)) and out["ics_rel_log"] == 0.0
    assert out["act_drift_log"] is None  # not measured: an empty cell, not a NaN
    late = CFG.__class__(**{**CFG.__dict__, "probe_window": (0.9, 1.0)})
    gone = probe_summaries(tables, late, 100, diverged=True)  # blew up before the window: worst values
    assert (gone["loss_band_log"], gone["beta_q90_log"], gone["ics_cos"]) == (math.inf, math.inf, -math.inf)
    assert probe_summaries(tables, late, 100, diverged=False)["loss_band_log"] is None


def test_edge_ratio_averages_lr_lambda_over_checkpoints_after_warmup():
    curv = pd.DataFrame({"step": [0, 50, 100], "lr_lambda_max": [9.0, 2.0, 2.4]})
    assert edge_ratio(curv, CFG, 100, diverged=False) == pytest.approx((1.0 + 1.2) / 2)  # steps >= 50
    assert edge_ratio(curv.iloc[:1], CFG, 100, diverged=True) == math.inf  # diverged before warm-up ended
    assert edge_ratio(None, CFG, 100, diverged=False) is None
    assert edge_ratio(curv.assign(lr_lambda_max=[1.0, float("nan"), 2.0]), CFG, 100, diverged=False) == math.inf


# ------------------------------------------------------------------------------------------- a hand-made results tree
CELLS = {"vgg-bn-lr0.1": ("vgg", "bn", 0.1), "vgg-standard-lr0.1": ("vgg", "standard", 0.1),
         "dln-bn-lr1e-06": ("dln", "bn", 1e-6)}
BUDGET = {"vgg": 200, "dln": 100}


def tree_params(tmp_path: Path):
    raw = read_yaml(ROOT / "params.yaml")
    raw["out_dir"] = str(tmp_path)
    raw["train"]["seeds"]["n"] = 2
    # the hand-made cells, whatever the default grid holds (a cell outside the grid is never summarized)
    raw["train"]["grid"].update({cell: {"model": m, "variant": v, "lr": lr} for cell, (m, v, lr) in CELLS.items()})
    raw["train"]["vgg"].update(steps=200, checkpoint_steps=[0, 200])
    raw["train"]["dln"].update(steps=100, checkpoint_steps=[0, 100])
    raw["summarize"].update(auc_steps=100, smooth_window=1, final_window=2)
    return from_dict(raw)


def write_run(root: Path, probes: Path, cell: str, seed: int, *, diverged_at: int | None = None) -> None:
    model, variant, lr = CELLS[cell]
    budget = BUDGET[model]
    run = root / cell / f"s{seed}"
    run.mkdir(parents=True)
    end = budget if diverged_at is None else diverged_at + 1
    steps = list(range(0, end, 50)) + ([diverged_at] if diverged_at is not None and diverged_at % 50 else [])
    acc = (lambda t: min(1.0, 0.2 + t / 150)) if model == "vgg" else (lambda t: None)
    rows = [{"step": t, "split": "train", "loss": float("nan") if t == diverged_at else 2.0 / (1 + t), "acc": acc(t)}
            for t in steps]
    if model == "vgg" and diverged_at is None:
        rows.append({"step": budget, "split": "test", "loss": 0.3, "acc": 0.8})
    pd.DataFrame(rows).to_csv(run / RUN_TABLE.format("metrics"), index=False)  # gzip: .gz
    probed = [t for t in (0, 50, 100, 150) if t < end]
    pd.DataFrame([{"step": t, "eta": e, "loss": 1.0 + e * (1 + seed), "grad_change": e, "ratio": 1.0 + seed,
                   "loss0": 1.0, "grad_norm": 1.0, "direction": "gradient"} for t in probed for e in (0.5, 1.0)]
                 ).to_csv(run / RUN_TABLE.format("landscape"), index=False)
    pd.DataFrame([{"step": t, "layer": 5, "l2": 0.1, "rel": 0.2, "cos": 0.9, "grad_norm": 1.0,
                   "shifted_grad_norm": 1.0} for t in probed]).to_csv(run / RUN_TABLE.format("ics"), index=False)
    pd.DataFrame([{"step": t, "layer": 2, "channel": 0, "mean": t / 100, "var": 1.0} for t in probed]
                 ).to_csv(run / RUN_TABLE.format("act_channels"), index=False)
    pd.DataFrame([{"step": t, "layer": 2, "unit": "0", "channel": 0} for t in probed]
                 ).to_csv(run / RUN_TABLE.format("act_units"), index=False)
    (run / "run.json").write_text(json.dumps({
        "run_id": f"{variant}-lr{lr:g}-s{seed}", "cell": cell, "model": model, "variant": variant, "lr": lr,
        "seed": seed, "status": "diverged" if diverged_at is not None else "completed",
        "diverged": diverged_at is not None, "diverged_at_step": diverged_at,
        "n_steps": budget if diverged_at is None else diverged_at, "step_budget": budget, "data": {}}))
    probe = probes / cell / f"s{seed}"
    probe.mkdir(parents=True)
    pd.DataFrame({"step": [0, budget], "lr_lambda_max": [4.0, 2.2 + seed]}).to_csv(probe / "curvature.csv",
                                                                                   index=False)


@pytest.fixture
def tree(tmp_path):
    runs, probes = tmp_path / "runs", tmp_path / "probes"
    for cell in CELLS:
        for seed in (0, 1):
            write_run(runs, probes, cell, seed, diverged_at=130 if (cell, seed) == ("vgg-standard-lr0.1", 1) else None)
    return tree_params(tmp_path), runs, probes


def test_runs_csv_by_hand_on_a_partial_grid(tree, tmp_path):
    params, runs, probes = tree
    frame = summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)
    assert present_cells(params, runs) == [c for c in params.train.grid if c in CELLS]  # in train.grid order
    assert set(missing_cells(params, runs)) == set(params.train.grid) - set(CELLS)
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and "wall_s" not in lines[0]
    assert [tuple(r) for r in frame[["model", "variant", "seed"]].itertuples(index=False)] == [
        ("dln", "bn", 0), ("dln", "bn", 1), ("vgg", "bn", 0), ("vgg", "bn", 1), ("vgg", "standard", 0),
        ("vgg", "standard", 1)]
    row = dict(zip(COLUMNS, lines[3].split(",")))  # vgg bn s0
    # acc 0.2 + t/150 at t = 0, 50, 100, 150: 0.2, 0.5333, 0.8667, 1 -> first >= 0.9 at 150; AUC over [0, 100)
    assert (row["steps_to_acc90"], row["reached_acc90"], row["train_acc_auc"]) == ("150", "True", "0.366667")
    assert row["final_train_loss"] == format(np.mean([2 / 101, 2 / 151]), ".6g")
    assert row["loss_band_log"] == format(math.log(2.0 / 1.5), ".6g")  # losses 1.5 and 2 at every probe
    assert row["edge_ratio"] == "1.1" and row["diverged_at_step"] == "" and row["act_drift_log"] != ""
    # early window: steps <= 0.1 x 200, the probe at step 0 only: peak loss/L(θ) 2, change/‖g‖ 1, β_eff 1
    early = (row["band_peak_early_log"], row["grad_change_peak_early_log"], row["beta_peak_early_log"])
    assert early == (format(math.log(2.0), ".6g"), "0", "0")
    dln = dict(zip(COLUMNS, lines[1].split(",")))
    assert dln["steps_to_acc90"] == dln["reached_acc90"] == dln["final_test_acc"] == ""  # no accuracy on a DLN
    gone = dict(zip(COLUMNS, lines[6].split(",")))  # vgg standard s1, NaN loss at step 130
    assert (gone["diverged"], gone["diverged_at_step"], gone["final_train_loss"]) == ("True", "130", "inf")
    assert (gone["final_train_acc"], gone["steps_to_acc90"], gone["steps_to_acc90_censored"]) == ("0.1", "200", "True")


def test_rerun_is_byte_identical(tree, tmp_path):
    params, runs, probes = tree
    summarize(params, runs, tmp_path / "a.csv", probes_root=probes)
    summarize(params, runs, tmp_path / "b.csv", probes_root=probes)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_a_nan_at_one_eta_of_one_probe_reaches_runs_csv_as_inf(tree, tmp_path):
    params, runs, probes = tree
    path = runs / "vgg-bn-lr0.1" / "s0" / "landscape.csv.gz"
    land = pd.read_csv(path)
    land.loc[3, "loss"] = float("nan")
    land.to_csv(path, index=False)
    frame = summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)
    row = frame[(frame.variant == "bn") & (frame.model == "vgg") & (frame.seed == 0)].iloc[0]
    assert row["loss_band_log"] == math.inf and row["grad_change_log"] == math.inf
    other = frame[(frame.variant == "bn") & (frame.model == "vgg") & (frame.seed == 1)].iloc[0]
    assert math.isfinite(other["loss_band_log"])


def test_a_missing_probe_seed_folder_is_an_error_naming_it_and_the_command(tree, tmp_path):
    params, runs, probes = tree
    shutil.rmtree(probes / "vgg-bn-lr0.1" / "s1")
    with pytest.raises(DataError, match=re.escape(str(probes / "vgg-bn-lr0.1" / "s1")) + ".*dvc repro probe@vgg-bn"):
        summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)
    assert not (tmp_path / "runs.csv").exists()


def test_a_missing_seed_folder_or_table_in_a_present_cell_is_an_error(tree, tmp_path):
    params, runs, probes = tree
    (runs / "dln-bn-lr1e-06" / "s0" / "ics.csv.gz").unlink()
    with pytest.raises(DataError, match=r"ics\.csv\.gz: missing.*dvc repro train@dln-bn-lr1e-06"):
        load_runs(params, runs)
    shutil.rmtree(runs / "dln-bn-lr1e-06" / "s0")
    with pytest.raises(DataError, match=re.escape(str(runs / "dln-bn-lr1e-06" / "s0")) + ": missing seed folder"
                       ".*train@dln-bn-lr1e-06"):
        summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)


@pytest.mark.parametrize("how", ["truncated", "not gzip"])
def test_a_damaged_metrics_gz_in_a_present_cell_is_unreadable_not_a_shorter_table(tree, tmp_path, how):
    """A metrics.csv.gz cut to its first half (a copy or a commit cut short) or garbled: a DataError naming the file,
    "unreadable" and the command that rebuilds it, never the rows that still decompress read as the whole run."""
    params, runs, probes = tree
    path = runs / "vgg-bn-lr0.1" / "s1" / RUN_TABLE.format("metrics")
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and len(pd.read_csv(path)) == 5  # the fixture's table, gzip-compressed
    path.write_bytes(raw[: len(raw) // 2] if how == "truncated" else b"step,split,loss,acc\n0,train,1.0,0.5\n")
    message = re.escape(str(path)) + r": unreadable .*dvc repro train@vgg-bn-lr0\.1"
    with pytest.raises(DataError, match=message):
        load_runs(params, runs)
    with pytest.raises(DataError, match=message):
        summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)
    assert not (tmp_path / "runs.csv").exists()


def test_an_absent_cell_is_not_run_yet_not_an_error(tree, tmp_path):
    params, runs, probes = tree
    shutil.rmtree(runs / "vgg-standard-lr0.1")
    frame = summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)
    assert set(frame.cell) == {"vgg-bn-lr0.1", "dln-bn-lr1e-06"}
    assert "vgg-standard-lr0.1" in missing_cells(params, runs)


def test_stats_on_a_shuffled_runs_csv_writes_byte_identical_claims(tree, tmp_path):
    from bnflow.stats.step import run_stats

    params, runs, probes = tree
    summarize(params, runs, tmp_path / "runs.csv", probes_root=probes)
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    rng = np.random.default_rng(3)
    body = [lines[1 + i] for i in rng.permutation(len(lines) - 1)]
    (tmp_path / "shuffled.csv").write_text("\n".join([lines[0], *body]) + "\n")
    first = run_stats(params, tmp_path / "runs.csv", tmp_path / "a")
    run_stats(params, tmp_path / "shuffled.csv", tmp_path / "b")
    for name in ("claims.csv", "claims.json", "claims.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    by_id = first.set_index("claim_id")
    assert by_id.loc["C1", "n_a"] == 2 and by_id.loc["C1", "test"] == "paired_t_log"  # bn vs standard, 2 seeds
    assert by_id.loc["C2a", "verdict"] == "not_run_yet"  # vgg-noisy_bn-lr0.1 is in the grid but not run

"""Tests for bnflow.figures: every figure on small synthetic tidy tables (axes, scales, lines, bands), the numeric
helpers against hand computations and pandas re-implementations, column checks, and byte-identical re-renders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from bnflow.cli import build_parser  # noqa: E402
from bnflow.config import from_dict  # noqa: E402
from bnflow.errors import DataError  # noqa: E402
from bnflow.figures import FIGURES, render_figures  # noqa: E402
from bnflow.figures import activations, extra, ics, landscape, training  # noqa: E402
from bnflow.figures.common import Drawn, Skip  # noqa: E402
from bnflow.figures.data import FigureData, layer_title, pick_lrs, resolve_layers  # noqa: E402
from bnflow.figures.plots import eta_range, n_seeds_text, seed_summary  # noqa: E402
from bnflow.figures.render import REPORT_RST, draw_all  # noqa: E402
from bnflow.figures.report import Entry, report_rst  # noqa: E402
from bnflow.figures.style import VARIANT_COLORS, _log_label  # noqa: E402
from conftest import ROOT  # noqa: E402

SEEDS = (0, 1, 2)
VGG_FACTORS, DLN_FACTORS = (0.5, 1.0, 2.0, 4.0), (0.01, 0.1, 1.0, 10.0, 30.0)


def _runs(model: str, variants, lrs):
    for variant in variants:
        for lr in lrs:
            for seed in SEEDS:
                yield {"cell": f"{model}-{variant}-lr{lr:g}", "model": model, "variant": variant, "lr": lr,
                       "seed": seed, "diverged": False}


def synthetic(variants=("standard", "bn"), vgg_lrs=(0.1,), dln_lrs=(1e-6,), vgg_ics=(5, 10), vgg_act=(2, 3, 9, 11, 13),
              vgg_depth=13, checkpoint_steps=None, band="minmax") -> FigureData:
    """Small tidy tables shaped like the train step's (3 seeds, 6 probed steps), drawn from a fixed generator."""
    rng = np.random.default_rng(0)
    t = {name: [] for name in ("metrics", "landscape", "ics", "act_channels", "act_units")}
    runs = []
    for model, lrs, factors, ics_layers, act_layers in (("vgg", vgg_lrs, VGG_FACTORS, vgg_ics, vgg_act),
                                                        ("dln", dln_lrs, DLN_FACTORS, (9, 17), (1, 11, 24))):
        for run in _runs(model, variants, lrs):
            runs.append(run | {"run_id": f"{run['variant']}-lr{run['lr']:g}-s{run['seed']}"})
            for step in range(0, 101, 10):
                u = rng.uniform(0.9, 1.1)
                acc = 0.1 + 0.8 * (1 - math.exp(-step / 30)) * u if model == "vgg" else np.nan
                t["metrics"].append(run | {"step": step, "split": "train", "loss": 1e4 * math.exp(-step / 50) * u,
                                           "acc": acc})
                if model == "vgg" and step % 50 == 0:
                    t["metrics"].append(run | {"step": step, "split": "test", "loss": 2.0, "acc": acc})
            for step in range(0, 101, 20):
                gn = rng.uniform(1, 2)
                for f in factors:
                    change = f * rng.uniform(0.5, 1.5)
                    t["landscape"].append(run | {"step": step, "eta": f * run["lr"], "loss": 2.0 + f * rng.uniform(),
                                                 "grad_change": change, "ratio": change / (f * run["lr"] * gn),
                                                 "direction": "gradient"})
                for layer in ics_layers:
                    t["ics"].append(run | {"step": step, "layer": layer, "l2": rng.uniform(0.1, 10),
                                           "rel": rng.uniform(0.1, 1), "cos": rng.uniform(-1, 1)})
                for layer in act_layers:
                    for ch in (0, 1):
                        t["act_channels"].append(run | {"step": step, "layer": layer, "channel": ch,
                                                        "mean": rng.normal(), "var": rng.uniform(0.5, 2)})
                    for unit in ("3,1,2", "5,0,0"):
                        q = np.sort(rng.normal(size=5))
                        t["act_units"].append(run | {"step": step, "layer": layer, "unit": unit, "channel": 3,
                                                     **dict(zip(("q05", "q25", "q50", "q75", "q95"), q))})
    dense = {k: pd.DataFrame(v) for k, v in t.items()}
    checkpoint = {}
    if checkpoint_steps is not None:
        land = dense["landscape"]
        checkpoint["landscape"] = land[land.step.isin(checkpoint_steps)].reset_index(drop=True)
    return FigureData(dense=dense, checkpoint=checkpoint, runs=pd.DataFrame(runs),
                      sources={"vgg": "synthetic 10-class images (prepare.source: synthetic), not CIFAR-10",
                               "dln": "synthetic regression y = Ax"},
                      depths={"vgg": vgg_depth, "dln": 25}, band=band)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def polys(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def thick(ax, width: float = 1.7) -> list:
    return [ln for ln in ax.get_lines() if math.isclose(ln.get_linewidth(), width)]


# ----------------------------------------------------------------------------------------------- numeric helpers
def test_seed_summary_by_hand():
    v = np.array([[1.0, 3.0], [2.0, np.nan]])
    c, lo, hi = seed_summary(v, "minmax", log=False)
    np.testing.assert_allclose(c, [2, 2]) and np.testing.assert_allclose(lo, [1, 2])
    np.testing.assert_allclose(hi, [3, 2])
    c, lo, hi = seed_summary(v, "sd", log=False)  # one seed left: no spread
    np.testing.assert_allclose([lo[0], hi[0], lo[1], hi[1]], [2 - math.sqrt(2), 2 + math.sqrt(2), 2, 2])
    c, lo, hi = seed_summary(np.array([[1.0, 100.0, -1.0, np.inf]]), "sd", log=True)  # geometric; -1, inf left out
    np.testing.assert_allclose([c[0], lo[0], hi[0]], [10, 10 ** (1 - math.sqrt(2)), 10 ** (1 + math.sqrt(2))])
    with pytest.raises(ValueError, match="band"):
        seed_summary(v, "iqr", log=False)


def test_eta_range_is_minmax_over_eta_of_the_seed_mean():
    df = pd.DataFrame({"seed": [0, 0, 1, 1, 0, 1], "step": [0, 0, 0, 0, 10, 10], "eta": [1, 2, 1, 2, 1, 1],
                       "loss": [1.0, 5.0, 3.0, 1.0, 2.0, 4.0]})
    band = eta_range(df, "loss", log=False)  # step 0: means over seeds 2 (eta 1) and 3 (eta 2)
    assert band.loc[0].tolist() == [2.0, 3.0] and band.loc[10].tolist() == [3.0, 3.0]


def test_beta_eff_is_the_max_ratio_over_eta_per_run_and_step():
    land = synthetic().dense["landscape"]
    beta = landscape.beta_eff(land)
    expected = land.groupby(["cell", "seed", "step"]).ratio.max()
    got = beta.set_index(["cell", "seed", "step"]).beta
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


def test_moment_changes_by_hand():
    base = {"cell": "vgg-bn-lr0.1", "model": "vgg", "variant": "bn", "lr": 0.1, "seed": 0, "diverged": False}
    rows = [base | {"step": s, "layer": 2, "channel": c, "mean": m, "var": v}
            for s, c, m, v in ((0, 0, 0.0, 4.0), (10, 0, 1.0, 1.0), (20, 0, 3.0, 2.0),
                               (0, 1, 1.0, 1.0), (10, 1, 1.0, 1.0), (20, 1, 0.0, 1.0))]
    out = activations.moment_changes(pd.DataFrame(rows)).set_index("step")
    assert np.isnan(out.loc[0, "step_mean"]) and out.loc[0, "drift_mean"] == 0
    # step 10: channel 0 |1-0|/2 = 0.5, channel 1 0 -> 0.25; var |1-4|/4 = .75 and 0 -> .375
    assert out.loc[10, ["step_mean", "step_var"]].tolist() == [0.25, 0.375]
    # step 20: step_mean (|3-1|/1 + |0-1|/1)/2 = 1.5; drift_mean (|3-0|/2 + |0-1|/1)/2 = 1.25
    assert out.loc[20, "step_mean"] == 1.5 and out.loc[20, "drift_mean"] == 1.25
    assert out.loc[20, "drift_var"] == pytest.approx((abs(2 - 4) / 4 + 0) / 2)


def test_final_values_take_each_runs_last_step_and_leave_out_diverged_runs():
    d = synthetic().dense["metrics"]
    d.loc[(d.cell == "vgg-bn-lr0.1") & (d.seed == 1), "diverged"] = True
    finals = extra.final_values(d[d.model == "vgg"], "test", "acc")
    assert len(finals) == 5 and set(finals.step) == {100}
    ref = d[(d.model == "vgg") & (d.split == "test") & (d.step == 100) & ~d.diverged.astype(bool)]
    np.testing.assert_allclose(np.sort(finals.value), np.sort(ref.acc))


def test_layers_and_lrs_stand_in_for_the_papers():
    assert resolve_layers((5, 10), (3, 6), 8, 13) == [(3, (5,)), (6, (10,))]   # VGG-11 for the paper's VGG-16
    assert resolve_layers((3, 11), (2, 3, 6, 8), 8, 13) == [(3, (3,)), (6, (11,))]
    assert resolve_layers((9, 10), (6,), 8, 13) == [(6, (9, 10))]
    assert resolve_layers((9, 17), (9, 17), 25, 25) == [(9, (9,)), (17, (17,))] and resolve_layers((1,), (), 8, 13) == []
    assert layer_title(5, (5,)) == "layer #5" and "paper's #9, #10" in layer_title(6, (9, 10))
    assert pick_lrs([0.01, 0.1, 0.5], (0.1, 0.5)) == [0.5, 0.1] and pick_lrs([0.2], (0.1,)) == [0.2]
    assert landscape.training_times(np.arange(0, 101, 10)) == [0, 20, 40, 60, 80, 100]
    assert n_seeds_text([3, 3]) == "n = 3 seeds per curve" and n_seeds_text([2, 3]) == "n = 2–3 seeds per curve"
    assert _log_label(1e5) == "$10^{5}$" and _log_label(20) == "20" and _log_label(2e-5) == "$2\\times10^{-5}$"


# ------------------------------------------------------------------------------------------------------ figures
def test_fig01_two_lrs_train_and_test_with_bands_and_seed_lines():
    out = training.fig01_accuracy(synthetic(vgg_lrs=(0.5, 0.1, 0.01)))
    assert isinstance(out, Drawn)
    axes = out.fig.axes
    assert [ax.get_title() for ax in axes] == ["(a) training (mini-batch) accuracy, lr 0.5", "(b) test accuracy, lr 0.5",
                                             "(a) training (mini-batch) accuracy, lr 0.1", "(b) test accuracy, lr 0.1"]
    for ax in axes:
        assert "accuracy" in ax.get_ylabel() and ax.get_xlabel() == "training step"
        assert len(ax.get_lines()) == 2 * (len(SEEDS) + 1) and len(polys(ax)) == 2  # per variant: seeds + mean
        assert {ln.get_color() for ln in thick(ax)} == {VARIANT_COLORS["standard"], VARIANT_COLORS["bn"]}
    # one legend row per lr (matplotlib lists legend entries column by column)
    assert [t.get_text() for t in out.fig.legends[0].get_texts()] == [
        "Standard, lr 0.5", "Standard, lr 0.1", "BatchNorm, lr 0.5", "BatchNorm, lr 0.1"]
    assert "n = 3 seeds per curve" in out.caption and "synthetic" in out.caption and "eval mode" in out.caption


def test_fig01_mean_line_is_the_mean_across_seeds():
    data = synthetic()
    ax = training.fig01_accuracy(data).fig.axes[0]
    bn = thick(ax)[1]
    m = data.dense["metrics"]
    ref = m[(m.model == "vgg") & (m.variant == "bn") & (m.split == "train")].groupby("step").acc.mean()
    np.testing.assert_allclose(bn.get_ydata(), ref.to_numpy())


def test_fig03a_nearest_layers_log_l2_and_linear_cosine():
    out = ics.fig03a_ics_vgg(synthetic(vgg_lrs=(0.1, 0.01), vgg_ics=(3, 6), vgg_depth=8))
    axes = out.fig.axes
    assert len(axes) == 2 + 3 * 2 * 2
    titles = [ax.get_title() for ax in axes]
    assert "layer #3 (nearest to paper's #5), lr 0.01" in titles and "layer #6 (nearest to paper's #10), lr 0.1" in titles
    l2 = [ax for ax in axes if ax.get_ylabel().startswith("‖G − G′‖₂ (log)")]
    cos = [ax for ax in axes if ax.get_ylabel() == "cos(G, G′)"]
    assert len(l2) == 4 and all(ax.get_yscale() == "log" for ax in l2)
    assert len(cos) == 4 and all(ax.get_yscale() == "linear" for ax in cos)
    assert all(len(polys(ax)) == 2 for ax in l2 + cos)


def test_fig03b_dln_uses_the_paper_layers_and_a_log_loss():
    out = ics.fig03b_ics_dln(synthetic(dln_lrs=(1e-6, 1e-7)))
    train = [ax for ax in out.fig.axes if ax.get_title().startswith("training loss")]
    assert len(train) == 2 and all(ax.get_yscale() == "log" for ax in train)
    assert any(ax.get_title() == "layer #17, lr 1e-07" for ax in out.fig.axes)


def test_fig04_loss_band_matches_a_pandas_reimplementation():
    data = synthetic()
    out = landscape.fig04_landscape_vgg(data)
    a, b, c = out.fig.axes
    assert (a.get_yscale(), b.get_yscale(), c.get_yscale()) == ("linear", "linear", "log")
    assert len(polys(a)) == len(polys(b)) == 2 and len(polys(c)) == 2
    land = data.dense["landscape"]
    bn = land[(land.model == "vgg") & (land.variant == "bn")]
    hi = bn.groupby(["step", "eta"]).loss.mean().groupby("step").max()
    edges = [ln for ln in a.get_lines() if math.isclose(ln.get_linewidth(), 0.9) and ln.get_color() == VARIANT_COLORS["bn"]]
    np.testing.assert_allclose(edges[1].get_ydata(), hi.to_numpy())
    assert "min–max over η of the across-seed mean" in out.caption and "train mode" in out.caption


def test_fig10_dln_probes_on_log_axes():
    axes = landscape.fig10_landscape_dln(synthetic()).fig.axes
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "log"]


def test_fig11_one_curve_per_checkpoint_step_on_log_axes():
    out = landscape.fig11b_grad_eta_dln(synthetic(checkpoint_steps=(0, 40, 100)))
    for ax in out.fig.axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert len(thick(ax, 1.6)) == 3
    assert [t.get_text() for t in out.fig.legends[0].get_texts()] == ["step 0", "step 40", "step 100"]
    assert "checkpoint-wise probes" in out.caption


def test_figures_needing_other_variants_skip_and_draw_when_they_exist():
    base = synthetic()
    for draw in (activations.fig02_noisy_bn, training.fig05_lp_training, activations.fig06_lp_activations,
                 landscape.fig12_lp_vgg, landscape.fig13_lp_dln):
        assert isinstance(draw(base), Skip)
    full = synthetic(variants=("standard", "bn", "noisy_bn", "l1", "l2", "linf"))
    fig2 = activations.fig02_noisy_bn(full).fig
    assert len(fig2.axes) == 1 + 3 * 3
    fig5 = training.fig05_lp_training(full).fig
    assert [ax.get_yscale() for ax in fig5.axes] == ["linear", "log"]
    assert len(thick(fig5.axes[0])) == 5  # standard, bn, l1, l2, linf
    assert len(activations.fig06_lp_activations(full).fig.axes) == 5
    assert len(landscape.fig12_lp_vgg(full).fig.axes) == 4
    assert [ax.get_yscale() for ax in landscape.fig13_lp_dln(full).fig.axes] == ["log"] * 4


def test_distribution_and_moment_figures():
    data = synthetic(variants=("standard", "bn", "noisy_bn"))
    fig1c = activations.fig01c_activations(data)
    assert len(fig1c.fig.axes) == 4 and all(len(polys(ax)) == 2 for ax in fig1c.fig.axes)  # 5–95% and 25–75%
    assert "unit (3,1,2) of seed 0" in fig1c.caption
    fig8 = activations.fig08a_moment_change(data).fig
    assert len(fig8.axes) == 6 and all(ax.get_yscale() == "log" for ax in fig8.axes)
    assert all(len(thick(ax)) == 3 for ax in fig8.axes)  # standard, bn, noisy_bn
    assert len(activations.fig09_dln_activations(data).fig.axes) == 6


def test_extra_figures():
    data = synthetic(vgg_lrs=(0.5, 0.1))
    lr_fig = extra.figx_lr_sensitivity(data).fig
    assert lr_fig.axes[0].get_xscale() == "log" and lr_fig.axes[1].get_yscale() == "log"
    beta = extra.figx_beta_vs_lr(data).fig
    assert len(beta.axes) == 4 and all(ax.get_yscale() == "log" for ax in beta.axes)


def test_missing_columns_and_no_runs():
    data = synthetic()
    broken = FigureData(dense={**data.dense, "landscape": data.dense["landscape"].drop(columns="grad_change")})
    with pytest.raises(DataError, match="landscape.csv: missing column.*grad_change"):
        landscape.fig04_landscape_vgg(broken)
    empty = FigureData(dense={})
    assert all(isinstance(spec.draw(empty), Skip) for spec in FIGURES)


# --------------------------------------------------------------------------------------------- step and report
def _write_runs(root: Path, data: FigureData, cells: list[str]) -> None:
    m = data.dense["metrics"]
    for (cell, seed), rows in m[m.cell.isin(cells)].groupby(["cell", "seed"]):
        run = root / cell / f"s{seed}"
        run.mkdir(parents=True)
        r = rows.iloc[0]
        (run / "run.json").write_text(json.dumps({
            "cell": cell, "model": r.model, "variant": r.variant, "lr": r.lr, "seed": int(seed), "diverged": False,
            "run_id": f"{r.variant}-lr{r.lr:g}-s{seed}", "status": "completed", "diverged_at_step": None,
            "n_steps": 100, "step_budget": 100, "wall_s": 1.0, "data": {"source": "synthetic"}}))
        rows[["step", "split", "loss", "acc"]].to_csv(run / "metrics.csv", index=False)


def test_render_figures_writes_pngs_svgs_and_report_byte_identically(tmp_path, quick_raw):
    quick_raw["train"]["grid"] = {k: v for k, v in quick_raw["train"]["grid"].items() if k.startswith("vgg")}
    quick_raw["train"]["seeds"]["n"] = 3
    quick_raw["figures"]["dpi"] = 30
    params = from_dict(quick_raw)
    _write_runs(tmp_path / "runs", synthetic(), list(params.train.grid))
    (tmp_path / "claims.md").write_text("# Claims\n\n- **C1** (primary): BN trains faster — **supported**.\n")
    args = (params, tmp_path / "runs")
    first = render_figures(*args, tmp_path / "a", claims=tmp_path / "claims.md")
    second = render_figures(*args, tmp_path / "b", probes_root=tmp_path / "no-probes", claims=tmp_path / "claims.md")
    names = [p.name for p in first]
    assert names == ["REPORT.md", "fig01_accuracy.png", "fig01_accuracy.svg", "figx1_lr_sensitivity.png",
                     "figx1_lr_sensitivity.svg"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "fig01_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "a" / "REPORT.md").read_text()
    assert "![Fig 1a–b: training and test accuracy, standard vs BatchNorm](fig01_accuracy.png)" in report
    assert "synthetic 10-class images" in report and "**C1** (primary): BN trains faster" in report
    assert "- Fig 2 (`fig02_noisy_bn`): no VGG noisy_bn runs in the grid." in report
    with pytest.raises(DataError, match="claims"):
        render_figures(*args, tmp_path / "c", claims=tmp_path / "missing.md")


def test_draw_all_keeps_rc_settings_local(tmp_path):
    before = dict(plt.rcParams)
    draw_all(FigureData(dense={}), tmp_path, 30)
    assert dict(plt.rcParams) == before


def test_snakemake_report_captions_are_generated_from_the_registry():
    expected = report_rst([Entry(s.name, s.paper, s.title) for s in FIGURES])
    assert (ROOT / REPORT_RST).read_text() == expected, "regenerate: python -c \"from bnflow.figures.render " \
                                                        "import write_report_rst; write_report_rst()\""
    assert all(f'"{s.name}"' in expected for s in FIGURES)


def test_cli_passes_probes_and_claims():
    a = build_parser().parse_args(["figures", "--params", "p.yaml", "--runs-root", "r", "--probes-root", "q",
                                   "--claims", "c.md", "--output", "o"])
    assert (a.runs_root, a.probes_root, a.claims, a.output) == (Path("r"), Path("q"), Path("c.md"), Path("o"))

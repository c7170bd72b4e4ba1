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
from bnflow.figures import activations, curvature, extra, ics, landscape, training  # noqa: E402
from bnflow.figures.common import Drawn, Skip  # noqa: E402
from bnflow.figures.data import FigureData, curvature_text, layer_title, pick_lrs, resolve_layers  # noqa: E402
from bnflow.figures.plots import eta_range, n_seeds_text, seed_summary  # noqa: E402
from bnflow.figures.render import REPORT_RST, draw_all  # noqa: E402
from bnflow.figures.report import Entry, Table, format_cell, report_markdown, report_rst  # noqa: E402
from bnflow.figures.style import LR_STYLES, VARIANT_COLORS, _log_label  # noqa: E402
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


# ------------------------------------------------------------------------------- curvature and Theorem 4.1 (extra)
CKPT_STEPS = (0, 100, 1000)
LANCZOS = "Lanczos (≤ 20 Hessian-vector products, residual tol 0.001), w.r.t. all trainable parameters"


def curvature_data(variants=("standard", "bn"), vgg_lrs=(0.1,), dln_lrs=(1e-6,), vgg_bn_layers=(1, 2, 3),
                   dln_bn_layers=tuple(range(1, 25))) -> FigureData:
    """Checkpoint-wise curvature and theorem41 tables shaped like the probe step's (3 seeds, 3 checkpoints)."""
    rng = np.random.default_rng(1)
    curv, t41, runs = [], [], []
    for model, lrs, layers in (("vgg", vgg_lrs, vgg_bn_layers), ("dln", dln_lrs, dln_bn_layers)):
        for run in _runs(model, variants, lrs):
            runs.append(run | {"run_id": f"{run['variant']}-lr{run['lr']:g}-s{run['seed']}"})
            for step in CKPT_STEPS:
                lam = 2.0 / run["lr"] * rng.uniform(0.3, 3.0)
                curv.append(run | {"step": step, "loss": 1.0, "grad_norm": 1.0, "lambda_max": lam,
                                   "batch_sharpness": lam * rng.uniform(0.1, 0.9), "grad_top_fraction": 0.5,
                                   "eig_iters": int(rng.integers(5, 21)), "eig_converged": True,
                                   "lr_lambda_max": run["lr"] * lam, "two_over_lr": 2.0 / run["lr"]})
                if run["variant"] == "standard":
                    continue  # no BN layer: the probe step writes no theorem41 rows
                for layer in layers:
                    for channel in range(3):
                        lhs = rng.uniform(0.1, 1.0)
                        t41.append(run | {"step": step, "layer": layer, "channel": channel, "m": 512, "sigma": 0.8,
                                          "gamma": 1.0, "lhs": lhs, "rhs": lhs, "rhs_exact": lhs,
                                          "rel_gap": rng.uniform(1e-6, 1e-5), "rel_gap_exact": rng.uniform(5e-8, 2e-7),
                                          "reduction": rng.uniform(0.5, 2.0), "eps_ratio": rng.uniform(1e-5, 1e-4)})
    checkpoint = {"curvature": pd.DataFrame(curv)}
    if t41:
        checkpoint["theorem41"] = pd.DataFrame(t41)
    return FigureData(dense={}, checkpoint=checkpoint, runs=pd.DataFrame(runs),
                      sources={"vgg": "synthetic 10-class images", "dln": "synthetic regression y = Ax"},
                      depths={"vgg": 8, "dln": 25}, curvature_setup={"vgg": LANCZOS, "dln": LANCZOS},
                      probe_batch={"vgg": "the mini-batch of 32 images", "dln": "the full batch of 1000 samples"})


def geo_mean_by_step(rows: pd.DataFrame, y: str) -> np.ndarray:
    """Independent reference for a log-axis centre line: exp of the mean log over seeds, per step."""
    return np.exp(np.log(rows[y]).groupby(rows.step).mean()).sort_index().to_numpy()


def hlines(ax, linestyle: str) -> set[float]:
    """y of the horizontal reference lines (axhline: x data [0, 1] in axes units) with this style."""
    return {round(float(ln.get_ydata()[0]), 12) for ln in ax.get_lines()
            if list(ln.get_xdata()) == [0, 1] and ln.get_linestyle() == linestyle}


def test_figx3_lambda_max_and_batch_sharpness_against_two_over_lr():
    data = curvature_data(vgg_lrs=(0.5, 0.1))
    curv = data.checkpoint["curvature"]
    curv.loc[(curv.model == "dln") & (curv.seed == 2) & (curv.step == 100), "eig_converged"] = False
    out = curvature.figx3_sharpness(data)
    assert isinstance(out, Drawn)
    axes = out.fig.axes
    assert [ax.get_title() for ax in axes] == [
        "VGG: λ_max (top Hessian eigenvalue)", "VGG: batch sharpness gᵀHg / ‖g‖²",
        "Deep linear network: λ_max (top Hessian eigenvalue)", "Deep linear network: batch sharpness gᵀHg / ‖g‖²"]
    for ax in axes:
        assert ax.get_yscale() == "log" and ax.get_xlabel().startswith("training step (checkpoints")
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "100", "1000"]
    for ax in axes[:2]:  # VGG: 2 variants x 2 lrs, colour = variant, line style = lr (0.5 solid, 0.1 dashed)
        assert len(thick(ax)) == 4 and len(polys(ax)) == 4
        assert {(ln.get_color(), ln.get_linestyle()) for ln in thick(ax)} == {
            (VARIANT_COLORS[v], LR_STYLES[k]) for v in ("standard", "bn") for k in (0, 1)}
        assert hlines(ax, "--") == {4.0, 20.0}  # 2/lr for lr 0.5 and 0.1
    assert all(hlines(ax, "--") == {2e6} for ax in axes[2:])
    bn = curv[(curv.model == "vgg") & (curv.variant == "bn") & (curv.lr == 0.1)]
    centre = [ln for ln in thick(axes[0]) if ln.get_color() == VARIANT_COLORS["bn"] and ln.get_linestyle() == "--"]
    np.testing.assert_allclose(centre[0].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(centre[0].get_ydata(), geo_mean_by_step(bn, "lambda_max"))
    legend = [t.get_text() for t in out.fig.legends[0].get_texts()]
    assert "BatchNorm, lr 0.1" in legend and "Standard, lr 1e-06" in legend and legend.count("2/lr") == 1
    assert [ln.get_label() for ln in axes[3].get_lines()][-1] == "2/lr"  # drawn last: listed after the curves
    assert "n = 3 seeds per curve" in out.caption and LANCZOS in out.caption and "train mode" in out.caption
    assert "all 36 converged" in out.caption and "2 of 18 did not converge (λ_max a lower bound)" in out.caption
    assert "≤ 0" not in out.caption


def test_figx3_leaves_non_positive_sharpness_off_the_log_axis_and_says_so():
    data = curvature_data()
    curv = data.checkpoint["curvature"]
    hit = (curv.model == "vgg") & (curv.variant == "bn") & (curv.seed == 0) & (curv.step == 100)
    curv.loc[hit, "batch_sharpness"] = -3.0
    out = curvature.figx3_sharpness(data)
    centre = [ln for ln in thick(out.fig.axes[1]) if ln.get_color() == VARIANT_COLORS["bn"]][0]
    bn = curv[(curv.model == "vgg") & (curv.variant == "bn")]
    np.testing.assert_allclose(centre.get_ydata(), geo_mean_by_step(bn[~hit[bn.index]], "batch_sharpness"))
    assert "batch sharpness ≤ 0 at 1 of 18 run checkpoints" in out.caption


def test_figx4_reduction_per_layer_and_the_identitys_gap():
    data = curvature_data(variants=("standard", "bn", "noisy_bn"))
    t41 = data.checkpoint["theorem41"]
    out = curvature.figx4_theorem41(data)
    assert isinstance(out, Drawn)
    by_title = {ax.get_title(): ax for ax in out.fig.axes}
    red = by_title["‖g_y‖²/‖g_z‖²: BatchNorm, lr 0.1"]
    assert "‖g_y‖²/‖g_z‖²: Noisy BN, lr 0.1" in by_title and "‖g_y‖²/‖g_z‖²: BatchNorm, lr 1e-06" in by_title
    assert red.get_yscale() == "log" and len(thick(red)) == 3 and hlines(red, ":") == {1.0}  # VGG: 3 BN layers
    # layer 2's centre: geometric mean over seeds of each run's median over channels
    bn = t41[(t41.model == "vgg") & (t41.variant == "bn") & (t41.layer == 2)]
    per_run = bn.groupby(["seed", "step"], as_index=False).reduction.median()
    layer2 = [ln for ln in thick(red) if ln.get_color() == curvature.LAYER_CMAP(0.5)]
    np.testing.assert_allclose(layer2[0].get_ydata(), geo_mean_by_step(per_run, "reduction"))
    assert len(thick(by_title["‖g_y‖²/‖g_z‖²: BatchNorm, lr 1e-06"])) == 6  # 24 DLN layers: 6 shown
    gaps = [ax for ax in out.fig.axes if ax.get_title().startswith("Theorem 4.1")]
    assert len(gaps) == 2 and all(ax.get_yscale() == "log" for ax in gaps)
    assert hlines(gaps[0], ":") == {round(float(np.finfo(np.float32).eps), 12)}
    assert len(thick(gaps[0])) == len(thick(gaps[1])) == 4  # (paper, exact) x (bn, noisy_bn)
    paper = [ln for ln in thick(gaps[0]) if ln.get_marker() == "o" and ln.get_color() == VARIANT_COLORS["bn"]][0]
    ref = t41[(t41.model == "vgg") & (t41.variant == "bn")].groupby(["seed", "step"], as_index=False).rel_gap.max()
    np.testing.assert_allclose(paper.get_ydata(), geo_mean_by_step(ref, "rel_gap"))
    assert "BN layers shown: 6 of 24 (#1, #6, #10, #15, #19, #24)" in out.caption
    assert "BN layers shown: all (#1, #2, #3)" in out.caption and "ε-exact identity" in out.caption
    assert curvature.spread_layers(range(1, 9)) == list(range(1, 9))


def test_curvature_figures_skip_without_data_and_name_missing_columns():
    assert isinstance(curvature.figx4_theorem41(curvature_data(variants=("standard",))), Skip)
    assert isinstance(curvature.figx3_sharpness(synthetic()), Skip)
    data = curvature_data()
    broken = FigureData(dense={}, checkpoint={**data.checkpoint,
                                              "curvature": data.checkpoint["curvature"].drop(columns="lambda_max")})
    with pytest.raises(DataError, match="curvature.csv: missing column.*lambda_max"):
        curvature.figx3_sharpness(broken)
    broken = FigureData(dense={}, checkpoint={"theorem41": data.checkpoint["theorem41"].drop(columns="rel_gap_exact")})
    with pytest.raises(DataError, match="theorem41.csv: missing column.*rel_gap_exact"):
        curvature.figx4_theorem41(broken)


def test_curvature_summary_and_its_markdown_table_by_hand():
    run = {"cell": "vgg-bn-lr0.1", "model": "vgg", "variant": "bn", "lr": 0.1, "diverged": False}
    std = run | {"cell": "vgg-standard-lr0.1", "variant": "standard"}
    curv = pd.DataFrame([r | {"seed": s, "step": st, "lambda_max": lam, "batch_sharpness": 1.0, "eig_iters": 9,
                              "eig_converged": ok}
                         for r in (run, std) for s, st, lam, ok in ((0, 0, 99.0, True), (0, 10, 30.0, False),
                                                                    (1, 0, 99.0, True), (1, 10, 50.0, True))])
    t41 = pd.DataFrame([run | {"seed": s, "step": 10, "layer": 1, "channel": c, "lhs": 1.0, "rhs": 1.0,
                               "rhs_exact": 1.0, "rel_gap": g, "rel_gap_exact": g / 100, "reduction": red,
                               "eps_ratio": 1e-5}
                        for s, c, g, red in ((0, 0, 1e-5, 1.0), (0, 1, 3e-5, 2.0), (1, 0, 2e-5, 4.0))])
    data = FigureData(dense={}, checkpoint={"curvature": curv, "theorem41": t41})
    summary = curvature.curvature_summary(data)
    assert summary.variant.tolist() == ["standard", "bn"]  # palette order
    bn = summary.iloc[1]
    # last checkpoint λ_max·lr/2: 30·0.05 = 1.5 and 50·0.05 = 2.5, median 2.0; one of four solves unconverged
    assert bn.eos_ratio == pytest.approx(2.0) and bn.converged == "3/4" and bn.runs == 2
    assert (bn.rel_gap, bn.rel_gap_exact, bn.reduction) == pytest.approx((3e-5, 3e-7, 2.0))
    assert np.isnan(summary.iloc[0].rel_gap) and summary.iloc[0].eos_ratio == pytest.approx(2.0)
    table = curvature.summary_table(data)
    md = report_markdown([], header="h", claims_md=None, tables=[table])
    assert "| vgg | bn | 0.1 | 2 | 2 | 3/4 | 3e-05 | 3e-07 | 2 |" in md
    assert "| vgg | standard | 0.1 | 2 | 2 | 3/4 | — | — | — |" in md and "(#curvature_summary)" in md
    assert [format_cell(v) for v in (1.23456e-7, 0.25, float("nan"), 3, "a|b")] == ["1.23e-07", "0.25", "—", "3",
                                                                                 "a\\|b"]
    assert curvature.summary_table(FigureData(dense={})) is None
    assert "## Tables" not in report_markdown([], header="h", claims_md=None, tables=[])
    assert isinstance(table, Table)


def _write_probes(root: Path, data: FigureData, cells: list[str]) -> None:
    """The probe step's files for these cells: curvature.csv, theorem41.csv (empty without BN), probe.json."""
    probe = {"params": "all", "curvature": {"eig_k": 1, "eig_iters": 20, "eig_tol": 0.001, "eig_method": "lanczos"}}
    curv, t41 = data.checkpoint["curvature"], data.checkpoint["theorem41"]
    for (cell, seed), rows in curv[curv.cell.isin(cells)].groupby(["cell", "seed"]):
        out = root / cell / f"s{seed}"
        out.mkdir(parents=True)
        rows.drop(columns=["cell", "model", "variant", "lr", "seed", "diverged"]).to_csv(out / "curvature.csv",
                                                                                          index=False)
        bn = t41[(t41.cell == cell) & (t41.seed == seed)].drop(columns=["cell", "model", "variant", "lr", "seed",
                                                                        "diverged"])
        (out / "theorem41.csv").write_text(bn.to_csv(index=False) if len(bn) else "\n")  # as the probe step writes
        (out / "probe.json").write_text(json.dumps({"provenance": {"params": {"probe": probe}}}))


def test_render_figures_draws_the_curvature_figures_and_table_from_probe_files(tmp_path, quick_raw):
    quick_raw["train"]["grid"] = {k: v for k, v in quick_raw["train"]["grid"].items() if k.startswith("vgg")}
    quick_raw["train"]["seeds"]["n"] = 3
    quick_raw["figures"]["dpi"] = 30
    params = from_dict(quick_raw)
    cells = list(params.train.grid)
    _write_runs(tmp_path / "runs", synthetic(), cells)
    _write_probes(tmp_path / "probes", curvature_data(), cells)
    args = (params, tmp_path / "runs")
    first = render_figures(*args, tmp_path / "a", probes_root=tmp_path / "probes")
    render_figures(*args, tmp_path / "b", probes_root=tmp_path / "probes")
    names = [p.name for p in first]
    assert {"figx3_sharpness.png", "figx3_sharpness.svg", "figx4_theorem41.png", "figx4_theorem41.svg"} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    report = (tmp_path / "a" / "REPORT.md").read_text()
    assert "λ_max by Lanczos (≤ 20 Hessian-vector products, residual tol 0.001)" in report
    assert "the mini-batch of 32 images" in report and "### Curvature and Theorem 4.1 per cell" in report
    assert report.index("| vgg | standard | 0.1 | 3 |") < report.index("| vgg | bn | 0.1 | 3 |")
    # what the caption says about the eigen-solver follows the recorded params ("auto": power iteration for k = 1)
    auto = curvature_text({"params": "weights", "curvature": {"eig_method": "auto", "eig_k": 1, "eig_iters": 50,
                                                              "eig_tol": 1e-4}})
    assert auto.startswith("power iteration (≤ 50 Hessian-vector products per phase, relative-change tol 0.0001")
    assert auto.endswith("w.r.t. conv/linear weights only")
    assert curvature_text({"params": "all", "curvature": {"eig_method": "auto", "eig_k": 3, "eig_iters": 40,
                                                          "eig_tol": 1e-3}}).startswith("Lanczos (top 3, ≤ 40")

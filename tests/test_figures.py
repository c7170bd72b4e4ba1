"""Tests for bnflow.figures: every figure on small synthetic tidy tables (axes, scales, lines, bands, legends, ticks),
the numeric helpers against hand computations and pandas re-implementations, column checks, partial grids, the lr
scan, any set of variants, compact files and byte-identical re-renders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402

from bnflow.cli import build_parser  # noqa: E402
from bnflow.config import from_dict  # noqa: E402
from bnflow.errors import DataError  # noqa: E402
from bnflow.figures import FIGURES, render_figures  # noqa: E402
from bnflow.figures import (activations, curvature, extra, ics, landscape, style, theorem, thresholds,  # noqa: E402
                            training, variants)
from bnflow.figures.common import Drawn, Skip  # noqa: E402
from bnflow.figures.data import FigureData, curvature_text, grid_cells, load_lrscan  # noqa: E402
from bnflow.figures.palette import PAPER, variant_styles  # noqa: E402
from bnflow.figures.plots import eta_range, n_seeds_text, seed_summary  # noqa: E402
from bnflow.figures.render import REPORT_RST, draw_all  # noqa: E402
from bnflow.figures.report import Entry, Table, format_cell, report_markdown, report_rst  # noqa: E402
from bnflow.figures.select import (GRID_COLUMNS, Need, layer_title, layers_heading, pick_lrs,  # noqa: E402
                                   resolve_layers, waiting_cells)
from bnflow.figures.style import LR_STYLES, _log_label  # noqa: E402
from bnflow.io import RUN_TABLE  # noqa: E402
from bnflow.vocab import CELL_ID  # noqa: E402
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
              vgg_depth=13, checkpoint_steps=None, band="minmax", resnet_lrs=(), grid=None) -> FigureData:
    """Small tidy tables shaped like the train step's (3 seeds, 6 probed steps), drawn from a fixed generator.

    resnet_lrs: also a `resnet` image classifier (treated like VGG) at these lrs; grid: FigureData.grid rows.
    """
    rng = np.random.default_rng(0)
    t = {name: [] for name in ("metrics", "landscape", "ics", "act_channels", "act_units")}
    runs = []
    models = [("vgg", vgg_lrs, VGG_FACTORS, vgg_ics, vgg_act), ("dln", dln_lrs, DLN_FACTORS, (9, 17), (1, 11, 24)),
              ("resnet", resnet_lrs, VGG_FACTORS, (4, 8), (3, 9))]
    for model, lrs, factors, ics_layers, act_layers in models:
        for run in _runs(model, variants, lrs):
            runs.append(run | {"run_id": f"{run['variant']}-lr{run['lr']:g}-s{run['seed']}"})
            for step in range(0, 101, 10):
                u = rng.uniform(0.9, 1.1)
                acc = 0.1 + 0.8 * (1 - math.exp(-step / 30)) * u if model != "dln" else np.nan
                t["metrics"].append(run | {"step": step, "split": "train", "loss": 1e4 * math.exp(-step / 50) * u,
                                           "acc": acc})
                if model != "dln" and step % 50 == 0:
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
    extra_args = {} if grid is None else {"grid": grid}
    return FigureData(dense=dense, checkpoint=checkpoint, runs=pd.DataFrame(runs),
                      sources={"vgg": "synthetic 10-class images (prepare.source: synthetic), not CIFAR-10",
                               "dln": "synthetic regression y = Ax", "resnet": "synthetic 10-class images"},
                      depths={"vgg": vgg_depth, "dln": 25}, band=band, **extra_args)


COLOR = {v: c for v, (c, _, _) in PAPER.items()}


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
    # by relative depth even where the paper's number was recorded: #3 of 13 is 1.8 of 8, so #2, not VGG-11's #3
    assert resolve_layers((3, 11), (2, 3, 6, 8), 8, 13) == [(2, (3,)), (6, (11,))]
    assert resolve_layers((9, 10), (6,), 8, 13) == [(6, (9, 10))]
    assert resolve_layers((9, 17), (9, 17), 25, 25) == [(9, (9,)), (17, (17,))] and resolve_layers((1,), (), 8, 13) == []
    assert layer_title(5, (5,)) == "layer #5" and "paper's #9, #10" in layer_title(6, (9, 10))
    assert pick_lrs([0.01, 0.1, 0.5], (0.1, 0.5)) == [0.5, 0.1] and pick_lrs([0.2], (0.1,)) == [0.2]
    assert landscape.training_times(np.arange(0, 101, 10)) == [0, 20, 40, 60, 80, 100]
    assert n_seeds_text([3, 3]) == "n = 3 seeds per curve" and n_seeds_text([2, 3]) == "n = 2–3 seeds per curve"
    assert _log_label(1e5) == "$10^{5}$" and _log_label(20) == "20" and _log_label(2e-5) == "$2\\times10^{-5}$"
    assert layers_heading([(3, (3,)), (6, (11,))]) == "layers #3 and #6 (for the paper's #3, #11)"
    assert layers_heading([(9, (9,)), (17, (17,))]) == "layers #9 and #17"
    assert layers_heading([(6, (11,))]) == "layer #6 (for the paper's #11)"


def test_tick_helpers_bracket_the_data_by_hand():
    assert style.log_ticks(4950, 17000) == [2000, 5000, 10000, 20000]  # 1-2-5 within two decades
    assert style.log_ticks(0.3, 3) == [0.2, 0.5, 1, 2, 5]
    assert style.log_ticks(2, 2) == [1, 2, 5]  # one value on a nice number: a step each side
    assert style.log_ticks(1e5, 1e9) == [1e5, 1e6, 1e7, 1e8, 1e9]
    assert style.log_ticks(1e-8, 1e9) == [1e-8, 1e-5, 1e-2, 1e1, 1e4, 1e7, 1e10]  # every 3rd power: <= 8 ticks
    assert style.linear_ticks(0.07, 0.93) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert style.linear_ticks(0, 380) == [0, 100, 200, 300, 400]
    assert style.tick_labels([2000, 5000, 10000, 20000]) == ["2000", "5000", "10000", "20000"]
    assert style.tick_labels([1e5, 1e6]) == ["$10^{5}$", "$10^{6}$"]
    with pytest.raises(ValueError, match="log_ticks"):
        style.log_ticks(0, 1)


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
        assert {ln.get_color() for ln in thick(ax)} == {COLOR["standard"], COLOR["bn"]}
    # one entry per variant: the rows' titles name the lr (entries "Standard, lr 0.5" and "Standard, lr 0.1" would
    # look the same in one key)
    assert [t.get_text() for t in out.fig.legends[0].get_texts()] == ["Standard", "BatchNorm"]
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
    edges = [ln for ln in a.get_lines() if math.isclose(ln.get_linewidth(), 0.9) and ln.get_color() == COLOR["bn"]]
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
    with pytest.raises(DataError, match=r"table landscape\.csv\.gz: missing column.*grad_change"):
        landscape.fig04_landscape_vgg(broken)
    empty = FigureData(dense={})
    assert all(isinstance(spec.draw(empty), Skip) for spec in FIGURES)


# ------------------------------------------------------------------- issue 14: legends, ticks, headings, labels
def legends_of(fig) -> list:
    """Every legend of a figure: the figure's, its subfigures' (recursively) and its panels'."""
    found, queue = [], [fig]
    while queue:  # in drawing order: the figure's, then its subfigures' top to bottom
        f = queue.pop(0)
        found += list(f.legends)
        queue += list(getattr(f, "subfigs", []))
    return found + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def key_look(handle) -> tuple:
    """What a reader sees of a legend key: colour, dash pattern, marker (and fill), or a patch's colour."""
    if isinstance(handle, Line2D):
        return ("line", to_hex(handle.get_color(), keep_alpha=False), handle.get_linestyle(),
                str(handle._unscaled_dash_pattern), str(handle.get_marker()),
                to_hex(handle.get_markerfacecolor()) if handle.get_marker() not in ("None", "", None) else "",
                handle.get_linewidth() > 4)
    return ("patch", to_hex(handle.get_facecolor(), keep_alpha=True))


def legend_entries(fig) -> list[list[tuple[str, tuple]]]:
    """Per legend, its (label, look) entries (blank padding cells left out)."""
    return [[(t.get_text(), key_look(h)) for t, h in zip(leg.get_texts(), leg.legend_handles, strict=True)
             if t.get_text()] for leg in legends_of(fig)]


def assert_legends_unique(fig) -> None:
    """Within a legend every label is unique and every key looks different; across a figure's legends one label
    always has one look (a label reused in a per-model legend means the same thing)."""
    looks: dict[str, tuple] = {}
    for entries in legend_entries(fig):
        labels, keys = [lab for lab, _ in entries], [k for _, k in entries]
        assert len(set(labels)) == len(labels), labels
        assert len(set(keys)) == len(keys), f"two entries of one legend look alike: {entries}"
        for label, key in entries:
            assert looks.setdefault(label, key) == key, f"{label!r} looks different in two legends"


def data_span(ax, which: str) -> tuple[float, float] | None:
    lim = ax.dataLim
    lo, hi = (lim.y0, lim.y1) if which == "y" else (lim.x0, lim.x1)
    log = (ax.get_yscale() if which == "y" else ax.get_xscale()) == "log"
    if log and lo <= 0:
        lo = lim.minposy if which == "y" else lim.minposx
    return (lo, hi) if np.isfinite([lo, hi]).all() and lo <= hi and (not log or lo > 0) else None


def assert_ticks_cover(fig, which: str = "y") -> None:
    """Every data panel's view holds its data, and labelled ticks sit at or beyond both ends of the data (x: only log
    axes; linear x axes are steps or categories)."""
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.axison:
            continue
        span = data_span(ax, which)
        if span is None:
            continue
        axis = ax.yaxis if which == "y" else ax.xaxis
        log = axis.get_scale() == "log"
        if which == "x" and not log:
            continue
        vlo, vhi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
        close = (lambda a, b: a <= b * (1 + 1e-9)) if log else (lambda a, b: a <= b + 1e-9 * (abs(b) + 1))
        assert close(vlo, span[0]) and close(span[1], vhi), (ax.get_title(), which, span, (vlo, vhi))
        locs = axis.get_majorticklocs()  # what a draw would label, without the cost of drawing
        labels = axis.get_major_formatter().format_ticks(locs)
        ticks = [loc for loc, text in zip(locs, labels, strict=True) if text and vlo <= loc <= vhi]
        assert ticks and close(min(ticks), span[0]) and close(span[1], max(ticks)), (ax.get_title(), which, span,
                                                                                     ticks)


def broad() -> FigureData:
    """Synthetic data for every registered figure: two lrs per model, the paper's variants, curvature tables."""
    data = synthetic(variants=("standard", "bn", "noisy_bn", "l1", "l2", "linf"), vgg_lrs=(0.5, 0.1),
                     dln_lrs=(1e-6, 1e-7), checkpoint_steps=(0, 40, 100))
    curv = curvature_data(vgg_lrs=(0.5, 0.1), dln_lrs=(1e-6, 1e-7))
    return FigureData(dense=data.dense, checkpoint={**data.checkpoint, **curv.checkpoint}, runs=data.runs,
                      sources=data.sources, depths=data.depths, curvature_setup=curv.curvature_setup,
                      probe_batch=curv.probe_batch, lrscan=lrscan_tables())


def framed(out: Drawn) -> Drawn:
    """The figure as draw_all writes it (axes framed, caption added)."""
    with plt.rc_context(style.RC):
        style.frame_axes(out.fig)
        style.add_caption(out.fig, out.caption)
    return out


def test_every_figure_has_unique_legend_entries_and_ticks_covering_its_data():
    data = broad()
    drawn = 0
    for spec in FIGURES:
        out = spec.draw(data)
        if isinstance(out, Skip):
            continue
        drawn += 1
        framed(out)
        assert_legends_unique(out.fig)
        assert_ticks_cover(out.fig, "y")
        plt.close(out.fig)
    assert drawn >= 20


def test_figx1_one_lr_per_model_is_a_dot_strip_with_ticks_covering_the_data():
    out = framed(extra.figx_lr_sensitivity(synthetic()))  # the quick grid: one lr per model
    vgg, dln = out.fig.axes
    assert vgg.get_xscale() == "linear" and [t.get_text() for t in vgg.get_xticklabels()] == ["Standard", "BatchNorm"]
    assert "at lr 0.1 (the grid's only lr)" in vgg.get_title() and "at lr 1e-06" in dln.get_title()
    assert dln.get_yscale() == "log"
    assert_ticks_cover(out.fig, "y")  # the DLN loss (1e4·e^-2 ≈ 1350) lies between labelled ticks
    # the bar of a column is the centre over seeds: the geometric mean of the DLN's final losses
    m = synthetic().dense["metrics"]
    last = m[(m.model == "dln") & (m.variant == "bn") & (m.step == 100)].loss
    bars = [ln for ln in dln.get_lines() if ln.get_color() == COLOR["bn"]]
    assert bars[0].get_ydata()[0] == pytest.approx(np.exp(np.log(last).mean()))
    several = framed(extra.figx_lr_sensitivity(synthetic(vgg_lrs=(0.5, 0.1, 0.01))))
    ax = several.fig.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.1", "0.5"]
    assert_ticks_cover(several.fig, "x")
    assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]) == 2  # a line per variant over 3 lrs


def test_centres_by_hand():
    finals = pd.DataFrame({"variant": ["bn", "bn", "bn"], "lr": [0.1, 0.1, 0.5], "value": [1.0, 100.0, 4.0]})
    got = extra.centres(finals, log=True)
    assert got.centre.tolist() == pytest.approx([10.0, 4.0]) and got.n.tolist() == [2, 1]
    assert extra.centres(finals, log=False).centre.tolist() == pytest.approx([50.5, 4.0])


def test_per_model_legends_never_mix_two_models_runs():
    data = curvature_data(vgg_lrs=(0.5, 0.1))
    for out in (curvature.figx3_sharpness(data), theorem.figx4_theorem41(data),
                extra.figx_beta_vs_lr(synthetic(vgg_lrs=(0.5, 0.1)))):
        entries = legend_entries(out.fig)
        assert len(entries) == 2  # one legend per model block
        vgg, dln = ([lab for lab, _ in e] for e in entries)
        assert not any("1e-06" in lab for lab in vgg) and not any("lr 0.1" in lab for lab in dln)
        assert_legends_unique(out.fig)


def test_figx3_names_two_over_lr_outside_the_panels():
    out = curvature.figx3_sharpness(curvature_data())
    texts = [t for ax in out.fig.axes for t in ax.texts if t.get_text().startswith("2/lr")]
    assert len(texts) == 4 and all(t.get_position()[0] > 1 and t.get_ha() == "left" for t in texts)
    assert {t.get_text() for t in texts} == {"2/lr = 20", "2/lr = $2\\times10^{6}$"}


def test_figx4_axis_title_and_caption_say_what_the_ratio_is():
    out = theorem.figx4_theorem41(curvature_data())
    ratio = [ax for ax in out.fig.axes if ax.get_title().startswith("gradient ratio through BN")]
    assert ratio and all(ax.get_ylabel() == "‖g_y‖²/‖g_z‖², median over channels (log)" for ax in ratio)
    assert not any("reduction factor" in ax.get_ylabel() for ax in out.fig.axes)
    assert "exceeds 1 (BN grows the gradient) wherever γ > σ" in out.caption
    assert not any("reduction factor" in s.title for s in FIGURES)


def test_headings_name_the_layers_drawn_not_the_papers():
    quick = synthetic(variants=("standard", "bn", "noisy_bn"), vgg_act=(2, 3, 6, 8), vgg_ics=(3, 6), vgg_depth=8)
    assert activations.fig01c_activations(quick).title == (
        "distribution of one activation over time, standard vs BatchNorm, layers #2 and #6 (for the paper's #3, #11)")
    assert ics.fig03a_ics_vgg(quick).title.endswith("at layers #3 and #6 (for the paper's #5, #10) (ℓ2 difference, "
                                                    "cosine)")
    assert activations.fig08a_moment_change(quick).title.endswith("layers #2, #6 and #8 (for the paper's #2, #9, #13)")
    assert activations.fig09_dln_activations(quick).title.endswith("layers #1, #11 and #24")  # the paper's own
    for spec in FIGURES:  # registry titles never name layers: the layers drawn depend on params and data
        assert not re.search(r"#\d|layers? \d", spec.title), spec.title
    shallow = FigureData(dense=quick.dense, depths={"vgg": 8, "dln": 4})
    assert training.dln_loss_label(shallow) == "training loss ½Σ‖W₄⋯W₁x − Ax‖² (log)"


# ------------------------------------------------------------------------- issue 17: any set of variants, resnet
MADE_UP = ("alpha_norm", "beta_norm", "gamma_norm", "delta_norm", "epsilon_norm", "zeta_norm", "eta_norm",
           "theta_norm", "iota_norm")


def test_palette_gives_any_variants_distinct_stable_looks():
    known = ("standard", "bn", "noisy_bn", "noisy_standard", "l1", "l2", "linf", "group_norm", "layer_norm",
             "weight_norm", "batch_norm_no_affine")
    styles = variant_styles([*known, *MADE_UP])
    looks = [(s.color, str(s.dash)) for s in styles.values()]
    assert len(set(looks)) == len(looks) == len(known) + len(MADE_UP)
    # 11 known variants and 8 spare colours: 19 colours for 20 variants, so at most one colour is shared (by dash)
    assert len({s.color for s in styles.values()}) == len(looks) - 1
    assert variant_styles(reversed([*known, *MADE_UP])) == styles  # deterministic in the names, not their order
    assert styles["bn"].color == PAPER["bn"][0] and styles["bn"].dash == "-"  # the paper's looks are kept
    assert variant_styles(["bn"])["bn"] == styles["bn"]
    assert styles["alpha_norm"].label == "alpha_norm" and styles["group_norm"].label == "GroupNorm"
    alone = variant_styles(["standard", "my_plugin"])["my_plugin"]
    assert alone == variant_styles(["standard", "bn", "my_plugin"])["my_plugin"]  # a plug-in keeps its look


def test_nine_made_up_variants_on_three_models_stay_readable():
    data = synthetic(variants=MADE_UP, vgg_lrs=(0.1,), resnet_lrs=(0.1,))
    curv = curvature_data(variants=MADE_UP)
    data = FigureData(dense=data.dense, checkpoint=curv.checkpoint, runs=data.runs, sources=data.sources,
                      depths=data.depths, curvature_setup=curv.curvature_setup, probe_batch=curv.probe_batch)
    assert variants.beyond_paper(data)[:2] == ["dln alpha_norm", "dln beta_norm"]
    outs = {}
    for draw in (variants.figv1_variants_landscape, variants.figv2_variants_ics, variants.figv3_variants_activations,
                 curvature.figx3_sharpness, theorem.figx4_theorem41, extra.figx_lr_sensitivity,
                 extra.figx_beta_vs_lr):
        out = outs[draw.__name__] = framed(draw(data))
        assert isinstance(out, Drawn), draw.__name__
        assert_legends_unique(out.fig)
        assert_ticks_cover(out.fig, "y")
        for entries in legend_entries(out.fig):
            if any(lab.startswith("alpha_norm") for lab, _ in entries):  # a variant legend: one entry per variant
                assert sum(lab.split(",")[0] in MADE_UP for lab, _ in entries) == len(MADE_UP), draw.__name__
    v1 = outs["figv1_variants_landscape"]
    titles = [leg.get_title().get_text() for leg in legends_of(v1.fig)]
    assert titles == ["VGG, lr 0.1", "Deep linear network, lr 1e-06", "ResNet, lr 0.1"]
    train = [ax for ax in v1.fig.axes if ax.get_title() == "training accuracy"]
    assert len(train) == 2 and all("accuracy" in ax.get_ylabel() for ax in train)  # resnet read like VGG
    many = [ln for ln in v1.fig.axes[1].get_lines() if math.isclose(ln.get_linewidth(), 0.5)]
    assert not many  # no single-seed lines with nine variants
    v3 = outs["figv3_variants_activations"]
    assert sum(1 for ax in v3.fig.axes if ax.get_title() in MADE_UP) == 3 * len(MADE_UP)


def test_variant_figures_skip_on_the_papers_grid_and_over_eta_by_hand():
    assert isinstance(variants.figv1_variants_landscape(broad()), Skip)
    base = {"cell": "c", "model": "vgg", "variant": "bn", "lr": 0.1, "seed": 0, "diverged": False}
    land = pd.DataFrame([base | {"step": st, "eta": e, "loss": v} for st, e, v in
                         ((0, 1, 3.0), (0, 2, 5.0), (0, 4, 4.0), (10, 1, 2.0), (10, 2, 2.5))])
    assert variants.over_eta(land, "loss", "range").value.tolist() == [2.0, 0.5]
    assert variants.over_eta(land, "loss", "max").value.tolist() == [5.0, 2.5]
    with pytest.raises(ValueError, match="range or max"):
        variants.over_eta(land, "loss", "mean")


# ----------------------------------------------------------------------------------- issue 11: partial grids
def grid_frame(cells: dict[str, bool]) -> pd.DataFrame:
    rows = []
    for cell, present in cells.items():
        m = CELL_ID.match(cell)
        rows.append({"cell": cell, "model": m["model"], "variant": m["variant"], "lr": float(m["lr"]), "present": present,
                     "seeds": "0 1 2" if present else ""})
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))


def test_waiting_cells_by_hand():
    grid = grid_frame({"vgg-standard-lr0.1": True, "vgg-bn-lr0.1": False, "vgg-bn-lr0.5": False,
                       "vgg-bn-lr0.01": False, "dln-bn-lr1e-06": False})
    assert waiting_cells(grid, Need(("vgg",), ("standard", "bn"), {"vgg": (0.1, 0.5)})) == ["vgg-bn-lr0.1",
                                                                                         "vgg-bn-lr0.5"]
    assert waiting_cells(grid, Need(("vgg",), ("bn",), {"vgg": (0.1,)}, first_lr=True)) == ["vgg-bn-lr0.1"]
    assert waiting_cells(grid, Need()) == ["dln-bn-lr1e-06", "vgg-bn-lr0.01", "vgg-bn-lr0.1", "vgg-bn-lr0.5"]
    assert waiting_cells(grid, Need(cells=False, lrscan=True)) == []
    lp = Need(("vgg",), ("standard", "bn", "l1"), {"vgg": (0.1,)}, requires=("l1",))
    assert waiting_cells(grid, lp) == []  # no l1 cell: the figure is never drawn, so it waits for none
    with_l1 = pd.concat([grid, grid_frame({"vgg-l1-lr0.1": False})], ignore_index=True)
    assert waiting_cells(with_l1, lp) == ["vgg-bn-lr0.1", "vgg-l1-lr0.1"]
    assert waiting_cells(grid.iloc[:0], Need()) == []
    beyond = Need(None, None, {"vgg": (0.1,), "dln": (1e-6,)}, first_lr=True, beyond_paper=True)
    assert waiting_cells(grid, beyond) == []  # the paper's variants only: the figure is never drawn, waits for none
    extended = pd.concat([grid, grid_frame({"resnet-group_norm-lr0.1": False})], ignore_index=True)
    assert waiting_cells(extended, beyond) == ["dln-bn-lr1e-06", "resnet-group_norm-lr0.1", "vgg-bn-lr0.1"]


def metrics_only(data: FigureData) -> FigureData:
    """The data as a training job with dense probes off writes it (metrics.csv.gz only)."""
    data.dense.update({k: v.iloc[:0] for k, v in data.dense.items() if k != "metrics"})
    return data


def _write_runs(root: Path, data: FigureData, cells: list[str]) -> None:
    """The train step's files for these cells: run.json, metrics.csv.gz and the dense probe tables (gzip, as the
    train step writes them: RUN_TABLE)."""
    m = data.dense["metrics"]
    for (cell, seed), rows in m[m.cell.isin(cells)].groupby(["cell", "seed"]):
        run = root / cell / f"s{seed}"
        run.mkdir(parents=True)
        r = rows.iloc[0]
        (run / "run.json").write_text(json.dumps({
            "cell": cell, "model": r.model, "variant": r.variant, "lr": r.lr, "seed": int(seed), "diverged": False,
            "run_id": f"{r.variant}-lr{r.lr:g}-s{seed}", "status": "completed", "diverged_at_step": None,
            "n_steps": 100, "step_budget": 100, "wall_s": 1.0, "data": {"source": "synthetic"}}))
        rows[["step", "split", "loss", "acc"]].to_csv(run / RUN_TABLE.format("metrics"), index=False)
        for name in ("landscape", "ics", "act_channels", "act_units"):
            t = data.dense[name]
            own = t[(t.cell == cell) & (t.seed == seed)].drop(columns=["cell", "model", "variant", "lr", "seed",
                                                                        "diverged"])
            if len(own):
                own.to_csv(run / RUN_TABLE.format(name), index=False)


def test_render_figures_writes_pngs_svgs_and_report_byte_identically(tmp_path, quick_raw):
    quick_raw["train"]["grid"] = {k: v for k, v in quick_raw["train"]["grid"].items() if k.startswith("vgg")}
    quick_raw["train"]["seeds"]["n"] = 3
    quick_raw["figures"]["dpi"] = 30
    quick_raw["train"]["probes"]["vgg"]["every"] = 0  # dense probes off: only the training figures
    params = from_dict(quick_raw)
    _write_runs(tmp_path / "runs", metrics_only(synthetic()), list(params.train.grid))
    (tmp_path / "claims.md").write_text("# Claims\n\n- **C1** (primary): BN trains faster — **supported**.\n")
    args = (params, tmp_path / "runs")
    first = render_figures(*args, tmp_path / "a", claims=tmp_path / "claims.md")
    second = render_figures(*args, tmp_path / "b", probes_root=tmp_path / "no-probes", claims=tmp_path / "claims.md")
    names = [p.name for p in first]
    assert names == ["REPORT.md", "fig01_accuracy.png", "fig01_accuracy.svg", "figx1_lr_sensitivity.png",
                     "figx1_lr_sensitivity.svg"]
    assert names == [p.name for p in second]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    png = tmp_path / "a" / "fig01_accuracy.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and Image.open(png).mode == "P"  # quantised to a palette
    svg = (tmp_path / "a" / "fig01_accuracy.svg").read_text()
    assert "<text" in svg and "training step" in svg  # text stays text (svg.fonttype none), not glyph paths
    report = (tmp_path / "a" / "REPORT.md").read_text()
    assert "![Fig 1a–b: training and test accuracy, standard vs BatchNorm](fig01_accuracy.png)" in report
    assert "synthetic 10-class images" in report and "**C1** (primary): BN trains faster" in report
    assert "- Fig 2 (`fig02_noisy_bn`): no VGG noisy_bn runs in the grid." in report
    with pytest.raises(DataError, match="claims"):
        render_figures(*args, tmp_path / "c", claims=tmp_path / "missing.md")


def test_a_partial_grid_draws_the_present_cells_and_names_the_absent_ones(tmp_path, quick_raw):
    quick_raw["figures"]["dpi"] = 30
    quick_raw["train"]["seeds"]["n"] = 3
    for model in ("vgg", "dln"):
        quick_raw["train"]["probes"][model]["every"] = 0  # dense probes off: only the training figures draw
    quick_raw["train"]["grid"] = {
        "vgg-standard-lr0.1": {"model": "vgg", "variant": "standard", "lr": 0.1},
        "vgg-bn-lr0.1": {"model": "vgg", "variant": "bn", "lr": 0.1},
        "vgg-bn-lr0.5": {"model": "vgg", "variant": "bn", "lr": 0.5},
        "dln-standard-lr1e-06": {"model": "dln", "variant": "standard", "lr": 1e-6},
        "dln-bn-lr1e-06": {"model": "dln", "variant": "bn", "lr": 1e-6}}
    params = from_dict(quick_raw)
    _write_runs(tmp_path / "runs", metrics_only(synthetic()), ["vgg-standard-lr0.1", "vgg-bn-lr0.1"])  # rest: absent
    grid = grid_cells(params, tmp_path / "runs")
    assert grid.present.tolist() == [True, True, False, False, False]
    render_figures(params, tmp_path / "runs", tmp_path / "out")
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "2 of 5 grid cells present" in report
    assert "| vgg-bn-lr0.1 | vgg | bn | 0.1 | present | 0 1 2 |" in report
    assert "| dln-bn-lr1e-06 | dln | bn | 1e-06 | not run yet |  |" in report.replace("| — |", "|  |")
    # Fig 1 draws lr 0.1 and says that it waits for the lr-0.5 cell; the DLN figures wait for both DLN cells
    fig1 = report[report.index("### Fig 1a–b"):report.index("Files: [fig01_accuracy.png]")]
    assert "Not run yet, so not drawn here (this figure waits for them): vgg-bn-lr0.5." in fig1
    assert "- [Fig 1a–b](#fig01_accuracy) (`fig01_accuracy`): drawn without vgg-bn-lr0.5." in report
    assert ("- Fig 10a–c (`fig10_landscape_dln`): no dln landscape probes for standard, bn (dense probes off and no "
            "probe step). Waits for (not run yet): dln-bn-lr1e-06, dln-standard-lr1e-06.") in report
    assert "- Fig 5 (`fig05_lp_training`): no l1, l2 or linf runs in the grid." in report  # not in this grid at all
    # a present cell must hold every seed
    for f in (tmp_path / "runs" / "vgg-bn-lr0.1" / "s2").iterdir():
        f.unlink()
    (tmp_path / "runs" / "vgg-bn-lr0.1" / "s2").rmdir()
    with pytest.raises(DataError, match="vgg-bn-lr0.1/s2"):
        render_figures(params, tmp_path / "runs", tmp_path / "out2")


# ---------------------------------------------------------------------------------- issue 11: the lr scan
def lrscan_tables() -> dict[str, pd.DataFrame]:
    """scan.csv and thresholds.csv rows as the lrscan step writes them: VGG 2 variants x 2 seeds, DLN 1 x 1."""
    scan, th = [], []
    vgg_lrs = (0.01, 0.1, 1.0, 10.0)
    ok = {("standard", 0): (1, 1, 0, 0), ("standard", 1): (1, 0, 1, 0), ("bn", 0): (1, 1, 1, 1), ("bn", 1): (0, 0, 0, 0)}
    for (variant, seed), flags in ok.items():
        for lr, good in zip(vgg_lrs, flags, strict=True):
            scan.append({"model": "vgg", "variant": variant, "lr": lr, "seed": seed, "steps": 30,
                         "diverged": lr == 10.0 and not good, "loss0": 2.3, "final_loss": 1.0 if good else 2.3,
                         "trainable": bool(good)})
    th += [{"model": "vgg", "variant": "standard", "seed": 0, "max_trainable_lr": 0.1, "first_failing_lr": 1.0},
           {"model": "vgg", "variant": "standard", "seed": 1, "max_trainable_lr": 0.01, "first_failing_lr": 0.1},
           {"model": "vgg", "variant": "bn", "seed": 0, "max_trainable_lr": 10.0, "first_failing_lr": math.nan},
           {"model": "vgg", "variant": "bn", "seed": 1, "max_trainable_lr": math.nan, "first_failing_lr": 0.01}]
    for lr, good in ((1e-6, True), (1e-4, False)):
        scan.append({"model": "dln", "variant": "bn", "lr": lr, "seed": 0, "steps": 40, "diverged": not good,
                     "loss0": 1e4, "final_loss": 1e3, "trainable": good})
    th.append({"model": "dln", "variant": "bn", "seed": 0, "max_trainable_lr": 1e-6, "first_failing_lr": 1e-4})
    return {"scan": pd.DataFrame(scan), "thresholds": pd.DataFrame(th)}


def test_threshold_interval_by_hand():
    assert thresholds.threshold_interval(0.1, 1.0, 0.004, 25) == (0.1, 1.0, "between")
    assert thresholds.threshold_interval(10.0, math.nan, 0.004, 25) == (10.0, 25, "all")
    assert thresholds.threshold_interval(math.nan, 0.01, 0.004, 25) == (0.004, 0.01, "none")


def test_lr_threshold_figure_and_table():
    data = FigureData(dense={}, lrscan=lrscan_tables(), lrscan_waiting=("resnet",),
                      lrscan_setup={"vgg": "30 steps per short run", "dln": "40 steps per short run"})
    out = thresholds.figx5_lr_thresholds(data)
    vgg, dln = out.fig.axes
    assert [t.get_text() for t in vgg.get_yticklabels()] == ["Standard, seed 0", "Standard, seed 1",
                                                             "BatchNorm, seed 0", "BatchNorm, seed 1"]
    assert [t.get_text() for t in vgg.get_xticklabels()] == ["0.01", "0.1", "1", "10"]
    bars = [ln for ln in vgg.get_lines() if ln.get_linewidth() == 7]
    assert [tuple(b.get_xdata()) for b in bars] == [(0.1, 1.0), (0.01, 0.1), (10.0, 25.0), (0.004, 0.01)]
    dots = [c for c in vgg.collections if len(c.get_offsets())]
    open_ = [c for c in dots if c.get_facecolor()[0][:3].tolist() == [1, 1, 1]]
    # 16 scanned (variant, seed, lr): 8 failed, 3 of them by diverging (crosses), 5 open circles
    assert sum(len(c.get_offsets()) for c in dots) == 16 and sum(len(c.get_offsets()) for c in open_) == 5
    assert [t.get_text() for t in dln.get_yticklabels()] == ["BatchNorm"]  # one seed: no seed in the label
    assert "30 steps per short run" in out.caption and "VGG: largest trainable lr" == vgg.get_title()
    assert_legends_unique(out.fig)
    table = thresholds.thresholds_table(data)
    md = "\n".join(report_markdown([], header="h", claims_md=None, tables=[table]).splitlines())
    assert "| vgg | bn | 0 | 10 | none failed | 0.01, 0.1, 1, 10 |" in md
    assert "| vgg | bn | 1 | none trained | 0.01 | 0.01, 0.1, 1, 10 |" in md
    assert "| dln | bn | 0 | 1e-06 | 0.0001 | 1e-06, 0.0001 |" in md and "Not run yet: lrscan/resnet." in md
    assert data.waiting(Need(cells=False, lrscan=True)) == ["lrscan/resnet"]
    none = thresholds.figx5_lr_thresholds(FigureData(dense={}))
    assert isinstance(none, Skip) and "--lrscan-root" in none.reason
    assert thresholds.thresholds_table(FigureData(dense={})) is None


def test_load_lrscan_reads_present_model_folders(tmp_path):
    tables = lrscan_tables()
    folder = tmp_path / "lrscan" / "vgg"
    folder.mkdir(parents=True)
    for name in ("scan", "thresholds"):
        t = tables[name]
        t[t.model == "vgg"].to_csv(folder / f"{name}.csv", index=False)
    got, absent = load_lrscan(tmp_path / "lrscan", ["vgg", "dln"])
    assert absent == ["dln"] and len(got["scan"]) == 16 and set(got["thresholds"].model) == {"vgg"}
    (folder / "scan.csv").unlink()
    with pytest.raises(DataError, match=r"vgg/scan.csv: missing.*lrscan step \(vgg\)"):
        load_lrscan(tmp_path / "lrscan", ["vgg"])


# -------------------------------------------------------------------------------- report, captions, CLI, size
def test_draw_all_keeps_rc_settings_local(tmp_path):
    before = dict(plt.rcParams)
    draw_all(FigureData(dense={}), tmp_path, 30)
    assert dict(plt.rcParams) == before


def test_snakemake_report_captions_are_generated_from_the_registry():
    expected = report_rst([Entry(s.name, s.paper, s.title, about=s.about) for s in FIGURES])
    assert (ROOT / REPORT_RST).read_text() == expected, "regenerate: python -c \"from bnflow.figures.render " \
                                                        "import write_report_rst; write_report_rst()\""
    for spec in FIGURES:  # a caption says what the figure shows, in sentences, not just a title
        assert f'"{spec.name}"' in expected and len(spec.about) > 100 and spec.about.endswith("."), spec.name
    line = next(ln for ln in expected.splitlines() if ln.startswith('    "figx4_theorem41"'))
    assert line.startswith('    "figx4_theorem41": "**Extra 4: Theorem 4.1 on real BN layers')
    # Snakemake renders the file with Jinja2, then as reStructuredText: every caption must come out as valid rst
    # (|x| would be a substitution reference and *x* emphasis: the generator escapes them)
    jinja2 = pytest.importorskip("jinja2")
    docutils_core = pytest.importorskip("docutils.core")
    tricky = report_rst([Entry("t", "Extra 9", "t", about="The gap |lhs − rhs| and a*b, g_y and ‖g_z‖².")])
    cases = [(expected, s.name, s.paper) for s in FIGURES] + [(tricky, "t", "The gap |lhs − rhs| and a*b")]
    for text, name, shown in cases:
        snakemake = type("Snakemake", (), {"wildcards": type("Wildcards", (), {"name": name})})
        rst = jinja2.Template(text).render(snakemake=snakemake)
        tree = docutils_core.publish_doctree(rst, settings_overrides={"halt_level": 2, "warning_stream": False})
        assert shown in tree.astext(), name


def test_cli_passes_probes_claims_and_the_lr_scan():
    a = build_parser().parse_args(["figures", "--params", "p.yaml", "--runs-root", "r", "--probes-root", "q",
                                   "--claims", "c.md", "--output", "o", "--lrscan-root", "s"])
    assert (a.runs_root, a.probes_root, a.claims, a.output) == (Path("r"), Path("q"), Path("c.md"), Path("o"))
    assert a.lrscan_root == Path("s")


def test_svg_rasterizes_dense_panels_only(tmp_path):
    sparse = training.fig01_accuracy(synthetic())
    with plt.rc_context(style.RC):
        style.save(sparse.fig, tmp_path, "sparse", 30)
    assert "<image" not in (tmp_path / "sparse.svg").read_text()  # few points: vectors are smaller
    fig, ax = plt.subplots()
    xs = np.arange(3000.0)
    ax.plot(xs, np.sin(xs), linewidth=0.5, zorder=style.Z_SEED)  # a paper-scale single-seed line
    ax.plot(xs, np.cos(xs), linewidth=1.7, label="centre")
    assert style.dense_vertices(ax) == 3000
    with plt.rc_context(style.RC):
        style.save(fig, tmp_path, "dense", 30)
    svg = (tmp_path / "dense.svg").read_text()
    assert svg.count("<image") == 1 and svg.count("<path") >= 1  # the seed line as an image, the centre a path


# ------------------------------------------------------------------------------- curvature and Theorem 4.1 (extra)
CKPT_STEPS = (0, 100, 1000)
LANCZOS = "Lanczos (≤ 20 Hessian-vector products, residual tol 0.001), w.r.t. all trainable parameters"


def curvature_data(variants=("standard", "bn"), vgg_lrs=(0.1,), dln_lrs=(1e-6,), vgg_bn_layers=(1, 2, 3),
                   dln_bn_layers=tuple(range(1, 25))) -> FigureData:
    """Checkpoint-wise curvature and theorem41_layers tables shaped like the probe step's (3 seeds, 3 checkpoints)."""
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
                    continue  # no BN layer: the probe step writes no theorem41_layers rows
                for layer in layers:
                    red = np.sort(rng.uniform(0.5, 2.0, size=3))
                    t41.append(run | {"step": step, "layer": layer, "n_channels": 3, "reduction_median": red[1],
                                      "reduction_min": red[0], "reduction_max": red[2],
                                      "rel_gap_max": rng.uniform(1e-6, 1e-5), "rel_gap_exact_max": rng.uniform(5e-8, 2e-7),
                                      "eps_ratio_max": rng.uniform(1e-5, 1e-4)})
    checkpoint = {"curvature": pd.DataFrame(curv)}
    if t41:
        checkpoint["theorem41_layers"] = pd.DataFrame(t41)
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
    assert [ax.get_title() for ax in axes] == ["λ_max (top Hessian eigenvalue)", "batch sharpness gᵀHg / ‖g‖²"] * 2
    for ax in axes:
        assert ax.get_yscale() == "log" and ax.get_xlabel().startswith("training step (checkpoints")
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "100", "1000"]
    for ax in axes[:2]:  # VGG: 2 variants x 2 lrs, colour = variant, line style = lr (0.5 solid, 0.1 dashed)
        assert len(thick(ax)) == 4 and len(polys(ax)) == 4
        assert {(ln.get_color(), ln.get_linestyle()) for ln in thick(ax)} == {
            (COLOR[v], LR_STYLES[k]) for v in ("standard", "bn") for k in (0, 1)}
        assert hlines(ax, "--") == {4.0, 20.0}  # 2/lr for lr 0.5 and 0.1
    assert all(hlines(ax, "--") == {2e6} for ax in axes[2:])
    bn = curv[(curv.model == "vgg") & (curv.variant == "bn") & (curv.lr == 0.1)]
    centre = [ln for ln in thick(axes[0]) if ln.get_color() == COLOR["bn"] and ln.get_linestyle() == "--"]
    np.testing.assert_allclose(centre[0].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(centre[0].get_ydata(), geo_mean_by_step(bn, "lambda_max"))
    vgg, dln = ([lab for lab, _ in e] for e in legend_entries(out.fig))
    assert "BatchNorm, lr 0.1" in vgg and "Standard, lr 1e-06" in dln and vgg.count("2/lr") == dln.count("2/lr") == 1
    assert [leg.get_title().get_text() for leg in legends_of(out.fig)] == ["VGG", "Deep linear network"]
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
    centre = [ln for ln in thick(out.fig.axes[1]) if ln.get_color() == COLOR["bn"]][0]
    bn = curv[(curv.model == "vgg") & (curv.variant == "bn")]
    np.testing.assert_allclose(centre.get_ydata(), geo_mean_by_step(bn[~hit[bn.index]], "batch_sharpness"))
    assert "batch sharpness ≤ 0 at 1 of 18 run checkpoints" in out.caption


def test_figx4_ratio_per_layer_and_the_identitys_gap():
    data = curvature_data(variants=("standard", "bn", "noisy_bn"))
    t41 = data.checkpoint["theorem41_layers"]
    out = theorem.figx4_theorem41(data)
    assert isinstance(out, Drawn)
    by_title = {ax.get_title(): ax for ax in out.fig.axes}
    red = by_title["gradient ratio through BN: BatchNorm, lr 0.1"]
    assert "gradient ratio through BN: Noisy BN, lr 0.1" in by_title
    assert "gradient ratio through BN: BatchNorm, lr 1e-06" in by_title
    assert red.get_yscale() == "log" and len(thick(red)) == 3 and hlines(red, ":") == {1.0}  # VGG: 3 BN layers
    # layer 2's centre: geometric mean over seeds of each run's median over channels (the table's reduction_median)
    bn = t41[(t41.model == "vgg") & (t41.variant == "bn") & (t41.layer == 2)]
    layer2 = [ln for ln in thick(red) if ln.get_color() == theorem.LAYER_CMAP(0.5)]
    np.testing.assert_allclose(layer2[0].get_ydata(), geo_mean_by_step(bn, "reduction_median"))
    assert len(thick(by_title["gradient ratio through BN: BatchNorm, lr 1e-06"])) == 6  # 24 DLN layers: 6 shown
    gaps = [ax for ax in out.fig.axes if ax.get_title().startswith("Theorem 4.1")]
    assert len(gaps) == 2 and all(ax.get_yscale() == "log" for ax in gaps)
    assert hlines(gaps[0], ":") == {round(float(np.finfo(np.float32).eps), 12)}
    assert len(thick(gaps[0])) == len(thick(gaps[1])) == 4  # (paper, exact) x (bn, noisy_bn)
    paper = [ln for ln in thick(gaps[0]) if ln.get_marker() == "o" and ln.get_color() == COLOR["bn"]][0]
    ref = t41[(t41.model == "vgg") & (t41.variant == "bn")].groupby(["seed", "step"], as_index=False).rel_gap_max.max()
    np.testing.assert_allclose(paper.get_ydata(), geo_mean_by_step(ref, "rel_gap_max"))
    assert "BN layers shown: 6 of 24 (#1, #6, #10, #15, #19, #24)" in out.caption
    assert "BN layers shown: all (#1, #2, #3)" in out.caption and "ε-exact identity" in out.caption
    assert theorem.spread_layers(range(1, 9)) == list(range(1, 9))
    vgg_key = [lab for lab, _ in legend_entries(out.fig)[0]]
    assert vgg_key == ["BatchNorm, lr 0.1", "Noisy BN, lr 0.1", "gap: paper's formula (1/m, ε folded into σ)",
                       "gap: ε-exact identity"]


def test_curvature_figures_skip_without_data_and_name_missing_columns():
    assert isinstance(theorem.figx4_theorem41(curvature_data(variants=("standard",))), Skip)
    assert isinstance(curvature.figx3_sharpness(synthetic()), Skip)
    data = curvature_data()
    broken = FigureData(dense={}, checkpoint={**data.checkpoint,
                                              "curvature": data.checkpoint["curvature"].drop(columns="lambda_max")})
    with pytest.raises(DataError, match="curvature.csv: missing column.*lambda_max"):
        curvature.figx3_sharpness(broken)
    broken = FigureData(dense={}, checkpoint={
        "theorem41_layers": data.checkpoint["theorem41_layers"].drop(columns="rel_gap_exact_max")})
    with pytest.raises(DataError, match="theorem41_layers.csv: missing column.*rel_gap_exact_max"):
        theorem.figx4_theorem41(broken)


def test_curvature_summary_and_its_markdown_table_by_hand():
    run = {"cell": "vgg-bn-lr0.1", "model": "vgg", "variant": "bn", "lr": 0.1, "diverged": False}
    std = run | {"cell": "vgg-standard-lr0.1", "variant": "standard"}
    curv = pd.DataFrame([r | {"seed": s, "step": st, "lambda_max": lam, "batch_sharpness": 1.0, "eig_iters": 9,
                              "eig_converged": ok}
                         for r in (run, std) for s, st, lam, ok in ((0, 0, 99.0, True), (0, 10, 30.0, False),
                                                                    (1, 0, 99.0, True), (1, 10, 50.0, True))])
    # per-layer medians 1, 2 (seed 0) and 4 (seed 1): the summary's median over layers, checkpoints and runs is 2
    t41 = pd.DataFrame([run | {"seed": s, "step": 10, "layer": layer, "n_channels": 4, "reduction_median": red,
                               "reduction_min": red / 2, "reduction_max": red * 2, "rel_gap_max": g,
                               "rel_gap_exact_max": g / 100, "eps_ratio_max": 1e-5}
                        for s, layer, g, red in ((0, 1, 1e-5, 1.0), (0, 2, 3e-5, 2.0), (1, 1, 2e-5, 4.0))])
    data = FigureData(dense={}, checkpoint={"curvature": curv, "theorem41_layers": t41})
    summary = curvature.curvature_summary(data)
    assert summary.variant.tolist() == ["standard", "bn"]  # legend order
    bn = summary.iloc[1]
    # last checkpoint λ_max·lr/2: 30·0.05 = 1.5 and 50·0.05 = 2.5, median 2.0; one of four solves unconverged
    assert bn.eos_ratio == pytest.approx(2.0) and bn.converged == "3/4" and bn.runs == 2
    assert (bn.rel_gap, bn.rel_gap_exact, bn.reduction) == pytest.approx((3e-5, 3e-7, 2.0))
    assert np.isnan(summary.iloc[0].rel_gap) and summary.iloc[0].eos_ratio == pytest.approx(2.0)
    table = curvature.summary_table(data)
    md = report_markdown([], header="h", claims_md=None, tables=[table])
    assert "| vgg | bn | 0.1 | 2 | 2 | 3/4 | 3e-05 | 3e-07 | 2 |" in md
    assert "| vgg | standard | 0.1 | 2 | 2 | 3/4 | — | — | — |" in md and "(#curvature_summary)" in md
    assert "median over layers of per-layer medians" in md and "then the median over layers" in md
    assert [format_cell(v) for v in (1.23456e-7, 0.25, float("nan"), 3, "a|b")] == ["1.23e-07", "0.25", "—", "3",
                                                                                 "a\\|b"]
    assert curvature.summary_table(FigureData(dense={})) is None
    assert "## Tables" not in report_markdown([], header="h", claims_md=None, tables=[])
    assert isinstance(table, Table)


def _write_probes(root: Path, data: FigureData, cells: list[str]) -> None:
    """The probe step's files for these cells: curvature.csv, theorem41_layers.csv (empty without BN), probe.json."""
    probe = {"params": "all", "curvature": {"eig_k": 1, "eig_iters": 20, "eig_tol": 0.001, "eig_method": "lanczos"}}
    curv, t41 = data.checkpoint["curvature"], data.checkpoint["theorem41_layers"]
    for (cell, seed), rows in curv[curv.cell.isin(cells)].groupby(["cell", "seed"]):
        out = root / cell / f"s{seed}"
        out.mkdir(parents=True)
        rows.drop(columns=["cell", "model", "variant", "lr", "seed", "diverged"]).to_csv(out / "curvature.csv",
                                                                                          index=False)
        bn = t41[(t41.cell == cell) & (t41.seed == seed)].drop(columns=["cell", "model", "variant", "lr", "seed",
                                                                        "diverged"])
        (out / "theorem41_layers.csv").write_text(bn.to_csv(index=False) if len(bn) else "\n")  # as the step writes
        (out / "probe.json").write_text(json.dumps({"provenance": {"params": {"probe": probe}}}))


def test_render_figures_draws_the_curvature_figures_and_tables_from_probe_and_lrscan_files(tmp_path, quick_raw):
    quick_raw["train"]["grid"] = {k: v for k, v in quick_raw["train"]["grid"].items() if k.startswith("vgg")}
    quick_raw["train"]["seeds"]["n"] = 3
    quick_raw["figures"]["dpi"] = 30
    quick_raw["train"]["probes"]["vgg"]["every"] = 0  # no dense probes: the checkpoint-wise figures are the point
    params = from_dict(quick_raw)
    cells = list(params.train.grid)
    _write_runs(tmp_path / "runs", metrics_only(synthetic()), cells)
    _write_probes(tmp_path / "probes", curvature_data(), cells)
    scan = lrscan_tables()
    (tmp_path / "lrscan" / "vgg").mkdir(parents=True)  # the DLN's scan is not run yet
    for name, t in scan.items():
        t[t.model == "vgg"].to_csv(tmp_path / "lrscan" / "vgg" / f"{name}.csv", index=False)
    args = (params, tmp_path / "runs")
    kw = {"probes_root": tmp_path / "probes", "lrscan_root": tmp_path / "lrscan"}
    first = render_figures(*args, tmp_path / "a", **kw)
    render_figures(*args, tmp_path / "b", **kw)
    names = [p.name for p in first]
    assert {"figx3_sharpness.png", "figx3_sharpness.svg", "figx4_theorem41.png", "figx4_theorem41.svg",
            "figx5_lr_thresholds.png", "figx5_lr_thresholds.svg"} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    report = (tmp_path / "a" / "REPORT.md").read_text()
    assert "λ_max by Lanczos (≤ 20 Hessian-vector products, residual tol 0.001)" in report
    assert "the mini-batch of 32 images" in report and "### Curvature and Theorem 4.1 per cell" in report
    assert report.index("| vgg | standard | 0.1 | 3 |") < report.index("| vgg | bn | 0.1 | 3 |")
    assert "### Largest trainable learning rate per variant and seed (lr scan)" in report
    assert "| vgg | standard | 1 | 0.01 | 0.1 | 0.01, 0.1, 1, 10 |" in report
    assert "waits for them): lrscan/dln." in report and "drawn without lrscan/dln" in report
    # what the caption says about the eigen-solver follows the recorded params ("auto": power iteration for k = 1)
    auto = curvature_text({"params": "weights", "curvature": {"eig_method": "auto", "eig_k": 1, "eig_iters": 50,
                                                              "eig_tol": 1e-4}})
    assert auto.startswith("power iteration (≤ 50 Hessian-vector products per phase, relative-change tol 0.0001")
    assert auto.endswith("w.r.t. conv/linear weights only")
    assert curvature_text({"params": "all", "curvature": {"eig_method": "auto", "eig_k": 3, "eig_iters": 40,
                                                          "eig_tol": 1e-3}}).startswith("Lanczos (top 3, ≤ 40")

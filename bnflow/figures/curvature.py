"""Beyond the paper: curvature at the checkpoints (λ_max, batch sharpness vs 2/lr) and Theorem 4.1 on real BN layers.

λ_max is the largest eigenvalue of the Hessian H of the probed batch's loss, batch sharpness gᵀHg/‖g‖² the curvature
along that batch's gradient. Gradient descent on a quadratic is stable only while the curvature stays below 2/lr;
the edge-of-stability literature finds λ_max rising to about 2/lr and hovering there (Cohen et al. 2021,
arXiv:2103.00065; batch sharpness: Andreyev & Beneventano 2024, arXiv:2412.20553). Theorem 4.1 (paper §4.1,
PROTOCOL §8) is an identity for ‖g_y‖² through one BN channel; bnflow.curvature.theorems computes both sides and
this module only draws and tabulates them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize

from bnflow.figures.common import Drawn, Skip, curve_note, model_phrase, ordered, rows_of
from bnflow.figures.data import FigureData
from bnflow.figures.plots import figure_legend, seed_curves, variant_label
from bnflow.figures.report import Table
from bnflow.figures.style import STEP_CMAP, VARIANT_COLORS, lr_style
from bnflow.results import RUN_COLUMNS, require_columns

MODELS = {"vgg": "VGG", "dln": "Deep linear network"}
ALL_LAYERS, MAX_LAYERS = 8, 6  # a network with more BN layers than ALL_LAYERS shows MAX_LAYERS, evenly spread
MAX_COLS = 3  # panels per row of Fig x4 (the paper grid has 4 VGG cells with BN: bn at 3 lrs, noisy_bn)
FP32_EPS = float(np.finfo(np.float32).eps)  # the checked tensors are fp32: gaps near this are float precision
GREY = "#777777"
# Sequential layer colours; the light yellow end of viridis is cut off, it vanishes on white.
LAYER_CMAP = ListedColormap(colormaps[STEP_CMAP](np.linspace(0.0, 0.85, 256)))
GAP_SERIES = (("rel_gap", "o", "paper's formula"), ("rel_gap_exact", "x", "ε-exact identity"))
BN_MODE = "BN in train mode (batch statistics), fp32 with TF32 off"


def checkpoint_axis(ax: Axes, steps: Sequence[float]) -> dict[float, int]:
    """Place the checkpoints at evenly spaced x positions labelled with their steps (0, 100, 1000, 5000 and 15000
    overlap on a linear step axis); returns step -> position."""
    uniq = sorted({float(s) for s in steps})
    ax.set_xticks(range(len(uniq)), [f"{s:g}" for s in uniq])
    ax.set_xlim(-0.3, len(uniq) - 0.7)
    ax.set_xlabel("training step (checkpoints, evenly spaced)")
    return {s: i for i, s in enumerate(uniq)}


def spread_layers(layers: Sequence[int], k: int = MAX_LAYERS, keep_all: int = ALL_LAYERS) -> list[int]:
    """All layers when there are at most `keep_all`, else `k` of them evenly spread (first and last included)."""
    uniq = sorted({int(v) for v in layers})
    if len(uniq) <= keep_all:
        return uniq
    return [uniq[i] for i in np.unique(np.round(np.linspace(0, len(uniq) - 1, k)).astype(int))]


def layer_reduction(theorem41: pd.DataFrame) -> pd.DataFrame:
    """The Lipschitz reduction factor ‖g_y‖²/‖g_z‖² of each BN layer: median over its channels, per run and step.

    Args:
        theorem41: rows with the run columns and step, layer, reduction (NaN where g_z = 0: left out).

    Returns:
        one row per (run, step, layer) with the run columns, step, layer, reduction.
    """
    require_columns(theorem41, (*RUN_COLUMNS, "step", "layer", "reduction"), "theorem41 for the reduction factor")
    return theorem41.groupby([*RUN_COLUMNS, "step", "layer"], as_index=False, sort=True).agg(
        reduction=("reduction", "median"))


def max_gaps(theorem41: pd.DataFrame) -> pd.DataFrame:
    """Largest relative gap of Theorem 4.1 over a run's BN layers and channels, per run and step.

    Returns:
        one row per (run, step): the run columns, step, rel_gap (paper's formula), rel_gap_exact (ε-exact identity).
    """
    require_columns(theorem41, (*RUN_COLUMNS, "step", "rel_gap", "rel_gap_exact"), "theorem41 for the gaps")
    return theorem41.groupby([*RUN_COLUMNS, "step"], as_index=False, sort=True).agg(
        rel_gap=("rel_gap", "max"), rel_gap_exact=("rel_gap_exact", "max"))


def converged(flags: pd.Series) -> pd.Series:
    """eig_converged as booleans (a CSV column with missing values is read as text)."""
    return flags.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def _curve(ax: Axes, d: pd.DataFrame, y: str, *, marker: str, **style) -> int:
    """seed_curves on a log axis, with markers on the centre line (a handful of checkpoints per run)."""
    n = seed_curves(ax, d, x="x", y=y, log=True, **style)
    ax.get_lines()[-1].set(marker=marker, markersize=4)  # the centre line, drawn last by seed_curves
    return n


def _reference(ax: Axes, y: float, text: str | None, *, linestyle: str, label: str | None = None) -> None:
    """A grey horizontal reference line, named at its right end (and in the legend when `label` is given)."""
    ax.axhline(y, color=GREY, linewidth=0.9, linestyle=linestyle, label=label or "_reference", zorder=1)
    if text:
        ax.text(0.99, y, text, transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7, color=GREY)


def _sharpness_note(data: FigureData, model: str, curv: pd.DataFrame) -> str:
    n, ok, iters = len(curv), converged(curv.eig_converged), curv.eig_iters.astype(int)
    solver = data.curvature_setup.get(model, "an unrecorded eigen-solver")
    conv = f"all {n} converged" if ok.all() else f"{int((~ok).sum())} of {n} did not converge (λ_max a lower bound)"
    note = (f"{model_phrase(data, model)}; H on {data.probe_batch.get(model, 'the probed batch')}; λ_max by "
            f"{solver}: {iters.min()}–{iters.max()} products per checkpoint, {conv}")
    for col, what in (("lambda_max", "λ_max"), ("batch_sharpness", "batch sharpness")):
        k = int((curv[col].astype(float) <= 0).sum())
        if k:
            note += f"; {what} ≤ 0 at {k} of {n} run checkpoints (no logarithm: not drawn)"
    return note


def figx3_sharpness(data: FigureData) -> Drawn | Skip:
    """λ_max and batch sharpness over training against 2/lr, one row per model (colour: variant, style: lr)."""
    panels = [(m, data.table("curvature", m, checkpoint=True)) for m in MODELS]
    panels = [(m, t) for m, t in panels if not t.empty]
    if not panels:
        return Skip("no curvature tables (no probe step outputs, or probe.curvature.enabled is false)")
    fig, axes = plt.subplots(len(panels), 2, figsize=(9.0, 3.4 * len(panels)), squeeze=False, sharey="row",
                             layout="constrained")
    counts, notes = [], []
    for r, ((ax_l, ax_b), (model, curv)) in enumerate(zip(axes, panels, strict=True)):
        pos = checkpoint_axis(ax_l, curv.step)
        checkpoint_axis(ax_b, curv.step)
        curv = curv.assign(x=curv.step.astype(float).map(pos))
        lrs = sorted({float(v) for v in curv.lr}, reverse=True)
        for variant in ordered(curv.variant):
            for lr in lrs:
                d = rows_of(curv, [variant], [lr])
                if d.empty:
                    continue
                style = {"color": VARIANT_COLORS[variant], "label": variant_label(variant, lr), "band": data.band,
                         "linestyle": lr_style(lr, lrs)}
                # non-positive curvature has no logarithm: NaN leaves a gap (counted in the caption)
                counts.append(_curve(ax_l, d.assign(y=d.lambda_max.where(d.lambda_max > 0)), "y", marker="o",
                                     **style))
                _curve(ax_b, d.assign(y=d.batch_sharpness.where(d.batch_sharpness > 0)), "y", marker="o", **style)
        name = MODELS[model]
        for ax in (ax_l, ax_b):
            for lr in lrs:  # one legend entry, listed after the curves
                _reference(ax, 2.0 / lr, f"2/lr = {2.0 / lr:g}", linestyle="--",
                           label="2/lr" if r == len(panels) - 1 and ax is ax_b else None)
            ax.set_yscale("log")
        ax_l.set_title(f"{name}: λ_max (top Hessian eigenvalue)")
        ax_b.set_title(f"{name}: batch sharpness gᵀHg / ‖g‖²")
        ax_l.set_ylabel("curvature of the batch loss (log)")
        notes.append(_sharpness_note(data, model, curv))
    figure_legend(fig)
    caption = ("Extra: curvature of the training loss at the saved checkpoints, against the stability bound 2/lr "
               "(dashed). λ_max is the largest eigenvalue of the Hessian H of the loss on the batch of the "
               "checkpoint's step, batch sharpness gᵀHg/‖g‖² the curvature along that batch's gradient g; "
               "gradient descent with step lr is stable on a quadratic only where the curvature is below 2/lr, and "
               f"at the edge of stability λ_max hovers near 2/lr (Cohen et al. 2021). {BN_MODE}. "
               f"{'. '.join(notes)}. {curve_note(counts, data.band, log=True)}")
    return Drawn(fig, caption)


def _cells(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """The (variant, lr) pairs present, in palette order and largest lr first."""
    pairs = {(str(v), float(lr)) for v, lr in zip(frame.variant, frame.lr, strict=True)}
    order = {v: i for i, v in enumerate(ordered([v for v, _ in pairs]))}
    return sorted(pairs, key=lambda p: (order[p[0]], -p[1]))


def _panel_grid(n: int) -> tuple[int, int]:
    """(rows, columns) of a grid holding n panels, at most MAX_COLS wide."""
    return -(-n // MAX_COLS), min(n, MAX_COLS)


def _theorem_block(sub, data: FigureData, model: str, t41: pd.DataFrame) -> tuple[list[int], list[int]]:
    """One model's part of Fig x4: a reduction-factor panel per (variant, lr), then the gap panel, in a grid."""
    red, gaps, cells = layer_reduction(t41), max_gaps(t41), _cells(t41)
    layers = spread_layers(red.layer)
    norm = Normalize(min(layers), max(max(layers), min(layers) + 1))
    grid = list(sub.subplots(*_panel_grid(len(cells) + 1), squeeze=False).flat)
    for ax in grid[len(cells) + 1:]:
        ax.remove()
    axes = grid[:len(cells) + 1]
    lrs = sorted({lr for _, lr in cells}, reverse=True)
    counts = []
    for ax, (variant, lr) in zip(axes, cells, strict=False):
        pos = checkpoint_axis(ax, t41.step)
        d = rows_of(red, [variant], [lr])
        for layer in layers:
            one = d[d.layer == layer]
            counts.append(seed_curves(ax, one.assign(x=one.step.astype(float).map(pos)), x="x", y="reduction",
                                      color=LAYER_CMAP(norm(layer)), label=f"_layer {layer}", band=data.band,
                                      log=True))
        _reference(ax, 1.0, None, linestyle=":")  # curves cross it often: named in the caption, not on the panel
        ax.set_yscale("log")
        ax.set_title(f"‖g_y‖²/‖g_z‖²: {variant_label(variant, lr)}")
        ax.set_ylabel("reduction factor, median over channels (log)")
        if ax is not axes[0]:
            ax.sharey(axes[0])
    sub.colorbar(ScalarMappable(norm, LAYER_CMAP), ax=axes[:-1], ticks=layers, label="BN layer #", aspect=30)
    ax_g = axes[-1]
    pos = checkpoint_axis(ax_g, t41.step)
    for variant, lr in cells:
        d = rows_of(gaps, [variant], [lr])
        d = d.assign(x=d.step.astype(float).map(pos))
        for col, marker, what in GAP_SERIES:
            _curve(ax_g, d.assign(y=d[col].where(d[col] > 0)), "y", marker=marker, color=VARIANT_COLORS[variant],
                   label=f"{variant_label(variant, lr)}: {what}", band=data.band, linestyle=lr_style(lr, lrs))
    _reference(ax_g, FP32_EPS, f"fp32 machine ε = {FP32_EPS:.2g}", linestyle=":")
    ax_g.set_yscale("log")
    ax_g.set_title("Theorem 4.1: |lhs − rhs|, relative")
    ax_g.set_ylabel("max over layers and channels (log)")
    sub.suptitle(MODELS[model], fontsize=9.5, fontweight="bold")
    return counts, layers


def figx4_theorem41(data: FigureData) -> Drawn | Skip:
    """Theorem 4.1 per BN layer over training: the reduction factor ‖g_y‖²/‖g_z‖², and the identity's gap."""
    rows = [(m, data.table("theorem41", m, checkpoint=True)) for m in MODELS]
    rows = [(m, t) for m, t in rows if not t.empty]
    if not rows:
        return Skip("no BatchNorm layer in any probed run (theorem41 tables empty or absent)")
    shapes = [_panel_grid(len(_cells(t)) + 1) for _, t in rows]
    heights = [3.4 * n + 0.3 for n, _ in shapes]  # + the model's heading
    fig = plt.figure(figsize=(3.7 * max(c for _, c in shapes) + 0.8, sum(heights)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=heights))
    counts, notes = [], []
    for sub, (model, t41) in zip(subs, rows, strict=True):
        c, layers = _theorem_block(sub, data, model, t41)
        counts += c
        shown = "all" if len(layers) == t41.layer.nunique() else f"{len(layers)} of {t41.layer.nunique()}"
        notes.append(f"{model_phrase(data, model)}; batch: {data.probe_batch.get(model, 'the probed batch')}; BN "
                     f"layers shown: {shown} (#{', #'.join(map(str, layers))}); max ε/σ² "
                     f"{t41.eps_ratio.astype(float).max():.2g}")
    figure_legend(fig, ncols=4)  # two cells per legend row: (paper's formula, ε-exact) each
    caption = ("Extra: Theorem 4.1 (paper §4.1) on every channel of every BN layer at the saved checkpoints, from one "
               f"forward/backward on the checkpoint step's batch ({BN_MODE}; both sides summed in float64). g_z and "
               "g_y: the loss gradient w.r.t. a channel's BN output and input, m values each. Panels ‖g_y‖²/‖g_z‖²: "
               "the Lipschitz reduction factor, median over a layer's channels (colour: layer; dotted: 1, gradient "
               "norm unchanged). By the theorem it equals (γ²/σ²)·‖Pg_z‖²/‖g_z‖² with P a projection, so it is at "
               "most γ²/σ²: values above 1 need γ > σ. Panels 'Theorem 4.1': the largest relative gap |lhs − rhs| / "
               "((γ²/σ²)‖g_z‖²) over layers and channels; circles: the paper's right side (1/m, σ with ε folded "
               "in), off by terms of size ε/σ²; crosses: the ε-exact identity, which a correct implementation meets "
               f"to float precision (dotted: fp32 machine ε). {'. '.join(notes)}. "
               f"{curve_note(counts, data.band, log=True)}")
    return Drawn(fig, caption)


SUMMARY_COLUMNS = {
    "model": "model", "variant": "variant", "lr": "lr", "runs": "runs",
    "eos_ratio": "λ_max / (2/lr), last checkpoint (median over runs)",
    "converged": "λ_max converged",
    "rel_gap": "Thm 4.1 max rel. gap, paper's formula",
    "rel_gap_exact": "Thm 4.1 max rel. gap, ε-exact",
    "reduction": "median ‖g_y‖²/‖g_z‖²",
}


def curvature_summary(data: FigureData) -> pd.DataFrame:
    """Per model, variant and lr: λ_max·lr/2 at each run's last checkpoint (median over runs), solver convergence,
    and Theorem 4.1's largest gaps and median reduction factor over all checkpoints, layers and channels.

    Returns:
        one row per cell with any curvature or theorem41 rows, columns SUMMARY_COLUMNS (NaN / "" where a cell has
        no such rows: no BN layer), sorted by model, variant (palette order), lr (largest first).
    """
    out = []
    for model in MODELS:
        curv = data.table("curvature", model, checkpoint=True)
        t41 = data.table("theorem41", model, checkpoint=True)
        for variant, lr in _cells(pd.concat([curv[["variant", "lr"]], t41[["variant", "lr"]]])):
            c, t = rows_of(curv, [variant], [lr]), rows_of(t41, [variant], [lr])
            last = c.sort_values("step").groupby("seed").tail(1)
            ok = converged(c.eig_converged)
            out.append({"model": model, "variant": variant, "lr": lr,
                        "runs": int(pd.concat([c.seed, t.seed]).nunique()),
                        "eos_ratio": float((last.lambda_max.astype(float) * lr / 2).median()) if len(c) else np.nan,
                        "converged": f"{int(ok.sum())}/{len(c)}" if len(c) else "",
                        "rel_gap": float(t.rel_gap.max()) if len(t) else np.nan,
                        "rel_gap_exact": float(t.rel_gap_exact.max()) if len(t) else np.nan,
                        "reduction": float(t.reduction.median()) if len(t) else np.nan})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def summary_table(data: FigureData) -> Table | None:
    """REPORT.md's table of curvature_summary, or None without curvature or theorem41 rows."""
    summary = curvature_summary(data)
    if summary.empty:
        return None
    text = ("From the checkpoint-wise probes. λ_max / (2/lr) = lr·λ_max/2 reaches 1 at the edge of stability. "
            "Theorem 4.1 gaps are |lhs − rhs| / ((γ²/σ²)‖g_z‖²), maximised over checkpoints, runs, layers and "
            "channels (the ε-exact identity should sit near fp32 precision, 1e-7); the reduction factor "
            "‖g_y‖²/‖g_z‖² is the median over the same rows. Empty cells: the variant has no BN layer.")
    return Table("curvature_summary", "Curvature and Theorem 4.1 per cell", text,
                 summary.rename(columns=SUMMARY_COLUMNS))

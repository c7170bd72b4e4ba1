"""Beyond the paper: curvature at the checkpoints (λ_max, batch sharpness vs 2/lr), and the table of curvature and
Theorem 4.1 per cell (the Theorem 4.1 figure is in bnflow.figures.theorem).

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
from matplotlib.axes import Axes

from bnflow.figures.common import (Drawn, Skip, curve_note, look, many, model_name, model_phrase, ordered, rows_of,
                                   seeds_drawn, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.plots import figure_legend, seed_curves
from bnflow.figures.report import Table
from bnflow.figures.select import model_order
from bnflow.figures.style import Z_REFERENCE, _log_label

GREY = "#777777"
BN_MODE = "BN in train mode (batch statistics), fp32 with TF32 off"


def checkpoint_axis(ax: Axes, steps: Sequence[float]) -> dict[float, int]:
    """Place the checkpoints at evenly spaced x positions labelled with their steps (0, 100, 1000, 5000 and 15000
    overlap on a linear step axis); returns step -> position."""
    uniq = sorted({float(s) for s in steps})
    ax.set_xticks(range(len(uniq)), [f"{s:g}" for s in uniq])
    ax.set_xlim(-0.3, len(uniq) - 0.7)
    ax.set_xlabel("training step (checkpoints, evenly spaced)")
    return {s: i for i, s in enumerate(uniq)}


def converged(flags: pd.Series) -> pd.Series:
    """eig_converged as booleans (a CSV column with missing values is read as text)."""
    return flags.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def checkpoint_curve(ax: Axes, d: pd.DataFrame, y: str, *, marker: str, **style) -> int:
    """seed_curves on a log axis, with markers on the centre line (a handful of checkpoints per run)."""
    n = seed_curves(ax, d, x="x", y=y, log=True, **style)
    ax.get_lines()[-1].set(marker=marker, markersize=4)  # the centre line, drawn last by seed_curves
    return n


def reference(ax: Axes, y: float, text: str | None, *, linestyle: str, label: str | None = None) -> None:
    """A grey horizontal reference line, named just outside the panel's right edge, where no data is (and in the
    legend when `label` is given)."""
    ax.axhline(y, color=GREY, linewidth=0.9, linestyle=linestyle, label=label or "_reference", zorder=Z_REFERENCE)
    if text:
        ax.text(1.01, y, text, transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=7, color=GREY,
                clip_on=False)


def cells(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """The (variant, lr) pairs present, in legend order and largest lr first."""
    pairs = {(str(v), float(lr)) for v, lr in zip(frame.variant, frame.lr, strict=True)}
    order = {v: i for i, v in enumerate(ordered([v for v, _ in pairs]))}
    return sorted(pairs, key=lambda p: (order[p[0]], -p[1]))


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
    """λ_max and batch sharpness over training against 2/lr: a block per model with its own legend (colour:
    variant, line style: lr when a model has several)."""
    panels = [(m, data.table("curvature", m, checkpoint=True)) for m in data.models("curvature", checkpoint=True)]
    panels = [(m, t) for m, t in panels if not t.empty]
    if not panels:
        return Skip("no curvature tables (no probe step outputs, or probe.curvature.enabled is false)")
    fig = plt.figure(figsize=(9.4, 3.9 * len(panels)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(panels), 1))
    counts, notes, lights = [], [], []
    for sub, (model, curv) in zip(subs, panels, strict=True):
        ax_l, ax_b = sub.subplots(1, 2, sharey=True)
        pos = checkpoint_axis(ax_l, curv.step)
        checkpoint_axis(ax_b, curv.step)
        curv = curv.assign(x=curv.step.astype(float).map(pos))
        lrs = sorted({float(v) for v in curv.lr}, reverse=True)
        pairs = cells(curv)
        light = many(len(pairs))
        lights.append(light)
        for variant, lr in pairs:
            d = rows_of(curv, [variant], [lr])
            style = {"label": variant_label(data, variant, lr), "band": data.band, "light": light,
                     **look(data, variant, lr, lrs)}
            # non-positive curvature has no logarithm: NaN leaves a gap (counted in the caption)
            counts.append(checkpoint_curve(ax_l, d.assign(y=d.lambda_max.where(d.lambda_max > 0)), "y", marker="o",
                                           **style))
            checkpoint_curve(ax_b, d.assign(y=d.batch_sharpness.where(d.batch_sharpness > 0)), "y", marker="o",
                             **style)
        for ax in (ax_l, ax_b):
            for lr in lrs:  # one legend entry, listed after the curves
                reference(ax, 2.0 / lr, f"2/lr = {_log_label(2.0 / lr)}", linestyle="--",
                          label="2/lr" if ax is ax_b else None)
            ax.set_yscale("log")
        ax_l.set_title("λ_max (top Hessian eigenvalue)")
        ax_b.set_title("batch sharpness gᵀHg / ‖g‖²")
        ax_l.set_ylabel("curvature of the batch loss (log)")
        figure_legend(sub, title=model_name(model), title_fontproperties={"weight": "bold", "size": 9.5})
        notes.append(_sharpness_note(data, model, curv))
    caption = ("Extra: curvature of the training loss at the saved checkpoints, against the stability bound 2/lr "
               "(dashed, value at the right edge). λ_max is the largest eigenvalue of the Hessian H of the loss on "
               "the batch of the checkpoint's step, batch sharpness gᵀHg/‖g‖² the curvature along that batch's "
               "gradient g; gradient descent with step lr is stable on a quadratic only where the curvature is below "
               f"2/lr, and at the edge of stability λ_max hovers near 2/lr (Cohen et al. 2021). {BN_MODE}. "
               f"{'. '.join(notes)}. {curve_note(counts, data.band, log=True, single=seeds_drawn(lights))}")
    return Drawn(fig, caption)


SUMMARY_COLUMNS = {
    "model": "model", "variant": "variant", "lr": "lr", "runs": "runs",
    "eos_ratio": "λ_max / (2/lr), last checkpoint (median over runs)",
    "converged": "λ_max converged",
    "rel_gap": "Thm 4.1 max rel. gap, paper's formula",
    "rel_gap_exact": "Thm 4.1 max rel. gap, ε-exact",
    "reduction": "‖g_y‖²/‖g_z‖², median over layers of per-layer medians",
}


def curvature_summary(data: FigureData) -> pd.DataFrame:
    """Per model, variant and lr: λ_max·lr/2 at each run's last checkpoint (median over runs), solver convergence,
    Theorem 4.1's largest gaps over all checkpoints, runs and BN layers, and the median over (run, checkpoint,
    layer) rows of each layer's median ‖g_y‖²/‖g_z‖² over its channels (theorem41_layers.reduction_median).

    Returns:
        one row per cell with any curvature or theorem41_layers rows, columns SUMMARY_COLUMNS (NaN / "" where a
        cell has no such rows: no BN layer), sorted by model, variant (legend order), lr (largest first).
    """
    out = []
    models = sorted(set(data.models("curvature", checkpoint=True)) | set(data.models("theorem41_layers",
                                                                                      checkpoint=True)),
                    key=model_order)
    for model in models:
        curv = data.table("curvature", model, checkpoint=True)
        t41 = data.table("theorem41_layers", model, checkpoint=True)
        for variant, lr in cells(pd.concat([curv[["variant", "lr"]], t41[["variant", "lr"]]])):
            c, t = rows_of(curv, [variant], [lr]), rows_of(t41, [variant], [lr])
            last = c.sort_values("step").groupby("seed").tail(1)
            ok = converged(c.eig_converged)
            out.append({"model": model, "variant": variant, "lr": lr,
                        "runs": int(pd.concat([c.seed, t.seed]).nunique()),
                        "eos_ratio": float((last.lambda_max.astype(float) * lr / 2).median()) if len(c) else np.nan,
                        "converged": f"{int(ok.sum())}/{len(c)}" if len(c) else "",
                        "rel_gap": float(t.rel_gap_max.max()) if len(t) else np.nan,
                        "rel_gap_exact": float(t.rel_gap_exact_max.max()) if len(t) else np.nan,
                        "reduction": float(t.reduction_median.median()) if len(t) else np.nan})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def summary_table(data: FigureData) -> Table | None:
    """REPORT.md's table of curvature_summary, or None without curvature or theorem41_layers rows."""
    summary = curvature_summary(data)
    if summary.empty:
        return None
    text = ("From the checkpoint-wise probes. λ_max / (2/lr) = lr·λ_max/2 reaches 1 at the edge of stability. "
            "Theorem 4.1 gaps are |lhs − rhs| / ((γ²/σ²)‖g_z‖²), maximised over checkpoints, runs, BN layers and "
            "channels (the ε-exact identity should sit near fp32 precision, 1e-7). ‖g_y‖²/‖g_z‖² is the squared "
            "gradient-norm ratio through a BN layer (below 1: BN shrinks the gradient, above 1: it grows it, "
            "possible where γ > σ): each layer's median over its channels, then the median over layers, "
            "checkpoints and runs. Empty cells: the variant has no BN layer.")
    return Table("curvature_summary", "Curvature and Theorem 4.1 per cell", text,
                 summary.rename(columns=SUMMARY_COLUMNS))

"""Figures the paper does not have but the grid allows: lr sensitivity, and β_eff against the stability bound 2/lr.

β_eff vs 2/lr: gradient descent on a quadratic with curvature β is stable only for lr < 2/β; the "edge of
stability" literature (Cohen et al. 2021, arXiv:2103.00065) finds sharpness hovering at 2/lr during training.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from bnflow.figures.common import PROBE_MODE, TEST_MODE, Drawn, Skip, curve_note, model_phrase, ordered
from bnflow.figures.data import FigureData
from bnflow.figures.landscape import beta_eff, gradient_rows
from bnflow.figures.plots import figure_legend, seed_curves, variant_label
from bnflow.figures.style import VARIANT_COLORS, VARIANT_LABELS, lr_style
from bnflow.results import RUN_COLUMNS, require_columns


def final_values(metrics: pd.DataFrame, split: str, y: str) -> pd.DataFrame:
    """Each run's value of `y` at its last logged step of `split`; diverged runs and non-finite values left out.

    Args:
        metrics: metrics rows with the run columns and step, split, `y`.

    Returns:
        one row per kept run: the run columns, step, value.
    """
    require_columns(metrics, (*RUN_COLUMNS, "step", "split", y), "metrics")
    d = metrics[(metrics.split == split) & ~metrics.diverged.astype(bool)].sort_values("step")
    last = d.groupby([*RUN_COLUMNS], as_index=False, sort=True).tail(1)
    last = last.assign(value=last[y].astype(float))[[*RUN_COLUMNS, "step", "value"]]
    return last[np.isfinite(last.value)].sort_values([*RUN_COLUMNS], ignore_index=True)


def figx_lr_sensitivity(data: FigureData) -> Drawn | Skip:
    """Final test accuracy (VGG) and final training loss (DLN) against the lr, one line per variant."""
    panels = []
    for model, split, y in (("vgg", "test", "acc"), ("dln", "train", "loss")):
        finals = final_values(data.table("metrics", model), split, y)
        if not finals.empty:
            panels.append((model, finals))
    if not panels:
        return Skip("no finished runs")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False, layout="constrained")
    notes = []
    for ax, (model, finals) in zip(axes[0], panels, strict=True):
        for variant in ordered(finals.variant):
            d = finals[finals.variant == variant]
            color = VARIANT_COLORS[variant]
            ax.scatter(d.lr, d.value, color=color, s=12, alpha=0.5, linewidths=0)
            per_lr = d.groupby("lr").value
            centre = np.exp(per_lr.apply(lambda v: np.log(v).mean())) if model == "dln" else per_lr.mean()
            ax.plot(centre.index, centre.to_numpy(), color=color, marker="o", markersize=4, linewidth=1.5,
                    label=VARIANT_LABELS[variant])
        ax.set_xscale("log")
        lrs = np.sort(finals.lr.unique().astype(float))
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(lrs[0] / 2.5, lrs[-1] * 2.5)
        ax.set_xlabel("learning rate (log)")
        if model == "vgg":
            ax.set_ylabel("final test accuracy (fraction correct)")
            ax.set_title("VGG: test accuracy at the end of training")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("final training loss (log)")
            ax.set_title("Deep linear network: final training loss")
        diverged = sorted(data.runs[(data.runs.model == model) & data.runs.diverged.astype(bool)].run_id) \
            if not data.runs.empty else []
        notes.append(f"{model_phrase(data, model)}" + (f" (diverged, left out: {', '.join(diverged)})"
                                                        if diverged else ""))
    figure_legend(fig)
    caption = (f"Extra: lr sensitivity. VGG: test accuracy at the last evaluation; DLN: training loss at the last "
               f"logged step. Dots: single runs; line: mean over seeds per lr (geometric mean for the DLN loss). {'; '.join(notes)}. {TEST_MODE}")
    return Drawn(fig, caption)


def figx_beta_vs_lr(data: FigureData) -> Drawn | Skip:
    """β_eff over training with the bound 2/lr, and each run's median β_eff against 2/lr."""
    rows = []
    for model in ("vgg", "dln"):
        land, source = data.probes("landscape", model)
        land = gradient_rows(land)
        if not land.empty:
            rows.append((model, beta_eff(land), source))
    if not rows:
        return Skip("no landscape probes")
    fig, axes = plt.subplots(len(rows), 2, figsize=(9.0, 3.3 * len(rows)), squeeze=False, layout="constrained")
    counts, notes = [], []
    for r, ((ax_t, ax_s), (model, beta, source)) in enumerate(zip(axes, rows, strict=True)):
        lrs = sorted(beta.lr.unique(), reverse=True)
        for variant in ordered(beta.variant):
            for lr in lrs:
                d = beta[(beta.variant == variant) & (beta.lr == lr)]
                if d.empty:
                    continue
                counts.append(seed_curves(ax_t, d, x="step", y="beta", color=VARIANT_COLORS[variant],
                                          label=variant_label(variant, lr), band=data.band, log=True,
                                          linestyle=lr_style(lr, lrs)))
                med = d.groupby("seed").beta.median()
                ax_s.scatter(np.full(len(med), 2.0 / lr), med, color=VARIANT_COLORS[variant], s=16, alpha=0.8,
                             marker="o")
        for lr in lrs:
            ax_t.axhline(2.0 / lr, color="#777777", linewidth=0.8, linestyle=lr_style(lr, lrs))
        lim = np.array([min(2.0 / max(lrs), np.nanmin(beta.beta)), max(2.0 / min(lrs), np.nanmax(beta.beta))])
        ax_s.plot(lim, lim, color="#777777", linewidth=0.8, linestyle=":",
                  label="β_eff = 2/lr" if r == len(rows) - 1 else None)  # listed once, after the variants
        name = "VGG" if model == "vgg" else "DLN"
        for ax in (ax_t, ax_s):
            ax.set_yscale("log")
            ax.set_ylabel("β_eff (log)")
        ax_t.set_xlabel("training step")
        ax_t.set_title(f"{name}: β_eff over training (grey: 2/lr)")
        ax_s.set_xscale("log")
        ax_s.set_xlabel("2 / lr (log)")
        ax_s.set_title(f"{name}: median β_eff per run vs 2/lr")
        notes.append(f"{model_phrase(data, model)}; {source}")
    figure_legend(fig)
    caption = (f"Extra: effective β-smoothness (max over η of ‖∇L(θ − ηg) − g‖ / ‖ηg‖) against 2/lr, the largest "
               f"curvature gradient descent with that lr is stable on. {'; '.join(notes)}. Left: "
               f"{curve_note(counts, data.band, log=True)} Right: one dot per run (median over its probed steps). "
               f"{PROBE_MODE}")
    return Drawn(fig, caption)

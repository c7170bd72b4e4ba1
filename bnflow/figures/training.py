"""Training curves: Fig 1a–b (train/test accuracy, standard vs BN, two lrs) and Fig 5 (ℓp normalisations)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bnflow.figures.common import (LP_VARIANTS, PAPER_LRS, TEST_MODE, Drawn, Skip, curve_note, diverged_note,
                                   model_phrase, ordered, rows_of)
from bnflow.figures.data import FigureData, pick_lrs
from bnflow.figures.plots import figure_legend, seed_curves, variant_label
from bnflow.figures.style import VARIANT_COLORS, lr_style

FIG1_LRS = (0.1, 0.5)  # PROTOCOL §1 [paper]
ACC_LABEL = "accuracy (fraction correct)"
DLN_LOSS_LABEL = "training loss ½Σ‖W₂₅⋯W₁x − Ax‖² (log)"


def draw_train_curves(ax: Axes, rows, *, y: str, variants: list[str], lrs: list[float], band: str,
                      log: bool = False) -> list[int]:
    """One across-seed curve per (variant, lr) of mini-batch/full-batch training rows; returns the seed counts."""
    counts = []
    for variant in variants:
        for lr in lrs:
            d = rows_of(rows, [variant], [lr])
            if not d.empty:
                counts.append(seed_curves(ax, d, x="step", y=y, color=VARIANT_COLORS[variant],
                                          label=variant_label(variant, lr), band=band, log=log,
                                          linestyle=lr_style(lr, lrs)))
    return counts


def fig01_accuracy(data: FigureData) -> Drawn | Skip:
    """Fig 1a–b: mini-batch train accuracy and test accuracy vs step, standard vs BN, one column per lr."""
    metrics = rows_of(data.table("metrics", "vgg"), ["standard", "bn"])
    if metrics.empty:
        return Skip("no VGG standard or bn runs in the grid")
    lrs = pick_lrs(metrics.lr.unique(), FIG1_LRS)
    splits = [s for s in ("train", "test") if not rows_of(metrics[metrics.split == s], ["standard", "bn"], lrs).empty]
    fig, axes = plt.subplots(len(lrs), len(splits), figsize=(4.0 * len(splits) + 0.3, 2.9 * len(lrs) + 0.4),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    counts = []
    for i, lr in enumerate(lrs):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            d = metrics[metrics.split == split]
            counts += draw_train_curves(ax, d, y="acc", variants=ordered(d.variant), lrs=[lr], band=data.band)
            what = "(a) training (mini-batch)" if split == "train" else "(b) test"
            ax.set_title(f"{what} accuracy, lr {lr:g}")
            ax.set_xlabel("training step")
            ax.set_ylabel(ACC_LABEL)
            ax.set_ylim(-0.02, 1.02)
    figure_legend(fig, ncols=metrics.variant.nunique())  # one row per lr
    caption = (f"Fig 1a–b. {model_phrase(data, 'vgg')}; standard vs BatchNorm. {curve_note(counts, data.band)} "
               f"Train accuracy: the mini-batch of each logged step. {TEST_MODE}"
               f"{diverged_note(data, 'vgg', ['standard', 'bn'], lrs)}")
    return Drawn(fig, caption)


def fig05_lp_training(data: FigureData) -> Drawn | Skip:
    """Fig 5: training with ℓ1, ℓ2, ℓ∞ normalisation: VGG train accuracy and DLN train loss (log)."""
    panels = []
    for model, y in (("vgg", "acc"), ("dln", "loss")):
        metrics = data.table("metrics", model)
        metrics = metrics[metrics.split == "train"]
        if not rows_of(metrics, LP_VARIANTS).empty:
            lrs = pick_lrs(rows_of(metrics, LP_VARIANTS).lr.unique(), PAPER_LRS[model])
            panels.append((model, y, rows_of(metrics, ["standard", "bn", *LP_VARIANTS], lrs), lrs))
    if not panels:
        return Skip("no l1, l2 or linf runs in the grid")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.5), squeeze=False, layout="constrained")
    counts, notes = [], []
    for k, (ax, (model, y, rows, lrs)) in enumerate(zip(axes[0], panels, strict=True)):
        log = model == "dln"
        counts += draw_train_curves(ax, rows, y=y, variants=ordered(rows.variant), lrs=lrs, band=data.band, log=log)
        ax.set_xlabel("training step" + (" (full-batch GD)" if model == "dln" else ""))
        if log:
            ax.set_yscale("log")
            ax.set_ylabel(DLN_LOSS_LABEL)
            ax.set_title(f"({'ab'[k]}) Deep linear network: training loss")
        else:
            ax.set_ylabel(f"training (mini-batch) {ACC_LABEL}")
            ax.set_title(f"({'ab'[k]}) VGG: training accuracy")
        notes.append(model_phrase(data, model) + diverged_note(data, model, list(rows.variant.unique()), lrs))
    figure_legend(fig, ncols=max(p[2].variant.nunique() for p in panels))  # one row per model
    caption = (f"Fig 5. ℓp normalisations (mean-centred, divided by the ℓp norm of the uncentred activations). "
               f"{'; '.join(notes)}. {curve_note(counts, data.band, log=any(p[0] == 'dln' for p in panels))}")
    return Drawn(fig, caption)

"""Training curves: Fig 1a–b (train/test accuracy, standard vs BN, two lrs) and Fig 5 (ℓp normalisations)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bnflow.figures.common import (LP_VARIANTS, PAPER_LRS, TEST_MODE, Drawn, Skip, curve_note, diverged_note, look,
                                   many, model_phrase, ordered, rows_of, runs_name, seeds_drawn, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.plots import figure_legend, legend, seed_curves
from bnflow.figures.scales import REDUCED
from bnflow.figures.select import paper_lrs, pick_lrs

FIG1_LRS = (0.1, 0.5)  # PROTOCOL §1 [paper]
ACC_LABEL = "accuracy (fraction correct)"
SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def dln_loss_label(data: FigureData) -> str:
    """'training loss ½Σ‖W₂₅⋯W₁x − Ax‖² (log)', with the trained DLN's depth (params), not the paper's."""
    depth = data.depths.get("dln")
    last = f"W{str(depth).translate(SUBSCRIPT)}" if depth else "W_L"
    return f"training loss ½Σ‖{last}⋯W₁x − Ax‖² (log)"


def draw_train_curves(ax: Axes, data: FigureData, rows, *, y: str, variants: list[str], lrs: list[float],
                      log: bool = False, light: bool = False, with_lr: bool = True) -> list[int]:
    """One across-seed curve per (variant, lr) of mini-batch/full-batch training rows; returns the seed counts.

    Args:
        with_lr: legend labels name the lr; False where the panel's title names its one lr (then one legend entry
            per variant serves every panel).
    """
    counts = []
    for variant in variants:
        for lr in lrs:
            d = rows_of(rows, [variant], [lr])
            if not d.empty:
                label = variant_label(data, variant, lr if with_lr else None)
                counts.append(seed_curves(ax, d, x="step", y=y, label=label, band=data.band, log=log, light=light,
                                          **look(data, variant, lr, lrs)))
    return counts


def train_panel(ax: Axes, data: FigureData, model: str, variants: list[str], lrs: list[float], *,
                light: bool = False, title: str | None = None, with_lr: bool = True) -> list[int]:
    """The training curve of a model: mini-batch accuracy for image classifiers, the loss (log) for the DLN."""
    metrics = data.table("metrics", model)
    train = metrics[metrics.split == "train"]
    loss = model == "dln"
    counts = draw_train_curves(ax, data, train, y="loss" if loss else "acc", variants=variants, lrs=lrs, log=loss,
                               light=light, with_lr=with_lr)
    ax.set_title(title or f"training {'loss' if loss else 'accuracy'}")
    ax.set_xlabel("training step")
    ax.set_ylabel(dln_loss_label(data) if loss else f"training (mini-batch) {ACC_LABEL}")
    if loss:
        ax.set_yscale("log")
    return counts


def fig01_accuracy(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 1a–b: mini-batch train accuracy and test accuracy vs step, standard vs BN, one column per lr.

    Args:
        model: the VGG family drawn (bnflow.figures.scales: the paper's scale or the reduced one).
    """
    metrics = rows_of(data.table("metrics", model), ["standard", "bn"])
    if metrics.empty:
        return Skip(f"no {runs_name(model)} standard or bn runs in the grid")
    lrs = pick_lrs(metrics.lr.unique(), FIG1_LRS)
    splits = [s for s in ("train", "test") if not rows_of(metrics[metrics.split == s], ["standard", "bn"], lrs).empty]
    fig, axes = plt.subplots(len(lrs), len(splits), figsize=(4.0 * len(splits) + 0.3, 2.9 * len(lrs) + 0.4),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    counts = []
    for i, lr in enumerate(lrs):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            d = metrics[metrics.split == split]
            counts += draw_train_curves(ax, data, d, y="acc", variants=ordered(d.variant), lrs=[lr], with_lr=False)
            what = "(a) training (mini-batch)" if split == "train" else "(b) test"
            ax.set_title(f"{what} accuracy, lr {lr:g}")
            ax.set_xlabel("training step")
            ax.set_ylabel(ACC_LABEL)
            ax.set_ylim(-0.02, 1.02)
    figure_legend(fig)  # one entry per variant: each row's titles name its lr
    caption = (f"Fig 1a–b. {model_phrase(data, model)}; standard vs BatchNorm. {curve_note(counts, data.band)} "
               f"Train accuracy: the mini-batch of each logged step. {TEST_MODE}"
               f"{diverged_note(data, model, ['standard', 'bn'], lrs)}")
    return Drawn(fig, caption)


def fig05_lp_training(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 5: training with ℓ1, ℓ2, ℓ∞ normalisation: VGG train accuracy and DLN train loss (log).

    Args:
        model: the VGG family of the first panel. The paper-scale figure draws the DLN panel alone while its VGG
            cells wait for a GPU; a reduced-scale one (bnflow.figures.scales.REDUCED) is drawn only with its own
            ℓp runs, so the DLN panel is never a figure of its own twice.
    """
    panels = []
    for m, y in ((model, "acc"), ("dln", "loss")):
        metrics = data.table("metrics", m)
        metrics = metrics[metrics.split == "train"]
        if not rows_of(metrics, LP_VARIANTS).empty:
            lrs = pick_lrs(rows_of(metrics, LP_VARIANTS).lr.unique(), paper_lrs(PAPER_LRS, m))
            panels.append((m, y, rows_of(metrics, ["standard", "bn", *LP_VARIANTS], lrs), lrs))
    if model in REDUCED and not any(m == model for m, *_ in panels):
        return Skip(f"no {model} l1, l2 or linf runs in the grid")
    if not panels:
        return Skip("no l1, l2 or linf runs in the grid")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.5), squeeze=False, layout="constrained")
    counts, notes, lights = [], [], []
    for k, (ax, (m, y, rows, lrs)) in enumerate(zip(axes[0], panels, strict=True)):
        log = m == "dln"
        one_lr = len(lrs) == 1
        light = many(rows.variant.nunique() * len(lrs))
        lights.append(light)
        counts += draw_train_curves(ax, data, rows, y=y, variants=ordered(rows.variant), lrs=lrs, log=log,
                                    with_lr=not one_lr, light=light)
        ax.set_xlabel("training step" + (" (full-batch GD)" if m == "dln" else ""))
        at = f", lr {lrs[0]:g}" if one_lr else ""
        if log:
            ax.set_yscale("log")
            ax.set_ylabel(dln_loss_label(data))
            ax.set_title(f"({'ab'[k]}) Deep linear network: training loss{at}")
        else:
            ax.set_ylabel(f"training (mini-batch) {ACC_LABEL}")
            ax.set_title(f"({'ab'[k]}) VGG: training accuracy{at}")
        notes.append(model_phrase(data, m) + diverged_note(data, m, list(rows.variant.unique()), lrs))
    if all(len(p[3]) == 1 for p in panels):
        figure_legend(fig)  # one entry per variant, the same colour in both models; titles name the lr
    else:
        for ax in axes[0]:  # labels name model-specific lrs: a key per panel
            legend(ax, fontsize=6.5)
    caption = (f"Fig 5. ℓp normalisations (mean-centred, divided by the ℓp norm of the uncentred activations). "
               f"{'; '.join(notes)}. "
               f"{curve_note(counts, data.band, log=any(p[0] == 'dln' for p in panels), single=seeds_drawn(lights))}")
    return Drawn(fig, caption)

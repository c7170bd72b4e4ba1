"""Which figure is drawn from which data: the paper's figures (PROTOCOL §1) from the runs' tidy outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bnflow.config import Params
from bnflow.figures import style
from bnflow.figures.plots import BAND_MEANING, seed_curves, variant_label
from bnflow.io import check_absent, publish_dir
from bnflow.results import load_runs

log = logging.getLogger("bnflow.figures")


def _caption(fig: plt.Figure, text: str) -> None:
    fig.text(0.01, -0.02, text, ha="left", va="top", fontsize=7, wrap=True)


def fig01_accuracy(metrics: pd.DataFrame, *, band: str, n_seeds: int) -> plt.Figure | None:
    """Fig 1a–b: mini-batch train accuracy and test accuracy vs step, standard vs BN, one column per lr."""
    vgg = metrics[(metrics.model == "vgg") & metrics.variant.isin(["standard", "bn"])]
    lrs = sorted(vgg.lr.unique(), reverse=True)
    if vgg.empty:
        return None
    fig, axes = plt.subplots(2, len(lrs), figsize=(3.8 * len(lrs), 5.6), squeeze=False, sharey="row", layout="constrained")
    for j, lr in enumerate(lrs):
        for i, split in enumerate(("train", "test")):
            ax = axes[i][j]
            for variant in ("standard", "bn"):
                d = vgg[(vgg.lr == lr) & (vgg.variant == variant) & (vgg.split == split)]
                if not d.empty:
                    seed_curves(ax, d, x="step", y="acc", variant=variant, label=variant_label(variant, lr), band=band)
            ax.set_title(f"{'Training (mini-batch)' if split == 'train' else 'Test'} accuracy, lr {lr:g}")
            ax.set_xlabel("training step")
            ax.set_ylabel("accuracy (fraction correct)")
            ax.legend(loc="lower right")
    _caption(fig, f"VGG on CIFAR-10; n = {n_seeds} seeds per curve; thick line: mean; {BAND_MEANING[band]}; "
                  "thin lines: single seeds. Test accuracy in eval mode (running statistics, no noise).")
    return fig


def fig05_dln_loss(metrics: pd.DataFrame, *, band: str, n_seeds: int) -> plt.Figure | None:
    """Fig 5 (DLN panel): full-batch training loss vs step on a log axis, one line per variant and lr."""
    dln = metrics[(metrics.model == "dln") & (metrics.split == "train")]
    if dln.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.6), layout="constrained")
    for (variant, lr), d in sorted(dln.groupby(["variant", "lr"]), key=lambda kv: (list(style.VARIANT_COLORS).index(kv[0][0]), -kv[0][1])):
        ls = style.LR_STYLES[sorted(dln.lr.unique(), reverse=True).index(lr) % len(style.LR_STYLES)]
        seed_curves(ax, d, x="step", y="loss", variant=variant, label=variant_label(variant, lr), band=band,
                    linestyle=ls)
    ax.set_yscale("log")
    ax.set_xlabel("training step (full-batch GD)")
    ax.set_ylabel("training loss ½Σ‖Wx − Ax‖² (log)")
    ax.set_title("Deep linear network: training loss")
    ax.legend(fontsize=7)
    _caption(fig, f"25-layer 10×10 linear network, y = Ax; n = {n_seeds} seeds per curve; {BAND_MEANING[band]}.")
    return fig


FIGURES = {"fig01_accuracy": fig01_accuracy, "fig05b_dln_loss": fig05_dln_loss}


def render_figures(params: Params, runs_root: Path, out_dir: Path, *, force: bool = False) -> list[Path]:
    """Render every figure the grid's data allows into `out_dir` (PNG + SVG each)."""
    check_absent(out_dir, force=force)
    _, tables = load_runs(params, runs_root)
    metrics = tables["metrics"]
    style.setup()
    tmp_dir = out_dir.with_name(f".{out_dir.name}.partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(metrics, band=params.figures.band, n_seeds=params.train.seeds.n)
        if fig is None:
            log.info("%s: no runs in the grid for it; skipped", name)
            continue
        written += style.save(fig, tmp_dir, name, params.figures.dpi)

    publish_dir(tmp_dir, out_dir, force=force)
    return [out_dir / p.name for p in written]

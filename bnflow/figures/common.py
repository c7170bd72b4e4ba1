"""What every figure function returns, and the caption sentences they share (seeds, bands, BN mode, data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from bnflow.figures.data import FigureData
from bnflow.figures.plots import BAND_TEXT, n_seeds_text
from bnflow.figures.style import VARIANT_COLORS

LP_VARIANTS = ("l1", "l2", "linf")
PAPER_LRS = {"vgg": (0.1,), "dln": (1e-6,)}  # the lr of the paper's probe and ℓp figures (PROTOCOL §1)
TEST_MODE = "Test accuracy in eval mode (running statistics, no noise)."
PROBE_MODE = ("Probes run in train mode (batch statistics) on the probed step's own (mini-)batch (and, for noisy "
              "variants, its own noise).")
NOISE_NOTE = "Noise is applied in training steps only; evaluation runs without it."


@dataclass(frozen=True)
class Drawn:
    """A drawn figure and its caption (written under the figure and into REPORT.md)."""

    fig: Figure
    caption: str


@dataclass(frozen=True)
class Skip:
    """Why a figure was not drawn (logged; listed in REPORT.md)."""

    reason: str


def ordered(variants: Sequence[str]) -> list[str]:
    """Variants in the palette's order, so legends list them the same way in every figure."""
    order = list(VARIANT_COLORS)
    return sorted(set(variants), key=lambda v: order.index(v) if v in order else len(order))


def rows_of(frame: pd.DataFrame, variants: Sequence[str], lrs: Sequence[float] | None = None) -> pd.DataFrame:
    """Rows of the given variants (and lrs, compared with a relative tolerance)."""
    sel = frame[frame.variant.isin(list(variants))]
    if lrs is not None:
        lr = sel.lr.astype(float)
        keep = pd.Series(False, index=sel.index)
        for x in lrs:
            keep |= (lr - x).abs() <= 1e-9 * abs(x)
        sel = sel[keep]
    return sel


def curve_note(counts: list[int], band: str, log: bool = False) -> str:
    """'n = 2 seeds per curve; thick line: mean …; shaded: …; thin lines: single seeds.'"""
    seeds = n_seeds_text(counts)
    if max(counts, default=0) <= 1:
        return f"{seeds} (no across-seed band)."
    centre = "mean across seeds" + (" (geometric mean on log axes)" if log else "")
    return f"{seeds}; thick line: {centre}; shaded: {BAND_TEXT[band]}; thin lines: single seeds."


def diverged_note(data: FigureData, model: str, variants: Sequence[str], lrs: Sequence[float]) -> str:
    ids = data.diverged(model, variants, lrs)
    return f" Diverged runs (their curves stop at divergence): {', '.join(ids)}." if ids else ""


def model_phrase(data: FigureData, model: str) -> str:
    """'VGG (8 conv layers) on CIFAR-10 (...)' / 'deep linear network (25 layers), synthetic regression …'."""
    if model == "vgg":
        return f"VGG ({data.depths.get('vgg', '?')} conv layers, SGD) on {data.source('vgg')}"
    return (f"Deep linear network ({data.depths.get('dln', '?')} layers, full-batch GD) on "
            f"{data.source('dln')}")

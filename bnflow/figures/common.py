"""What every figure function returns, how a variant is drawn, and the caption sentences figures share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from bnflow.figures.data import FigureData
from bnflow.figures.palette import variant_order
from bnflow.figures.plots import BAND_TEXT, n_seeds_text
from bnflow.figures.scales import phrase_of
from bnflow.figures.select import PAPER_LRS, same_lr
from bnflow.figures.style import lr_style

__all__ = ["PAPER_LRS", "Drawn", "Skip", "ordered", "rows_of", "look", "variant_label", "curve_note",
           "diverged_note", "model_phrase", "model_name", "runs_name"]

LP_VARIANTS = ("l1", "l2", "linf")
TEST_MODE = "Test accuracy in eval mode (running statistics, no noise)."
PROBE_MODE = ("Probes run in train mode (batch statistics) on the probed step's own (mini-)batch (and, for noisy "
              "variants, its own noise).")
NOISE_NOTE = "Noise is applied in training steps only; evaluation runs without it."
MODEL_NAMES = {"vgg": "VGG", "vgg_cpu": "reduced-scale VGG", "dln": "Deep linear network", "resnet": "ResNet"}
MANY_CURVES = 3  # a panel with more curves leaves out single-seed lines and fades its bands (seed_curves light=True)


@dataclass(frozen=True)
class Drawn:
    """A drawn figure and its caption (written under the figure and into REPORT.md).

    Args:
        title: the REPORT.md heading when it depends on the data (the layers drawn); None: the registry's title.
    """

    fig: Figure
    caption: str
    title: str | None = None


@dataclass(frozen=True)
class Skip:
    """Why a figure was not drawn (logged; listed in REPORT.md)."""

    reason: str


def ordered(variants: Sequence[str]) -> list[str]:
    """Variants in legend order (the paper's, then the new norms, then other names alphabetically)."""
    return variant_order(str(v) for v in variants)


def rows_of(frame: pd.DataFrame, variants: Sequence[str], lrs: Sequence[float] | None = None) -> pd.DataFrame:
    """Rows of the given variants (and lrs, compared with a relative tolerance)."""
    sel = frame[frame.variant.isin(list(variants))]
    if lrs is not None:
        keep = sel.lr.map(lambda lr: any(same_lr(lr, x) for x in lrs)).astype(bool)
        sel = sel[keep]
    return sel


def look(data: FigureData, variant: str, lr: float | None = None, lrs: Sequence[float] = ()) -> dict:
    """Matplotlib colour and line style of a variant's curve: the lr's style when the panel has several lrs."""
    style = data.style(variant)
    lrs = sorted({float(x) for x in lrs}, reverse=True)
    dash = lr_style(float(lr), lrs) if lr is not None and len(lrs) > 1 else style.dash
    return {"color": style.color, "linestyle": dash}


def variant_label(data: FigureData, variant: str, lr: float | None = None) -> str:
    """Legend text naming the variant (and its learning rate)."""
    label = data.style(variant).label
    return label if lr is None else f"{label}, lr {lr:g}"


def many(n_curves: int) -> bool:
    """Whether a panel with this many curves is drawn light (no single-seed lines)."""
    return n_curves > MANY_CURVES


def curve_note(counts: list[int], band: str, log: bool = False, single: bool | None = True) -> str:
    """'n = 2 seeds per curve; thick line: mean …; shaded: …; thin lines: single seeds.'

    Args:
        single: single-seed lines are drawn in every panel (True), in none (False: every panel has more than
            MANY_CURVES curves), or only in panels with at most MANY_CURVES curves (None).
    """
    seeds = n_seeds_text(counts)
    if max(counts, default=0) <= 1:
        return f"{seeds} (no across-seed band)."
    centre = "mean across seeds" + (" (geometric mean on log axes)" if log else "")
    thin = {True: "thin lines: single seeds.",
            False: f"single seeds not drawn (more than {MANY_CURVES} curves per panel).",
            None: f"thin lines: single seeds, in panels with at most {MANY_CURVES} curves."}[single]
    return f"{seeds}; thick line: {centre}; shaded: {BAND_TEXT[band]}; {thin}"


def seeds_drawn(lights: list[bool]) -> bool | None:
    """curve_note's `single` from each panel's light flag."""
    return None if any(lights) and not all(lights) else not any(lights)


def diverged_note(data: FigureData, model: str, variants: Sequence[str], lrs: Sequence[float]) -> str:
    ids = data.diverged(model, variants, lrs)
    return f" Diverged runs (their curves stop at divergence): {', '.join(ids)}." if ids else ""


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def runs_name(model: str) -> str:
    """How a Skip reason names a model's runs: 'VGG' for the paper's, the family id ('vgg_cpu') for the others."""
    return model_name(model) if model == "vgg" else model


def model_phrase(data: FigureData, model: str) -> str:
    """'VGG (8 conv layers, SGD) on CIFAR-10 (...)' / 'Deep linear network (25 layers, full-batch GD) on …'; other
    image classifiers (bnflow.vocab.CLASSIFIERS) read like VGG. A reduced-scale family says so, with its scale from
    params (bnflow.figures.scales): 'Reduced-scale VGG (VGG-11 ×0.125, 5,000 steps; PROTOCOL §10), 8 conv layers,
    SGD, on …', so every caption that names the model names its scale."""
    depth = data.depths.get(model)
    if model == "dln":
        return f"Deep linear network ({depth or '?'} layers, full-batch GD) on {data.source('dln')}"
    layers = f"{depth} conv layers, " if depth else ""
    scale = phrase_of(data.scales, model)
    if scale is not None:
        return f"{scale[0].upper()}{scale[1:]}, {layers}SGD, on {data.source(model)}"
    return f"{model_name(model)} ({layers}SGD) on {data.source(model)}"

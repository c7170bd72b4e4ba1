"""Which VGG a figure draws: the paper-scale family (`vgg`, train.vgg) or the reduced-scale VGG of PROTOCOL §10
(`vgg_cpu`, train.vgg_cpu), and how its title and caption say so.

Every paper figure that draws VGG cells is registered once per VGG family (bnflow.figures.registry), so the two scales
are always separate figures (`fig04_landscape_vgg.png`, `fig04_landscape_vgg_cpu.png`) and never share a panel: a
reader of a reduced-scale figure must not mistake it for the paper's experiment, and a claim's verdict at one scale
says nothing about the other. The reduced scale's architecture, width and step budget are read from params, so the
words stay true when train.vgg_cpu changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd

from bnflow.config import Params
from bnflow.vocab import MODELS

PAPER_VGG = "vgg"
REDUCED = {"vgg_cpu": "PROTOCOL §10"}
"""Reduced-scale model families -> where their scale is defined. Each stands in for the paper's VGG (PAPER_VGG)."""
VGG_FAMILIES = (PAPER_VGG, *REDUCED)
"""The VGG families a paper VGG figure is drawn for, in the order the registry lists their figures."""
NOT_RUN = "not run yet"
GPU_NOTE = f"{NOT_RUN} (needs a GPU: workflow/paper-vgg.yaml)"
"""Why a paper-scale VGG figure is not drawn: its cells need a GPU, and params.yaml's grid leaves them out."""


def arch_name(arch: str) -> str:
    """'vgg11' -> 'VGG-11' (train.<model>.arch as the literature writes it); any other name as given."""
    m = re.fullmatch(r"vgg(\d+)", arch)
    return f"VGG-{m[1]}" if m else arch


def scale_phrase(arch: str, width_mult: float, steps: int, where: str) -> str:
    """'reduced-scale VGG (VGG-11 ×0.125, 5,000 steps; PROTOCOL §10)', the words every reduced-scale figure carries.

    Args:
        arch: train.<model>.arch; width_mult: its conv-width multiplier; steps: its SGD step budget.
        where: where the scale is defined (REDUCED's value).
    """
    return f"reduced-scale VGG ({arch_name(arch)} ×{width_mult:g}, {steps:,} steps; {where})"


def describe_scales(params: Params) -> dict[str, str]:
    """Reduced-scale family -> its scale_phrase, from its train.<model> section (arch, width_mult, steps)."""
    out = {}
    for model, where in REDUCED.items():
        if model in MODELS:
            cfg = params.train.model_config(model)
            out[model] = scale_phrase(cfg.arch, cfg.width_mult, cfg.steps, where)
    return out


def phrase_of(scales: Mapping[str, str], model: str) -> str | None:
    """The scale phrase of a reduced-scale family (without params at hand: the phrase without numbers); None for
    any other model."""
    if model not in REDUCED:
        return None
    return scales.get(model, f"reduced-scale VGG ({REDUCED[model]})")


def scaled_name(name: str, model: str) -> str:
    """The file stem of a paper VGG figure drawn for `model`: the paper-scale name unchanged, else a trailing
    '_vgg' replaced by (or the stem extended with) '_{model}': fig04_landscape_vgg -> fig04_landscape_vgg_cpu,
    fig01_accuracy -> fig01_accuracy_vgg_cpu."""
    if model == PAPER_VGG:
        return name
    stem = name[: -len("_" + PAPER_VGG)] if name.endswith("_" + PAPER_VGG) else name
    return f"{stem}_{model}"


def present_models(runs: pd.DataFrame, metrics: pd.DataFrame | None) -> set[str]:
    """Models with at least one run read (run summaries, or training rows when a caller built no summaries)."""
    found: set[str] = set()
    for frame in (runs, metrics):
        if frame is not None and not frame.empty and "model" in frame.columns:
            found.update(str(m) for m in frame.model.unique())
    return found


def not_run_reason(model: str, grid: pd.DataFrame, requires: Sequence[str] | None = None) -> str:
    """Why a figure of `model` is not drawn when none of its runs are there: the paper-scale VGG needs a GPU (and
    workflow/paper-vgg.yaml's grid); another family waits for its grid cells, or has none in the grid (none of the
    variants the figure requires, select.Need.requires: the ℓp figures at a scale whose grid has no ℓp cell)."""
    if model == PAPER_VGG:
        return GPU_NOTE
    own = grid[grid.model == model] if not grid.empty else grid
    if own.empty:
        return f"no {model} cells in the grid (train.grid)"
    if requires is not None and not own.variant.isin(list(requires)).any():
        return f"no {model} {', '.join(requires)} cells in the grid (train.grid): not run at this scale"
    return NOT_RUN

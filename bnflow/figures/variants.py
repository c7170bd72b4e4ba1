"""Beyond the paper (issue 17): every variant of every model side by side, so new normalisations (GroupNorm,
LayerNorm, WeightNorm, BN without γ/β), a ResNet and user plug-in variants get the paper's probes drawn.

The paper's figures keep the paper's variants (standard vs BN, ℓp, noisy BN); these figures draw all variants of a
model at its reference lr (the paper's lr; image classifiers read like VGG), one block per model with its own legend,
one curve per variant (colour + dash from bnflow.figures.palette), without single-seed lines so that eight or more
variants stay readable. They are drawn only when the grid holds a model or variant the paper's figures do not.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bnflow.figures.activations import UNSHARED, _point, first_unit
from bnflow.figures.common import (PAPER_LRS, PROBE_MODE, Drawn, Skip, curve_note, look, model_name, model_phrase,
                                   ordered, rows_of, seeds_drawn, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.ics import ROWS, ics_block, ics_caption, ics_rows
from bnflow.figures.landscape import beta_eff, gradient_rows
from bnflow.figures import select
from bnflow.figures.plots import distribution_over_time, figure_legend, seed_curves
from bnflow.figures.select import PAPER_DEPTH, layer_title, model_key, paper_lrs, pick_lrs, resolve_layers
from bnflow.figures.training import train_panel
from bnflow.results import RUN_COLUMNS, require_columns

MAX_COLS = 5  # activation panels per row
# Fig 6's layer (#11 of the paper's 13-layer VGG) and Fig 9's middle layer (#11 of 25) stand for "a deep layer".
DEEP_LAYER = {"vgg": (11,), "dln": (11,)}
# Variants that normalise activations: their distributions share a y-scale; the others (no normalisation, weight
# normalisation, plug-ins bnflow cannot know) keep their own.
NORMALISED = ("bn", "noisy_bn", "l1", "l2", "linf", "group_norm", "layer_norm", "batch_norm_no_affine")


def beyond_paper(data: FigureData) -> list[str]:
    """The (model, variant) pairs of the runs and the grid that no paper figure draws, as 'model variant' strings."""
    return sorted(set(select.beyond_paper(data.runs)) | set(select.beyond_paper(data.grid)))


def _skip_paper_only(data: FigureData) -> Skip | None:
    if not beyond_paper(data):
        return Skip("the grid holds only the paper's models and variants; Figs 1–13 draw them")
    return None


def reference_lr(rows: pd.DataFrame, model: str) -> list[float]:
    """The model's reference lr among the rows: the paper's lr when present, else the largest."""
    return pick_lrs(rows.lr.unique(), paper_lrs(PAPER_LRS, model) or ())[:1] if len(rows) else []


def over_eta(landscape: pd.DataFrame, y: str, how: str) -> pd.DataFrame:
    """Per run and probed step, `y` reduced over the probe step sizes η: "range" (max − min) or "max".

    Args:
        landscape: rows with the run columns and step, eta, `y`.

    Returns:
        one row per (run, step): the run columns, step, value.
    """
    require_columns(landscape, (*RUN_COLUMNS, "step", "eta", y), f"landscape for {y} over eta")
    g = landscape.groupby([*RUN_COLUMNS, "step"], as_index=False, sort=True)[y]
    if how == "range":
        out = g.agg(lambda v: v.max() - v.min())
    elif how == "max":
        out = g.max()
    else:
        raise ValueError(f"how must be range or max, got {how!r}")
    return out.rename(columns={y: "value"})


def figv1_variants_landscape(data: FigureData) -> Drawn | Skip:
    """Every variant per model: training curve, loss range over η, largest gradient change over η, β_eff."""
    skip = _skip_paper_only(data)
    if skip:
        return skip
    blocks = []
    for model in data.models("landscape") or data.models("landscape", checkpoint=True):
        land, source = data.probes("landscape", model)
        land = gradient_rows(land)
        lrs = reference_lr(land, model)
        if lrs:
            blocks.append((model, rows_of(land, list(land.variant.unique()), lrs), source, lrs))
    if not blocks:
        return Skip("no landscape probes")
    fig = plt.figure(figsize=(16.0, 3.9 * len(blocks)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(blocks), 1))
    counts, notes = [], []
    panels = (("loss", "range", "loss range over η", "max_η L(θ − ηg) − min_η L(θ − ηg) (log)"),
              ("grad_change", "max", "largest gradient change over η", "max_η ‖∇L(θ − ηg) − g‖ (log)"))
    for sub, (model, land, source, lrs) in zip(subs, blocks, strict=True):
        axes = sub.subplots(1, 4)
        variants = ordered(land.variant)
        counts += train_panel(axes[0], data, model, variants, lrs, light=True, with_lr=False)
        for variant in variants:
            d = rows_of(land, [variant], lrs)
            style = {"label": variant_label(data, variant), "band": data.band, "log": True, "light": True,
                     **look(data, variant)}
            for ax, (y, how, _, _) in zip(axes[1:3], panels, strict=True):
                reduced = over_eta(d, y, how)
                seed_curves(ax, reduced[reduced.value > 0], x="step", y="value", **style)
            seed_curves(axes[3], beta_eff(d), x="step", y="beta", **style)
        for ax, (_, _, title, ylabel) in zip(axes[1:3], panels, strict=True):
            ax.set_title(title)
            ax.set_ylabel(ylabel)
        axes[3].set_title("effective β-smoothness")
        axes[3].set_ylabel("β_eff = max_η ‖∇L(θ − ηg) − g‖ / ‖ηg‖ (log)")
        for ax in axes[1:]:
            ax.set_yscale("log")
            ax.set_xlabel("training step")
        figure_legend(sub, ncols=min(len(variants), 6), title=f"{model_name(model)}, lr {lrs[0]:g}",
                      title_fontproperties={"weight": "bold", "size": 9.5})
        notes.append(f"{model_phrase(data, model)}; {source}")
    caption = ("Beyond the paper: every variant of each model at its reference lr (the paper's lr where the grid has "
               "it), probed along −ηg as in Figs 4 and 10. Per run and probed step, the spread of the loss over the "
               "step sizes η (max − min) and the largest gradient change over η; β_eff as in Fig 4c. "
               f"{'. '.join(notes)}. {curve_note(counts, data.band, log=True, single=False)} {PROBE_MODE}")
    return Drawn(fig, caption)


def figv2_variants_ics(data: FigureData) -> Drawn | Skip:
    """Every variant per model: relative ICS and cos(G, G') at the paper's ICS layers (or the nearest recorded)."""
    skip = _skip_paper_only(data)
    if skip:
        return skip
    blocks = []
    for model in data.models("ics") or data.models("ics", checkpoint=True):
        ics, source, lrs = ics_rows(data, model, None, 1)
        if not ics.empty:
            blocks.append((model, ics, source, lrs))
    if not blocks:
        return Skip("no ICS probes")
    width = max(ics.layer.nunique() for _, ics, _, _ in blocks)
    fig = plt.figure(figsize=(max(4.2 * min(width, 2), 8.4), 5.4 * len(blocks)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(blocks), 1))
    counts, notes, lights = [], [], []
    for sub, (model, ics, source, lrs) in zip(subs, blocks, strict=True):
        c, _, light = ics_block(sub, data, model, ics, lrs, rows=ROWS[1:], with_train=False)
        counts += c
        lights.append(light)
        figure_legend(sub, ncols=min(ics.variant.nunique(), 6), title=f"{model_name(model)}, lr {lrs[0]:g}",
                      title_fontproperties={"weight": "bold", "size": 9.5})
        notes.append(f"{model_phrase(data, model)}; {source}")
    return Drawn(fig, ics_caption("Beyond the paper, every variant of each model at its reference lr", data, notes,
                                  counts, single=seeds_drawn(lights)))


def figv3_variants_activations(data: FigureData) -> Drawn | Skip:
    """Every variant per model: the distribution over time of one tracked unit of a deep layer, a panel per variant."""
    skip = _skip_paper_only(data)
    if skip:
        return skip
    blocks = []
    for model in data.models("act_units") or data.models("act_units", checkpoint=True):
        units, source = data.probes("act_units", model)
        lrs = reference_lr(units, model)
        if not lrs:
            continue
        units = rows_of(units, list(units.variant.unique()), lrs)
        key = model_key(model)
        layers = resolve_layers(DEEP_LAYER[key], units.layer.unique(), data.depths.get(model, PAPER_DEPTH[key]),
                                PAPER_DEPTH[key])
        blocks.append((model, units, source, lrs, layers[0]))
    if not blocks:
        return Skip("no activation probes (act_units)")
    shapes = [-(-units.variant.nunique() // MAX_COLS) for _, units, _, _, _ in blocks]
    ncols = min(MAX_COLS, max(units.variant.nunique() for _, units, _, _, _ in blocks))
    fig = plt.figure(figsize=(2.7 * ncols + 0.4, sum(2.3 * n + 0.5 for n in shapes)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(blocks), 1, height_ratios=[2.3 * n + 0.5 for n in shapes]))
    notes = []
    for sub, (model, units, source, lrs, (layer, paper)), nrows in zip(subs, blocks, shapes, strict=True):
        variants = ordered(units.variant)
        axes = list(sub.subplots(nrows, ncols, squeeze=False).flat)
        shared = None
        for ax, variant in zip(axes, variants, strict=False):
            d = units[(units.layer == layer) & (units.variant == variant)]
            ax.set_title(variant_label(data, variant), fontsize=8.5, color=data.style(variant).color)
            if d.empty:
                ax.set_axis_off()
                ax.set_title(f"{variant_label(data, variant)}: not recorded", fontsize=8.5)
                continue
            if variant in NORMALISED and variant not in UNSHARED:
                shared = shared or ax
                if ax is not shared:
                    ax.sharey(shared)
            distribution_over_time(ax, first_unit(d), color=data.style(variant).color)
            ax.set_xlabel("training step")
        for ax in axes[len(variants):]:
            ax.remove()
        sub.suptitle(f"{model_name(model)}, lr {lrs[0]:g}, {layer_title(layer, paper)}: activation "
                     f"({_point(data, model)})", fontsize=9.5, fontweight="bold")
        notes.append(f"{model_phrase(data, model)}; {source}")
    caption = ("Beyond the paper: every variant. Distribution over the batch of one tracked unit (the lowest seed's "
               "first) at each probed step, recorded in the training forward pass: shaded 5–95% and 25–75% of the "
               "batch, line: median. "
               "Variants that normalise activations share a y-scale per model; the others (no normalisation, "
               f"weight normalisation, plug-ins) have their own. {'. '.join(notes)}.")
    return Drawn(fig, caption)


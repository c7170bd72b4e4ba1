"""Beyond the paper: Theorem 4.1 (paper §4.1, PROTOCOL §8) on real BN layers, from the probe step's per-layer table.

For one BN channel, ‖g_y‖² = (γ²/σ²)·(‖g_z‖² − ⟨1, g_z⟩²/m − ⟨g_z, ŷ⟩²/m), g_z and g_y the loss gradient w.r.t. the
channel's BN output and input. The ratio ‖g_y‖²/‖g_z‖² is what the paper calls the reduction of the gradient's
Lipschitz constant; it equals (γ²/σ²)·‖Pg_z‖²/‖g_z‖² with P a projection, so it is at most γ²/σ² and exceeds 1 where
γ > σ. bnflow.curvature.theorems computes both sides per channel; the probe step summarises them per (step, layer)
into theorem41_layers.csv, and this module only draws that table.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.lines import Line2D

from bnflow.figures.common import Drawn, Skip, curve_note, look, model_name, model_phrase, rows_of, variant_label
from bnflow.figures.curvature import BN_MODE, GREY, cells, checkpoint_axis, checkpoint_curve, reference
from bnflow.figures.data import FigureData
from bnflow.figures.style import STEP_CMAP
from bnflow.results import RUN_COLUMNS, require_columns

ALL_LAYERS, MAX_LAYERS = 8, 6  # a network with more BN layers than ALL_LAYERS shows MAX_LAYERS, evenly spread
MAX_COLS = 3  # panels per row of Fig x4 (the paper grid has 4 VGG cells with BN: bn at 3 lrs, noisy_bn)
FP32_EPS = float(np.finfo(np.float32).eps)  # the checked tensors are fp32: gaps near this are float precision
# Sequential layer colours; the light yellow end of viridis is cut off, it vanishes on white.
LAYER_CMAP = ListedColormap(colormaps[STEP_CMAP](np.linspace(0.0, 0.85, 256)))
GAP_SERIES = (("rel_gap", "o", "paper's formula (1/m, ε folded into σ)"), ("rel_gap_exact", "x", "ε-exact identity"))
RATIO_LABEL = "‖g_y‖²/‖g_z‖², median over channels (log)"


def spread_layers(layers: Sequence[int], k: int = MAX_LAYERS, keep_all: int = ALL_LAYERS) -> list[int]:
    """All layers when there are at most `keep_all`, else `k` of them evenly spread (first and last included)."""
    uniq = sorted({int(v) for v in layers})
    if len(uniq) <= keep_all:
        return uniq
    return [uniq[i] for i in np.unique(np.round(np.linspace(0, len(uniq) - 1, k)).astype(int))]


def layer_reduction(layers: pd.DataFrame) -> pd.DataFrame:
    """The squared gradient-norm ratio ‖g_y‖²/‖g_z‖² of each BN layer: its median over the layer's channels.

    Args:
        layers: theorem41_layers rows with the run columns and step, layer, reduction_median (the probe step left
            out channels with g_z = 0).

    Returns:
        one row per (run, step, layer) with the run columns, step, layer, reduction.
    """
    require_columns(layers, (*RUN_COLUMNS, "step", "layer", "reduction_median"), "theorem41_layers for the ratio")
    out = layers[[*RUN_COLUMNS, "step", "layer"]].assign(reduction=layers.reduction_median.astype(float))
    return out.sort_values([*RUN_COLUMNS, "step", "layer"], ignore_index=True)


def max_gaps(layers: pd.DataFrame) -> pd.DataFrame:
    """Largest relative gap of Theorem 4.1 over a run's BN layers (each already the max over its channels).

    Returns:
        one row per (run, step): the run columns, step, rel_gap (paper's formula), rel_gap_exact (ε-exact identity).
    """
    require_columns(layers, (*RUN_COLUMNS, "step", "rel_gap_max", "rel_gap_exact_max"), "theorem41_layers for gaps")
    return layers.groupby([*RUN_COLUMNS, "step"], as_index=False, sort=True).agg(
        rel_gap=("rel_gap_max", "max"), rel_gap_exact=("rel_gap_exact_max", "max"))


def _panel_grid(n: int) -> tuple[int, int]:
    """(rows, columns) of a grid holding n panels, at most MAX_COLS wide."""
    return -(-n // MAX_COLS), min(n, MAX_COLS)


def _theorem_block(sub, data: FigureData, model: str, t41: pd.DataFrame) -> tuple[list[int], list[int]]:
    """One model's part of Fig x4: a ratio panel per (variant, lr), then the gap panel, and the model's legend."""
    red, gaps, pairs = layer_reduction(t41), max_gaps(t41), cells(t41)
    layers = spread_layers(red.layer)
    norm = Normalize(min(layers), max(max(layers), min(layers) + 1))
    grid = list(sub.subplots(*_panel_grid(len(pairs) + 1), squeeze=False).flat)
    for ax in grid[len(pairs) + 1:]:
        ax.remove()
    axes = grid[:len(pairs) + 1]
    lrs = sorted({lr for _, lr in pairs}, reverse=True)
    counts = []
    for ax, (variant, lr) in zip(axes, pairs, strict=False):
        pos = checkpoint_axis(ax, t41.step)
        d = rows_of(red, [variant], [lr])
        for layer in layers:
            one = d[d.layer == layer]
            if not one.empty:
                counts.append(checkpoint_curve(ax, one.assign(x=one.step.astype(float).map(pos)), "reduction",
                                               marker="", color=LAYER_CMAP(norm(layer)), label=f"_layer {layer}",
                                               band=data.band))
        reference(ax, 1.0, "1", linestyle=":")
        ax.set_yscale("log")
        ax.set_title(f"gradient ratio through BN: {variant_label(data, variant, lr)}", fontsize=8.5)
        ax.set_ylabel(RATIO_LABEL)
        if ax is not axes[0]:
            ax.sharey(axes[0])
    sub.colorbar(ScalarMappable(norm, LAYER_CMAP), ax=axes[:-1], ticks=layers, label="BN layer #", aspect=30)
    ax_g = axes[-1]
    pos = checkpoint_axis(ax_g, t41.step)
    for variant, lr in pairs:
        d = rows_of(gaps, [variant], [lr])
        d = d.assign(x=d.step.astype(float).map(pos))
        for col, marker, _ in GAP_SERIES:
            checkpoint_curve(ax_g, d.assign(y=d[col].where(d[col] > 0)), "y", marker=marker,
                             label=f"_{col}", band=data.band, **look(data, variant, lr, lrs))
    reference(ax_g, FP32_EPS, "fp32 ε", linestyle=":")
    ax_g.set_yscale("log")
    ax_g.set_title("Theorem 4.1: |lhs − rhs|, relative", fontsize=8.5)
    ax_g.set_ylabel("max over layers and channels (log)")
    # the key: a colour (and line style) per cell, then a grey marker per right-hand side
    entries = {variant_label(data, v, lr): Line2D([], [], linewidth=1.7, **look(data, v, lr, lrs)) for v, lr in pairs}
    entries |= {f"gap: {what}": Line2D([], [], color=GREY, marker=m, linestyle="none") for _, m, what in GAP_SERIES}
    sub.legend(list(entries.values()), list(entries), loc="outside upper center", ncols=min(4, len(entries)),
               frameon=False, title=model_name(model), title_fontproperties={"weight": "bold", "size": 9.5})
    return counts, layers


def figx4_theorem41(data: FigureData) -> Drawn | Skip:
    """Theorem 4.1 per BN layer over training: the squared gradient-norm ratio ‖g_y‖²/‖g_z‖², and the identity's gap.

    A block per model, each with its own legend (colour: variant; marker: which right-hand side).
    """
    rows = [(m, data.table("theorem41_layers", m, checkpoint=True))
            for m in data.models("theorem41_layers", checkpoint=True)]
    rows = [(m, t) for m, t in rows if not t.empty]
    if not rows:
        return Skip("no BatchNorm layer in any probed run (theorem41_layers tables empty or absent)")
    shapes = [_panel_grid(len(cells(t)) + 1) for _, t in rows]
    heights = [3.4 * n + 0.7 for n, _ in shapes]  # + the model's heading and legend
    fig = plt.figure(figsize=(3.9 * max(c for _, c in shapes) + 1.0, sum(heights)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=heights))
    counts, notes = [], []
    for sub, (model, t41) in zip(subs, rows, strict=True):
        c, layers = _theorem_block(sub, data, model, t41)
        counts += c
        shown = "all" if len(layers) == t41.layer.nunique() else f"{len(layers)} of {t41.layer.nunique()}"
        notes.append(f"{model_phrase(data, model)}; batch: {data.probe_batch.get(model, 'the probed batch')}; BN "
                     f"layers shown: {shown} (#{', #'.join(map(str, layers))}); max ε/σ² "
                     f"{t41.eps_ratio_max.astype(float).max():.2g}")
    caption = ("Extra: Theorem 4.1 (paper §4.1) on every channel of every BN layer at the saved checkpoints, from one "
               f"forward/backward on the checkpoint step's batch ({BN_MODE}; both sides summed in float64), "
               "summarised per layer by the probe step. g_z and g_y: the loss gradient w.r.t. a channel's BN output "
               "and input, m values each. Panels 'gradient ratio through BN': ‖g_y‖²/‖g_z‖², the layer's median over "
               "its channels (colour: layer; dotted: 1). The paper calls this ratio the reduction of the gradient's "
               "Lipschitz constant, but it is a reduction only below 1: by the theorem it equals "
               "(γ²/σ²)·‖Pg_z‖²/‖g_z‖² with P a projection, at most γ²/σ², so it exceeds 1 (BN grows the gradient) "
               "wherever γ > σ, e.g. in layers whose pre-BN activations have a small spread σ. Panels 'Theorem 4.1': "
               "the largest relative gap |lhs − rhs| / ((γ²/σ²)‖g_z‖²) over layers and channels; circles: the "
               "paper's right side (1/m, σ with ε folded in), off by terms of size ε/σ²; crosses: the ε-exact "
               "identity, which a correct implementation meets to float precision (dotted: fp32 machine ε = "
               f"{FP32_EPS:.2g}). {'. '.join(notes)}. {curve_note(counts, data.band, log=True)}")
    return Drawn(fig, caption)

"""Activation distributions and moments: Figs 1c, 2 (noisy BN), 6 (ℓp, layer #11), 8 (moment drift), 9 (DLN).

Distributions are those of one tracked unit over the batch at each probed step (quantiles q05…q95 of act_units),
drawn as a distribution over time: 5–95% and 25–75% bands and the median.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bnflow.figures.common import (LP_VARIANTS, NOISE_NOTE, PAPER_LRS, Drawn, Skip, curve_note, diverged_note, look,
                                   model_phrase, ordered, rows_of, runs_name, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.plots import QUANTILE_BANDS, distribution_over_time, figure_legend, legend, seed_curves
from bnflow.figures.select import (PAPER_DEPTH, layer_title, layers_heading, model_key, paper_lrs, pick_lrs,
                                   resolve_layers)
from bnflow.figures.training import ACC_LABEL, draw_train_curves
from bnflow.vocab import CLASSIFIERS
from bnflow.results import RUN_COLUMNS, require_columns

UNSHARED = ("standard", "noisy_standard")  # un-normalised activations live on their own scale
MOMENT_COLUMNS = ("step_mean", "step_var", "drift_mean", "drift_var")


def first_unit(units: pd.DataFrame) -> pd.DataFrame:
    """Rows of one tracked unit: the lowest seed's first unit (units differ between seeds, so they are not averaged)."""
    seed = units.seed.min()
    own = units[units.seed == seed]
    return own[own.unit.astype(str) == min(own.unit.astype(str))]


def distribution_grid(fig: plt.Figure, data: FigureData, axd: dict, keys: list[list[str]], units: pd.DataFrame,
                      layers: list[tuple[int, tuple[int, ...]]], variants: list[str], ylabel: str) -> list[str]:
    """Fill axd[keys[row][col]] with the distribution over time of layer row, variant col; returns unit notes."""
    notes = []
    for r, (layer, paper) in enumerate(layers):
        shared = None
        for c, variant in enumerate(variants):
            ax = axd[keys[r][c]]
            d = units[(units.layer == layer) & (units.variant == variant)]
            if variant not in UNSHARED:
                shared = shared or ax
                if ax is not shared:
                    ax.sharey(shared)
            title = f"{variant_label(data, variant)}\n{layer_title(layer, paper)}"
            if d.empty:
                ax.set_axis_off()
                ax.set_title(f"{title}: not recorded", fontsize=8.5)
                continue
            unit = first_unit(d)
            distribution_over_time(ax, unit, color=data.style(variant).color)
            ax.set_title(title, fontsize=8.5)
            ax.set_xlabel("training step")
            if c == 0:
                ax.set_ylabel(ylabel)
            notes.append(f"{variant_label(data, variant)} #{layer}: unit ({unit.unit.iloc[0]}) of seed {unit.seed.iloc[0]}")
    grey = "#555555"
    fig.legend([Patch(color=grey, alpha=QUANTILE_BANDS[0][2], linewidth=0),
                Patch(color=grey, alpha=QUANTILE_BANDS[0][2] + QUANTILE_BANDS[1][2], linewidth=0),
                Line2D([], [], color=grey, linewidth=1.2)],
               ["5–95% of the batch", "25–75%", "median"], loc="outside upper right", ncols=3, frameon=False,
               fontsize=7.5)
    return notes


def _units(data: FigureData, model: str, variants: Sequence[str]) -> tuple[pd.DataFrame, str, list[float]]:
    units, source = data.probes("act_units", model)
    units = rows_of(units, variants)
    lrs = pick_lrs(units.lr.unique(), paper_lrs(PAPER_LRS, model) or ())[:1] if not units.empty else []
    return rows_of(units, variants, lrs), source, lrs


def _point(data: FigureData, model: str) -> str:
    """Where the activations were read, in words (the DLN has no ReLU: its pre_relu point is the layer's output)."""
    if model not in CLASSIFIERS:
        return "layer output"
    return "pre-ReLU" if data.activation_point == "pre_relu" else "post-ReLU"


def fig_distributions(data: FigureData, model: str, fig_id: str, paper_layers: tuple[int, ...],
                      variants: tuple[str, ...], title: str, *, with_accuracy: bool = False, note: str = ""
                      ) -> Drawn | Skip:
    """A grid of distributions over time, rows = the paper's layers, columns = variants (Figs 1c, 2, 6, 9).

    Args:
        title: the REPORT.md heading without layers; the layers drawn (from the data) are appended.
    """
    units, source, lrs = _units(data, model, variants)
    if units.empty:
        return Skip(f"no {model} activation probes (act_units) for {', '.join(variants)}")
    present = ordered(units.variant)
    key = model_key(model)
    layers = resolve_layers(paper_layers, units.layer.unique(), data.depths.get(model, PAPER_DEPTH[key]),
                            PAPER_DEPTH[key])
    keys = [[f"d{r}_{c}" for c in range(len(present))] for r in range(len(layers))]
    mosaic = [(["acc"] if with_accuracy else []) + row for row in keys]
    widths = ([1.6] if with_accuracy else []) + [1.0] * len(present)
    fig, axd = plt.subplot_mosaic(mosaic, figsize=(2.9 * sum(widths) + 0.4, 2.3 * len(layers) + 0.4),
                                  width_ratios=widths, layout="constrained")
    seeds = ""
    if with_accuracy:
        metrics = data.table("metrics", model)
        counts = draw_train_curves(axd["acc"], data, metrics[metrics.split == "train"], y="acc", variants=present,
                                   lrs=lrs)
        axd["acc"].set_title(f"training accuracy, lr {lrs[0]:g}")
        axd["acc"].set_xlabel("training step")
        axd["acc"].set_ylabel(f"mini-batch {ACC_LABEL}")
        legend(axd["acc"], loc="best")
        seeds = f" Accuracy: {curve_note(counts, data.band)}"
    notes = distribution_grid(fig, data, axd, keys, units, layers, present, f"activation ({_point(data, model)})")
    image = model in CLASSIFIERS
    caption = (f"{fig_id}. {model_phrase(data, model)}, lr {lrs[0]:g}; {source}. Distribution over the "
               f"{'mini-' if image else 'full '}batch of one tracked unit per panel "
               f"({'channel, row, column' if image else 'unit index'}) at each probed step, recorded in the training "
               f"forward pass (train-mode BN): shaded 5–95% and 25–75%, line: median. Units: {'; '.join(notes)}. "
               f"Activations {_point(data, model)} (for normalised variants: after the norm's affine map). "
               f"Normalised variants share a y-scale per row; un-normalised ones have their own.{seeds} {note}"
               f"{diverged_note(data, model, present, lrs)}")
    return Drawn(fig, caption.rstrip(), f"{title}, {layers_heading(layers)}")


def fig01c_activations(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 1c: distribution over time of one activation at layers #3 and #11, standard vs BN (`model`: the VGG
    family, bnflow.figures.scales)."""
    return fig_distributions(data, model, "Fig 1c", (3, 11), ("standard", "bn"),
                             "distribution of one activation over time, standard vs BatchNorm")


def fig02_noisy_bn(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 2: train accuracy and activation distributions at layers #2, #9, #13 for standard, BN and noisy BN."""
    if rows_of(data.table("metrics", model), ["noisy_bn"]).empty:
        return Skip(f"no {runs_name(model)} noisy_bn runs in the grid")
    return fig_distributions(data, model, "Fig 2", (2, 9, 13), ("standard", "bn", "noisy_bn"),
                             "noisy BatchNorm: training accuracy and activation distributions", with_accuracy=True,
                             note=f"Noisy BN: paper Algorithm 1 after each BN's affine map. {NOISE_NOTE}")


def fig06_lp_activations(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 6: activation distributions at layer #11 under each normalisation."""
    if rows_of(data.table("metrics", model), LP_VARIANTS).empty:
        return Skip(f"no {runs_name(model)} l1, l2 or linf runs in the grid")
    return fig_distributions(data, model, "Fig 6", (11,), ("standard", "bn", *LP_VARIANTS),
                             "activation distributions under each normalisation")


def fig09_dln_activations(data: FigureData) -> Drawn | Skip:
    """Fig 9: DLN activation distributions at layers 1, 11, 24, standard vs BN."""
    return fig_distributions(data, "dln", "Fig 9", (1, 11, 24), ("standard", "bn"),
                             "deep linear network activation distributions")


def moment_changes(channels: pd.DataFrame) -> pd.DataFrame:
    """Scale-free change of each tracked channel's batch mean and variance, averaged over the tracked channels.

    For a channel with batch moments (μ_i, σ²_i) at probed steps t_0 < t_1 < …:
      step_mean = |μ_i − μ_{i−1}| / σ_{i−1},  step_var = |σ²_i − σ²_{i−1}| / σ²_{i−1}    (i ≥ 1; change between probes)
      drift_mean = |μ_i − μ_0| / σ_0,          drift_var = |σ²_i − σ²_0| / σ²_0          (drift from the first probe)
    Dividing by the earlier σ / σ² makes un-normalised and normalised layers comparable (their scales differ by
    orders of magnitude). A zero variance gives NaN.

    Args:
        channels: act_channels rows with the run columns and step, layer, channel, mean, var.

    Returns:
        one row per (run, layer, step) with the run columns, layer, step and MOMENT_COLUMNS.
    """
    require_columns(channels, (*RUN_COLUMNS, "step", "layer", "channel", "mean", "var"), "act_channels")
    keys = [*RUN_COLUMNS, "layer", "channel"]
    d = channels.sort_values([*keys, "step"]).reset_index(drop=True)
    g = d.groupby(keys, sort=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        prev_mean, prev_var = g["mean"].shift(1), g["var"].shift(1)
        first_mean, first_var = g["mean"].transform("first"), g["var"].transform("first")
        out = d[[*keys, "step"]].copy()
        pos = lambda v: v.where(v > 0)  # noqa: E731 - a zero/negative variance has no scale
        out["step_mean"] = (d["mean"] - prev_mean).abs() / np.sqrt(pos(prev_var))
        out["step_var"] = (d["var"] - prev_var).abs() / pos(prev_var)
        out["drift_mean"] = (d["mean"] - first_mean).abs() / np.sqrt(pos(first_var))
        out["drift_var"] = (d["var"] - first_var).abs() / pos(first_var)
    return out.groupby([*RUN_COLUMNS, "layer", "step"], as_index=False, sort=True)[list(MOMENT_COLUMNS)].mean()


def fig_moments(data: FigureData, part: str, model: str = "vgg") -> Drawn | Skip:
    """Fig 8a (change between consecutive probes) / 8b (drift from the first probe) of channel means and variances
    (`model`: the VGG family, bnflow.figures.scales)."""
    variants = ("standard", "bn", "noisy_bn")
    chans, source = data.probes("act_channels", model)
    chans = rows_of(chans, variants)
    if chans.empty:
        return Skip(f"no {runs_name(model)} activation-channel probes for standard, bn or noisy_bn")
    lrs = pick_lrs(chans.lr.unique(), paper_lrs(PAPER_LRS, model))[:1]
    moments = moment_changes(rows_of(chans, variants, lrs))
    key = model_key(model)
    layers = resolve_layers((2, 9, 13), moments.layer.unique(), data.depths.get(model, PAPER_DEPTH[key]),
                            PAPER_DEPTH[key])
    cols = (("step_mean", "|Δμ| / σ"), ("step_var", "|Δσ²| / σ²")) if part == "a" else \
        (("drift_mean", "|μₜ − μ₀| / σ₀"), ("drift_var", "|σ²ₜ − σ²₀| / σ²₀"))
    fig, axes = plt.subplots(len(layers), 2, figsize=(8.4, 2.4 * len(layers) + 0.3), squeeze=False, sharex=True,
                             layout="constrained")
    counts = []
    for r, (layer, paper) in enumerate(layers):
        for c, (col, ylabel) in enumerate(cols):
            ax = axes[r][c]
            for variant in ordered(moments.variant):
                d = moments[(moments.layer == layer) & (moments.variant == variant)].dropna(subset=[col])
                d = d[d[col] > 0]
                if not d.empty:
                    counts.append(seed_curves(ax, d, x="step", y=col, label=variant_label(data, variant, lrs[0]),
                                              band=data.band, log=True, **look(data, variant)))
            ax.set_yscale("log")
            ax.set_title(f"batch {'mean' if c == 0 else 'variance'}, {layer_title(layer, paper)}", fontsize=8.5)
            ax.set_ylabel(ylabel + " (log)")
            if r == len(layers) - 1:
                ax.set_xlabel("training step")
    figure_legend(fig)
    what = ("(a) Change of each tracked channel's batch mean and variance between consecutive probes"
            if part == "a" else "(b) Drift of each tracked channel's batch mean and variance from the first probe "
                                "(zero there, so not drawn on the log axis)")
    caption = (f"Fig 8{part}. {what}, in units of the channel's earlier scale (σ, σ²), averaged over the tracked "
               f"channels. {model_phrase(data, model)}; {source}; activations {_point(data, model)}, recorded in the "
               f"training forward pass (train-mode BN; for noisy BN the noise is included). "
               f"{curve_note(counts, data.band, log=True)}{diverged_note(data, model, variants, lrs)}")
    title = ("change of activation mean and variance between probes" if part == "a" else
             "drift of activation mean and variance from the first probe")
    return Drawn(fig, caption, f"{title}, {layers_heading(layers)}")


def fig08a_moment_change(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    return fig_moments(data, "a", model)


def fig08b_moment_drift(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    return fig_moments(data, "b", model)

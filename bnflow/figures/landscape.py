"""Loss-landscape probes (paper §3.2): Figs 4 and 10 (standard vs BN), 11 (gradient change vs η), 12–13 (ℓp)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator

from bnflow.figures.common import (LP_VARIANTS, PAPER_LRS, PROBE_MODE, Drawn, Skip, curve_note, diverged_note, look,
                                   many, model_phrase, ordered, rows_of, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.plots import eta_band, figure_legend, seed_curves, seed_summary
from bnflow.figures.select import paper_lrs, pick_lrs
from bnflow.figures.style import STEP_CMAP, Z_SEED
from bnflow.figures.training import train_panel
from bnflow.results import RUN_COLUMNS, require_columns

MAX_TIMES = 6  # Fig 11 curves when the training times come from dense probes (one per probed step would be unreadable)
PANEL_TITLES = ("loss landscape: L(θ − ηg) over η", "gradient predictiveness: ‖∇L(θ − ηg) − g‖ over η",
                "effective β-smoothness")


def beta_eff(landscape: pd.DataFrame) -> pd.DataFrame:
    """Effective β-smoothness per run and probed step: max over η of ‖∇L(θ−ηg) − g‖ / ‖ηg‖ (paper Fig 4c caption).

    Args:
        landscape: rows with the run columns and step, eta, ratio (= ‖∇L(θ−ηg) − g‖ / ‖ηg‖).

    Returns:
        one row per (run, step) with the run columns, step and beta.
    """
    require_columns(landscape, (*RUN_COLUMNS, "step", "ratio"), "landscape for beta_eff")
    keys = [*RUN_COLUMNS, "step"]
    return landscape.groupby(keys, as_index=False, sort=True).agg(beta=("ratio", "max"))


def gradient_rows(landscape: pd.DataFrame) -> pd.DataFrame:
    """Probes along −ηg only (the paper's); rows probed along a random direction are another experiment."""
    if "direction" in landscape.columns:
        return landscape[landscape.direction.fillna("gradient") == "gradient"]
    return landscape


def landscape_panels(axes: list[Axes], data: FigureData, land: pd.DataFrame, *, variants: list[str],
                     lrs: list[float], log: bool) -> list[int]:
    """Draw (a) the loss band, (b) the gradient-predictiveness band, (c) β_eff into three axes; returns seed counts."""
    counts = []
    per_seed = len(variants) * len(lrs) <= 2  # with more bands, each seed's edges would bury them
    light = many(len(variants) * len(lrs))
    for variant in variants:
        for lr in lrs:
            d = rows_of(land, [variant], [lr])
            if d.empty:
                continue
            label, style = variant_label(data, variant, lr), look(data, variant, lr, lrs)
            counts.append(eta_band(axes[0], d, y="loss", label=label, log=log, per_seed=per_seed, **style))
            eta_band(axes[1], d, y="grad_change", label=label, log=log, per_seed=per_seed, **style)
            seed_curves(axes[2], beta_eff(d), x="step", y="beta", label=label, band=data.band, log=True,
                        light=light, **style)
    labels = ("loss on the probed batch", "ℓ2 gradient change ‖∇L(θ − ηg) − g‖", "β_eff = max_η ‖Δ∇L‖ / ‖ηg‖")
    for ax, title, ylabel in zip(axes, PANEL_TITLES, labels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel + (" (log)" if log or ax is axes[2] else ""))
        if log or ax is axes[2]:
            ax.set_yscale("log")
    return counts


def _landscape_caption(fig_id: str, data: FigureData, model: str, source: str, lrs: list[float], etas: str,
                       counts: list[int], variants: list[str]) -> str:
    seeds = ", thin lines = each seed's own band edges" if len(variants) * len(lrs) <= 2 else ""
    return (f"{fig_id}. {model_phrase(data, model)}; {source}. Step sizes η ∈ {etas}. Loss and gradient panels: "
            f"shaded = min–max over η of the across-seed mean ({'geometric ' if model == 'dln' else ''}mean over "
            f"{max(counts, default=0)} seeds){seeds}. β_eff: "
            f"{curve_note(counts, data.band, log=True, single=not many(len(variants) * len(lrs)))} {PROBE_MODE}"
            f"{diverged_note(data, model, variants, lrs)}")


def _eta_text(land: pd.DataFrame, lrs: list[float]) -> str:
    factors = sorted({round(float(e) / float(lr), 6) for lr in lrs for e in rows_of(land, land.variant.unique(), [lr]).eta})
    return "{" + ", ".join(f"{f:g}" for f in factors) + "} × lr"


def fig_landscape(data: FigureData, model: str, fig_id: str, variants: tuple[str, ...]) -> Drawn | Skip:
    """Figs 4 / 10 (standard vs BN) and the probe panels of 12 / 13 (ℓp) for one model at the paper's lr."""
    land, source = data.probes("landscape", model)
    land = rows_of(gradient_rows(land), variants)
    if land.empty:
        return Skip(f"no {model} landscape probes for {', '.join(variants)} (dense probes off and no probe step)")
    lrs = pick_lrs(land.lr.unique(), paper_lrs(PAPER_LRS, model))
    land, present = rows_of(land, variants, lrs), ordered(rows_of(land, variants, lrs).variant)
    with_train = fig_id.startswith("Fig 12") or fig_id.startswith("Fig 13")
    n = 4 if with_train else 3
    fig, axes = plt.subplots(1, n, figsize=(4.1 * n, 3.5), squeeze=False, layout="constrained")
    axes = list(axes[0])
    counts = []
    if with_train:
        counts += train_panel(axes[0], data, model, present, lrs, light=many(len(present) * len(lrs)))
    counts += landscape_panels(axes[-3:], data, land, variants=present, lrs=lrs, log=model == "dln")
    for k, ax in enumerate(axes):
        ax.set_title(f"({'abcd'[k]}) {ax.get_title()}")
    figure_legend(fig)
    return Drawn(fig, _landscape_caption(fig_id, data, model, source, lrs, _eta_text(land, lrs), counts, present))


def fig04_landscape_vgg(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 4a–c: VGG loss band, gradient-predictiveness band and β_eff, standard vs BN at lr 0.1 (`model`: the VGG
    family, bnflow.figures.scales)."""
    return fig_landscape(data, model, "Fig 4a–c", ("standard", "bn"))


def fig10_landscape_dln(data: FigureData) -> Drawn | Skip:
    """Fig 10a–c: the DLN's loss band, gradient-predictiveness band and β_eff, standard vs BN at lr 1e-6."""
    return fig_landscape(data, "dln", "Fig 10a–c", ("standard", "bn"))


def _lp_landscape(data: FigureData, model: str, fig_id: str) -> Drawn | Skip:
    if rows_of(data.table("metrics", model), LP_VARIANTS).empty:
        return Skip(f"no {model} l1, l2 or linf runs in the grid")
    return fig_landscape(data, model, fig_id, ("standard", "bn", *LP_VARIANTS))


def fig12_lp_vgg(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 12a–d: VGG with ℓp normalisations: train accuracy, loss band, gradient predictiveness, β_eff (`model`: the
    VGG family)."""
    return _lp_landscape(data, model, "Fig 12a–d")


def fig13_lp_dln(data: FigureData) -> Drawn | Skip:
    """Fig 13a–d: the DLN with ℓp normalisations: train loss, loss band, gradient predictiveness, β_eff."""
    return _lp_landscape(data, "dln", "Fig 13a–d")


def training_times(steps: np.ndarray, k: int = MAX_TIMES) -> list[float]:
    """At most k probed steps spread evenly over the run (first and last included)."""
    steps = np.unique(np.asarray(steps, dtype=float))
    if len(steps) <= k:
        return list(steps)
    return list(steps[np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))])


def fig_grad_vs_eta(data: FigureData, model: str, fig_id: str) -> Drawn | Skip:
    """Fig 11a/b: ℓ2 gradient change vs probe step size η, one curve per training time, colour = step."""
    land = gradient_rows(data.table("landscape", model, checkpoint=True))
    source = "checkpoint-wise probes"
    if land.empty:
        land, source = data.probes("landscape", model)
        land = gradient_rows(land)
    land = rows_of(land, ["standard", "bn"])
    if land.empty:
        return Skip(f"no {model} landscape probes for standard or bn")
    lrs = pick_lrs(land.lr.unique(), paper_lrs(PAPER_LRS, model))[:1]
    land = rows_of(land, ["standard", "bn"], lrs)
    times = training_times(land.step.unique())
    colors = colormaps[STEP_CMAP](np.linspace(0.0, 0.9, max(len(times), 2)))
    variants = ordered(land.variant)
    fig, axes = plt.subplots(1, len(variants), figsize=(4.3 * len(variants), 3.5), squeeze=False, sharey=True,
                             layout="constrained")
    counts = []
    for ax, variant in zip(axes[0], variants, strict=True):
        d = land[land.variant == variant]
        for step, color in zip(times, colors, strict=False):
            wide = d[d.step == step].pivot_table(index="eta", columns="seed", values="grad_change", aggfunc="first")
            if wide.empty:
                continue
            etas = wide.index.to_numpy(dtype=float)
            for k in range(wide.shape[1]):
                ax.plot(etas, wide.iloc[:, k], color=color, linewidth=0.5, alpha=0.35, zorder=Z_SEED)
            centre, _, _ = seed_summary(wide.to_numpy(dtype=float), "minmax", log=True)
            ax.plot(etas, centre, color=color, linewidth=1.6, marker="o", markersize=3, label=f"step {step:g}")
            counts.append(wide.shape[1])
        ax.axvline(lrs[0], color="#777777", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        etas = np.sort(d.eta.unique().astype(float))
        ax.set_xticks(etas, [f"{e:g}" for e in etas])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(variant_label(data, variant, lrs[0]))
        ax.set_xlabel(f"probe step size η (dotted: η = lr = {lrs[0]:g})")
    axes[0][0].set_ylabel("ℓ2 gradient change ‖∇L(θ − ηg) − g‖ (log)")
    figure_legend(fig, ncols=MAX_TIMES, title="training time (colour: step)", title_fontsize=7.5)
    caption = (f"{fig_id}. {model_phrase(data, model)}; {source}. Thick lines: geometric mean over "
               f"{max(counts, default=0)} seeds of the gradient change at each η; thin lines: single seeds; colour: "
               f"training step (light = late). {PROBE_MODE}{diverged_note(data, model, variants, lrs)}")
    return Drawn(fig, caption)


def fig11a_grad_eta_vgg(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    return fig_grad_vs_eta(data, model, "Fig 11a")


def fig11b_grad_eta_dln(data: FigureData) -> Drawn | Skip:
    return fig_grad_vs_eta(data, "dln", "Fig 11b")


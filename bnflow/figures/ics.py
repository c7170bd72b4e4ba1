"""Internal covariate shift (paper Definition 2.1, PROTOCOL §4): Fig 3a (VGG) and Fig 3b (DLN).

Per lr: the training curve, then for each ICS layer ‖G − G'‖₂ (log), the relative ‖G − G'‖₂ / ‖G‖₂ (log) and
cos(G, G'), one curve per variant (the paper's figures: standard vs BN; figv2 draws every variant).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from bnflow.figures.common import (PROBE_MODE, Drawn, Skip, curve_note, diverged_note, look, many, model_name,
                                   model_phrase, ordered, rows_of, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.plots import figure_legend, seed_curves
from bnflow.figures.scales import PAPER_VGG, REDUCED
from bnflow.figures.select import PAPER_DEPTH, layer_title, layers_heading, model_key, pick_lrs, resolve_layers
from bnflow.figures.style import Z_REFERENCE
from bnflow.figures.training import train_panel

PAPER = {"vgg": {"lrs": (0.1, 0.01), "layers": (5, 10)}, "dln": {"lrs": (1e-6, 1e-7), "layers": (9, 17)}}
ROWS = (("l2", "‖G − G′‖₂ (log)", True), ("rel", "‖G − G′‖₂ / ‖G‖₂ (log)", True), ("cos", "cos(G, G′)", False))


def ics_layers(data: FigureData, model: str, recorded) -> list[tuple[int, tuple[int, ...]]]:
    """The recorded layers standing in for the paper's ICS layers (classifiers read like VGG)."""
    key = model_key(model)
    return resolve_layers(PAPER[key]["layers"], recorded, data.depths.get(model, PAPER_DEPTH[key]), PAPER_DEPTH[key])


def ics_block(fig, data: FigureData, model: str, ics: pd.DataFrame, lrs: list[float], *,
              rows: tuple = ROWS, with_train: bool = True
              ) -> tuple[list[int], list[tuple[int, tuple[int, ...]]], bool]:
    """Draw one model's ICS panels into a figure or subfigure: per lr the training curve (if `with_train`), then per
    layer one panel per metric row, a curve per variant; returns (seed counts, layers drawn, drawn light).

    Args:
        ics: the model's ICS rows of the variants to draw, at `lrs`.
        rows: the metric rows (ROWS or a subset).
    """
    present = ordered(ics.variant)
    light = many(len(present))
    layers = ics_layers(data, model, ics.layer.unique())
    nl = len(layers)
    mosaic = [[f"{m}{i}_{j}" for i in range(len(lrs)) for j in range(nl)] for m, _, _ in rows]
    if with_train:
        mosaic = [[f"train{i}" for i in range(len(lrs)) for _ in range(nl)], *mosaic]
    axd = fig.subplot_mosaic(mosaic)
    for metric, _, log in rows:  # one y-scale per row, so lrs and layers compare at a glance
        row = [axd[f"{metric}{i}_{j}"] for i in range(len(lrs)) for j in range(nl)]
        for ax in row[1:]:
            ax.sharey(row[0])
        if log:
            row[0].set_yscale("log")
    counts = []
    for i, lr in enumerate(lrs):
        if with_train:
            train_panel(axd[f"train{i}"], data, model, present, [lr], light=light, with_lr=False,
                        title=f"training {'loss' if model == 'dln' else 'accuracy'}, lr {lr:g}")
        for j, (layer, paper) in enumerate(layers):
            for r, (metric, ylabel, log) in enumerate(rows):
                ax = axd[f"{metric}{i}_{j}"]
                for variant in present:
                    d = rows_of(ics[ics.layer == layer], [variant], [lr])
                    if not d.empty:
                        n = seed_curves(ax, d, x="step", y=metric, label=variant_label(data, variant),
                                        band=data.band, log=log, light=light, **look(data, variant, lr, [lr]))
                        counts += [n] if r == 0 else []
                ax.set_title(f"{layer_title(layer, paper)}, lr {lr:g}", fontsize=8.5)
                ax.set_ylabel(ylabel)
                if r == len(rows) - 1:
                    ax.set_xlabel("training step")
                if metric == "cos":
                    ax.axhline(1.0, color="#999999", linewidth=0.6, linestyle=":", zorder=Z_REFERENCE)
    return counts, layers, light


def ics_rows(data: FigureData, model: str, variants: tuple[str, ...] | None, max_lrs: int | None
             ) -> tuple[pd.DataFrame, str, list[float]]:
    """The model's ICS rows of these variants (None: all) at the paper's lrs (at most `max_lrs`), the probes' phrase,
    and the lrs."""
    ics, source = data.probes("ics", model)
    ics = rows_of(ics, variants if variants is not None else list(ics.variant.unique()))
    if ics.empty:
        return ics, source, []
    lrs = pick_lrs(ics.lr.unique(), PAPER[model_key(model)]["lrs"])[:max_lrs]
    return rows_of(ics, list(ics.variant.unique()), lrs), source, lrs


def ics_caption(fig_id: str, data: FigureData, notes: list[str], counts: list[int], tail: str = "",
                single: bool | None = True) -> str:
    return (f"{fig_id}. Internal covariate shift (Definition 2.1): G = the gradient of layer k's weights that step "
            f"t uses, G′ = the same gradient on the same batch after layers 1..k−1 took their step-t update. "
            f"{'. '.join(notes)}. {curve_note(counts, data.band, log=True, single=single)} {PROBE_MODE}{tail}")


def fig_ics(data: FigureData, model: str, fig_id: str) -> Drawn | Skip:
    """Fig 3a/3b: ICS of standard vs BN at the paper's two lrs and two layers, with the training curve per lr."""
    ics, source, lrs = ics_rows(data, model, ("standard", "bn"), None)
    if ics.empty:
        return Skip(f"no {model} ICS probes for standard or bn (dense probes off and no probe step)")
    nl = ics.layer.nunique()
    fig = plt.figure(figsize=(max(3.1 * min(nl, 2) * len(lrs), 6.2) + 0.5, 2.45 * (1 + len(ROWS))),
                     layout="constrained")
    counts, layers, light = ics_block(fig, data, model, ics, lrs)
    figure_legend(fig)  # one entry per variant: every panel's title names its lr
    caption = ics_caption(fig_id, data, [f"{model_phrase(data, model)}; {source}"], counts,
                          diverged_note(data, model, ordered(ics.variant), lrs), single=not light)
    # a reduced-scale VGG is "VGG" here: the registry appends its scale to the title (bnflow.figures.scales)
    name = "the deep linear network" if model == "dln" else model_name(PAPER_VGG if model in REDUCED else model)
    title = f"internal covariate shift in {name} at {layers_heading(layers)} (ℓ2 difference, cosine)"
    return Drawn(fig, caption, title)


def fig03a_ics_vgg(data: FigureData, model: str = "vgg") -> Drawn | Skip:
    """Fig 3a: VGG layers #5, #10 (or the recorded layers nearest them) at lr 0.1 and 0.01, with training accuracy
    (`model`: the VGG family, bnflow.figures.scales)."""
    return fig_ics(data, model, "Fig 3a")


def fig03b_ics_dln(data: FigureData) -> Drawn | Skip:
    """Fig 3b: DLN layers #9, #17 at lr 1e-6 and 1e-7, with training loss."""
    return fig_ics(data, "dln", "Fig 3b")

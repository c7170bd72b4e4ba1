"""Internal covariate shift (paper Definition 2.1, PROTOCOL §4): Fig 3a (VGG) and Fig 3b (DLN).

Per lr: the training curve, then for each ICS layer ‖G − G'‖₂ (log), the relative ‖G − G'‖₂ / ‖G‖₂ (log) and
cos(G, G'), standard vs BN.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from bnflow.figures.common import PROBE_MODE, Drawn, Skip, curve_note, diverged_note, model_phrase, ordered, rows_of
from bnflow.figures.data import PAPER_DEPTH, FigureData, layer_title, pick_lrs, resolve_layers
from bnflow.figures.plots import figure_legend, seed_curves, variant_label
from bnflow.figures.style import VARIANT_COLORS
from bnflow.figures.training import ACC_LABEL, DLN_LOSS_LABEL, draw_train_curves

PAPER = {"vgg": {"lrs": (0.1, 0.01), "layers": (5, 10)}, "dln": {"lrs": (1e-6, 1e-7), "layers": (9, 17)}}
ROWS = (("l2", "‖G − G′‖₂ (log)", True), ("rel", "‖G − G′‖₂ / ‖G‖₂ (log)", True), ("cos", "cos(G, G′)", False))


def fig_ics(data: FigureData, model: str, fig_id: str) -> Drawn | Skip:
    """Fig 3a/3b: ICS of standard vs BN at the paper's two lrs and two layers, with the training curve per lr."""
    ics, source = data.probes("ics", model)
    ics = rows_of(ics, ["standard", "bn"])
    if ics.empty:
        return Skip(f"no {model} ICS probes for standard or bn (dense probes off and no probe step)")
    lrs = pick_lrs(ics.lr.unique(), PAPER[model]["lrs"])
    ics = rows_of(ics, ["standard", "bn"], lrs)
    layers = resolve_layers(PAPER[model]["layers"], ics.layer.unique(), data.depths.get(model, PAPER_DEPTH[model]),
                            PAPER_DEPTH[model])
    nl = len(layers)
    mosaic = [[f"train{i}"] * nl for i in range(len(lrs))]
    mosaic = [sum(mosaic, [])] + [[f"{m}{i}_{j}" for i in range(len(lrs)) for j in range(nl)] for m, _, _ in ROWS]
    fig, axd = plt.subplot_mosaic(mosaic, figsize=(3.1 * nl * len(lrs) + 0.5, 2.45 * (1 + len(ROWS))),
                                  layout="constrained")
    for metric, _, log in ROWS:  # one y-scale per row, so lrs and layers compare at a glance
        row = [axd[f"{metric}{i}_{j}"] for i in range(len(lrs)) for j in range(nl)]
        for ax in row[1:]:
            ax.sharey(row[0])
        if log:
            row[0].set_yscale("log")
    metrics = data.table("metrics", model)
    train = rows_of(metrics[metrics.split == "train"], ["standard", "bn"])
    counts = []
    for i, lr in enumerate(lrs):
        ax = axd[f"train{i}"]
        draw_train_curves(ax, train, y="acc" if model == "vgg" else "loss", variants=["standard", "bn"], lrs=[lr],
                          band=data.band, log=model == "dln")
        ax.set_title(f"training {'accuracy' if model == 'vgg' else 'loss'}, lr {lr:g}")
        ax.set_ylabel(f"mini-batch {ACC_LABEL}" if model == "vgg" else DLN_LOSS_LABEL)
        if model == "dln":
            ax.set_yscale("log")
        for j, (layer, paper) in enumerate(layers):
            for r, (metric, ylabel, log) in enumerate(ROWS):
                ax = axd[f"{metric}{i}_{j}"]
                for variant in ordered(ics.variant):
                    d = rows_of(ics[ics.layer == layer], [variant], [lr])
                    if not d.empty:
                        n = seed_curves(ax, d, x="step", y=metric, color=VARIANT_COLORS[variant],
                                        label=variant_label(variant, lr), band=data.band, log=log)
                        counts += [n] if r == 0 else []
                ax.set_title(f"{layer_title(layer, paper)}, lr {lr:g}", fontsize=8.5)
                ax.set_ylabel(ylabel)
                if r == len(ROWS) - 1:
                    ax.set_xlabel("training step")
                    ax.axhline(1.0, color="#999999", linewidth=0.6, linestyle=":")
    figure_legend(fig, ncols=ics.variant.nunique())  # one row per lr
    caption = (f"{fig_id}. Internal covariate shift (Definition 2.1): G = the gradient of layer k's weights that step "
               f"t uses, G′ = the same gradient on the same batch after layers 1..k−1 took their step-t update. "
               f"{model_phrase(data, model)}; {source}. {curve_note(counts, data.band, log=True)} {PROBE_MODE}"
               f"{diverged_note(data, model, ['standard', 'bn'], lrs)}")
    return Drawn(fig, caption)


def fig03a_ics_vgg(data: FigureData) -> Drawn | Skip:
    """Fig 3a: VGG layers #5, #10 at lr 0.1 and 0.01, with training accuracy."""
    return fig_ics(data, "vgg", "Fig 3a")


def fig03b_ics_dln(data: FigureData) -> Drawn | Skip:
    """Fig 3b: DLN layers #9, #17 at lr 1e-6 and 1e-7, with training loss."""
    return fig_ics(data, "dln", "Fig 3b")

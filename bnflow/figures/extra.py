"""Figures the paper does not have but the grid allows: lr sensitivity, and β_eff against the stability bound 2/lr.

β_eff vs 2/lr: gradient descent on a quadratic with curvature β is stable only for lr < 2/β; the "edge of
stability" literature (Cohen et al. 2021, arXiv:2103.00065) finds sharpness hovering at 2/lr during training.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from bnflow.figures.common import (PROBE_MODE, TEST_MODE, Drawn, Skip, curve_note, look, many, model_name,
                                   model_phrase, ordered, seeds_drawn, variant_label)
from bnflow.figures.data import FigureData
from bnflow.figures.landscape import beta_eff, gradient_rows
from bnflow.figures.plots import figure_legend, seed_curves
from bnflow.figures.style import Z_REFERENCE
from bnflow.results import RUN_COLUMNS, require_columns
from bnflow.vocab import CLASSIFIERS



def final_values(metrics: pd.DataFrame, split: str, y: str) -> pd.DataFrame:
    """Each run's value of `y` at its last logged step of `split`; diverged runs and non-finite values left out.

    Args:
        metrics: metrics rows with the run columns and step, split, `y`.

    Returns:
        one row per kept run: the run columns, step, value.
    """
    require_columns(metrics, (*RUN_COLUMNS, "step", "split", y), "metrics")
    d = metrics[(metrics.split == split) & ~metrics.diverged.astype(bool)].sort_values("step")
    last = d.groupby([*RUN_COLUMNS], as_index=False, sort=True).tail(1)
    last = last.assign(value=last[y].astype(float))[[*RUN_COLUMNS, "step", "value"]]
    return last[np.isfinite(last.value)].sort_values([*RUN_COLUMNS], ignore_index=True)


def centres(finals: pd.DataFrame, log: bool) -> pd.DataFrame:
    """Centre over seeds of each (variant, lr): the mean, or the geometric mean for a quantity on a log axis.

    Args:
        finals: final_values rows (variant, lr, value); on a log axis values must be positive.

    Returns:
        one row per (variant, lr): variant, lr, centre, n (runs).
    """
    g = finals.assign(v=np.log(finals.value) if log else finals.value).groupby(["variant", "lr"], sort=True).v
    out = g.agg(["mean", "size"]).reset_index()
    return pd.DataFrame({"variant": out.variant, "lr": out.lr.astype(float),
                         "centre": np.exp(out["mean"]) if log else out["mean"], "n": out["size"]})


def _strip(ax, data: FigureData, finals: pd.DataFrame, log: bool) -> None:
    """One lr only: a dot per run at each variant's position, a bar at the centre over seeds."""
    variants = ordered(finals.variant)
    cen = centres(finals, log).set_index("variant")
    for i, variant in enumerate(variants):
        d = finals[finals.variant == variant].sort_values("seed")
        style = data.style(variant)
        offsets = np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else np.zeros(1)
        ax.scatter(i + offsets, d.value, color=style.color, marker=style.marker, s=14, alpha=0.6, linewidths=0)
        ax.plot([i - 0.28, i + 0.28], [cen.centre[variant]] * 2, color=style.color, linestyle=style.dash,
                linewidth=2.2, label=variant_label(data, variant))
    ax.set_xticks(range(len(variants)), [variant_label(data, v) for v in variants], rotation=30 if len(variants) > 4
                  else 0, ha="right" if len(variants) > 4 else "center")
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set_xlabel("variant")


def _lines(ax, data: FigureData, finals: pd.DataFrame, log: bool) -> None:
    """Several lrs: a dot per run and a line through the centres over seeds, one per variant, against the lr."""
    cen = centres(finals, log)
    for variant in ordered(finals.variant):
        d, c = finals[finals.variant == variant], cen[cen.variant == variant]
        style = data.style(variant)
        ax.scatter(d.lr, d.value, color=style.color, marker=style.marker, s=12, alpha=0.5, linewidths=0)
        ax.plot(c.lr, c.centre, color=style.color, linestyle=style.dash, marker=style.marker, markersize=4.5,
                linewidth=1.5, label=variant_label(data, variant))
    ax.set_xscale("log")
    lrs = np.sort(finals.lr.unique().astype(float))
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(lrs[0] / 2.5, lrs[-1] * 2.5)
    ax.set_xlabel("learning rate (log)")


def figx_lr_sensitivity(data: FigureData) -> Drawn | Skip:
    """Final test accuracy (image classifiers) and final training loss (DLN) against the lr, per variant.

    A model trained at one lr only gets a dot strip (a column per variant) instead of a line against the lr.
    """
    panels = []
    for model in data.models("metrics"):
        split, y = ("test", "acc") if model in CLASSIFIERS else ("train", "loss")
        finals = final_values(data.table("metrics", model), split, y)
        if not finals.empty:
            panels.append((model, finals))
    if not panels:
        return Skip("no finished runs")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, layout="constrained")
    notes = []
    for ax, (model, finals) in zip(axes[0], panels, strict=True):
        log = model not in CLASSIFIERS
        lrs = sorted(finals.lr.unique().astype(float))
        if len(lrs) == 1:
            _strip(ax, data, finals, log)
        else:
            _lines(ax, data, finals, log)
        at = f" at lr {lrs[0]:g} (the grid's only lr)" if len(lrs) == 1 else ""
        if log:
            ax.set_yscale("log")
            ax.set_ylabel("final training loss (log)")
            ax.set_title(f"{model_name(model)}: final training loss{at}")
        else:
            ax.set_ylabel("final test accuracy (fraction correct)")
            ax.set_title(f"{model_name(model)}: final test accuracy{at}")
        diverged = sorted(data.runs[(data.runs.model == model) & data.runs.diverged.astype(bool)].run_id) \
            if not data.runs.empty else []
        notes.append(f"{model_phrase(data, model)}" + (f" (diverged, left out: {', '.join(diverged)})"
                                                        if diverged else ""))
    figure_legend(fig)
    caption = ("Extra: lr sensitivity. Image classifiers: test accuracy at the last evaluation; DLN: training loss at "
               "the last logged step. Dots: single runs; bars (one lr) or lines (several lrs): mean over seeds "
               f"(geometric mean for the DLN loss). {'; '.join(notes)}. {TEST_MODE}")
    return Drawn(fig, caption)


def figx_beta_vs_lr(data: FigureData) -> Drawn | Skip:
    """β_eff over training with the bound 2/lr, and each run's median β_eff against 2/lr; a block (with its own
    legend) per model, so one key never mixes two models' runs."""
    rows = []
    for model in data.models("landscape") or data.models("landscape", checkpoint=True):
        land, source = data.probes("landscape", model)
        land = gradient_rows(land)
        if not land.empty:
            rows.append((model, beta_eff(land), source))
    if not rows:
        return Skip("no landscape probes")
    fig = plt.figure(figsize=(9.0, 3.7 * len(rows)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1))
    counts, notes, lights = [], [], []
    for sub, (model, beta, source) in zip(subs, rows, strict=True):
        ax_t, ax_s = sub.subplots(1, 2)
        lrs = sorted({float(v) for v in beta.lr}, reverse=True)
        variants = ordered(beta.variant)
        light = many(len(variants) * len(lrs))
        lights.append(light)
        for variant in variants:
            for lr in lrs:
                d = beta[(beta.variant == variant) & (beta.lr == lr)]
                if d.empty:
                    continue
                style = look(data, variant, lr, lrs)
                counts.append(seed_curves(ax_t, d, x="step", y="beta", label=variant_label(data, variant, lr),
                                          band=data.band, log=True, light=light, **style))
                med = d.groupby("seed").beta.median()
                ax_s.scatter(np.full(len(med), 2.0 / lr), med, color=style["color"], s=16, alpha=0.8,
                             marker=data.style(variant).marker)
        for lr in lrs:
            ax_t.axhline(2.0 / lr, color="#777777", linewidth=0.8, linestyle=":", zorder=Z_REFERENCE)
        lim = np.array([min(2.0 / max(lrs), np.nanmin(beta.beta)), max(2.0 / min(lrs), np.nanmax(beta.beta))])
        ax_s.plot(lim, lim, color="#777777", linewidth=0.8, linestyle=":", label="β_eff = 2/lr")
        name = model_name(model)
        for ax in (ax_t, ax_s):
            ax.set_yscale("log")
            ax.set_ylabel("β_eff (log)")
        ax_t.set_xlabel("training step")
        ax_t.set_title("β_eff over training (grey dotted: 2/lr)")
        ax_s.set_xscale("log")
        ax_s.set_xlabel("2 / lr (log)")
        ax_s.set_title("median β_eff per run vs 2/lr")
        figure_legend(sub, title=name, title_fontproperties={"weight": "bold", "size": 9.5})
        notes.append(f"{model_phrase(data, model)}; {source}")
    caption = (f"Extra: effective β-smoothness (max over η of ‖∇L(θ − ηg) − g‖ / ‖ηg‖) against 2/lr, the largest "
               f"curvature gradient descent with that lr is stable on. {'; '.join(notes)}. Left: "
               f"{curve_note(counts, data.band, log=True, single=seeds_drawn(lights))} Right: one dot per run (median over its probed steps), "
               f"marker and colour: variant. {PROBE_MODE}")
    return Drawn(fig, caption)

"""Beyond the paper: the lr scan (bnflow.lrscan, PROTOCOL §8) as a figure and a REPORT.md table — the largest lr each
variant still trains at, per seed, with the first lr that failed (the true threshold lies between the two).

The paper's "BN tolerates larger learning rates" (Fig 1, lr 0.5) as a number per variant and seed. The lrscan step
decides trainability and the thresholds; this module only draws and tabulates its scan.csv and thresholds.csv.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from bnflow.figures.common import Drawn, Skip, model_name, ordered, variant_label
from bnflow.figures.data import FigureData
from bnflow.figures.report import Table
from bnflow.figures.select import model_order
from bnflow.vocab import format_lr

GREY = "#555555"
BAR_ALPHA = 0.35


def _models(frame: pd.DataFrame) -> list[str]:
    return sorted({str(m) for m in frame.model}, key=model_order)


def threshold_interval(max_ok: float, first_fail: float, lo_edge: float, hi_edge: float) -> tuple[float, float, str]:
    """Where the threshold lies, for the bar: [largest trainable lr, first failing lr].

    A missing end is the axis edge: nothing trainable ("none": the threshold is below the smallest scanned lr), or
    nothing failed ("all": it is above the largest).

    Returns:
        (left, right, kind) with kind "between", "none" or "all".
    """
    ok, fail = math.isfinite(max_ok), math.isfinite(first_fail)
    if ok and fail:
        return max_ok, first_fail, "between"
    if ok:
        return max_ok, hi_edge, "all"
    if fail:
        return lo_edge, first_fail, "none"
    return lo_edge, hi_edge, "none"


def _panel(ax, data: FigureData, model: str, scan: pd.DataFrame, th: pd.DataFrame) -> None:
    lrs = np.sort(pd.concat([scan.lr, th.max_trainable_lr, th.first_failing_lr]).dropna().unique().astype(float))
    lo_edge, hi_edge = lrs[0] / 2.5, lrs[-1] * 2.5
    rows = [(v, int(s)) for v in ordered(th.variant) for s in sorted(th[th.variant == v].seed.astype(int))]
    n_seeds = th.seed.nunique()
    for y, (variant, seed) in enumerate(rows):
        style = data.style(variant)
        t = th[(th.variant == variant) & (th.seed.astype(int) == seed)].iloc[0]
        left, right, _ = threshold_interval(float(t.max_trainable_lr), float(t.first_failing_lr), lo_edge, hi_edge)
        ax.plot([left, right], [y, y], color=style.color, linewidth=7, alpha=BAR_ALPHA, solid_capstyle="butt")
        s = scan[(scan.variant == variant) & (scan.seed.astype(int) == seed)]
        ok = s.trainable.astype(str).str.lower().isin(("true", "1"))
        div = s.diverged.astype(str).str.lower().isin(("true", "1"))
        ax.scatter(s.lr[ok], np.full(ok.sum(), y), color=style.color, marker="o", s=22, zorder=3)
        ax.scatter(s.lr[~ok & ~div], np.full((~ok & ~div).sum(), y), facecolors="white", edgecolors=style.color,
                   marker="o", s=22, zorder=3)
        ax.scatter(s.lr[div], np.full(div.sum(), y), color=style.color, marker="x", s=22, zorder=3)
    ax.set_xscale("log")
    ax.set_xticks(lrs, [format_lr(v) for v in lrs], rotation=30 if len(lrs) > 5 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(lo_edge, hi_edge)
    labels = [variant_label(data, v) + (f", seed {s}" if n_seeds > 1 else "") for v, s in rows]
    ax.set_yticks(range(len(rows)), labels)
    for tick, (variant, _) in zip(ax.get_yticklabels(), rows, strict=True):
        tick.set_color(data.style(variant).color)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first variant on top
    ax.set_xlabel("learning rate (log; ticks: the scanned lrs)")
    ax.set_title(f"{model_name(model)}: largest trainable lr")


def figx5_lr_thresholds(data: FigureData) -> Drawn | Skip:
    """Per model, per variant and seed: the scanned lrs (trainable or not) and the interval holding the threshold."""
    th, scan = data.lrscan.get("thresholds"), data.lrscan.get("scan")
    waiting = [f"lrscan/{m}" for m in data.lrscan_waiting]
    if th is None or th.empty:
        why = "no lr scan read (the figures step got no --lrscan-root)" if not waiting else "the lr scan is not run yet"
        return Skip(why)
    scan = scan if scan is not None else pd.DataFrame(columns=["model", "variant", "lr", "seed", "trainable",
                                                               "diverged"])
    models = _models(th)
    heights = [0.32 * len(th[th.model == m]) + 1.3 for m in models]
    fig, axes = plt.subplots(1, len(models), figsize=(5.0 * len(models) + 1.2, max(heights) + 0.6), squeeze=False,
                             layout="constrained")
    for ax, model in zip(axes[0], models, strict=True):
        _panel(ax, data, model, scan[scan.model == model], th[th.model == model])
    key = [(Line2D([], [], color=GREY, marker="o", linestyle="none"), "trainable"),
           (Line2D([], [], color=GREY, marker="o", markerfacecolor="white", linestyle="none"),
            "not trainable (loss not reduced enough)"),
           (Line2D([], [], color=GREY, marker="x", linestyle="none"), "diverged (NaN/inf)"),
           (Line2D([], [], color=GREY, linewidth=7, alpha=BAR_ALPHA, solid_capstyle="butt"),
            "threshold lies here (largest trainable → first failing lr)")]
    fig.legend([h for h, _ in key], [t for _, t in key], loc="outside upper center", ncols=4, frameon=False)
    setups = "; ".join(f"{model_name(m)}: {data.lrscan_setup[m]}" for m in models if m in data.lrscan_setup)
    caption = ("Extra: the largest learning rate each variant still trains at (paper Fig 1's 'BN tolerates larger "
               "lrs' as a number), from short runs over a grid of lrs (the lrscan step). Dots: the scanned lrs of one "
               "seed (filled: trainable; open: not trainable; ×: diverged). Bar: the interval holding the threshold, "
               "from the largest trainable lr below the first failure (a lucky larger lr after a failure does not "
               "count) to that first failing lr; a bar reaching the left edge: no scanned lr trained; the right "
               f"edge: every scanned lr trained.{f' {setups}.' if setups else ''}")
    return Drawn(fig, caption)


def _lr_cell(v: float, missing: str) -> str:
    return format_lr(float(v)) if math.isfinite(float(v)) else missing


def thresholds_table(data: FigureData) -> Table | None:
    """REPORT.md's table of the lr scan's thresholds, one row per model, variant and seed; None without a scan."""
    th, scan = data.lrscan.get("thresholds"), data.lrscan.get("scan")
    if th is None or th.empty:
        return None
    rows = []
    for model in _models(th):
        m = th[th.model == model]
        for variant in ordered(m.variant):
            for _, t in m[m.variant == variant].sort_values("seed").iterrows():
                scanned = scan[(scan.model == model) & (scan.variant == variant) & (scan.seed == t.seed)] \
                    if scan is not None else pd.DataFrame(columns=["lr"])
                rows.append({"model": model, "variant": variant, "seed": str(int(t.seed)),
                             "largest trainable lr": _lr_cell(t.max_trainable_lr, "none trained"),
                             "first failing lr": _lr_cell(t.first_failing_lr, "none failed"),
                             "scanned lrs": ", ".join(format_lr(v) for v in sorted(scanned.lr.astype(float)))})
    text = ("From the lrscan step (short runs over a grid of lrs; figure Extra 5). The threshold lies between the "
            "largest trainable lr and the first failing lr; 'none trained': even the smallest scanned lr failed; "
            "'none failed': every scanned lr trained."
            + (f" Not run yet: {', '.join(f'lrscan/{m}' for m in data.lrscan_waiting)}." if data.lrscan_waiting
               else ""))
    return Table("lr_thresholds", "Largest trainable learning rate per variant and seed (lr scan)", text,
                 pd.DataFrame(rows))

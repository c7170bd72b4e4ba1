"""Plotting primitives on tidy DataFrames: a mean line, a band across seeds and thin per-seed lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from bnflow.results import require_columns
from bnflow.figures.style import VARIANT_COLORS, VARIANT_LABELS

BAND_MEANING = {"minmax": "shaded: min–max across seeds", "sd": "shaded: mean ± 1 s.d. across seeds"}


def seed_curves(ax: Axes, df: pd.DataFrame, *, x: str, y: str, variant: str, label: str, band: str,
                linestyle: str = "-") -> None:
    """Draw one variant's curve: mean across seeds (thick), the band across seeds, and each seed (thin).

    Args:
        df: long data with columns `seed`, `x`, `y` for one variant (and one lr).
        band: "minmax" (range over seeds) or "sd" (mean ± 1 standard deviation over seeds).
    """
    require_columns(df, ("seed", x, y), f"curve {label}")
    color = VARIANT_COLORS[variant]
    wide = df.pivot_table(index=x, columns="seed", values=y, aggfunc="first").sort_index()
    xs = wide.index.to_numpy(dtype=float)
    values = wide.to_numpy(dtype=float)
    for k in range(values.shape[1]):
        ax.plot(xs, values[:, k], color=color, linewidth=0.4, alpha=0.35, linestyle=linestyle)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(values, axis=1) if values.size else values
        if band == "minmax":
            lo, hi = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
        else:
            sd = np.nanstd(values, axis=1, ddof=1) if values.shape[1] > 1 else np.zeros_like(mean)
            lo, hi = mean - sd, mean + sd
    ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)
    ax.plot(xs, mean, color=color, linewidth=1.6, linestyle=linestyle, label=label)


def variant_label(variant: str, lr: float) -> str:
    return f"{VARIANT_LABELS[variant]}, lr {lr:g}"

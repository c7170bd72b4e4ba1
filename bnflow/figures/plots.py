"""Plotting primitives on tidy DataFrames: across-seed curves, the paper's band over step sizes, distributions over time.

Each primitive draws what it is given and nothing else; the few reductions it needs (a centre and a band across
seeds, a min–max over step sizes) are the small pure functions below, tested on hand-made arrays.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from bnflow.figures.style import Z_BAND, Z_SEED
from bnflow.results import require_columns

BAND_TEXT = {"minmax": "min–max across seeds", "sd": "mean ± 1 s.d. across seeds (on log axes: ×/÷ the geometric s.d.)"}
QUANTILE_BANDS = (("q05", "q95", 0.18), ("q25", "q75", 0.38))


def seed_summary(values: np.ndarray, band: str, log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre line and band across seeds.

    Args:
        values: (n_points, n_seeds) float array, NaN where a seed has no value; non-finite values (a diverged
            run's inf loss) count as missing.
        band: "minmax" (range of the seeds) or "sd" (centre ± 1 sample standard deviation, ddof = 1).
        log: summarise log10 values (geometric mean; the s.d. band becomes ×/÷ 10**sd) — for log-scaled axes.
            Non-positive values have no logarithm and count as missing.

    Returns:
        (centre, lo, hi), each (n_points,); NaN where no seed has a value.
    """
    v = np.asarray(values, dtype=float)
    v = np.where(np.isfinite(v), v, np.nan)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are legitimately NaN
        centre = np.nanmean(v, axis=1)
        if band == "minmax":
            lo, hi = np.nanmin(v, axis=1), np.nanmax(v, axis=1)
        elif band == "sd":
            n = np.sum(np.isfinite(v), axis=1)
            sd = np.where(n > 1, np.nanstd(v, axis=1, ddof=1), 0.0)
            lo, hi = centre - sd, centre + sd
        else:
            raise ValueError(f"band must be minmax or sd, got {band!r}")
    if log:
        centre, lo, hi = 10.0**centre, 10.0**lo, 10.0**hi
    return centre, lo, hi


def _wide(df: pd.DataFrame, x: str, y: str, what: str) -> pd.DataFrame:
    require_columns(df, ("seed", x, y), what)
    return df.pivot_table(index=x, columns="seed", values=y, aggfunc="first", dropna=False).sort_index()


def seed_curves(ax: Axes, df: pd.DataFrame, *, x: str, y: str, color: str, label: str, band: str,
                log: bool = False, linestyle: str | tuple = "-", light: bool = False) -> int:
    """One curve: centre across seeds (thick), the band across seeds (shaded) and each seed (thin).

    Args:
        df: long rows with columns seed, `x`, `y` for one variant and lr.
        log: the axis is logarithmic; the centre is then the geometric mean (see seed_summary).
        light: many curves share the panel: no single-seed lines and a fainter band, so the centres stay readable.

    Returns:
        the number of seeds drawn.
    """
    wide = _wide(df, x, y, f"curve {label}")
    xs, values = wide.index.to_numpy(dtype=float), wide.to_numpy(dtype=float)
    if not light:
        for k in range(values.shape[1]):
            ax.plot(xs, values[:, k], color=color, linewidth=0.5, alpha=0.35, linestyle=linestyle, zorder=Z_SEED)
    centre, lo, hi = seed_summary(values, band, log)
    if values.shape[1] > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.08 if light else 0.18, linewidth=0, zorder=Z_BAND)
    ax.plot(xs, centre, color=color, linewidth=1.7, linestyle=linestyle, label=label)
    return values.shape[1]


def eta_range(df: pd.DataFrame, y: str, log: bool) -> pd.DataFrame:
    """The paper's band over step sizes (§3.2, Fig 4): per step, min and max over η of the across-seed centre.

    Args:
        df: rows with columns seed, step, eta, `y` for one variant and lr.
        log: average seeds in log space (geometric mean), for quantities drawn on a log axis.

    Returns:
        frame indexed by step with columns lo, hi.
    """
    require_columns(df, ("seed", "step", "eta", y), f"band over eta of {y}")
    wide = df.pivot_table(index=["step", "eta"], columns="seed", values=y, aggfunc="first", dropna=False)
    centre, _, _ = seed_summary(wide.to_numpy(dtype=float), "minmax", log)
    per_eta = pd.Series(centre, index=wide.index)
    return pd.DataFrame({"lo": per_eta.groupby(level="step").min(), "hi": per_eta.groupby(level="step").max()})


def eta_band(ax: Axes, df: pd.DataFrame, *, y: str, color: str, label: str, log: bool = False,
             linestyle: str | tuple = "-", per_seed: bool = True) -> int:
    """Fill the band over η of the across-seed centre; thin lines (if `per_seed`): each seed's own band edges.

    Returns:
        the number of seeds drawn.
    """
    band = eta_range(df, y, log)
    seeds = sorted(df.seed.unique())
    if per_seed and len(seeds) > 1:
        for seed in seeds:
            own = eta_range(df[df.seed == seed], y, log)
            for edge in ("lo", "hi"):
                ax.plot(own.index, own[edge], color=color, linewidth=0.4, alpha=0.35, linestyle=linestyle,
                        zorder=Z_SEED)
    ax.fill_between(band.index.to_numpy(dtype=float), band.lo, band.hi, color=color, alpha=0.3, linewidth=0,
                    label=label, zorder=Z_BAND)
    for edge in ("lo", "hi"):
        ax.plot(band.index, band[edge], color=color, linewidth=0.9, linestyle=linestyle)
    return len(seeds)


def distribution_over_time(ax: Axes, df: pd.DataFrame, *, color: str) -> None:
    """A single unit's distribution over the batch at each probed step: 5–95% and 25–75% bands and the median.

    Args:
        df: rows of one unit (one run, one layer) with columns step, q05, q25, q50, q75, q95.
    """
    require_columns(df, ("step", "q05", "q25", "q50", "q75", "q95"), "activation quantiles")
    d = df.sort_values("step")
    xs = d.step.to_numpy(dtype=float)
    for lo, hi, alpha in QUANTILE_BANDS:
        ax.fill_between(xs, d[lo], d[hi], color=color, alpha=alpha, linewidth=0, zorder=Z_BAND)
    ax.plot(xs, d.q50, color=color, linewidth=1.2)


def n_seeds_text(counts: list[int]) -> str:
    """'n = 5 seeds per curve', or a range when curves have different numbers of seeds."""
    counts = [c for c in counts if c > 0]
    if not counts:
        return "no seeds"
    lo, hi = min(counts), max(counts)
    return f"n = {lo} seed{'s' if hi > 1 else ''} per curve" if lo == hi else f"n = {lo}–{hi} seeds per curve"


def figure_legend(fig: Figure | SubFigure, ncols: int = 6, **kwargs) -> None:
    """One legend for a figure (or one model's subfigure), above its panels: every label once, in drawing order.

    Colours are per variant in every panel, so one key serves all panels it spans (panel legends would sit on the
    curves). A figure with a block per model gets one legend per block: a label such as "Standard, lr 0.1" means
    one model's runs, and two models' entries in one key would look alike.
    """
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    if not seen:
        return
    # matplotlib fills legend columns first; reorder (padding with blanks) so rows read in drawing order
    ncols = min(ncols, len(seen))
    nrows = -(-len(seen) // ncols)
    items = list(seen.items()) + [("", Line2D([], [], alpha=0))] * (nrows * ncols - len(seen))
    grid = [items[r * ncols + c] for c in range(ncols) for r in range(nrows)]
    fig.legend([h for _, h in grid], [lab for lab, _ in grid], loc="outside upper center", ncols=ncols,
               frameon=False, **kwargs)


def legend(ax: Axes, **kwargs) -> None:
    """A legend when the panel has labelled artists (no empty legend boxes)."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(**kwargs)

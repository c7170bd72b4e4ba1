"""One look for every figure: line styles per lr, axes whose labelled ticks bracket the data, compact deterministic files.

Colours and labels per variant live in bnflow.figures.palette.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from PIL import Image  # noqa: E402

from bnflow.io import atomic_path  # noqa: E402

# Several lrs in one panel: the colour stays the variant's, the line style tells the lr apart (largest lr first).
LR_STYLES = ("-", "--", ":", "-.")
# Sequential, colour-blind-safe map for "training step" colour scales (Fig 11).
STEP_CMAP = "viridis"
CAPTION_FONTSIZE = 7.0
TITLE_FONTSIZE = 10.5  # add_title
# Draw order. The artists below RASTER_Z (across-seed bands, single-seed lines, quantile bands) are the dense ones:
# in a panel where they hold more than RASTER_MIN_VERTICES points they are written into the SVG as one embedded image
# (~20 bytes of path text per point against ~35 kB for a panel's image at 150 dpi), so a paper-scale run's SVGs stay
# small while a quick run's few points stay vectors. Centre lines, markers, reference lines, axes and text are
# always vectors.
Z_BAND, Z_SEED, RASTER_Z, Z_REFERENCE = 1.1, 1.2, 1.5, 1.6
RASTER_MIN_VERTICES = 2500
# Colours a PNG is quantised to: a figure has a handful of colours plus their anti-aliasing and alpha blends.
PNG_COLORS = 256
MARGIN = 0.02  # of an axis' span, beyond its end ticks

# Matplotlib settings for every figure, used as plt.rc_context(RC) (never set globally). The fixed svg.hashsalt
# makes SVG element ids, and so the files, byte-identical for the same inputs; svg.fonttype "none" keeps text as
# text (searchable, diffable, and a fraction of the bytes of one path per glyph). DejaVu Sans ships with matplotlib
# (the PNG's font either way); naming only it keeps each SVG text element's font list short.
RC = {"svg.hashsalt": "bnflow", "svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],
      "figure.dpi": 100, "font.size": 9, "axes.titlesize": 9.5,
      "axes.labelsize": 9, "legend.fontsize": 7.5, "axes.spines.top": False, "axes.spines.right": False,
      "legend.framealpha": 0.8}


def lr_style(lr: float, lrs: list[float]) -> str:
    """The line style of `lr` among the panel's lrs (`lrs` sorted largest first)."""
    return LR_STYLES[lrs.index(lr) % len(LR_STYLES)]


def add_caption(fig: plt.Figure, text: str) -> None:
    """Put the caption under the figure, wrapped to its width (the saved bounding box grows to hold it).

    Args:
        text: caption; wrapped here (not by matplotlib) so the line breaks are the same in PNG, SVG and REPORT.md.
    """
    width_in = fig.get_size_inches()[0]
    chars = max(40, int(width_in * 72 / (0.52 * CAPTION_FONTSIZE)))
    wrapped = "\n".join(textwrap.wrap(text, chars))
    fig.text(0.005, 0.0, wrapped, ha="left", va="top", fontsize=CAPTION_FONTSIZE, color="#333333")


def add_title(fig: plt.Figure, text: str) -> None:
    """A bold title above the panels, that no key or panel overlaps in the saved files.

    Constrained layout reserves room at the top for the larger of a suptitle and a figure key placed "outside
    upper", not for both, so the two would overlap; a text above the figure's edge does not help either, since a
    tight bounding box moves such a key up onto it. So a figure with a figure-level key (these put theirs above the
    panels: plots.figure_legend, the quantile key of the distribution grids) carries the title as the key's
    title, first line, and the key's box grows to hold it; a figure without one gets a suptitle.
    """
    if fig.legends:
        key = fig.legends[0]
        old = key.get_title().get_text()
        key.set_title(f"{text}\n{old}" if old else text, prop={"weight": "bold", "size": TITLE_FONTSIZE})
        key.get_title().set_multialignment("center")  # a key's own title (Fig 11's) stays centred under it
    else:
        fig.suptitle(text, fontsize=TITLE_FONTSIZE, fontweight="bold")


def _sci_label(v: float) -> str:
    """10ᵏ or m×10ᵏ (mathtext)."""
    k = math.floor(math.log10(v) + 1e-9)
    mantissa = v / 10**k
    return f"$10^{{{k}}}$" if abs(mantissa - 1) < 1e-6 else f"${mantissa:g}\\times10^{{{k}}}$"


def _log_label(v: float, _pos: int = 0) -> str:
    """0.01, 0.5, 20, 5000 as plain numbers; outside 1e-3..1e4 as 10ᵏ or m×10ᵏ."""
    if v <= 0:
        return ""
    return f"{v:g}" if 1e-3 <= v < 1e4 else _sci_label(v)


def tick_labels(ticks: list[float]) -> list[str]:
    """Labels of one log axis in one notation: plain numbers when all lie in 1e-3..1e5 (0.01, 5000, 20000), else
    10ᵏ / m×10ᵏ for all of them."""
    if all(1e-3 <= t < 1e5 for t in ticks):
        return [f"{t:g}" for t in ticks]
    return [_sci_label(t) for t in ticks]


def log_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
    """Labelled ticks of a log axis that bracket [lo, hi]: the first ≤ lo, the last ≥ hi.

    Within two decades the 1-2-5 sequence (5000, 1e4, 2e4, 5e4), else powers of ten, every k-th so that at most
    `max_ticks` remain (the last power still ≥ hi).
    """
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"log_ticks needs 0 < lo <= hi, got {lo}, {hi}")
    k0, k1 = math.floor(math.log10(lo) + 1e-12), math.ceil(math.log10(hi) - 1e-12)
    k1 = max(k1, k0 + 1) if lo == hi else k1
    if k1 - k0 <= 2:
        cands = [m * 10.0**k for k in range(k0 - 1, k1 + 2) for m in (1, 2, 5)]
        first = max(c for c in cands if c <= lo * (1 + 1e-9))
        last = min(c for c in cands if c >= hi * (1 - 1e-9))
        if first == last:  # a single value on a nice number: one step each side
            first, last = cands[cands.index(first) - 1], cands[cands.index(last) + 1]
        return [c for c in cands if first <= c <= last]
    step = math.ceil((k1 - k0) / (max_ticks - 1))
    return [10.0**k for k in range(k0, k0 + step * math.ceil((k1 - k0) / step) + 1, step)]


def linear_ticks(lo: float, hi: float) -> list[float]:
    """Labelled ticks of a linear axis that bracket [lo, hi] (matplotlib's choice of round numbers, extended)."""
    if lo == hi:
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    ticks = ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    first = max(t for t in ticks if t <= lo + 1e-12 * abs(hi - lo))
    last = min(t for t in ticks if t >= hi - 1e-12 * abs(hi - lo))
    return [float(f"{t:.12g}") for t in ticks if first <= t <= last]


def _data_range(axes: list, which: str, log: bool) -> tuple[float, float] | None:
    """Union of the data limits of shared axes (positive part on a log axis); None without finite data."""
    los, his = [], []
    for ax in axes:
        lim = ax.dataLim
        lo, hi = (lim.y0, lim.y1) if which == "y" else (lim.x0, lim.x1)
        if log and lo <= 0:
            lo = lim.minposy if which == "y" else lim.minposx
        if math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (not log or lo > 0):
            los.append(lo)
            his.append(hi)
    return (min(los), max(his)) if los else None


def frame_axes(fig: plt.Figure) -> None:
    """Give every data axis labelled ticks that bracket its data, and limits at those ticks.

    Axes whose ticks a figure placed by hand (categorical lrs, evenly spaced checkpoints) and limits set by hand that
    already hold the data (accuracy 0..1) are left as they are; colour bars and hidden panels too. Log axes get plain
    labels (0.01, 2, 5000; 10ᵏ outside 1e-3..1e4).
    """
    seen: set[tuple[str, int]] = set()
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.axison:
            continue
        for which in ("x", "y"):
            axis = ax.yaxis if which == "y" else ax.xaxis
            siblings = (ax.get_shared_y_axes() if which == "y" else ax.get_shared_x_axes()).get_siblings(ax)
            key = (which, min(id(a) for a in siblings))
            if key in seen or isinstance(axis.get_major_locator(), ticker.FixedLocator):
                continue
            seen.add(key)
            log = axis.get_scale() == "log"
            span = _data_range(siblings, which, log)
            if span is None:
                continue
            get_lim, set_lim = (ax.get_ylim, ax.set_ylim) if which == "y" else (ax.get_xlim, ax.set_xlim)
            auto = ax.get_autoscaley_on() if which == "y" else ax.get_autoscalex_on()
            lo, hi = sorted(get_lim())
            if not auto and lo <= span[0] and span[1] <= hi:
                continue
            ticks = log_ticks(*span) if log else linear_ticks(*span)
            axis.set_major_locator(ticker.FixedLocator(ticks))
            if log:
                axis.set_major_formatter(ticker.FixedFormatter(tick_labels(ticks)))
                axis.set_minor_locator(ticker.LogLocator(subs="auto"))
                axis.set_minor_formatter(ticker.NullFormatter())
                pad = (ticks[-1] / ticks[0]) ** MARGIN  # points on the end ticks stay off the spines
                set_lim(ticks[0] / pad, ticks[-1] * pad)
            else:
                pad = (ticks[-1] - ticks[0]) * MARGIN
                set_lim(ticks[0] - pad, ticks[-1] + pad)


def _png_bytes(fig: plt.Figure, dpi: int) -> bytes:
    """The figure as a PNG quantised to PNG_COLORS colours (no dithering: flat colours stay flat), ~3x smaller."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08, facecolor="white")
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    img.quantize(PNG_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, format="png",
                                                                                           optimize=True)
    return out.getvalue()


def dense_vertices(ax: plt.Axes) -> int:
    """Points held by a panel's artists below RASTER_Z (lines: their data points; fills: their polygons' vertices)."""
    n = 0
    for line in ax.get_lines():
        if line.get_zorder() < RASTER_Z:
            n += len(line.get_xdata())
    for coll in ax.collections:
        if coll.get_zorder() < RASTER_Z:
            n += sum(len(p.vertices) for p in coll.get_paths())
    return n


def save(fig: plt.Figure, out_dir: Path, name: str, dpi: int) -> list[Path]:
    """Write `name`.png and `name`.svg atomically, without timestamps or software tags, then close the figure."""
    for ax in fig.axes:  # SVG only: the PNG is all raster anyway
        ax.set_rasterization_zorder(RASTER_Z if dense_vertices(ax) > RASTER_MIN_VERTICES else None)
    path_png, path_svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    with atomic_path(path_png) as tmp:
        Path(tmp).write_bytes(_png_bytes(fig, dpi))
    with atomic_path(path_svg) as tmp:
        fig.savefig(tmp, format="svg", dpi=dpi, metadata={"Date": None, "Creator": None}, bbox_inches="tight",
                    pad_inches=0.08)
    plt.close(fig)
    return [path_png, path_svg]

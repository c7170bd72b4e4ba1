"""One look for every figure: a colour-blind-safe palette with a fixed colour per variant, deterministic files."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from bnflow.io import atomic_path  # noqa: E402

# Okabe–Ito palette (colour-blind safe); a variant keeps its colour in every figure.
VARIANT_COLORS = {
    "standard": "#000000",
    "bn": "#0072B2",
    "noisy_bn": "#E69F00",
    "noisy_standard": "#CC79A7",
    "l1": "#009E73",
    "l2": "#D55E00",
    "linf": "#56B4E9",
}
VARIANT_LABELS = {"standard": "Standard", "bn": "BatchNorm", "noisy_bn": "Noisy BN",
                  "noisy_standard": "Standard + noise", "l1": "ℓ1 norm", "l2": "ℓ2 norm", "linf": "ℓ∞ norm"}
# Several lrs in one panel: the colour stays the variant's, the line style tells the lr apart (largest lr first).
LR_STYLES = ("-", "--", ":", "-.")
# Sequential, colour-blind-safe map for "training step" colour scales (Fig 11).
STEP_CMAP = "viridis"
CAPTION_FONTSIZE = 7.0


# Matplotlib settings for every figure, used as plt.rc_context(RC) (never set globally). The fixed svg.hashsalt
# makes SVG element ids, and so the files, byte-identical for the same inputs.
RC = {"svg.hashsalt": "bnflow", "figure.dpi": 100, "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9,
      "legend.fontsize": 7.5, "axes.spines.top": False, "axes.spines.right": False, "legend.framealpha": 0.8}


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


def _log_label(v: float, _pos: int = 0) -> str:
    """0.01, 0.5, 20, 5000 as plain numbers; outside 1e-3..1e4 as 10ᵏ or m×10ᵏ."""
    if v <= 0:
        return ""
    k = math.floor(math.log10(v) + 1e-9)
    mantissa = v / 10**k
    if 1e-3 <= v < 1e4:
        return f"{v:g}"
    return f"$10^{{{k}}}$" if abs(mantissa - 1) < 1e-6 else f"${mantissa:g}\\times10^{{{k}}}$"


def _minor_label(v: float, _pos: int) -> str:
    """Label the minor ticks at 2× and 5× a power of ten, and leave the others blank (they would crowd)."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return _log_label(v) if any(abs(mantissa - m) < 1e-6 for m in (2, 5)) else ""


def plain_log_labels(fig: plt.Figure) -> None:
    """Label log axes 0.01, 2, 5, 10 … instead of 2×10⁰ (matplotlib's labels for minor ticks on short ranges)."""
    for ax in fig.axes:
        for axis, scale, (lo, hi) in ((ax.yaxis, ax.get_yscale(), ax.get_ylim()),
                                      (ax.xaxis, ax.get_xscale(), ax.get_xlim())):
            if scale == "log":
                axis.set_major_formatter(ticker.FuncFormatter(_log_label))
                # minor labels only where the axis spans under two decades (fewer than two major labels)
                short = max(lo, hi) / max(min(lo, hi), 1e-300) < 100
                axis.set_minor_formatter(ticker.FuncFormatter(_minor_label) if short else ticker.NullFormatter())


def save(fig: plt.Figure, out_dir: Path, name: str, dpi: int) -> list[Path]:
    """Write `name`.png and `name`.svg atomically, without timestamps or software tags, then close the figure."""
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, metadata=meta, bbox_inches="tight", pad_inches=0.08)
        paths.append(path)
    plt.close(fig)
    return paths

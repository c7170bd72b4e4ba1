"""One look for every figure: a colour-blind-safe palette with a fixed colour per variant, deterministic files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
LR_STYLES = ("-", "--", ":", "-.")


def setup() -> None:
    """Matplotlib settings that make output files byte-stable for the same inputs."""
    plt.rcParams.update({"svg.hashsalt": "bnflow", "figure.dpi": 100, "font.size": 9, "axes.titlesize": 10,
                         "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False})


def save(fig: plt.Figure, out_dir: Path, name: str, dpi: int) -> list[Path]:
    """Write `name`.png and `name`.svg atomically, without timestamps or software tags, then close the figure."""
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, metadata=meta, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths

"""A colour, line style, marker and label per variant, for any set of variants (the paper's, new norms, plug-ins).

The paper's seven variants keep the Okabe–Ito colours (colour-blind safe) and solid lines, as in every earlier
figure. The normalisations beyond the paper (issue 17) have fixed colours from Paul Tol's muted palette (also
colour-blind aware) and their own dash pattern, so they stay apart from the paper's variants even where two colours
are close. Variants never seen before (plug-ins named in params) get the first free (colour, dash) pair starting at a
slot fixed by a hash of their name: a plug-in keeps its look from one report to the next, and no two variants of one
report share a look.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# (colour, label, marker) of the paper's variants: Okabe–Ito, solid lines
PAPER = {
    "standard": ("#000000", "Standard", "o"),
    "bn": ("#0072B2", "BatchNorm", "s"),
    "noisy_bn": ("#E69F00", "Noisy BN", "^"),
    "noisy_standard": ("#CC79A7", "Standard + noise", "v"),
    "l1": ("#009E73", "ℓ1 norm", "D"),
    "l2": ("#D55E00", "ℓ2 norm", "P"),
    "linf": ("#56B4E9", "ℓ∞ norm", "X"),
}
# Beyond the paper (issue 17): (colour, label, marker, dash); dashes keep them apart from the solid paper variants.
EXTENDED = {
    "group_norm": ("#882255", "GroupNorm", "h", (0, (6, 2))),
    "layer_norm": ("#117733", "LayerNorm", "p", (0, (6, 2, 1.5, 2))),
    "weight_norm": ("#AA4499", "WeightNorm", "*", (0, (2, 1.5))),
    "batch_norm_no_affine": ("#332288", "BN without γ, β", "d", (0, (6, 1.5, 1.5, 1.5, 1.5, 1.5))),
}
# Looks left for variants bnflow does not know (Tol muted and bright, minus the colours used above).
SPARE_COLORS = ("#44AA99", "#999933", "#CC6677", "#88CCEE", "#DDCC77", "#661100", "#6699CC", "#EE7733")
SPARE_DASHES = ((0, (4, 1.5)), (0, (1, 1.2)), (0, (8, 2, 1.5, 2)), (0, (3, 1, 1, 1, 1, 1)))
SPARE_MARKERS = ("<", ">", "H", "8", "1", "2", "3", "4")


@dataclass(frozen=True)
class VariantStyle:
    """How one variant looks in every figure of a report.

    Args:
        color: hex colour.
        dash: matplotlib line style ("-" or an (offset, on-off) tuple); panels with several lrs use the line style for
            the lr instead, and the colour alone tells variants apart there.
        marker: for dot plots and sparse markers on lines.
        label: legend text.
    """

    color: str
    dash: str | tuple
    marker: str
    label: str


def known_order() -> list[str]:
    """The variants with a fixed look, in legend order (the paper's first)."""
    return [*PAPER, *EXTENDED]


def variant_styles(variants: Iterable[str]) -> dict[str, VariantStyle]:
    """A distinct look per variant; deterministic in the names (not in their order or repetition).

    Returns:
        variant -> VariantStyle; known variants always look the same, unknown ones get the first (colour, dash) pair
        not taken, probing from a slot given by sha256 of the name (colour first, so colours differ while spare
        colours last: 8 unknown variants get 8 different colours).
    """
    names = sorted(set(variants))
    out: dict[str, VariantStyle] = {}
    for v in names:
        if v in PAPER:
            color, label, marker = PAPER[v]
            out[v] = VariantStyle(color, "-", marker, label)
        elif v in EXTENDED:
            color, label, marker, dash = EXTENDED[v]
            out[v] = VariantStyle(color, dash, marker, label)
    taken = {(s.color, s.dash) for s in out.values()}
    used_colors = {s.color for s in out.values()}
    combos = [(c, d) for d in SPARE_DASHES for c in SPARE_COLORS]  # colours vary fastest
    for v in (n for n in names if n not in out):
        start = int(hashlib.sha256(v.encode()).hexdigest(), 16) % len(combos)
        order = combos[start:] + combos[:start]
        fresh = [cd for cd in order if cd not in taken and cd[0] not in used_colors]
        color, dash = (fresh or [cd for cd in order if cd not in taken] or order)[0]
        marker = SPARE_MARKERS[combos.index((color, dash)) % len(SPARE_MARKERS)]
        out[v] = VariantStyle(color, dash, marker, v)
        taken.add((color, dash))
        used_colors.add(color)
    return out


def variant_order(variants: Iterable[str]) -> list[str]:
    """Variants in legend order: the paper's, then the known new norms, then unknown names alphabetically."""
    order = known_order()
    return sorted(set(variants), key=lambda v: (order.index(v) if v in order else len(order), v))

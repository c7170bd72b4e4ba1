"""Which lrs, layers and grid cells a figure draws: the paper's when the grid has them, the nearest stand-ins else,
and the cells of a partial grid a figure still waits for (issue 11: absent cells are "not run yet")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from bnflow.figures.palette import PAPER
from bnflow.vocab import CLASSIFIERS

PAPER_LRS = {"vgg": (0.1,), "dln": (1e-6,)}  # the lr of the paper's probe and ℓp figures (PROTOCOL §1)
PAPER_DEPTH = {"vgg": 13, "dln": 25}  # the paper's VGG has conv layers #1..#13; its DLN 25 linear layers
GRID_COLUMNS = ("cell", "model", "variant", "lr", "present", "seeds")


def model_key(model: str) -> str:
    """The paper model a model stands in for: every image classifier (bnflow.vocab.CLASSIFIERS) is read like VGG."""
    return "vgg" if model in CLASSIFIERS else model


def paper_lrs(table: Mapping[str, Sequence[float]], model: str) -> Sequence[float] | None:
    """A per-model table of the paper's lrs looked up for any model (classifiers like VGG); None: not in the table."""
    return table.get(model, table.get(model_key(model)))


def same_lr(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * abs(float(b))


def pick_lrs(available: Sequence[float], paper: Sequence[float]) -> list[float]:
    """The paper's lrs that the grid has, largest first; all the grid's lrs when it has none of them."""
    avail = sorted({float(a) for a in available}, reverse=True)
    chosen = [lr for lr in avail if any(same_lr(lr, p) for p in paper)]
    return chosen or avail


def resolve_layers(paper: Sequence[int], available: Sequence[int], depth: int, paper_depth: int
                   ) -> list[tuple[int, tuple[int, ...]]]:
    """Which recorded layer stands in for each of the paper's layers.

    The recorded layer nearest in relative depth (k / depth vs. k_paper / paper_depth; the lower one on a tie), so a
    shallower network (VGG-11: 8 conv layers) maps #11 of 13 to #7 (6.8 of 8) and the paper's #2 to #1, not to its own
    #2, which sits deeper in it (PROTOCOL §10: the paper's positions mapped to the chosen depth). At the paper's depth
    this is the paper's layer when it was recorded. Paper layers that land on the same recorded layer share it.

    Args:
        paper: the paper's layer numbers (1-based), e.g. (3, 11).
        available: layer numbers present in the data.
        depth: layers of the trained network; paper_depth: layers of the paper's network.

    Returns:
        [(recorded layer, paper layers it stands for)], in the paper's order; empty when nothing was recorded.
    """
    avail = sorted({int(a) for a in available})
    if not avail:
        return []
    out: dict[int, list[int]] = {}
    for p in paper:
        target = p / paper_depth * depth
        layer = min(avail, key=lambda a: (abs(a - target), a))
        out.setdefault(layer, []).append(p)
    return [(layer, tuple(ps)) for layer, ps in out.items()]


def layer_title(layer: int, paper: tuple[int, ...]) -> str:
    """'layer #5', or 'layer #6 (nearest to paper's #10)' when another layer had to stand in."""
    if paper == (layer,):
        return f"layer #{layer}"
    others = ", ".join(f"#{p}" for p in paper)
    return f"layer #{layer} (nearest to paper's {others})"


def layers_heading(layers: list[tuple[int, tuple[int, ...]]]) -> str:
    """'layers #3 and #6 (for the paper's #3, #11)' from resolved layers; the paper's numbers only when they differ."""
    shown = [f"#{layer}" for layer, _ in layers]
    paper = [f"#{p}" for _, ps in layers for p in ps]
    text = ("layer " if len(shown) == 1 else "layers ") + (
        shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1])
    return text if shown == paper else f"{text} (for the paper's {', '.join(paper)})"


@dataclass(frozen=True)
class Need:
    """The grid cells a figure draws from, so a partial grid can say which ones it still waits for.

    Args:
        models: model families drawn; None: every model of the grid.
        variants: variants drawn; None: every variant.
        lrs: per model, the paper's lrs the figure prefers (picked as pick_lrs does, classifiers like VGG);
            None: every lr of the grid.
        first_lr: the figure draws only the first (largest) picked lr.
        cells: the figure draws grid cells at all (the lr-scan figure draws the lrscan step's folders instead).
        lrscan: the figure draws the lr scan: it waits for every scanned model whose lrscan folder is absent.
        beyond_paper: the figure is drawn only when the grid holds a model or variant no paper figure draws
            (bnflow.figures.variants); on the paper's grid it waits for nothing.
        requires: variants without which the figure is not drawn (the ℓp figures: l1, l2, linf); a model whose grid
            cells hold none of them is one the figure waits for nothing of (its standard and BN cells alone would
            never draw it). None: no such variants.
    """

    models: tuple[str, ...] | None = None
    variants: tuple[str, ...] | None = None
    lrs: Mapping[str, tuple[float, ...]] | None = None
    first_lr: bool = False
    cells: bool = True
    lrscan: bool = False
    beyond_paper: bool = False
    requires: tuple[str, ...] | None = None


PAPER_MODELS = ("vgg", "vgg_cpu", "dln")
"""Models the paper's figures draw: its VGG (at the paper's scale and at the reduced scale of PROTOCOL §10, each its
own figure) and its DLN. Also the order of models in figures with a block per model."""


def model_order(model: str) -> tuple[int, str]:
    """Sort key of models in a figure or table with a block per model: PAPER_MODELS first, then the others by name."""
    return (PAPER_MODELS.index(model) if model in PAPER_MODELS else len(PAPER_MODELS), model)


def beyond_paper(frame: pd.DataFrame) -> list[str]:
    """'model variant' of the rows (runs or grid cells) that no paper figure draws: a model other than the paper's
    VGG (either scale) and DLN, or a variant other than the paper's seven."""
    if frame.empty or not {"model", "variant"} <= set(frame.columns):
        return []
    pairs = {(str(m), str(v)) for m, v in zip(frame.model, frame.variant, strict=True)}
    return sorted(f"{m} {v}" for m, v in pairs if m not in PAPER_MODELS or v not in PAPER)


def waiting_cells(grid: pd.DataFrame, need: Need) -> list[str]:
    """Grid cells the figure would draw that are not run yet (GRID_COLUMNS rows with present False), sorted."""
    g = grid
    if g.empty or not need.cells or (need.beyond_paper and not beyond_paper(grid)):
        return []
    if need.models is not None:
        g = g[g.model.isin(need.models)]
    if need.variants is not None:
        g = g[g.variant.isin(need.variants)]
    out: list[str] = []
    for model, rows in g.groupby("model", sort=True):
        if need.requires is not None and not rows.variant.isin(need.requires).any():
            continue
        paper = paper_lrs(need.lrs, str(model)) if need.lrs is not None else None
        chosen = pick_lrs(rows.lr, paper) if paper is not None else sorted(set(rows.lr.astype(float)), reverse=True)
        chosen = chosen[:1] if need.first_lr else chosen
        keep = rows.lr.map(lambda lr: any(same_lr(lr, c) for c in chosen)) & ~rows.present.astype(bool)
        out += list(rows.cell[keep])
    return sorted(out)


def waiting_note(items: Sequence[str]) -> str:
    """The caption sentence naming the grid cells (or lr-scan folders) a figure waits for ('' when none)."""
    if not items:
        return ""
    return f" Not run yet, so not drawn here (this figure waits for them): {', '.join(items)}."

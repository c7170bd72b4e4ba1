"""The `figures` step: the paper's figures from bnflow's tidy outputs (computation never plots; plots never compute).

Modules: data (what figures read: runs, probes, lr scan, the grid's present and absent cells), select (which lrs,
layers and cells a figure draws), palette (a look per variant, any name), plots (primitives), style (axes, files),
one module per figure family (training, activations, ics, landscape, extra, curvature, theorem, thresholds,
variants), registry (which function draws which figure, and what it shows), report (REPORT.md, Snakemake captions),
render (the step).
"""

from bnflow.figures.render import FIGURES, render_figures

__all__ = ["FIGURES", "render_figures"]

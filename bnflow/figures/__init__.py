"""The `figures` step: the paper's figures from bnflow's tidy outputs (computation never plots; plots never compute).

Modules: data (what figures read), plots (primitives), style (palette, files), one module per figure family
(training, activations, ics, landscape, extra, curvature), report (REPORT.md, Snakemake captions), render (registry + step).
"""

from bnflow.figures.render import FIGURES, render_figures

__all__ = ["FIGURES", "render_figures"]

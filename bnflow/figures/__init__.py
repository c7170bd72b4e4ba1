"""The `figures` step: the paper's figures from bnflow's tidy outputs (computation never plots; plots never compute)."""

from bnflow.figures.render import render_figures

__all__ = ["render_figures"]

"""What the front page of `snakemake --report` says about the run it shows: params files, data, seeds, step budgets.

Why not in the figure captions: workflow/report/figures.rst is one caption per figure, generated from the
figure registry and the same for every run, while what a run's figures show depends on its params: the quick run
trains a narrow VGG on synthetic images for 200 steps, the paper run VGG-16 on CIFAR-10 for 15,000. The Snakefile
writes this text for the run it plans (workflow/rules/hooks.smk) and declares it as the report's description, so a
quick report says "synthetic" and a paper report says CIFAR-10, each true for its own params.
"""

from __future__ import annotations

from collections.abc import Sequence

from bnflow.config import Params
from bnflow.vocab import CLASSIFIERS

SOURCE_TEXT = {"torchvision": "CIFAR-10 (torchvision download)", "archive": "CIFAR-10 (local archive)",
               "synthetic": "synthetic 10-class images (prepare.source: synthetic), not CIFAR-10"}
"""The data phrase of captions per prepare.source (here, not in bnflow.figures: the Snakefile reads it at every
start, and bnflow.figures loads matplotlib)."""


def _model_line(params: Params, model: str, cells: list[str]) -> str:
    cfg = params.train.model_config(model)
    seeds = params.train.seeds
    n = seeds.count(model) if hasattr(seeds, "count") else seeds.n
    if model in CLASSIFIERS:
        width = getattr(cfg, "width_mult", 1.0)
        net = f"{getattr(cfg, 'arch', model)}{f' ×{width:g} width' if width != 1 else ''}"
        data = SOURCE_TEXT.get(params.prepare.source, params.prepare.source)
        what = f"{net} on {data}, batch {cfg.batch_size}"
    else:
        what = f"{cfg.depth}-layer linear network on y = Ax, {cfg.n_samples} samples, full batch"
    return (f"- **{model}** ({len(cells)} cell{'s' if len(cells) != 1 else ''}): {what}; {cfg.steps:,} steps, "
            f"{n} seed{'s' if n != 1 else ''} per cell")


def run_description(params: Params, params_files: Sequence[str]) -> str:
    """The report's front-page text (reStructuredText) for a run of `params`, read from `params_files`."""
    by_model: dict[str, list[str]] = {}
    for cell_id, cell in params.train.grid.items():
        by_model.setdefault(cell.model, []).append(cell_id)
    synthetic = params.prepare.source == "synthetic" and any(m in CLASSIFIERS for m in by_model)
    lines = [f"bnflow: the figures of ``{params.out_dir}/``, from the params of {' + '.join(params_files)}.", ""]
    if synthetic:
        lines += ["**Synthetic images, not CIFAR-10** (``prepare.source: synthetic``): these figures show the "
                  "pipeline at work, not the paper's results.", ""]
    lines += [_model_line(params, m, cells) for m, cells in by_model.items()]
    lines += ["", f"Every figure with its full caption, and every claim's verdict: ``{params.out_dir}/REPORT.md``."]
    return "\n".join(lines) + "\n"

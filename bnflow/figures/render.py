"""The `figures` step: which paper figure is drawn by which function, and the step that renders them all."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from bnflow.config import Params
from bnflow.vocab import format_lr
from bnflow.errors import DataError
from bnflow.figures import activations, curvature, extra, ics, landscape, style, training
from bnflow.figures.common import Drawn, Skip
from bnflow.figures.data import FigureData, load_figure_data
from bnflow.figures.plots import BAND_TEXT
from bnflow.figures.report import Entry, report_markdown, report_rst
from bnflow.io import check_absent, publish_dir, write_text

log = logging.getLogger("bnflow.figures")
ROOT = Path(__file__).resolve().parents[2]
REPORT_RST = Path("workflow/report/figures.rst")


@dataclass(frozen=True)
class FigureSpec:
    """One output figure: file stem, the paper's label, a short title (no rst markup), and the function drawing it."""

    name: str
    paper: str
    title: str
    draw: Callable[[FigureData], Drawn | Skip]


FIGURES = (
    FigureSpec("fig01_accuracy", "Fig 1a–b", "training and test accuracy, standard vs BatchNorm",
               training.fig01_accuracy),
    FigureSpec("fig01c_activations", "Fig 1c", "distribution of an activation over time, layers #3 and #11",
               activations.fig01c_activations),
    FigureSpec("fig02_noisy_bn", "Fig 2", "noisy BatchNorm: training accuracy and activation distributions",
               activations.fig02_noisy_bn),
    FigureSpec("fig03a_ics_vgg", "Fig 3a", "internal covariate shift in VGG (ℓ2 difference, cosine)",
               ics.fig03a_ics_vgg),
    FigureSpec("fig03b_ics_dln", "Fig 3b", "internal covariate shift in the deep linear network", ics.fig03b_ics_dln),
    FigureSpec("fig04_landscape_vgg", "Fig 4a–c", "VGG loss landscape, gradient predictiveness, β-smoothness",
               landscape.fig04_landscape_vgg),
    FigureSpec("fig05_lp_training", "Fig 5", "ℓp normalisations: VGG accuracy and DLN loss",
               training.fig05_lp_training),
    FigureSpec("fig06_lp_activations", "Fig 6", "activation distributions under each normalisation, layer #11",
               activations.fig06_lp_activations),
    FigureSpec("fig08a_moment_change", "Fig 8a", "change of activation mean and variance between probes",
               activations.fig08a_moment_change),
    FigureSpec("fig08b_moment_drift", "Fig 8b", "drift of activation mean and variance from the first probe",
               activations.fig08b_moment_drift),
    FigureSpec("fig09_dln_activations", "Fig 9", "deep linear network activation distributions, layers 1, 11, 24",
               activations.fig09_dln_activations),
    FigureSpec("fig10_landscape_dln", "Fig 10a–c", "DLN loss landscape, gradient predictiveness, β-smoothness",
               landscape.fig10_landscape_dln),
    FigureSpec("fig11a_grad_eta_vgg", "Fig 11a", "VGG gradient change vs probe step size, per training time",
               landscape.fig11a_grad_eta_vgg),
    FigureSpec("fig11b_grad_eta_dln", "Fig 11b", "DLN gradient change vs probe step size, per training time",
               landscape.fig11b_grad_eta_dln),
    FigureSpec("fig12_lp_vgg", "Fig 12a–d", "VGG with ℓp normalisations: accuracy and landscape probes",
               landscape.fig12_lp_vgg),
    FigureSpec("fig13_lp_dln", "Fig 13a–d", "DLN with ℓp normalisations: loss and landscape probes",
               landscape.fig13_lp_dln),
    FigureSpec("figx1_lr_sensitivity", "Extra 1", "final accuracy and loss against the learning rate",
               extra.figx_lr_sensitivity),
    FigureSpec("figx2_beta_vs_lr", "Extra 2", "effective β-smoothness against 2/lr", extra.figx_beta_vs_lr),
    FigureSpec("figx3_sharpness", "Extra 3", "top Hessian eigenvalue and batch sharpness against 2/lr",
               curvature.figx3_sharpness),
    FigureSpec("figx4_theorem41", "Extra 4", "Theorem 4.1 on real BN layers: gradient reduction factor and the "
               "identity's gap", curvature.figx4_theorem41),
)


def draw_all(data: FigureData, out_dir: Path, dpi: int) -> list[Entry]:
    """Draw every registered figure the data allow into `out_dir` (PNG + SVG each); log and list the others."""
    entries = []
    with plt.rc_context(style.RC):
        for spec in FIGURES:
            result = spec.draw(data)
            if isinstance(result, Skip):
                log.info("%s (%s): skipped: %s", spec.name, spec.paper, result.reason)
                entries.append(Entry(spec.name, spec.paper, spec.title, skipped=result.reason))
                continue
            style.plain_log_labels(result.fig)
            style.add_caption(result.fig, result.caption)
            style.save(result.fig, out_dir, spec.name, dpi)
            log.info("%s (%s): written", spec.name, spec.paper)
            entries.append(Entry(spec.name, spec.paper, spec.title, caption=result.caption))
    return entries


def _header(params: Params) -> str:
    cells = ", ".join(f"{c.model} {c.variant} lr {format_lr(c.lr)}" for c in params.train.grid.values())
    return (f"Grid: {cells}. Seeds per cell: {params.train.seeds.n} (base seed {params.train.seeds.base}). "
            f"Across-seed bands: {BAND_TEXT[params.figures.band]} (figures.band).")


def render_figures(params: Params, runs_root: Path, out_dir: Path, *, probes_root: Path | None = None,
                   claims: Path | None = None, report: Path | None = None, force: bool = False) -> list[Path]:
    """The `figures` step: every figure the grid's data allow, PNG + SVG each, into `out_dir`, and REPORT.md.

    Args:
        runs_root: folder with one {cell}/s{seed}/ folder per run (the train step's outputs).
        probes_root: folder with one {cell}/s{seed}/ folder of checkpoint-wise probe tables, or None.
        claims: the stats step's claims.md, quoted in REPORT.md; or None.
        report: where REPORT.md goes (e.g. results/REPORT.md, linking into `out_dir`); None: inside `out_dir`.

    Returns:
        the written files, in `out_dir`.
    """
    check_absent(out_dir, *([report] if report is not None else []), force=force)
    claims_md = None
    if claims is not None:
        try:
            claims_md = claims.read_text()
        except OSError as e:
            raise DataError(f"{claims}: cannot read the claims ({e.strerror}); run the stats step first") from None
    data = load_figure_data(params, runs_root, probes_root)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # a killed earlier attempt of this step
    tmp_dir.mkdir(parents=True)
    entries = draw_all(data, tmp_dir, params.figures.dpi)
    tables = [t for t in (curvature.summary_table(data),) if t is not None]
    prefix = "" if report is None else Path(os.path.relpath(out_dir, report.parent)).as_posix() + "/"
    text = report_markdown(entries, header=_header(params), claims_md=claims_md, tables=tables, link_prefix=prefix)
    if report is None:
        write_text(tmp_dir / "REPORT.md", text)
    written = [out_dir / p.name for p in sorted(tmp_dir.iterdir())]
    publish_dir(tmp_dir, out_dir, force=force)
    if report is None:
        return written
    write_text(report, text)  # after the figures it links to are in place
    return [*written, report]


def write_report_rst(root: Path = ROOT) -> Path:
    """Regenerate workflow/report/figures.rst (Snakemake's report captions) from the registry."""
    path = root / REPORT_RST
    write_text(path, report_rst([Entry(s.name, s.paper, s.title) for s in FIGURES]))
    return path

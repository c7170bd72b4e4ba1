"""The `figures` step: draw every registered figure (bnflow.figures.registry), write REPORT.md and the Snakemake
report captions."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bnflow.config import Params
from bnflow.errors import DataError
from bnflow.vocab import REFERENCE_ARMS
from bnflow.figures import curvature, style, thresholds
from bnflow.figures.common import Skip
from bnflow.figures.data import FigureData, load_figure_data
from bnflow.figures.plots import BAND_TEXT
from bnflow.figures.registry import FIGURES, FigureSpec  # noqa: F401 - FigureSpec re-exported
from bnflow.figures.report import Entry, report_markdown, report_rst, unlisted_cells, verdict_table
from bnflow.figures.select import waiting_note
from bnflow.io import check_absent, publish_dir, write_text
from bnflow.plotdata import publish_plot_data
from bnflow.stats.registry import cell_of

log = logging.getLogger("bnflow.figures")
ROOT = Path(__file__).resolve().parents[2]
REPORT_RST = Path("workflow/report/figures.rst")


def draw_all(data: FigureData, out_dir: Path, dpi: int) -> list[Entry]:
    """Draw every registered figure the data allow into `out_dir` (PNG + SVG each); log and list the others.

    A figure that would draw grid cells not run yet says so in its caption (and its Entry lists them).
    """
    entries = []
    with plt.rc_context(style.RC):
        for spec in FIGURES:
            waiting = tuple(data.waiting(spec.need))
            result = spec.draw(data)
            if isinstance(result, Skip):
                log.info("%s (%s): skipped: %s", spec.name, spec.paper, result.reason)
                entries.append(Entry(spec.name, spec.paper, spec.title, skipped=result.reason, about=spec.about,
                                     waiting=waiting))
                continue
            caption = result.caption + waiting_note(waiting)
            style.frame_axes(result.fig)
            style.add_caption(result.fig, caption)
            style.save(result.fig, out_dir, spec.name, dpi)
            log.info("%s (%s): written", spec.name, spec.paper)
            entries.append(Entry(spec.name, spec.paper, result.title or spec.title, caption=caption,
                                 about=spec.about, waiting=waiting))
    return entries


def _seed_counts(params: Params, data: FigureData) -> str:
    """Seeds per cell of the model families in the grid ("20 (dln), 5 (vgg_cpu)"), or one count if they agree."""
    models = sorted({params.train.grid[c].model for c in data.grid["cell"] if c in params.train.grid})
    counts = {m: params.train.seeds.count(m) for m in models}
    if len(set(counts.values())) <= 1:
        return str(next(iter(counts.values()), 0))
    return ", ".join(f"{n} ({m})" for m, n in counts.items())


def _claim_cells(params: Params) -> list[tuple[str, str]]:
    """(model family, cell id) of each arm of each registered claim that names a variant (not a reference)."""
    return [(c.model, cell_of(c, arm)) for c in params.claims for arm in (c.arm_a, c.arm_b)
            if arm not in REFERENCE_ARMS]


def _header(params: Params, data: FigureData) -> str:
    n, present = len(data.grid), int(data.grid.present.astype(bool).sum())
    return (f"Grid: {present} of {n} cells present ([Grid](#grid)). Seeds per cell: {_seed_counts(params, data)} "
            f"(base seed {params.train.seeds.base}). Across-seed bands: {BAND_TEXT[params.figures.band]} (figures.band).")


def render_figures(params: Params, runs_root: Path, out_dir: Path, *, probes_root: Path | None = None,
                   claims: Path | None = None, report: Path | None = None, force: bool = False,
                   lrscan_root: Path | None = None, plots_out: Path | None = None) -> list[Path]:
    """The `figures` step: every figure the present cells' data allow, PNG + SVG each, into `out_dir`, and REPORT.md.

    Args:
        runs_root: folder with one {cell}/s{seed}/ folder per run (the train step's outputs); a grid cell without
            its folder is "not run yet" (listed in REPORT.md, named by the figures that wait for it).
        probes_root: folder with one {cell}/s{seed}/ folder of checkpoint-wise probe tables, or None.
        lrscan_root: the lrscan step's folder with one {model}/ folder (scan.csv, thresholds.csv) per scanned model,
            or None (no lr-threshold figure and table).
        claims: the stats step's claims.md, quoted in REPORT.md; or None.
        report: where REPORT.md goes (e.g. results/REPORT.md, linking into `out_dir`); None: inside `out_dir`.
        plots_out: folder for the `dvc plots` data (bnflow.plotdata), from the tables read here; None: none.

    Returns:
        the written files, in `out_dir`.
    """
    check_absent(out_dir, *(p for p in (report, plots_out) if p is not None), force=force)
    claims_md, verdicts = None, None
    if claims is not None:
        try:
            claims_md = claims.read_text()
        except OSError as e:
            raise DataError(f"{claims}: cannot read the claims ({e.strerror}); run the stats step first") from None
        verdicts = _verdicts(params, claims.with_name("claims.csv"))
    data = load_figure_data(params, runs_root, probes_root, lrscan_root)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # a killed earlier attempt of this step
    tmp_dir.mkdir(parents=True)
    entries = draw_all(data, tmp_dir, params.figures.dpi)
    tables = [t for t in (curvature.summary_table(data), thresholds.thresholds_table(data)) if t is not None]
    prefix = "" if report is None else Path(os.path.relpath(out_dir, report.parent)).as_posix() + "/"
    text = report_markdown(entries, header=_header(params, data), claims_md=claims_md, tables=tables,
                           link_prefix=prefix, grid=data.grid, verdicts=verdicts,
                           unlisted=unlisted_cells(_claim_cells(params), list(data.grid.cell)))
    if report is None:
        write_text(tmp_dir / "REPORT.md", text)
    written = [out_dir / p.name for p in sorted(tmp_dir.iterdir())]
    publish_dir(tmp_dir, out_dir, force=force)
    if plots_out is not None:
        publish_plot_data(data.dense, data.runs, plots_out, force=force)
    if report is None:
        return written
    write_text(report, text)  # after the figures it links to are in place
    return [*written, report]


def _verdicts(params: Params, claims_csv: Path) -> pd.DataFrame | None:
    """REPORT.md's verdict table from the claims.csv the stats step wrote beside claims.md; None when it is absent
    (claims.md alone, e.g. an older stats output: the report then lists the claims without the table). The step
    declares claims.md as its input: the stats step writes both files from one table, and claims.md holds every
    number the table shows (verdict, estimate, CI, family), so the table never goes stale while claims.md is current."""
    if not claims_csv.exists():
        log.info("%s: absent, REPORT.md opens without the verdict table", claims_csv)
        return None
    try:
        frame = pd.read_csv(claims_csv)
    except (OSError, ValueError) as e:
        raise DataError(f"{claims_csv}: unreadable claims table ({e}); re-run the stats step") from None
    return verdict_table(frame, {c.id: c.model for c in params.claims})


def write_report_rst(root: Path = ROOT) -> Path:
    """Regenerate workflow/report/figures.rst (Snakemake's report captions) from the registry."""
    path = root / REPORT_RST
    write_text(path, report_rst([Entry(s.name, s.paper, s.title, about=s.about) for s in FIGURES]))
    return path

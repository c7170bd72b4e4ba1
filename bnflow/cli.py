"""`python -m bnflow <step>`: one subcommand per pipeline step, the only thing Snakemake rules and DVC stages call.

Every step takes `--params` (params.yaml, then optional overlays), validates all of it before doing any work, and
writes only the outputs it is given on the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bnflow.config import Params, load_params
from bnflow.errors import BnflowError
from bnflow.io import LOG_FORMAT

log = logging.getLogger("bnflow")




def quiet_requested(flag: bool) -> bool:
    """Warnings and errors only: `--quiet`, or a CI run (the environment has CI=true, as GitHub/GitLab CI set)."""
    return flag or os.environ.get("CI", "").strip().lower() in ("true", "1")


def _setup_logging(log_file: Path | None, quiet: bool) -> logging.FileHandler | None:
    """Log to stderr and, with --log, to that file; return the file's handler.

    The file is emptied here and then written in append mode, as the train step's worker processes write to it too
    (bnflow.train.cell): with O_APPEND every line lands after the others instead of over them.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_handler = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")
        file_handler = logging.FileHandler(log_file, mode="a")
        handlers.append(file_handler)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=handlers, force=True,
                        format=LOG_FORMAT)
    return file_handler


def _run_prepare(p: Params, a: argparse.Namespace) -> None:
    from bnflow.prepare import prepare

    prepare(p, a.model, a.output, force=a.force)


def _run_train(p: Params, a: argparse.Namespace) -> None:
    from bnflow.train.cell import train_cell

    train_cell(p, a.cell, a.data, a.runs_dir, a.checkpoints_dir, force=a.force, quiet=a.quiet)


def _run_probe(p: Params, a: argparse.Namespace) -> None:
    from bnflow.probes.checkpoint import probe_cell

    probe_cell(p, a.cell, a.checkpoints_dir, a.data, a.output, full_out=a.full_output, force=a.force)


def _run_lrscan(p: Params, a: argparse.Namespace) -> None:
    from bnflow.lrscan import scan_lrs

    scan_lrs(p, a.model, a.data, a.output, force=a.force)


def _run_summarize(p: Params, a: argparse.Namespace) -> None:
    from bnflow.summarize import summarize

    summarize(p, a.runs_root, a.output, probes_root=a.probes_root, force=a.force)


def _run_stats(p: Params, a: argparse.Namespace) -> None:
    from bnflow.stats.step import run_stats

    run_stats(p, a.runs, a.output, force=a.force)


def _run_figures(p: Params, a: argparse.Namespace) -> None:
    from bnflow.figures import render_figures

    render_figures(p, a.runs_root, a.output, probes_root=a.probes_root, claims=a.claims, report=a.report,
                   lrscan_root=a.lrscan_root, plots_out=a.plots_output, force=a.force)


def _add_common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--params", action="append", type=Path, required=True, metavar="YAML",
                    help="params.yaml, then optional overlays (later files win); repeatable")
    sp.add_argument("--log", type=Path, help="also write the log to this file")
    sp.add_argument("--quiet", action="store_true", help="warnings and errors only (CI)")
    sp.add_argument("--force", action="store_true", help="replace outputs that already hold completed results")


STEPS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Params, argparse.Namespace], None]]] = {
    "prepare": (
        "prepare a model family's data: CIFAR-10 (download, archive, synthetic) for the image models, the "
        "regression problems of the deep linear network",
        lambda sp: (
            sp.add_argument("--model", required=True, help="model family whose data to prepare: vgg, dln, ..."),
            sp.add_argument("--output", type=Path, required=True, help="the prepared data (.npz)"),
        ),
        _run_prepare,
    ),
    "train": (
        "train every seed of one grid cell (model, variant, lr); resumable",
        lambda sp: (
            sp.add_argument("--cell", required=True, help="grid cell id from train.grid, e.g. vgg-bn-lr0.1"),
            sp.add_argument("--data", type=Path, required=True, help="the cell's prepared data (.npz)"),
            sp.add_argument("--runs-dir", type=Path, required=True, help="where runs/s{seed}/ metrics go"),
            sp.add_argument("--checkpoints-dir", type=Path, required=True, help="where checkpoints go"),
        ),
        _run_train,
    ),
    "probe": (
        "probe the saved checkpoints of one grid cell: loss landscape, gradient predictiveness, ICS, activations",
        lambda sp: (
            sp.add_argument("--cell", required=True, help="grid cell id from train.grid, e.g. vgg-bn-lr0.1"),
            sp.add_argument("--data", type=Path, required=True, help="the cell's prepared data (.npz)"),
            sp.add_argument("--checkpoints-dir", type=Path, required=True, help="the cell's checkpoints folder"),
            sp.add_argument("--output", type=Path, required=True, help="folder for s{seed}/ probe tables (git)"),
            sp.add_argument("--full-output", type=Path, required=True,
                            help="folder for s{seed}/ bulky per-channel tables (DVC cache)"),
        ),
        _run_probe,
    ),
    "lrscan": (
        "short runs over a grid of lrs: the largest lr each variant still trains at",
        lambda sp: (
            sp.add_argument("--model", required=True, help="model family to scan: vgg or dln"),
            sp.add_argument("--data", type=Path, required=True, help="the model's prepared data (.npz)"),
            sp.add_argument("--output", type=Path, required=True, help="folder for scan.csv, thresholds.csv"),
        ),
        _run_lrscan,
    ),
    "summarize": (
        "reduce every run to the per-run summaries of STATS.md (runs.csv)",
        lambda sp: (
            sp.add_argument("--runs-root", type=Path, required=True, help="folder holding one folder per grid cell"),
            sp.add_argument("--probes-root", type=Path, help="checkpoint-wise probes (curvature) per grid cell"),
            sp.add_argument("--output", type=Path, required=True, help="runs.csv to write"),
        ),
        _run_summarize,
    ),
    "stats": (
        "decide every registered claim (claims:) from runs.csv: claims.csv, claims.json, claims.md",
        lambda sp: (
            sp.add_argument("--runs", type=Path, required=True, help="runs.csv from the summarize step"),
            sp.add_argument("--output", type=Path, required=True, help="folder for claims.csv/json/md"),
        ),
        _run_stats,
    ),
    "figures": (
        "render the paper's figures (PNG + SVG) and REPORT.md from the runs' tidy outputs",
        lambda sp: (
            sp.add_argument("--runs-root", type=Path, required=True, help="folder holding one folder per grid cell"),
            sp.add_argument("--probes-root", type=Path,
                            help="folder holding the probe step's {cell}/s{seed}/ tables (checkpoint-wise panels)"),
            sp.add_argument("--claims", type=Path, help="the stats step's claims.md, quoted in REPORT.md"),
            sp.add_argument("--output", type=Path, required=True, help="folder for the figures"),
            sp.add_argument("--report", type=Path, help="REPORT.md to write (default: inside --output)"),
            sp.add_argument("--plots-output", type=Path,
                            help="folder for the dvc plots data (a CSV per cell and plot, bnflow/plotdata.py)"),
            sp.add_argument("--lrscan-root", type=Path,
                            help="folder holding the lrscan step's {model}/thresholds.csv (lr-scan figure and table)"),
        ),
        _run_figures,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bnflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (help_text, add_args, _) in STEPS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        _add_common(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.quiet = quiet_requested(args.quiet)
    file_handler = _setup_logging(args.log, args.quiet)
    try:
        # only the prepare step reads the files params name (prepare.archive): the others run without them
        params = load_params(*args.params, check_files=args.step == "prepare")
        STEPS[args.step][2](params, args)
    except BnflowError as e:
        # once on the console (no log-line copy of it), and in the log file for whoever reads the log later
        if file_handler is not None:
            file_handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), None))
        print(f"bnflow {args.step}: error: {e}", file=sys.stderr)
        return 2
    return 0

"""`python -m bnflow <step>`: one subcommand per pipeline step, the only thing Snakemake rules and DVC stages call.

Every step takes `--params` (params.yaml, then optional overlays), validates all of it before doing any work, and
writes only the outputs it is given on the command line.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bnflow.config import Params, load_params
from bnflow.cpu_guard import check_step
from bnflow.dag.artefacts import ensure_data, require_present, track_with_dvc, tracked_paths
from bnflow.errors import BnflowError, ConfigError
from bnflow.io import LOG_FORMAT, out_of_space, step_lock

log = logging.getLogger("bnflow")
TORCH_STEPS = ("prepare", "train", "probe", "lrscan")
"""The steps that compute with torch: each starts with bnflow.train.threads' fixed count, whoever launched it (the
train step then gives every run train.numerics.threads_per_run); the others never import torch."""


def _setup_threads(step: str) -> None:
    """The step's own torch threads, before any work: one inter-op thread (settable only this early) and
    STEP_THREADS intra-op, instead of torch's default of one per core, which differs between machines and tools."""
    if step in TORCH_STEPS:
        from bnflow.train.threads import STEP_THREADS, set_threads

        set_threads(STEP_THREADS)


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
    # set by --dvc-stage: record the step's large artefacts in the DVC cache (bnflow.dag.artefacts)
    sp.add_argument("--track-with-dvc", action="store_true", help=argparse.SUPPRESS)


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
        sp.epilog = (f"Under `dvc repro`: python -m bnflow {name} --params params.yaml --dvc-stage \"$DVC_STAGE\" "
                     "[--force] (every path from params.yaml's out_dir, see bnflow.cli.stage_argv)")
    return parser


# ------------------------------------------------------------------------------------------------ DVC's commands
DVC_STAGE = re.compile(r"(?:[^@]*dvc\.yaml:)?(?P<step>[a-z]+)(?:@(?P<key>.+))?", re.S)
"""A DVC stage address as DVC puts it in $DVC_STAGE: [path/dvc.yaml:]step[@key]."""


def _dvc_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bnflow STEP --dvc-stage", add_help=False)
    p.add_argument("step", choices=STEPS)
    p.add_argument("--params", action="append", required=True)
    p.add_argument("--dvc-stage", required=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def stage_argv(step: str, stage: str, params: Params, params_files: Sequence[str]) -> list[str]:
    """The full command line of the DVC stage `stage` (its $DVC_STAGE): what Snakemake's rule runs for that job.

    dvc.yaml's commands name no params value: DVC pastes `${...}` values into a shell command before bnflow can
    validate them, so a grid cell key or an out_dir holding shell text would run (issue 26). They pass the stage's
    name through the environment instead ("$DVC_STAGE", expanded by the shell as one word, never parsed again), and
    bnflow builds the paths here, from params validated first, exactly as the Snakefile's rules template them and
    dvc.yaml declares them (tests/test_dag.py compares both tools' commands through this function).

    Raises:
        ConfigError: the stage is not one of `step`, or its key is not a cell of train.grid / a model family.
    """
    from bnflow.dag import data_path
    from bnflow.vocab import MODELS

    m = DVC_STAGE.fullmatch(stage)
    key = m["key"] if m else None
    if m is None or m["step"] != step:
        raise ConfigError(f"--dvc-stage {stage!r}: not a stage of the {step} step (dvc.yaml passes \"$DVC_STAGE\")")
    out = params.out_dir
    if step in ("train", "probe"):
        if key not in params.train.grid:
            raise ConfigError(f"train.grid: no cell {key!r} (DVC stage {stage!r}); a cell id is model-variant-lr")
        args = ["--cell", key, "--data", data_path(out, params.cell(key).model)]
        if step == "train":
            args += ["--runs-dir", f"{out}/runs/{key}", "--checkpoints-dir", f"{out}/checkpoints/{key}"]
        else:
            args += ["--checkpoints-dir", f"{out}/checkpoints/{key}", "--output", f"{out}/probes/{key}",
                     "--full-output", f"{out}/probes_full/{key}"]
        logfile = f"{out}/logs/{step}/{key}.log"
    elif step in ("prepare", "lrscan"):
        if key not in MODELS:
            raise ConfigError(f"--dvc-stage {stage!r}: {key!r} is not a model family ({', '.join(MODELS)})")
        args = ["--model", key] + (["--output", data_path(out, key)] if step == "prepare" else
                                   ["--data", data_path(out, key), "--output", f"{out}/lrscan/{key}"])
        logfile = f"{out}/logs/{step}-{key}.log"
    else:
        if key is not None:
            raise ConfigError(f"--dvc-stage {stage!r}: the {step} step has no per-key stages")
        args = {"summarize": ["--runs-root", f"{out}/runs", "--probes-root", f"{out}/probes",
                              "--output", f"{out}/stats/runs.csv"],
                "stats": ["--runs", f"{out}/stats/runs.csv", "--output", f"{out}/stats"],
                "figures": ["--runs-root", f"{out}/runs", "--probes-root", f"{out}/probes",
                            "--lrscan-root", f"{out}/lrscan", "--claims", f"{out}/stats/claims.md",
                            "--output", f"{out}/figures", "--report", f"{out}/REPORT.md",
                            "--plots-output", f"{out}/plots"]}[step]
        logfile = f"{out}/logs/{step}.log"
    return [step, *(a for f in params_files for a in ("--params", str(f))), *args, "--log", logfile]


def _expand_dvc_stage(argv: list[str]) -> list[str]:
    """argv with `--dvc-stage STAGE` replaced by the stage's full command line (stage_argv), which also records the
    step's large artefacts in the DVC cache (--track-with-dvc: bnflow.dag.artefacts); argv as is without."""
    if not any(a == "--dvc-stage" or a.startswith("--dvc-stage=") for a in argv):
        return argv
    a = _dvc_parser().parse_args(argv)
    params = load_params(*a.params, check_files=False)  # validated before any path is built from it
    return [*stage_argv(a.step, a.dvc_stage, params, a.params), *(["--force"] if a.force else []),
            *(["--quiet"] if a.quiet else []), "--track-with-dvc"]


# ------------------------------------------------------------------------------------ one lock for both tools
RUNNER_ENV = "BNFLOW_RUNNER"
"""Set to "snakemake" by the Snakefile for its jobs: Snakemake decided they must run, and keeps their previous
outputs (update() flags) until they succeed."""


def step_outputs(a: argparse.Namespace) -> list[Path]:
    """The outputs a step's command line names, its first one first (the key of its lock, bnflow.io.step_lock)."""
    from bnflow.dag import manifest_path

    names = {"train": ("runs_dir", "checkpoints_dir"), "probe": ("output", "full_output"),
             "figures": ("output", "report", "plots_output")}.get(a.step, ("output",))
    outs = [getattr(a, n) for n in names if getattr(a, n, None) is not None]
    if a.step == "stats":  # --output is the folder of the claims files
        outs = [outs[0] / f"claims.{e}" for e in ("csv", "json", "md")]
    if a.step == "prepare":  # the data, then its manifest (bnflow.prepare)
        outs.append(manifest_path(outs[0]))
    return [Path(p) for p in outs]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _expand_dvc_stage(argv)
    except BnflowError as e:  # params refused before any command is built from them
        print(f"bnflow: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    args.quiet = quiet_requested(args.quiet)
    file_handler = _setup_logging(args.log, args.quiet)
    try:
        # only the prepare step reads the files params name (prepare.archive): the others run without them
        params = load_params(*args.params, check_files=args.step == "prepare")
        # paper-scale GPU work on a CPU is refused before it starts, in one line (bnflow.cpu_guard)
        check_step(params, args.step, getattr(args, "cell", None) or getattr(args, "model", None))
        outputs = step_outputs(args)
        wait = lambda: log.info("%s: another run of this step (Snakemake or dvc repro) is writing it; waiting for "  # noqa: E731
                                "it to finish", outputs[0])
        with step_lock(outputs[0], outputs, on_wait=wait) as written_meanwhile:
            if written_meanwhile and not args.force:
                log.info("%s: written by another run (dvc repro or Snakemake) since this one started; this run "
                         "replaces it on success", outputs[0])
                args.force = True
            # Snakemake decided this job must run (as DVC does before passing --force) and keeps its previous outputs
            # until the job succeeds (update() in workflow/rules): the step replaces them once its new ones are
            # complete, and Snakemake restores them if it fails
            if os.environ.get(RUNNER_ENV) == "snakemake":
                args.force = True
            _setup_threads(args.step)
            if args.step == "probe":
                require_present(args.checkpoints_dir, f"re-train the cell (`dvc repro -f -s train@{args.cell}`, then "
                                                      f"`dvc repro`)")
            if args.step in DATA_STEPS:  # absent on a clone without the DVC cache: rebuilt and checked first
                model = params.cell(args.cell).model if args.step != "lrscan" else args.model
                ensure_data(params, model, args.data)
            STEPS[args.step][2](params, args)
            tracked = tracked_paths(args.step, args) if args.track_with_dvc else []
            if tracked:
                track_with_dvc(tracked)
    except OSError as e:
        if not out_of_space(e):
            raise
        # a full disk: every output is written to a temporary file and renamed into place once complete, so
        # nothing half written was published and the same command works once there is space again
        return _report(args, file_handler, f"{e.filename or 'a file'}: {e.strerror} ({errno.errorcode.get(e.errno)}): "
                       "no partly written output was published; free some space and run the same command again")
    except BnflowError as e:
        return _report(args, file_handler, e)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (issue 24)
        print(f"bnflow {args.step}: interrupted; nothing partial was published{RESUMES.get(args.step, '')}",
              file=sys.stderr)
        return 130
    return 0


DATA_STEPS = ("train", "probe", "lrscan")
"""The steps that read a model family's prepared data (--data): their cell's family, or lrscan's --model."""

RESUMES = {"train": "; the same command resumes from the finished seeds and resume states kept in "
                    "<out_dir>/.partial/ (bnflow.train.cell)"}
"""What an interrupted step keeps for the next run of the same command, in its one line."""


def _report(args: argparse.Namespace, file_handler: logging.FileHandler | None, e: object) -> int:
    """One line on the console (no log-line copy of it), and in the log file for whoever reads the log later."""
    if file_handler is not None:
        file_handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), None))
    print(f"bnflow {args.step}: error: {e}", file=sys.stderr)
    return 2

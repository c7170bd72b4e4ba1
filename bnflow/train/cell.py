"""Train one grid cell: every seed of (model, variant, lr), several at once, published only when all are done.

Work happens in `{out_dir}/.partial/{cell}/` (git- and DVC-ignored). A seed is finished when its run.json exists
there and carries the fingerprint of the current params. A restarted job reuses the finished seeds of the same
params, resumes unfinished ones from their last intact resume state (bnflow.train.loop), and discards, with a
warning, whatever scratch other params left. Before publishing, every seed's checkpoint set is verified (exactly
train.<model>.checkpoint_steps, each file's sha256, cell, seed and fingerprint); a seed that fails is trained again.
Only then are the checkpoints and runs folders moved into place, each with one rename, so Snakemake, DVC and later
steps never see a half-written cell; a job killed between the two renames is finished by the next one.

Per run, `runs/{cell}/s{seed}/` holds metrics.csv.gz, the dense probe tables (`{name}.csv.gz`), run.json
(deterministic facts only) and provenance.json (what computed it); `checkpoints/{cell}/s{seed}/` holds step*.pt and
manifest.json. The per-step tables are gzip-compressed with a fixed header (bnflow.io.gzip_bytes: a re-run rewrites
them byte for byte): as plain CSV the DLN half at 20 seeds alone would pass the results' 25 MB git budget;
compressed, the tables the summaries and figures read stay in git, so every step after training re-runs on a clone
without the DVC cache. What changes from one execution to the next (wall time, speed, resume step, command) goes
to the log and to `{out_dir}/logs/train/{cell}.timing.json`, never into a committed file.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bnflow import seeds
from bnflow.config import Cell, Params, TrainConfig, from_dict, to_plain
from bnflow.errors import DataError
from bnflow.data import load_prepared
from bnflow.gpu import process_device
from bnflow.io import (LOG_FORMAT, RUN_TABLE, check_absent, git_revision, publish_dir, run_provenance, write_json,
                       write_table)
from bnflow.probes.checkpoint import checkpoint_files, load_checkpoint, write_manifest
from bnflow.probes.runner import TABLES, Prober, ProbePlan
from bnflow.tasks import make_task, run_facts, run_fingerprint
from bnflow.train.loop import LoopConfig, RunOutcome, clear_checkpoints, train_loop
from bnflow.train.threads import set_threads, threads
from bnflow.vocab import CLASSIFIERS

log = logging.getLogger("bnflow.train")
METRICS_COLUMNS = ("step", "split", "loss", "acc")
PENALTY_COLUMN = "penalty"  # ½·wd·‖θ‖², only with weight decay: `loss` is always the data loss
PARENT_POLL_S = 1.0


def loop_config(train: TrainConfig, cell: Cell, seed: int, *, steps: int | None = None) -> LoopConfig:
    """The training loop's settings for one run of `cell`.

    `steps` makes it a short run (lr scans): that budget, no checkpoints, no test evaluations.
    """
    model_cfg, ex = getattr(train, cell.model), train.execution
    return LoopConfig(
        run_id=f"{cell.model}/{cell.run_id(seed)}", lr=cell.lr, steps=steps or model_cfg.steps,
        log_every=model_cfg.log_every, eval_every=getattr(model_cfg, "eval_every", None) if steps is None else None,
        checkpoint_steps=model_cfg.checkpoint_steps if steps is None else (),
        momentum=getattr(model_cfg, "momentum", 0.0), weight_decay=getattr(model_cfg, "weight_decay", 0.0),
        precision=getattr(model_cfg, "precision", "fp32"), sync_every=ex.sync_every, resume_every_s=ex.resume_every_s,
        progress_every_s=ex.progress_every_s, cuda_graphs=ex.cuda_graphs)


class SeedScratch:
    """Where one seed's work lives inside a cell's scratch folder."""

    def __init__(self, scratch_dir: Path, seed: int):
        self.run = scratch_dir / "runs" / f"s{seed}"
        self.state = scratch_dir / "state" / f"s{seed}"
        self.checkpoints = scratch_dir / "checkpoints" / f"s{seed}"
        self.timing = scratch_dir / "timing" / f"s{seed}.json"

    def discard(self) -> None:
        """Delete everything this seed left in scratch."""
        for folder in (self.run, self.state, self.checkpoints):
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.timing.unlink()


def _finished(run_json: Path, fingerprint: str) -> bool | None:
    """True: a finished run of these params; False: of other params (or unreadable); None: not finished."""
    if not run_json.exists():
        return None
    try:
        return json.loads(run_json.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def train_seed(plain: dict, cell_id: str, seed: int, data_path: str | None, scratch: str, device: str,
               command: str = "") -> dict[str, Any]:
    """Train (or resume, or reuse) seed `seed` of `cell_id` inside `scratch`; return its summary. Runs in a worker.

    The summary is run.json's content plus the volatile timing facts (wall_s, steps_per_s, resumed_from_step,
    command) and `skipped` (True when a finished run of the same params was reused).
    """
    params = from_dict(plain, check_files=False)  # validated by the parent process, files included
    cell, train = params.cell(cell_id), params.train
    scratch_dir = Path(scratch)
    where = SeedScratch(scratch_dir, seed)
    device = torch.device(device)  # resolved (and locked) once, by train_cell
    task = make_task(train, cell, seed, Path(data_path) if data_path else None, device)
    fingerprint = run_fingerprint(params, cell_id, seed, task.data_info.get("source_sha256"))
    finished = _finished(where.run / "run.json", fingerprint)
    if finished:
        log.info("%s s%d: already finished in %s", cell_id, seed, where.run)
        return _read_json(where.run / "run.json") | _read_json(where.timing) | {"skipped": True}
    if finished is False:
        log.warning("%s s%d: %s holds a finished run of other params (or is unreadable); discarding this seed's "
                    "scratch and training it again", cell_id, seed, where.run / "run.json")
        where.discard()
    shutil.rmtree(where.run, ignore_errors=True)  # tables of an unfinished attempt are rewritten, never mixed
    model_cfg = getattr(train, cell.model)
    ckpt_meta = {"cell": cell_id, "model": cell.model, "variant": cell.variant, "lr": cell.lr, "seed": seed,
                 "fingerprint": fingerprint, "model_config": to_plain(model_cfg)}
    where.state.mkdir(parents=True, exist_ok=True)
    where.checkpoints.mkdir(parents=True, exist_ok=True)
    dense = train.probes
    probe_cfg = getattr(dense, cell.model)
    prober = None
    if probe_cfg.every:
        prober = Prober.for_task(ProbePlan.build(probe_cfg, dense, cell.lr), task, base=train.seeds.base, seed=seed)
    outcome = train_loop(task, loop_config(train, cell, seed), where.state, where.checkpoints, ckpt_meta, fingerprint,
                         prober, probe_cfg.every)
    summary = write_run(params, cell_id, seed, scratch_dir, outcome, fingerprint, task.data_info,
                        probed=prober is not None, device=str(device), command=command)
    shutil.rmtree(where.state, ignore_errors=True)
    return summary | {"skipped": False}


def write_run(params: Params, cell_id: str, seed: int, scratch_dir: Path, outcome: RunOutcome, fingerprint: str,
              data_info: dict[str, Any], *, probed: bool, device: str, command: str = "") -> dict[str, Any]:
    """Write one finished run into the cell's scratch; run.json last, since it marks the seed finished.

    For any way of training a seed (train_seed; packed cells, bnflow.train.packed): checkpoints of a diverged run
    after its divergence step are dropped (saved before the host sync that noticed, they hold blown-up weights) and
    the manifest records the set kept; metrics.csv.gz, the dense probe tables (`probed`), provenance.json and
    run.json go to runs/s{seed}/, the timing facts to timing/s{seed}.json.

    Returns:
        run.json's content plus wall_s, steps_per_s, resumed_from_step and command.
    """
    cell, train = params.cell(cell_id), params.train
    model_cfg = getattr(train, cell.model)
    where = SeedScratch(scratch_dir, seed)
    kept = tuple(s for s in model_cfg.checkpoint_steps if not outcome.diverged or s <= outcome.diverged_at_step)
    clear_checkpoints(where.checkpoints, keep=kept)
    write_manifest(where.checkpoints, list(kept), outcome.diverged_at_step)
    columns = METRICS_COLUMNS + ((PENALTY_COLUMN,) if getattr(model_cfg, "weight_decay", 0.0) else ())
    write_table(where.run / RUN_TABLE.format("metrics"), outcome.tables["metrics"], columns)
    for name in TABLES if probed else ():
        write_table(where.run / RUN_TABLE.format(name), outcome.tables.get(name, []))
    write_json(where.run / "provenance.json", run_provenance(device))
    summary = {
        "run_id": cell.run_id(seed), "cell": cell_id, "model": cell.model, "variant": cell.variant, "lr": cell.lr,
        "seed": seed, "status": "diverged" if outcome.diverged else "completed", "diverged": outcome.diverged,
        "diverged_at_step": outcome.diverged_at_step, "n_steps": outcome.n_steps, "step_budget": model_cfg.steps,
        "fingerprint": fingerprint,
        "streams": {s: seeds.stream_seed(train.seeds.base, seed, s) for s in ("init", "data", "noise")},
        "data": {k: v for k, v in data_info.items() if k != "path"},  # never a path: it differs between machines
        "params": run_facts(params, cell_id),
    }
    timing = {"wall_s": round(outcome.wall_s, 3),
              "steps_per_s": round(outcome.n_steps / max(outcome.wall_s, 1e-9), 2),
              "resumed_from_step": outcome.resumed_from, "command": command, "commit": git_revision(),
              "torch_threads": torch.get_num_threads()}  # what the run computed with (train.numerics.threads_per_run)
    write_json(where.timing, timing)
    write_json(where.run / "run.json", summary)  # written last: marks the seed finished
    return summary | timing


def publish_problems(params: Params, cell_id: str, scratch_dir: Path, seed_list: list[int]) -> dict[int, str]:
    """Per seed, why its scratch must not be published (absent: it may): no finished run.json, or a checkpoint set
    that is not exactly the one the params ask for, or a checkpoint that is damaged or of another run."""
    cell = params.cell(cell_id)
    steps = getattr(params.train, cell.model).checkpoint_steps
    problems = {}
    for seed in seed_list:
        where = SeedScratch(scratch_dir, seed)
        try:
            fingerprint = json.loads((where.run / "run.json").read_text())["fingerprint"]
            for path in checkpoint_files(where.checkpoints, steps, what=f"train.{cell.model}.checkpoint_steps",
                                         hint=""):
                load_checkpoint(path, cell_id=cell_id, seed=seed, fingerprint=fingerprint, hint="")
        except (DataError, OSError, ValueError, KeyError, TypeError) as e:
            problems[seed] = str(e)
    return problems


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the train step's main process dies, however it dies (kill -9 included).

    An orphaned worker would train on, holding a GPU whose lock died with the parent. Linux delivers SIGKILL on
    the parent's death (prctl PR_SET_PDEATHSIG); elsewhere, and as a fallback, a thread watches the parent pid.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="bnflow-parent-watch", daemon=True).start()


def _worker_init(threads: int, quiet: bool, parent_pid: int, log_files: list[str]) -> None:
    _die_with_parent(parent_pid)
    set_threads(threads)  # train.numerics.threads_per_run, as in the step's own process (bnflow.train.threads)
    # the step's --log file too (append mode, like the parent's handler): progress lines land there whatever
    # parallel_runs is
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers += [logging.FileHandler(f, mode="a") for f in log_files]
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=handlers, format=LOG_FORMAT,
                        force=True)


def _train_seeds(params: Params, cell_id: str, seed_list: list[int], data_path: Path | None, scratch: Path,
                 device: torch.device, quiet: bool, command: str) -> list[dict[str, Any]]:
    """train_seed for every seed of `seed_list`, up to train.execution.parallel_runs at once (spawned workers).

    Every run gets train.numerics.threads_per_run intra-op threads, in a worker or in this process (train_cell sets
    this process's), so how many run at once never changes a number (bnflow.train.threads).
    """
    plain = to_plain(params)
    jobs = [(plain, cell_id, s, str(data_path) if data_path else None, str(scratch), str(device), command)
            for s in seed_list]
    threads = params.train.numerics.threads_per_run
    procs = min(params.train.execution.parallel_runs, len(jobs))
    if device.type == "cpu":  # no more threads than cores: oversubscribed OpenMP threads stall each other
        procs = min(procs, max(1, (os.cpu_count() or 1) // threads))
    if procs <= 1:
        return [train_seed(*job) for job in jobs]
    log_files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    with _sigint_ignored():  # Ctrl-C: the workers never see it (_sigint_ignored says why)
        pool = mp.get_context("spawn").Pool(procs, initializer=_worker_init,
                                            initargs=(threads, quiet, os.getpid(), log_files))
    with pool:  # leaving it, also on KeyboardInterrupt, terminates the workers
        return pool.starmap(train_seed, jobs)


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while the worker processes start, so that they ignore it for good.

    Ctrl-C sends SIGINT to the whole process group: each worker would stop with a traceback of its own while the main
    process printed a third. Started with SIGINT ignored, a spawned Python keeps ignoring it (it installs its
    KeyboardInterrupt handler only over the default action), so only the main process raises KeyboardInterrupt;
    leaving the pool terminates the workers, whose finished seeds and last resume states stay in the cell's scratch
    (results/.partial/), and the CLI ends with one line (bnflow.cli). The same command resumes from there.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _train(params: Params, cell_id: str, seed_list: list[int], data_path: Path | None, scratch: Path,
           device: torch.device, quiet: bool, command: str) -> list[dict[str, Any]]:
    """Train `seed_list`: packed into one model when train.numerics.mode asks for it and the cell allows it
    (bnflow.train.packed_cell.packed_plan logs why not), else one process per seed (_train_seeds)."""
    from bnflow.train.packed_cell import packed_plan, train_cell_packed

    cell = params.cell(cell_id)
    use, _ = packed_plan(params, cell)
    if not use:
        return _train_seeds(params, cell_id, seed_list, data_path, scratch, device, quiet, command)
    data_sha = load_prepared(data_path).source_sha256
    done: dict[int, dict[str, Any]] = {}
    for seed in seed_list:  # reuse finished seeds of these params, discard those of other params (as train_seed)
        where = SeedScratch(scratch, seed)
        finished = _finished(where.run / "run.json", run_fingerprint(params, cell_id, seed, data_sha))
        if finished:
            done[seed] = _read_json(where.run / "run.json") | _read_json(where.timing) | {"skipped": True}
        elif finished is False:
            log.warning("%s s%d: scratch of other params; discarding it and training the seed again", cell_id, seed)
            where.discard()
    todo = [s for s in seed_list if s not in done]
    if todo:
        for r in train_cell_packed(params, cell_id, todo, data_path, scratch, device,
                                   loop_config(params.train, cell, todo[0])):
            done[r.seed] = write_run(params, cell_id, r.seed, scratch, r.outcome, r.fingerprint, r.data_info,
                                     probed=r.probed, device=str(device), command=command) | {"skipped": False}
        shutil.rmtree(scratch / "state" / "packed", ignore_errors=True)
    return [done[s] for s in seed_list]


def _finish_half_published(runs_dir: Path, ckpt_dir: Path, scratch: Path, cell_id: str) -> None:
    """A job killed between the two publishing renames left the checkpoints published and the runs in scratch:
    move the checkpoints back, so they are verified (and missing or damaged seeds re-trained) like any scratch."""
    if (ckpt_dir.is_dir() and not runs_dir.exists() and (scratch / "runs").is_dir()
            and not (scratch / "checkpoints").exists()):
        log.info("%s: a killed job published %s but not the runs; finishing the cell", cell_id, ckpt_dir)
        os.replace(ckpt_dir, scratch / "checkpoints")


def _check_published(runs_dir: Path, ckpt_dir: Path, seed_list: list[int], cell_id: str, rebuild: str) -> None:
    """Refuse a published cell with a seed folder (or its whole checkpoints or runs folder) missing."""
    present = [d for d in (runs_dir, ckpt_dir) if d.is_dir() and any(d.iterdir())]
    if not present:
        return
    for folder in (runs_dir, ckpt_dir):
        if not folder.exists():  # e.g. a clone with committed runs and no checkpoints (they live in the DVC cache)
            raise DataError(f"{folder}: missing, while the cell {cell_id} is published in {present[0]}; fetch it "
                            f"(`dvc pull`) or {rebuild}")
        missing = [f"s{s}" for s in seed_list if not (folder / f"s{s}").is_dir()]
        if missing:
            raise DataError(f"{folder}: the published cell {cell_id} is incomplete (no {', '.join(missing)}); "
                            f"{rebuild}")


def train_cell(params: Params, cell_id: str, data_path: Path | None, runs_dir: Path, ckpt_dir: Path, *,
               force: bool = False, quiet: bool = False) -> list[dict[str, Any]]:
    """Train every seed of `cell_id` and publish `runs_dir/s{seed}/` and `ckpt_dir/s{seed}/`.

    Returns:
        one summary per seed (run.json's content plus the timing facts and `skipped`), in seed order.
    """
    cell = params.cell(cell_id)
    seed_list = list(params.train.seeds.indices(cell.model))
    scratch = Path(params.out_dir) / ".partial" / cell_id
    rebuild = (f"rebuild it: `rm -rf {runs_dir} {ckpt_dir}`, then re-run snakemake or `dvc repro train@{cell_id}` "
               "(or run this train command again with --force)")
    _finish_half_published(runs_dir, ckpt_dir, scratch, cell_id)
    if not force:
        _check_published(runs_dir, ckpt_dir, seed_list, cell_id, rebuild)
    check_absent(runs_dir, ckpt_dir, force=force)
    if (data_path is None and cell.model in CLASSIFIERS) or (data_path is not None and not data_path.exists()):
        raise DataError(f"{data_path}: prepared data not found; run `python -m bnflow prepare` first")
    scratch.mkdir(parents=True, exist_ok=True)
    # `auto` locks a free GPU for this job's process (bnflow.gpu); workers get the resolved device, not `auto`
    device = process_device(params.train.execution.device)
    command = " ".join(sys.argv)
    with threads(params.train.numerics.threads_per_run):  # in-process runs (parallel_runs 1, packed) as workers'
        done = dict(zip(seed_list, _train(params, cell_id, seed_list, data_path, scratch, device, quiet, command)))
        problems = publish_problems(params, cell_id, scratch, seed_list)
        if problems:
            for seed, why in problems.items():
                log.warning("%s s%d: not publishing it: %s; training this seed again", cell_id, seed, why)
                SeedScratch(scratch, seed).discard()
            again = list(problems)
            done |= dict(zip(again, _train(params, cell_id, again, data_path, scratch, device, quiet, command)))
            problems = publish_problems(params, cell_id, scratch, again)
            if problems:
                seed, why = next(iter(problems.items()))
                raise DataError(f"{cell_id} s{seed}: still not publishable after training it again: {why}; "
                                f"{rebuild}")
    timing = {f"s{s}": _read_json(SeedScratch(scratch, s).timing) for s in seed_list}
    publish_dir(scratch / "checkpoints", ckpt_dir, force=force)
    publish_dir(scratch / "runs", runs_dir, force=force)  # last: a cell's runs folder means the cell is complete
    write_json(Path(params.out_dir) / "logs" / "train" / f"{cell_id}.timing.json", timing)
    for name, t in timing.items():
        log.info("%s %s: %.1f s wall, %.1f steps/s%s", cell_id, name, t.get("wall_s", float("nan")),
                 t.get("steps_per_s", float("nan")),
                 f", resumed from step {t['resumed_from_step']}" if t.get("resumed_from_step") is not None else "")
    shutil.rmtree(scratch, ignore_errors=True)
    with contextlib.suppress(OSError):
        scratch.parent.rmdir()  # .partial/ itself, once no cell is in progress
    return [done[s] for s in seed_list]

"""Train one grid cell: every seed of (model, variant, lr), several at once, published only when all are done.

Work happens in `{out_dir}/.partial/{cell}/` (git- and DVC-ignored). A seed is finished when its run.json exists
there; a restarted job skips finished seeds and resumes unfinished ones from their last resume state. Only when every
seed has finished are the runs and checkpoints folders moved into place, each with one rename, so Snakemake, DVC
and later steps never see a half-written cell.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bnflow import seeds
from bnflow.config import Cell, Params, TrainConfig, from_dict, to_plain
from bnflow.errors import DataError
from bnflow.gpu import process_device
from bnflow.io import check_absent, provenance, publish_dir, write_json, write_table
from bnflow.probes.runner import TABLES, Prober, ProbePlan
from bnflow.tasks import make_task, run_fingerprint
from bnflow.train.loop import LoopConfig, train_loop

log = logging.getLogger("bnflow.train")
METRICS_COLUMNS = ("step", "split", "loss", "acc", "wall_s")


def loop_config(train: TrainConfig, cell: Cell, seed: int, *, steps: int | None = None) -> LoopConfig:
    """The training loop's settings for one run of `cell`.

    `steps` makes it a short run (lr scans): that budget, no checkpoints, no test evaluations.
    """
    model_cfg, ex = (train.vgg if cell.model == "vgg" else train.dln), train.execution
    return LoopConfig(
        run_id=f"{cell.model}/{cell.run_id(seed)}", lr=cell.lr, steps=steps or model_cfg.steps,
        log_every=model_cfg.log_every, eval_every=getattr(model_cfg, "eval_every", None) if steps is None else None,
        checkpoint_steps=model_cfg.checkpoint_steps if steps is None else (),
        momentum=getattr(model_cfg, "momentum", 0.0), weight_decay=getattr(model_cfg, "weight_decay", 0.0),
        precision=getattr(model_cfg, "precision", "fp32"), sync_every=ex.sync_every, resume_every_s=ex.resume_every_s,
        progress_every_s=ex.progress_every_s, cuda_graphs=ex.cuda_graphs)


def train_seed(plain: dict, cell_id: str, seed: int, data_path: str | None, scratch: str,
               device: str) -> dict[str, Any]:
    """Train (or resume) seed `seed` of `cell_id` inside `scratch`; return its run summary. Runs in a worker."""
    params = from_dict(plain)
    cell, train = params.cell(cell_id), params.train
    scratch_dir = Path(scratch)
    run_dir = scratch_dir / "runs" / f"s{seed}"
    if (run_dir / "run.json").exists():
        log.info("%s s%d: already finished in %s", cell_id, seed, run_dir)
        return {"seed": seed, "skipped": True}
    device = torch.device(device)  # resolved (and locked) once, by train_cell
    task = make_task(train, cell, seed, Path(data_path) if data_path else None, device)
    model_cfg = train.vgg if cell.model == "vgg" else train.dln
    loop_cfg = loop_config(train, cell, seed)
    data_sha = task.data_info.get("source_sha256")
    fingerprint = run_fingerprint(params, cell_id, seed, data_sha)
    ckpt_meta = {"cell": cell_id, "model": cell.model, "variant": cell.variant, "lr": cell.lr, "seed": seed,
                 "fingerprint": fingerprint, "model_config": to_plain(model_cfg)}
    state_dir = scratch_dir / "state" / f"s{seed}"
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = scratch_dir / "checkpoints" / f"s{seed}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dense = train.probes
    probe_cfg = getattr(dense, cell.model)
    prober = None
    if probe_cfg.every:
        plan = ProbePlan.build(probe_cfg, dense, cell.lr)
        prober = Prober.for_task(plan, task, base=train.seeds.base, seed=seed)
    outcome = train_loop(task, loop_cfg, state_dir, ckpt_dir, ckpt_meta, fingerprint, prober, probe_cfg.every)

    write_table(run_dir / "metrics.csv", outcome.tables["metrics"], METRICS_COLUMNS)
    for name in TABLES if prober is not None else ():
        write_table(run_dir / f"{name}.csv", outcome.tables.get(name, []))
    summary = {
        "run_id": cell.run_id(seed), "cell": cell_id, "model": cell.model, "variant": cell.variant, "lr": cell.lr,
        "seed": seed, "status": "diverged" if outcome.diverged else "completed", "diverged": outcome.diverged,
        "diverged_at_step": outcome.diverged_at_step, "n_steps": outcome.n_steps, "step_budget": model_cfg.steps,
        "wall_s": round(outcome.wall_s, 3), "steps_per_s": round(outcome.n_steps / max(outcome.wall_s, 1e-9), 2),
        "resumed_from_step": outcome.resumed_from, "fingerprint": fingerprint,
        "streams": {s: seeds.stream_seed(train.seeds.base, seed, s) for s in ("init", "data", "noise")},
        "data": task.data_info,
        "provenance": provenance({"cell": to_plain(cell), "train": {k: v for k, v in to_plain(train).items()
                                                                     if k != "grid"}}, str(device)),
    }
    write_json(run_dir / "run.json", summary)  # written last: marks the seed finished
    shutil.rmtree(state_dir, ignore_errors=True)
    return summary


def _worker_init(threads: int, quiet: bool) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s")


def train_cell(params: Params, cell_id: str, data_path: Path | None, runs_dir: Path, ckpt_dir: Path, *,
               force: bool = False, quiet: bool = False) -> list[dict[str, Any]]:
    """Train every seed of `cell_id` and publish `runs_dir/s{seed}/` and `ckpt_dir/s{seed}/`."""
    cell = params.cell(cell_id)
    scratch = Path(params.out_dir) / ".partial" / cell_id
    # A job killed between the two publishing renames left checkpoints in place and finished runs in scratch.
    half_published = ckpt_dir.exists() and not (scratch / "checkpoints").exists() and (scratch / "runs").exists()
    check_absent(runs_dir, force=force)
    if not half_published:
        check_absent(ckpt_dir, force=force)
    if cell.model == "vgg" and (data_path is None or not data_path.exists()):
        raise DataError(f"{data_path}: prepared dataset not found; run `python -m bnflow prepare` first")
    scratch.mkdir(parents=True, exist_ok=True)
    plain = to_plain(params)
    seed_list = list(params.train.seeds.indices)
    # `auto` locks a free GPU for this job's process (bnflow.gpu); workers get the resolved device, not `auto`
    device = process_device(params.train.execution.device)
    procs = min(params.train.execution.parallel_runs, len(seed_list))
    if device.type == "cpu":
        procs = min(procs, os.cpu_count() or 1)
    jobs = [(plain, cell_id, s, str(data_path) if data_path else None, str(scratch), str(device))
            for s in seed_list]
    if procs <= 1:
        summaries = [train_seed(*job) for job in jobs]
    else:
        threads = max(1, (os.cpu_count() or 1) // procs) if device.type == "cpu" else 1
        with mp.get_context("spawn").Pool(procs, initializer=_worker_init, initargs=(threads, quiet)) as pool:
            summaries = pool.starmap(train_seed, jobs)
    if not half_published:
        publish_dir(scratch / "checkpoints", ckpt_dir, force=force)
    publish_dir(scratch / "runs", runs_dir, force=force)  # last: a cell's runs folder means the cell is complete
    shutil.rmtree(scratch, ignore_errors=True)
    with contextlib.suppress(OSError):
        scratch.parent.rmdir()  # .partial/ itself, once no cell is in progress
    return summaries

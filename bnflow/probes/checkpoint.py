"""The `probe` step: the paper's probes on saved checkpoints, without re-training (PROTOCOL §4-5).

For checkpoint `step{s}` of a run the probes see θ_s, the mini-batch that update s used (regenerated from the run's
stateless data order) and the noise-generator state saved before that step's forward, so at the same step they give
the numbers the dense probes of the training job gave. Its params (`probe:`) are its own: editing them re-runs
this step and what follows, never training.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from bnflow.config import Params, to_plain
from bnflow.errors import DataError
from bnflow.io import check_absent, provenance, publish_dir, write_json, write_table
from bnflow.probes.runner import CURVATURE_TABLES, TABLES, Prober, ProbePlan
from bnflow.gpu import process_device
from bnflow.tasks import make_task, run_fingerprint

log = logging.getLogger("bnflow.probe")


def load_checkpoint(path: Path, *, cell_id: str, seed: int, fingerprint: str | None = None) -> dict:
    """A checkpoint read with weights_only=True, checked to belong to this cell and seed (and params)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file; all mean the same here
        raise DataError(f"{path}: not a readable bnflow checkpoint ({type(e).__name__}: {e}); re-run the train "
                        f"step for {cell_id}") from None
    meta = ck.get("meta", {}) if isinstance(ck, dict) else {}
    if meta.get("cell") != cell_id or meta.get("seed") != seed:
        raise DataError(f"{path}: checkpoint of {meta.get('cell')!r} seed {meta.get('seed')!r}, not of {cell_id!r} "
                        f"seed {seed}; the checkpoints folder does not match the cell")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise DataError(f"{path}: checkpoint was trained with other params than params.yaml holds now; re-run the "
                        f"train step for {cell_id} (dvc repro / snakemake) before probing")
    return ck


def probe_seed(params: Params, cell_id: str, seed: int, ckpt_dir: Path, data_path: Path | None,
               out_dir: Path, device: torch.device) -> dict:
    """Probe every checkpoint of one run; write the tidy tables into `out_dir`."""
    cell, train = params.cell(cell_id), params.train
    files = sorted(ckpt_dir.glob("step*.pt"))
    if not files:
        raise DataError(f"{ckpt_dir}: no checkpoints (step*.pt); run the train step for {cell_id} first")
    task = make_task(train, cell, seed, data_path, device)
    fingerprint = run_fingerprint(params, cell_id, seed, task.data_info.get("source_sha256"))
    plan = ProbePlan.build(getattr(params.probe, cell.model), params.probe, cell.lr, params.probe.direction,
                           params.probe.curvature)
    prober = Prober.for_task(plan, task, base=train.seeds.base, seed=seed)
    names = TABLES + (CURVATURE_TABLES if plan.curvature is not None else ())
    tables: dict[str, list[dict]] = {name: [] for name in names}
    steps = []
    for path in files:
        ck = load_checkpoint(path, cell_id=cell_id, seed=seed, fingerprint=fingerprint)
        try:
            task.model.load_state_dict(ck["state_dict"])
        except RuntimeError as e:
            raise DataError(f"{path}: weights do not fit the {cell.model} of {cell_id} ({e})") from None
        task.model.train()  # batch statistics, as in training (PROTOCOL §5)
        step = int(ck["step"])
        batch = task.batch(step)
        for name, rows in prober.probe(step, batch.x, batch.y, noise_state=ck["noise_state"] or None).items():
            tables[name].extend(rows)
        steps.append(step)
    for name, rows in tables.items():
        write_table(out_dir / f"{name}.csv", rows)
    summary = {"cell": cell_id, "seed": seed, "run_id": cell.run_id(seed), "steps": steps,
               "direction": plan.direction, "etas": list(plan.etas),
               "provenance": provenance({"probe": to_plain(params.probe), "cell": to_plain(cell)}, str(device))}
    write_json(out_dir / "probe.json", summary)
    return summary


def probe_cell(params: Params, cell_id: str, ckpt_root: Path, data_path: Path | None, out: Path, *,
               force: bool = False) -> list[dict]:
    """Probe every seed of `cell_id` and publish `out/s{seed}/` with one rename."""
    check_absent(out, force=force)
    if not ckpt_root.is_dir():
        raise DataError(f"{ckpt_root}: checkpoints folder not found; run the train step for {cell_id} first")
    device = process_device(params.train.execution.device)
    scratch = Path(params.out_dir) / ".partial" / f"probe-{cell_id}"
    shutil.rmtree(scratch, ignore_errors=True)  # probing is cheap and stateless: restart it from scratch
    summaries = []
    for seed in params.train.seeds.indices:
        summaries.append(probe_seed(params, cell_id, seed, ckpt_root / f"s{seed}", data_path, scratch / f"s{seed}",
                                    device))
        log.info("%s s%d: probed %d checkpoints", cell_id, seed, len(summaries[-1]["steps"]))
    publish_dir(scratch, out, force=force)
    return summaries

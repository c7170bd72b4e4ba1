"""One VGG cell's seeds trained packed, built exactly as train_seed builds each separate run (issue 16).

`packed_plan` says whether a cell trains packed (train.numerics.mode: packed, a VGG cell of either scale, vgg or
vgg_cpu, a packable variant) or why
its seeds train separately; `train_cell_packed` builds every seed's VggTask, fingerprint, checkpoint meta and
dense-probe Prober as train_seed does, runs bnflow.train.packed.train_packed, and hands back per seed what train_seed
writes into the seed's run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnflow.config import Cell, Params, to_plain
from bnflow.models import build_vgg
from bnflow.models.packed import packing_problem
from bnflow.probes.runner import Prober, ProbePlan
from bnflow.tasks import VggTask, config_hash, norm_options, run_fingerprint
from bnflow.train.loop import LoopConfig, RunOutcome
from bnflow.train.packed import train_packed

log = logging.getLogger("bnflow.train")
VGG_FAMILIES = ("vgg", "vgg_cpu")
"""The model families built by build_vgg from their train.<model> section: the ones packing knows."""


def packed_plan(params: Params, cell: Cell) -> tuple[bool, str]:
    """(True, "") when `cell` trains packed under params; else (False, why its seeds train separately).

    With mode packed, a cell that cannot be packed (the DLN, a ResNet, a plug-in variant packing does not know) is
    logged at INFO with the reason, so the train step's log says how each cell ran.
    """
    if params.train.numerics.mode != "packed":
        return False, "train.numerics.mode is separate"
    if cell.model not in VGG_FAMILIES:
        why = (f"{cell.id}: train.numerics.mode is packed, but packing is for VGG cells (the {cell.model} is not "
               "packed; the DLN is tiny and CPU-bound): its seeds train separately")
    else:
        # the layer types decide, not the widths: a 1/64-wide model answers in milliseconds
        problem = packing_problem(build_vgg(getattr(params.train, cell.model).arch, cell.variant, width_mult=1 / 64,
                                            **norm_options(params.train, cell.variant), generator=torch.Generator()))
        if problem is None:
            return True, ""
        why = f"{cell.id}: {problem}; its seeds train separately"
    log.info(why)
    return False, why


@dataclass
class PackedSeedResult:
    """One seed of a packed cell: what train_seed writes into the seed's run folder."""

    seed: int
    outcome: RunOutcome
    fingerprint: str
    data_info: dict[str, Any]
    probed: bool  # dense probes ran (train.probes.vgg.every > 0): the probe tables are in outcome.tables


def train_cell_packed(params: Params, cell_id: str, seeds: Sequence[int], data_path: Path, scratch_dir: Path,
                      device: torch.device, loop_cfg: LoopConfig) -> list[PackedSeedResult]:
    """Train `seeds` of VGG cell `cell_id` packed into one model; one result per seed, in `seeds` order.

    Checkpoints go to `scratch_dir/checkpoints/s{seed}/` (as train_seed's), the packed run's resume state to
    `scratch_dir/state/packed/` (delete that folder once every seed's run folder is written). `loop_cfg` is
    train_seed's LoopConfig for the cell; its run_id only labels log lines.
    """
    cell, train = params.cell(cell_id), params.train
    tasks: list[VggTask] = []
    for seed in seeds:
        task = VggTask(train, cell, seed, data_path, device)
        if tasks:  # one copy of the dataset on the device, not S
            first = tasks[0]
            task.train_x, task.train_y = first.train_x, first.train_y
            task.test_x, task.test_y = first.test_x, first.test_y
        tasks.append(task)
    fingerprints = [run_fingerprint(params, cell_id, seed, t.data_info.get("source_sha256"))
                    for seed, t in zip(seeds, tasks)]
    metas = [{"cell": cell_id, "model": cell.model, "variant": cell.variant, "lr": cell.lr, "seed": seed,
              "fingerprint": fp, "model_config": to_plain(getattr(train, cell.model))}
             for seed, fp in zip(seeds, fingerprints)]
    ckpt_dirs = [scratch_dir / "checkpoints" / f"s{seed}" for seed in seeds]
    state_dir = scratch_dir / "state" / "packed"
    for d in (*ckpt_dirs, state_dir):
        d.mkdir(parents=True, exist_ok=True)
    dense = getattr(train.probes, cell.model)
    every = dense.every
    probers: list[Prober | None] = [None] * len(tasks)
    if every:
        plan = ProbePlan.build(dense, train.probes, cell.lr)
        probers = [Prober.for_task(plan, t, base=train.seeds.base, seed=seed) for seed, t in zip(seeds, tasks)]
    log.info("%s: training seeds %s packed into one model", cell_id, list(seeds))
    outcomes = train_packed(tasks, loop_cfg, state_dir, ckpt_dirs, metas, config_hash({"packed": fingerprints}),
                            probers, every)
    return [PackedSeedResult(seed, o, fp, t.data_info, bool(every))
            for seed, o, fp, t in zip(seeds, outcomes, fingerprints, tasks)]

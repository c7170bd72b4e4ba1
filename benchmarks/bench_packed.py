"""The packed-seed rows of bench_train.py (issue 16) and the default grid's extrapolated time.

A packed row trains S seeds of the benchmark's cell as one model (bnflow.train.packed.train_packed, exactly as the
train step does with `train.numerics.mode: packed`) in this process, and times windows of steps from inside the
loop; steps/s is the total over the S seeds. Its levers, each one row: CUDA graphs, channels_last (on by default on
a GPU: the row without it uses NCHW), torch.compile per mode, bf16 autocast, and dense probes (the probes' overhead
against the same eager packed row). Rows a device cannot run are listed as skipped, with the reason.

`grid_estimate` turns the measured rates into minutes for the default grid's VGG training, probes included.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from bnflow.config import from_dict, load_params
from bnflow.errors import BnflowError
from bnflow.models import build_vgg, noise_modules
from bnflow.probes.runner import Prober, ProbePlan
from bnflow.tasks import VggTask
from bnflow.train.loop import LoopConfig
from bnflow.train.packed import train_packed


@dataclasses.dataclass(frozen=True)
class PackedRow:
    """One packed configuration to time."""

    graphs: bool = False
    channels_last: bool | None = None  # None: the runner's default (on for CUDA)
    compile_mode: str | None = None
    precision: str = "fp32"
    probe_every: int = 0

    def label(self, n_seeds: int | None = None) -> str:
        """The row's text in the table (without the seed count when None: a skipped row)."""
        parts = ["CUDA graphs" if self.graphs else f"torch.compile({self.compile_mode})" if self.compile_mode
                 else "eager"]
        if self.channels_last is False:
            parts.append("NCHW")
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.probe_every:
            parts.append(f"dense probes every {self.probe_every} steps")
        seeds = f": {n_seeds} seeds in one model, total" if n_seeds is not None else ""
        return f"bnflow packed {', '.join(parts)}{seeds}"


def plan_rows(device: torch.device, compile_modes: tuple[str, ...], precisions: tuple[str, ...],
              probe_every: int) -> tuple[list[PackedRow], list[dict[str, str]]]:
    """The packed rows to time on `device`, and those skipped there ({"label", "skipped": reason})."""
    rows = [PackedRow()] + ([PackedRow(probe_every=probe_every)] if probe_every else [])
    gpu_only = [(PackedRow(graphs=True), "needs a CUDA device"),
                (PackedRow(channels_last=False), "needs a CUDA device (CPU rows are NCHW already)")]
    gpu_only += [(PackedRow(compile_mode=m), "GPU only: compiling takes ~80 s on these CPUs (PERFORMANCE.md)")
                 for m in compile_modes]
    gpu_only += [(PackedRow(graphs=g, precision=p), "GPU only: bf16 is ~25x slower than fp32 on these CPUs")
                 for p in precisions if p != "fp32" for g in (False, True)]
    if device.type == "cuda":
        return rows + [row for row, _ in gpu_only], []
    return rows, [{"label": row.label(), "skipped": why} for row, why in gpu_only]


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen |= record.getMessage().startswith("captured")


def packed_windows(plain: dict, data_path: Path, device: torch.device, cfg: LoopConfig, row: PackedRow,
                   n_seeds: int, warmup: int, steps: int, windows: int, folder: Path) -> list[float]:
    """Seconds of each timed window of one packed run of seeds 0..n_seeds-1 of the params' single cell.

    `cfg` is the bench's LoopConfig (no checkpoints, evaluations or resume states); its steps are replaced by
    warmup + windows * steps + 1. Raises BnflowError when a seed diverged or graphs were asked for and not captured.
    """
    p = from_dict(plain)
    (cell,) = p.train.grid.values()
    tasks = [VggTask(p.train, cell, seed, data_path, device) for seed in range(n_seeds)]
    probers = None
    if row.probe_every:
        plan = ProbePlan.build(getattr(p.train.probes, cell.model), p.train.probes, cell.lr)
        probers = [Prober.for_task(plan, t, base=p.train.seeds.base, seed=i) for i, t in enumerate(tasks)]
    boundaries = set(warmup + k * steps for k in range(windows + 1))
    cfg = dataclasses.replace(cfg, steps=warmup + windows * steps + 1, cuda_graphs=row.graphs,
                              precision=row.precision)
    times: list[float] = []

    def clock(t: int) -> None:
        if t in boundaries:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter())

    folder.mkdir(parents=True)
    logger, captured = logging.getLogger("bnflow.train"), _Captured()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(captured)
    try:
        outcomes = train_packed(tasks, cfg, folder, [folder] * n_seeds, [{}] * n_seeds, "bench", probers,
                                row.probe_every, before_step=clock, channels_last=row.channels_last,
                                compile_mode=row.compile_mode)
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)
    diverged = [i for i, o in enumerate(outcomes) if o.diverged]
    if diverged:
        raise BnflowError(f"packed benchmark: seed(s) {diverged} diverged; lower --lr and rerun")
    if row.graphs and not captured.seen:
        raise BnflowError("packed benchmark: CUDA graphs were asked for and the packed loop did not capture one")
    return [b - a for a, b in zip(times, times[1:])]


PAPER_GRID = Path(__file__).resolve().parents[1] / "workflow" / "paper-vgg.yaml"


def grid_cells(params_path: Path) -> dict[str, Any]:
    """The paper-scale VGG grid's work (params.yaml with workflow/paper-vgg.yaml, which lists its cells): steps per
    run, seeds, and its cells split into those that replay CUDA graphs and the noisy ones, which train eagerly."""
    p = load_params(params_path, PAPER_GRID, check_files=False)
    vgg = [c for c in p.train.grid.values() if c.model == "vgg"]
    noisy = [c.id for c in vgg if noise_modules(build_vgg(p.train.vgg.arch, c.variant, width_mult=1 / 64,
                                                          generator=torch.Generator()))]
    return {"arch": p.train.vgg.arch, "batch_size": p.train.vgg.batch_size, "steps": p.train.vgg.steps,
            "seeds": p.train.seeds.count("vgg"), "cells": [c.id for c in vgg], "noisy_cells": noisy,
            "probe_every": p.train.probes.vgg.every}


def grid_estimate(grid: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Minutes of the grid's VGG training with dense probes, from the measured packed rows (None without any).

    Cells without noise run at the fastest packed fp32 row; noisy cells at the fastest fp32 row without CUDA graphs;
    both are scaled by (1 + the probes' measured overhead over the packed eager row). Not included: test
    evaluations, checkpoints, the checkpoint-wise probe step, the DLN, stats and figures.
    """
    packed = [r for r in rows if r["kind"] == "packed" and r.get("precision", "fp32") == "fp32"]
    timing = [r for r in packed if not r.get("probe_every")]
    if not timing:
        return None
    best = max(timing, key=lambda r: r["steps_per_s"])
    eager = max((r for r in timing if not r["cuda_graphs"]), key=lambda r: r["steps_per_s"])
    probes = next((r for r in packed if r.get("probe_every")), None)
    overhead = max(0.0, probes["overhead_pct"] / 100.0) if probes else 0.0
    per_cell = grid["seeds"] * grid["steps"]
    n_noisy, n_plain = len(grid["noisy_cells"]), len(grid["cells"]) - len(grid["noisy_cells"])
    seconds = (n_plain * per_cell / best["steps_per_s"] + n_noisy * per_cell / eager["steps_per_s"]) * (1 + overhead)
    return {"minutes": seconds / 60.0, "total_steps": per_cell * len(grid["cells"]), "cells": len(grid["cells"]),
            "noisy_cells": n_noisy, "seeds": grid["seeds"], "steps": grid["steps"], "best_row": best["label"],
            "best_steps_per_s": best["steps_per_s"], "eager_row": eager["label"],
            "eager_steps_per_s": eager["steps_per_s"], "probe_overhead_pct": 100.0 * overhead,
            "probes_measured": probes is not None}


def format_estimate(est: dict[str, Any] | None, measured: str) -> str:
    """The "default grid, extrapolated minutes" line under the table (`measured`: the model the rows timed)."""
    if est is None:
        return "- default grid, extrapolated minutes: no packed row was measured"
    probes = (f"+{est['probe_overhead_pct']:.1f}% dense probes (measured)" if est["probes_measured"]
              else "dense probes not measured (--probe-every 0)")
    return (f"- **default grid, extrapolated minutes: {est['minutes']:.1f}** — {est['cells']} VGG cells × "
            f"{est['seeds']} seeds × {est['steps']:,} steps = {est['total_steps']:,} steps at "
            f"{est['best_steps_per_s']:,.1f} steps/s ({est['best_row']}; {est['noisy_cells']} noisy cells at "
            f"{est['eager_steps_per_s']:,.1f} steps/s, {est['eager_row']}), {probes}; rates measured on {measured}. "
            "Not included: test evaluations, checkpoints, the checkpoint-wise probe step, the DLN, stats, figures.")

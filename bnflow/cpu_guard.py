"""Paper-scale GPU work is refused on a machine without CUDA before it starts, with what it would cost here.

Why. Without a GPU, `snakemake --cores all --resources gpu=1` or `dvc repro` would start training the paper's VGG-16
on the CPU: about two days per grid cell on 2 cores, with nothing saying so. So the train, probe and lrscan steps of a
*paper-scale* model family are refused when they would run on the CPU, unless the user opts in; the CPU-sized
families (the DLN, `vgg_cpu`, the quick run's narrow VGG) run as before.

How it decides: a model family is paper-scale when one train job of it (one grid cell, every seed) is estimated to
take more than CPU_LIMIT_H hours on this machine. The estimate is the job's SGD steps (probes and lr scans counted in
step equivalents, job_cost) x 3 x the forward FLOPs of one batch, counted by torch's FlopCounterMode on the model
the params build, divided by CPU_GFLOPS_PER_CORE x the cores the step uses. It is an estimate (within about 2x for
the conv nets measured; tiny, overhead-bound models such as the DLN run slower than their FLOPs say, but orders of
magnitude below the limit), so the limit sits far from both sides: a `vgg_cpu` cell (PROTOCOL §10: its whole core
grid in <= 4 h on 2 cores) estimates at about 1 h, a paper-scale VGG cell at about 50 h.

The opt-in is the environment variable BNFLOW_ALLOW_CPU=1, not a params key: whether to spend days of this
machine's CPU is a decision about this machine and this run, while params.yaml is committed and shared (and
train.execution, where such a key would go, changes no result).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bnflow.config import Cell, Params
from bnflow.errors import BnflowError
from bnflow.vocab import CLASSIFIERS

ALLOW_ENV = "BNFLOW_ALLOW_CPU"
CPU_LIMIT_H = 4.0
"""Estimated hours of one train job above which its model family counts as paper-scale (module docstring)."""
CPU_GFLOPS_PER_CORE = 50.0
"""Sustained fp32 GFLOP/s of one core in training. Measured on the project's 2-core Xeon: VGG-16-BN, batch 128, 1.8 s
per SGD step with 2 threads (67 per core); PROTOCOL §10's single-thread rates of the reduced VGGs give 33-54."""
STEPS = ("train", "probe", "lrscan")  # the GPU steps (their rules claim `gpu` resources)


class CpuScaleError(BnflowError):
    """A paper-scale GPU step would run on the CPU and the user did not opt in."""


@dataclass(frozen=True)
class JobCost:
    """The estimated CPU cost of one train, probe or lrscan job."""

    step: str
    key: str          # the cell id (train, probe) or the model family (lrscan)
    model: str
    steps: int        # SGD steps, or step equivalents (probes, scans)
    gflop_per_step: float
    cores: int

    @property
    def hours(self) -> float:
        return self.steps * self.gflop_per_step / (CPU_GFLOPS_PER_CORE * self.cores) / 3600.0

    @property
    def job(self) -> str:
        return f"{self.step}@{self.key}"


def allowed() -> bool:
    """Whether the user opted in to paper-scale work on the CPU (BNFLOW_ALLOW_CPU=1, true or yes)."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def cpu_reason(params: Params) -> str | None:
    """Why the GPU steps would run on the CPU ("no CUDA GPU is visible"), or None when they would get a GPU."""
    spec = params.train.execution.device
    if spec == "cpu":
        return "train.execution.device is cpu"
    if spec == "auto":
        import torch

        return None if torch.cuda.is_available() else "no CUDA GPU is visible"
    return None  # cuda or cuda:N: bnflow.gpu refuses it without a GPU


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def n_seeds(params: Params, model: str) -> int:
    """Seeds per cell of `model` (a count per family, or one count for every family)."""
    seeds = params.train.seeds
    return seeds.count(model) if hasattr(seeds, "count") else int(seeds.n)


def _threads(params: Params, step: str) -> int:
    """Cores one job of `step` keeps busy: each training run's threads x the runs at once; other steps' fixed count."""
    numerics = getattr(params.train, "numerics", None)
    if step == "train":
        per_run = getattr(numerics, "threads_per_run", 1)
        return max(1, min(usable_cores(), params.train.execution.parallel_runs * per_run))
    try:
        from bnflow.train.threads import STEP_THREADS
    except ImportError:  # before steps fixed their threads: torch's default, one per core
        return usable_cores()
    return STEP_THREADS


def _batch(params: Params, model: str) -> int:
    cfg = params.train.model_config(model)
    return cfg.batch_size if model in CLASSIFIERS else cfg.n_samples


_FORWARD_GFLOP: dict[tuple[str, str], float] = {}  # (model, its train section) -> forward GFLOP of one example


def _forward_gflop(params: Params, model: str) -> float:
    """Forward GFLOP of one example of `model` (the standard variant: norms add little), counted by torch."""
    key = (model, repr(params.train.model_config(model)))
    if key not in _FORWARD_GFLOP:
        _FORWARD_GFLOP[key] = _count_forward_gflop(params, model)
    return _FORWARD_GFLOP[key]


def _count_forward_gflop(params: Params, model: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bnflow.tasks import build_model

    net = build_model(params.train, Cell(model=model, variant="standard", lr=0.1), 0)
    cfg = params.train.model_config(model)
    x = torch.zeros(1, 3, 32, 32) if model in CLASSIFIERS else torch.zeros(1, cfg.dim)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9


def gflop_per_step(params: Params, model: str) -> float:
    """GFLOP of one SGD step of `model`: forward and backward (about 2x the forward) over one batch."""
    return 3.0 * _forward_gflop(params, model) * _batch(params, model)


def _probe_step_equivalents(params: Params, model: str) -> int:
    """Forward+backward passes of one checkpoint's probes: the step itself, one per eta, two per ICS layer, and two
    per Hessian-vector product of the curvature probe (PROTOCOL §4-5, §8)."""
    probe = params.probe
    cfg = getattr(probe, model, None)
    n = 1 + (len(cfg.eta_factors) + 2 * len(cfg.ics_layers) if cfg is not None else 0)
    if probe.curvature.enabled:
        n += 2 * probe.curvature.eig_iters
    return n


def job_cost(params: Params, step: str, key: str) -> JobCost:
    """The estimated cost of one job: `step` in STEPS, `key` a cell id (train, probe) or a model (lrscan)."""
    if step == "lrscan":
        model = key
        scan = getattr(params.lrscan, model)
        steps = len(scan.variants) * len(scan.lrs) * params.lrscan.seeds * scan.steps
    else:
        model = params.cell(key).model
        cfg = params.train.model_config(model)
        steps = cfg.steps * n_seeds(params, model)
        if step == "probe":
            steps = len(cfg.checkpoint_steps) * n_seeds(params, model) * _probe_step_equivalents(params, model)
    return JobCost(step, key, model, steps, gflop_per_step(params, model), _threads(params, step))


def paper_scale(params: Params, model: str) -> bool:
    """Whether one train job of `model` is estimated above CPU_LIMIT_H on this machine's CPU."""
    cfg = params.train.model_config(model)
    cost = JobCost("train", model, model, cfg.steps * n_seeds(params, model), gflop_per_step(params, model),
                   _threads(params, "train"))
    return cost.hours > CPU_LIMIT_H


def cpu_sized_patterns(params: Params) -> list[str]:
    """`--config cells` patterns of the grid's model families that are not paper-scale ("dln-*", "vgg_cpu-*")."""
    models = dict.fromkeys(cell.model for cell in params.train.grid.values())
    return [f"{m}-*" for m in models if not paper_scale(params, m)]


def refusal(params: Params, jobs: Iterable[tuple[str, str]]) -> str | None:
    """One line refusing the paper-scale jobs among `jobs` ((step, key) pairs; other steps are ignored), or None
    when nothing is refused (a GPU, the opt-in, or only CPU-sized work)."""
    if allowed():
        return None
    jobs = [(s, k) for s, k in jobs if s in STEPS]
    if not jobs:
        return None
    reason = cpu_reason(params)
    if reason is None:
        return None
    costs = [job_cost(params, s, k) for s, k in jobs]
    refused = [c for c in costs if paper_scale(params, c.model)]
    if not refused:
        return None
    hours = sum(c.hours for c in refused)
    models = ", ".join(dict.fromkeys(c.model for c in refused))
    what = refused[0].job if len(refused) == 1 else f"{len(refused)} jobs of {models} ({_counts(refused)})"
    patterns = cpu_sized_patterns(params)
    instead = (f"run the CPU-sized cells instead (snakemake --cores all --config cells='{','.join(patterns)}'), "
               if patterns else "")
    return (f"{what}: paper-scale GPU work, and {reason}: about {_hours(hours)} on this machine's CPU "
            f"(estimated); {instead}or set {ALLOW_ENV}=1 to run {'it' if len(refused) == 1 else 'them'} here anyway")


def check_step(params: Params, step: str, key: str) -> None:
    """At the start of a train, probe or lrscan step: raise CpuScaleError (one line) when refusal() refuses it."""
    line = refusal(params, [(step, key)])
    if line is not None:
        raise CpuScaleError(line)


def _counts(costs: Sequence[JobCost]) -> str:
    counts = {s: sum(c.step == s for c in costs) for s in STEPS}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def _hours(h: float) -> str:
    return f"{h:,.0f} h" if h >= 10 else f"{h:.1f} h"

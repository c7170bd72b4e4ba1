"""How many CPU threads torch uses, set by each step from its own plan: never by whoever started it.

Why each step sets them itself. A CPU kernel splits its reductions across its intra-op threads, so the thread count
is part of a run's float summation order: the same run with 1 and 2 threads differs in the last bits, and chaotic
training amplifies that. Torch's default is one thread per core; Snakemake jobs, `dvc repro`, the plain CLI, a
worker process and the step's own process would each have got a different count, so `parallel_runs`, the tool and a
lone re-trained seed changed the numbers. And more threads than free cores is slow: on 2 shared cores a DLN run with
2 threads was 25-30x slower than with 1 (OpenMP threads spin-waiting for a busy core; benchmarks/RESULTS.md).

The rule:
  - every training run (each seed in its worker or in the step's own process, and one packed model) runs with
    exactly `train.numerics.threads_per_run` intra-op threads; as it decides numbers it is in run.json's params and a
    dependency of the train step (bnflow.tasks.run_facts, bnflow.dag.param_keys);
  - every other step (prepare, the checkpoint-wise probes, the lr scan, summaries, figures) runs with STEP_THREADS,
    a constant, so no setting (and no machine's core count) changes its numbers;
  - inter-op threads are 1 everywhere (one op at a time: nothing to gain from a second pool on a busy machine).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger("bnflow.train")
STEP_THREADS = 1
"""Intra-op threads of the steps other than training (probe, lrscan, prepare, ...): fixed, so never a setting."""
INTEROP_THREADS = 1


def set_interop_threads() -> None:
    """One inter-op thread, if this process can still change it (torch allows it once, before any parallel work)."""
    if torch.get_num_interop_threads() == INTEROP_THREADS:
        return
    try:
        torch.set_num_interop_threads(INTEROP_THREADS)
    except RuntimeError:  # already started: the count cannot change any number, only speed
        log.debug("inter-op threads already started (%d); left as they are", torch.get_num_interop_threads())


def set_threads(n: int) -> None:
    """`n` intra-op threads for the rest of this process (a worker, or a step's process), one inter-op thread."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"threads must be a positive int, got {n!r}")
    set_interop_threads()
    torch.set_num_threads(n)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """`n` intra-op threads inside the block, the previous count after it (library callers, tests)."""
    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

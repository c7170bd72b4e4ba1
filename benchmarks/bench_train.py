"""Training speed: a typical PyTorch loop against bnflow's loop, one run and N runs sharing one device (issue 3).

Four kinds of rows, all measured by this one command on the same device, same model, same batch size:
  typical           PIL images + ToTensor/Normalize + a DataLoader, the model from `build_vgg(norm="bn")`, plain SGD
                    and one `.item()` per step: what a typical PyTorch script does.
  bnflow_single     `VggTask` + `train_loop` exactly as the train step builds them, in this process; on a GPU both
                    eager and with `cuda_graphs` (each step replayed as one captured CUDA graph).
  bnflow_aggregate  N such runs at once as N spawned processes on the device (as `train_cell` with parallel_runs=N);
                    steps/s is the total over the N runs.
  packed            S seeds trained as one model with grouped layers (train.numerics.mode: packed, issue 16), in
                    this process; steps/s is the total over the S seeds. One row per lever (benchmarks/bench_packed.py):
                    eager, dense probes, CUDA graphs, NCHW instead of channels_last, torch.compile modes, bf16.
                    Under the table: rows the device cannot run (with the reason), and the default grid's VGG
                    training time extrapolated from the packed rows ("default grid, extrapolated minutes").
Timing (PERFORMANCE.md): warm-up steps first, the device is synchronised before every clock read, each row reports
the median of several timed windows. The timed windows hold no checkpoints, resume states, probes or test
evaluations. Usage: `python benchmarks/bench_train.py --help`; `--smoke` runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bnflow.config import Cell, from_dict, merge, read_yaml, to_plain
from bnflow.data import PreparedData, load_prepared, make_synthetic, save_prepared
from bnflow.errors import BnflowError, ConfigError
from bnflow.io import write_json
from bnflow.models import build_vgg
from bnflow.models.vgg import VGG_CONFIGS
from bnflow.probes.runner import Prober, ProbePlan
from bnflow.train.loop import LoopConfig, train_loop
from bnflow.tasks import VggTask

import bench_packed  # noqa: E402  (benchmarks/ is on sys.path: this script's folder, or the tests put it there)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"device": "cpu", "arch": "vgg11", "width_mult": 0.125, "batch_size": 16, "steps": 20, "warmup": 3,
         "windows": 3, "parallel": "1,2", "n_train": 256, "num_workers": 0, "threads": 1, "cuda_graphs": "off",
         "probe_every": 10, "pack_seeds": 2}
DEFAULTS = {"device": "auto", "arch": "vgg16", "width_mult": 1.0, "batch_size": 128, "steps": 200, "warmup": 30,
            "windows": 5, "parallel": "1,4", "lr": 0.1, "probe_every": 100, "compile_modes": "default,reduce-overhead",
            "packed_precisions": "fp32,bf16"}
CHILD_TIMEOUT_S = 900.0  # longest wait for one child's start-up + warm-up, or for one timed window
LABELS = {"typical": "typical: PIL + ToTensor/Normalize + DataLoader ({w} workers), .item() per step",
          "bnflow_single": "bnflow {mode}: VggTask + train_loop, one run",
          "bnflow_probes": "bnflow eager + dense probes every {every} steps, one run ({overhead:+.1f}% vs eager)",
          "bnflow_aggregate": "bnflow {mode}: {n} run(s) at once, one process each, total"}
MODES = {False: "eager", True: "CUDA graphs"}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarise(kind: str, runs: int, steps: int, window_s: list[float], batch_size: int, label: str,
              cuda_graphs: bool = False) -> dict[str, Any]:
    """One table row from the timed windows.

    Args:
        kind: "typical", "bnflow_single" or "bnflow_aggregate".
        runs: training runs that shared each window (each ran `steps` steps in it).
        steps: steps per run per window.
        window_s: wall seconds of each timed window (device synchronised at both ends).
        batch_size: images per step.
        label: the row's text in the table.
        cuda_graphs: whether the row's loop replayed its steps as CUDA graphs.

    Returns:
        dict with ms_per_step (median window / steps: one run's step time), steps_per_s (runs * steps / median
        window: the total), images_per_s, and the raw windows.
    """
    med = statistics.median(window_s)
    steps_per_s = runs * steps / med
    return {"kind": kind, "label": label, "runs": runs, "cuda_graphs": cuda_graphs, "steps_per_window": steps,
            "window_s": list(window_s),
            "ms_per_step": 1000.0 * med / steps, "ms_per_step_min": 1000.0 * min(window_s) / steps,
            "ms_per_step_max": 1000.0 * max(window_s) / steps, "steps_per_s": steps_per_s,
            "images_per_s": steps_per_s * batch_size}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows; `× typical` is steps/s over the typical row's steps/s."""
    base = next((r["steps_per_s"] for r in rows if r["kind"] == "typical"), None)
    lines = ["| loop | runs | ms/step (median) | steps/s (total) | images/s | × typical | ms/step min–max |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['steps_per_s'] / base:.2f}" if base else "–"
        lines.append(f"| {r['label']} | {r['runs']} | {r['ms_per_step']:.2f} | {r['steps_per_s']:,.1f} | "
                     f"{r['images_per_s']:,.0f} | {ratio} | {r['ms_per_step_min']:.2f}–{r['ms_per_step_max']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ typical loop
class PilImages(Dataset):
    """The dataset as a torchvision-style Dataset: every item is decoded to a PIL image and transformed on the CPU."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def typical_windows(data: PreparedData, s: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds of each timed window of the typical loop (s holds arch, width_mult, batch_size, lr, workers, steps)."""
    # imported here: the aggregate's spawned children re-import this script, and torchvision adds ~1 s to each
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    # persistent workers: a small synthetic set has short epochs, and restarting workers every epoch would charge
    # the typical loop a cost that 50k-image CIFAR-10 epochs amortise
    loader = DataLoader(PilImages(data.train_images, data.train_labels, tf), batch_size=s.batch_size, shuffle=True,
                        drop_last=True, num_workers=s.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=s.num_workers > 0, generator=torch.Generator().manual_seed(0))
    model = build_vgg(s.arch, "bn", width_mult=s.width_mult, generator=torch.Generator().manual_seed(0)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr)
    model.train()

    def batches():
        while True:
            yield from loader

    it = batches()

    def step() -> float:
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(s.warmup):
        step()
    out = []
    for _ in range(s.windows):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(s.steps):
            step()
        sync(device)
        out.append(time.perf_counter() - t0)
    del it, loader  # shuts the workers down before the next row
    return out


# ------------------------------------------------------------------------------------------------------- bnflow loop
class WindowClock:
    """The task as train_loop sees it, unchanged except that it times windows of steps from inside the loop.

    train_loop calls `task.batch(t)` at the start of step t. At each boundary step the clock synchronises the device
    (every earlier step has finished), waits at `barrier` if there is one (the runs of an aggregate start each window
    together) and reads the clock. One train_loop call thus holds the warm-up and every window, so one-off costs
    (CUDA-graph capture, cuDNN autotuning) stay in the warm-up, as they do in a 15,000-step run.
    """

    def __init__(self, task: VggTask, boundaries: list[int], barrier=None):
        self._task, self._boundaries, self._barrier = task, set(boundaries), barrier
        self.times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def batch(self, step: int):
        if step in self._boundaries:
            sync(self._task.device)
            if self._barrier is not None:
                self._barrier.wait(CHILD_TIMEOUT_S)
            self.times.append(time.perf_counter())
        return self._task.batch(step)


class _Messages(logging.Handler):
    def __init__(self, out: list[str]):
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


@contextlib.contextmanager
def loop_messages() -> Iterator[list[str]]:
    """The INFO messages train_loop logs meanwhile (whether it captured a CUDA graph, and why not)."""
    logger, out = logging.getLogger("bnflow.train"), []
    handler, level = _Messages(out), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def loop_config(plain: dict, steps: int, cuda_graphs: bool) -> LoopConfig:
    """The LoopConfig train_seed builds for a VGG cell, minus checkpoints, evaluations, resume states and progress."""
    p = from_dict(plain)
    vgg, ex = p.train.vgg, p.train.execution
    (cell,) = p.train.grid.values()
    return LoopConfig(run_id=cell.id, lr=cell.lr, steps=steps, log_every=vgg.log_every, eval_every=None,
                      checkpoint_steps=(), momentum=vgg.momentum, weight_decay=vgg.weight_decay,
                      precision=vgg.precision, sync_every=ex.sync_every, resume_every_s=float("inf"),
                      progress_every_s=0, cuda_graphs=cuda_graphs)


def make_vgg_task(plain: dict, data_path: Path, device: torch.device, seed: int) -> VggTask:
    """The train step's VggTask for seed `seed` of the params' single grid cell, its data on `device`."""
    p = from_dict(plain)
    (cell,) = p.train.grid.values()
    return VggTask(p.train, cell, seed, data_path, device)


def run_timed(task: VggTask, plain: dict, warmup: int, steps: int, windows: int, cuda_graphs: bool, folder: Path,
              barrier=None, prober: Prober | None = None, probe_every: int = 0) -> list[float]:
    """One train_loop call: `warmup` untimed steps, then `windows` windows of `steps` steps; the windows+1 clock reads.

    Raises BnflowError when the run diverged (its windows would be short) or when CUDA graphs were asked for and the
    loop ran eagerly.
    """
    boundaries = [warmup + k * steps for k in range(windows + 1)]
    clock = WindowClock(task, boundaries, barrier)
    cfg = loop_config(plain, boundaries[-1] + 1, cuda_graphs)  # + 1: step boundaries[-1] reads the last clock
    with loop_messages() as messages:
        out = train_loop(clock, cfg, folder, folder, {}, "bench", prober, probe_every)
    if out.n_steps != cfg.steps:
        raise BnflowError(f"the benchmark run diverged at step {out.diverged_at_step}; lower --lr and rerun")
    if cuda_graphs and not any(m.startswith("captured") for m in messages):  # bnflow.train.graphs logs it
        raise BnflowError("--cuda-graphs: the loop did not capture a CUDA graph: " + ("; ".join(messages) or "no log"))
    return clock.times


def single_windows(plain: dict, data_path: Path, device: torch.device, s: argparse.Namespace, cuda_graphs: bool,
                   folder: Path, probe_every: int = 0) -> list[float]:
    """Seconds of each timed window of one bnflow run in this process (with the train step's dense probes every
    `probe_every` steps when > 0, built from params' train.probes exactly as the train step builds them)."""
    folder.mkdir()
    task = make_vgg_task(plain, data_path, device, seed=0)
    prober = None
    if probe_every:
        p = from_dict(plain)
        (cell,) = p.train.grid.values()
        prober = Prober.for_task(ProbePlan.build(p.train.probes.vgg, p.train.probes, cell.lr), task,
                                  base=p.train.seeds.base, seed=0)
    times = run_timed(task, plain, s.warmup, s.steps, s.windows, cuda_graphs, folder, prober=prober,
                      probe_every=probe_every)
    return [b - a for a, b in zip(times, times[1:])]


def _child(rank: int, plain: dict, data_path: str, device: str, threads: int | None, timing: tuple[int, int, int],
           rows: list[tuple[bool, int]], scratch: str, barriers: list, results) -> None:
    """Run `rank` of the aggregate: ready at barriers[0], then every row (cuda_graphs, n) with n > rank. A row starts
    and each of its window boundaries is met at the row's barrier, after which the parent reads the clock. Idle
    (blocked) in other rows."""
    try:
        dev = torch.device(device)
        task = make_vgg_task(plain, Path(data_path), dev, seed=rank)
        barriers[0].wait(CHILD_TIMEOUT_S)  # every process has started before any row is timed
        for i, (graphs, n) in enumerate(rows):
            if rank < n:
                torch.set_num_threads(worker_threads(threads, n, dev))
                folder = Path(scratch) / f"agg-{i}-{rank}"
                folder.mkdir()
                barriers[i + 1].wait(CHILD_TIMEOUT_S)  # the previous row is over: no warm-up competes with it
                run_timed(task, plain, *timing, graphs, folder, barriers[i + 1])
        results.put((rank, "ok"))
    except threading.BrokenBarrierError:
        results.put((rank, "stopped: another process failed or timed out"))
    except Exception:  # reported to the parent, which raises it; the barriers are broken so nobody waits forever
        results.put((rank, traceback.format_exc()))
        for b in barriers:
            b.abort()


def worker_threads(threads: int | None, n: int, device: torch.device) -> int:
    """CPU threads of one of n runs: `threads` (--threads, by default train.numerics.threads_per_run, as every run of
    the train step gets); without it cores // n on CPU, 1 on GPU."""
    return threads or (max(1, (os.cpu_count() or 1) // n) if device.type == "cpu" else 1)


def aggregate_windows(plain: dict, data_path: Path, device: torch.device, s: argparse.Namespace,
                      rows: list[tuple[bool, int]], scratch: Path) -> list[list[float]]:
    """Seconds of each timed window of each row (cuda_graphs, n): n processes each ran s.steps steps of their own run.

    max(n) processes start once and serve every row; in a row with fewer runs the others wait, blocked, which costs
    the device nothing. The runs' train_loop folders (left empty) go into `scratch`.
    """
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    n_max = max(n for _, n in rows)
    barriers = [ctx.Barrier(n_max + 1)] + [ctx.Barrier(n + 1) for _, n in rows]
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, daemon=True,
                         args=(rank, plain, str(data_path), str(device), s.threads, (s.warmup, s.steps, s.windows),
                               rows, str(scratch), barriers, results)) for rank in range(n_max)]
    for p in procs:
        p.start()
    done = threading.Event()

    def watch() -> None:
        # A child that dies before it can report (e.g. killed for memory) would leave the parent at a barrier.
        while not done.wait(0.5):
            if any(p.exitcode not in (None, 0) for p in procs):
                for b in barriers:
                    b.abort()
                return

    threading.Thread(target=watch, daemon=True).start()
    out, reports = [], {}
    try:
        barriers[0].wait(CHILD_TIMEOUT_S)
        for barrier in barriers[1:]:
            barrier.wait(CHILD_TIMEOUT_S)  # start the row's runs (they warm up, then meet at the first boundary)
            times = []
            for _ in range(s.windows + 1):
                barrier.wait(CHILD_TIMEOUT_S)  # every run of the row reached the boundary, device synchronised
                times.append(time.perf_counter())
            out.append([b - a for a, b in zip(times, times[1:])])
    except threading.BrokenBarrierError:
        pass
    finally:
        done.set()
        deadline = time.monotonic() + (60.0 if len(out) == len(rows) else 10.0)
        while len(reports) < n_max and time.monotonic() < deadline:
            try:
                rank, msg = results.get(timeout=0.5)
                reports[rank] = msg
            except queue_mod.Empty:
                continue
        for p in procs:
            p.join(10.0)
            if p.is_alive():
                p.terminate()
    failed = {r: reports.get(r, f"no report (exit code {p.exitcode})") for r, p in enumerate(procs)
              if reports.get(r) != "ok"}
    if failed or len(out) != len(rows):
        detail = "\n".join(f"process {r}: {msg}" for r, msg in failed.items()) or "a timed window timed out"
        raise BnflowError(f"the aggregate runs on {device} failed:\n{detail}")
    return out


# ----------------------------------------------------------------------------------------------------------- set-up
def bench_params(s: argparse.Namespace, device: torch.device) -> dict:
    """params.yaml (validated, as plain data) with the benchmark's model, batch size, device and one bn cell."""
    raw = merge(read_yaml(s.params), {"train": {
        "vgg": {"arch": s.arch, "width_mult": s.width_mult, "batch_size": s.batch_size},
        "execution": {"device": str(device), **({"sync_every": s.sync_every} if s.sync_every else {})}}})
    cell = Cell(model="vgg", variant="bn", lr=s.lr)
    raw["train"]["grid"] = {cell.id: to_plain(cell)}
    n_conv = sum(1 for c in VGG_CONFIGS[s.arch] if c != "M")
    return to_plain(from_dict(fit_probe_layers(raw, n_conv)))


def fit_probe_layers(node: Any, n_conv: int, under_vgg: bool = False) -> Any:
    """Drop VGG layer numbers above `n_conv` from every `*_layers` list of the params (probe settings).

    The benchmark runs no probes, but params validation checks those lists against the arch: params.yaml's
    defaults name VGG-16 layers (up to #13), which a `--arch vgg11` benchmark does not have.
    """
    if isinstance(node, dict):
        return {k: ([n for n in v if n <= n_conv] if under_vgg and str(k).endswith("_layers") and isinstance(v, list)
                    else fit_probe_layers(v, n_conv, under_vgg or k == "vgg")) for k, v in node.items()}
    return node


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    if not name and Path("/proc/cpuinfo").exists():
        name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), "")
    return f"CPU {name or platform.machine()} ({os.cpu_count()} cores)"


def pick_device(spec: str) -> torch.device:
    """auto (the first CUDA GPU if one is visible, else the CPU), cpu, cuda or cuda:N, checked against this host."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise ConfigError(f"--device: {spec!r} is not auto, cpu, cuda or cuda:N")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (device.index or 0) >= n:
            raise ConfigError(f"--device: {spec!r} but {n} CUDA GPU(s) are visible; use --device cpu or a visible one")
    return device


def git_commit(root: Path) -> str:
    """`git rev-parse --short HEAD`, with +dirty when tracked files differ; 'unknown' outside a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def record_section(meta: dict[str, Any], table: str) -> str:
    """The dated Markdown section --record appends to RESULTS.md."""
    s = meta["settings"]
    return (f"\n## {meta['date']} — {meta['device_name']} ({meta['device']})\n\n"
            f"- commit `{meta['commit']}`, torch {meta['torch']}, python {meta['python']}\n"
            f"- command: `{meta['command']}`\n"
            f"- {s['arch']} ×{s['width_mult']}, batch {s['batch_size']}, data {s['data']} "
            f"({s['n_train']} train images), "
            f"{s['windows']} windows × {s['steps']} steps after {s['warmup']} warm-up steps, "
            f"sync_every {s['sync_every']}, CPU threads {s['threads'] or 'default'}, "
            f"bnflow loop: {' and '.join(MODES[g] for g in s['graph_modes'])}\n\n{table}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU preset that runs in seconds: " +
                    " ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()))
    ap.add_argument("--device", help="auto (CUDA if visible), cpu, cuda or cuda:N [auto]")
    ap.add_argument("--arch", choices=["vgg16", "vgg11"], help="[vgg16]")
    ap.add_argument("--width-mult", type=float, help="conv width multiplier [1.0]")
    ap.add_argument("--batch-size", type=int, help="images per step [128]")
    ap.add_argument("--lr", type=float, help="SGD learning rate of every row [0.1]")
    ap.add_argument("--steps", type=int, help="steps per timed window, per run [200]")
    ap.add_argument("--warmup", type=int, help="untimed steps before the first window, per run [30]")
    ap.add_argument("--windows", type=int, help="timed windows per row; the median is reported [5]")
    ap.add_argument("--parallel", help="comma-separated process counts of the aggregate rows [1,4]")
    ap.add_argument("--data", default="synthetic", help="synthetic, or a prepared .npz (results/data/dataset.npz)")
    ap.add_argument("--n-train", type=int, help="synthetic training images [50000 on GPU, 2000 on CPU]")
    ap.add_argument("--num-workers", type=int, help="DataLoader workers of the typical loop [4 on GPU, 0 on CPU]")
    ap.add_argument("--threads", type=int, help="torch CPU threads of every process, this one and the children "
                    "[params' train.numerics.threads_per_run, as every training run]")
    ap.add_argument("--cuda-graphs", choices=["off", "on", "both"],
                    help="bnflow rows eager (off), replaying CUDA graphs (on), or both [both on GPU, off on CPU]")
    ap.add_argument("--sync-every", type=int, help="train.execution.sync_every of the bnflow rows [params.yaml]")
    ap.add_argument("--probe-every", type=int,
                    help="dense-probe interval of the probes row, 0 = no probes row [100, params' train.probes.vgg]")
    ap.add_argument("--pack-seeds", type=int, help="seeds per packed model, 0 = no packed rows [params' seeds.n]")
    ap.add_argument("--compile-modes", help="comma-separated torch.compile modes of the packed rows, '' = none "
                    "[default,reduce-overhead; GPU only]")
    ap.add_argument("--packed-precisions", help="precisions of the packed eager/graphs rows [fp32,bf16; bf16 GPU only]")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file the bnflow rows start from")
    ap.add_argument("--record", type=Path, help="append a dated section with the table to this Markdown file")
    ap.add_argument("--json", type=Path, help="write the numbers and their provenance to this JSON file")
    s = ap.parse_args(argv)
    for key, value in {**DEFAULTS, **(SMOKE if s.smoke else {})}.items():
        if getattr(s, key) is None:
            setattr(s, key, value)
    s.device = pick_device(s.device)
    gpu = s.device.type == "cuda"
    s.cuda_graphs = s.cuda_graphs or ("both" if gpu else "off")
    if s.cuda_graphs != "off" and not gpu:
        raise ConfigError(f"--cuda-graphs: {s.cuda_graphs!r} needs a CUDA device; use --cuda-graphs off on {s.device}")
    s.graph_modes = {"off": (False,), "on": (True,), "both": (False, True)}[s.cuda_graphs]
    s.n_train = s.n_train or (50000 if gpu else 2000)
    s.num_workers = (4 if gpu else 0) if s.num_workers is None else s.num_workers
    if s.threads is None:  # every process as the train step's runs (bnflow.train.threads), not torch's default
        s.threads = int(read_yaml(s.params)["train"]["numerics"]["threads_per_run"])
    try:
        s.parallel = tuple(int(v) for v in s.parallel.split(","))
    except ValueError:
        raise ConfigError(f"--parallel: {s.parallel!r} is not a comma-separated list of integers, e.g. 1,4") from None
    s.compile_modes = tuple(m for m in s.compile_modes.split(",") if m)
    s.packed_precisions = tuple(p for p in s.packed_precisions.split(",") if p)
    bad = [p for p in s.packed_precisions if p not in ("fp32", "bf16")]
    if bad:
        raise ConfigError(f"--packed-precisions: {bad[0]!r} is not fp32 or bf16")
    for key, low in (("steps", 1), ("windows", 1), ("batch_size", 1), ("n_train", 10), ("warmup", 1),
                     ("num_workers", 0), ("parallel", 1), ("threads", 1), ("sync_every", 1), ("pack_seeds", 0)):
        value = getattr(s, key)
        if value is not None and (min(value) < low if isinstance(value, tuple) else value < low):
            raise ConfigError(f"--{key.replace('_', '-')}: must be >= {low}, got {value}")
    return s


def log(row: dict[str, Any]) -> None:
    print(f"{row['label']}: {row['ms_per_step']:.2f} ms/step, {row['steps_per_s']:.1f} steps/s", file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    threads_before = torch.get_num_threads()
    if s.threads:
        # the smoke preset uses 1: on shared cores, more OpenMP threads than free cores stall each other (>10x seen)
        torch.set_num_threads(s.threads)
    try:
        meta, rows = measure(s, sys.argv[1:] if argv is None else argv)
    finally:
        torch.set_num_threads(threads_before)
    table = format_table(rows) + "".join(f"\n- skipped: {r['label']}: {r['skipped']}" for r in meta["skipped"])
    if "grid_estimate" in meta:
        measured = f"{s.arch} ×{s.width_mult}, batch {s.batch_size}, {meta['device_name']}"
        table += "\n" + bench_packed.format_estimate(meta["grid_estimate"], measured)
    print(f"{meta['device_name']} | torch {meta['torch']} | commit {meta['commit']} | {meta['date']}\n{table}")
    if s.record:
        with open(s.record, "a") as f:
            f.write(record_section(meta, table))
    if s.json:
        write_json(s.json, {"meta": meta, "rows": rows})
    return 0


def measure(s: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every row of the benchmark, and the provenance of the measurement (device, commit, command, settings)."""
    device = s.device
    plain = bench_params(s, device)
    s.sync_every = plain["train"]["execution"]["sync_every"]
    s.pack_seeds = from_dict(plain).train.seeds.count("vgg") if s.pack_seeds is None else s.pack_seeds
    packed_rows, skipped = bench_packed.plan_rows(device, s.compile_modes, s.packed_precisions, s.probe_every)
    # no grid extrapolation from the smoke preset's toy model and 20-step windows: its rates say nothing about the grid
    grid = bench_packed.grid_cells(s.params) if s.pack_seeds and not s.smoke else None  # fails early, not after
    if s.smoke:
        print("smoke preset: no grid extrapolation (its toy model's rates say nothing about the grid's)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bnflow-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if s.data == "synthetic":
            data_path = tmp / "synthetic.npz"
            save_prepared(data_path, make_synthetic(0, s.n_train, 100))
        else:
            data_path = Path(s.data)
        data = load_prepared(data_path)
        s.n_train = len(data.train_labels)
        if s.batch_size > s.n_train:
            raise ConfigError(f"--batch-size: {s.batch_size} exceeds the {s.n_train} training images of {s.data}")
        rows = [summarise("typical", 1, s.steps, typical_windows(data, s, device), s.batch_size,
                          LABELS["typical"].format(w=s.num_workers))]
        log(rows[-1])
        del data
        for graphs in s.graph_modes:
            windows = single_windows(plain, data_path, device, s, graphs, tmp / f"single-{MODES[graphs]}")
            rows.append(summarise("bnflow_single", 1, s.steps, windows, s.batch_size,
                                  LABELS["bnflow_single"].format(mode=MODES[graphs]), graphs))
            log(rows[-1])
            if not graphs and s.probe_every:  # the probes' cost, against the same eager loop (issue target: <= 10%)
                eager_ms = rows[-1]["ms_per_step"]
                windows = single_windows(plain, data_path, device, s, False, tmp / "single-probes", s.probe_every)
                row = summarise("bnflow_probes", 1, s.steps, windows, s.batch_size, "", False)
                row["overhead_pct"] = 100.0 * (row["ms_per_step"] / eager_ms - 1.0)
                row["label"] = LABELS["bnflow_probes"].format(every=s.probe_every, overhead=row["overhead_pct"])
                rows.append(row)
                log(rows[-1])
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the children get the memory the single runs held
        agg = [(graphs, n) for graphs in s.graph_modes for n in s.parallel]
        for (graphs, n), windows in zip(agg, aggregate_windows(plain, data_path, device, s, agg, tmp)):
            rows.append(summarise("bnflow_aggregate", n, s.steps, windows, s.batch_size,
                                  LABELS["bnflow_aggregate"].format(mode=MODES[graphs], n=n), graphs))
            log(rows[-1])
        rows += packed_measurements(plain, data_path, device, s, packed_rows if s.pack_seeds else [], tmp)
    meta = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "python": platform.python_version(), "commit": git_commit(ROOT),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", os.path.relpath(Path(__file__).resolve(), ROOT), *argv]),
            "settings": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(s).items()},
            "skipped": (skipped + s.failed) if s.pack_seeds else []}
    if grid is not None:
        meta["grid"] = grid
        meta["grid_estimate"] = bench_packed.grid_estimate(grid, rows)
    return meta, rows


def packed_measurements(plain: dict, data_path: Path, device: torch.device, s: argparse.Namespace,
                        plan: list, tmp: Path) -> list[dict[str, Any]]:
    """The packed rows (bench_packed.PackedRow each) on `device`; a probes row gets its overhead over packed eager.
    A torch.compile row that fails is recorded in `s.failed` (listed under the table) instead of ending the run."""
    rows: list[dict[str, Any]] = []
    s.failed = []  # torch.compile rows that raised: listed with the skipped rows
    cfg = loop_config(plain, 1, False)
    for k, spec in enumerate(plan):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            windows = bench_packed.packed_windows(plain, data_path, device, cfg, spec, s.pack_seeds, s.warmup,
                                                  s.steps, s.windows, tmp / f"packed-{k}")
        except Exception as e:  # noqa: BLE001 - a compiler failure of one mode must not cost the other rows
            if spec.compile_mode is None:
                raise
            s.failed.append({"label": spec.label(), "skipped": f"failed: {type(e).__name__}: {str(e)[:300]}"})
            print(f"{spec.label()}: {s.failed[-1]['skipped']}", file=sys.stderr, flush=True)
            continue
        row = summarise("packed", s.pack_seeds, s.steps, windows, s.batch_size, spec.label(s.pack_seeds), spec.graphs)
        row |= {"precision": spec.precision, "probe_every": spec.probe_every, "compile_mode": spec.compile_mode,
                "channels_last": spec.channels_last}
        if spec.probe_every:
            eager = next(r for r in rows if r["label"] == bench_packed.PackedRow().label(s.pack_seeds))
            row["overhead_pct"] = 100.0 * (row["ms_per_step"] / eager["ms_per_step"] - 1.0)
            row["label"] += f" ({row['overhead_pct']:+.1f}% vs packed eager)"
        rows.append(row)
        log(row)
    return rows


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BnflowError as e:
        sys.exit(f"error: {e}")

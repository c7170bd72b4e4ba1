"""CPU settings, measured here: threads per run, runs at once, packed seeds; the DLN and the reduced-scale VGG.

    PYTHONPATH=. python benchmarks/bench_cpu.py --record benchmarks/RESULTS.md      # ~15-30 min on 2 shared cores
    PYTHONPATH=. python benchmarks/bench_cpu.py --smoke                              # seconds: the code paths only

What it times, each with train_loop and the Prober exactly as the train step builds them (bnflow.tasks), in spawned
processes that set their threads as the train step's workers do (bnflow.train.threads):
  dln          the DLN of params.yaml (bn cell), dense probes every train.probes.dln.every steps: one run at 1 thread,
               one at 2 threads, two runs at once at 1 thread each. Packed: not applicable (DLN cells always train
               separately, bnflow.train.packed_cell).
  vgg_cpu      each PROTOCOL §10 candidate (VGG-16 x0.25, VGG-11 x0.25, VGG-16 x0.125, VGG-11 x0.125), batch 128:
               every variant of the core grid as two runs at once, 1 thread each (the committed settings); for the
               bn variant also one run at 1 and at 2 threads, and 2 seeds packed into one model (1 process, 1 thread).
               Dense probes (every train.probes.vgg_cpu.every steps) are timed as one probe call per run and spread
               over that many steps; the checkpoint-wise probe step as one checkpoint (its curvature included).
The projection per candidate is the core grid's wall time at 2 runs at once: 6 cells x 5 seeds x 5,000 steps with
dense probes and test evaluations, plus the probe step (5 checkpoints per run). `--smoke` shrinks everything and
prints no projection: toy rates say nothing about the grid. Numbers on a shared machine move with its load: the
record names the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, device_name, git_commit  # noqa: E402

from bnflow.config import Cell, from_dict, merge, read_yaml, to_plain  # noqa: E402
from bnflow.data import make_synthetic, save_prepared  # noqa: E402
from bnflow.io import write_json  # noqa: E402
from bnflow.probes.runner import Prober, ProbePlan  # noqa: E402
from bnflow.tasks import make_task  # noqa: E402
from bnflow.train.cell import loop_config  # noqa: E402
from bnflow.train.loop import train_loop  # noqa: E402
from bnflow.train.packed import train_packed  # noqa: E402
from bnflow.train.threads import set_threads  # noqa: E402

CANDIDATES = (("vgg16", 0.25), ("vgg11", 0.25), ("vgg16", 0.125), ("vgg11", 0.125))  # PROTOCOL §10, in its order
CORE_GRID = (("standard", 0.1), ("bn", 0.1), ("standard", 0.5), ("bn", 0.5), ("noisy_bn", 0.1),
             ("noisy_standard", 0.1))
VARIANTS = ("standard", "bn", "noisy_bn", "noisy_standard")
PAPER_LAYERS = {"vgg16": {"ics_layers": [5, 10], "activation_layers": [2, 3, 9, 11, 13]},  # the paper's #k of 13
                "vgg11": {"ics_layers": [3, 6], "activation_layers": [1, 2, 6, 7, 8]}}  # params.yaml's mapping
FULL = {"steps": 8, "warmup": 2, "dln_steps": 400, "n_train": 2560, "n_test": 2000}
SMOKE = {"steps": 2, "warmup": 1, "dln_steps": 40, "n_train": 256, "n_test": 256}
TEST_IMAGES = 10000  # CIFAR-10's test set: a measured evaluation of n_test images is scaled to it
CORE_SEEDS, CORE_STEPS = 5, 5000  # PROTOCOL §10: the core grid's seeds and step budget


@dataclasses.dataclass(frozen=True)
class Job:
    """One timed run: a cell of a model family at some threads; `packed` seeds in one model (0: a separate run)."""

    model: str
    variant: str
    threads: int = 1
    packed: int = 0
    probe_step: bool = False  # also time one checkpoint of the checkpoint-wise probe step
    extras: bool = True  # also time one dense probe call and one test evaluation


def bench_params(arch: str, width: float, smoke: bool) -> dict:
    """params.yaml, validated, with vgg_cpu set to a candidate and its probes at the candidate's layer numbers."""
    raw = read_yaml(ROOT / "params.yaml")
    layers = PAPER_LAYERS[arch]
    over: dict[str, Any] = {"train": {"vgg_cpu": {"arch": arch, "width_mult": width},
                                      "probes": {"vgg_cpu": layers}, "execution": {"device": "cpu"}},
                            "probe": {"vgg_cpu": layers}}
    if smoke:
        over["train"] |= {"vgg_cpu": {"arch": arch, "width_mult": 1 / 32, "batch_size": 16}, "dln": {"depth": 4},
                          "probes": {"vgg_cpu": layers, "dln": {"ics_layers": [2, 3], "activation_layers": [1, 4]}}}
        over["probe"] |= {"dln": {"ics_layers": [2, 3], "activation_layers": [1, 4]}, "curvature": {"eig_iters": 3}}
    raw = merge(raw, over)
    cells = [cell_of("vgg_cpu", v) for v in VARIANTS] + [cell_of("dln", "bn")]
    raw["train"]["grid"] = {c.id: to_plain(c) for c in cells}
    return to_plain(from_dict(raw, check_files=False))


def cell_of(model: str, variant: str) -> Cell:
    """The benchmark's cell: lr 0.1 for the VGG (the core grid's), 1e-6 for the DLN (the paper's)."""
    return Cell(model, variant, 0.1 if model == "vgg_cpu" else 1e-6)


def time_job(plain: dict, data: str, job: Job, steps: int, warmup: int, scratch: str) -> dict[str, float]:
    """Seconds per step of `job` (training with dense probes off), of one dense probe call, one test evaluation and
    (job.probe_step) one checkpoint of the probe step. Runs in its own process, at job.threads threads."""
    set_threads(job.threads)
    p = from_dict(plain, check_files=False)
    cell = cell_of(job.model, job.variant)
    cpu = torch.device("cpu")
    seeds = range(max(1, job.packed))
    tasks = [make_task(p.train, cell, s, Path(data) if job.model == "vgg_cpu" else None, cpu) for s in seeds]
    cfg = dataclasses.replace(loop_config(p.train, cell, 0, steps=warmup + steps), resume_every_s=1e9,
                              progress_every_s=0, sync_every=warmup + steps)
    marks: list[float] = []

    def clock(t: int) -> None:
        if t in (warmup, warmup + steps - 1):
            marks.append(time.perf_counter())

    folder = Path(scratch) / f"{job.model}-{job.variant}-{job.threads}-{job.packed}-{os.getpid()}"
    if job.packed:
        train_packed(tasks, cfg, folder, [folder] * len(tasks), [{}] * len(tasks), "bench", before_step=clock)
        out = {"s_per_step": (marks[1] - marks[0]) / (steps - 1)}
    else:  # warm-up steps, then the timed ones (a second loop on the warmed-up model: no probes, no checkpoints)
        train_loop(tasks[0], dataclasses.replace(cfg, steps=warmup), folder / "warm", folder / "warm", {}, "bench")
        start = time.perf_counter()
        train_loop(tasks[0], dataclasses.replace(cfg, steps=steps), folder / "timed", folder / "timed", {}, "bench")
        out = {"s_per_step": (time.perf_counter() - start) / steps}
    task = tasks[0]
    if not job.extras:
        return out
    dense = getattr(p.train.probes, job.model)
    prober = Prober.for_task(ProbePlan.build(dense, p.train.probes, cell.lr), task, base=0, seed=0)
    batch = task.batch(0)
    start = time.perf_counter()
    prober.probe(0, batch.x, batch.y)
    out["dense_probe_s"] = time.perf_counter() - start
    start = time.perf_counter()
    task.evaluate()  # None for the DLN (no test set)
    n_test = getattr(task, "test_y", ())
    out["eval_s"] = (time.perf_counter() - start) * (TEST_IMAGES / len(n_test) if len(n_test) else 0.0)
    if job.probe_step:
        plan = ProbePlan.build(getattr(p.probe, job.model), p.probe, cell.lr, p.probe.direction, p.probe.curvature)
        checkpoint = Prober.for_task(plan, task, base=0, seed=0)
        start = time.perf_counter()
        checkpoint.probe(0, batch.x, batch.y)
        out["probe_step_ckpt_s"] = time.perf_counter() - start
    return out


def run_together(plain: dict, data: Path, jobs: list[Job], steps: int, warmup: int, scratch: Path) -> list[dict]:
    """`jobs` at once, one spawned process each; their results in order."""
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        return pool.starmap(time_job, [(plain, str(data), j, steps, warmup, str(scratch)) for j in jobs])


def per_step_with_probes(r: dict, every: int) -> float:
    """Seconds per training step with dense probes every `every` steps (one probe call spread over them)."""
    return r["s_per_step"] + (r["dense_probe_s"] / every if every else 0.0)


def project_grid(rates: dict[str, float], evals: dict[str, float], ckpt_s: float, *, seeds: int, steps: int,
                 eval_every: int, checkpoints: int, parallel: int = 2) -> dict[str, float]:
    """Wall hours of the core grid at `parallel` runs at once: per cell, seeds x (steps x its variant's seconds per
    step with dense probes + its test evaluations), then the probe step (checkpoints per run x ckpt_s), divided
    over the parallel runs. `rates`, `evals`: per variant, measured with `parallel` runs at once."""
    n_evals = steps // eval_every + 1
    train_s = sum(seeds * (steps * rates[v] + n_evals * evals[v]) for v, _ in CORE_GRID) / parallel
    probe_s = len(CORE_GRID) * seeds * checkpoints * ckpt_s / parallel
    return {"train_h": train_s / 3600, "probe_step_h": probe_s / 3600, "total_h": (train_s + probe_s) / 3600}


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def row(label: str, r: dict, every: int, runs: int = 1) -> dict[str, Any]:
    out = {"label": label, "s_per_step": r["s_per_step"], "runs": runs}
    if "dense_probe_s" in r:
        out |= {"s_per_step_with_probes": per_step_with_probes(r, every), "dense_probe_s": r["dense_probe_s"]}
    return out


def project_dln(r: dict, ckpt_s: float, *, cells: int, seeds: int, steps: int, every: int, checkpoints: int,
                parallel: int = 2) -> dict[str, float]:
    """Wall minutes of the DLN half at `parallel` runs at once: cells x seeds runs of `steps` steps with dense
    probes (rates of runs measured `parallel` at once), then the probe step (checkpoints per run x ckpt_s)."""
    runs = cells * seeds
    train_s = runs * steps * per_step_with_probes(r, every) / parallel
    probe_s = runs * checkpoints * ckpt_s / parallel
    return {"runs": runs, "train_min": train_s / 60, "probe_step_min": probe_s / 60,
            "total_min": (train_s + probe_s) / 60}


def measure(s: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Every row, and per candidate its projection (none with --smoke)."""
    size = SMOKE if s.smoke else FULL
    rows: list[dict] = []
    projections: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bnflow-bench-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data.npz"
        save_prepared(data, make_synthetic(0, size["n_train"], size["n_test"]))
        arch, width = CANDIDATES[0]
        plain = bench_params(arch, width, s.smoke)
        p = from_dict(plain, check_files=False)
        dln_every = p.train.probes.dln.every
        tag = " (smoke: depth 4)" if s.smoke else ""
        for threads in (1, 2):
            (r,) = run_together(plain, data, [Job("dln", "bn", threads, probe_step=True)], size["dln_steps"],
                                size["warmup"], tmp)
            rows.append(row(f"dln bn{tag}: 1 run, {threads} thread(s)", r, dln_every)
                        | {"probe_step_ckpt_s": r["probe_step_ckpt_s"]})
            print(rows[-1], flush=True)
        both = run_together(plain, data, [Job("dln", "bn", probe_step=True), Job("dln", "bn", probe_step=True)],
                            size["dln_steps"], size["warmup"], tmp)
        r = {k: statistics.mean(x[k] for x in both) for k in ("s_per_step", "dense_probe_s", "probe_step_ckpt_s")}
        rows.append(row(f"dln bn{tag}: 2 runs at once, 1 thread each (per run)", r, dln_every, runs=2)
                    | {"probe_step_ckpt_s": r["probe_step_ckpt_s"]})
        print(rows[-1], flush=True)
        dln_cells = [c for c in from_dict(read_yaml(ROOT / "params.yaml"), check_files=False).train.grid.values()
                     if c.model == "dln"]
        if not s.smoke:
            projections.append({"candidate": "dln"} | project_dln(
                r, r["probe_step_ckpt_s"], cells=len(dln_cells), seeds=p.train.seeds.count("dln"),
                steps=p.train.dln.steps, every=dln_every, checkpoints=len(p.train.dln.checkpoint_steps)))
            print(projections[-1], flush=True)
        for arch, width in CANDIDATES[:s.candidates]:
            plain = bench_params(arch, width, s.smoke)
            p = from_dict(plain, check_files=False)
            every = p.train.probes.vgg_cpu.every
            name = f"{arch} x{width}" + (" (smoke: x1/32, batch 16)" if s.smoke else "")
            rates, evals = {}, {}
            for variant in VARIANTS:
                pair = run_together(plain, data, [Job("vgg_cpu", variant, probe_step=variant == "bn"),
                                                  Job("vgg_cpu", variant)], size["steps"], size["warmup"], tmp)
                r = {k: statistics.mean(x[k] for x in pair) for k in ("s_per_step", "dense_probe_s", "eval_s")}
                rates[variant], evals[variant] = per_step_with_probes(r, every), r["eval_s"]
                rows.append(row(f"{name} {variant}: 2 runs at once, 1 thread each (per run)", r, every, runs=2))
                if variant == "bn":
                    ckpt_s = pair[0]["probe_step_ckpt_s"]
                    rows[-1]["probe_step_ckpt_s"] = ckpt_s
                print(rows[-1], flush=True)
            for threads in (1, 2):  # training steps only: at 2 threads on shared cores an evaluation takes minutes
                (r,) = run_together(plain, data, [Job("vgg_cpu", "bn", threads, extras=False)], size["steps"],
                                    size["warmup"], tmp)
                rows.append(row(f"{name} bn: 1 run, {threads} thread(s)", r, every))
                print(rows[-1], flush=True)
            (r,) = run_together(plain, data, [Job("vgg_cpu", "bn", packed=2, extras=False)], size["steps"],
                                size["warmup"], tmp)
            rows.append(row(f"{name} bn: 2 seeds packed in one model, 1 thread (per packed step)", r, every, runs=2))
            print(rows[-1], flush=True)
            if not s.smoke:
                cfg = p.train.vgg_cpu
                projections.append({"candidate": name, "arch": arch, "width_mult": width} | project_grid(
                    rates, evals, ckpt_s, seeds=CORE_SEEDS, steps=CORE_STEPS, eval_every=cfg.eval_every,
                    checkpoints=len(cfg.checkpoint_steps)))
                print(projections[-1], flush=True)
    return rows, projections


def format_record(meta: dict, rows: list[dict], projections: list[dict]) -> str:
    """A dated Markdown section: provenance, the rows, and the projection per candidate."""
    lines = [f"\n## {meta['date']} — CPU settings (bench_cpu.py), {meta['device_name']}\n",
             f"torch {meta['torch']}, commit `{meta['commit']}`, `{meta['command']}`; load average (1, 5, 15 min) "
             f"before {meta['load_before']}, after {meta['load_after']}. Seconds per training step of one run; "
             "'with probes' adds one dense probe call spread over the probe interval.\n",
             "| row | s/step | s/step with dense probes | one dense probe (s) | probe step, one checkpoint (s) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[k]:.{d}f}" if k in r else "" for k, d in (("s_per_step_with_probes", 4), ("dense_probe_s", 3),
                                                                 ("probe_step_ckpt_s", 3))]
        lines.append(f"| {r['label']} | {r['s_per_step']:.4f} | {' | '.join(cells)} |")
    dln = [p for p in projections if p["candidate"] == "dln"]
    projections = [p for p in projections if p["candidate"] != "dln"]
    if dln:
        d = dln[0]
        lines += ["", f"Projected DLN half ({d['runs']} runs: the grid's DLN cells x train.seeds.n.dln, 10,000 steps, "
                  f"dense probes, 2 runs at once, then the probe step): training {d['train_min']:.1f} min, probe step "
                  f"{d['probe_step_min']:.1f} min, total **{d['total_min']:.1f} min**."]
    if projections:
        lines += ["", "Projected wall time of the reduced-scale core grid (6 cells x 5 seeds x 5,000 steps, 2 runs at "
                  "once, dense probes and test evaluations included, then the probe step):", "",
                  "| candidate | training (h) | probe step (h) | total (h) |", "|---|---:|---:|---:|"]
        lines += [f"| {p['candidate']} | {p['train_h']:.2f} | {p['probe_step_h']:.2f} | {p['total_h']:.2f} |"
                  for p in projections]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and windows: the code paths in seconds, no "
                    "projection")
    ap.add_argument("--candidates", type=int, default=len(CANDIDATES), help="how many §10 candidates, in order [4]")
    ap.add_argument("--record", type=Path, help="append a dated section to this Markdown file")
    ap.add_argument("--json", type=Path, help="write the rows, projections and provenance to this JSON file")
    s = ap.parse_args(argv)
    if s.smoke:
        s.candidates = min(s.candidates, 1)
    load_before = load_average()
    rows, projections = measure(s)
    meta = {"device_name": device_name(torch.device("cpu")), "torch": torch.__version__, "commit": git_commit(ROOT),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load_before,
            "load_after": load_average(),
            "command": "python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    text = format_record(meta, rows, projections)
    print(text)
    if s.record:
        with open(s.record, "a") as f:
            f.write(text)
    if s.json:
        write_json(s.json, {"meta": meta, "rows": rows, "projections": projections})
    return 0


if __name__ == "__main__":
    sys.exit(main())

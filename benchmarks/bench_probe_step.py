"""Cost of the checkpoint-wise probe step per checkpoint: the paper's probes, then with the curvature/theorem probes.

    PYTHONPATH=. python benchmarks/bench_probe_step.py --smoke            # seconds on a CPU
    PYTHONPATH=. python benchmarks/bench_probe_step.py --device cuda --record benchmarks/RESULTS.md

Each row times `Prober.probe` (what `python -m bnflow probe` runs per checkpoint) on one VGG at its initial weights
and one mini-batch, median of --repeats calls after one warm-up call, device synchronised around each call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, device_name, git_commit, pick_device, sync  # noqa: E402

from bnflow.config import Cell, from_dict, merge, read_yaml, to_plain  # noqa: E402
from bnflow.data import make_synthetic, save_prepared  # noqa: E402
from bnflow.probes.runner import Prober, ProbePlan  # noqa: E402
from bnflow.tasks import VggTask  # noqa: E402


def time_probe(prober: Prober, task: VggTask, repeats: int) -> list[float]:
    batch = task.batch(0)
    times = []
    for i in range(repeats + 1):
        sync(task.device)
        start = time.perf_counter()
        prober.probe(0, batch.x, batch.y)
        sync(task.device)
        if i:  # the first call warms up (cuDNN autotuning, allocations)
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU preset: vgg11 x0.125, batch 32, 3 repeats")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--record", type=Path, help="append the table, with device, date and commit, to this file")
    a = ap.parse_args(argv)
    arch, width, batch = ("vgg11", 0.125, 32) if a.smoke else ("vgg16", 1.0, 128)
    device = torch.device("cpu") if a.smoke else pick_device(a.device)
    repeats = 3 if a.smoke else a.repeats
    raw = merge(read_yaml(ROOT / "params.yaml"), {"train": {"vgg": {"arch": arch, "width_mult": width,
                                                                    "batch_size": batch}}})
    if arch == "vgg11":  # VGG-11 has 8 conv layers: probe the layers it has
        layers = {"ics_layers": [3, 6], "activation_layers": [2, 3, 6, 8]}
        raw = merge(raw, {"train": {"probes": {"vgg": layers}}, "probe": {"vgg": layers}})
    cell = Cell("vgg", "bn", 0.1)
    raw["train"]["grid"] = {cell.id: to_plain(cell)}
    params = from_dict(raw)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d.npz"
        save_prepared(data, make_synthetic(0, max(batch, 256), 64))
        task = VggTask(params.train, cell, 0, data, device)
        for label, curvature in (("paper probes (landscape, ICS, activations)", None),
                                 ("+ curvature and Theorem 4.1/4.2 checks", params.probe.curvature)):
            plan = ProbePlan.build(params.probe.vgg, params.probe, cell.lr, "gradient", curvature)
            prober = Prober.for_task(plan, task, base=0, seed=0)
            times = time_probe(prober, task, repeats)
            rows.append((label, statistics.median(times), min(times), max(times)))
    head = (f"{device_name(device)} | torch {torch.__version__} | commit {git_commit(ROOT)} | "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    cv = params.probe.curvature
    table = [f"Probe step per checkpoint: {arch} x{width}, batch {batch}, Lanczos up to {cv.eig_iters} HVPs, "
             f"Theorem 4.2 on {cv.theorem42_channels} channel(s) per BN layer", "",
             "| probes | s per checkpoint (median) | min–max |", "|---|---|---|"]
    table += [f"| {label} | {med:.3f} | {lo:.3f}–{hi:.3f} |" for label, med, lo, hi in rows]
    print(head)
    print("\n".join(table))
    if a.record:
        cmd = " ".join(["python benchmarks/bench_probe_step.py", *(argv if argv is not None else sys.argv[1:])])
        with open(a.record, "a") as f:
            f.write(f"\n## {head}\n\n- command: `{cmd}`\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

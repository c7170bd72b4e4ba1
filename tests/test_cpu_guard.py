"""Paper-scale GPU work on a CPU is refused before it starts, in one line (bnflow/cpu_guard.py), and Ctrl-C ends a
training run with one line and a state the same command resumes from (issue 24, part 2)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bnflow import cpu_guard
from bnflow.config import from_dict, load_params, merge, read_yaml
from conftest import ROOT, copy_params

PARAMS = ROOT / "params.yaml"
QUICK = ROOT / "workflow" / "quick.yaml"
PAPER_VGG = ROOT / "workflow" / "paper-vgg.yaml"  # the paper-scale VGG cells, an overlay (they need a GPU)


@pytest.fixture
def no_gpu(monkeypatch):
    """As on a machine without CUDA, whatever this one has; and no opt-in from the caller's environment."""
    monkeypatch.setattr(cpu_guard, "cpu_reason", lambda params: "no CUDA GPU is visible")
    monkeypatch.delenv(cpu_guard.ALLOW_ENV, raising=False)


def test_the_estimate_is_steps_times_flops_over_the_cores_rate():
    # 3600 steps of 50 GFLOP on one core of CPU_GFLOPS_PER_CORE (50): 3600 s
    assert cpu_guard.JobCost("train", "c", "vgg", 3600, cpu_guard.CPU_GFLOPS_PER_CORE, 1).hours == pytest.approx(1)
    assert cpu_guard.JobCost("train", "c", "vgg", 3600, 50.0, 2).hours == pytest.approx(0.5)


def test_a_dln_step_counts_its_matrix_products():
    p = load_params(PARAMS, check_files=False)
    d = p.train.dln  # depth x (dim x dim) products of 2 FLOP per multiply-add, for every sample; backward 2x forward
    assert cpu_guard.gflop_per_step(p, "dln") == pytest.approx(3 * d.depth * 2 * d.dim * d.dim * d.n_samples / 1e9)


def test_paper_scale_is_the_papers_vgg_not_the_dln_vgg_cpu_nor_the_quick_runs_vgg():
    paper = load_params(PARAMS, PAPER_VGG, check_files=False)
    quick = load_params(PARAMS, QUICK, check_files=False)
    assert cpu_guard.paper_scale(paper, "vgg")
    assert not cpu_guard.paper_scale(paper, "dln") and not cpu_guard.paper_scale(paper, "vgg_cpu")
    assert not cpu_guard.paper_scale(quick, "vgg")
    assert cpu_guard.cpu_sized_patterns(paper) == ["dln-*", "vgg_cpu-*"]  # the models of the grid, in its order


def test_refusal_names_the_cost_the_cpu_cells_and_the_opt_in(no_gpu, monkeypatch):
    p = load_params(PARAMS, PAPER_VGG, check_files=False)
    vgg = next(c for c, cell in p.train.grid.items() if cell.model == "vgg")
    dln = next(c for c, cell in p.train.grid.items() if cell.model == "dln")
    line = cpu_guard.refusal(p, [("prepare", "vgg"), ("train", vgg), ("probe", vgg), ("lrscan", "vgg"),
                                 ("train", dln), ("stats", "")])
    assert line is not None and "\n" not in line
    assert "3 jobs of vgg (1 train, 1 probe, 1 lrscan)" in line and "no CUDA GPU is visible" in line
    hours = sum(cpu_guard.job_cost(p, s, k).hours for s, k in [("train", vgg), ("probe", vgg), ("lrscan", "vgg")])
    assert f"about {hours:,.0f} h" in line
    assert "--config cells='dln-*,vgg_cpu-*'" in line and f"{cpu_guard.ALLOW_ENV}=1" in line
    assert cpu_guard.refusal(p, [("train", dln), ("probe", dln), ("lrscan", "dln")]) is None
    monkeypatch.setenv(cpu_guard.ALLOW_ENV, "1")
    assert cpu_guard.refusal(p, [("train", vgg)]) is None


def test_a_gpu_the_committed_grid_or_the_quick_run_is_never_refused(monkeypatch):
    monkeypatch.delenv(cpu_guard.ALLOW_ENV, raising=False)
    paper = load_params(PARAMS, PAPER_VGG, check_files=False)
    monkeypatch.setattr(cpu_guard, "cpu_reason", lambda params: None)  # a GPU
    assert cpu_guard.refusal(paper, [("train", c) for c in paper.train.grid]) is None
    monkeypatch.setattr(cpu_guard, "cpu_reason", lambda params: "no CUDA GPU is visible")
    for p in (load_params(PARAMS, check_files=False), load_params(PARAMS, QUICK, check_files=False)):
        jobs = [(s, c) for c in p.train.grid for s in ("train", "probe")] + [("lrscan", m) for m in p.lrscan.models]
        assert cpu_guard.refusal(p, jobs) is None


def test_device_cpu_counts_as_the_cpu(raw_params):
    raw_params["train"]["execution"]["device"] = "cpu"
    assert cpu_guard.cpu_reason(from_dict(raw_params, check_files=False)) == "train.execution.device is cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="has a CUDA GPU")
def test_the_cli_refuses_a_paper_scale_cell_in_one_line_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu_guard.ALLOW_ENV, raising=False)
    cmd = [sys.executable, "-m", "bnflow", "train", "--params", str(PARAMS), "--params", str(PAPER_VGG),
           "--cell", "vgg-bn-lr0.1",
           "--data", str(tmp_path / "vgg.npz"), "--runs-dir", str(tmp_path / "runs"),
           "--checkpoints-dir", str(tmp_path / "ckpt")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnflow train: error: train@vgg-bn-lr0.1: paper-scale"), lines
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="has a CUDA GPU")
def test_snakemake_refuses_before_any_job_and_the_opt_in_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu_guard.ALLOW_ENV, raising=False)
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    copy_params(tmp_path)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({
        "out_dir": "out", "prepare": {"source": "synthetic"}, "lrscan": {"models": ["vgg"]},
        "train": {"grid": {"vgg-bn-lr0.1": {"model": "vgg", "variant": "bn", "lr": 0.1}}}}))
    # without the refusal this would train paper-scale VGG for days: the generous limit only ends such a mutant
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--resources", "gpu=1",
                           "--config", "overlay=one.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bnflow: no job started: 3 jobs of vgg (1 train, 1 probe, 1 lrscan): paper-scale"), last
    assert f"{cpu_guard.ALLOW_ENV}=1" in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # not even prepare@vgg ran


# ------------------------------------------------------------------------------------------------------------ Ctrl-C
def sigint_action(*job) -> dict:
    """Stands in for train_seed in a worker: how that worker would take a Ctrl-C."""
    return {"sigint": str(signal.getsignal(signal.SIGINT))}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the seeds train in the step's own process")
def test_training_workers_leave_ctrl_c_to_the_main_process(monkeypatch, tmp_path):
    from bnflow.train import cell as cell_module

    raw = merge(read_yaml(PARAMS), read_yaml(QUICK))
    raw["train"]["execution"]["parallel_runs"] = 2
    monkeypatch.setattr(cell_module, "train_seed", sigint_action)
    # as in a terminal (a shell's background job would start with SIGINT ignored, and so would every worker)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        got = cell_module._train_seeds(from_dict(raw, check_files=False), "dln-bn-lr1e-06", [0, 1], None, tmp_path,
                                       torch.device("cpu"), True, "")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the main process keeps Ctrl-C
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == [{"sigint": str(signal.SIG_IGN)}] * 2


def _sigint_default() -> None:
    """A terminal's foreground job takes Ctrl-C; a shell's background job (this test run's, maybe) ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _train_cmd(params: list[Path], out: Path, cell: str) -> list[str]:
    return [sys.executable, "-m", "bnflow", "train", *(a for p in params for a in ("--params", str(p))),
            "--cell", cell, "--data", str(out / "data" / "vgg.npz"), "--runs-dir", str(out / "runs" / cell),
            "--checkpoints-dir", str(out / "checkpoints" / cell)]


@pytest.mark.slow
@pytest.mark.parametrize("parallel_runs", [2, 1])
def test_ctrl_c_ends_training_in_one_line_and_the_same_command_resumes(tmp_path, parallel_runs):
    out = tmp_path / "out"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "out_dir": str(out),
        "train": {"vgg": {"steps": 400, "checkpoint_steps": [0, 400]},
                  "execution": {"parallel_runs": parallel_runs, "resume_every_s": 0, "sync_every": 25}}}))
    params = [PARAMS, QUICK, overlay]
    raw = merge(merge(read_yaml(PARAMS), read_yaml(QUICK)), read_yaml(overlay))
    cell = "vgg-bn-lr0.1"
    assert raw["train"]["grid"][cell]["model"] == "vgg"
    subprocess.run([sys.executable, "-m", "bnflow", "prepare", *(a for p in params for a in ("--params", str(p))),
                    "--model", "vgg", "--output", str(out / "data" / "vgg.npz")], cwd=ROOT, check=True,
                   capture_output=True)
    cmd = _train_cmd(params, out, cell)
    # its own process group, as a terminal's foreground job: Ctrl-C sends SIGINT to every process in it
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_default)
    state = out / ".partial" / cell / "state"
    first = state / "s0" / "resume.pt"
    while not first.exists() and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    said = [line for line in err.splitlines() if " INFO " not in line and line.strip()]
    assert len(said) == 1 and said[0].startswith("bnflow train: interrupted; nothing partial was published"), said
    assert "Traceback" not in err
    assert first.exists() and not (out / "runs" / cell).exists()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "s0: resuming at step" in again.stderr
    assert sorted(p.name for p in (out / "runs" / cell).iterdir()) == ["s0", "s1"]

"""Threads come from each step's own plan (bnflow.train.threads): how runs are scheduled never changes a number.

Issue 26: a seed re-trained alone ran in the step's process with torch's default threads (one per core), workers got
cores ÷ processes, so `parallel_runs` 1 and 2 gave metrics.csv files that differed in the 6th digit. Each test starts
its process at 2 intra-op threads, as a 2-core machine does without OMP_NUM_THREADS, so code that leaves a run at the
caller's count computes with 2 threads while a worker computes with 1 (measured here: the tiny DLN's losses differ).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from bnflow import cli
from bnflow.dag import param_keys
from bnflow.probes.checkpoint import probe_cell
from bnflow.tasks import run_facts, run_fingerprint
from bnflow.train import threads as thr
from bnflow.train.cell import train_cell
from conftest import tiny_params

CELL = "dln-bn-lr1e-06"  # BN: batch statistics add reductions whose order the thread count changes


@pytest.fixture(autouse=True)
def caller_threads():
    """The caller's process at 2 intra-op threads (torch's default on 2 cores), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def params_for(root: Path, **overrides):
    """Tiny DLN params (4 layers, 40 steps, dense probes at 0, 20, 40), two seeds, writing under `root`."""
    return tiny_params(root, seeds={"n": 2}, **overrides)


def train(params) -> Path:
    """Train CELL under `params`; the published runs folder."""
    out = Path(params.out_dir)
    train_cell(params, CELL, None, out / "runs" / CELL, out / "checkpoints" / CELL)
    return out / "runs" / CELL


def assert_same_files(a: Path, b: Path) -> None:
    """Every table (metrics and dense probes) and run.json of run folder `a` byte-identical in `b`."""
    kept = (".csv", ".csv.gz", ".json")  # the run's tables are gzip CSVs (bnflow.io.RUN_TABLE), written byte-stable
    names = sorted(p.name for p in a.iterdir() if p.name.endswith(kept) and p.name != "provenance.json")
    assert {"metrics.csv.gz", "landscape.csv.gz", "ics.csv.gz", "run.json"} <= set(names)
    assert names == sorted(p.name for p in b.iterdir() if p.name.endswith(kept) and p.name != "provenance.json")
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, f"differ between {a} and {b}: {mismatch or errors}"


def timing(params) -> dict:
    return json.loads((Path(params.out_dir) / "logs" / "train" / f"{CELL}.timing.json").read_text())


@pytest.mark.slow  # ~25 s: three small cells, one with two spawned workers
def test_parallel_runs_and_a_lone_retrained_seed_give_byte_identical_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # a larger machine: cores ÷ processes would be 4 per worker
    one = params_for(tmp_path / "one", execution={"parallel_runs": 1})
    two = params_for(tmp_path / "two", execution={"parallel_runs": 2})
    runs_one, runs_two = train(one), train(two)
    for seed in (0, 1):
        assert_same_files(runs_one / f"s{seed}", runs_two / f"s{seed}")
    # every run computed with train.numerics.threads_per_run threads, in a worker as in the step's process
    assert {t["torch_threads"] for t in (*timing(one).values(), *timing(two).values())} == {1}
    assert torch.get_num_threads() == 2  # and the caller's count is back

    # a lone seed: s0 finished in scratch (as a restarted job finds it), s1 trained again, alone, in-process
    lone = params_for(tmp_path / "lone", execution={"parallel_runs": 2})
    scratch = Path(lone.out_dir) / ".partial" / CELL
    shutil.copytree(runs_two / "s0", scratch / "runs" / "s0")
    shutil.copytree(Path(two.out_dir) / "checkpoints" / CELL / "s0", scratch / "checkpoints" / "s0")
    runs_lone = train(lone)
    assert set(timing(lone)["s1"]) >= {"torch_threads"} and timing(lone)["s1"]["torch_threads"] == 1
    for seed in (0, 1):
        assert_same_files(runs_two / f"s{seed}", runs_lone / f"s{seed}")


@pytest.mark.slow  # ~20 s: a cell trained, then probed twice
def test_the_probe_step_computes_the_same_whoever_starts_it(tmp_path):
    params = params_for(tmp_path, execution={"parallel_runs": 1})
    train(params)
    ckpts = Path(params.out_dir) / "checkpoints" / CELL
    outs = []
    for caller in (2, 1):  # a caller at 2 threads, then one at 1: the step sets its own
        torch.set_num_threads(caller)
        out = tmp_path / f"probes{caller}"
        probe_cell(params, CELL, ckpts, None, out)
        outs.append(out)
    for seed in (0, 1):
        a, b = (o / f"s{seed}" for o in outs)
        names = sorted(p.name for p in a.glob("*.csv"))
        assert "landscape.csv" in names and "ics.csv" in names
        assert filecmp.cmpfiles(a, b, names, shallow=False)[0] == names


def test_threads_per_run_decides_the_run_so_both_tools_and_run_json_record_it(tmp_path):
    one, two = (tiny_params(tmp_path, numerics={"threads_per_run": n}) for n in (1, 2))
    assert run_facts(one, CELL)["numerics"] == {"mode": "separate", "threads_per_run": 1}
    assert run_facts(two, CELL)["numerics"]["threads_per_run"] == 2
    assert run_fingerprint(one, CELL, 0, None) != run_fingerprint(two, CELL, 0, None)  # no reuse of its scratch
    packed = tiny_params(tmp_path, numerics={"mode": "packed"})
    assert run_fingerprint(one, CELL, 0, None) != run_fingerprint(packed, CELL, 0, None)
    for model in ("vgg", "dln"):
        assert "train.numerics" in param_keys("train", model=model)  # dvc.yaml lists the same (test_dag.py)
    # scheduling is no part of a run: parallel_runs changes neither facts nor fingerprint
    par = tiny_params(tmp_path, execution={"parallel_runs": 3})
    assert run_fingerprint(one, CELL, 0, None) == run_fingerprint(par, CELL, 0, None)


def test_threads_per_run_must_be_a_positive_int(tmp_path):
    from bnflow.errors import ConfigError

    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ConfigError, match=r"train\.numerics\.threads_per_run"):
            tiny_params(tmp_path, numerics={"threads_per_run": bad})


def test_threads_block_sets_then_restores_and_set_threads_refuses_nonsense():
    with thr.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="positive int"):
        thr.set_threads(0)


def test_torch_steps_start_at_the_fixed_step_threads():
    assert set(cli.TORCH_STEPS) == {"prepare", "train", "probe", "lrscan"}
    cli._setup_threads("summarize")  # no torch work: left alone
    assert torch.get_num_threads() == 2
    cli._setup_threads("probe")
    assert torch.get_num_threads() == thr.STEP_THREADS == 1

"""The train step: learning, determinism, resume after a kill, divergence as an outcome, atomic outputs."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bnflow import seeds
from bnflow.config import from_dict, merge, read_yaml, to_plain
from bnflow.data import make_synthetic, save_prepared
from bnflow.data.dln import save_problems
from bnflow.errors import OutputExistsError
from bnflow.io import RUN_TABLE
from bnflow.results import DENSE_TABLES
from bnflow.train.cell import train_cell
from bnflow.tasks import VggTask, run_facts
from conftest import ROOT, tiny_params, data_for

VALUE_COLUMNS = ["step", "split", "loss", "acc"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.npz"
    save_prepared(path, make_synthetic(0, 256, 64))
    return path


def run_cell(params, cell, data, root: Path, **kw):
    return train_cell(params, cell, data_for(cell, data), root / "runs" / cell, root / "ckpt" / cell, **kw)


def metrics(root: Path, cell: str, seed: int = 0) -> pd.DataFrame:
    return pd.read_csv(root / "runs" / cell / f"s{seed}" / RUN_TABLE.format("metrics"))


def test_vgg_and_dln_learn(tmp_path, dataset):
    p = tiny_params(tmp_path, vgg={"steps": 60, "checkpoint_steps": [0, 60]})
    run_cell(p, "vgg-bn-lr0.1", dataset, tmp_path)
    run_cell(p, "dln-standard-lr1e-06", dataset, tmp_path)
    vgg = metrics(tmp_path, "vgg-bn-lr0.1")
    train = vgg[vgg.split == "train"]
    assert train.loss.iloc[-5:].mean() < 0.8 * torch.log(torch.tensor(10.0)).item()  # below chance-level loss
    test = vgg[vgg.split == "test"]
    assert list(test.step) == [0, 10, 20, 30, 40, 50, 60] and test.acc.iloc[-1] > 0.2
    dln = metrics(tmp_path, "dln-standard-lr1e-06")
    assert dln.loss.iloc[-1] < dln.loss.iloc[0] and dln.acc.isna().all() and (dln.split == "train").all()
    run_dir = tmp_path / "runs" / "vgg-bn-lr0.1" / "s0"
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["status"] == "completed" and summary["n_steps"] == 60
    # run.json: deterministic facts only (issue 11); what computed it is in provenance.json, timings in the log
    assert set(summary) == {"run_id", "cell", "model", "variant", "lr", "seed", "status", "diverged",
                            "diverged_at_step", "n_steps", "step_budget", "fingerprint", "streams", "data", "params"}
    assert "path" not in summary["data"] and summary["data"]["n_train"] == 256
    # the params that decide the run: exactly what its fingerprint hashes (bnflow.tasks.run_facts)
    assert summary["params"] == run_facts(p, "vgg-bn-lr0.1")
    assert set(summary["params"]) == {"cell", "base", "model", "norm", "noise", "probes", "numerics"}
    assert summary["params"]["model"] == to_plain(p.train.vgg) and "execution" not in summary["params"]
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert set(prov) == {"code_revision", "packages", "device", "platform"}
    assert prov["packages"]["torch"] == torch.__version__.split("+")[0] and prov["device"] == {"device": "cpu"}
    assert list(pd.read_csv(run_dir / "metrics.csv.gz").columns) == VALUE_COLUMNS  # no wall_s, no penalty (wd = 0)
    timing = json.loads((Path(p.out_dir) / "logs" / "train" / "vgg-bn-lr0.1.timing.json").read_text())
    assert set(timing) == {"s0"} and timing["s0"]["wall_s"] > 0 and timing["s0"]["resumed_from_step"] is None
    assert set(timing["s0"]) == {"wall_s", "steps_per_s", "resumed_from_step", "command", "commit", "torch_threads"}
    ckpts = sorted(p.name for p in (tmp_path / "ckpt" / "vgg-bn-lr0.1" / "s0").iterdir())
    assert ckpts == ["manifest.json", "step000000.pt", "step000060.pt"]
    manifest = json.loads((tmp_path / "ckpt" / "vgg-bn-lr0.1" / "s0" / "manifest.json").read_text())
    assert manifest == {"steps": [0, 60], "diverged_at_step": None}
    ck = torch.load(tmp_path / "ckpt" / "vgg-bn-lr0.1" / "s0" / "step000060.pt", weights_only=True)
    assert ck["step"] == 60 and ck["meta"]["variant"] == "bn" and "blocks.0.1.running_mean" in ck["state_dict"]
    assert not (Path(p.out_dir) / ".partial").exists()


def test_same_seed_gives_identical_metrics_and_variants_share_data_order(tmp_path, dataset):
    p = tiny_params(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    run_cell(p, "vgg-noisy_bn-lr0.1", dataset, a)
    run_cell(p, "vgg-noisy_bn-lr0.1", dataset, b)
    pd.testing.assert_frame_equal(metrics(a, "vgg-noisy_bn-lr0.1")[VALUE_COLUMNS],
                                  metrics(b, "vgg-noisy_bn-lr0.1")[VALUE_COLUMNS])
    tasks = [VggTask(p.train, p.cell(c), 0, dataset, torch.device("cpu")) for c in ("vgg-standard-lr0.1", "vgg-bn-lr0.1")]
    for step in (0, 15, 16, 40):  # 16 steps per epoch: crosses epochs
        assert torch.equal(tasks[0].batch_indices(step), tasks[1].batch_indices(step))
    other_seed = VggTask(p.train, p.cell("vgg-bn-lr0.1"), 1, dataset, torch.device("cpu"))
    assert not torch.equal(other_seed.batch_indices(0), tasks[0].batch_indices(0))
    epoch = torch.cat([tasks[0].batch_indices(s) for s in range(16)])
    assert len(set(epoch.tolist())) == 256  # one epoch visits every image once


def test_same_params_rerun_gives_byte_identical_run_folders(tmp_path, dataset):
    """Issue 11: re-running the same params on CPU rewrites every committed file of a run byte for byte."""
    cell = "vgg-noisy_bn-lr0.1"
    folders = []
    for name in ("first", "second"):
        raw = to_plain(tiny_params(tmp_path / name))
        raw["train"]["probes"]["vgg"].update(every=15, ics_layers=[6], activation_layers=[2, 8])
        run_cell(from_dict(raw), cell, dataset, tmp_path / name)
        folders.append(tmp_path / name / "runs" / cell)
    files = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*") if p.is_file())
    assert {f.name for f in files} == {"metrics.csv.gz", "run.json", "provenance.json", "landscape.csv.gz",
                                       "ics.csv.gz", "act_channels.csv.gz", "act_units.csv.gz"}
    assert files == sorted(p.relative_to(folders[1]) for p in folders[1].rglob("*") if p.is_file())
    for f in files:
        assert (folders[0] / f).read_bytes() == (folders[1] / f).read_bytes(), f


@pytest.mark.parametrize("every", [0, 20], ids=["dense-off", "dense-on"])
def test_a_runs_tables_are_gzip_csvs_beside_its_json(tmp_path, every):
    """Each seed folder holds run.json, provenance.json and metrics.csv.gz (plus the dense `{name}.csv.gz` when dense
    probes are on), gzip-compressed, no plain .csv; the gz content is the tidy CSV the summaries read."""
    cell = "dln-bn-lr1e-06"
    p = tiny_params(tmp_path, seeds={"n": 2}, probes={"dln": {"every": every}})
    run_cell(p, cell, None, tmp_path)
    dense = {RUN_TABLE.format(name) for name in DENSE_TABLES} if every else set()
    for seed in (0, 1):
        folder = tmp_path / "runs" / cell / f"s{seed}"
        tables = {"metrics.csv.gz"} | dense
        assert {f.name for f in folder.iterdir()} == {"run.json", "provenance.json"} | tables
        assert not list(folder.glob("*.csv"))
        for name in tables:
            raw = (folder / name).read_bytes()
            assert raw[:2] == b"\x1f\x8b", f"{name} is not gzip"
            assert gzip.decompress(raw).decode().count("\n") >= 2, f"{name}: a header and rows"
        with gzip.open(folder / "metrics.csv.gz", "rt", newline="") as f:
            assert f.readline() == "step,split,loss,acc\n"
        m = pd.read_csv(folder / "metrics.csv.gz")
        assert list(m.columns) == VALUE_COLUMNS and len(m) > 1 and m.step.iloc[0] == 0 and (m.split == "train").all()


def test_weight_decay_penalty_is_logged_apart_from_the_data_loss(tmp_path, dataset):
    """The `loss` column is the data loss; ½·wd·‖θ‖² (what SGD's weight_decay adds) is the `penalty` column."""
    wd = 0.05
    p = tiny_params(tmp_path, vgg={"weight_decay": wd}, probes={"vgg": {"every": 0}})
    cell = "vgg-bn-lr0.1"
    run_cell(p, cell, dataset, tmp_path)
    m = metrics(tmp_path, cell)
    assert list(m.columns) == [*VALUE_COLUMNS, "penalty"]
    task = VggTask(p.train, p.cell(cell), 0, dataset, torch.device("cpu"))
    for step in (0, 10, 30):  # checkpoint steps: θ_step is on disk
        ck = torch.load(tmp_path / "ckpt" / cell / "s0" / f"step{step:06d}.pt", weights_only=True)
        task.model.load_state_dict(ck["state_dict"])
        expected = 0.5 * wd * sum(float((w.detach().double() ** 2).sum()) for w in task.model.parameters())
        rows = m[m.step == step]
        np.testing.assert_allclose(rows.penalty, expected, rtol=1e-5)  # train and test rows alike
        if step < 30:
            with torch.no_grad():
                batch = task.batch(step)
                data_loss = float(task.loss(task.model.train()(batch.x), batch.y))
            np.testing.assert_allclose(rows[rows.split == "train"].loss, data_loss, rtol=1e-5)


def test_resume_after_a_crash_is_bit_identical(tmp_path, dataset, monkeypatch):
    p = tiny_params(tmp_path)
    cell = "vgg-noisy_bn-lr0.1"  # noise generator state must survive the restart too
    run_cell(p, cell, dataset, tmp_path / "ref")

    crashed = tmp_path / "crashed"
    original = VggTask.batch

    def dies_at_step_23(self, step):
        if step == 23:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step)

    monkeypatch.setattr(VggTask, "batch", dies_at_step_23)
    with pytest.raises(KeyboardInterrupt):
        run_cell(p, cell, dataset, crashed)
    assert not (crashed / "runs" / cell).exists()  # nothing published
    assert (Path(p.out_dir) / ".partial" / cell / "state" / "s0" / "resume.pt").exists()
    monkeypatch.setattr(VggTask, "batch", original)
    summaries = run_cell(p, cell, dataset, crashed)
    assert summaries[0]["resumed_from_step"] == 21  # the last host sync (every 7 steps) before the crash
    pd.testing.assert_frame_equal(metrics(tmp_path / "ref", cell)[VALUE_COLUMNS], metrics(crashed, cell)[VALUE_COLUMNS])
    for name in ("step000010.pt", "step000030.pt"):
        ref = torch.load(tmp_path / "ref" / "ckpt" / cell / "s0" / name, weights_only=True)["state_dict"]
        got = torch.load(crashed / "ckpt" / cell / "s0" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_resume_state_from_other_params_is_not_used(tmp_path, dataset, monkeypatch):
    p = tiny_params(tmp_path)
    original = VggTask.batch
    monkeypatch.setattr(VggTask, "batch", lambda self, step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 23
                        else original(self, step))
    with pytest.raises(KeyboardInterrupt):
        run_cell(p, "vgg-bn-lr0.1", dataset, tmp_path / "x")
    monkeypatch.setattr(VggTask, "batch", original)
    changed = tiny_params(tmp_path, norm={"eps": 1e-3})
    summaries = run_cell(changed, "vgg-bn-lr0.1", dataset, tmp_path / "x")
    assert summaries[0]["resumed_from_step"] is None


def test_divergence_is_an_outcome_not_a_crash(tmp_path, dataset):
    p = tiny_params(tmp_path)
    raw = to_plain(p)
    raw["train"]["grid"]["vgg-standard-lr1000"] = {"model": "vgg", "variant": "standard", "lr": 1000.0}
    p = from_dict(raw)
    summaries = run_cell(p, "vgg-standard-lr1000", dataset, tmp_path)
    s = summaries[0]
    assert s["diverged"] and s["status"] == "diverged" and s["n_steps"] < p.train.vgg.steps
    m = metrics(tmp_path, "vgg-standard-lr1000")
    train = m[m.split == "train"]
    assert not pd.isna(train.loss.iloc[:-1]).any() or len(train) == 1
    assert not torch.isfinite(torch.tensor(train.loss.iloc[-1]))
    assert train.step.iloc[-1] == s["diverged_at_step"]

    # the steps after training still run on a grid holding only this diverged cell
    from bnflow.stats.step import run_stats
    from bnflow.summarize import summarize

    raw["train"]["grid"] = {"vgg-standard-lr1000": raw["train"]["grid"]["vgg-standard-lr1000"]}
    only = from_dict(raw)
    runs = summarize(only, tmp_path / "runs", tmp_path / "stats" / "runs.csv")
    row = runs.iloc[0]
    assert bool(row.diverged) and row.steps_to_acc90_censored and row.steps_to_acc90 == p.train.vgg.steps
    claims = run_stats(only, tmp_path / "stats" / "runs.csv", tmp_path / "stats")
    assert set(claims.verdict) == {"not_run_yet"}  # no claim has both arms in this one-cell grid


def test_completed_results_are_never_overwritten(tmp_path, dataset):
    p = tiny_params(tmp_path)
    run_cell(p, "dln-bn-lr1e-06", dataset, tmp_path)
    before = (tmp_path / "runs" / "dln-bn-lr1e-06" / "s0" / "metrics.csv.gz").read_bytes()
    with pytest.raises(OutputExistsError, match="already holds completed results"):
        run_cell(p, "dln-bn-lr1e-06", dataset, tmp_path)
    assert (tmp_path / "runs" / "dln-bn-lr1e-06" / "s0" / "metrics.csv.gz").read_bytes() == before
    run_cell(p, "dln-bn-lr1e-06", dataset, tmp_path, force=True)  # explicit


def test_streams_are_independent_and_keyed():
    assert seeds.stream_seed(0, 0, "init") != seeds.stream_seed(0, 0, "data")
    assert seeds.stream_seed(0, 0, "data") != seeds.stream_seed(0, 1, "data")
    assert seeds.stream_seed(0, 0, "data", 3) == seeds.stream_seed(0, 0, "data", 3)
    with pytest.raises(ValueError, match="unknown random stream"):
        seeds.stream_seed(0, 0, "dropout")


def test_progress_lines_reach_the_console_and_the_log_whatever_parallel_runs(tmp_path, dataset):
    """Issue 14: with parallel_runs > 1 progress lines reached only the console (every logs/train/*.log was empty)."""
    cell = "dln-bn-lr1e-06"
    raw = to_plain(tiny_params(tmp_path, seeds={"n": 2}, dln={"steps": 300, "checkpoint_steps": [0]},
                               probes={"dln": {"every": 0}},
                               execution={"parallel_runs": 2, "progress_every_s": 0.05, "resume_every_s": 3600,
                                          "sync_every": 50}))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    log = tmp_path / "logs" / "train.log"
    dln = tmp_path / "dln.npz"  # the DLN's own prepared data
    save_problems(dln, raw["train"]["seeds"]["base"], (0, 1), raw["train"]["dln"]["n_samples"], raw["train"]["dln"]["dim"])
    cmd = [sys.executable, "-m", "bnflow", "train", "--params", str(params_file), "--cell", cell, "--data",
           str(dln), "--runs-dir", str(tmp_path / "runs"), "--checkpoints-dir", str(tmp_path / "ckpt"),
           "--log", str(log)]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = log.read_text()
    for seed in (0, 1):
        line = re.compile(rf"bnflow\.train INFO dln/bn-lr1e-06-s{seed}: step \d+/300 \(\d+%\) [\d.]+ steps/s ETA")
        assert line.search(text) and line.search(proc.stderr), f"no progress line of s{seed}"
    assert f"{cell} s1: " in text  # the parent's timing line, written after the workers' lines


@pytest.mark.parametrize("how", ["CI=true", "--quiet"])
def test_ci_or_quiet_leave_warnings_and_errors_only(tmp_path, how):
    overlay = tmp_path / "synthetic.yaml"
    overlay.write_text("prepare: {source: synthetic, synthetic: {n_train: 200, n_test: 20}}\n")
    log = tmp_path / "prepare.log"
    cmd = [sys.executable, "-m", "bnflow", "prepare", "--params", str(ROOT / "params.yaml"), "--params", str(overlay),
           "--model", "vgg", "--output", str(tmp_path / "d.npz"), "--log", str(log)]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    loud = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and "INFO" in loud.stderr and "INFO" in log.read_text()
    quiet = subprocess.run([*cmd, "--force"] + (["--quiet"] if how == "--quiet" else []), cwd=ROOT,
                           capture_output=True, text=True, env=env | ({"CI": "true"} if how == "CI=true" else {}))
    assert quiet.returncode == 0 and "INFO" not in quiet.stderr and "INFO" not in log.read_text()


@pytest.mark.slow  # ~10 s idle, over a minute on a loaded 2-core machine (issue 14)
def test_sigkill_then_same_command_resumes_and_matches(tmp_path, dataset):
    """A real kill -9 of the CLI mid-run, then the same command: the results equal an uninterrupted run."""
    raw = merge(read_yaml(ROOT / "params.yaml"), read_yaml(ROOT / "workflow" / "quick.yaml"))
    raw["out_dir"] = str(tmp_path / "out")
    raw["train"] = merge(raw["train"], {"seeds": {"n": 1}, "execution": {"parallel_runs": 1, "resume_every_s": 0,
                                                                         "sync_every": 5},
                                        "vgg": {"steps": 200, "batch_size": 16, "eval_every": 100,
                                                "checkpoint_steps": [0, 200]}})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    cell = "vgg-bn-lr0.1"

    def command(root: Path) -> list[str]:
        return [sys.executable, "-m", "bnflow", "train", "--params", str(params_file), "--cell", cell, "--data",
                str(dataset), "--runs-dir", str(root / "runs" / cell), "--checkpoints-dir", str(root / "ckpt" / cell),
                "--quiet"]

    resume = tmp_path / "out" / ".partial" / cell / "state" / "s0" / "resume.pt"
    proc = subprocess.Popen(command(tmp_path / "killed"), cwd=ROOT, start_new_session=True)
    deadline = time.time() + 1800  # ends as soon as a resume state exists
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "runs" / cell).exists(), "killed before finishing: nothing may be published"
    subprocess.run(command(tmp_path / "killed"), cwd=ROOT, check=True)
    timing = json.loads((tmp_path / "out" / "logs" / "train" / f"{cell}.timing.json").read_text())["s0"]
    assert timing["resumed_from_step"] is not None and timing["resumed_from_step"] > 0
    subprocess.run(command(tmp_path / "ref"), cwd=ROOT, check=True)
    pd.testing.assert_frame_equal(metrics(tmp_path / "ref", cell)[VALUE_COLUMNS],
                                  metrics(tmp_path / "killed", cell)[VALUE_COLUMNS])


def test_only_an_exact_fp32_step_lends_its_gradient_to_the_probes():
    """Issue 12 / PROTOCOL §5: g and G must be as exact as the probes' own fp32 passes (the GPU test checks numbers)."""
    from bnflow.train.loop import can_lend_gradients

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert can_lend_gradients(cpu, "fp32") and not can_lend_gradients(cpu, "bf16")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for matmul, cudnn, lends in [(False, True, False), (True, False, False), (False, False, True)]:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
            assert can_lend_gradients(cuda, "fp32") is lends and not can_lend_gradients(cuda, "bf16")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
def test_cuda_graph_steps_match_eager_steps(tmp_path, dataset):
    """On a GPU, replaying the captured step gives the eager run's numbers (up to cuDNN non-determinism)."""
    eager = tiny_params(tmp_path, execution={"device": "cuda", "cuda_graphs": False})
    graphs = tiny_params(tmp_path, execution={"device": "cuda", "cuda_graphs": True})
    run_cell(eager, "vgg-bn-lr0.1", dataset, tmp_path / "eager")
    run_cell(graphs, "vgg-bn-lr0.1", dataset, tmp_path / "graphs")
    a, b = metrics(tmp_path / "eager", "vgg-bn-lr0.1"), metrics(tmp_path / "graphs", "vgg-bn-lr0.1")
    assert list(a.step) == list(b.step)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-3, atol=1e-4)

"""Faults: a kill at any write leaves no file a later step would accept; killed workflows recover."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import bnflow.train.cell as cell_module
from bnflow import io
from bnflow.config import merge, read_yaml, to_plain
from bnflow.data import make_synthetic, save_prepared
from bnflow.data.dln import save_problems
from bnflow.errors import DataError
from bnflow.probes.checkpoint import checkpoint_files, load_checkpoint, load_sealed, seal
from bnflow.summarize import write_runs_csv
from bnflow.stats import write_claims_csv, write_claims_json, write_claims_md
from bnflow.tasks import DlnTask, run_fingerprint
from bnflow.train.cell import train_cell
from bnflow.train.loop import save_checkpoint
from conftest import ROOT, tiny_params, data_for

WRITERS = {
    "table": lambda p: io.write_table(p, [{"step": 0, "loss": 1.0}]),
    "json": lambda p: io.write_json(p, {"a": 1}),
    "checkpoint": lambda p: save_checkpoint(p, torch.nn.Linear(2, 2), 0, {"cell": "x"}, []),
    "dataset": lambda p: save_prepared(p, make_synthetic(0, 20, 10)),
    "runs_csv": lambda p: write_runs_csv(pd.DataFrame({"a": [1.0]}), p),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_killed_before_its_rename_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch, kind):
    target = tmp_path / "out" / f"file.{kind}"
    target.parent.mkdir()
    target.write_bytes(b"previous complete result")

    def killed(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        WRITERS[kind](target)
    assert target.read_bytes() == b"previous complete result"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name], "temporary files left behind"


def test_claims_writers_are_atomic(tmp_path, monkeypatch):
    from bnflow.stats import COLUMNS

    row = {c: None for c in COLUMNS} | {"claim_id": "C1", "verdict": "inconclusive", "flags": "missing_arm",
                                        "n_a": 0, "n_b": 0, "ci_level": 0.95}
    df = pd.DataFrame([row], columns=list(COLUMNS))
    monkeypatch.setattr(os, "replace", lambda s, d: (_ for _ in ()).throw(KeyboardInterrupt()))
    for writer, name in ((write_claims_csv, "claims.csv"), (write_claims_json, "claims.json"),
                         (write_claims_md, "claims.md")):
        with pytest.raises(KeyboardInterrupt):
            writer(df, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_every_checkpoint_load_is_weights_only():
    loads = []
    for path in (ROOT / "bnflow").rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                loads.append((path.name, line.strip()))
    assert loads, "no torch.load found: update this test"
    assert all("weights_only=True" in line for _, line in loads), loads


def _workspace(tmp_path: Path) -> Path:
    from test_pipeline import workspace

    ws = workspace(tmp_path)
    quick = read_yaml(ws / "workflow" / "quick.yaml")
    # long enough to be killed mid-training, small enough for CI; a resume state at every host sync
    quick = merge(quick, {"train": {"vgg": {"steps": 300, "checkpoint_steps": [0, 300]},
                                    "execution": {"resume_every_s": 0}}})
    (ws / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    return ws


@pytest.mark.slow
def test_snakemake_rerun_incomplete_recovers_after_kill_9(tmp_path):
    ws = _workspace(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--config", "overlay=workflow/quick.yaml"]
    proc = subprocess.Popen(cmd, cwd=ws, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = ws / "results" / "quick" / ".partial"
    deadline = time.time() + 1800  # ends as soon as a resume state exists: only a hang reaches it
    while time.time() < deadline and proc.poll() is None and not list(partial.glob("*/state/*/resume.pt")):
        time.sleep(0.1)
    assert proc.poll() is None, "the workflow finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = ws / "results" / "quick" / "runs"
    killed_cells = [p.name for p in partial.iterdir()] if partial.exists() else []
    assert killed_cells and not any((runs / c).exists() for c in killed_cells), "a killed cell was published"
    # what the README tells a user after a kill -9 of Snakemake itself: unlock, then re-run the incomplete jobs
    subprocess.run([*cmd, "--unlock"], cwd=ws, check=True, capture_output=True)
    done = subprocess.run([*cmd, "--rerun-incomplete"], cwd=ws, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for cell in killed_cells:
        if cell.startswith(("vgg-", "dln-")):  # .partial also holds probe-* and lrscan scratch
            assert (runs / cell / "s0" / "run.json").exists()
    assert (ws / "results" / "quick" / "stats" / "claims.csv").exists()
    again = subprocess.run([*cmd, "-n"], cwd=ws, capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr


# ------------------------------------------------------------------- issue 13: stale, corrupt and missing pieces
CELL = "dln-bn-lr1e-06"  # tiny_params: 40 steps, checkpoints at 0, 20, 40, a resume state at every sync (7 steps)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.npz"
    save_prepared(path, make_synthetic(0, 256, 64))
    return path


def run_cell(params, data, root: Path, cell: str = CELL, **kw):
    return train_cell(params, cell, data_for(cell, data), root / "runs" / cell, root / "ckpt" / cell, **kw)


def killed_at(monkeypatch, seed: int, step: int) -> None:
    """The next training of `seed` is killed when it asks for step `step`'s batch (after the resume state of the
    last host sync before it was written)."""
    original = DlnTask.batch

    def batch(self, t):
        if self.seed == seed and t == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, t)

    monkeypatch.setattr(DlnTask, "batch", batch)


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit inside the largest tensor stored in a torch file: torch.load still reads it, without complaint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # the attack is silent without a content hash


def damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "bitflip":
        flip_tensor_byte(path)
    elif how == "deleted":
        path.unlink()
    elif how == "extra":  # a stale file of a step the params do not ask for
        shutil.copy(path, path.with_name("step000005.pt"))
    elif how == "misfit":  # intact and of these params, but not of this model (as after a code change)
        state = load_sealed(path, "resume state")
        state["model"].pop(sorted(state["model"])[-1])  # load_state_dict copies the others before it raises
        with open(path, "wb") as f:
            torch.save(seal(state), f)
    else:
        raise ValueError(how)


def assert_published_like(root: Path, ref: Path, params, seeds=(0,)) -> None:
    """Every published file of the cell equals the uninterrupted reference run's; every checkpoint verifies."""
    for seed in seeds:
        for name in ("metrics.csv.gz", "run.json"):
            got = (root / "runs" / CELL / f"s{seed}" / name).read_bytes()
            assert got == (ref / "runs" / CELL / f"s{seed}" / name).read_bytes(), (seed, name)
        run = json.loads((root / "runs" / CELL / f"s{seed}" / "run.json").read_text())
        folder = root / "ckpt" / CELL / f"s{seed}"
        files = checkpoint_files(folder, params.train.dln.checkpoint_steps, what="x", hint="")
        assert [p.name for p in files] == ["step000000.pt", "step000020.pt", "step000040.pt"]
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", *[p.name for p in files]]
        for path in files:
            load_checkpoint(path, cell_id=CELL, seed=seed, fingerprint=run["fingerprint"])


def test_a_finished_seed_of_other_params_is_trained_again(tmp_path, dataset, monkeypatch, caplog):
    """13.2: kill after seed 0 finished, change train.seeds.base, re-run: no seed of the old params is published."""
    old = tiny_params(tmp_path, seeds={"n": 2})
    killed_at(monkeypatch, seed=1, step=15)
    with pytest.raises(KeyboardInterrupt):
        run_cell(old, dataset, tmp_path / "x")
    scratch = Path(old.out_dir) / ".partial" / CELL
    assert (scratch / "runs" / "s0" / "run.json").exists() and not (scratch / "runs" / "s1" / "run.json").exists()
    monkeypatch.undo()
    new = tiny_params(tmp_path, seeds={"n": 2, "base": 7})
    with caplog.at_level(logging.WARNING, logger="bnflow.train"):
        run_cell(new, dataset, tmp_path / "x")
    assert "holds a finished run of other params" in caplog.text and "s0" in caplog.text
    run_cell(new, dataset, tmp_path / "ref")
    assert_published_like(tmp_path / "x", tmp_path / "ref", new, seeds=(0, 1))
    fingerprints = {json.loads((tmp_path / "x" / "runs" / CELL / f"s{s}" / "run.json").read_text())["fingerprint"]
                    for s in (0, 1)}
    old_s0 = run_fingerprint(old, CELL, 0, None)
    assert old_s0 not in fingerprints and len(fingerprints) == 2


@pytest.mark.parametrize("how", ["empty", "truncated", "bitflip", "misfit"])
def test_a_damaged_resume_state_is_reported_and_the_run_restarts(tmp_path, dataset, monkeypatch, caplog, how):
    """13.5: a damaged resume.pt gave a bare traceback on every re-run; now: a warning naming it, a fresh start."""
    p = tiny_params(tmp_path)
    killed_at(monkeypatch, seed=0, step=23)
    with pytest.raises(KeyboardInterrupt):
        run_cell(p, dataset, tmp_path / "x")
    resume = Path(p.out_dir) / ".partial" / CELL / "state" / "s0" / "resume.pt"
    damage(resume, how)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="bnflow.train"):
        summaries = run_cell(p, dataset, tmp_path / "x")
    assert f"{resume}: " in caplog.text and "this run starts again from step 0" in caplog.text
    assert summaries[0]["resumed_from_step"] is None
    run_cell(p, dataset, tmp_path / "ref")
    assert_published_like(tmp_path / "x", tmp_path / "ref", p)


def test_a_resume_state_whose_checkpoints_are_damaged_is_not_used(tmp_path, dataset, monkeypatch, caplog):
    p = tiny_params(tmp_path)
    killed_at(monkeypatch, seed=0, step=30)  # the resume state (step 28) builds on checkpoints 0 and 20
    with pytest.raises(KeyboardInterrupt):
        run_cell(p, dataset, tmp_path / "x")
    damage(Path(p.out_dir) / ".partial" / CELL / "checkpoints" / "s0" / "step000020.pt", "bitflip")
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="bnflow.train"):
        summaries = run_cell(p, dataset, tmp_path / "x")
    assert "the checkpoint of step 20 it builds on is unusable" in caplog.text and "sha256" in caplog.text
    assert summaries[0]["resumed_from_step"] is None
    run_cell(p, dataset, tmp_path / "ref")
    assert_published_like(tmp_path / "x", tmp_path / "ref", p)


@pytest.mark.parametrize("how", ["truncated", "bitflip", "deleted", "extra"])
def test_a_damaged_checkpoint_of_a_finished_seed_is_never_published(tmp_path, dataset, monkeypatch, caplog, how):
    """13.5: a checkpoint truncated (or flipped, removed, joined by a stray file) in .partial/ after its seed
    finished was published as it was; now the seed is trained again before the cell is published."""
    p = tiny_params(tmp_path, seeds={"n": 2})
    killed_at(monkeypatch, seed=1, step=15)
    with pytest.raises(KeyboardInterrupt):
        run_cell(p, dataset, tmp_path / "x")
    target = Path(p.out_dir) / ".partial" / CELL / "checkpoints" / "s0" / "step000020.pt"
    damage(target, how)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="bnflow.train"):
        run_cell(p, dataset, tmp_path / "x")
    assert "s0: not publishing it" in caplog.text and "training this seed again" in caplog.text
    assert str(target.parent) in caplog.text
    run_cell(p, dataset, tmp_path / "ref")
    assert_published_like(tmp_path / "x", tmp_path / "ref", p, seeds=(0, 1))


@pytest.mark.parametrize("checkpoints_removed", [False, True])
def test_a_job_killed_between_the_two_publishing_renames_is_finished(tmp_path, dataset, monkeypatch, caplog,
                                                                     checkpoints_removed):
    """13.5: killed after the checkpoints were published and before the runs were, then (attack) the published
    checkpoints removed: the old code raised FileNotFoundError on every re-run."""
    p = tiny_params(tmp_path)
    published = []
    original = cell_module.publish_dir

    def killed_after_the_first(src, dst, *, force=False):
        if published:
            raise KeyboardInterrupt("killed between the renames")
        published.append(dst)
        original(src, dst, force=force)

    monkeypatch.setattr(cell_module, "publish_dir", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        run_cell(p, dataset, tmp_path / "x")
    monkeypatch.undo()
    assert published == [tmp_path / "x" / "ckpt" / CELL] and not (tmp_path / "x" / "runs" / CELL).exists()
    if checkpoints_removed:
        shutil.rmtree(tmp_path / "x" / "ckpt" / CELL)
    with caplog.at_level(logging.WARNING, logger="bnflow.train"):
        summaries = run_cell(p, dataset, tmp_path / "x")
    assert summaries[0]["skipped"] is not checkpoints_removed  # re-trained only when its checkpoints are gone
    assert ("not publishing it" in caplog.text) is checkpoints_removed
    run_cell(p, dataset, tmp_path / "ref")
    assert_published_like(tmp_path / "x", tmp_path / "ref", p)


def test_a_published_cell_with_a_missing_seed_folder_is_refused_with_the_command_that_rebuilds_it(tmp_path, dataset):
    p = tiny_params(tmp_path, seeds={"n": 2})
    run_cell(p, dataset, tmp_path)
    shutil.rmtree(tmp_path / "runs" / CELL / "s1")
    with pytest.raises(DataError, match=rf"runs/{CELL}: the published cell {CELL} is incomplete \(no s1\); "
                                        rf"rebuild it: `rm -rf .*`, then re-run snakemake or `dvc repro train@{CELL}`"
                                        r" \(or run this train command again with --force\)"):
        run_cell(p, dataset, tmp_path)
    run_cell(p, dataset, tmp_path, force=True)
    assert (tmp_path / "runs" / CELL / "s1" / "run.json").exists()
    shutil.rmtree(tmp_path / "ckpt" / CELL)  # committed runs, checkpoints not fetched
    with pytest.raises(DataError, match=rf"ckpt/{CELL}: missing, while the cell {CELL} is published in .*runs/{CELL}; "
                                        r"fetch it \(`dvc pull`\) or rebuild it"):
        run_cell(p, dataset, tmp_path)


def _children(pid: int) -> list[int]:
    """Pool workers (multiprocessing spawn) whose parent is `pid`."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_exit_when_the_main_process_alone_is_killed(tmp_path, dataset):
    """13.6: kill -9 of the train CLI's main process (not its process group) used to leave its workers training."""
    raw = to_plain(tiny_params(tmp_path, seeds={"n": 2}, dln={"steps": 10_000_000, "checkpoint_steps": [0]},
                               execution={"parallel_runs": 2, "resume_every_s": 3600, "sync_every": 100}))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    dln = tmp_path / "dln.npz"  # the DLN's own prepared data
    save_problems(dln, raw["train"]["seeds"]["base"], (0, 1), raw["train"]["dln"]["n_samples"], raw["train"]["dln"]["dim"])
    cmd = [sys.executable, "-m", "bnflow", "train", "--params", str(params_file), "--cell", CELL, "--data",
           str(dln), "--runs-dir", str(tmp_path / "runs" / CELL), "--checkpoints-dir",
           str(tmp_path / "ckpt" / CELL), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    states = [Path(raw["out_dir"]) / ".partial" / CELL / "state" / f"s{s}" for s in (0, 1)]
    workers: list[int] = []
    try:
        deadline = time.time() + 1800  # ends once both resume states exist
        while proc.poll() is None and time.time() < deadline and not all(s.exists() for s in states):
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) == 2, "both workers must be training before the kill"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait()
        deadline = time.time() + 600  # ends once the workers are gone
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived the main process"
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

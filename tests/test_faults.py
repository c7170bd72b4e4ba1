"""Faults: a kill at any write leaves no file a later step would accept; killed workflows recover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bnflow import io
from bnflow.config import merge, read_yaml
from bnflow.data import make_synthetic, save_prepared
from bnflow.summarize import write_runs_csv
from bnflow.stats import write_claims_csv, write_claims_json, write_claims_md
from bnflow.train.loop import save_checkpoint
from conftest import ROOT

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

    row = {c: None for c in COLUMNS} | {"claim_id": "C1", "verdict": "inconclusive", "flags": "missing_arm"}
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
    deadline = time.time() + 180
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

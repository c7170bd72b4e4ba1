"""End to end on CPU: the quick DAG through Snakemake, and DVC re-running only what a params edit touches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnflow.config import merge, read_yaml
from conftest import ROOT

pytestmark = pytest.mark.slow
SHRINK = {"prepare": {"synthetic": {"n_train": 400, "n_test": 100}},
          "train": {"vgg": {"steps": 40, "eval_every": 20, "checkpoint_steps": [0, 40]},
                    "dln": {"depth": 6, "steps": 60, "checkpoint_steps": [0, 60]},
                    "probes": {"dln": {"ics_layers": [2, 4], "activation_layers": [1, 6]}}},
          "probe": {"dln": {"ics_layers": [2, 4], "activation_layers": [1, 6]}}}


def workspace(tmp_path: Path) -> Path:
    """A scratch copy of the workflow files (results land under it, never in the checkout)."""
    for name in ("Snakefile", "dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    shutil.copytree(ROOT / "bnflow", tmp_path / "bnflow", ignore=shutil.ignore_patterns("__pycache__"))
    quick = merge(read_yaml(ROOT / "workflow" / "quick.yaml"), SHRINK)
    (tmp_path / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    return tmp_path


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def job_counts(dry_run: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run."""
    table = dry_run.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {name: int(n) for name, n in (line.split() for line in table if line.strip())}


def test_quick_dag_runs_end_to_end_with_snakemake(tmp_path):
    ws = workspace(tmp_path)
    smk = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=1", "--config",
           "overlay=workflow/quick.yaml"]
    run(smk, ws)
    out = ws / "results" / "quick"
    assert {p.name for p in (out / "figures").iterdir()} >= {"fig01_accuracy.png", "fig01_accuracy.svg"}
    report = (out / "REPORT.md").read_text()
    assert "](figures/fig01_accuracy.png)" in report and "**C1**" in report  # figures and claim sentences
    claims = pd.read_csv(out / "stats" / "claims.csv")
    assert len(claims) == 19 and set(claims.verdict) <= {"supported", "contradicted", "inconclusive"}
    assert (out / "stats" / "claims.md").read_text().startswith("# Claims")
    assert len(pd.read_csv(out / "stats" / "runs.csv")) == 8
    assert (out / "probes" / "vgg-bn-lr0.1" / "s1" / "landscape.csv").exists()
    for cell in ("vgg-standard-lr0.1", "vgg-bn-lr0.1", "dln-standard-lr1e-06", "dln-bn-lr1e-06"):
        for seed in (0, 1):
            m = pd.read_csv(out / "runs" / cell / f"s{seed}" / "metrics.csv")
            assert len(m) > 5 and json.loads((out / "runs" / cell / f"s{seed}" / "run.json").read_text())["n_steps"] > 0
    assert not (ws / "results" / "runs").exists(), "the quick run must not write into the paper's results"
    assert "Nothing to be done" in run([*smk, "-n"], ws)
    # editing a training param re-runs the trainings of that model and what follows, not prepare
    quick = read_yaml(ws / "workflow" / "quick.yaml")
    quick["train"]["dln"]["steps"] = 50
    quick["train"]["dln"]["checkpoint_steps"] = [0, 50]
    (ws / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    plan = job_counts(run([*smk, "-n"], ws))
    assert plan == {"train": 2, "probe": 2, "lrscan": 1, "summarize": 1, "stats": 1, "figures": 1, "all": 1,
                    "total": 9}, plan
    # editing only the checkpoint-wise probe params re-runs probing (and what reads it), never training
    quick = read_yaml(ws / "workflow" / "quick.yaml")
    quick["train"]["dln"]["steps"] = SHRINK["train"]["dln"]["steps"]
    quick["train"]["dln"]["checkpoint_steps"] = SHRINK["train"]["dln"]["checkpoint_steps"]
    quick["probe"]["direction"] = "random"
    (ws / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    plan = job_counts(run([*smk, "-n"], ws))
    assert plan == {"probe": 4, "summarize": 1, "stats": 1, "figures": 1, "all": 1, "total": 8}, plan


def test_dvc_repro_after_a_params_edit_reruns_only_what_changed(tmp_path):
    ws = workspace(tmp_path)
    params = merge(read_yaml(ROOT / "params.yaml"), read_yaml(ws / "workflow" / "quick.yaml"))
    params["train"]["grid"] = {k: v for k, v in params["train"]["grid"].items() if k in ("vgg-bn-lr0.1", "dln-bn-lr1e-06")}
    params["train"]["seeds"]["n"] = 1
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], ws)
    run([sys.executable, "-m", "dvc", "init", "-q"], ws)
    run([sys.executable, "-m", "dvc", "repro", "-q"], ws)
    assert (ws / "results" / "quick" / "figures" / "fig01_accuracy.png").exists()
    status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], ws).splitlines()[-1] or "{}")
    assert status == {}

    params["train"]["dln"]["steps"] = 50
    params["train"]["dln"]["checkpoint_steps"] = [0, 50]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], ws).splitlines()[-1]))
    assert changed == {"train@dln-bn-lr1e-06", "lrscan"}, changed  # the scan trains DLNs with train.dln too
    log = run([sys.executable, "-m", "dvc", "repro"], ws)
    assert "Running stage 'train@dln-bn-lr1e-06'" in log and "Running stage 'figures'" in log
    assert "Running stage 'prepare'" not in log and "Running stage 'train@vgg-bn-lr0.1'" not in log
    assert (ws / "results" / "quick" / "lrscan" / "thresholds.csv").exists()
    m = pd.read_csv(ws / "results" / "quick" / "runs" / "dln-bn-lr1e-06" / "s0" / "metrics.csv")
    assert m.step.max() == 49

    def changed_after(edit) -> set[str]:
        edit(params)
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return set(json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], ws).splitlines()[-1]))

    # probe params re-run probing only (never training); claims re-run the stats only
    assert changed_after(lambda p: p["probe"].update(direction="random")) == {"probe@vgg-bn-lr0.1",
                                                                              "probe@dln-bn-lr1e-06"}
    log = run([sys.executable, "-m", "dvc", "repro"], ws)
    assert "Running stage 'probe@vgg-bn-lr0.1'" in log and "Running stage 'train@" not in log
    assert changed_after(lambda p: p["claims"][0].update(alpha=0.01)) == {"stats"}

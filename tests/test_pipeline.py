"""End to end on CPU: the quick DAG through Snakemake; DVC re-running only what a params edit touches; committed
results that re-run to an empty diff; and a fresh clone (committed results, dvc.lock, no checkpoints or data) on
which both tools plan exactly what a params edit affects."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnflow.config import merge, read_yaml
from bnflow.vocab import MODELS
from conftest import ROOT, copy_params

pytestmark = pytest.mark.slow
SHRINK = {"prepare": {"synthetic": {"n_train": 400, "n_test": 100}},
          "train": {"vgg": {"steps": 40, "eval_every": 20, "checkpoint_steps": [0, 40]},
                    # the DVC tests' grid trains the reduced-scale VGG (dvc.yaml prepares vgg_cpu, not vgg): the same
                    # narrow net as the quick overlay's vgg
                    "vgg_cpu": {"width_mult": 0.125, "steps": 40, "batch_size": 32, "log_every": 5, "eval_every": 20,
                                "eval_batch_size": 100, "checkpoint_steps": [0, 40]},
                    "dln": {"depth": 6, "steps": 60, "checkpoint_steps": [0, 60]},
                    "probes": {"dln": {"ics_layers": [2, 4], "activation_layers": [1, 6]}}},
          "probe": {"dln": {"ics_layers": [2, 4], "activation_layers": [1, 6]}},
          # the summaries' windows within these runs (40 VGG steps logged every 5: 9 points); the params checks refuse
          # longer ones, which the summaries once cut to the run silently (so the numbers are the same)
          "summarize": {"auc_steps": 40, "smooth_window": 5, "final_window": 9}}
SMALL_GRID = {"vgg_cpu-bn-lr0.1": {"model": "vgg_cpu", "variant": "bn", "lr": 0.1},
              "dln-bn-lr1e-06": {"model": "dln", "variant": "bn", "lr": 1.0e-6}}
PY = sys.executable


def workspace(tmp_path: Path) -> Path:
    """A scratch copy of the workflow files (results land under it, never in the checkout)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    copy_params(tmp_path)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    shutil.copytree(ROOT / "bnflow", tmp_path / "bnflow", ignore=shutil.ignore_patterns("__pycache__"))
    quick = merge(read_yaml(ROOT / "workflow" / "quick.yaml"), SHRINK)
    (tmp_path / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    return tmp_path


def small_params(ws: Path, **changes) -> dict:
    """params.yaml = the quick overlay merged in, a two-cell grid, one seed, written to results/ (what DVC reads)."""
    params = merge(read_yaml(ROOT / "params.yaml"), read_yaml(ws / "workflow" / "quick.yaml"))
    params["out_dir"] = "results"
    params["train"]["grid"] = SMALL_GRID
    params["train"]["seeds"]["n"] = dict.fromkeys(MODELS, 1)  # params.yaml counts per family (what DVC tracks)
    params["lrscan"]["seeds"] = 1
    params["lrscan"]["models"] = ["dln"]  # the grid's families with an lr scan (vgg_cpu has none)
    params = merge(params, changes)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run(cmd: list[str], cwd: Path, ok: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def job_counts(dry_run: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run ({} when there is nothing to do)."""
    if "Job stats:" not in dry_run:
        assert "Nothing to be done" in dry_run, dry_run[-2000:]
        return {}
    table = dry_run.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {name: int(n) for name, n in (line.split() for line in table if line.strip())}


def dvc_changed(ws: Path) -> dict[str, list]:
    """dvc status as {stage: [what changed]}, leaving out cached files (data, checkpoints) that are only absent from
    the workspace and cache: a fresh clone's state, not a change."""
    status = json.loads(run([PY, "-m", "dvc", "status", "--json"], ws).splitlines()[-1] or "{}")
    out = {}
    for stage, changes in status.items():
        real = [c for c in changes if not (isinstance(c, dict) and set(c) <= {"changed outs", "changed deps"}
                                         and all(state in ("deleted", "not in cache") for v in c.values()
                                                 for state in v.values()))]
        if real:
            out[stage] = real
    return out


def dvc_plan(ws: Path) -> set[str]:
    """The stages a plain `dvc repro --dry` would run."""
    log = run([PY, "-m", "dvc", "repro", "--dry"], ws)
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


def test_quick_dag_runs_end_to_end_with_snakemake(tmp_path):
    ws = workspace(tmp_path)
    smk = [PY, "-m", "snakemake", "--cores", "2", "--resources", "gpu=1", "--config", "overlay=workflow/quick.yaml"]
    run(smk, ws)
    out = ws / "results" / "quick"
    assert {p.name for p in (out / "figures").iterdir()} >= {"fig01_accuracy.png", "fig01_accuracy.svg"}
    report = (out / "REPORT.md").read_text()
    assert "](figures/fig01_accuracy.png)" in report, report[:3000]  # the figures
    assert "| C1 | paper |" in report and "\n##### C1\n" in report  # the verdict table and the claims' sentences
    assert (out / "stats" / "claims.md").read_text().startswith("# Claims")
    assert len(pd.read_csv(out / "stats" / "runs.csv")) == 8
    assert (out / "probes" / "vgg-bn-lr0.1" / "s1" / "landscape.csv").exists()
    assert list((out / "plots" / "train_loss").glob("*.csv"))  # dvc plots data
    assert not (ws / "results" / "runs").exists(), "the quick run must not write into the paper's results"
    assert job_counts(run([*smk, "-n"], ws)) == {}
    # editing a training param re-runs the trainings of that model and what follows, not prepare
    quick = read_yaml(ws / "workflow" / "quick.yaml")
    quick["train"]["dln"]["steps"] = 50
    quick["train"]["dln"]["checkpoint_steps"] = [0, 50]
    (ws / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    plan = job_counts(run([*smk, "-n"], ws))
    assert plan == {"train": 2, "probe": 2, "lrscan": 1, "summarize": 1, "stats": 1, "figures": 1, "all": 1,
                    "total": 9}, plan
    # editing only the checkpoint-wise probe params re-runs probing (and what reads it), never training
    quick["train"]["dln"]["steps"] = SHRINK["train"]["dln"]["steps"]
    quick["train"]["dln"]["checkpoint_steps"] = SHRINK["train"]["dln"]["checkpoint_steps"]
    quick["probe"]["direction"] = "random"
    (ws / "workflow" / "quick.yaml").write_text(yaml.safe_dump(quick))
    plan = job_counts(run([*smk, "-n"], ws))
    assert plan == {"probe": 4, "summarize": 1, "stats": 1, "figures": 1, "all": 1, "total": 8}, plan
    # a subset of cells: only the DLN cells train (here: nothing to do, they are current)
    subset = [*smk[:-2], "-n", "--config", "overlay=workflow/quick.yaml", "cells=dln-*"]  # one --config, two keys
    assert job_counts(run(subset, ws)).get("train") is None


def test_dvc_repro_after_a_params_edit_reruns_only_what_changed(tmp_path):
    ws = workspace(tmp_path)
    params = small_params(ws)
    run(["git", "init", "-q"], ws)
    run([PY, "-m", "dvc", "init", "-q"], ws)
    run([PY, "-m", "dvc", "repro", "-q"], ws)
    assert (ws / "results" / "figures" / "fig01_accuracy_vgg_cpu.png").exists()
    assert dvc_changed(ws) == {}

    def edit(change: dict) -> set[str]:
        nonlocal params
        params = merge(params, change)
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return set(dvc_changed(ws))

    # a DLN training edit re-trains the DLN cell and its lr scan; never prepare or the VGG cell
    assert edit({"train": {"dln": {"steps": 50, "checkpoint_steps": [0, 50]}}}) == {
        "train@dln-bn-lr1e-06", "lrscan@dln"}
    log = run([PY, "-m", "dvc", "repro"], ws)
    assert "Running stage 'train@dln-bn-lr1e-06'" in log and "Running stage 'figures'" in log
    assert "Running stage 'prepare@" not in log and "Running stage 'train@vgg_cpu-bn-lr0.1'" not in log
    assert pd.read_csv(ws / "results" / "runs" / "dln-bn-lr1e-06" / "s0" / "metrics.csv.gz").step.max() == 49
    # probe params re-run probing only (never training); claims re-run the stats only
    assert edit({"probe": {"direction": "random"}}) == {"probe@vgg_cpu-bn-lr0.1", "probe@dln-bn-lr1e-06"}
    log = run([PY, "-m", "dvc", "repro"], ws)
    assert "Running stage 'probe@vgg_cpu-bn-lr0.1'" in log and "Running stage 'train@" not in log
    params["claims"][0]["alpha"] = 0.01
    assert edit({}) == {"stats"}


def test_committed_results_rerun_to_an_empty_diff_and_a_fresh_clone_plans_only_what_an_edit_touches(tmp_path):
    origin = workspace(tmp_path / "origin")
    small_params(origin)
    run(["git", "init", "-q"], origin)
    run(["git", "config", "user.email", "t@example.com"], origin)
    run(["git", "config", "user.name", "t"], origin)
    run([PY, "-m", "dvc", "init", "-q"], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-qm", "code"], origin)
    run([PY, "-m", "dvc", "repro", "-q"], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-qm", "results"], origin)
    committed = run(["git", "ls-files", "results"], origin).split()
    # the large files stay out of git: git keeps their .dvc files (written by the steps) and the data's manifests
    large = {p for p in committed if p.startswith(("results/checkpoints", "results/data", "results/probes_full"))}
    cells = ("dln-bn-lr1e-06", "vgg_cpu-bn-lr0.1")
    assert large == {*(f"results/{d}/{c}.dvc" for d in ("checkpoints", "probes_full") for c in cells),
                     *(f"results/data/{m}.{e}" for m in ("dln", "vgg_cpu") for e in ("json", "npz.dvc"))}, large

    # the same params re-run (every stage forced): every committed file is byte-identical
    run([PY, "-m", "dvc", "repro", "-f", "-q"], origin)
    assert run(["git", "status", "--porcelain", "--", "results", "dvc.lock"], origin).strip() == ""

    # Snakemake and DVC in turns: DVC re-runs summarize, gets the same runs.csv and skips stats; Snakemake, which
    # compares file times, must not re-run stats and figures for that
    smk = [PY, "-m", "snakemake", "--cores", "1", "--resources", "gpu=1", "-n"]
    assert job_counts(run(smk, origin)) == {}  # its params stamps now exist
    run([PY, "-m", "dvc", "repro", "-f", "-s", "summarize"], origin)
    assert "Stage 'stats' didn't change" in run([PY, "-m", "dvc", "repro"], origin)
    assert job_counts(run(smk, origin)) == {}

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert job_counts(run(smk, clone)) == {}, "a fresh clone must not re-run committed results"
    assert dvc_changed(clone) == {} and dvc_plan(clone) == set()
    # a forced run needs the data the clone lacks: it is declared, so prepared, not found missing mid-run
    forced = job_counts(run([*smk, "--forcerun", "train"], clone))
    assert forced["prepare"] == 2 and forced["train"] == 2, forced

    params = read_yaml(clone / "params.yaml")
    params["stats"]["ci_level"] = 0.9
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert job_counts(run(smk, clone)) == {"stats": 1, "figures": 1, "all": 1, "total": 3}
    assert set(dvc_changed(clone)) == {"stats"} and dvc_plan(clone) == {"stats"}  # figures: if claims.md changes
    log = run([PY, "-m", "dvc", "repro"], clone)  # plain: the DVC cache the clone lacks makes nothing re-run
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}
    # figures follow only if claims.md's content changed (with one seed per arm there is no CI to change)
    assert "stats" in ran and ran <= {"stats", "figures"}, log[-2000:]

    params["probe"]["direction"] = "random"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(smk, clone)
    # probing needs the data (prepared again: deterministic, no re-training) and the checkpoints (named, not re-made)
    assert job_counts(out) == {"prepare": 2, "probe": 2, "summarize": 1, "stats": 1, "figures": 1, "all": 1,
                               "total": 8}
    assert "dvc pull results/checkpoints/vgg_cpu-bn-lr0.1" in out  # said, not silently re-trained
    assert set(dvc_changed(clone)) == {"probe@vgg_cpu-bn-lr0.1", "probe@dln-bn-lr1e-06"}
    failed = run([PY, "-m", "dvc", "repro"], clone, ok=False)
    # the probe step stops before any work, naming the absent checkpoints and both ways to get them: no re-training
    assert re.search(r"results/checkpoints/(dln|vgg_cpu)-\S+: not in the workspace .*`dvc pull results/checkpoints/"
                     r"(dln|vgg_cpu)-\S+`, or re-train the cell \(`dvc repro -f -s train@", failed), failed[-1500:]
    assert "Running stage 'train@" not in failed and "Running stage 'prepare@" not in failed

    # a training edit on the clone re-trains the cell: its data, absent, is rebuilt and checked against the committed
    # manifest (no prepare stage), and the step records its new checkpoints in the DVC cache (.dvc file rewritten)
    run(["git", "checkout", "-q", "params.yaml"], clone)
    params = merge(read_yaml(clone / "params.yaml"), {"train": {"dln": {"steps": 50, "checkpoint_steps": [0, 50]}}})
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert dvc_plan(clone) >= {"train@dln-bn-lr1e-06"}
    log = run([PY, "-m", "dvc", "repro"], clone)
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}
    assert "train@dln-bn-lr1e-06" in ran and not any(s.startswith("prepare@") or "vgg_cpu" in s for s in ran), ran
    assert "results/data/dln.npz: not in the workspace" in log and (clone / "results/data/dln.npz").is_file()
    assert "checkpoints/dln-bn-lr1e-06.dvc" in run(["git", "status", "--porcelain"], clone)
    assert dvc_changed(clone) == {} and dvc_plan(clone) == set()

"""Issue 26, from the user's side: hostile params never reach a shell under `dvc repro`; a refused edit or a failed
step never deletes committed results (issue 24); Snakemake's and DVC's runs of one step take turns; a full disk gives
one line and a retry that works."""

from __future__ import annotations

import errno
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bnflow import cli
from bnflow.config import read_yaml
from bnflow.io import step_lock
from conftest import ROOT

PY = sys.executable
STATS_FILES = ("claims.csv", "claims.json", "claims.md")


def dvc_workspace(tmp_path: Path, **changes) -> Path:
    """A DVC project (no git) with this checkout's workflow and code, params.yaml with `changes` applied on top."""
    from test_pipeline import workspace

    ws = workspace(tmp_path / "ws")
    params = read_yaml(ws / "params.yaml")
    for key, value in changes.items():  # dotted keys; a value of None deletes the key
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([PY, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


# ------------------------------------------------------------------------------------ 26.1: no shell through DVC
HOSTILE_OUT_DIR = "results/x'; touch MARKER; echo '"
HOSTILE_CELL = "dln-bn-lr1e-06;touch MARKER;echo"


@pytest.mark.slow
def test_a_hostile_out_dir_never_runs_under_dvc_repro_nor_snakemake(tmp_path):
    ws = dvc_workspace(tmp_path, out_dir=HOSTILE_OUT_DIR)
    proc = run([PY, "-m", "dvc", "repro", "--single-item", "prepare@dln"], ws)
    assert not (ws / "MARKER").exists(), "the out_dir's shell text ran under dvc repro"
    assert proc.returncode != 0 and "out_dir" in proc.stdout + proc.stderr and "not a safe path" in proc.stderr
    proc = run([PY, "-m", "snakemake", "-n", "--cores", "1"], ws)
    assert proc.returncode != 0 and "out_dir" in proc.stderr and not (ws / "MARKER").exists()


@pytest.mark.slow
def test_a_hostile_grid_cell_key_never_runs_under_dvc_repro_nor_snakemake(tmp_path):
    grid = read_yaml(ROOT / "params.yaml")["train"]["grid"]
    ws = dvc_workspace(tmp_path, **{"train.grid": {HOSTILE_CELL: {"model": "dln", "variant": "bn", "lr": 1e-6},
                                                   **{k: v for k, v in grid.items() if k.startswith("dln-")}}})
    manifest = ws / "results" / "data" / "dln.json"  # the stages' inputs, so that DVC runs their commands at once
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}\n")
    (ws / "results" / "runs" / HOSTILE_CELL).mkdir(parents=True)
    for step in ("train", "probe"):
        proc = run([PY, "-m", "dvc", "repro", "--single-item", f"{step}@{HOSTILE_CELL}"], ws)
        assert not (ws / "MARKER").exists(), f"the cell key's shell text ran under dvc repro {step}"
        assert proc.returncode != 0 and f"train.grid.{HOSTILE_CELL}: id does not match" in proc.stderr, proc.stderr
    proc = run([PY, "-m", "snakemake", "-n", "--cores", "1"], ws)
    assert proc.returncode != 0 and "train.grid" in proc.stderr and not (ws / "MARKER").exists()


@pytest.mark.slow
def test_a_hostile_lrscan_model_never_runs_under_dvc_repro(tmp_path):
    """lrscan's stages are `foreach: ${lrscan.models}`: a model name from params becomes a stage name too."""
    hostile = "dln;touch MARKER;echo"
    raw = read_yaml(ROOT / "params.yaml")
    ws = dvc_workspace(tmp_path, **{"lrscan.models": ["dln", hostile], f"lrscan.{hostile}": raw["lrscan"]["dln"],
                                    f"train.{hostile}": raw["train"]["dln"]})
    data = ws / "results" / "data" / f"{hostile}.npz"  # the stage's input, so that DVC runs its command at once
    data.parent.mkdir(parents=True)
    data.write_bytes(b"x")
    proc = run([PY, "-m", "dvc", "repro", "--single-item", f"lrscan@{hostile}"], ws)
    assert not (ws / "MARKER").exists(), "the model name's shell text ran under dvc repro"
    assert proc.returncode != 0 and "lrscan" in proc.stderr, proc.stderr


def test_the_dvc_stage_is_read_as_one_word_and_checked_against_the_params():
    p = cli.load_params(ROOT / "params.yaml", check_files=False)
    cell = next(iter(p.train.grid))
    argv = cli.stage_argv("train", f"../dvc.yaml:train@{cell}", p, ["params.yaml"])
    assert argv[argv.index("--cell") + 1] == cell and argv[argv.index("--runs-dir") + 1] == f"results/runs/{cell}"
    for step, stage in [("train", f"probe@{cell}"), ("train", "train@x;touch M"), ("prepare", "prepare@vgg'"),
                        ("stats", "stats@x")]:
        with pytest.raises(cli.ConfigError):
            cli.stage_argv(step, stage, p, ["params.yaml"])


# ------------------------------------------------------------ 24.3: a refused edit never deletes committed results
@pytest.mark.slow
@pytest.mark.parametrize("change, stage, kept", [
    ({"stats.typo": 1}, "stats", ("stats/claims.csv", "stats/claims.json", "stats/claims.md")),
    ({"train.grid": {"dln-bn-lr1e-06": {"model": "dln", "variant": "bn", "lr": -1e-6}}}, "summarize",
     ("stats/runs.csv",)),
], ids=["typo-in-stats", "negative-lr"])
def test_a_refused_params_edit_under_dvc_repro_keeps_the_committed_results(tmp_path, change, stage, kept):
    ws = dvc_workspace(tmp_path, **change)
    for name in kept:
        (ws / "results" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "results" / name, ws / "results" / name)
    shutil.copy(ROOT / "results" / "stats" / "runs.csv", ws / "results" / "stats" / "runs.csv")
    for folder in ("runs", "probes"):
        (ws / "results" / folder).mkdir(exist_ok=True)
    proc = run([PY, "-m", "dvc", "repro", "--single-item", stage], ws)
    assert proc.returncode != 0 and next(iter(change)).split(".")[0] in proc.stderr, proc.stderr
    for name in kept:
        assert (ws / "results" / name).exists(), f"dvc repro {stage} deleted {name}"
        assert (ws / "results" / name).read_bytes() == (ROOT / "results" / name).read_bytes()


# ---------------------------------------------------------------------- 26.2: one lock for both tools' steps
def stats_command(tmp_path: Path, *extra: str) -> list[str]:
    """The stats step on the committed runs.csv, with the claims of params.yaml whose metrics that table holds."""
    runs = tmp_path / "runs.csv"
    shutil.copy(ROOT / "results" / "stats" / "runs.csv", runs)
    columns = runs.read_text().splitlines()[0].split(",")
    params = read_yaml(ROOT / "params.yaml")
    params["claims"] = [c for c in params["claims"] if c["metric"] in columns]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ["stats", "--params", str(tmp_path / "params.yaml"), "--runs", str(runs), "--output",
            str(tmp_path / "stats"), *extra]


def test_a_step_waits_for_the_other_tools_run_and_replaces_its_fresh_outputs(tmp_path, monkeypatch):
    """Snakemake deletes a failed job's outputs: its stats job, refusing outputs the other tool's run had just
    written ("already holds completed results"), made Snakemake delete them. Now the second run waits for the first
    and replaces its fresh outputs on success."""
    monkeypatch.setenv("BNFLOW_OUTPUT_LOCK_DIR", str(tmp_path / "locks"))
    cmd = [PY, "-m", "bnflow", *stats_command(tmp_path)]  # as Snakemake runs it: no --force
    out = tmp_path / "stats"
    with step_lock(out / "claims.csv", []):  # the other tool's run of the step, holding the lock
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        # a bound against a hang only (the step starts in seconds, minutes under load); select, so that a step that
        # waits silently fails the test instead of blocking readline for ever
        deadline = time.time() + 1800
        line = ""
        while time.time() < deadline and proc.poll() is None and "waiting" not in line:
            if select.select([proc.stderr], [], [], 5.0)[0]:
                line = proc.stderr.readline()
        if proc.poll() is None and "waiting" not in line:
            proc.kill()
        assert proc.poll() is None and "another run of this step" in line, "the step did not wait for the lock"
        out.mkdir()
        for name in STATS_FILES:  # what the other run publishes before it releases the lock
            (out / name).write_text("the other run's results\n")
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "written by another run (dvc repro or Snakemake) since this one started" in err
    assert (out / "claims.csv").read_text().startswith("claim_id")


def test_a_snakemake_job_replaces_the_outputs_snakemake_kept_for_it(tmp_path, monkeypatch):
    """Snakemake keeps a job's previous outputs until it succeeds (update() flags): the job's step replaces them."""
    monkeypatch.setenv("BNFLOW_OUTPUT_LOCK_DIR", str(tmp_path / "locks"))
    out = tmp_path / "stats"
    out.mkdir()
    for name in STATS_FILES:
        (out / name).write_text("the previous results\n")
    env = {**os.environ, "BNFLOW_RUNNER": "snakemake"}  # what the Snakefile sets for its jobs
    proc = subprocess.run([PY, "-m", "bnflow", *stats_command(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "already holds completed results" not in proc.stderr and "since this one started" not in proc.stderr
    assert (out / "claims.csv").read_text().startswith("claim_id")
    assert 'os.environ["BNFLOW_RUNNER"] = "snakemake"' in (ROOT / "Snakefile").read_text()


def test_every_snakemake_output_is_kept_until_its_job_succeeds():
    """Without update(), Snakemake deletes a job's outputs before it starts and again when it fails: a failed step
    (a crash, a full disk) would lose committed results. Each rule's every output is update()-flagged."""
    import re

    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
            block = re.search(r"^    output:\n(.*?)^    \w+:", rule, flags=re.M | re.S)
            if block is None:
                continue
            lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
            outputs = [line for line in lines if "{OUT}" in line]
            assert outputs and all("update(" in line for line in outputs), (smk.name, rule.split(":")[0], outputs)


@pytest.mark.slow
def test_a_failed_snakemake_job_leaves_the_committed_results_as_they_were(tmp_path):
    """The attack of issue 24 under Snakemake: a step that fails after Snakemake started its job."""
    from test_pipeline import workspace

    ws = workspace(tmp_path / "ws")
    stats = ws / "results" / "stats"
    stats.mkdir(parents=True)
    for name in ("runs.csv", "claims.csv", "claims.json", "claims.md", "claims_metrics.json"):
        shutil.copy(ROOT / "results" / "stats" / name, stats / name)
    before = {n: (stats / n).read_bytes() for n in STATS_FILES}
    time.sleep(1.1)
    (stats / "runs.csv").write_text("not,a,runs,table\n1,2,3,4\n")  # newer than the claims: stats must re-run
    proc = run([PY, "-m", "snakemake", "--cores", "1", "--allowed-rules", "stats", "--", "results/stats/claims.csv"],
               ws)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Restored previous version" in proc.stderr, proc.stderr[-3000:]
    assert {n: (stats / n).read_bytes() for n in STATS_FILES} == before
    assert not (ws / ".snakemake" / "backups" / "results" / "stats" / "claims.csv").exists()


def test_a_manual_run_still_refuses_outputs_that_were_there_before_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BNFLOW_OUTPUT_LOCK_DIR", str(tmp_path / "locks"))
    out = tmp_path / "stats"
    out.mkdir()
    (out / "claims.csv").write_text("kept\n")
    assert cli.main(stats_command(tmp_path)) == 2
    assert "already holds completed results" in capsys.readouterr().err
    assert (out / "claims.csv").read_text() == "kept\n"


# -------------------------------------------------------------------------------- 26: a full disk in the stats step
def test_a_full_disk_in_the_stats_step_gives_one_line_and_the_same_command_then_works(tmp_path, monkeypatch, capsys):
    import bnflow.stats.step as step

    monkeypatch.setenv("BNFLOW_OUTPUT_LOCK_DIR", str(tmp_path / "locks"))
    real = step.write_claims_json

    def full(table, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(step, "write_claims_json", full)
    cmd = stats_command(tmp_path)
    assert cli.main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device (ENOSPC)" in err and "Traceback" not in err
    assert "run the same command again" in err
    assert not any((tmp_path / "stats" / n).exists() for n in STATS_FILES), "a partial set of claims was published"
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == []  # no scratch left behind
    monkeypatch.setattr(step, "write_claims_json", real)
    assert cli.main(cmd) == 0
    assert all((tmp_path / "stats" / n).exists() for n in STATS_FILES)

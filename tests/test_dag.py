"""The DAG contract: Snakemake's rules and DVC's stages are the same steps, commands and outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake_jobs(*extra: str) -> set[tuple[str, str, frozenset[str]]]:
    """(rule, shell command, outputs) of every job of a forced dry run."""
    proc = subprocess.run([*SNAKEMAKE, "-n", "-p", "--forceall", "--cores", "1", *extra], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs, rule, outputs = set(), None, frozenset()
    for line in proc.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, outputs = m.group(1), frozenset()
        elif m := re.match(r"^\s+output: (.*)$", line):
            outputs = frozenset(o.strip() for o in m.group(1).split(","))
        elif line.startswith("Shell command: ") and line != "Shell command: None":  # `rule all` runs nothing
            jobs.add((rule, " ".join(line.removeprefix("Shell command: ").split()), outputs))
    return jobs


def dvc_stages() -> set[tuple[str, str, frozenset[str]]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {(s.name.split("@")[0], " ".join(s.cmd.split()), frozenset(str(o.def_path) for o in s.outs))
                for s in repo.index.stages}


def test_snakemake_and_dvc_describe_the_same_dag():
    smk, dvc = snakemake_jobs(), dvc_stages()
    assert {j[0] for j in smk} == {"prepare", "train", "probe", "lrscan", "summarize", "stats",
                                      "figures"}
    assert smk == dvc, f"only in Snakemake: {smk - dvc}\nonly in DVC: {dvc - smk}"


def test_every_grid_cell_is_one_gpu_training_job():
    from bnflow.config import load_params

    cells = set(load_params(ROOT / "params.yaml").train.grid)
    trained = {re.search(r"--cell (\S+)", cmd).group(1) for rule, cmd, _ in snakemake_jobs() if rule == "train"}
    assert trained == cells
    text = (ROOT / "workflow" / "rules" / "train.smk").read_text()
    assert re.search(r"resources:\s+gpu=1", text)


def test_dvc_stages_read_only_their_params_sections():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        keys = {s.name: {k for p in s.deps if hasattr(p, "params") for k in (p.params or [])}
                for s in repo.index.stages}
    assert keys["prepare"] == {"prepare"}
    assert keys["train@vgg-bn-lr0.1"] == {"train.seeds", "train.norm", "train.noise", "train.vgg", "train.probes"}
    assert keys["train@dln-bn-lr1e-06"] == {"train.seeds", "train.norm", "train.noise", "train.dln", "train.probes"}
    assert keys["probe@vgg-bn-lr0.1"] == {"probe", "train.seeds"}
    assert keys["stats"] == {"stats", "claims"}


def test_rules_only_call_the_cli():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        assert not re.search(r"^\s+(run|script|notebook|wrapper):", text, re.M), smk.name
        for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
            assert "log:" in rule and "shell:" in rule and "python -m bnflow" in rule, smk.name


@pytest.mark.parametrize("bad", ["vgg-bn-lr0.1;rm -rf x", "../etc-bn-lr0.1", "vgg-bn-lr0.1 --force"])
def test_wildcards_cannot_smuggle_shell_or_paths(bad):
    proc = subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", f"results/runs/{bad}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0

"""The DAG contract: Snakemake's rules and DVC's stages are the same steps, commands, outputs and params; no value
from params or the command line ever runs as shell text."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bnflow.dag import param_keys
from conftest import ROOT, copy_params

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake_jobs(*extra: str, cwd: Path = ROOT) -> set[tuple[str, tuple[str, ...], frozenset[str]]]:
    """(rule, shell command as argv, outputs) of every job of a forced dry run."""
    proc = subprocess.run([*SNAKEMAKE, "-n", "-p", "--forceall", "--cores", "1", *extra], cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs, rule, outputs = set(), None, frozenset()
    for line in proc.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, outputs = m.group(1), frozenset()
        elif m := re.match(r"^\s+output: (.*)$", line):
            # Snakemake marks update()-flagged outputs (all of them: workflow/rules) with " (update)"
            outputs = frozenset(o.strip().removesuffix(" (update)") for o in m.group(1).split(","))
        elif line.startswith("Shell command: ") and line != "Shell command: None":  # `rule all` runs nothing
            jobs.add((rule, tuple(shlex.split(line.removeprefix("Shell command: "))), outputs))
    return jobs


def dvc_argv(stage: str, cmd: str) -> tuple[str, ...]:
    """A stage's command as it runs: its `--dvc-stage "$DVC_STAGE"` expanded by bnflow (dvc.yaml names no params
    value, issue 26), and without the `--force` that replaces outputs DVC keeps in place (`persist`)."""
    from bnflow.cli import stage_argv
    from bnflow.config import load_params

    argv = shlex.split(cmd)
    assert argv[-3:] == ["--dvc-stage", "$DVC_STAGE", "--force"], cmd
    files = argv[argv.index("--params") + 1:-3:2]
    return (*argv[:3], *stage_argv(argv[3], stage, load_params(*(ROOT / f for f in files), check_files=False),
                                   files))


def dvc_tracked(argv: tuple[str, ...]) -> frozenset[str]:
    """The large artefacts a DVC stage's command records with .dvc files of its own (bnflow.dag.artefacts): dvc.yaml
    does not declare them, Snakemake's rules do."""
    from bnflow.cli import build_parser
    from bnflow.dag.artefacts import tracked_paths

    args = build_parser().parse_args(list(argv[3:]))
    return frozenset(str(p) for p in tracked_paths(args.step, args))


def dvc_stages() -> dict[str, tuple[str, tuple[str, ...], frozenset[str], set[str]]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = [s for s in repo.index.stages if s.cmd]  # not the .dvc files of the large artefacts
        return {s.name: (s.name.split("@")[0], argv,
                         frozenset(str(o.def_path) for o in s.outs) | frozenset(str(m.def_path) for m in s.metrics)
                         | dvc_tracked(argv),
                         {k for p in s.deps if hasattr(p, "params") for k in (p.params or [])})
                for s in repo.index.stages if s in stages for argv in [dvc_argv(s.name, s.cmd)]}


def test_snakemake_and_dvc_describe_the_same_dag():
    smk = snakemake_jobs()
    dvc = {v[:3] for v in dvc_stages().values()}
    assert {j[0] for j in smk} == {"prepare", "train", "probe", "lrscan", "summarize", "stats", "figures"}
    assert smk == dvc, f"only in Snakemake: {smk - dvc}\nonly in DVC: {dvc - smk}"


def test_the_plan_knows_the_inputs_each_rule_declares(tmp_path):
    """bnflow.dag dates outputs after the inputs Snakemake compares (Job.inputs): they must be the rules' own."""
    from bnflow.dag import plan

    proc = subprocess.run([*SNAKEMAKE, "-n", "--forceall", "--cores", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    declared, ins = {}, set()
    for line in proc.stdout.splitlines():  # a job prints its input line, then its output line
        if m := re.match(r"^\s+input: (.*)$", line):
            ins = {i.strip() for i in m.group(1).split(",")} - {""}
        elif m := re.match(r"^\s+output: (.*)$", line):
            declared[m.group(1).split(",")[0].strip().removesuffix(" (update)")] = {i for i in ins if "/bnflow-params/" not in i
                                                           and "/data/" not in i}
            ins = set()
    jobs = plan({}, root=ROOT).jobs.values()
    mine = {j.outputs[0]: set(j.inputs) for j in jobs}
    assert {o: i for o, i in declared.items() if o in mine} == {o: mine[o] for o in declared if o in mine}
    assert {j.step for j in jobs if j.inputs} == {"probe", "summarize", "stats", "figures"}


def test_every_grid_cell_is_one_gpu_training_job():
    from bnflow.config import load_params

    cells = set(load_params(ROOT / "params.yaml").train.grid)
    trained = {cmd[cmd.index("--cell") + 1] for rule, cmd, _ in snakemake_jobs() if rule == "train"}
    assert trained == cells
    text = (ROOT / "workflow" / "rules" / "train.smk").read_text()
    assert re.search(r"resources:\s+gpu=1", text)


def test_dvc_stages_read_exactly_the_params_the_snakemake_stamps_record():
    from bnflow.config import load_params

    p = load_params(ROOT / "params.yaml")
    for name, (step, _, _, keys) in dvc_stages().items():
        key = name.split("@")[1] if "@" in name else None
        model = p.cell(key).model if step in ("train", "probe") else key
        assert keys == set(param_keys(step, model=model)), name
    stages = dvc_stages()
    assert stages["train@vgg_cpu-standard-lr0.1"][3] == {"train.seeds.base", "train.seeds.n.vgg_cpu", "train.norm",
                                                   "train.noise", "train.vgg_cpu", "train.probes", "train.plugins",
                                                   "train.numerics"}
    # one family's seed count is its own: adding DLN seeds re-runs no VGG stage, and no DLN stage reads the VGG's
    readers = {name for name, (_, _, _, keys) in stages.items() if "train.seeds.n.dln" in keys}
    assert readers == {n for n in stages if n.startswith(("train@dln-", "probe@dln-"))} | {"prepare@dln"}


def test_dln_cells_never_depend_on_the_images():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        deps = {s.name: {str(d.def_path) for d in s.deps if not hasattr(d, "params")} for s in repo.index.stages}
    for name, paths in deps.items():
        if "@dln" in name:
            assert not any(p.startswith(("results/data/vgg", "results/data/vgg_cpu")) for p in paths), name
    assert "results/data/dln.json" in deps["train@dln-bn-lr1e-06"]  # the data's manifest (bnflow.dag.artefacts)
    smk = [cmd for rule, cmd, _ in snakemake_jobs() if rule in ("train", "probe", "lrscan")]
    for cmd in smk:
        if any(a.startswith("dln") for a in cmd):
            assert cmd[cmd.index("--data") + 1] == "results/data/dln.npz"


def test_rules_only_call_the_cli_and_quote_every_templated_value():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        assert not re.search(r"^\s+(run|script|notebook|wrapper):", text, re.M), smk.name
        for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
            assert "log:" in rule and "shell:" in rule and "python -m bnflow" in rule, smk.name
            shell = rule.split("shell:")[1]
            for field in re.findall(r"\{([^{}]+)\}", shell):
                # wildcards are constrained by regex; PARAMS_OPT is shlex-quoted in the Snakefile
                assert field.endswith(":q") or field.startswith("wildcards.") or field == "PARAMS_OPT", (smk.name,
                                                                                                        field)


@pytest.mark.parametrize("bad", ["vgg-bn-lr0.1;rm -rf x", "../etc-bn-lr0.1", "vgg-bn-lr0.1 --force"])
def test_wildcards_cannot_smuggle_shell_or_paths(bad):
    proc = subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", f"results/runs/{bad}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0


def _workspace(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    copy_params(tmp_path)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    return tmp_path


def test_hostile_out_dir_is_refused_and_quoted(tmp_path):
    ws = _workspace(tmp_path)
    pwned = tmp_path / "PWNED"
    overlay = ws / "evil.yaml"
    overlay.write_text(yaml.safe_dump({"out_dir": f"/tmp/x;touch {pwned};echo"}))
    proc = subprocess.run([*SNAKEMAKE, "--cores", "1", "--config", "overlay=evil.yaml"], cwd=ws,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "out_dir" in proc.stderr and not pwned.exists()
    assert "Traceback" not in proc.stderr  # the message, not a stack of frames from bnflow/config.py
    # a params file whose NAME holds shell text reaches the command as one quoted argument
    odd = ws / "my quick;touch PWNED.yaml"
    shutil.copy(ws / "workflow" / "quick.yaml", odd)
    jobs = snakemake_jobs("--config", f"overlay={odd.name}", cwd=ws)
    assert jobs and all(cmd[len(cmd) - 1 - cmd[::-1].index("--params") + 1] == odd.name for _, cmd, _ in jobs)
    assert not (ws / "PWNED").exists()


@pytest.mark.parametrize("args", [["--config", "out_dir=elsewhere"], ["--config", "overlya=workflow/quick.yaml"],
                                  ["--configfile", "workflow/quick.yaml"]])
def test_unknown_config_keys_are_refused(tmp_path, args):
    ws = _workspace(tmp_path)
    proc = subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=ws, capture_output=True, text=True)
    assert proc.returncode != 0 and "--config" in proc.stderr and "Traceback" not in proc.stderr

"""Cluster profiles (workflow/profiles/) and the PR-review CI workflow (.github/workflows/pr.yml)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_params

PROFILES = ROOT / "workflow" / "profiles"
PR_WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load_profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def workspace(tmp_path: Path) -> Path:
    """A scratch copy of the workflow files, so a dry run writes nothing (.snakemake/) into the checkout."""
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    copy_params(tmp_path)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    return tmp_path


def dry_run_resources(ws: Path, *extra: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job of `snakemake -n` in `ws`."""
    proc = subprocess.run([*SNAKEMAKE, "-n", *extra], cwd=ws, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs, rule = [], None
    for line in proc.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif m := re.match(r"^\s+resources: (.*)$", line):
            jobs.append((rule, dict(kv.split("=", 1) for kv in m.group(1).split(", "))))
    return jobs


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> set[str]:
    ws = workspace(tmp_path_factory.mktemp("rules"))
    proc = subprocess.run([*SNAKEMAKE, "--list-rules"], cwd=ws, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stdout.split())


# ------------------------------------------------------------------------------------------------------------- SLURM
def test_slurm_dry_run_puts_gpu_jobs_on_the_gpu_partition_and_cpu_jobs_on_the_cpu_partition(tmp_path):
    profile = load_profile("slurm")
    assert profile["executor"] == "slurm"
    # Without the plugin, Snakemake rejects `executor: slurm`; the local executor still resolves every job's
    # resources from the profile's default-resources and set-resources.
    plugin = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
    jobs = dry_run_resources(workspace(tmp_path), "--workflow-profile", "workflow/profiles/slurm",
                             *([] if plugin else ["--executor", "local"]))
    shelled = [(rule, res) for rule, res in jobs if rule != "all"]  # `all` runs nothing
    gpu_jobs = [(rule, res) for rule, res in shelled if res.get("gpu") == "1"]
    cpu_jobs = [(rule, res) for rule, res in shelled if "gpu" not in res]
    assert len(gpu_jobs) + len(cpu_jobs) == len(shelled)
    assert {"train"} <= {rule for rule, _ in gpu_jobs} and {"prepare", "figures"} <= {rule for rule, _ in cpu_jobs}
    default, train = profile["default-resources"], profile["set-resources"]["train"]
    for rule, res in gpu_jobs:
        assert rule in profile["set-resources"], f"GPU rule {rule} has no set-resources: it would go to the CPU queue"
        want = profile["set-resources"][rule]
        assert res["slurm_partition"] == want["slurm_partition"] == train["slurm_partition"]
        assert res["slurm_partition"] != default["slurm_partition"]
        assert (int(res["runtime"]), int(res["mem_mb"]), int(res["cpus_per_task"])) == \
            (want["runtime"], want["mem_mb"], want["cpus_per_task"]), rule
        assert "gres" not in res  # the plugin refuses a job with both gres and gpu
    for rule, res in cpu_jobs:
        assert res["slurm_partition"] == default["slurm_partition"], rule
        assert (int(res["runtime"]), int(res["mem_mb"]), int(res["cpus_per_task"])) == \
            (default["runtime"], default["mem_mb"], default["cpus_per_task"]), rule


def test_slurm_cpu_profile_is_the_slurm_profile_with_every_job_on_the_cpu_partition_and_no_gpu(tmp_path):
    slurm, cpu = load_profile("slurm"), load_profile("slurm-cpu")
    differ = {"default-resources", "set-resources"}
    assert {k: v for k, v in cpu.items() if k not in differ} == {k: v for k, v in slurm.items() if k not in differ}
    assert set(cpu["set-resources"]) == set(slurm["set-resources"])
    plugin = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
    jobs = dry_run_resources(workspace(tmp_path), "--workflow-profile", "workflow/profiles/slurm-cpu",
                             *([] if plugin else ["--executor", "local"]))
    shelled = [(rule, res) for rule, res in jobs if rule != "all"]
    assert {"train", "probe", "lrscan", "prepare"} <= {rule for rule, _ in shelled}
    for rule, res in shelled:  # gpu=0 overrides the rule's gpu=1: the plugin adds no --gpus
        assert res["slurm_partition"] == cpu["default-resources"]["slurm_partition"], rule
        assert int(res.get("gpu", 0)) == 0 and "gres" not in res and "gpu_model" not in res, rule
        assert int(res["cpus_per_task"]) >= 1 and int(res["runtime"]) > 0, rule


@pytest.mark.parametrize("name", ["slurm", "slurm-cpu", "kubernetes"])
def test_profiles_set_no_global_gpu_limit_and_name_only_existing_rules(name, rules):
    profile = load_profile(name)
    assert "resources" not in profile, "a global `resources:` caps GPU jobs cluster-wide"
    assert "gpu" not in profile.get("default-resources", {})
    assert set(profile["set-resources"]) <= rules, "Snakemake silently ignores set-resources of an unknown rule"
    assert set(profile.get("set-threads", {})) <= rules


def test_kubernetes_profile_keeps_results_in_s3_and_asks_for_gpu_nodes():
    profile = load_profile("kubernetes")
    assert profile["executor"] == "kubernetes"
    assert profile["default-storage-provider"] == "s3" and profile["default-storage-prefix"].startswith("s3://")
    assert profile["container-image"]
    for rule in ("train", "probe"):
        res = profile["set-resources"][rule]
        assert res["gpu"] == 1 and res["gpu_manufacturer"] in ("nvidia", "amd"), rule


def test_profiles_readme_documents_the_commands():
    text = (PROFILES / "README.md").read_text()
    for command in ("snakemake --workflow-profile workflow/profiles/slurm",
                    "snakemake --workflow-profile workflow/profiles/slurm-cpu",
                    "workflow/profiles/slurm/local_cluster.py up", "--slurm-status-command squeue",
                    "snakemake --workflow-profile workflow/profiles/kubernetes",
                    "dvc remote add -d s3 s3://", "BNFLOW_GPU_LOCK_DIR"):
        assert command in text, command


# -------------------------------------------------------------------------- the local SLURM cluster (its config)
def local_cluster():
    """workflow/profiles/slurm/local_cluster.py as a module (it is a script, not part of the bnflow package)."""
    spec = importlib.util.spec_from_file_location("local_cluster", PROFILES / "slurm" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARDWARE = {"CPUs": "8", "Boards": "1", "SocketsPerBoard": "2", "CoresPerSocket": "4", "ThreadsPerCore": "1",
            "RealMemory": "64000"}


def conf_lines(text: str, key: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{key}=")]


def test_local_cluster_declares_a_gpu_partition_only_where_there_are_gpus():
    lc = local_cluster()
    state = Path("/s")
    conf = lc.slurm_conf(state, "n1", HARDWARE, 0, 7000)
    (node,) = conf_lines(conf, "NodeName")
    assert node.split()[:2] == ["NodeName=n1", "NodeAddr=127.0.0.1"]
    assert "CPUs=8" in node.split() and "RealMemory=64000" in node.split() and "Gres" not in node
    assert [p.split()[0] for p in conf_lines(conf, "PartitionName")] == ["PartitionName=cpu"]
    assert not conf_lines(conf, "GresTypes")
    assert conf_lines(conf, "SlurmctldPort") == ["SlurmctldPort=7000"] and conf_lines(conf, "SlurmdPort") == [
        "SlurmdPort=7001"]
    # every file the daemons write is in the state folder
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldLogFile", "SlurmdLogFile", "JobCompLoc"):
        (line,) = conf_lines(conf, key)
        assert line.split("=", 1)[1].startswith("/s/"), line
    # no slurmdbd: jobs recorded in a file for `sacct -c`; finished jobs listed by squeue longer than the plugin's
    # 3 x 40 s threshold for polling with squeue
    assert conf_lines(conf, "JobCompType") == ["JobCompType=jobcomp/filetxt"]
    assert int(conf_lines(conf, "MinJobAge")[0].split("=")[1]) >= 120

    conf = lc.slurm_conf(state, "n1", HARDWARE, 2, 7000)
    (node,) = conf_lines(conf, "NodeName")
    assert "Gres=gpu:2" in node.split() and conf_lines(conf, "GresTypes") == ["GresTypes=gpu"]
    assert [p.split()[:2] for p in conf_lines(conf, "PartitionName")] == [["PartitionName=cpu", "Nodes=n1"],
                                                                          ["PartitionName=gpu", "Nodes=n1"]]
    assert lc.gres_conf("n1", 2) == "NodeName=n1 Name=gpu File=/dev/nvidia[0-1]\n"
    assert lc.gres_conf("n1", 1) == "NodeName=n1 Name=gpu File=/dev/nvidia0\n"


def test_local_cluster_counts_the_gpus_nvidia_smi_lists(tmp_path, monkeypatch):
    lc = local_cluster()
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert lc.gpu_count() == 0
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    assert lc.gpu_count() == 2
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n")
    assert lc.gpu_count() == 0


def test_local_cluster_down_stops_the_recorded_processes_and_no_other(tmp_path):
    """A recorded pid whose start time differs is another process that reused the pid: never signalled."""
    lc = local_cluster()
    ours, other = (subprocess.Popen(["sleep", "60"]) for _ in range(2))
    try:
        pids = {"slurmd": {"pid": ours.pid, "start": lc.start_time(ours.pid)},
                "munged": {"pid": other.pid, "start": str(int(lc.start_time(other.pid)) + 1)}}
        (tmp_path / "pids.json").write_text(json.dumps(pids))
        lc.down(tmp_path)
        assert ours.wait(timeout=20) == -15  # SIGTERM
        assert other.poll() is None
        assert not (tmp_path / "pids.json").exists()
        lc.down(tmp_path)  # again: nothing recorded, nothing done
        gone = subprocess.Popen(["true"])
        gone.wait()  # a daemon that exited before `up` could read its start time
        assert not lc.alive({"pid": gone.pid, "start": lc.start_time(gone.pid)})
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


def test_local_cluster_refuses_to_start_without_root_with_status_3(tmp_path, monkeypatch, capsys):
    lc = local_cluster()
    monkeypatch.setattr(lc.os, "geteuid", lambda: 1000)
    assert lc.main(["up", "--state", str(tmp_path / "state")]) == 3
    assert "needs root" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------------------------------------------- PR workflow
def pr_workflow() -> dict:
    return yaml.safe_load(PR_WORKFLOW.read_text())


def step(name_start: str) -> dict:
    (found,) = [s for s in pr_workflow()["jobs"]["review"]["steps"] if s.get("name", "").startswith(name_start)]
    return found


def test_pr_workflow_is_valid():
    wf = pr_workflow()
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert "pull_request" in on
    assert wf["permissions"]["pull-requests"] == "write"
    (job,) = wf["jobs"].values()
    steps = job["steps"]
    assert all(("uses" in s) != ("run" in s) for s in steps)
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    # GitHub's own actions, no third-party service
    assert set(uses) == {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}
    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0
    assert uses["actions/setup-python"]["with"]["python-version"] == "3.11"
    script = "\n".join(s["run"] for s in steps if "run" in s)
    assert "${{" not in script, "pass expressions through env:, never into a script (injection)"
    # the README's install, test and quick-run commands, in that order
    readme = (ROOT / "README.md").read_text()
    torch_pin = re.search(r"pip install (torch==\S+ torchvision==\S+)", readme).group(1)
    quick = re.search(r"^(snakemake --cores all --config overlay=workflow/quick\.yaml)$", readme, re.M).group(1)
    commands = [f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/cpu",
                'pip install -e ".[dev]"', "python -m pytest", quick, "python -m bnflow.check_results",
                'dvc params diff "$BASE" --md', 'dvc metrics diff "$BASE" --md', 'gh pr comment "$PR" --body-file']
    positions = [script.find(c) for c in commands]
    assert -1 not in positions and positions == sorted(positions), dict(zip(commands, positions))
    comment = step("Review comment")
    assert comment["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert comment["if"] == "${{ !cancelled() }}"  # also after a failed check: reviewers see why
    assert job["env"]["BASE"] == "origin/${{ github.base_ref }}"


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_step(name_start: str, repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a step's script as GitHub does (bash -eo pipefail) in `repo`."""
    bash = [shutil.which("bash"), "--noprofile", "--norc", "-eo", "pipefail", "-c"]
    return subprocess.run([*bash, step(name_start)["run"]], cwd=repo, env={**os.environ, **env}, capture_output=True,
                          text=True)


STAGE = """\
stages:
  make:
    cmd: >-
      {python} -c "import json, pathlib, yaml; lr = yaml.safe_load(open('params.yaml'))['train']['lr'];
      pathlib.Path('results/figures').mkdir(parents=True, exist_ok=True);
      pathlib.Path('results/data.bin').write_text(str(lr));
      pathlib.Path('results/figures/loss.svg').write_text('<svg>%s</svg>' % lr);
      json.dump({'acc': 5 * lr}, open('results/metrics.json', 'w'))"
    params: [train.lr]
    outs:
      - results/data.bin
      - results/figures/loss.svg:
          cache: false
    metrics:
      - results/metrics.json:
          cache: false
"""


@pytest.fixture(scope="module")
def results_pr(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A DVC repo with a base branch (origin/main: lr 0.1) and a PR commit re-run at lr 0.2; a fake `gh` on PATH."""
    repo = tmp_path_factory.mktemp("results_pr")
    bin_dir = repo.parent / f"{repo.name}-bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text('#!/bin/sh\necho "$@" > "$GH_CALLED"\n')
    (bin_dir / "gh").chmod(0o755)
    git(repo, "init", "-q", "-b", "pr")
    git(repo, "config", "user.email", "ci@example.org")
    git(repo, "config", "user.name", "ci")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(STAGE.replace("{python}", shlex.quote(sys.executable)))
    for lr in (0.1, 0.2):
        (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr}}))
        subprocess.run([*dvc, "repro", "-q"], cwd=repo, check=True, capture_output=True)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"lr {lr}")
        if lr == 0.1:
            git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    env = {"PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "BASE": "origin/main", "PR": "7", "SAME_REPO": "true", "GH_CALLED": str(bin_dir / "gh-called"),
           "GITHUB_STEP_SUMMARY": str(bin_dir / "summary.md")}
    return repo, env


def test_pr_checks_and_comment_on_a_results_pr(results_pr):
    repo, env = results_pr
    assert "results/data.bin" in git(repo, "check-ignore", "results/data.bin")  # DVC-cached: git-ignored
    (repo / "results" / "data.bin").unlink()  # as in CI: the DVC cache is not there
    check = run_step("Committed results match dvc.lock", repo, env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not (repo / "dvc-status.md").exists()

    (repo / "results" / "figures" / "loss.svg").write_text("<svg>edited by hand</svg>")
    check = run_step("Committed results match dvc.lock", repo, env)
    assert check.returncode == 1
    assert "results/figures/loss.svg modified" in check.stdout and "data.bin" not in check.stdout

    comment = run_step("Review comment", repo, env)
    assert comment.returncode == 0, comment.stdout + comment.stderr
    body = (repo / "comment.md").read_text()
    params, metrics, figures, status = body.split("#### ")[1:]
    assert re.search(r"\|\s*params\.yaml\s*\|\s*train\.lr\s*\|\s*0\.1\s*\|\s*0\.2\s*\|", params), params
    assert re.search(r"\|\s*results/metrics\.json\s*\|\s*acc\s*\|\s*0\.5\s*\|\s*1\.0\s*\|", metrics), metrics
    assert figures.split("\n", 1)[1].split() == ["-", "`results/figures/loss.svg`"]
    assert status.startswith("dvc status") and "Committed results do not match" in status
    assert Path(env["GH_CALLED"]).read_text().split() == ["pr", "comment", "7", "--body-file", "comment.md"]
    assert body in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_pr_comment_from_a_fork_only_goes_to_the_summary(results_pr, tmp_path):
    repo, env = results_pr
    env = {**env, "SAME_REPO": "false", "GH_CALLED": str(tmp_path / "gh-called")}
    assert run_step("Review comment", repo, env).returncode == 0
    assert not Path(env["GH_CALLED"]).exists()


def test_pr_check_tolerates_a_repo_without_dvc_lock(tmp_path):
    # python (the check's interpreter) on PATH, no dvc executable: the check never needs DVC without a dvc.lock
    python_only = tmp_path.parent / f"{tmp_path.name}-python"
    python_only.mkdir()
    (python_only / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (python_only / "python").chmod(0o755)
    check = run_step("Committed results match dvc.lock", tmp_path, {"PATH": str(python_only)})
    assert check.returncode == 0 and "no dvc.lock yet" in check.stdout

"""The slurm profiles on a real SLURM cluster: one node on this machine (workflow/profiles/slurm/local_cluster.py).

The quick DAG goes through `snakemake --workflow-profile workflow/profiles/slurm-cpu` (the slurm profile for a cluster
without GPUs): every job through sbatch and listed by `sacct -c`; a train job cancelled with scancel mid-run and its
resubmission stopped past its time limit are each resubmitted (restart-times) and resume their state; the claims and
runs tables, and every published run file, equal a local `snakemake --cores all` run's.

Skipped, with the reason, where SLURM cannot be started here (not root, no apt, daemons that do not come up), unless
BNFLOW_CLUSTER_REQUIRED is set (then it fails: for a machine that must run it; .ci/run leaves it unset).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_params

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
LOCAL_CLUSTER = ROOT / "workflow" / "profiles" / "slurm" / "local_cluster.py"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CELL = "vgg-bn-lr0.1"  # the cell whose train job is cancelled, then timed out
# Long enough to be caught mid-run (VGG-BN: ~12 steps/s on 2 busy cores), a resume state at every host sync (25 steps)
FAULTS = {"train": {"vgg": {"steps": 600}, "execution": {"resume_every_s": 0}}}
OVERLAYS = "overlay=workflow/quick.yaml,workflow/cluster-test.yaml"
OUT = Path("results") / "quick"
# a run's tables are gzip CSVs with a fixed header (bnflow.io.RUN_TABLE, gzip_bytes): equal content, equal bytes
RUN_FILES = {"metrics.csv.gz", "run.json", "ics.csv.gz", "landscape.csv.gz", "act_channels.csv.gz",
             "act_units.csv.gz"}


def cannot_run(reason: str):
    if os.environ.get("BNFLOW_CLUSTER_REQUIRED"):
        pytest.fail(f"BNFLOW_CLUSTER_REQUIRED is set, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        cannot_run('the snakemake slurm executor plugin is not installed: pip install -e ".[slurm]"')
    state = tmp_path_factory.mktemp("slurm")
    cmd = [sys.executable, str(LOCAL_CLUSTER)]
    up = subprocess.run([*cmd, "up", "--state", str(state)], capture_output=True, text=True, timeout=900)
    print(up.stdout, end="")
    if up.returncode == 3:
        cannot_run(up.stderr.strip())
    assert up.returncode == 0, up.stdout + up.stderr
    yield state
    down = subprocess.run([*cmd, "down", "--state", str(state)], capture_output=True, text=True, timeout=600)
    print(down.stdout, end="")
    assert down.returncode == 0, down.stdout + down.stderr


def out(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


def meminfo_mb() -> int:
    kb = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1)
    return int(kb) // 1024


def test_the_node_is_this_machine_and_up_again_changes_nothing(cluster):
    node = dict(re.findall(r"(\w+)=(\S+)", out("scontrol", "show", "node")))
    assert int(node["CPUTot"]) == os.cpu_count()
    assert abs(int(node["RealMemory"]) - meminfo_mb()) <= 0.02 * meminfo_mb()
    partitions = set(out("sinfo", "-h", "-o", "%R").split())
    gpus = shutil.which("nvidia-smi") and "GPU 0:" in out("nvidia-smi", "-L")
    assert partitions == ({"cpu", "gpu"} if gpus else {"cpu"})
    pids = (cluster / "pids.json").read_text()
    again = subprocess.run([sys.executable, str(LOCAL_CLUSTER), "up", "--state", str(cluster)], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
    assert (cluster / "pids.json").read_text() == pids
    assert Path("/etc/slurm/slurm.conf").resolve() == cluster / "slurm.conf"


def workspace(path: Path) -> Path:
    """A scratch copy of the workflow with the faults overlay: results land under it, never in the checkout."""
    path.mkdir(parents=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, path / name)
    copy_params(path)
    shutil.copytree(ROOT / "workflow", path / "workflow")
    shutil.copytree(ROOT / "bnflow", path / "bnflow", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "workflow" / "cluster-test.yaml").write_text(yaml.safe_dump(FAULTS))
    # the slurm-cpu profile with a 1-minute limit on a train job's second attempt (the one stopped until it times
    # out), an hour on the others (a loaded machine's startup alone can take a minute), resubmissions to spare
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm-cpu" / "config.yaml").read_text())
    profile["restart-times"] = 3
    profile["set-resources"]["train"]["runtime"] = "60 if attempt != 2 else 1"
    (path / "workflow" / "profiles" / "slurm-cpu-faults").mkdir()
    (path / "workflow" / "profiles" / "slurm-cpu-faults" / "config.yaml").write_text(yaml.safe_dump(profile))
    return path


class Run:
    """The cluster run in the background, and what the test watches of it."""

    def __init__(self, ws: Path):
        self.ws, self.log = ws, ws / "snakemake.log"
        # squeue: plain sacct needs slurmdbd (local_cluster.py); a short first poll, as jobs here start at once
        cmd = [*SNAKEMAKE, "--workflow-profile", "workflow/profiles/slurm-cpu-faults", "--config", OVERLAYS,
               "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5"]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=ws, stdout=f, stderr=subprocess.STDOUT, env=env)

    def wait_until(self, what: str, ready, timeout: float = 900):
        deadline = time.time() + timeout
        while not (found := ready()):
            assert self.proc.poll() is None, f"snakemake ended while waiting for {what}:\n{self.tail()}"
            assert time.time() < deadline, f"no {what} within {timeout} s:\n{self.tail()}"
            time.sleep(0.2)
        return found

    def tail(self) -> str:
        return self.log.read_text()[-5000:]

    def cell_jobs(self) -> dict[int, str]:
        """SLURM job id -> state of every train job of CELL (finished ones too: MinJobAge keeps them listed)."""
        lines = out("squeue", "-h", "--states=all", "-o", "%i|%k|%T").split()
        return {int(i): st for i, comment, st in (line.split("|") for line in lines)
                if comment == f"rule_train_wildcards_{CELL}"}

    def running(self, but: set[int] = frozenset()) -> int | None:
        return next((i for i, st in self.cell_jobs().items() if st == "RUNNING" and i not in but), None)

    def train_log(self) -> str:
        path = self.ws / OUT / "logs" / "train" / f"{CELL}.log"
        return path.read_text() if path.exists() else ""


def test_quick_dag_on_the_cluster_survives_a_cancel_and_a_timeout_and_equals_a_local_run(cluster, tmp_path):
    ws = workspace(tmp_path / "cluster")
    run = Run(ws)
    resume = ws / OUT / ".partial" / CELL / "state" / "s0" / "resume.pt"

    # 1. scancel the cell's train job once it has written a resume state
    cancelled = run.wait_until("a resume state of the first train job", lambda: resume.exists() and run.running())
    out("scancel", str(cancelled))
    print(f"cancelled SLURM job {cancelled} (train {CELL}) with a resume state at {resume.relative_to(ws)}")

    # 2. its resubmission resumes; once it has saved a later state, stop it (SIGSTOP) so it outlasts its 1-minute limit
    timed_out = run.wait_until("the resubmitted train job resuming",
                               lambda: "resuming at step" in run.train_log() and run.running(but={cancelled}))
    before = resume.stat().st_mtime_ns
    run.wait_until("a resume state of the resubmitted job", lambda: resume.stat().st_mtime_ns != before, 600)
    out("scancel", "--signal=STOP", str(timed_out))
    print(f"stopped SLURM job {timed_out} (the resubmission) past its time limit: {run.cell_jobs()}")

    assert run.proc.wait(timeout=1800) == 0, run.tail()
    text = run.log.read_text()

    # every job went through sbatch and is in the accounting (jobcomp) that `sacct -c` reads
    submitted = {int(i): rule for i, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/rule_(\w+)/",
                                                        text)}
    rows = [line.split("|") for line in out("sacct", "-c", "-P", "-n", "-o", "jobid,jobname,state").split()]
    sacct = {int(jobid): state for jobid, name, state in rows}
    print(f"sacct -c lists {len(rows)} jobs; snakemake submitted {len(submitted)}:")
    for jobid in sorted(submitted):
        print(f"  {jobid:4d} {submitted[jobid]:10s} {sacct.get(jobid, 'MISSING')}")
    assert sorted(sacct) == sorted(submitted) and len({name for _, name, _ in rows}) == 1  # one run's jobs, all
    assert sacct[cancelled] == "CANCELLED" and sacct[timed_out] == "TIMEOUT"
    cell_jobs = sorted(run.cell_jobs())
    assert len(cell_jobs) == 3 and cell_jobs[:2] == [cancelled, timed_out]
    assert all(state == "COMPLETED" for jobid, state in sacct.items() if jobid not in (cancelled, timed_out)), sacct
    assert {"prepare", "train", "probe", "lrscan", "summarize", "stats", "figures"} <= set(submitted.values())

    # each resubmission resumed its state instead of starting again from step 0: the timed-out one says so in its
    # SLURM log (kept, as the job failed), the last one in the step's log (Snakemake empties it for each attempt)
    slurm_log = (ws / ".snakemake" / "slurm_logs" / "rule_train" / CELL / f"{timed_out}.log").read_text()
    log = run.train_log()
    print(f"SLURM log of job {timed_out}, then the train log of job {cell_jobs[2]}:",
          *[line for text in (slurm_log, log) for line in text.splitlines() if "-s0: resuming" in line
            or "resumed from" in line], sep="\n  ")
    first = re.findall(r"bn-lr0\.1-s0: resuming at step (\d+)", slurm_log)
    last = re.findall(r"bn-lr0\.1-s0: resuming at step (\d+)", log)
    assert len(first) == 1 and len(last) == 1, slurm_log + log
    assert 0 < int(first[0]) < int(last[0])  # the timed-out job saved progress of its own before it was stopped
    assert re.search(rf"{re.escape(CELL)} s0: .* resumed from step {last[0]}", log)

    # the same overlays run locally, uninterrupted: the same tables and run files, byte for byte
    local = workspace(tmp_path / "local")
    proc = subprocess.run([*SNAKEMAKE, "--cores", "all", "--config", OVERLAYS], cwd=local, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compared = [OUT / "stats" / "claims.csv", OUT / "stats" / "runs.csv"]
    compared += sorted(p.relative_to(local) for p in (local / OUT / "runs").rglob("*") if p.name in RUN_FILES)
    for rel in compared:
        assert (ws / rel).read_bytes() == (local / rel).read_bytes(), rel
    print(f"equal to the local run: {len(compared)} files ({', '.join(str(p) for p in compared[:2])}, and "
          f"{', '.join(sorted(RUN_FILES))} of every run)")


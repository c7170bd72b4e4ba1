"""A one-node SLURM cluster on this machine: try the slurm profiles without a cluster (tests/test_cluster.py does).

    sudo python3 workflow/profiles/slurm/local_cluster.py up      # install what is missing, start the daemons
    snakemake --workflow-profile workflow/profiles/slurm-cpu --slurm-status-command squeue ...
    sudo python3 workflow/profiles/slurm/local_cluster.py down    # stop exactly the daemons `up` started

`up` installs the Debian packages it needs with apt where they are absent (and says so), generates a munge key and
slurm.conf in its state folder (--state, default $BNFLOW_SLURM_STATE or /tmp/bnflow-slurm), starts munged, slurmctld
and slurmd in the background, waits until `sinfo` shows the node idle and records the daemons' process ids in
pids.json. `down` cancels the cluster's jobs, then stops those process ids, and nothing else. Both are safe to re-run.

The node is this machine as `slurmd -C` measures it (CPUs, sockets, cores, RealMemory). Partition `cpu` always,
partition `gpu` only when `nvidia-smi -L` lists GPUs: the placeholder names of the slurm profiles, so the profiles run
unedited. There is no slurmdbd (it needs a MySQL server): jobs are recorded by jobcomp/filetxt, which
`sacct --completion` (`sacct -c`) lists; plain `sacct` says accounting is disabled, so Snakemake's slurm plugin must
poll with squeue (`--slurm-status-command squeue`, reliable here because MinJobAge keeps finished jobs listed for an
hour).

Why /etc/slurm/slurm.conf: the daemons read the state folder's slurm.conf (`-f`), and client commands would find it
through $SLURM_CONF, but the plugin's job step deletes every SLURM_* variable before its inner `srun`, which then
looks in /etc/slurm only. So `up` links /etc/slurm/slurm.conf to the state folder's file (refusing if that path is
already taken: this machine is then a SLURM node already) and `down` removes the link.

Exit status: 0 done; 3 a cluster cannot run here (not root, no apt, packages, ports or /etc/slurm/slurm.conf taken,
daemons that do not come up), with the reason on stderr; 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
            "sacct": "slurm-client", "sinfo": "slurm-client", "scontrol": "slurm-client", "srun": "slurm-client"}
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = ("munged", "slurmctld", "slurmd")  # started in this order, stopped in the reverse one
NODE_KEYS = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")


class CannotRun(Exception):
    """This machine cannot host the cluster (exit status 3): the test that needs it is skipped with this reason."""


def say(msg: str) -> None:
    print(f"local_cluster: {msg}", flush=True)


def run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------- what to install
def install_missing(log: Path) -> None:
    """apt-get install the packages whose programs are absent; an `apt-get update` first if the lists are stale."""
    missing = sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise CannotRun(f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise CannotRun(f"SLURM is not installed ({', '.join(missing)} missing); installing it needs root")
    # slurm-wlm is the metapackage of slurmctld, slurmd and slurm-client
    pkgs = ["slurm-wlm", "munge"] if {"slurmctld", "slurmd", "slurm-client"} & set(missing) else missing
    say(f"installing with apt-get: {' '.join(pkgs)} (missing: {', '.join(missing)}); apt's output: {log}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
    with open(log, "a") as out:
        ok = subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env).returncode == 0
        if not ok:  # a fresh container has no package lists: fetch them once, then try again
            subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=subprocess.STDOUT, env=env)
            ok = subprocess.run(install, stdout=out, stderr=subprocess.STDOUT, env=env).returncode == 0
    if not ok:
        raise CannotRun(f"apt-get install {' '.join(pkgs)} failed:\n{tail(log)}")


# ------------------------------------------------------------------------------------------------ the configuration
def node_hardware() -> dict[str, str]:
    """This machine as slurmd measures it: CPUs, sockets, cores, threads, RealMemory (MB)."""
    out = run("slurmd", "-C").stdout
    found = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    if not all(k in found for k in NODE_KEYS):
        raise CannotRun(f"`slurmd -C` did not describe this machine: {out!r}")
    return {k: found[k] for k in NODE_KEYS}


def gpu_count() -> int:
    """GPUs that `nvidia-smi -L` lists (0 without nvidia-smi or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = run("nvidia-smi", "-L", timeout=20).stdout
    except subprocess.TimeoutExpired:
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def slurm_conf(state: Path, host: str, hardware: dict[str, str], gpus: int, port: int) -> str:
    """slurm.conf of a one-node cluster whose every file lives in `state`."""
    node = " ".join(f"{k}={hardware[k]}" for k in NODE_KEYS)
    lines = [
        "# Generated by workflow/profiles/slurm/local_cluster.py: a one-node cluster on this machine.",
        "ClusterName=bnflow",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={port}",
        f"SlurmdPort={port + 1}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={state}/munge/munge.socket",
        f"StateSaveLocation={state}/ctld",
        f"SlurmdSpoolDir={state}/spool",
        f"SlurmctldPidFile={state}/slurmctld.pid",
        f"SlurmdPidFile={state}/slurmd.pid",
        f"SlurmctldLogFile={state}/log/slurmctld.log",
        f"SlurmdLogFile={state}/log/slurmd.log",
        "# no cgroups in a container: a job's processes are its process group (linuxproc, by parentage, lost a job",
        "# step's snakemake when its shell died first at a time limit), tasks not bound to cores",
        "ProctrackType=proctrack/pgid",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "# finished jobs stay in squeue for an hour: the snakemake plugin polls them with squeue",
        "MinJobAge=3600",
        "KillWait=5",
        "# no slurmdbd: jobs are recorded in a file that `sacct -c` reads",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={state}/jobcomp.txt",
        "JobAcctGatherType=jobacct_gather/linux",
    ]
    if gpus:
        lines.append("GresTypes=gpu")
        node += f" Gres=gpu:{gpus}"
    lines += [f"NodeName={host} NodeAddr=127.0.0.1 {node} State=UNKNOWN",
              f"PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP"]
    if gpus:
        lines.append(f"PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def gres_conf(host: str, gpus: int) -> str:
    files = "/dev/nvidia0" if gpus == 1 else f"/dev/nvidia[0-{gpus - 1}]"
    return f"NodeName={host} Name=gpu File={files}\n"


# --------------------------------------------------------------------------------------------- the daemons' pids
def start_time(pid: int) -> str | None:
    """The process' start time in clock ticks since boot (None if gone or a zombie): a pid plus its start time names
    one process, never a later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else fields[19]


def alive(rec: dict) -> bool:
    """Whether the recorded process still runs (a daemon that exited before its start time was read never does)."""
    return rec["start"] is not None and start_time(rec["pid"]) == rec["start"]


def read_pids(state: Path) -> dict[str, dict]:
    path = state / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def pid_list(pids: dict[str, dict]) -> str:
    return ", ".join(f"{name} {rec['pid']}" for name, rec in pids.items())


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return f"    ({path}: no log)"
    return "\n".join(f"    {line}" for line in lines)


def logs(state: Path) -> str:
    """The tail of each daemon's log file and of its console output (where a daemon that fails at start says why)."""
    paths = [state / "log" / f"{name}{ext}" for name in DAEMONS for ext in (".log", ".out")]
    return "\n".join(f"  {path}:\n{tail(path)}" for path in paths if path.exists())


def node_state() -> str:
    proc = run("sinfo", "-h", "-N", "-o", "%T")
    return proc.stdout.strip() if proc.returncode == 0 else ""


def wait_for(what: str, ready, state: Path, timeout: float, pids: dict[str, dict]) -> None:
    deadline = time.time() + timeout
    while not ready():
        dead = [name for name, rec in pids.items() if not alive(rec)]
        if dead or time.time() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"not within {timeout:.0f} s"
            raise CannotRun(f"{what}: {why}. The daemons' logs:\n{logs(state)}")
        time.sleep(0.5)


# ----------------------------------------------------------------------------------------------------- up / down
def up(state: Path, port: int, timeout: float) -> None:
    if sys.platform != "linux":
        raise CannotRun("the local cluster runs on Linux only")
    if os.geteuid() != 0:
        raise CannotRun("starting slurmd and munged needs root (run as root or with sudo)")
    if len(f"{state}/munge/munge.socket") > 100:  # a unix socket's path has at most 107 bytes
        raise CannotRun(f"--state {state}: too long a path for munge's socket; pick a shorter one")
    state.mkdir(parents=True, exist_ok=True)
    pids = read_pids(state)
    if pids and all(alive(rec) for rec in pids.values()) and node_state() in ("idle", "mixed", "allocated"):
        say(f"already up ({pid_list(pids)}); `sinfo`: {node_state()}")
        return
    if pids:  # a half-running cluster (a daemon died): start again from nothing
        say("some daemons of the last `up` are gone; stopping the others and starting again")
        down(state)
    for sub in ("log", "ctld", "spool", "munge", "munge-key"):
        (state / sub).mkdir(exist_ok=True)
    install_missing(state / "log" / "apt.log")
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        if not (SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == state / "slurm.conf"):
            raise CannotRun(f"{SYSTEM_CONF} exists: this machine is a SLURM node already (use that cluster), or "
                            "another local cluster is up (stop it with its own `down --state ...`)")
    for p in (port, port + 1):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", p)) == 0:
                raise CannotRun(f"port {p} is in use (another slurmctld or slurmd?); pick others with --port")

    host = socket.gethostname().split(".")[0]
    gpus = gpu_count()
    (state / "slurm.conf").write_text(slurm_conf(state, host, node_hardware(), gpus, port))
    if gpus:
        (state / "gres.conf").write_text(gres_conf(host, gpus))  # beside slurm.conf, where slurmd looks for it
    key = state / "munge-key" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    os.chmod(state / "munge-key", 0o700)
    os.chmod(key, 0o600)
    os.chmod(state / "munge", 0o755)  # clients reach the socket in it
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    if not SYSTEM_CONF.is_symlink():
        SYSTEM_CONF.symlink_to(state / "slurm.conf")

    conf = str(state / "slurm.conf")
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--key-file={key}",
                   f"--socket={state}/munge/munge.socket", f"--pid-file={state}/munge/munged.pid",
                   f"--log-file={state}/log/munged.log", f"--seed-file={state}/munge-key/munged.seed"],
        "slurmctld": ["slurmctld", "-D", "-f", conf],
        "slurmd": ["slurmd", "-D", "-f", conf, "-N", host],
    }
    readiness = {
        "munged": lambda: (state / "munge" / "munge.socket").exists(),
        "slurmctld": lambda: run("scontrol", "ping").stdout.count("is UP") == 1,
        "slurmd": lambda: node_state() == "idle",
    }
    started: dict[str, dict] = {}
    try:
        for name in DAEMONS:
            with open(state / "log" / f"{name}.out", "ab") as out:
                proc = subprocess.Popen(commands[name], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=state, start_new_session=True)
            started[name] = {"pid": proc.pid, "start": start_time(proc.pid), "argv": commands[name]}
            (state / "pids.json").write_text(json.dumps(started, indent=1))
            wait_for(f"{name} did not come up", readiness[name], state, timeout, started)
    except BaseException:
        down(state)
        raise
    parts = "cpu" + (f" and gpu ({gpus} GPUs)" if gpus else "")
    say(f"up: node {host} idle, partition {parts}; {SYSTEM_CONF} -> {conf}; "
        f"pids {pid_list(started)}")


def stop(name: str, rec: dict, grace: float = 15) -> None:
    """SIGTERM the recorded process (if it is still that process), SIGKILL it after `grace` seconds."""
    if not alive(rec):
        return
    with contextlib.suppress(ProcessLookupError):  # it may end between the check and the signal
        os.kill(rec["pid"], signal.SIGTERM)
    deadline = time.time() + grace
    while alive(rec) and time.time() < deadline:
        time.sleep(0.2)
    if alive(rec):
        say(f"{name} ({rec['pid']}) ignored SIGTERM for {grace:.0f} s; SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec["pid"], signal.SIGKILL)


def down(state: Path) -> None:
    pids = read_pids(state)
    if pids.get("slurmctld") and alive(pids["slurmctld"]):
        jobs = run("squeue", "-h", "-o", "%i").stdout.split()
        if jobs:  # their processes would outlive slurmd (slurmstepd is not its child)
            say(f"cancelling {len(jobs)} job(s) of this cluster: {' '.join(jobs)}")
            run("scancel", "--full", *jobs)
            deadline = time.time() + 30
            while run("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i").stdout.strip() and time.time() < deadline:
                time.sleep(0.5)
    for name in reversed(DAEMONS):
        if name in pids:
            stop(name, pids[name])
    if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == state / "slurm.conf":
        SYSTEM_CONF.unlink()
    (state / "pids.json").unlink(missing_ok=True)
    say(f"down: stopped {pid_list(pids) or 'nothing (none recorded)'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--state", type=Path, default=Path(os.environ.get("BNFLOW_SLURM_STATE", "/tmp/bnflow-slurm")),
                    help="folder of the key, slurm.conf, spool, logs and pids.json (default: %(default)s)")
    ap.add_argument("--port", type=int, default=6817, help="slurmctld's port; slurmd takes the next one")
    ap.add_argument("--timeout", type=float, default=90, help="seconds each daemon has to come up")
    args = ap.parse_args(argv)
    state = args.state.resolve()
    try:
        if args.action == "up":
            up(state, args.port, args.timeout)
        elif args.action == "down":
            down(state)
        else:
            pids = read_pids(state)
            for name, rec in pids.items():
                print(f"{name} {rec['pid']} {'running' if alive(rec) else 'gone'}")
            print(run("sinfo").stdout if pids else "not up")
    except CannotRun as e:
        print(f"local_cluster: cannot start a SLURM cluster here: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

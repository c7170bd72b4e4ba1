"""The README is true: its commands exist with the flags it gives, its files exist, its dry runs plan, its timing
matches the recorded one (issue 14: a newcomer's first hour)."""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnflow.dag import CONFIG_KEYS
from conftest import ROOT, copy_params

README = (ROOT / "README.md").read_text()
TOOLS = ("snakemake ", "dvc ", "python -m bnflow", "pip install", "bash benchmarks/")


def commands() -> list[str]:
    """Every shell command the README shows: lines of ```bash blocks and `inline` spans that start with a tool."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    found += re.findall(r"`((?:%s)[^`]*)`" % "|".join(map(re.escape, TOOLS)), README)
    out = []
    for cmd in found:
        for part in re.split(r"\s+&&\s+|\s+then\s+", cmd):
            part = part.strip().rstrip(".,")
            if part.startswith(TOOLS) and "<" not in part and "…" not in part and "..." not in part:
                out.append(part)
    return sorted(set(out))


@functools.cache
def help_text(*cmd: str) -> str:
    proc = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} --help failed: {proc.stderr[-500:]}"
    return proc.stdout


def flags(argv: list[str]) -> list[str]:
    return [a.split("=")[0] for a in argv if a.startswith("-") and not re.fullmatch(r"-\d.*", a)]


def test_the_readme_shows_the_commands_a_user_needs():
    cmds = commands()
    assert len(cmds) >= 15
    for needed in ("snakemake --cores all --config overlay=workflow/quick.yaml", "python -m pytest",
                   "snakemake --cores all --resources gpu=1", "dvc repro"):
        assert needed in README, needed


@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith("snakemake")])
def test_snakemake_commands_use_real_flags_and_config_keys(cmd):
    argv = shlex.split(cmd)
    for flag in flags(argv[1:]):
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,=]", help_text(sys.executable, "-m", "snakemake")), flag
    for i, a in enumerate(argv):
        if a == "--config":
            for kv in argv[i + 1:]:
                if kv.startswith("-"):
                    break
                key, value = kv.split("=", 1)
                assert key in CONFIG_KEYS, kv
                if key == "overlay":
                    assert all((ROOT / f).is_file() for f in value.split(",")), value
        if a == "--workflow-profile":
            assert (ROOT / argv[i + 1] / "config.yaml").is_file()


@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith("dvc ")])
def test_dvc_commands_use_real_subcommands_and_flags(cmd):
    argv = shlex.split(cmd)
    depth = 3 if argv[1] in ("metrics", "params", "plots", "remote", "data", "exp") and len(argv) > 2 else 2
    text = help_text(sys.executable, "-m", "dvc", *argv[1:depth])
    for flag in flags(argv[depth:]):
        assert re.search(rf"(^|\s|,){re.escape(flag)}[\s,=\]]", text), (cmd, flag)


@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith(("python -m bnflow", "bash benchmarks/"))])
def test_bnflow_steps_and_scripts_exist(cmd):
    argv = shlex.split(cmd)
    if argv[0] == "bash":
        assert (ROOT / argv[1]).is_file()
        return
    from bnflow.cli import STEPS

    if argv[2] != "bnflow":  # a module of its own, e.g. python -m bnflow.check_results
        assert importlib.util.find_spec(argv[2]) is not None, cmd
        return
    step = argv[3]
    assert step in STEPS or step == "<step>"


def test_every_linked_or_named_file_exists():
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), target
    for path in re.findall(r"`((?:bnflow|workflow|benchmarks|tests|\.github)/[^`*{}<>\s]+)`", README):
        assert (ROOT / path).exists(), path


def _workspace(tmp_path: Path) -> Path:
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    copy_params(tmp_path)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    return tmp_path


@pytest.mark.parametrize("cmd", ["snakemake --cores all --config overlay=workflow/quick.yaml",
                                 "snakemake --cores all --resources gpu=1 --config cells=dln-*",
                                 "snakemake --cores all --config overlay=workflow/extended.yaml,"
                                 "workflow/extended-quick.yaml"])
def test_the_readme_workflows_plan(tmp_path, cmd):
    """A dry run of each workflow the README starts (in a scratch copy, so nothing lands in the checkout)."""
    assert cmd.split("=", 1)[0] in README.replace("'", "")
    ws = _workspace(tmp_path)
    proc = subprocess.run([sys.executable, "-m", *shlex.split(cmd), "-n"], cwd=ws, capture_output=True, text=True)
    assert proc.returncode == 0 and "Job stats" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_quick_run_time_the_readme_states_is_the_recorded_one():
    """The README's quick-run seconds match the latest `bash benchmarks/time_quick.sh` record, within 2 minutes."""
    stated = int(re.search(r"runs the whole DAG in about (\d+) s of\s+wall time", README).group(1))
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    sections = results.split("— quick run (README)")
    assert len(sections) > 1, "no recorded quick-run timing in benchmarks/RESULTS.md"
    walls = [float(w) for w in re.findall(r"^\| \d+ \| ([\d.]+) \| [\d.]+ \|$", sections[-1], re.M)]
    median = sorted(walls)[len(walls) // 2]
    assert median <= 120 and 0.75 * median <= stated <= 1.25 * median, (stated, walls)


def test_the_readme_names_the_cpu_opt_in_and_the_pr_check_the_code_uses():
    from bnflow.cpu_guard import ALLOW_ENV

    assert f"`{ALLOW_ENV}=1`" in README
    check = "python -m bnflow.check_results"
    assert check in README and check in (ROOT / ".github" / "workflows" / "pr.yml").read_text()


def test_the_readme_states_the_full_suites_duration():
    seconds, minutes = map(int, re.search(r"the full suite \((\d+) s, about (\d+) minutes", README).groups())
    assert abs(seconds / 60 - minutes) < 1
    assert f"(~{minutes} min)" in README  # the comment in the Tests block says the same


GENEROUS_S = 600
"""A test may bound a wait to end a hang, never so tightly that a busy machine trips it (issue 24: a 24 s test timed
out at 120 s under load)."""


def test_no_test_has_a_tight_wall_clock_limit():
    tight = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # `.wait(timeout=...)` waits for a process the test itself signalled: it ends at once, busy or not
            for m in re.finditer(r"(?<!\.wait\()\btimeout=(\d+)|time\.time\(\) \+ (\d+)", line):
                if int(m.group(1) or m.group(2)) < GENEROUS_S:
                    tight.append(f"{path.name}:{n}: {line.strip()}")
    assert tight == [], "\n".join(tight)

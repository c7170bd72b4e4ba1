"""`python -m bnflow.check_results`: do the committed results match dvc.lock? The pull-request check (pr.yml).

A stage fails the check when dvc.lock records it (its results were committed) and `dvc status` finds it stale: a
committed output that differs from the recorded one (a hand-edited result), a dependency that changed (a params
edit or a code change without a re-run), a changed command. Two things are expected, never failures:

- stages without a dvc.lock entry: cells of the grid not run yet (the VGG half on a CPU-only project). DVC lists
  them as changed ("params.yaml: new"), although nothing of theirs is committed;
- the large artefacts absent from the workspace (prepared data, checkpoints, full probe tables): DVC keeps them in
  its cache, git keeps their .dvc files (bnflow.dag.artefacts), so a clone (CI) has no copy of them until `dvc pull`.
  Present, each must be what its .dvc file records: a hand-edited checkpoint fails the check as a result does.

Exit status 0 when nothing fails, 1 when something does (each stale stage and why on stdout, and with --markdown the
same for the PR comment), 2 when the check itself cannot run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bnflow.dag import read_ledger

ABSENT = ("deleted", "not in cache")  # what dvc status says of an output or input missing from the workspace


@dataclass
class Verdict:
    """What the check found, stage by stage."""

    stale: dict[str, list[str]] = field(default_factory=dict)  # stage -> why (committed, and not what dvc.lock says)
    checked: list[str] = field(default_factory=list)           # stages recorded in dvc.lock
    not_run: list[str] = field(default_factory=list)           # stages with no dvc.lock entry
    absent: list[str] = field(default_factory=list)            # git-ignored cached paths missing, as expected

    @property
    def ok(self) -> bool:
        return not self.stale


def _reasons(entry: object, cached: Callable[[str], bool], absent: list[str]) -> list[str]:
    """Why one `dvc status` entry of a stage makes it stale; [] when it only lists cached paths that are absent."""
    if not isinstance(entry, Mapping):
        return [str(entry)]  # "changed command", "always changed", ...
    out = []
    for kind, paths in entry.items():
        if not isinstance(paths, Mapping):
            out.append(f"{kind}: {paths}")
            continue
        for path, state in paths.items():
            if isinstance(state, Mapping):  # a params file: {key: modified | new | deleted}
                out += [f"{kind}: {path} {key} {what}" for key, what in state.items()]
            elif state in ABSENT and cached(path):
                absent.append(path)
            else:
                out.append(f"{kind}: {path} {state}")
    return out


def judge(status: Mapping[str, list], locked: Iterable[str], cached: Callable[[str], bool]) -> Verdict:
    """Sort `dvc status --json`'s stages into stale, not run and absent-but-expected.

    Args:
        status: {stage: [entries]} as `dvc status --json` prints it (stages that are up to date are left out).
        locked: the stage names dvc.lock records.
        cached: whether a path is git-ignored (so a clone has it only from the DVC cache).
    """
    locked = set(locked)
    v = Verdict(checked=sorted(locked))
    for stage, entries in status.items():
        name = stage.split(":")[-1]  # dvc.yaml:train@x when dvc.yaml is not the default one
        if name not in locked and not name.endswith(".dvc"):  # a .dvc file is the record of a large artefact
            v.not_run.append(name)
            continue
        why = [r for e in entries for r in _reasons(e, cached, v.absent)]
        if why:
            v.stale[name] = why
    return v


def git_ignored(root: Path, paths: Iterable[str]) -> set[str]:
    """The paths among `paths` that git ignores (one `git check-ignore` call)."""
    paths = sorted(set(paths))
    if not paths:
        return set()
    proc = subprocess.run(["git", "check-ignore", "--", *paths], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"git check-ignore failed: {proc.stderr.strip()}")
    return set(proc.stdout.split("\n")) - {""}


def tracked_files(root: Path) -> list[str]:
    """The .dvc files git keeps: the records of the large artefacts (bnflow.dag.artefacts)."""
    proc = subprocess.run(["git", "ls-files", "-z", "--", "*.dvc"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git ls-files failed: {proc.stderr.strip()}")
    return sorted(p for p in proc.stdout.split("\0") if p)


def dvc_status(root: Path) -> dict[str, list]:
    """`dvc status --json` of dvc.yaml's stages and of every .dvc file (plain `dvc status` checks only the former)."""
    targets = ["dvc.yaml", *tracked_files(root)]
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *targets], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout or "{}")


def _paths(status: Mapping[str, list]) -> set[str]:
    return {p for entries in status.values() for e in entries if isinstance(e, Mapping)
            for paths in e.values() if isinstance(paths, Mapping) for p in paths}


def check(root: Path = Path(".")) -> Verdict | None:
    """The verdict for the project at `root`; None when it has no dvc.lock (no results committed yet)."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return None
    status = dvc_status(root)
    ignored = git_ignored(root, _paths(status))
    return judge(status, read_ledger(lock), ignored.__contains__)


def summary(v: Verdict) -> str:
    """One line when the check passes; when it fails, a line per stale stage with its reasons."""
    notes = (f"{len(v.checked)} stages of dvc.lock checked; {len(v.not_run)} not run yet (no dvc.lock entry, nothing "
             f"committed); {len(v.absent)} DVC-cached paths absent, as on any clone without `dvc pull`")
    if v.ok:
        return f"committed results match dvc.lock: {notes}"
    return "\n".join([f"committed results do not match dvc.lock in {len(v.stale)} stage(s): re-run them "
                      f"(`dvc repro <stage>`) and commit their results with dvc.lock; {notes}",
                      *(f"- {stage}: {'; '.join(why)}" for stage, why in sorted(v.stale.items()))])


def markdown(v: Verdict) -> str:
    """The failures for the PR comment."""
    rows = "".join(f"- `{stage}`: {'; '.join(why)}\n" for stage, why in sorted(v.stale.items()))
    return f"Committed results do not match `dvc.lock` (re-run these stages, then commit them with dvc.lock):\n\n{rows}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnflow.check_results", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project (default: here)")
    parser.add_argument("--markdown", type=Path, help="also write the failures as Markdown (the PR comment)")
    a = parser.parse_args(argv)
    try:
        v = check(a.root)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"check_results: error: {e}", file=sys.stderr)
        return 2
    if v is None:
        print("no dvc.lock yet: no results are committed, nothing to check")
        return 0
    text = summary(v)
    print(text)
    if a.markdown is not None and not v.ok:
        a.markdown.write_text(markdown(v))
    return 0 if v.ok else 1


if __name__ == "__main__":
    sys.exit(main())

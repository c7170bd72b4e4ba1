"""Params stamps, their adoption from dvc.lock, and the re-dating of outputs DVC found current.

A stamp is a small JSON file with the exact params values one job reads, rewritten only when they change, so that
Snakemake re-runs exactly what a params edit touches (the package docstring, bnflow.dag, says why). On a fresh clone
outputs dvc.lock vouches for are *adopted*: kept, and dated in DAG order. DVC's own status decides what it would
skip (`redate_dvc_checked`) and which outputs were altered by hand (`dvc_altered_outputs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bnflow.dag.jobs import RANK, Job, lookup
from bnflow.errors import ConfigError

STAMP_ROOT = Path(".snakemake") / "bnflow-params"
ADOPTED_AGE_S = 86400.0  # adopted outputs are dated a day back: older than anything a later edit writes


def stamp_dir(out_dir: str, root: Path = Path(".")) -> Path:
    """Where the stamps of one out_dir live (inside Snakemake's own, git-ignored, metadata folder)."""
    digest = hashlib.sha256(str((root / out_dir).resolve()).encode()).hexdigest()[:12]
    return root / STAMP_ROOT / digest


def stamp_path(out_dir: str, job: Job, root: Path = Path(".")) -> Path:
    return stamp_dir(out_dir, root) / job.step / f"{job.key or job.step}.json"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-06` is text; DVC writes dvc.lock as YAML 1.2, where it is a float."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$"),
    list("-+0123456789."))


def read_ledger(lock: Path) -> dict[str, dict[str, Any]]:
    """{stage: {param key: value}} as dvc.lock recorded them (params.yaml's entries); {} without a dvc.lock."""
    try:
        data = yaml.load(lock.read_text(), Loader=_Yaml12Loader) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{lock}: unreadable ({e}); restore it from git (git checkout {lock})") from None
    return {name: (stage.get("params") or {}).get("params.yaml", {}) for name, stage in
            (data.get("stages") or {}).items()}


def _canonical(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, indent=1, default=str) + "\n"


@dataclass
class StampReport:
    """What sync_stamps decided, for the Snakefile's messages."""

    changed: list[Job] = field(default_factory=list)     # params differ from the last run: re-run
    adopted: list[Job] = field(default_factory=list)     # outputs vouched for by dvc.lock: kept
    unvouched: list[Job] = field(default_factory=list)   # outputs exist but no record: re-run
    redated: list[Job] = field(default_factory=list)     # DVC found them current though an input is newer: kept
    altered: list[Job] = field(default_factory=list)     # params vouched for, content not (also in unvouched/changed)

    @property
    def reruns(self) -> list[Job]:
        """The jobs whose existing outputs will be re-run (params changed, or no record vouches for them)."""
        return self.changed + self.unvouched


def vouched(job: Job, raw: Mapping[str, Any], ledger: Mapping[str, Mapping]) -> bool:
    """Whether dvc.lock records exactly the current params for `job` and for every job of its chain."""
    for j in (job, *job.chain):
        recorded = ledger.get(j.stage)
        if recorded is None or any(recorded.get(k, _MISSING) != lookup(raw, k) for k in j.keys):
            return False
    return True


def _date(paths: Iterable[str], when: float) -> None:
    for p in paths:
        if os.path.lexists(p):
            os.utime(p, (when, when), follow_symlinks=False)


def sync_stamps(jobs: Sequence[Job], raw: Mapping[str, Any], out_dir: str, *, ledger: Mapping[str, Mapping],
                root: Path = Path("."), now: float | None = None, ledger_time: float | None = None,
                verify: Callable[[list[Job]], set[str]] | None = None) -> StampReport:
    """Write every job's params stamp; adopt outputs dvc.lock vouches for (module docstring).

    Two cases adopt: no stamp yet (a fresh clone) and the outputs exist, and a stamp of other params while the
    outputs are no newer than dvc.lock (DVC made them, with the params it recorded: `dvc repro` after Snakemake).
    Both also need the outputs' content to be what dvc.lock records (`verify`): a hand-edited claims.csv or a
    deleted seed folder under vouched-for params was adopted as current (issue 26), and is now re-run.

    Args:
        jobs: every job of the DAG for this run.
        raw: the merged raw params (params.yaml + overlay) the stamps record.
        out_dir: the run's out_dir (stamps are kept per out_dir).
        ledger: read_ledger(dvc.lock) when out_dir is the one dvc.yaml writes, else {}.
        ledger_time: dvc.lock's modification time (None without one).
        verify: given the jobs about to be adopted, the stages among them whose outputs differ from dvc.lock's
            hashes (dvc_altered_outputs); None adopts on params alone (no dvc.lock to compare with).
    """
    now = time.time() if now is None else now
    report = StampReport()
    fresh: list[Job] = []
    candidates: list[tuple[Job, bool]] = []
    for job in jobs:
        path = stamp_path(out_dir, job, root)
        text = _canonical(job.values(raw))
        existed = path.exists()
        if existed and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        outputs = [root / o for o in job.outputs]
        if not outputs or not all(os.path.exists(o) for o in outputs):
            if existed:
                report.changed.append(job)
            continue  # nothing there yet: the job runs because its outputs are missing
        made_by_dvc = not existed or (ledger_time is not None
                                      and max(os.stat(o).st_mtime for o in outputs) <= ledger_time + 1.0)
        if made_by_dvc and vouched(job, raw, ledger):
            candidates.append((job, existed))
        elif existed:
            report.changed.append(job)
        else:
            report.unvouched.append(job)
    altered = verify([j for j, _ in candidates]) if candidates and verify is not None else set()
    for job, existed in candidates:
        if job.stage in altered:  # its stamp stays newer than its outputs: the job re-runs
            report.altered.append(job)
            (report.changed if existed else report.unvouched).append(job)
            continue
        os.utime(stamp_path(out_dir, job, root), (0, 0))  # older than any output: the stamp itself triggers nothing
        report.adopted.append(job)
        if not existed:
            fresh.append(job)
    # Checkout dates files in arbitrary order: date the outputs adopted on a fresh clone in DAG order, so that no
    # adopted output looks older than an adopted input. (Outputs DVC made carry DVC's own order.)
    base = now - ADOPTED_AGE_S
    for job in fresh:
        _date((str(root / o) for o in job.outputs), base + RANK[job.step])
    return report


_MISSING = object()


def _mtime(path: Path) -> float:
    """A file's or folder's time as Snakemake compares it (a folder Snakemake wrote carries a timestamp file)."""
    marker = path / ".snakemake_timestamp"
    return os.stat(marker if path.is_dir() and marker.exists() else path).st_mtime


def redate_dvc_checked(jobs: Sequence[Job], report: StampReport, root: Path = Path("."),
                       dvc_status: Callable[[list[str]], set[str]] | None = None) -> list[Job]:
    """Date after their inputs the outputs of jobs that DVC finds current although an input is newer.

    `dvc repro` re-runs a stage whose inputs changed and skips the next one when the rewritten input has the same
    content (re-summarized runs give the same runs.csv). Snakemake compares file times, not contents: it would re-run
    the skipped stage and everything after it. A job whose params stamp is current and that DVC's own status finds
    up to date (every dep and out as dvc.lock recorded them) gets its outputs dated just after its newest input,
    in DAG order. Jobs DVC finds changed are left alone and run.

    `dvc_status(stages)` returns the names of the stages among `stages` that are not up to date (DVC's Repo.status).
    """
    rerun = set(report.reruns)
    ordered = sorted((j for j in jobs if j.inputs and j not in rerun), key=lambda j: RANK[j.step])
    paths = {j: ([root / i for i in j.inputs], [root / o for o in j.outputs]) for j in ordered}
    ready = [j for j in ordered if all(p.exists() for p in paths[j][0] + paths[j][1])]
    made_by = {o: j for j in ready for o in j.outputs}
    candidates: list[Job] = []
    for job in ready:  # stale by file times, or fed by a job that will be re-dated
        ins, outs = paths[job]
        if (max(map(_mtime, ins)) > min(map(_mtime, outs))
                or any(made_by.get(i) in candidates for i in job.inputs)):
            candidates.append(job)
    if not candidates:
        return []
    changed = (dvc_status or partial(_dvc_status, root))([j.stage for j in candidates])
    redated = []
    for job in candidates:  # DAG order: an input re-dated above is seen by its consumers
        ins, outs = paths[job]
        when = max(map(_mtime, ins)) + 0.01
        if job.stage in changed or min(map(_mtime, outs)) >= when:  # changed: it runs; or already dated after
            continue
        _date([str(o) for o in outs] + [str(o / ".snakemake_timestamp") for o in outs], when)
        redated.append(job)
    return redated


def dvc_altered_outputs(root: Path, jobs: list[Job]) -> set[str]:
    """The stages among `jobs` whose outputs (Job.outputs) differ from the hashes dvc.lock records for them.

    DVC's own status computes them (files: md5 of the bytes; folders: the md5 of DVC's `.dir` listing of every
    file's md5), so this is exactly what `dvc status` reports as modified. Outputs DVC keeps in its cache and a
    fresh clone lacks (checkpoints) are not Job.outputs and never count. Without a DVC project nothing can be
    verified: every job counts as altered (re-run, and said so).
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            status = repo.status(targets=[j.stage for j in jobs])
    except NotDvcRepoError:
        return {j.stage for j in jobs}
    mine = {j.stage: {os.path.normpath(o) for o in j.outputs} for j in jobs}
    altered = set()
    for name, changes in status.items():
        stage = name.split(":")[-1]
        for change in changes:
            outs = change.get("changed outs", {}) if isinstance(change, dict) else {}
            if any(os.path.normpath(path) in mine.get(stage, ()) and state != "not in cache"
                   for path, state in outs.items()):
                altered.add(stage)
    return altered


def _dvc_status(root: Path, stages: list[str]) -> set[str]:
    """The stages among `stages` that `dvc status` reports (anything changed, missing or not cached)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {name.split(":")[-1] for name in repo.status(targets=stages)}

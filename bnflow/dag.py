"""The pipeline's jobs as both tools see them: the params each job reads, and Snakemake's record of them.

DVC records the params every stage ran with in dvc.lock. Snakemake records them in `.snakemake/metadata`, which a
fresh clone does not have: there it cannot tell whether committed results match params.yaml, and a params edit is
silently ignored. So the Snakefile gives every job one more input, a *params stamp*: a small JSON file with the
exact params values the job reads (the same keys as the job's DVC stage), rewritten only when they change. A changed
stamp is newer than the job's outputs, so Snakemake re-runs the job, and file times carry the change downstream.

On a fresh clone (no stamps yet) a job whose outputs exist is *adopted* when dvc.lock says they were made with the
current params: its stamp is dated 1970 and the adopted outputs' file times are set in DAG order (checkout leaves
them in arbitrary order), so nothing is re-run. Outputs that no record vouches for are re-run, and said so.

Where `dvc repro` left an output older than an input it rewrote with the same content (it skipped the stage),
Snakemake would re-run that job and those after it: DVC's own status decides, and outputs it finds current are
dated after their inputs (redate_dvc_checked).

Data inputs (the prepared datasets) are `ancient` for Snakemake: re-creating a dataset byte for byte (a fresh
clone's `dvc pull`, a re-run of prepare) re-trains nothing; a change of the prepare params reaches training through
the stamps, which include the params of the job's prepare step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bnflow.errors import ConfigError
from bnflow.vocab import CLASSIFIERS

log = logging.getLogger("bnflow.dag")
STAMP_ROOT = Path(".snakemake") / "bnflow-params"
# Topological rank of each step (outputs are dated in this order when adopted).
LRSCAN_FILES = ("scan.csv", "thresholds.csv", "provenance.json", "summary.json")
RANK = {"prepare": 0, "train": 1, "probe": 2, "lrscan": 2, "summarize": 3, "stats": 4, "figures": 5}
ADOPTED_AGE_S = 86400.0  # adopted outputs are dated a day back: older than anything a later edit writes


def data_path(out_dir: str, model: str) -> str:
    """The prepared data a model family reads: the images (classifiers) or the DLN's regression problems."""
    return f"{out_dir}/data/{model}.npz"


def param_keys(step: str, *, model: str | None = None) -> list[str]:
    """The params.yaml keys one job of `step` reads: exactly its DVC stage's `params:` (tests/test_dag.py checks)."""
    if step == "prepare":
        if model in CLASSIFIERS:  # the download folder is left out: it never changes the data
            return ["prepare.source", "prepare.archive", "prepare.synthetic"]
        return ["train.seeds.base", "train.seeds.n.dln", "train.dln.n_samples", "train.dln.dim"]
    if step == "train":
        return ["train.seeds.base", f"train.seeds.n.{model}", "train.norm", "train.noise", f"train.{model}",
                "train.probes", "train.plugins", "train.numerics"]
    if step == "probe":
        return ["probe", "train.seeds.base", f"train.seeds.n.{model}"]
    if step == "lrscan":
        return [f"lrscan.{model}", "lrscan.seeds", "lrscan.loss_fraction", f"train.{model}", "train.norm",
                "train.noise", "train.seeds.base"]
    if step == "summarize":
        return [step, "train.seeds", "train.grid"]
    if step == "figures":
        return [step, "train.seeds", "train.grid", "lrscan"]
    if step == "stats":
        return ["stats", "claims"]
    raise ValueError(f"unknown step {step!r}")


def lookup(raw: Mapping[str, Any], key: str) -> Any:
    """The value of a dotted key in the raw (merged) params mapping; a missing key is an error naming it."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: missing in params (needed by the workflow)")
        node = node[part]
    return node


@dataclass(frozen=True)
class Job:
    """One job of the DAG: its step, its key (cell id, model or ''), the outputs it writes and the params it reads.

    `chain` names jobs whose params this job's stamp includes as well (a prepare step read through an ancient input).
    `inputs` are the other jobs' outputs its rule declares (not ancient): the file times Snakemake compares.
    """

    step: str
    key: str
    outputs: tuple[str, ...]
    keys: tuple[str, ...]
    chain: tuple[Job, ...] = ()
    inputs: tuple[str, ...] = ()

    @property
    def stage(self) -> str:
        """The DVC stage name (dvc.lock's key) of this job."""
        return f"{self.step}@{self.key}" if self.key else self.step

    def values(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """{key: value} of the params this job reads (its chain's too), from the raw merged params."""
        out = {k: lookup(raw, k) for k in self.keys}
        for up in self.chain:
            out |= {f"{up.stage}:{k}": v for k, v in up.values(raw).items()}
        return out


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


# ---------------------------------------------------------------------------------------------- the Snakefile's plan
CONFIG_KEYS = {"overlay": "params overlays merged onto params.yaml, comma-separated, later files win (e.g. workflow/quick.yaml)",
               "cells": "comma-separated grid cell ids or shell patterns to run (e.g. 'dln-*'); default: every cell"}


@dataclass
class Plan:
    """Everything the Snakefile's rules template: validated params, files, cells, jobs and their stamps."""

    params: Any
    raw: dict
    params_files: list[str]
    out: str
    active: list[str]   # cells this run trains when they are missing or stale
    read: list[str]     # cells the summaries, claims and figures read: active + present
    models: list[str]   # models with an lr scan in this run
    jobs: dict[tuple[str, str], Job]
    report: StampReport
    # the steps Snakemake was told to run whatever their outputs (--forceall, --forcerun RULE); a function, as
    # Snakemake knows them only once it builds the DAG, after the Snakefile is read
    forced: Callable[[], Iterable[str]] = lambda: ()

    def stamp(self, step: str, key: str = "") -> str:
        return str(stamp_path(self.out, self.jobs[(step, key)]))

    def data(self, cell: str) -> str:
        return data_path(self.out, self.params.cell(cell).model)

    def will_run(self, step: str, key: str = "", root: Path = Path(".")) -> bool:
        """Whether this job runs for a reason the stamps or the workspace show: params changed, no record vouches
        for its outputs, or they are missing; a probe also runs when its cell trains again."""
        job = self.jobs[(step, key)]
        if step in self.forced() or job in self.report.reruns or not all((root / o).exists() for o in job.outputs):
            return True
        return step == "probe" and self.will_run("train", key, root)

    def data_inputs(self, step: str, key: str) -> list[str]:
        """The prepared data as a declared input of a train, probe or lrscan job: when it exists or the job will run.

        Snakemake runs every job whose output is missing, and a missing input re-runs its consumers, ancient or not:
        declaring the data of a job that will not run would make a clone without the DVC cache prepare the data and
        re-train every committed cell. A job that runs for another reason (--forcerun) and finds no data says which
        prepare step to run.
        """
        path = data_path(self.out, self.params.cell(key).model if step != "lrscan" else key)
        # declared whenever it is there too: Snakemake re-runs a job whose recorded set of inputs changes
        return [path] if Path(path).exists() or self.will_run(step, key) else []


def _param_sections() -> set[str]:
    from bnflow.config import Params

    return {f.name for f in dataclasses.fields(Params)}


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse every --config/--configfile key the Snakefile does not use, naming it (a typo must not be ignored)."""
    for key in config:
        if key not in CONFIG_KEYS:
            known = "; ".join(f"{k}: {v}" for k, v in CONFIG_KEYS.items())
            hint = " Params go in params.yaml or an overlay (--config overlay=FILE), never in --configfile." \
                if key in _param_sections() else ""
            raise ConfigError(f"--config {key}: not a key this workflow reads (known: {known}).{hint}")


def select_cells(grid: Sequence[str], spec: str | None) -> list[str]:
    """The grid cells named by `spec` (comma-separated ids or fnmatch patterns); every cell when None."""
    import fnmatch

    if spec is None:
        return list(grid)
    patterns = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not patterns:
        raise ConfigError("--config cells: empty; give cell ids or patterns, e.g. cells='dln-*'")
    chosen = []
    for p in patterns:
        hits = [c for c in grid if fnmatch.fnmatchcase(c, p)]
        if not hits:
            raise ConfigError(f"--config cells: {p!r} matches no cell of train.grid ({', '.join(grid)})")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in grid if c in chosen]


def plan(config: Mapping[str, Any], root: Path = Path("."), lock: Path = Path("dvc.lock"),
         forced: Callable[[], Iterable[str]] = lambda: ()) -> Plan:
    """Validate the run's params and --config, choose its cells, build its jobs and sync their stamps.

    `forced()`: the steps Snakemake runs whatever their outputs (--forceall, --forcerun RULE): they declare their data.
    """
    from bnflow.config import expand_seed_counts, load_params, merge, read_yaml

    check_config(config)
    overlays = [f.strip() for f in str(config.get("overlay", "")).split(",") if f.strip()]
    files = ["params.yaml", *overlays]
    # validation first: its errors name the key and the file (files the params name are checked below, when needed)
    params = load_params(*(root / f for f in files), check_files=False)
    base = read_yaml(root / files[0])
    raw = base
    for f in files[1:]:
        raw = merge(raw, read_yaml(root / f))
    raw = expand_seed_counts(raw)  # an overlay's `seeds: {n: 2}` is train.seeds.n.<model> = 2 for every family
    out = params.out_dir
    grid = list(params.train.grid)
    active = select_cells(grid, config.get("cells"))
    present = [c for c in grid if (root / out / "runs" / c).is_dir()]
    read = [c for c in grid if c in active or c in present]
    model_of = {c: params.cell(c).model for c in grid}
    scanned = set(params.lrscan.models)  # lrscan.models: the families whose lr scan the pipeline runs
    models = sorted(({model_of[c] for c in active} | {m for m in model_of.values()
                                                       if (root / out / "lrscan" / m).is_dir()}) & scanned)
    jobs: dict[tuple[str, str], Job] = {}
    for m in sorted({model_of[c] for c in read} | set(models)):
        jobs[("prepare", m)] = Job("prepare", m, (data_path(out, m),), tuple(param_keys("prepare", model=m)))
    for c in read:
        m, prep = model_of[c], jobs[("prepare", model_of[c])]
        jobs[("train", c)] = Job("train", c, (f"{out}/runs/{c}",), tuple(param_keys("train", model=m)), (prep,))
        jobs[("probe", c)] = Job("probe", c, (f"{out}/probes/{c}",), tuple(param_keys("probe", model=m)), (prep,),
                                 (f"{out}/runs/{c}",))
    for m in models:
        jobs[("lrscan", m)] = Job("lrscan", m, tuple(f"{out}/lrscan/{m}/{f}" for f in LRSCAN_FILES),
                                  tuple(param_keys("lrscan", model=m)),
                                  (jobs[("prepare", m)],))
    cell_outs = tuple(f"{out}/{d}/{c}" for d in ("runs", "probes") for c in read)
    jobs[("summarize", "")] = Job("summarize", "", (f"{out}/stats/runs.csv",), tuple(param_keys("summarize")),
                                  inputs=cell_outs)
    jobs[("stats", "")] = Job("stats", "", tuple(f"{out}/stats/{f}" for f in ("claims.csv", "claims.json", "claims.md",
                                                                              "claims_metrics.json")),
                              tuple(param_keys("stats")), inputs=(f"{out}/stats/runs.csv",))
    jobs[("figures", "")] = Job("figures", "", (f"{out}/figures", f"{out}/REPORT.md", f"{out}/plots"),
                                tuple(param_keys("figures")),
                                inputs=(*cell_outs, *(f"{out}/lrscan/{m}/thresholds.csv" for m in models),
                                        f"{out}/stats/claims.md"))
    use_ledger = out == base.get("out_dir") and len(files) == 1 and (root / lock).exists()
    ledger = read_ledger(root / lock) if use_ledger else {}
    report = sync_stamps(list(jobs.values()), raw, out, ledger=ledger, root=root,
                         ledger_time=(root / lock).stat().st_mtime if use_ledger else None,
                         verify=partial(dvc_altered_outputs, root) if use_ledger else None)
    if use_ledger:  # outputs `dvc repro` checked and kept while it rewrote an input with the same content
        report.redated = redate_dvc_checked(list(jobs.values()), report, root)
    _check_sources(params, jobs, report, root)
    return Plan(params, raw, files, out, active, read, models, jobs, report, forced)


def _check_sources(params, jobs: Mapping[tuple[str, str], Job], report: StampReport, root: Path) -> None:
    """Before any job starts: if an image dataset must be prepared, the source it reads must be there."""
    from bnflow.config import require_files

    rerun = {j.stage for j in report.reruns}
    for (step, key), job in jobs.items():
        if step != "prepare" or key not in CLASSIFIERS:
            continue
        data_missing = not (root / job.outputs[0]).exists()
        trains = [j for (s, _), j in jobs.items() if s == "train" and params.cell(j.key).model == key]
        needed = any(j.stage in rerun or not (root / j.outputs[0]).exists() for j in trains)
        if job.stage in rerun or (data_missing and needed):
            require_files(params)


def messages(p: Plan, root: Path = Path(".")) -> list[str]:
    """What the Snakefile tells the user before the DAG runs: records it lacks, and checkpoints a probe needs."""
    out = []
    if p.report.altered:
        names = ", ".join(j.stage for j in p.report.altered)
        out.append(f"bnflow: the outputs of {names} differ from what dvc.lock recorded for them (edited by hand, or "
                   f"part of them deleted): they will be re-run. `dvc status` shows what changed; `dvc checkout` "
                   f"restores the recorded ones instead.")
    unvouched = [j for j in p.report.unvouched if j not in p.report.altered]
    if unvouched:
        names = ", ".join(j.stage for j in unvouched)
        out.append(f"bnflow: no record says which params made {names} (no Snakemake metadata, and dvc.lock does not "
                   f"match): they will be re-run. To keep them as they are, run `dvc repro --allow-missing` instead "
                   f"(dvc.lock is DVC's record), or `snakemake --touch` to declare them current.")
    retrained = {j.key for j in p.report.reruns if j.step == "train"}
    need = [j.key for j in p.report.reruns if j.step == "probe" and j.key not in retrained
            and not (root / p.out / "checkpoints" / j.key).is_dir()]
    if need:
        paths = " ".join(f"{p.out}/checkpoints/{c}" for c in need)
        out.append(f"bnflow: the probe step will re-run for {', '.join(need)}, and it needs their checkpoints, which "
                   f"are not in the workspace. Restore them with `dvc pull {paths}`, or re-train those cells: "
                   f"`snakemake --cores all --resources gpu=1 --forcerun "
                   f"{' '.join(f'{p.out}/runs/{c}' for c in need)}`.")
    return out

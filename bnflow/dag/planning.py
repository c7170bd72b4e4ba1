"""The Snakefile's plan: validate the run's params and --config, choose its cells, build its jobs, sync stamps.

`plan` is what the Snakefile calls once, before any rule is read; `Plan` is everything its rules template, and
`messages` what it tells the user before the DAG runs (records it lacks, checkpoints a probe needs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bnflow.dag.jobs import LRSCAN_FILES, Job, data_path, manifest_path, param_keys
from bnflow.dag.stamps import (StampReport, dvc_altered_outputs, read_ledger, redate_dvc_checked, stamp_path,
                               sync_stamps)
from bnflow.errors import ConfigError
from bnflow.vocab import CLASSIFIERS

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
        data = data_path(out, m)
        jobs[("prepare", m)] = Job("prepare", m, (data, str(manifest_path(data))),
                                   tuple(param_keys("prepare", model=m)))
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
                   f"match): they will be re-run. To keep them as they are, run `dvc repro` instead "
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

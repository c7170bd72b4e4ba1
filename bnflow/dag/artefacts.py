"""The pipeline's large artefacts: prepared data, checkpoints, full probe tables, and how DVC versions them.

They are too large for git and a clone has none of them until `dvc pull`. DVC's stages therefore neither declare
them as outputs nor depend on them (dvc.yaml): DVC re-runs every stage with an output missing from the workspace,
so a fresh clone's plain `dvc repro` would have re-trained every committed cell, and `dvc repro --dry` could not
hash a stage's missing data input. Each stage's outputs and dependencies are files kept in git instead (the runs
and probe summaries, the data's manifest), and the step that writes a large artefact, run by DVC, records it in the
DVC cache with a `.dvc` file of its own (`dvc add`, DVC_TRACKED), which git keeps: `dvc push` / `dvc pull` move it,
`dvc status` says when it is absent or altered, and nothing re-runs because it is absent.

A step that reads the prepared data and finds it absent (a fresh clone, a clone of a fork) rebuilds it from params
and the data's source before it starts, and every step checks the data it reads against the manifest the prepare
step committed beside it (bnflow.prepare.data_manifest): the same arrays, or a clear error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from bnflow.errors import DataError

log = logging.getLogger("bnflow.artefacts")

DVC_TRACKED = {"prepare": ("output",), "train": ("checkpoints_dir",), "probe": ("full_output",)}
"""Per step, the command-line arguments naming the large artefacts it writes: run by DVC (`--dvc-stage`), the step
records each in the DVC cache with its own `.dvc` file; dvc.yaml declares them nowhere. (Snakemake declares them as
outputs: tests/test_dag.py checks that the two tools' outputs agree once these are counted.)"""


def tracked_paths(step: str, args: object) -> list[Path]:
    """The large artefacts one step's parsed command line writes (DVC_TRACKED)."""
    return [Path(getattr(args, name)) for name in DVC_TRACKED.get(step, ()) if getattr(args, name, None) is not None]


def track_with_dvc(paths: Sequence[Path], root: Path = Path(".")) -> None:
    """Record `paths` in the DVC cache, each with a `.dvc` file beside it (what `dvc add` does).

    `dvc repro` releases its repository lock while a stage's command runs, so the step can take it here.

    Raises:
        DataError: no DVC project at `root`, or DVC refused (the message names the path and DVC's reason).
    """
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            repo.scm_context.quiet = True  # not DVC's "git add ..." advice in every step's log: the README says it
            repo.add([str(p) for p in paths])
    except NotDvcRepoError:
        raise DataError(f"{root.resolve()}: not a DVC project, so {', '.join(map(str, paths))} cannot be recorded "
                        f"in a DVC cache; run the step without --dvc-stage") from None
    except DvcException as e:
        raise DataError(f"{', '.join(map(str, paths))}: DVC could not record it in its cache ({e})") from None
    for p in paths:
        log.info("%s: recorded in the DVC cache (%s.dvc; `dvc push` sends it to the remote)", p, p)


def require_present(path: Path, remake: str) -> None:
    """Fail in one line, before a step starts, if a large artefact it reads is absent although a .dvc file records
    it (a clone without the DVC cache): say how to restore it (`dvc pull`) or make it again (`remake`)."""
    path = Path(path)
    if not path.exists() and Path(f"{path}.dvc").is_file():
        raise DataError(f"{path}: not in the workspace (a clone without the DVC cache); {path}.dvc records it: restore "
                        f"it with `dvc pull {path}`, or {remake}")


def ensure_data(params: object, model: str, data: Path) -> None:
    """Make sure the prepared data a step reads is there and is what its committed manifest records.

    Absent with a manifest beside it: rebuilt from params and its source (the prepare step's own code, under the
    prepare step's lock), then checked. Without a manifest (data prepared by hand, a test's file) nothing is checked:
    the step reads the file as given.

    Raises:
        DataError: the rebuilt or present data's arrays differ from the manifest (another source, other params).
    """
    from bnflow.dag.jobs import manifest_path
    from bnflow.io import step_lock
    from bnflow.prepare import data_manifest, write_data

    data = Path(data)
    manifest_file = manifest_path(data)
    if not manifest_file.is_file():
        return
    try:
        expected = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as e:
        expected = repr(e)
    if not isinstance(expected, dict) or not isinstance(expected.get("arrays"), dict):
        why = expected if isinstance(expected, str) else "no `arrays` mapping"
        raise DataError(f"{manifest_file}: not a data manifest ({why}); restore it from git (`git checkout "
                        f"{manifest_file}`)")
    with step_lock(data, [data, manifest_file]):
        if not data.exists():
            log.info("%s: not in the workspace (a clone without the DVC cache); rebuilding it from params and its "
                     "source, checked against %s", data, manifest_file)
            write_data(params, model, data)  # atomic; the manifest stays the committed one: it is what is checked
        found = data_manifest(data, model)
    if found["arrays"] != expected["arrays"]:
        differ = sorted(k for k in set(found["arrays"]) | set(expected["arrays"])
                        if found["arrays"].get(k) != expected["arrays"].get(k))
        raise DataError(f"{data}: its arrays differ from those {manifest_file} records ({', '.join(differ[:5])}"
                        f"{', ...' if len(differ) > 5 else ''}): the data was prepared from another source or with "
                        f"other params than the committed results. Delete it to have it rebuilt from params, restore "
                        f"the committed one (`dvc pull {data}`), or prepare it again and keep it (`dvc repro -f -s "
                        f"prepare@{model}`, then `dvc repro`: what reads the data re-runs)")

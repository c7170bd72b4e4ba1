"""The `probe` step: the paper's probes on saved checkpoints, without re-training (PROTOCOL §4-5).

For checkpoint `step{s}` of a run the probes see θ_s, the mini-batch that update s used (regenerated from the run's
stateless data order) and the noise-generator state saved before that step's forward, so at the same step they give
the numbers the dense probes of the training job gave. Its params (`probe:`) are its own: editing them re-runs
this step and what follows, never training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnflow.config import Params, to_plain
from bnflow.errors import DataError
from bnflow.io import check_absent, publish_dir, run_provenance, write_json, write_table
from bnflow.probes.runner import CURVATURE_TABLES, TABLES, Prober, ProbePlan
from bnflow.gpu import process_device
from bnflow.tasks import make_task, run_fingerprint
from bnflow.train.threads import STEP_THREADS, threads

log = logging.getLogger("bnflow.probe")


HASH_KEY = "sha256"
MANIFEST = "manifest.json"
_STEP_FILE = re.compile(r"step(\d+)\.pt")


class CorruptStateError(DataError):
    """A saved checkpoint or resume state cannot be read, or its content differs from the hash recorded with it."""


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint holding θ_step."""
    return f"step{step:06d}.pt"


def content_sha256(obj: Any) -> str:
    """sha256 of a saved state's content: every tensor's dtype, shape and bytes, and every other value's repr.

    Walks dicts (keys sorted as text), lists and tuples, so the digest depends on content only, not on how the file
    was written; a flipped bit in tensor data changes it (torch.load itself checks no checksum).
    """
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=str):
            _feed(digest, str(k))
            _feed(digest, obj[k])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(digest, v)
    else:
        digest.update(f"S{obj!r}".encode())


def seal(state: dict) -> dict:
    """`state` with its content hash under HASH_KEY: the form every checkpoint and resume state is saved in."""
    return state | {HASH_KEY: content_sha256(state)}


def load_sealed(path: Path, what: str) -> dict:
    """Read a sealed state with weights_only=True and check its content hash.

    Raises:
        CorruptStateError: the file is empty, truncated or not a torch file, holds no hash, or its content differs
            from the hash recorded at write time; the message names `path` and what happened.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file; all mean the same here
        size = path.stat().st_size if path.exists() else 0
        raise CorruptStateError(f"{path}: not a readable {what} ({size} bytes; {type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or HASH_KEY not in state:
        raise CorruptStateError(f"{path}: {what} without a content hash (written by an older bnflow, or not bnflow's)")
    recorded = state.pop(HASH_KEY)
    if content_sha256(state) != recorded:
        raise CorruptStateError(f"{path}: {what} content differs from the sha256 recorded when it was written "
                                "(damaged on disk)")
    return state


def retrain_hint(out_dir: str | Path, cell_id: str, ckpt_root: Path | None = None) -> str:
    """What rebuilds a cell's runs and checkpoints, for error messages."""
    runs = Path(out_dir) / "runs" / cell_id
    ckpt = ckpt_root if ckpt_root is not None else Path(out_dir) / "checkpoints" / cell_id
    return (f"re-train the cell: `rm -rf {runs} {ckpt}`, then re-run snakemake or `dvc repro train@{cell_id}` "
            f"(or run `python -m bnflow train --cell {cell_id} ... --force`)")


def _with_hint(message: str, hint: str) -> str:
    return f"{message}; {hint}" if hint else message


def load_checkpoint(path: Path, *, cell_id: str, seed: int, fingerprint: str | None = None,
                    hint: str | None = None) -> dict:
    """A checkpoint read with weights_only=True, its content hash verified, checked to belong to this cell and seed
    (and params). `hint` says what rebuilds it (default: re-run the train step; "" for none)."""
    hint = f"re-run the train step for {cell_id}" if hint is None else hint
    try:
        ck = load_sealed(path, "bnflow checkpoint")
    except CorruptStateError as e:
        raise CorruptStateError(_with_hint(str(e), hint)) from None
    meta = ck.get("meta", {})
    if not isinstance(meta, dict) or meta.get("cell") != cell_id or meta.get("seed") != seed:
        meta = meta if isinstance(meta, dict) else {}
        raise DataError(f"{path}: checkpoint of {meta.get('cell')!r} seed {meta.get('seed')!r}, not of {cell_id!r} "
                        f"seed {seed}; the checkpoints folder does not match the cell")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise DataError(_with_hint(f"{path}: checkpoint was trained with other params than params.yaml holds now",
                                   hint))
    named = _STEP_FILE.fullmatch(path.name)
    if named is not None and ck.get("step") != int(named.group(1)):
        raise CorruptStateError(_with_hint(f"{path}: holds step {ck.get('step')!r}, not the step its name says",
                                           hint))
    return ck


def write_manifest(seed_dir: Path, steps: list[int], diverged_at_step: int | None) -> None:
    """Record which checkpoints a finished run wrote (a diverged run stops saving at its divergence)."""
    write_json(seed_dir / MANIFEST, {"steps": steps, "diverged_at_step": diverged_at_step})


def checkpoint_files(seed_dir: Path, checkpoint_steps: tuple[int, ...], *, what: str, hint: str) -> list[Path]:
    """The checkpoint files of one run, in step order, checked to be exactly the set the params ask for.

    A completed run has one file per `checkpoint_steps` entry; a diverged run (its manifest says where) those up to
    its divergence. Contents are not read here: `load_checkpoint` verifies each file's hash.

    Args:
        seed_dir: the run's folder of step*.pt files and manifest.json.
        checkpoint_steps: train.<model>.checkpoint_steps.
        what: the params key named in messages (train.vgg.checkpoint_steps).
        hint: what rebuilds the set, appended to every message.

    Raises:
        DataError: no manifest, or missing or extra step files (named).
    """
    try:
        manifest = json.loads((seed_dir / MANIFEST).read_text())
        diverged = manifest["diverged_at_step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(_with_hint(f"{seed_dir}: no readable {MANIFEST} ({type(e).__name__}); the checkpoint set "
                                   "is incomplete or from an older bnflow", hint)) from None
    expected = [s for s in checkpoint_steps if diverged is None or s <= diverged]
    present: dict[int, Path] = {}
    extra: list[str] = []
    for path in sorted(seed_dir.glob("step*.pt")):
        m = _STEP_FILE.fullmatch(path.name)
        if m is None or int(m.group(1)) not in expected or checkpoint_name(int(m.group(1))) != path.name:
            extra.append(path.name)
        else:
            present[int(m.group(1))] = path
    missing = [s for s in expected if s not in present]
    if missing or extra:
        parts = ([f"missing step(s) {', '.join(map(str, missing))}"] if missing else []) + (
            [f"extra file(s) {', '.join(extra)}"] if extra else [])
        why = f" (the run diverged at step {diverged})" if diverged is not None else ""
        raise DataError(_with_hint(f"{seed_dir}: checkpoints differ from {what} = {list(checkpoint_steps)}{why}: "
                                   f"{'; '.join(parts)}", hint))
    return [present[s] for s in expected]


def theorem41_layers(rows: list[dict]) -> list[dict]:
    """Theorem 4.1's per-channel rows summarised per (step, layer): what the figures and git keep (issue 11).

    Columns step, layer, n_channels, reduction_median/min/max (‖g_y‖²/‖g_z‖² over the layer's channels; channels
    with g_z = 0 have no ratio and are left out), rel_gap_max, rel_gap_exact_max, eps_ratio_max. A NaN or inf gap
    propagates (a blown-up check is never summarised away).
    """
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((int(r["step"]), int(r["layer"])), []).append(r)
    out = []
    for (step, layer), rs in sorted(groups.items()):
        red = np.array([r["reduction"] for r in rs], dtype=float)
        red = red[~np.isnan(red)]

        def worst(key: str) -> float:
            v = np.array([r[key] for r in rs], dtype=float)
            return float(np.inf if np.isinf(v).any() else np.nan if np.isnan(v).any() else v.max())

        out.append({"step": step, "layer": layer, "n_channels": len(rs),
                    "reduction_median": float(np.median(red)) if red.size else float("nan"),
                    "reduction_min": float(red.min()) if red.size else float("nan"),
                    "reduction_max": float(red.max()) if red.size else float("nan"),
                    "rel_gap_max": worst("rel_gap"), "rel_gap_exact_max": worst("rel_gap_exact"),
                    "eps_ratio_max": worst("eps_ratio")})
    return out


THEOREM41_LAYER_COLUMNS = ("step", "layer", "n_channels", "reduction_median", "reduction_min", "reduction_max",
                           "rel_gap_max", "rel_gap_exact_max", "eps_ratio_max")


def probe_seed(params: Params, cell_id: str, seed: int, ckpt_dir: Path, data_path: Path | None,
               out_dir: Path, device: torch.device, full_dir: Path | None = None) -> dict:
    """Probe every checkpoint of one run; write the tidy tables into `out_dir` (git) and `full_dir` (DVC cache).

    The per-channel Theorem 4.1 table is bulky (a row per BN channel per checkpoint): it goes whole to `full_dir`,
    and `out_dir` gets its per-layer summary, theorem41_layers.csv, which is what figures and claims read.
    """
    cell, train = params.cell(cell_id), params.train
    hint = retrain_hint(params.out_dir, cell_id, ckpt_dir.parent)
    if not ckpt_dir.is_dir():
        raise DataError(f"{ckpt_dir}: no checkpoints of seed {seed}; {hint}")
    # exactly the set train.<model>.checkpoint_steps asks for: a missing or extra file would change results silently
    files = checkpoint_files(ckpt_dir, getattr(train, cell.model).checkpoint_steps,
                             what=f"train.{cell.model}.checkpoint_steps", hint=hint)
    task = make_task(train, cell, seed, data_path, device)
    fingerprint = run_fingerprint(params, cell_id, seed, task.data_info.get("source_sha256"))
    plan = ProbePlan.build(getattr(params.probe, cell.model), params.probe, cell.lr, params.probe.direction,
                           params.probe.curvature)
    prober = Prober.for_task(plan, task, base=train.seeds.base, seed=seed)
    names = TABLES + (CURVATURE_TABLES if plan.curvature is not None else ())
    tables: dict[str, list[dict]] = {name: [] for name in names}
    steps = []
    for path in files:
        ck = load_checkpoint(path, cell_id=cell_id, seed=seed, fingerprint=fingerprint, hint=hint)
        try:
            task.model.load_state_dict(ck["state_dict"])
        except RuntimeError as e:
            raise DataError(f"{path}: weights do not fit the {cell.model} of {cell_id} ({e})") from None
        task.model.train()  # batch statistics, as in training (PROTOCOL §5)
        step = int(ck["step"])
        batch = task.batch(step)
        for name, rows in prober.probe(step, batch.x, batch.y, noise_state=ck["noise_state"] or None).items():
            tables[name].extend(rows)
        steps.append(step)
    for name, rows in tables.items():
        if name == "theorem41":
            write_table(out_dir / "theorem41_layers.csv", theorem41_layers(rows), THEOREM41_LAYER_COLUMNS)
            if full_dir is not None:
                write_table(full_dir / "theorem41.csv", rows)
            continue
        write_table(out_dir / f"{name}.csv", rows)
    summary = {"cell": cell_id, "seed": seed, "run_id": cell.run_id(seed), "steps": steps,
               "direction": plan.direction, "etas": list(plan.etas),
               "params": {"probe": to_plain(params.probe), "cell": to_plain(cell)}}
    write_json(out_dir / "probe.json", summary)
    write_json(out_dir / "provenance.json", run_provenance(str(device)))
    return summary


def probe_cell(params: Params, cell_id: str, ckpt_root: Path, data_path: Path | None, out: Path, *,
               full_out: Path | None = None, force: bool = False) -> list[dict]:
    """Probe every seed of `cell_id` and publish `out/s{seed}/` (and `full_out/s{seed}/`) with one rename each."""
    check_absent(out, *([full_out] if full_out is not None else []), force=force)
    if not ckpt_root.is_dir():
        raise DataError(f"{ckpt_root}: checkpoints folder not found; run the train step for {cell_id} first")
    device = process_device(params.train.execution.device)
    scratch = Path(params.out_dir) / ".partial" / f"probe-{cell_id}"
    shutil.rmtree(scratch, ignore_errors=True)  # probing is cheap and stateless: restart it from scratch
    summaries = []
    # a fixed thread count, whoever starts the step: the probes' numbers never depend on a setting or the machine's
    # core count (bnflow.train.threads)
    with threads(STEP_THREADS):
        for seed in params.train.seeds.indices(params.cell(cell_id).model):
            summaries.append(probe_seed(params, cell_id, seed, ckpt_root / f"s{seed}", data_path,
                                        scratch / "git" / f"s{seed}", device, full_dir=scratch / "full" / f"s{seed}"))
            log.info("%s s%d: probed %d checkpoints", cell_id, seed, len(summaries[-1]["steps"]))
    if full_out is not None:
        (scratch / "full").mkdir(parents=True, exist_ok=True)
        publish_dir(scratch / "full", full_out, force=force)
    publish_dir(scratch / "git", out, force=force)  # last: the probes folder marks the cell probed
    shutil.rmtree(scratch, ignore_errors=True)
    return summaries

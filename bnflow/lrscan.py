"""The `lrscan` step: the largest learning rate each variant still trains at, from short runs over a grid of lrs.

The paper's "BN tolerates larger learning rates" (Fig 1, lr 0.5) as a number per variant and seed (PROTOCOL §8).
A short run is *trainable* when its loss never became NaN/inf and the mean of its last 10% of logged train losses is
at most `loss_fraction` times the loss at step 0. The threshold is the largest trainable lr below the first
untrainable one of the grid (so a lucky large lr after a failure does not count), and the first failing lr is kept
beside it: the true threshold lies between the two.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pandas as pd

from bnflow.config import Cell, Params, to_plain
from bnflow.errors import ConfigError
from bnflow.gpu import process_device
from bnflow.io import atomic_path, check_absent, publish_dir, run_provenance, write_json
from bnflow.train.cell import loop_config
from bnflow.train.loop import train_loop
from bnflow.train.threads import STEP_THREADS, threads
from bnflow.tasks import make_task

log = logging.getLogger("bnflow.lrscan")
SCAN_COLUMNS = ("model", "variant", "lr", "seed", "steps", "diverged", "loss0", "final_loss", "trainable")


def is_trainable(train_losses: list[float], diverged: bool, loss_fraction: float) -> tuple[float, float, bool]:
    """(loss at step 0, mean of the last 10% of logged losses, trainable?) of one short run."""
    if not train_losses:
        return math.nan, math.nan, False
    tail = train_losses[-max(1, len(train_losses) // 10):]
    final = sum(tail) / len(tail)
    ok = not diverged and math.isfinite(final) and final <= loss_fraction * train_losses[0]
    return train_losses[0], final, ok


def thresholds(scan: pd.DataFrame) -> pd.DataFrame:
    """Per (model, variant, seed): the largest trainable lr before the first failure, and that first failing lr."""
    rows = []
    for (model, variant, seed), d in scan.sort_values("lr").groupby(["model", "variant", "seed"], sort=True):
        ok = d.trainable.astype(bool).to_numpy()
        fail = int(ok.argmin()) if not ok.all() else len(ok)
        rows.append({"model": model, "variant": variant, "seed": int(seed),
                     "max_trainable_lr": float(d.lr.iloc[fail - 1]) if fail > 0 else math.nan,
                     "first_failing_lr": float(d.lr.iloc[fail]) if fail < len(ok) else math.nan})
    return pd.DataFrame(rows, columns=["model", "variant", "seed", "max_trainable_lr", "first_failing_lr"])


def _short_run(params: Params, model: str, cell: Cell, seed: int, data_path: Path, device, scratch: Path) -> dict:
    """One short run of the scan: its scan.csv row."""
    cfg, train = params.lrscan, params.train
    mcfg = getattr(cfg, model)
    task = make_task(train, cell, seed, data_path, device)
    loop = loop_config(train, cell, seed, steps=mcfg.steps)
    state = scratch / "state" / f"{cell.id}-s{seed}"  # one resume state per short run
    outcome = train_loop(task, loop, state, state, {}, fingerprint=f"lrscan:{cell.id}:{seed}:{mcfg.steps}")
    shutil.rmtree(state, ignore_errors=True)
    losses = [r["loss"] for r in outcome.tables["metrics"] if r["split"] == "train"]
    loss0, final, ok = is_trainable(losses, outcome.diverged, cfg.loss_fraction)
    log.info("lrscan %s s%d: %s", cell.id, seed, "trainable" if ok else "not trainable")
    return {"model": model, "variant": cell.variant, "lr": cell.lr, "seed": seed, "steps": mcfg.steps,
            "diverged": outcome.diverged, "loss0": loss0, "final_loss": final, "trainable": ok}


def scan_lrs(params: Params, model: str, data_path: Path, out_dir: Path, *, force: bool = False) -> pd.DataFrame:
    """Run every (variant, lr, seed) of `lrscan.<model>`, write scan.csv, thresholds.csv and summary.json.

    One model per call (one job per model): the DLN's scan runs on a CPU without the images, the VGG's on a GPU.
    """
    check_absent(out_dir, force=force)
    cfg, train = params.lrscan, params.train
    if not hasattr(cfg, model):
        raise ConfigError(f"--model {model!r}: lrscan has no section for it; scanned models: vgg, dln")
    device = process_device(train.execution.device)
    scratch = Path(params.out_dir) / ".partial" / f"lrscan-{model}"
    shutil.rmtree(scratch, ignore_errors=True)  # short runs: a killed scan starts again
    rows = []
    mcfg = getattr(cfg, model)
    # a fixed thread count, whoever starts the step: the scan's numbers never depend on a setting or the machine's
    # core count (bnflow.train.threads; train.numerics is not among this step's params)
    with threads(STEP_THREADS):
        for variant in mcfg.variants:
            for lr in mcfg.lrs:
                cell = Cell(model, variant, lr)
                for seed in range(cfg.seeds):
                    rows.append(_short_run(params, model, cell, seed, data_path, device, scratch))
    scan = pd.DataFrame(rows, columns=list(SCAN_COLUMNS))
    limits = thresholds(scan)
    scratch.mkdir(parents=True, exist_ok=True)
    for name, frame in (("scan.csv", scan), ("thresholds.csv", limits)):
        with atomic_path(scratch / "out" / name) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g", na_rep="", lineterminator="\n")
    summary = {f"{m}-{v}": {"median_max_trainable_lr": float(f"{d.max_trainable_lr.median():.6g}"),
                            "n_seeds": int(len(d))} for (m, v), d in limits.groupby(["model", "variant"])}
    write_json(scratch / "out" / "summary.json", summary)
    write_json(scratch / "out" / "provenance.json", {"lrscan": to_plain(cfg), "model": model,
                                                     "train": to_plain(getattr(train, model))} | run_provenance(device))
    publish_dir(scratch / "out", out_dir, force=force)
    shutil.rmtree(scratch, ignore_errors=True)
    return scan

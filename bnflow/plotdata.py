"""Curves for `dvc plots`: per grid cell, the across-seed mean of the training and landscape traces, as small CSVs.

`dvc plots diff main` draws every file of a plot folder as one series per revision, so a pull request shows each
variant's curve on main and on the branch side by side. The files are thinned to a fixed step grid (a point every
`every` steps) so they stay small in git; the full curves are in the runs' own tables. Computation only: the
figures step (which plots) calls `write_plot_data` with the tables it already read.

Folders under the plots root, one CSV per cell (columns step and the value):
    train_loss/   mean mini-batch (VGG) or full-batch (DLN) training loss; a diverged run's inf makes the mean inf
    train_acc/    mean mini-batch training accuracy (image models)
    test_acc/     mean test accuracy at each evaluation (image models)
    loss_band/    mean over seeds of max_η L(θ − ηg) / min_η L(θ − ηg) at each probed step (paper Fig 4a, as a ratio)
    grad_change/  mean of max_η ‖∇L(θ − ηg) − g‖ (Fig 4b)
    beta_eff/     mean of β_eff = max_η ‖∇L(θ − ηg) − g‖ / ‖ηg‖ (Fig 4c)
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.io import atomic_path, check_absent, publish_dir

PLOTS = ("train_loss", "train_acc", "test_acc", "loss_band", "grad_change", "beta_eff")
EVERY = {"vgg": 100, "dln": 50}  # thinning: a point every this many steps (the paper's probe cadence)


def _mean_by_step(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean over seeds per step; a NaN/inf of any seed propagates (a blow-up is never averaged away)."""
    wide = frame.pivot_table(index="step", columns="seed", values=value, aggfunc="first", dropna=False)
    with np.errstate(invalid="ignore"):
        mean = wide.to_numpy(dtype=float).mean(axis=1)
    return pd.DataFrame({"step": wide.index.to_numpy(dtype=int), value: mean})


def cell_curves(tables: Mapping[str, pd.DataFrame], cell: str, model: str, every: int | None = None
                ) -> dict[str, pd.DataFrame]:
    """The plot tables of one cell from the runs' long tables (bnflow.results.load_runs), thinned to `every`."""
    every = every or EVERY.get(model, 100)
    out: dict[str, pd.DataFrame] = {}
    metrics = tables.get("metrics", pd.DataFrame())
    m = metrics[metrics.cell == cell] if len(metrics) else metrics
    if len(m):
        train, test = m[m.split == "train"], m[m.split == "test"]
        out["train_loss"] = _mean_by_step(train, "loss")
        if train.acc.notna().any():
            out["train_acc"] = _mean_by_step(train, "acc")
        if len(test) and test.acc.notna().any():
            out["test_acc"] = _mean_by_step(test, "acc")
    land = tables.get("landscape", pd.DataFrame())
    land = land[land.cell == cell] if len(land) else land
    if len(land):
        per = land.groupby(["seed", "step"], sort=True).agg(lmax=("loss", "max"), lmin=("loss", "min"),
                                                            gmax=("grad_change", "max"), beta=("ratio", "max"))
        bad = land.assign(bad=~np.isfinite(land[["loss", "grad_change", "ratio"]]).all(axis=1)).groupby(
            ["seed", "step"]).bad.any()
        per = per.assign(band=per.lmax / per.lmin).reset_index()
        for col in ("band", "gmax", "beta"):  # a blown-up probe is +inf, never a pandas-skipped NaN
            per.loc[bad.to_numpy(), col] = np.inf
        for name, col in (("loss_band", "band"), ("grad_change", "gmax"), ("beta_eff", "beta")):
            out[name] = _mean_by_step(per, col).rename(columns={col: name})
    for name, frame in out.items():
        keep = frame.step % every == 0
        keep.iloc[-1] = True  # the last point (the budget) always stays
        out[name] = frame[keep].reset_index(drop=True)
    return out


def write_plot_data(tables: Mapping[str, pd.DataFrame], cells: Mapping[str, str], root: Path) -> list[Path]:
    """Write every cell's curves under `root/<plot>/<cell>.csv` (6 significant digits); returns the files.

    Args:
        tables: the runs' long tables with the run columns (bnflow.results.load_runs).
        cells: cell id -> model, for the cells present.
        root: the plots folder (written whole: stale files of absent cells do not survive).
    """
    written = []
    for cell, model in sorted(cells.items()):
        for name, frame in cell_curves(tables, cell, model).items():
            path = root / name / f"{cell}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
            written.append(path)
    return written


def publish_plot_data(tables: Mapping[str, pd.DataFrame], runs: pd.DataFrame, out: Path, *,
                      force: bool = False) -> list[Path]:
    """The figures step's `--plots-output`: every present cell's curves, published as one folder (one rename).

    Args:
        tables: the runs' long tables (bnflow.results.load_runs), as the figures step read them.
        runs: one row per run with its cell and model.
    """
    check_absent(out, force=force)
    cells = dict(zip(runs.cell, runs.model)) if len(runs) else {}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier attempt
    tmp.mkdir(parents=True)
    written = write_plot_data(tables, cells, tmp)
    publish_dir(tmp, out, force=force)
    return [out / p.relative_to(tmp) for p in written]

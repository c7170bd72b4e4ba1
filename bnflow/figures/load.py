"""Read the runs' tidy outputs into one long DataFrame per kind, with the run's identity as columns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bnflow.config import Params
from bnflow.errors import DataError

RUN_COLUMNS = ("cell", "model", "variant", "lr", "seed", "diverged")


def load_runs(params: Params, runs_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All grid cells' run summaries (one row per run) and metrics (long: one row per logged value).

    Args:
        params: resolved params; the grid says which cells must be there.
        runs_root: folder with one `{cell}/s{seed}/` folder per run (metrics.csv, run.json).
    """
    summaries, metrics = [], []
    for cell_id in params.train.grid:
        cell_dir = runs_root / cell_id
        if not cell_dir.is_dir():
            raise DataError(f"{cell_dir}: no runs for grid cell {cell_id}; run the train step for it first")
        for seed in params.train.seeds.indices:
            run_dir = cell_dir / f"s{seed}"
            try:
                summary = json.loads((run_dir / "run.json").read_text())
                m = pd.read_csv(run_dir / "metrics.csv")
            except (OSError, ValueError) as e:
                raise DataError(f"{run_dir}: unreadable run outputs ({e}); re-run the train step for {cell_id}") from None
            summaries.append({k: summary[k] for k in (*RUN_COLUMNS, "n_steps", "step_budget", "wall_s")})
            for k in RUN_COLUMNS:
                m[k] = summary[k]
            metrics.append(m)
    return pd.DataFrame(summaries), pd.concat(metrics, ignore_index=True)


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Fail with the missing column names instead of a KeyError deep inside matplotlib."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")

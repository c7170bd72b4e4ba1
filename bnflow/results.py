"""Read the runs' tidy outputs back: one long DataFrame per table, with the run's identity as columns.

Shared by the summarize, stats and figures steps, so every step reads results the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bnflow.config import Params
from bnflow.errors import DataError

RUN_COLUMNS = ("cell", "model", "variant", "lr", "seed", "diverged")
SUMMARY_COLUMNS = (*RUN_COLUMNS, "run_id", "status", "diverged_at_step", "n_steps", "step_budget", "wall_s")
TABLES = ("metrics", "landscape", "ics", "act_channels", "act_units")


def load_runs(params: Params, runs_root: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Run summaries (one row per run) and every tidy table of every run of the grid.

    Args:
        params: resolved params; the grid and seeds say which runs must be there.
        runs_root: folder with one `{cell}/s{seed}/` folder per run (run.json, metrics.csv, probe tables).

    Returns:
        (summaries, {table name: long DataFrame}); a table no run wrote (dense probes off) is an empty frame.
    """
    summaries, parts = [], {name: [] for name in TABLES}
    for cell_id in params.train.grid:
        for seed in params.train.seeds.indices:
            run_dir = runs_root / cell_id / f"s{seed}"
            try:
                summary = json.loads((run_dir / "run.json").read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"{run_dir}: no readable run.json ({e}); run the train step for {cell_id}") from None
            summaries.append({k: summary[k] for k in SUMMARY_COLUMNS})
            for name in TABLES:
                path = run_dir / f"{name}.csv"
                if not path.exists():
                    if name == "metrics":
                        raise DataError(f"{path}: missing; re-run the train step for {cell_id}")
                    continue
                try:
                    frame = pd.read_csv(path)
                except (OSError, ValueError) as e:
                    raise DataError(f"{path}: unreadable ({e}); re-run the train step for {cell_id}") from None
                for k in RUN_COLUMNS:
                    frame[k] = summary[k]
                parts[name].append(frame)
    tables = {name: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RUN_COLUMNS))
              for name, frames in parts.items()}
    return pd.DataFrame(summaries), tables


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Fail with the missing column names instead of a KeyError deep inside pandas or matplotlib."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")

"""Read the runs' tidy outputs back: one long DataFrame per table, with the run's identity as columns.

Shared by the summarize, stats and figures steps, so every step reads results the same way. A grid cell is *present*
when its `{runs_root}/{cell}/` folder exists (the train step publishes it only once every seed is done) and *not run
yet* otherwise (issue 11: a partial grid is an ordinary state). Inside a present cell every seed must be there; a
missing seed or table is a DataError that names the folder and the command that rebuilds it, never a silent NaN.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pandas as pd

from bnflow.config import Params
from bnflow.errors import DataError
from bnflow.io import RUN_TABLE

RUN_COLUMNS = ("cell", "model", "variant", "lr", "seed", "diverged")
SUMMARY_COLUMNS = (*RUN_COLUMNS, "run_id", "status", "diverged_at_step", "n_steps", "step_budget", "n_classes")
"""One row per run, from its run.json (n_classes: data.n_classes when the run records it, else empty)."""
TABLES = ("metrics", "landscape", "ics", "act_channels", "act_units")
DENSE_TABLES = TABLES[1:]
"""The dense probe tables the train step writes beside metrics.csv.gz when train.probes.<model>.every > 0."""


def present_cells(params: Params, runs_root: Path) -> list[str]:
    """Grid cells (in train.grid order) whose `{runs_root}/{cell}/` folder exists."""
    return [cell for cell in params.train.grid if (Path(runs_root) / cell).is_dir()]


def missing_cells(params: Params, runs_root: Path) -> list[str]:
    """Grid cells (in train.grid order) that are not run yet: no `{runs_root}/{cell}/` folder.

    Readers work on the present cells and list these as "not run yet" (REPORT.md, figure captions, claims).
    """
    return [cell for cell in params.train.grid if not (Path(runs_root) / cell).is_dir()]


def rebuild_hint(step: str, cell: str) -> str:
    """The command that rebuilds one cell's output of `step` (train or probe), for error messages."""
    return f"re-run the {step} step for {cell}: `dvc repro {step}@{cell}` (or Snakemake with --forcerun {step})"


def read_table(path: Path, step: str, cell: str) -> pd.DataFrame:
    """One tidy CSV; a file without rows (a probe with nothing to record) is an empty frame.

    Raises:
        DataError: the file is missing or unreadable, naming it and the command that rebuilds it.
    """
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {rebuild_hint(step, cell)}") from None
    except (OSError, ValueError, EOFError, zlib.error) as e:  # EOFError, zlib.error: a truncated .gz
        raise DataError(f"{path}: unreadable ({e}); {rebuild_hint(step, cell)}") from None


def _dense_probes_on(params: Params, model: str) -> bool:
    cfg = getattr(params.train.probes, model, None)
    return bool(cfg is not None and cfg.every)


def load_runs(params: Params, runs_root: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Run summaries (one row per run) and every tidy table of every run of the present grid cells.

    Args:
        params: resolved params; the grid says which cells may be there, the seeds which runs a present cell holds.
        runs_root: folder with one `{cell}/s{seed}/` folder per run (run.json, metrics.csv.gz, dense probe tables
            `{name}.csv.gz`: bnflow.io.RUN_TABLE).

    Returns:
        (summaries with SUMMARY_COLUMNS, {table name: long DataFrame with RUN_COLUMNS added}); a dense table is an
        empty frame when no run wrote it (dense probes off). Cells that are not run yet are left out (missing_cells).

    Raises:
        DataError: a present cell lacks a seed folder, a run.json, metrics.csv.gz, or a dense probe table that
            train.probes says it must hold.
    """
    runs_root = Path(runs_root)
    summaries, parts = [], {name: [] for name in TABLES}
    for cell_id in present_cells(params, runs_root):
        model = params.train.grid[cell_id].model
        for seed in params.train.seeds.indices(model):
            run_dir = runs_root / cell_id / f"s{seed}"
            if not run_dir.is_dir():
                raise DataError(f"{run_dir}: missing seed folder in a present cell; {rebuild_hint('train', cell_id)}")
            try:
                summary = json.loads((run_dir / "run.json").read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"{run_dir}: no readable run.json ({e}); {rebuild_hint('train', cell_id)}") from None
            row = {k: summary.get(k) for k in SUMMARY_COLUMNS if k != "n_classes"}
            summaries.append(row | {"n_classes": (summary.get("data") or {}).get("n_classes")})
            for name in TABLES:
                path = run_dir / RUN_TABLE.format(name)
                if name != "metrics" and not path.exists() and not _dense_probes_on(params, model):
                    continue  # dense probes off for this model: nothing was measured, nothing is missing
                frame = read_table(path, "train", cell_id)
                if frame.empty:
                    continue
                for k in RUN_COLUMNS:
                    frame[k] = summary[k]
                parts[name].append(frame)
    tables = {name: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RUN_COLUMNS))
              for name, frames in parts.items()}
    return pd.DataFrame(summaries, columns=list(SUMMARY_COLUMNS)), tables


def probe_run_dir(probes_root: Path, cell: str, seed: int) -> Path:
    """`{probes_root}/{cell}/s{seed}/` of a present cell; DataError (naming it and the rebuild command) if absent."""
    run_dir = Path(probes_root) / cell / f"s{seed}"
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: missing checkpoint-wise probe folder of a present cell; "
                        f"{rebuild_hint('probe', cell)}")
    return run_dir


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Fail with the missing column names instead of a KeyError deep inside pandas or matplotlib."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")

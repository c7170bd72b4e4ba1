"""The `stats` step: every registered claim decided from runs.csv, written as claims.csv, claims.json, claims.md and
claims_metrics.json (the compact file `dvc metrics` reads)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bnflow.config import Params
from bnflow.errors import DataError
from bnflow.io import atomic_files, check_absent
from bnflow.stats.evaluate import evaluate_claims
from bnflow.stats.write import write_claims_csv, write_claims_json, write_claims_md, write_claims_metrics


def run_stats(params: Params, runs_csv: Path, out_dir: Path, *, force: bool = False) -> pd.DataFrame:
    """Evaluate params.claims on the per-run summaries; same inputs (in any row order) give byte-identical files.

    Cells of train.grid without runs in runs.csv (a partial grid) make their claims not_run_yet.
    """
    outputs = [out_dir / f"claims.{ext}" for ext in ("csv", "json", "md")] + [out_dir / "claims_metrics.json"]
    check_absent(*outputs, force=force)
    try:
        runs = pd.read_csv(runs_csv)
    except (OSError, ValueError) as e:
        raise DataError(f"{runs_csv}: unreadable runs table ({e}); run the summarize step first") from None
    table = evaluate_claims(runs, params.claims, seed=params.stats.seed, ci_level=params.stats.ci_level,
                            grid=tuple(params.train.grid))
    with atomic_files(outputs) as tmp:  # all four or none: a full disk half way leaves the old set (issue 26)
        write_claims_csv(table, tmp[0])
        write_claims_json(table, tmp[1])
        write_claims_md(table, tmp[2])
        write_claims_metrics(table, tmp[3])
    return table

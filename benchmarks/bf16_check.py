"""Opt-in bf16 check (issue 16, lever 3): does every affected claim keep its verdict under bf16 autocast?

Trains the same VGG cells twice, with `train.vgg.precision` fp32 (TF32 allowed on a GPU) and bf16, everything else
equal, summarises both, evaluates every claim whose arms are all among the trained cells, and compares the verdicts
claim by claim. fp32 stays the default unless every compared verdict agrees (probes always run in fp32, PROTOCOL §5,
so bf16 can only change what training reaches). A claim whose metric has no finite value in one of the two runs
tables (e.g. edge_ratio, which needs the checkpoint-wise probe step) is listed as not measured, never as agreeing.

GPU only in practice (bf16 is ~25x slower than fp32 on these CPUs). Usage, on a GPU machine from the repo root:
    PYTHONPATH=. python benchmarks/bf16_check.py --data results/data/cifar10.npz --device cuda --steps 3000 \
        --out /tmp/bf16-check --json /tmp/bf16-check/report.json
The comparison logic (`affected_claims`, `compare_verdicts`, `check_passes`) is pure and unit-tested on CPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bnflow.config import (Cell, ClaimSpec, Params, fit_summary_windows, from_dict, merge,  # noqa: E402
                           read_yaml, to_plain)
from bnflow.errors import BnflowError, ConfigError  # noqa: E402
from bnflow.io import write_json  # noqa: E402
from bnflow.vocab import REFERENCE_ARMS  # noqa: E402

PRECISIONS = ("fp32", "bf16")
DEFAULT_CELLS = ("vgg-bn-lr0.1", "vgg-standard-lr0.1")
COLUMNS = ("claim_id", "metric", "arm_a", "arm_b", "lr", "verdict_fp32", "verdict_bf16", "estimate_fp32",
           "estimate_bf16", "status")
"""status: agree, differ, or not_measured (the metric has no finite value at one of the precisions)."""


def affected_claims(claims: Sequence[ClaimSpec], cells: Sequence[Cell]) -> list[ClaimSpec]:
    """The claims the trained cells decide: same model and lr, arm_a a trained variant, arm_b one too (or a
    reference arm such as chance, which needs no run)."""
    trained = {(c.model, c.variant, c.lr) for c in cells}
    return [c for c in claims if (c.model, c.arm_a, c.lr) in trained
            and (c.arm_b in REFERENCE_ARMS or (c.model, c.arm_b, c.lr) in trained)]


def measured(runs: pd.DataFrame, claim: ClaimSpec) -> bool:
    """Whether the runs table has a finite value of the claim's metric in every arm the claim compares."""
    if claim.metric not in runs.columns:
        return False
    arms = [claim.arm_a] + ([] if claim.arm_b in REFERENCE_ARMS else [claim.arm_b])
    for arm in arms:
        values = runs.loc[(runs.model == claim.model) & (runs.variant == arm) & np.isclose(runs.lr, claim.lr),
                          claim.metric]
        if not np.isfinite(pd.to_numeric(values, errors="coerce")).any():
            return False
    return True


def compare_verdicts(fp32: pd.DataFrame, bf16: pd.DataFrame, claims: Sequence[ClaimSpec],
                     measured_ids: dict[str, set[str]]) -> pd.DataFrame:
    """One row per claim (COLUMNS), in claim order, from the two claims tables (bnflow.stats evaluate_claims).

    Args:
        fp32, bf16: claims tables with at least claim_id, verdict and estimate.
        claims: the affected claims (affected_claims).
        measured_ids: per precision, the ids of the claims whose metric was measured (`measured`).
    A claim missing from a table counts as "differ" with verdict "missing": the check must not pass on it.
    """
    by = {p: t.set_index("claim_id") for p, t in (("fp32", fp32), ("bf16", bf16))}
    rows = []
    for c in claims:
        row = {"claim_id": c.id, "metric": c.metric, "arm_a": c.arm_a, "arm_b": c.arm_b, "lr": c.lr}
        for p in PRECISIONS:
            table = by[p]
            row[f"verdict_{p}"] = table.at[c.id, "verdict"] if c.id in table.index else "missing"
            row[f"estimate_{p}"] = float(table.at[c.id, "estimate"]) if c.id in table.index else float("nan")
        if not all(c.id in measured_ids[p] for p in PRECISIONS):
            row["status"] = "not_measured"
        else:
            row["status"] = "agree" if row["verdict_fp32"] == row["verdict_bf16"] != "missing" else "differ"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def check_passes(comparison: pd.DataFrame) -> bool:
    """True when at least one claim was compared and every compared claim's verdict agrees."""
    compared = comparison[comparison.status != "not_measured"]
    return len(compared) > 0 and bool((compared.status == "agree").all())


def format_report(comparison: pd.DataFrame) -> str:
    """A Markdown table of the comparison and the conclusion for the default precision."""
    lines = ["| claim | metric | arms | lr | fp32 | bf16 | estimate fp32 / bf16 | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in comparison.itertuples():
        lines.append(f"| {r.claim_id} | {r.metric} | {r.arm_a} vs {r.arm_b} | {r.lr:g} | {r.verdict_fp32} | "
                     f"{r.verdict_bf16} | {r.estimate_fp32:.4g} / {r.estimate_bf16:.4g} | {r.status} |")
    verdict = ("every compared verdict agrees: bf16 may become the default precision" if check_passes(comparison)
               else "verdicts differ (or none was compared): fp32 stays the default precision")
    return "\n".join(lines) + f"\n\n**{verdict}**\n"


# ----------------------------------------------------------------------------------------------- the GPU run itself
def check_params(params_paths: Sequence[Path], cells: Sequence[str], precision: str, steps: int | None, device: str,
                 out_dir: Path) -> Params:
    """params.yaml (and overlays, later files win) with only `cells` in the grid, the given precision, device and
    step budget, writing to out_dir."""
    raw: dict = {}
    for path in params_paths:
        raw = merge(raw, read_yaml(path))
    grid = read_yaml(params_paths[0])["train"]["grid"]  # the base file's grid: an overlay's grid replaces it whole
    grid = grid | raw["train"]["grid"]
    unknown = [c for c in cells if c not in grid]
    if unknown:
        raise ConfigError(f"--cells: {unknown[0]!r} is not a cell of train.grid in {params_paths[0]}")
    vgg: dict = {"precision": precision}
    if steps is not None:
        vgg |= {"steps": steps, "checkpoint_steps": [s for s in raw["train"]["vgg"]["checkpoint_steps"] if s < steps]
                + [steps]}
    raw = merge(raw, {"out_dir": str(out_dir), "train": {"vgg": vgg, "execution": {"device": device}}})
    raw["train"]["grid"] = {c: grid[c] for c in cells}
    # the summaries' windows within the (possibly shorter) runs: the params checks refuse longer ones
    return from_dict(fit_summary_windows(raw))


def run_precision(params: Params, data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every cell of params' grid, summarise and evaluate the affected claims: (runs, claims) tables."""
    from bnflow.stats import evaluate_claims  # here: only the GPU run needs training and stats
    from bnflow.summarize import summarize_runs
    from bnflow.train.cell import train_cell

    out = Path(params.out_dir)
    for cell_id in params.train.grid:
        train_cell(params, cell_id, data, out / "runs" / cell_id, out / "checkpoints" / cell_id, force=True)
    runs = summarize_runs(params, out / "runs")
    claims = affected_claims(params.claims, list(params.train.grid.values()))
    return runs, evaluate_claims(runs, claims, seed=params.stats.seed, ci_level=params.stats.ci_level,
                                 grid=list(params.train.grid))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the prepared dataset (.npz) the VGG cells train on")
    ap.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="comma-separated grid cells [%(default)s]")
    ap.add_argument("--steps", type=int, help="train.vgg.steps of both precisions [params.yaml]")
    ap.add_argument("--device", default="cuda", help="train.execution.device [%(default)s]")
    ap.add_argument("--params", type=Path, nargs="+", default=[ROOT / "params.yaml"],
                    help="params file and overlays (e.g. params.yaml workflow/quick.yaml for a CPU smoke run)")
    ap.add_argument("--out", type=Path, required=True, help="folder for both precisions' runs (out/fp32, out/bf16)")
    ap.add_argument("--json", type=Path, help="write the comparison to this JSON file")
    s = ap.parse_args(argv)
    cells = [c for c in s.cells.split(",") if c]
    tables, ids = {}, {}
    for p in PRECISIONS:
        params = check_params(s.params, cells, p, s.steps, s.device, s.out / p)
        runs, tables[p] = run_precision(params, s.data)
        ids[p] = {c.id for c in affected_claims(params.claims, list(params.train.grid.values())) if measured(runs, c)}
    claims = affected_claims(params.claims, list(params.train.grid.values()))
    comparison = compare_verdicts(tables["fp32"], tables["bf16"], claims, ids)
    print(format_report(comparison))
    if s.json:
        write_json(s.json, {"passes": check_passes(comparison), "cells": cells, "steps": s.steps,
                            "params": to_plain(params.train.vgg), "claims": comparison.to_dict(orient="records")})
    return 0 if check_passes(comparison) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BnflowError as e:
        sys.exit(f"error: {e}")

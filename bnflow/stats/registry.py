"""What a claim compares (STATS.md "Claims registry v2"): its metric's kind and scale, and its two arms of runs.

A claim compares one per-run summary (`metric`, a runs.csv column) between two arms (variants of one model at one
lr), or one arm against a constant (`arm_b` a reference arm: chance, 2/lr). Arms are read from the runs table
sorted by seed, so nothing downstream depends on the order of runs.csv's rows.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bnflow.config import ClaimSpec
from bnflow.errors import DataError
from bnflow.vocab import CLAIM_METRICS, REFERENCE_ARMS, format_lr


@dataclass(frozen=True)
class MetricSpec:
    """How a per-run summary is compared.

    kind: "log" (values are natural logs: differences are log ratios), "positive" (values > 0, compared as log
    ratios), "censored_time" (steps capped at the budget common to both arms), "continuous" (difference of means),
    "binary" (0/1: difference of proportions).
    """

    kind: str
    scale: str
    models: tuple[str, ...]


METRICS: dict[str, MetricSpec] = {name: MetricSpec(*spec) for name, spec in CLAIM_METRICS.items()}

METRIC_TEXT = {
    # how a sentence in claims.md names each summary (bnflow/summarize.py defines them)
    "steps_to_acc90": "steps to 90% train accuracy",
    "reached_acc90": "the fraction of runs that reach and hold 90% train accuracy",
    "train_acc_auc": "the mean train accuracy over the first steps",
    "final_train_acc": "the final train accuracy",
    "final_test_acc": "the final test accuracy",
    "final_train_loss": "the final train loss",
    "train_loss_auc_log": "the geometric-mean train loss over the run",
    "loss_band_log": "the max/min loss band along the gradient",
    "grad_change_log": "the gradient change along the gradient step",
    "beta_q90_log": "the 90th percentile of the effective beta-smoothness",
    "ics_rel_log": "the relative l2 ICS ‖G − G'‖/‖G‖",
    "ics_cos": "the ICS cosine cos(G, G')",
    "act_drift_log": "the drift of the activation moments",
    "edge_ratio": "lr·λ_max/2",
    "band_peak_early_log": "the early-window peak of the loss along the gradient relative to L(θ)",
    "grad_change_peak_early_log": "the early-window peak of the gradient change relative to ‖g‖",
    "beta_peak_early_log": "the early-window peak of the effective beta-smoothness",
}
"""Every claim metric has a phrase (a test checks it)."""


def seed_text(seeds: Sequence[int] | None) -> str:
    """A seed range or list as a reader writes it: "5–19", "3", "0–4, 7" (consecutive seeds joined)."""
    runs: list[list[int]] = []
    for s in sorted(seeds or ()):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


def natural_key(claim_id: str) -> tuple:
    """Sort key for claim ids: paper claims by number (C2a < C9 < C10), then the deep linear network's (`_dln`); a
    reduced-scale twin (`_cpu`) sorts right after its paper-scale claim (C1, C1_cpu, C2a).

    The id is split into runs of digits and non-digits (digits compared as numbers), so the key alternates str/int
    at the same positions for every id and ids always compare.
    """
    parts = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", claim_id)]
    return ("_dln" in claim_id, parts)


def claim_rng(seed: int, claim_id: str, n_streams: int) -> list[np.random.Generator]:
    """Independent generators for one claim, keyed by (stats seed, sha256 of the claim id), never Python's hash()."""
    key = int.from_bytes(hashlib.sha256(claim_id.encode("utf-8")).digest()[:16], "big")
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, key]).spawn(n_streams)]


def cell_of(claim: ClaimSpec, variant: str) -> str:
    """The grid cell id that holds one arm's runs: {model}-{variant}-lr{lr}."""
    return f"{claim.model}-{variant}-lr{format_lr(claim.lr)}"


@dataclass(frozen=True)
class Arm:
    """One arm's runs, sorted by seed, after leaving out (and counting) runs whose value was not measured.

    Attributes:
        seeds: seed indices, shape (n,).
        values: the metric, shape (n,) float64; ±inf is a blow-up (kept). Censored times are capped at their budget.
        censored: shape (n,) bool; only for censored_time metrics.
        budget: step budgets, shape (n,) float64; only for censored_time metrics.
        n_runs: rows of this arm in the runs table (0: the cell is not run yet).
        n_excluded: runs without a value (NaN: not measured), left out.
        n_diverged: kept runs that diverged.
        missing_seeds: seeds of the claim's `seeds` range that the cell lacks (runs.csv has no row for them); empty
            when the claim names no range, and when the cell has no run at all (then n_runs is 0).
    """

    seeds: np.ndarray
    values: np.ndarray
    censored: np.ndarray
    budget: np.ndarray
    n_runs: int
    n_excluded: int
    n_diverged: int
    missing_seeds: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return int(self.values.size)


def _floats(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A column as float64; True/False (and their text) as 1/0, empty cells as NaN."""
    column = frame[name]
    if column.dtype.kind in "biuf":
        return column.to_numpy(dtype=np.float64)
    if column.dtype == object:
        column = column.map(lambda v: {"True": 1.0, "False": 0.0}.get(v, v) if isinstance(v, str) else v)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def group_runs(runs: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    """The runs table split by (model, variant, lr as in cell ids), each part sorted by seed."""
    key = [runs["model"].astype(str), runs["variant"].astype(str), runs["lr"].map(lambda x: format_lr(float(x)))]
    return {k: part.sort_values("seed", kind="stable") for k, part in runs.groupby(key, sort=True)}


def select_arm(groups: Mapping[tuple[str, str, str], pd.DataFrame], claim: ClaimSpec, variant: str) -> Arm:
    """One arm of `claim` from group_runs' parts, sorted by seed, with STATS.md's missing-value rules.

    Diverged runs are kept with their value (summarize gives them the worst one); a run whose value is NaN (not
    measured, e.g. dense probes off) is left out and counted in n_excluded. A claim with a `seeds` range takes only
    the runs of those seeds, and lists the range's seeds the cell lacks (the claim is then not run yet: a partial
    seed set never silently shrinks n).
    """
    kind = METRICS[claim.metric].kind
    sel = groups.get((claim.model, variant, format_lr(claim.lr)))
    missing: tuple[int, ...] = ()
    if sel is not None and claim.seeds is not None:
        first, last = claim.seeds
        sel = sel[(sel["seed"] >= first) & (sel["seed"] <= last)]
        missing = tuple(sorted(set(range(first, last + 1)) - set(sel["seed"].astype(int))))
    if sel is None or sel.empty:
        empty = np.zeros(0)
        return Arm(empty.astype(np.int64), empty, empty.astype(bool), empty, 0, 0, 0, missing)
    values, diverged = _floats(sel, claim.metric), _floats(sel, "diverged") != 0
    censored = np.zeros(values.size, dtype=bool)
    budget = np.full(values.size, np.nan)
    if kind == "censored_time":
        budget = _floats(sel, "step_budget")
        censored = np.nan_to_num(_floats(sel, f"{claim.metric}_censored")) != 0
        values = np.where(censored, budget, values)
    keep = ~np.isnan(values)
    seeds = sel["seed"].to_numpy(dtype=np.int64)
    return Arm(seeds[keep], values[keep], censored[keep], budget[keep], int(values.size), int((~keep).sum()),
               int((keep & diverged).sum()), missing)


def reference_arm(claim: ClaimSpec) -> Arm:
    """The constant arm B of a claim against a reference (chance, 2/lr): one value, no runs."""
    return Arm(np.zeros(1, dtype=np.int64), np.array([float(claim.reference)]), np.zeros(1, bool),
               np.full(1, math.nan), 0, 0, 0)


def is_reference(claim: ClaimSpec) -> bool:
    return claim.arm_b in REFERENCE_ARMS


def check_runs(runs: pd.DataFrame, claims: Sequence[ClaimSpec]) -> None:
    """DataError unless the runs table has the columns the claims need and no duplicate runs."""
    needed = {"model", "variant", "lr", "seed", "diverged"}
    for c in claims:
        needed.add(c.metric)
        if METRICS[c.metric].kind == "censored_time":
            needed |= {f"{c.metric}_censored", "step_budget"}
    missing = sorted(needed - set(runs.columns))
    if missing:
        raise DataError(f"runs table: missing column(s) {', '.join(missing)} needed by the claims; "
                        "rerun the summarize step that writes runs.csv")
    for column in ("diverged", "step_budget", "seed"):
        if column in needed and runs[column].isna().any():
            raise DataError(f"runs table: column {column!r} has missing values; every run needs one")
    dup = runs.duplicated(["model", "variant", "lr", "seed"], keep=False)
    if dup.any():
        r = runs[dup].iloc[0]
        raise DataError(f"runs table: run {r['model']}-{r['variant']}-lr{format_lr(float(r['lr']))}-s{r['seed']} "
                        "appears more than once; each (model, variant, lr, seed) must be one row")

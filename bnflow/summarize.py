"""The `summarize` step: each run's curves reduced to the pre-declared per-run summaries of STATS.md (runs.csv).

The run, not the checkpoint, is the unit of analysis. Every summary is defined here once (= STATS.md "Per-run
summaries"); K = summarize.auc_steps, the window = summarize.probe_window × the step budget:
  steps_to_acc90      first logged step whose smoothed (trailing mean of `smooth_window` points) mini-batch train
                      accuracy ≥ `acc_threshold`; censored at the budget (steps_to_acc90_censored) if never reached,
                      or if the run diverged before reaching it
  reached_acc90       reached before any divergence and still held at the end (smoothed accuracy at the last logged
                      step ≥ threshold); false for a diverged run, which sits at chance at the end
  train_acc_auc       mean train accuracy over steps [0, K), each logged point holding until the next; a run that
                      diverged before K counts chance (1/classes) from its divergence step on
  final_train_acc     mean of the last `final_window` logged train accuracies; final_test_acc: test accuracy at the
                      budget; a diverged run counts chance for both
  final_train_loss    mean of the last `final_window` logged train losses (every model); +inf for a diverged run
  train_loss_auc_log  mean over logged steps of log train loss (how fast the loss comes down); +inf if diverged
  loss_band_log       mean over probed steps in the window of log max_η L(θ−ηg) − log min_η L(θ−ηg) (the band as a
                      ratio, the paper's top/bottom)
  grad_change_log     mean over probed steps in the window of log max_η ‖∇L(θ−ηg) − g‖
  beta_q90_log        log of the 90th percentile (nearest rank: the ⌈0.9 n⌉-th smallest) over probed steps in the
                      window of β_eff = max_η ‖∇L(θ−ηg) − g‖ / ‖ηg‖ (the spikes, not the plateau at 2/lr)
  ics_rel_log         mean over probed steps in the window and ICS layers of log(‖G − G'‖ / ‖G‖);
  ics_cos             the mean of cos(G, G') over the same
  act_drift_log       log of the mean over tracked (layer, channel) pairs of [the standard deviation over probed steps
                      in the window of the channel's mean] / [the mean over those steps of the channel's std] (Fig 8)
  band_peak_early_log         registry v3, the early window (dense probes at steps <= early_fraction × the budget):
                              log of the max over the window of max_η L(θ−ηg) / L(θ) (the largest blow-up of the
                              loss along the gradient, relative to the loss at θ: loss / loss0)
  grad_change_peak_early_log  log of the max over the early window of max_η ‖∇L(θ−ηg) − g‖ / ‖g‖ (grad_change /
                              grad_norm)
  beta_peak_early_log         log of the max over the early window of β_eff = max_η ratio
                              (any NaN/inf probe value in the early window makes all three +inf)
  edge_ratio          beyond the paper (PROTOCOL §8): mean of lr·λ_max/2 over the checkpoint-wise probes at steps
                      >= curvature_warmup × budget (1 = the edge of stability 2/lr)
  diverged            the loss became NaN/inf; the run keeps its row, flagged, never dropped
Blow-ups are data (STATS.md "Divergence and blow-ups"): a NaN or inf anywhere in one probe (any η, any layer) makes
that probe's value +inf, the worst (ics_cos −inf, the least aligned: the side ics_rel_log's +inf is on), never
skipped by a NaN-ignoring min/max; means over probes are then +inf. A diverged run's probe summaries use the probes
taken before it diverged, and are +inf when it diverged before any probe of the window (or any checkpoint after
warm-up). Empty cells: the summary does not apply (accuracies of the DLN) or was not measured (dense probes off).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.config import Params, SummarizeConfig
from bnflow.data.dataset import NUM_CLASSES
from bnflow.errors import DataError
from bnflow.io import atomic_path, check_absent
from bnflow.results import load_runs, probe_run_dir, read_table, rebuild_hint
from bnflow.vocab import CLASSIFIERS

IDENTITY = ("model", "variant", "lr", "seed", "cell", "run_id", "diverged", "diverged_at_step", "n_steps",
            "step_budget")
SUMMARIES = ("steps_to_acc90", "steps_to_acc90_censored", "reached_acc90", "train_acc_auc", "final_train_acc",
             "final_test_acc", "final_train_loss", "train_loss_auc_log", "loss_band_log", "grad_change_log",
             "beta_q90_log", "ics_rel_log", "ics_cos", "act_drift_log", "edge_ratio", "band_peak_early_log",
             "grad_change_peak_early_log", "beta_peak_early_log")
EARLY = ("band_peak_early_log", "grad_change_peak_early_log", "beta_peak_early_log")
_EARLY_INPUTS = ("loss", "grad_change", "ratio", "loss0", "grad_norm")  # every number of a landscape row
COLUMNS = (*IDENTITY, *SUMMARIES)
INF = math.inf
# float32 cross-entropy can round a perfectly fitted batch to exactly 0; floor before log so that it stays finite
_TINY = float(np.finfo(np.float32).tiny)


def _log(x: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(x, _TINY))


def _mean_or_inf(values: np.ndarray) -> float:
    """Mean of per-probe values where a non-finite value (a blow-up) is +inf, never skipped."""
    v = np.where(np.isfinite(values), values, INF)
    return float(np.mean(v))


def nearest_rank_quantile(values: np.ndarray, q: float) -> float:
    """The ⌈q·n⌉-th smallest value (no interpolation, so +inf is never averaged with a finite neighbour)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(v[max(0, math.ceil(q * v.size) - 1)])


# ------------------------------------------------------------------------------------------------- training curves
def accuracy_summaries(metrics: pd.DataFrame, cfg: SummarizeConfig, budget: int, *, diverged_at: int | None,
                       n_classes: int) -> dict:
    """Threshold, AUC and final accuracy summaries of one classifier run (metrics: step, split, loss, acc).

    Args:
        diverged_at: the step whose loss was NaN/inf (None for a completed run); from it on accuracy is chance.
        n_classes: classes of the task; chance accuracy is 1/n_classes.
    """
    chance = 1.0 / n_classes
    train = metrics[metrics.split == "train"].sort_values("step")
    steps, acc = train.step.to_numpy(dtype=np.int64), train.acc.to_numpy(dtype=np.float64)
    end = math.inf if diverged_at is None else diverged_at
    acc = np.where(steps >= end, chance, acc)
    smooth = pd.Series(acc).rolling(cfg.smooth_window, min_periods=1).mean().to_numpy()
    hits = steps[(smooth >= cfg.acc_threshold) & (steps < end)]
    out = {"steps_to_acc90": float(hits[0]) if hits.size else float(budget), "steps_to_acc90_censored": not hits.size}
    out["reached_acc90"] = bool(hits.size and diverged_at is None and smooth[-1] >= cfg.acc_threshold)
    out["train_acc_auc"] = _step_weighted_mean(steps, acc, min(cfg.auc_steps, budget), diverged_at, chance)
    if diverged_at is not None:
        out.update(final_train_acc=chance, final_test_acc=chance)
        return out
    out["final_train_acc"] = float(np.mean(acc[-cfg.final_window:]))
    final = metrics[(metrics.split == "test") & (metrics.step == budget)]
    if final.empty:
        raise DataError(f"metrics.csv.gz of a completed run has no test row at the budget (step {budget})")
    out["final_test_acc"] = float(final.acc.iloc[0])
    return out


def _step_weighted_mean(steps: np.ndarray, acc: np.ndarray, k: int, diverged_at: int | None, chance: float) -> float:
    """Mean accuracy over steps [0, k): each logged point holds until the next; chance from the divergence on."""
    if diverged_at is not None and diverged_at < k and diverged_at not in steps:
        steps, acc = np.append(steps, diverged_at), np.append(acc, chance)  # the run stopped logging there
    keep = steps < k
    steps, acc = steps[keep], acc[keep]
    if not steps.size:
        return float("nan")
    widths = np.diff(np.append(steps, k))
    return float(np.sum(widths * acc) / np.sum(widths))


def loss_summaries(metrics: pd.DataFrame, cfg: SummarizeConfig, *, diverged: bool) -> dict:
    """final_train_loss and train_loss_auc_log of one run; +inf (the worst) for a diverged run."""
    if diverged:
        return {"final_train_loss": INF, "train_loss_auc_log": INF}
    loss = metrics[metrics.split == "train"].sort_values("step").loss.to_numpy(dtype=np.float64)
    if not loss.size:
        raise DataError("metrics.csv.gz has no train rows")
    return {"final_train_loss": _mean_or_inf(loss[-cfg.final_window:]), "train_loss_auc_log": _mean_or_inf(_log(loss))}


# ------------------------------------------------------------------------------------------------------ the probes
def landscape_summaries(landscape: pd.DataFrame) -> dict:
    """loss_band_log, grad_change_log, beta_q90_log of one run's landscape rows inside the window (≥ 1 step)."""
    per_step = []
    for _, probe in landscape.groupby("step", sort=True):
        cols = probe[["loss", "grad_change", "ratio"]].to_numpy(dtype=np.float64)
        if not np.isfinite(cols).all():  # a blown-up probe: the worst value of every summary
            per_step.append((INF, INF, INF))
            continue
        loss, change, ratio = cols.T
        per_step.append((_log(loss.max()) - _log(loss.min()), _log(change.max()), ratio.max()))
    band, change, beta = np.array(per_step).T
    return {"loss_band_log": _mean_or_inf(band), "grad_change_log": _mean_or_inf(change),
            "beta_q90_log": float(_log(nearest_rank_quantile(beta, 0.9)))}


def early_peak_summaries(landscape: pd.DataFrame) -> dict:
    """The registry-v3 early-window peaks of one run's landscape rows inside the early window (≥ 1 row).

    The standard network's early effect is rare, huge spikes (STATS.md "Registry v3 additions"); a mean or a
    quantile over the window would dilute them, so each summary is the log of the window's maximum. The loss and
    gradient peaks are relative to the probe's own L(θ) and ‖g‖, so they compare runs whose loss scales differ.
    Any NaN/inf number in the window (a blown-up η) makes all three +inf: the worst value, never skipped.
    """
    values = landscape[list(_EARLY_INPUTS)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        return dict.fromkeys(EARLY, INF)
    loss, change, ratio, loss0, grad_norm = values.T
    with np.errstate(divide="ignore"):  # ‖g‖ = 0 leaves `ratio` NaN, so it never reaches here
        band, grad = np.max(loss / np.maximum(loss0, _TINY)), np.max(change / grad_norm)
    return {"band_peak_early_log": float(_log(band)), "grad_change_peak_early_log": float(_log(grad)),
            "beta_peak_early_log": float(_log(np.max(ratio)))}


def ics_summaries(ics: pd.DataFrame) -> dict:
    """ics_rel_log and ics_cos of one run's ICS rows inside the window (≥ 1 row)."""
    values = ics[["l2", "rel", "cos"]].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        return {"ics_rel_log": INF, "ics_cos": -INF}
    return {"ics_rel_log": float(np.mean(_log(values[:, 1]))), "ics_cos": float(np.mean(values[:, 2]))}


def act_drift_log(act: pd.DataFrame) -> float | None:
    """log mean over (layer, channel) of sd over steps of the channel mean / mean over steps of its std (Fig 8).

    A channel that never moves and has no spread (0/0) contributes 0; None with fewer than 2 probed steps.
    """
    if not np.isfinite(act[["mean", "var"]].to_numpy(dtype=np.float64)).all():
        return INF
    if act.step.nunique() < 2:
        return None
    act = act.assign(std=np.sqrt(act["var"].clip(lower=0.0)))
    per = act.groupby(["layer", "channel"], sort=True).agg(sd=("mean", "std"), scale=("std", "mean"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(per.sd.to_numpy() == 0, 0.0, per.sd.to_numpy() / per.scale.to_numpy())
    return float(_log(np.mean(ratio)))


def probe_summaries(tables: dict[str, pd.DataFrame], cfg: SummarizeConfig, budget: int, *,
                    diverged: bool) -> dict:
    """Every dense-probe summary of one run from its landscape, ics and act_channels rows (all steps): the
    probe_window summaries, and the early-window peaks over steps [0, early_fraction × budget].

    A table that is absent or empty (probes off) gives None (not measured); a diverged run with no probe inside the
    window gives the worst value (it blew up before it could be measured).
    """
    window = (cfg.probe_window[0] * budget, cfg.probe_window[1] * budget)
    early = (0.0, cfg.early_fraction * budget)
    out: dict = {}
    jobs = (("landscape", ("loss_band_log", "grad_change_log", "beta_q90_log"), landscape_summaries, window),
            ("ics", ("ics_rel_log", "ics_cos"), ics_summaries, window),
            ("act_channels", ("act_drift_log",), lambda t: {"act_drift_log": act_drift_log(t)}, window),
            ("landscape", EARLY, early_peak_summaries, early))
    for name, keys, summarise, (lo, hi) in jobs:
        table = tables.get(name)
        if table is None or table.empty:
            out.update(dict.fromkeys(keys))
            continue
        inside = table[(table.step >= lo) & (table.step <= hi)]
        if inside.empty:
            worst = {k: (-INF if k == "ics_cos" else INF) if diverged else None for k in keys}
            out.update(worst)
            continue
        out.update(summarise(inside))
    return out


def edge_ratio(curvature: pd.DataFrame | None, cfg: SummarizeConfig, budget: int, *, diverged: bool) -> float | None:
    """Mean lr·λ_max/2 over the checkpoints after warm-up; None when not probed, +inf for a blow-up."""
    if curvature is None or curvature.empty:
        return INF if diverged else None
    late = curvature[curvature.step >= cfg.curvature_warmup * budget]
    if late.empty:
        return INF if diverged else None
    return _mean_or_inf(late.lr_lambda_max.to_numpy(dtype=np.float64) / 2.0)


def read_curvature(params: Params, probes_root: Path | None, cell: str, seed: int) -> pd.DataFrame | None:
    """The checkpoint-wise curvature table of one run; None when no probes root is given or curvature is off."""
    if probes_root is None:
        return None
    run_dir = probe_run_dir(probes_root, cell, seed)
    path = run_dir / "curvature.csv"
    if not path.exists() and not params.probe.curvature.enabled:
        return None
    return read_table(path, "probe", cell)


# -------------------------------------------------------------------------------------------------------- the step
def summarize_runs(params: Params, runs_root: Path, probes_root: Path | None = None) -> pd.DataFrame:
    """One row per run of the present grid cells with every summary of COLUMNS, sorted by (model, variant, lr, seed).

    Raises:
        DataError: a seed folder, table or probe folder of a present cell is missing (results.load_runs).
    """
    summaries, tables = load_runs(params, runs_root)
    by_run = {name: dict(tuple(t.groupby(["cell", "seed"]))) if len(t) else {} for name, t in tables.items()}
    cfg, rows = params.summarize, []
    for _, run in summaries.iterrows():
        key = (run.cell, run.seed)
        own = {name: groups.get(key) for name, groups in by_run.items()}
        budget, diverged = int(run.step_budget), bool(run.diverged)
        diverged_at = _divergence_step(run, own["metrics"]) if diverged else None
        row = {k: run[k] for k in IDENTITY} | {"diverged_at_step": diverged_at}
        row |= dict.fromkeys(SUMMARIES)
        try:
            if run.model in CLASSIFIERS:
                n_classes = int(run.n_classes) if pd.notna(run.n_classes) else NUM_CLASSES
                row |= accuracy_summaries(own["metrics"], cfg, budget, diverged_at=diverged_at, n_classes=n_classes)
            row |= loss_summaries(own["metrics"], cfg, diverged=diverged)
        except DataError as e:
            raise DataError(f"{runs_root}/{run.cell}/s{run.seed}: {e}; {rebuild_hint('train', run.cell)}") from None
        row |= probe_summaries(own, cfg, budget, diverged=diverged)
        curvature = read_curvature(params, probes_root, run.cell, int(run.seed))
        row["edge_ratio"] = edge_ratio(curvature, cfg, budget, diverged=diverged)
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["variant"], float(r["lr"]), int(r["seed"])))
    # object dtype keeps None (empty cell: not applicable / not measured) apart from a computed NaN
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)


def _divergence_step(run: pd.Series, metrics: pd.DataFrame) -> int:
    """run.json's diverged_at_step; else the first train row with a non-finite loss; else the steps it ran."""
    if pd.notna(run.diverged_at_step):
        return int(run.diverged_at_step)
    train = metrics[metrics.split == "train"]
    bad = train.step[~np.isfinite(train.loss.to_numpy(dtype=np.float64))]
    return int(bad.min()) if len(bad) else int(run.n_steps)


def format_value(value: object) -> str:
    """One runs.csv cell: floats with 6 significant digits (nan, inf, -inf spelled out), None/NA empty."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), ".6g")
    return str(value)


def write_runs_csv(frame: pd.DataFrame, path: Path) -> None:
    """runs.csv: COLUMNS in order, rows as given, one float format, empty cells for NA, '\\n' line ends."""
    lines = [",".join(frame.columns)]
    lines += [",".join(format_value(v) for v in row) for row in frame.itertuples(index=False, name=None)]
    with atomic_path(path) as tmp:
        tmp.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def summarize(params: Params, runs_root: Path, output: Path, *, probes_root: Path | None = None,
              force: bool = False) -> pd.DataFrame:
    """Write runs.csv for the present grid cells (absent cells are not run yet: results.missing_cells)."""
    check_absent(output, force=force)
    frame = summarize_runs(params, runs_root, probes_root)
    write_runs_csv(frame, output)
    return frame

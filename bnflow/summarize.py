"""The `summarize` step: each run's curves reduced to the pre-declared per-run summaries of STATS.md (runs.csv).

The run, not the checkpoint, is the unit of analysis. Every summary is a pure function of one run's tidy tables:
  steps_to_acc90     first logged step whose smoothed mini-batch train accuracy reaches `acc_threshold`;
                     censored at the step budget (steps_to_acc90_censored) when never reached or diverged
  train_acc_auc      mean logged train accuracy over steps [0, auc_steps)
  final_train_acc    mean of the last `final_window` logged train accuracies (final_train_loss likewise)
  final_test_acc     test accuracy at the budget
  loss_range_log     mean over probed steps in the window of log(max_η L(θ−ηg) − min_η L(θ−ηg))
  grad_change_log    mean over the window of log max_η ‖∇L(θ−ηg) − g‖
  beta_smooth_log    mean over the window of log β_eff, β_eff = max_η ‖∇L(θ−ηg) − g‖ / ‖ηg‖
  ics_rel_log        mean over probed steps and ICS layers of log(‖G − G'‖ / ‖G‖); ics_cos the mean of cos(G, G')
  edge_ratio         beyond the paper (PROTOCOL §8): mean of lr·λ_max/2 over the checkpoint-wise probes at steps
                     >= curvature_warmup × budget (1 = the edge of stability 2/lr); NaN without curvature probes
A diverged run is kept: censored for steps_to_acc90, not reaching the threshold, NaN for the other summaries
(the stats step counts it as excluded, never drops it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.config import Params, SummarizeConfig
from bnflow.io import atomic_path, check_absent
from bnflow.results import load_runs

COLUMNS = ("model", "variant", "lr", "seed", "cell", "run_id", "diverged", "n_steps", "step_budget", "wall_s",
           "steps_to_acc90", "steps_to_acc90_censored", "reached_acc90", "train_acc_auc", "final_train_acc",
           "final_train_loss", "final_test_acc", "loss_range_log", "grad_change_log", "beta_smooth_log",
           "ics_rel_log", "ics_cos", "edge_ratio")


def _mean_log(values: pd.Series) -> float:
    v = values.to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(v)
    return float(np.mean(logs)) if len(logs) and np.all(np.isfinite(logs)) else float("nan")


def accuracy_summaries(metrics: pd.DataFrame, cfg: SummarizeConfig, budget: int, diverged: bool) -> dict[str, float]:
    """Threshold, AUC and final summaries of one run's metrics rows (columns step, split, loss, acc)."""
    train = metrics[metrics.split == "train"].sort_values("step")
    test = metrics[metrics.split == "test"].sort_values("step")
    out = {"final_train_loss": float("nan"), "final_train_acc": float("nan"), "final_test_acc": float("nan"),
           "train_acc_auc": float("nan"), "steps_to_acc90": float(budget), "steps_to_acc90_censored": True,
           "reached_acc90": False}
    if not diverged and len(train):
        out["final_train_loss"] = float(train.loss.tail(cfg.final_window).mean())
    has_acc = train.acc.notna().any()
    if not has_acc:  # the deep linear network has no accuracy
        out.update(steps_to_acc90=float("nan"), steps_to_acc90_censored=False)
        return out
    smooth = train.acc.rolling(cfg.smooth_window, min_periods=1).mean()
    hit = train.step[smooth.to_numpy() >= cfg.acc_threshold]
    if len(hit):
        out.update(steps_to_acc90=float(hit.iloc[0]), steps_to_acc90_censored=False, reached_acc90=True)
    early = train[train.step < cfg.auc_steps]
    if not diverged or (len(train) and train.step.max() >= cfg.auc_steps):
        out["train_acc_auc"] = float(early.acc.mean()) if len(early) else float("nan")
    if not diverged:
        out["final_train_acc"] = float(train.acc.tail(cfg.final_window).mean())
        final = test[test.step == budget]
        out["final_test_acc"] = float(final.acc.iloc[0]) if len(final) else float("nan")
    return out


def probe_summaries(landscape: pd.DataFrame, ics: pd.DataFrame, cfg: SummarizeConfig, budget: int,
                    diverged: bool) -> dict[str, float]:
    """Landscape and ICS summaries over the probed steps inside the window (fractions of the step budget)."""
    nan = float("nan")
    out = dict.fromkeys(("loss_range_log", "grad_change_log", "beta_smooth_log", "ics_rel_log", "ics_cos"), nan)
    if diverged:
        return out
    lo, hi = cfg.probe_window[0] * budget, cfg.probe_window[1] * budget

    def window(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame.step >= lo) & (frame.step <= hi)] if len(frame) else frame

    land = window(landscape)
    if len(land):
        per_step = land.groupby("step").agg(lmax=("loss", "max"), lmin=("loss", "min"),
                                            gmax=("grad_change", "max"), beta=("ratio", "max"))
        out["loss_range_log"] = _mean_log(per_step.lmax - per_step.lmin)
        out["grad_change_log"] = _mean_log(per_step.gmax)
        out["beta_smooth_log"] = _mean_log(per_step.beta)
    ics_w = window(ics)
    if len(ics_w):
        out["ics_rel_log"] = _mean_log(ics_w.rel)
        out["ics_cos"] = float(ics_w.cos.mean())
    return out


def edge_ratio(curvature: pd.DataFrame, cfg: SummarizeConfig, budget: int, diverged: bool) -> float:
    """Mean lr·λ_max/2 over the checkpoints after warm-up (NaN when diverged or not probed)."""
    if diverged or curvature is None or not len(curvature):
        return float("nan")
    late = curvature[curvature.step >= cfg.curvature_warmup * budget]
    return float((late.lr_lambda_max / 2.0).mean()) if len(late) else float("nan")


def read_curvature(probes_root: Path | None, cell: str, seed: int) -> pd.DataFrame | None:
    if probes_root is None:
        return None
    path = probes_root / cell / f"s{seed}" / "curvature.csv"
    return pd.read_csv(path) if path.exists() else None


def summarize_runs(params: Params, runs_root: Path, probes_root: Path | None = None) -> pd.DataFrame:
    """One row per run of the grid with every summary of COLUMNS, sorted by (model, variant, lr, seed)."""
    summaries, tables = load_runs(params, runs_root)
    cfg, rows = params.summarize, []
    for _, run in summaries.iterrows():
        def of(name: str) -> pd.DataFrame:
            t = tables[name]
            return t[(t.cell == run.cell) & (t.seed == run.seed)] if len(t) else t
        budget, diverged = int(run.step_budget), bool(run.diverged)
        row = {k: run[k] for k in ("model", "variant", "lr", "seed", "cell", "run_id", "diverged", "n_steps",
                                   "step_budget", "wall_s")}
        row |= accuracy_summaries(of("metrics"), cfg, budget, diverged)
        row |= probe_summaries(of("landscape"), of("ics"), cfg, budget, diverged)
        row["edge_ratio"] = edge_ratio(read_curvature(probes_root, run.cell, int(run.seed)), cfg, budget, diverged)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(["model", "variant", "lr", "seed"],
                                                                 ignore_index=True)


def write_runs_csv(frame: pd.DataFrame, path: Path) -> None:
    """runs.csv with one float format (repr precision), empty cells for NA, no index: diffs show real changes."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.10g", na_rep="", lineterminator="\n")


def summarize(params: Params, runs_root: Path, output: Path, *, probes_root: Path | None = None,
              force: bool = False) -> pd.DataFrame:
    check_absent(output, force=force)
    frame = summarize_runs(params, runs_root, probes_root)
    write_runs_csv(frame, output)
    return frame

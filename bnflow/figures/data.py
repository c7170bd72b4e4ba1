"""What the figures read: the runs' tidy tables, the checkpoint-wise probe tables, the lr scan, the grid's present
and absent cells, and where each model's data came from.

Figures never compute results; this module only gathers the tables and checks their columns, so that every figure
module shares one reading. A partial grid is normal (issue 11): a cell is present when `{runs_root}/{cell}/` exists;
absent cells are "not run yet" and figures name the ones they wait for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.config import Params, to_plain
from bnflow.describe import SOURCE_TEXT
from bnflow.errors import DataError
from bnflow.figures.palette import VariantStyle, variant_styles
from bnflow.figures.scales import describe_scales
from bnflow.figures.select import GRID_COLUMNS, PAPER_DEPTH, Need, model_order, waiting_cells
from bnflow.io import RUN_TABLE
from bnflow.results import RUN_COLUMNS, load_runs, present_cells, probe_run_dir, read_table, require_columns
from bnflow.vocab import CLASSIFIERS, MODELS

log = logging.getLogger("bnflow.figures")

PROBE_TABLES = ("landscape", "ics", "act_channels", "act_units", "curvature", "theorem41_layers", "theorem42")
# The columns each figure relies on (a table may hold more). curvature, theorem41_layers and theorem42 come from the
# probe step's curvature option (bnflow.curvature; PROTOCOL §8) and exist only in the checkpoint-wise probes;
# theorem41_layers is Theorem 4.1 summarised per (step, BN layer) over its channels (the per-channel table is DVC-cached,
# not read here).
COLUMNS = {
    "metrics": ("step", "split", "loss", "acc"),
    "landscape": ("step", "eta", "loss", "grad_change", "ratio"),
    "ics": ("step", "layer", "l2", "rel", "cos"),
    "act_channels": ("step", "layer", "channel", "mean", "var"),
    "act_units": ("step", "layer", "unit", "q05", "q25", "q50", "q75", "q95"),
    "curvature": ("step", "lambda_max", "batch_sharpness", "eig_iters", "eig_converged"),
    "theorem41_layers": ("step", "layer", "n_channels", "reduction_median", "reduction_min", "reduction_max",
                         "rel_gap_max", "rel_gap_exact_max", "eps_ratio_max"),
    "theorem42": ("step", "layer", "channel", "lhs", "rhs", "margin", "rel_gap", "rel_gap_exact"),
}
# The lr scan's tables, one folder per model: {lrscan_root}/{model}/scan.csv and thresholds.csv (bnflow.lrscan).
LRSCAN_COLUMNS = {
    "scan": ("model", "variant", "lr", "seed", "steps", "diverged", "loss0", "final_loss", "trainable"),
    "thresholds": ("model", "variant", "seed", "max_trainable_lr", "first_failing_lr"),
}


def _empty_grid() -> pd.DataFrame:
    return pd.DataFrame(columns=list(GRID_COLUMNS))


@dataclass(frozen=True)
class FigureData:
    """Everything a figure may draw from, as long tidy frames with the run columns cell, model, variant, lr, seed.

    Args:
        dense: table name (COLUMNS) -> rows written by the training job (metrics, dense probes); may be empty.
        checkpoint: probe table name -> rows of the checkpoint-wise probe step; may be empty.
        runs: one row per run (model, variant, lr, seed, diverged, run_id).
        sources: model -> data description for captions ("CIFAR-10 (...)", "synthetic ...").
        depths: model -> number of conv/linear layers of the trained network (for nearest-layer choices).
        band: across-seed band, "minmax" or "sd".
        activation_point: where activations were read (train.probes.activation_point): pre_relu or post_relu.
        curvature_setup: model -> how the curvature probes were taken ("Lanczos (…), w.r.t. all trainable
            parameters"), from the probe step's probe.json; empty when no run has curvature tables.
        probe_batch: model -> the batch a checkpoint is probed on ("the mini-batch of 128 images …").
        grid: one row per grid cell (select.GRID_COLUMNS): present (its runs folder exists) and, if so, its seeds
            ("0 1 2"); empty when unknown (then no figure says it waits for anything).
        lrscan: "scan" / "thresholds" -> the lr scan's rows of every model whose scan folder exists (LRSCAN_COLUMNS).
        lrscan_waiting: models the params scan whose lrscan folder is absent (not run yet).
        lrscan_setup: model -> how the scan decided ("500 steps, trainable: …"), for captions.
        palette: variant -> look; variants missing here get one from palette.variant_styles over every variant in
            the data (see `style`).
        scales: reduced-scale model family -> the words its figures carry in title and caption
            (scales.describe_scales: "reduced-scale VGG (VGG-11 ×0.125, 5,000 steps; PROTOCOL §10)").
    """

    dense: Mapping[str, pd.DataFrame]
    checkpoint: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*RUN_COLUMNS, "run_id"]))
    sources: Mapping[str, str] = field(default_factory=dict)
    depths: Mapping[str, int] = field(default_factory=lambda: dict(PAPER_DEPTH))
    band: str = "minmax"
    activation_point: str = "pre_relu"
    curvature_setup: Mapping[str, str] = field(default_factory=dict)
    probe_batch: Mapping[str, str] = field(default_factory=dict)
    grid: pd.DataFrame = field(default_factory=_empty_grid)
    lrscan: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    lrscan_waiting: tuple[str, ...] = ()
    lrscan_setup: Mapping[str, str] = field(default_factory=dict)
    palette: Mapping[str, VariantStyle] = field(default_factory=dict)
    scales: Mapping[str, str] = field(default_factory=dict)

    def table(self, name: str, model: str, *, checkpoint: bool = False) -> pd.DataFrame:
        """Rows of one table for one model; an absent or empty table is an empty frame, missing columns a DataError."""
        frame = (self.checkpoint if checkpoint else self.dense).get(name)
        if frame is None or frame.empty:
            return pd.DataFrame(columns=[*RUN_COLUMNS, *COLUMNS[name]])
        where = f"checkpoint-wise probe table {name}.csv" if checkpoint else f"table {RUN_TABLE.format(name)}"
        require_columns(frame, (*RUN_COLUMNS, *COLUMNS[name]), where)
        return frame[frame.model == model]

    def probes(self, name: str, model: str) -> tuple[pd.DataFrame, str]:
        """A probe table: the dense probes when the training job wrote them, else the checkpoint-wise ones.

        Returns:
            (rows, phrase for the caption saying which probes they are).
        """
        dense = self.table(name, model)
        if not dense.empty:
            gaps = np.diff(np.sort(dense.step.unique().astype(float)))
            return dense, f"dense probes every {gaps.min():g} steps" if len(gaps) else "dense probes"
        rows = self.table(name, model, checkpoint=True)
        steps = ", ".join(f"{s:g}" for s in sorted(rows.step.unique()))
        return rows, f"checkpoint-wise probes at steps {steps}"

    def models(self, name: str, *, checkpoint: bool = False) -> list[str]:
        """Models with rows in a table, the paper's first (select.PAPER_MODELS), then other models alphabetically."""
        frame = (self.checkpoint if checkpoint else self.dense).get(name)
        if frame is None or frame.empty or "model" not in frame:
            return []
        return sorted({str(m) for m in frame.model}, key=model_order)

    def source(self, model: str) -> str:
        return self.sources.get(model, "synthetic regression y = Ax" if model == "dln" else "unknown data")

    def diverged(self, model: str, variants: Sequence[str], lrs: Sequence[float]) -> list[str]:
        """Run ids of the diverged runs among these variants and lrs (their curves stop at divergence)."""
        r = self.runs
        if r.empty or "diverged" not in r:
            return []
        sel = r[(r.model == model) & r.variant.isin(list(variants)) & r.lr.isin(list(lrs)) & r.diverged.astype(bool)]
        return sorted(sel.run_id.astype(str))

    def waiting(self, need: Need) -> list[str]:
        """Grid cells (and lr-scan folders, as 'lrscan/{model}') not run yet that a figure drawing `need` would show."""
        scans = [f"lrscan/{m}" for m in self.lrscan_waiting] if need.lrscan else []
        return waiting_cells(self.grid, need) + scans

    @cached_property
    def _styles(self) -> dict[str, VariantStyle]:
        names: set[str] = set(self.palette)
        frames = [self.runs, self.grid, *self.dense.values(), *self.checkpoint.values(), *self.lrscan.values()]
        for frame in frames:
            if "variant" in frame.columns:
                names.update(str(v) for v in frame.variant.unique())
        return variant_styles(names) | dict(self.palette)

    def style(self, variant: str) -> VariantStyle:
        """The look of a variant in every figure of this report (any name, also ones bnflow has never seen)."""
        styles = self._styles
        return styles[variant] if variant in styles else variant_styles([*styles, variant])[variant]


def describe_source(model: str, data: Mapping) -> str:
    """The caption's data phrase from a run.json `data` block (the DLN's data are always its own regression)."""
    if model == "dln":
        n = data.get("n_samples")
        return f"synthetic regression y = Ax, x ~ N(0, I){f', {n} samples' if n else ''}"
    source = str(data.get("source", "unknown"))
    return SOURCE_TEXT.get(source, source)


def model_depths(params: Params) -> dict[str, int]:
    """Number of numbered layers (#1..#n: conv layers, the DLN's linear layers) of every model family's network."""
    return {model: params.train.n_layers(model) for model in MODELS}


def probe_batches(params: Params) -> dict[str, str]:
    """What a checkpoint is probed on, per model, for captions: the step's own mini-batch (images) or the full batch."""
    out = {"dln": f"the full batch of {params.train.dln.n_samples} samples"}
    for model in CLASSIFIERS:
        batch = getattr(getattr(params.train, model, None), "batch_size", None)
        if batch is not None:
            out[model] = f"the mini-batch of {batch} images the checkpoint's step trained on"
    return out


def grid_cells(params: Params, runs_root: Path) -> pd.DataFrame:
    """The grid's cells, each present (bnflow.results.present_cells: `{runs_root}/{cell}/` exists) or not run yet;
    rows in the grid's order.

    Returns:
        select.GRID_COLUMNS; seeds is "" here (load_figure_data fills it from the runs it read).
    """
    present = set(present_cells(params, runs_root))
    rows = [{"cell": cell_id, "model": cell.model, "variant": cell.variant, "lr": float(cell.lr),
             "present": cell_id in present, "seeds": ""} for cell_id, cell in params.train.grid.items()]
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))


def lrscan_models(params: Params) -> list[str]:
    """Models the lrscan step scans: lrscan.models, those with at least one variant."""
    cfg = params.lrscan
    return [m for m in cfg.models if getattr(cfg, m).variants]


def load_lrscan(root: Path, models: Sequence[str]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The lr scan's scan.csv and thresholds.csv of every model whose `{root}/{model}/` folder exists.

    Returns:
        ({"scan": rows, "thresholds": rows} of the present models (absent keys when none), models not run yet).
    """
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in LRSCAN_COLUMNS}
    absent = []
    for model in models:
        folder = root / model
        if not folder.is_dir():
            absent.append(model)
            continue
        for name, columns in LRSCAN_COLUMNS.items():
            path = folder / f"{name}.csv"
            if not path.exists():
                raise DataError(f"{path}: missing in a present lr-scan folder; re-run the lrscan step ({model})")
            frame = _read_csv(path, f"the lrscan step ({model})")
            require_columns(frame, columns, str(path))
            parts[name].append(frame)
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items() if v}, absent


def lrscan_setup(params: Params) -> dict[str, str]:
    """Per scanned model, how the scan decided, for the caption."""
    cfg = params.lrscan
    return {m: (f"{getattr(cfg, m).steps} steps per short run, {cfg.seeds} seed{'s' if cfg.seeds > 1 else ''}; "
                f"trainable = no NaN/inf and the mean of the last 10% of logged train losses ≤ {cfg.loss_fraction:g} × "
                f"the step-0 loss") for m in lrscan_models(params)}


def curvature_text(probe: Mapping) -> str:
    """'Lanczos (≤ 50 Hessian-vector products, residual tol 0.001), w.r.t. all trainable parameters'.

    Args:
        probe: the `probe` params block a probe step ran with (probe.json provenance.params.probe).
    """
    cv = probe.get("curvature", {})
    k, iters, method = cv.get("eig_k", 1), cv.get("eig_iters", "?"), cv.get("eig_method", "?")
    tol = f"{cv['eig_tol']:g}" if isinstance(cv.get("eig_tol"), int | float) else "?"
    if method == "auto":  # bnflow.curvature.top_eigenvalues: power iteration for k = 1, Lanczos for k > 1
        method = "power" if k == 1 else "lanczos"
    top = f"top {k}, " if k != 1 else ""
    if method == "lanczos":
        solver = f"Lanczos ({top}≤ {iters} Hessian-vector products, residual tol {tol})"
    elif method == "power":
        solver = (f"power iteration (≤ {iters} Hessian-vector products per phase, relative-change tol {tol}; a "
                  f"shifted second phase when the dominant eigenvalue is negative)")
    else:
        solver = f"eigen-solver {method}"
    params = {"all": "all trainable parameters", "weights": "conv/linear weights only"}.get(probe.get("params"),
                                                                                          "unknown parameters")
    return f"{solver}, w.r.t. {params}"


def _read_csv(path: Path, step: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()  # a table without rows is written as an empty file
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); re-run {step}") from None


def load_figure_data(params: Params, runs_root: Path, probes_root: Path | None = None,
                     lrscan_root: Path | None = None) -> FigureData:
    """Read every present cell of the grid (with its checkpoint-wise probes when `probes_root` is given, and the lr
    scan's tables when `lrscan_root` is given) for the figures."""
    grid = grid_cells(params, runs_root)
    summaries, dense = load_runs(params, runs_root)  # the present cells only
    seeds = summaries.groupby("cell").seed.apply(lambda s: " ".join(str(int(v)) for v in sorted(s))) \
        if len(summaries) else pd.Series(dtype=str)
    grid["seeds"] = grid.cell.map(seeds).fillna("")
    sources: dict[str, set[str]] = {}
    setups: dict[str, set[str]] = {}
    checkpoint: dict[str, list[pd.DataFrame]] = {name: [] for name in PROBE_TABLES}
    probes = probes_root is not None and probes_root.is_dir()
    if probes_root is not None and not probes:
        log.info("%s: no checkpoint-wise probes folder; checkpoint panels use the dense probes only", probes_root)
    for _, run in summaries.iterrows():
        run_json = json.loads((runs_root / run.cell / f"s{run.seed}" / "run.json").read_text())
        sources.setdefault(run.model, set()).add(describe_source(run.model, run_json.get("data", {})))
        if not probes:
            continue
        run_dir = probe_run_dir(probes_root, run.cell, int(run.seed))  # a present cell's probes must all be there
        for name in PROBE_TABLES:
            path = run_dir / f"{name}.csv"
            if not path.exists():  # curvature tables exist only with probe.curvature.enabled
                continue
            frame = read_table(path, "probe", run.cell)
            if frame.empty:
                continue
            for k in RUN_COLUMNS:
                frame[k] = run[k]
            checkpoint[name].append(frame)
        if (run_dir / "curvature.csv").exists():
            setups.setdefault(run.model, set()).add(curvature_text(_probe_params(run_dir, params)))
    if probes and not any(checkpoint.values()):
        log.info("%s: no checkpoint-wise probe tables; checkpoint panels use the dense probes only", probes_root)
    lrscan, lrscan_absent = load_lrscan(lrscan_root, lrscan_models(params)) if lrscan_root is not None else ({}, [])
    return FigureData(
        dense=dense,
        checkpoint={k: pd.concat(v, ignore_index=True) for k, v in checkpoint.items() if v},
        runs=summaries,
        sources={m: " + ".join(sorted(s)) for m, s in sources.items()},
        depths=model_depths(params),
        band=params.figures.band,
        activation_point=params.train.probes.activation_point,
        curvature_setup={m: " + ".join(sorted(s)) for m, s in setups.items()},
        probe_batch=probe_batches(params),
        grid=grid,
        lrscan=lrscan,
        lrscan_waiting=tuple(lrscan_absent),
        lrscan_setup=lrscan_setup(params) if lrscan_root is not None else {},
        scales=describe_scales(params),
    )


PROBE_PARAMS_AT = (("params", "probe"), ("provenance", "params", "probe"))
"""Where probe.json keeps the probe params it ran with: top-level `params` (the probe step since 212fc30), or inside
`provenance` (before it; no committed file has that layout, a results folder of that time still reads)."""


def _probe_params(run_dir: Path, params: Params) -> Mapping:
    """The probe params the probe step recorded in probe.json; params.yaml's when it recorded none."""
    path = run_dir / "probe.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    for keys in PROBE_PARAMS_AT:
        node = recorded
        for k in keys:
            node = node.get(k) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            return node
    log.info("%s: no probe params recorded; captions describe params.yaml's probe section", path)
    return to_plain(params.probe)

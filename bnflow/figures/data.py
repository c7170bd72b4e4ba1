"""What the figures read: the runs' tidy tables, the checkpoint-wise probe tables, and where each model's data came from.

Figures never compute results; this module only gathers the tables, checks their columns and picks which layers and
lrs of the grid stand in for the paper's (PROTOCOL §1), so that every figure module shares one reading.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.config import Params, to_plain
from bnflow.vocab import vgg_depth
from bnflow.errors import DataError
from bnflow.results import RUN_COLUMNS, load_runs, require_columns

log = logging.getLogger("bnflow.figures")

PROBE_TABLES = ("landscape", "ics", "act_channels", "act_units", "curvature", "theorem41", "theorem42")
# The columns each figure relies on (a table may hold more). curvature, theorem41 and theorem42 come from the probe
# step's curvature option (bnflow.curvature; PROTOCOL §8) and exist only in the checkpoint-wise probes.
COLUMNS = {
    "metrics": ("step", "split", "loss", "acc"),
    "landscape": ("step", "eta", "loss", "grad_change", "ratio"),
    "ics": ("step", "layer", "l2", "rel", "cos"),
    "act_channels": ("step", "layer", "channel", "mean", "var"),
    "act_units": ("step", "layer", "unit", "q05", "q25", "q50", "q75", "q95"),
    "curvature": ("step", "lambda_max", "batch_sharpness", "eig_iters", "eig_converged"),
    "theorem41": ("step", "layer", "channel", "lhs", "rhs", "rhs_exact", "rel_gap", "rel_gap_exact", "reduction",
                  "eps_ratio"),
    "theorem42": ("step", "layer", "channel", "lhs", "rhs", "margin", "rel_gap", "rel_gap_exact"),
}
PAPER_DEPTH = {"vgg": 13, "dln": 25}  # the paper's VGG has conv layers #1..#13; its DLN 25 linear layers
SOURCE_TEXT = {"torchvision": "CIFAR-10 (torchvision download)", "archive": "CIFAR-10 (local archive)",
               "synthetic": "synthetic 10-class images (prepare.source: synthetic), not CIFAR-10"}


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

    def table(self, name: str, model: str, *, checkpoint: bool = False) -> pd.DataFrame:
        """Rows of one table for one model; an absent or empty table is an empty frame, missing columns a DataError."""
        frame = (self.checkpoint if checkpoint else self.dense).get(name)
        if frame is None or frame.empty:
            return pd.DataFrame(columns=[*RUN_COLUMNS, *COLUMNS[name]])
        where = "checkpoint-wise probe table" if checkpoint else "table"
        require_columns(frame, (*RUN_COLUMNS, *COLUMNS[name]), f"{where} {name}.csv")
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

    def source(self, model: str) -> str:
        return self.sources.get(model, "synthetic regression y = Ax" if model == "dln" else "unknown data")

    def diverged(self, model: str, variants: Sequence[str], lrs: Sequence[float]) -> list[str]:
        """Run ids of the diverged runs among these variants and lrs (their curves stop at divergence)."""
        r = self.runs
        if r.empty or "diverged" not in r:
            return []
        sel = r[(r.model == model) & r.variant.isin(list(variants)) & r.lr.isin(list(lrs)) & r.diverged.astype(bool)]
        return sorted(sel.run_id.astype(str))


def describe_source(model: str, data: Mapping) -> str:
    """The caption's data phrase from a run.json `data` block (the DLN's data are always its own regression)."""
    if model == "dln":
        n = data.get("n_samples")
        return f"synthetic regression y = Ax, x ~ N(0, I){f', {n} samples' if n else ''}"
    source = str(data.get("source", "unknown"))
    return SOURCE_TEXT.get(source, source)


def model_depths(params: Params) -> dict[str, int]:
    """Number of conv (VGG) / linear (DLN) layers of the networks the grid trains."""
    return {"vgg": vgg_depth(params.train.vgg.arch), "dln": params.train.dln.depth}


def probe_batches(params: Params) -> dict[str, str]:
    """What a checkpoint is probed on, per model, for captions: the step's own mini-batch (VGG) or the full batch."""
    return {"vgg": f"the mini-batch of {params.train.vgg.batch_size} images the checkpoint's step trained on",
            "dln": f"the full batch of {params.train.dln.n_samples} samples"}


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


def _read_csv(path: Path, cell: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()  # the probe step writes a table without rows (no BN layer: theorem41) as an empty file
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); re-run the probe step for {cell}") from None


def load_figure_data(params: Params, runs_root: Path, probes_root: Path | None = None) -> FigureData:
    """Read every run of the grid (and its checkpoint-wise probes when `probes_root` is given) for the figures."""
    summaries, dense = load_runs(params, runs_root)
    sources: dict[str, set[str]] = {}
    setups: dict[str, set[str]] = {}
    checkpoint: dict[str, list[pd.DataFrame]] = {name: [] for name in PROBE_TABLES}
    for _, run in summaries.iterrows():
        run_json = json.loads((runs_root / run.cell / f"s{run.seed}" / "run.json").read_text())
        sources.setdefault(run.model, set()).add(describe_source(run.model, run_json.get("data", {})))
        if probes_root is None:
            continue
        run_dir = probes_root / run.cell / f"s{run.seed}"
        for name in PROBE_TABLES:
            path = run_dir / f"{name}.csv"
            if not path.exists():
                continue
            frame = _read_csv(path, run.cell)
            if frame.empty:
                continue
            for k in RUN_COLUMNS:
                frame[k] = run[k]
            checkpoint[name].append(frame)
        if (run_dir / "curvature.csv").exists():
            setups.setdefault(run.model, set()).add(curvature_text(_probe_params(run_dir, params)))
    if probes_root is not None and not any(checkpoint.values()):
        log.info("%s: no checkpoint-wise probe tables; checkpoint panels use the dense probes only", probes_root)
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
    )


def _probe_params(run_dir: Path, params: Params) -> Mapping:
    """The probe params the probe step recorded in probe.json; params.yaml's when it recorded none."""
    path = run_dir / "probe.json"
    try:
        recorded = json.loads(path.read_text())["provenance"]["params"]["probe"]
    except (OSError, ValueError, KeyError, TypeError):
        log.info("%s: no probe params recorded; captions describe params.yaml's probe section", path)
        return to_plain(params.probe)
    return recorded


def resolve_layers(paper: Sequence[int], available: Sequence[int], depth: int, paper_depth: int
                   ) -> list[tuple[int, tuple[int, ...]]]:
    """Which recorded layer stands in for each of the paper's layers.

    A paper layer that was recorded is used as is; otherwise the recorded layer nearest in relative depth
    (k / depth vs. k_paper / paper_depth), so a shallower network (VGG-11: 8 conv layers) maps #11 of 13 near its end.
    Paper layers that land on the same recorded layer share it.

    Args:
        paper: the paper's layer numbers (1-based), e.g. (3, 11).
        available: layer numbers present in the data.
        depth: layers of the trained network; paper_depth: layers of the paper's network.

    Returns:
        [(recorded layer, paper layers it stands for)], in the paper's order; empty when nothing was recorded.
    """
    avail = sorted({int(a) for a in available})
    if not avail:
        return []
    out: dict[int, list[int]] = {}
    for p in paper:
        if p in avail:
            layer = p
        else:
            target = p / paper_depth * depth
            layer = min(avail, key=lambda a: (abs(a - target), a))
        out.setdefault(layer, []).append(p)
    return [(layer, tuple(ps)) for layer, ps in out.items()]


def layer_title(layer: int, paper: tuple[int, ...]) -> str:
    """'layer #5', or 'layer #6 (stands for the paper's #5)' when another layer had to stand in."""
    if paper == (layer,):
        return f"layer #{layer}"
    others = ", ".join(f"#{p}" for p in paper)
    return f"layer #{layer} (nearest to paper's {others})"


def pick_lrs(available: Sequence[float], paper: Sequence[float]) -> list[float]:
    """The paper's lrs that the grid has, largest first; all the grid's lrs when it has none of them."""
    avail = sorted({float(a) for a in available}, reverse=True)
    chosen = [lr for lr in avail if any(abs(lr - p) <= 1e-9 * p for p in paper)]
    return chosen or avail

"""The rules a single field cannot express: between keys, between sections, on paths and on files.

They run on the built `Params` (bnflow.config.loading.from_dict), in the order `check_params` gives, so that the
first mistake a user sees is the most specific one (an unknown variant before the cell id that spells it).
"""

from __future__ import annotations

import re
from pathlib import Path

from bnflow.config.plugins import check_variants
from bnflow.config.sections import Params
from bnflow.errors import ConfigError
from bnflow.vocab import CLASSIFIERS, MODELS, REFERENCE_ARMS, VARIANTS


def check_params(p: Params) -> None:
    """Every rule of this module but `require_files`: paths, then cross-key rules, then rules between sections."""
    _check_paths(p)
    _check_semantics(p)
    _check_cross_fields(p)


def _check_semantics(p: Params) -> None:
    """Cross-key rules that a single field cannot express."""
    check_variants(p.train)  # first: a grid cell's unknown variant is named as such, not as an id mismatch
    for i, c in enumerate(p.claims):
        for key in ("arm_a", "arm_b"):
            arm = getattr(c, key)
            if arm not in (*VARIANTS, *REFERENCE_ARMS, *p.train.plugins):
                plugins = ", ".join(p.train.plugins) or "none declared"
                raise ConfigError(f"claims[{i}].{key}: unknown value {arm!r}; choose a variant ({', '.join(VARIANTS)}) "
                                  f"or a plug-in of train.plugins ({plugins})")
    for cell_id, cell in p.train.grid.items():
        if cell_id != cell.id:
            raise ConfigError(f"train.grid.{cell_id}: id does not match its values; write it as {cell.id!r}")
    for model in MODELS:
        cfg = p.train.model_config(model)
        bad = [s for s in cfg.checkpoint_steps if s < 0 or s > cfg.steps]
        if bad:
            raise ConfigError(f"train.{model}.checkpoint_steps: {bad[0]} is outside 0..{cfg.steps} (train.{model}.steps)")
        if list(cfg.checkpoint_steps) != sorted(set(cfg.checkpoint_steps)):
            raise ConfigError(f"train.{model}.checkpoint_steps: must be strictly increasing")
    n_layers = {model: p.train.n_layers(model) for model in MODELS}
    for section, cfg in (("train.probes", p.train.probes), ("probe", p.probe)):
        for model in MODELS:
            mcfg = getattr(cfg, model)
            for key in ("ics_layers", "activation_layers"):
                bad = [k for k in getattr(mcfg, key) if k > n_layers[model]]
                if bad:
                    raise ConfigError(f"{section}.{model}.{key}: layer {bad[0]} does not exist; the {model} has "
                                      f"{n_layers[model]} layers")
    lo_hi = p.summarize.probe_window
    if len(lo_hi) != 2 or lo_hi[0] >= lo_hi[1]:
        raise ConfigError(f"summarize.probe_window: must be [start, end] fractions with start < end, got {list(lo_hi)}")
    device = p.train.execution.device
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"train.execution.device: {device!r} is not auto, cpu, cuda or cuda:N")


CIFAR10_TRAIN_IMAGES = 50000  # what prepare's torchvision and archive sources give
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")
PATH_KEYS = ("out_dir", "prepare.archive", "prepare.download_dir")


def _check_paths(p: Params) -> None:
    """Path params are pasted into shell commands by Snakemake and DVC: letters, digits and `_ . / -` only."""
    for key in PATH_KEYS:
        value = p.out_dir if key == "out_dir" else getattr(p.prepare, key.split(".")[1])
        if not _SAFE_PATH.fullmatch(value) or value.startswith("-"):
            raise ConfigError(f"{key}: {value!r} is not a safe path; use only letters, digits and _ . / - (no "
                              "spaces or shell metacharacters), not starting with '-'")
    if ".." in p.out_dir.split("/"):
        raise ConfigError(f"out_dir: {p.out_dir!r} has a '..' component; give a folder inside the project or an "
                          "absolute path")


SYNTHETIC_MAX_IMAGES = 200_000
"""The most images prepare.synthetic may ask for per split: 4x CIFAR-10's 50,000 (the set it stands in for) is
2.5 GB as float32; 1e12 died in prepare with a raw MemoryError."""


def _check_windows(p: Params) -> None:
    """Windows and step counts that change results must fit the runs they summarize (issue 26).

    summarize.auc_steps beyond a run's step budget was cut to the budget, and a smoothing or final window longer
    than a run's logged points was shortened to them: both silently, so `auc_steps: 100000` changed nothing it seemed
    to, and `auc_steps: 6000` meant 6,000 steps for the paper-scale VGG but the whole 5,000 for the reduced-scale
    one. Refused here: a value beyond the budget of any model family with cells in train.grid (the runs that will be
    summarized), and, whatever the grid, a value beyond the budget of every family train.<model> configures.
    """
    for key in ("n_train", "n_test"):
        n = getattr(p.prepare.synthetic, key)
        if n > SYNTHETIC_MAX_IMAGES:
            raise ConfigError(f"prepare.synthetic.{key}: {n:,} images exceeds {SYNTHETIC_MAX_IMAGES:,} (4x CIFAR-10's "
                              "50,000, which the synthetic set stands in for: more would need many GB of memory)")
    s = p.summarize
    steps = {m: p.train.model_config(m).steps for m in MODELS}
    logged = {m: steps[m] // p.train.model_config(m).log_every + 1 for m in MODELS}  # steps 0, log_every, ...
    cells: dict[str, list[str]] = {}
    for key, cell in p.train.grid.items():
        cells.setdefault(cell.model, []).append(key)

    def named(model: str) -> str:
        keys = cells[model]
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    # the runs of the grid: each family's own budget
    for model in sorted(cells, key=lambda m: (steps[m], m)):
        if model in CLASSIFIERS and s.auc_steps > steps[model]:
            raise ConfigError(f"summarize.auc_steps: {s.auc_steps} exceeds train.{model}.steps = {steps[model]}, the "
                              f"step budget of the grid's {model} cells ({named(model)}); their train_acc_auc would "
                              f"silently cover whole runs: lower it to at most {steps[model]}")
    for key, n, families in (("smooth_window", s.smooth_window, CLASSIFIERS), ("final_window", s.final_window, MODELS)):
        for model in sorted(cells, key=lambda m: (logged[m], m)):
            if model in families and n > logged[model]:
                raise ConfigError(f"summarize.{key}: {n} logged points exceeds the {logged[model]} that each of the "
                                  f"grid's {model} cells ({named(model)}) logs (train.{model}.steps = {steps[model]} "
                                  f"logged every train.{model}.log_every); it would silently be cut to the run's "
                                  "length: lower it")
    # whatever the grid: beyond every family's budget is never meaningful
    longest = max(CLASSIFIERS, key=lambda m: steps[m])
    if s.auc_steps > steps[longest]:
        raise ConfigError(f"summarize.auc_steps: {s.auc_steps} exceeds every classifier's step budget (the longest: "
                          f"train.{longest}.steps = {steps[longest]}); train_acc_auc would silently cover whole runs: "
                          f"lower it to at most {steps[longest]}")
    for key, n, families in (("smooth_window", s.smooth_window, CLASSIFIERS), ("final_window", s.final_window, MODELS)):
        most = max(families, key=lambda m: logged[m])
        if n > logged[most]:
            raise ConfigError(f"summarize.{key}: {n} logged points exceeds what any run logs (the most: {logged[most]}, "
                              f"train.{most}.steps = {steps[most]} logged every train.{most}.log_every); it would "
                              f"silently be cut to each run's length: lower it")


def fit_summary_windows(raw: dict) -> dict:
    """Lower raw params' summarize windows, in place, to the largest that _check_windows accepts for raw's grid.

    For configurations that shrink their runs (test and benchmark sizes, `bf16_check.py --steps`): the summaries
    once cut a longer window to the run silently, so the fitted values give the numbers those configurations had.
    raw is plain params data (merged files, before validation) with every section the grid's families need.
    """
    models = {c["model"] for c in raw["train"]["grid"].values()}
    steps = {m: raw["train"][m]["steps"] for m in models}
    logged = {m: steps[m] // raw["train"][m]["log_every"] + 1 for m in models}
    s = raw["summarize"]
    s["auc_steps"] = min([s["auc_steps"], *(steps[m] for m in models if m in CLASSIFIERS)])
    s["smooth_window"] = min([s["smooth_window"], *(logged[m] for m in models if m in CLASSIFIERS)])
    s["final_window"] = min([s["final_window"], *logged.values()])
    return raw


def _check_cross_fields(p: Params) -> None:
    """Rules between sections, checked before any job starts rather than when the step that needs them runs."""
    _check_windows(p)
    for model in p.lrscan.models:
        if p.lrscan.seeds > p.train.seeds.count(model):
            raise ConfigError(f"lrscan.seeds: {p.lrscan.seeds} exceeds train.seeds.n.{model} "
                              f"({p.train.seeds.count(model)}); the scan's short runs use the grid's first seed "
                              "indices (the DLN's prepared problems exist only for those): lower it")
    cv = p.probe.curvature
    if cv.eig_k > cv.eig_iters:
        raise ConfigError(f"probe.curvature.eig_k: {cv.eig_k} exceeds probe.curvature.eig_iters ({cv.eig_iters}); "
                          "the eigen-solver finds at most eig_iters eigenvalues: lower eig_k or raise eig_iters")
    synthetic = p.prepare.source == "synthetic"
    n_train = p.prepare.synthetic.n_train if synthetic else CIFAR10_TRAIN_IMAGES
    source = "prepare.synthetic.n_train" if synthetic else f"CIFAR-10 from prepare.source {p.prepare.source}"
    for model in MODELS:
        dense = getattr(p.train.probes, model)
        if dense.every and dense.activation_every % dense.every:
            raise ConfigError(f"train.probes.{model}.activation_every: {dense.activation_every} is not a multiple of "
                              f"train.probes.{model}.every ({dense.every}); activations are recorded at probes only")
        cfg = getattr(p.train, model, None)
        batch = getattr(cfg, "batch_size", None)
        if batch is not None and batch > n_train:
            raise ConfigError(f"train.{model}.batch_size: {batch} exceeds the {n_train} training images ({source}); "
                              "lower it or use more images")
        # PROTOCOL §5: the ICS update and the landscape assume plain SGD steps
        dense = getattr(getattr(p.train.probes, model, None), "every", 0)
        sgd = {k: getattr(cfg, k, 0.0) for k in ("momentum", "weight_decay")}
        if dense and any(sgd.values()):
            keys = " and ".join(f"train.{model}.{k} = {v:g}" for k, v in sgd.items() if v)
            bad = [k for k, v in sgd.items() if v]
            raise ConfigError(f"train.{model}.{bad[0]}: dense probes (train.probes.{model}.every = {dense}) assume "
                              f"plain SGD, but {keys}; set {'them' if len(bad) > 1 else 'it'} to 0 or switch the "
                              f"probes off (train.probes.{model}.every: 0)")


def require_files(p: Params) -> None:
    """Files the params name must exist (relative paths: relative to the project root, the current folder)."""
    if p.prepare.source == "archive":
        path = Path(p.prepare.archive)
        resolved = path if path.is_absolute() else Path.cwd() / path
        if not resolved.exists():
            raise ConfigError(f"prepare.archive: {resolved} does not exist (prepare.source is archive); give the "
                              "path of cifar-10-python.tar.gz or an image-folder archive, relative to the project "
                              "root")

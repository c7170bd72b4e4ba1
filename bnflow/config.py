"""params.yaml loaded into frozen, typed objects, validated before any work starts.

Every default lives once, in params.yaml; the dataclasses below only say what each key is and which values it may
take. Overlays (e.g. workflow/quick.yaml) are merged key by key on top of the base file, except that an overlay's
`train.grid` replaces the base grid as a whole (a quick run wants fewer cells, not more).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import io
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bnflow.errors import ConfigError
from bnflow.vocab import (CELL_ID, CLAIM_DIRECTIONS, CLAIM_FAMILIES, CLAIM_METRICS, CLAIM_SCALES, CLAIM_TYPES,
                          CLASSIFIERS, DLN_VARIANTS, MODELS, REFERENCE_ARMS, RESNET_DEPTHS, VARIANT_NAME, VARIANTS,
                          VGG_LAYERS, format_lr, resnet_conv_layers, vgg_depth)

REPLACED_BY_OVERLAY = (("train", "grid"),)


def rule(*, ge: float | None = None, gt: float | None = None, le: float | None = None, nonempty: bool = False):
    """A dataclass field with range constraints, checked by the loader (no default: params.yaml holds it)."""
    return field(metadata={"ge": ge, "gt": gt, "le": le, "nonempty": nonempty})


# ----------------------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = rule(ge=0)
    n_train: int = rule(ge=10)
    n_test: int = rule(ge=10)


@dataclass(frozen=True)
class PrepareConfig:
    source: Literal["torchvision", "archive", "synthetic"]
    archive: str
    download_dir: str
    synthetic: SyntheticConfig


@dataclass(frozen=True)
class SeedsConfig:
    """Seed indices per model family: a grid cell of model m trains seeds 0..n[m]-1.

    params.yaml gives one count per family (DVC tracks `train.seeds.n.<model>` per stage, so adding DLN seeds
    re-runs no VGG cell); an overlay may give one int for every family (`seeds: {n: 2}`), expanded at load.
    """

    base: int = rule(ge=0)
    n: dict[str, int]

    def count(self, model: str) -> int:
        """How many seeds the cells of `model` train."""
        return self.n[model]

    def indices(self, model: str) -> tuple[int, ...]:
        """The seed indices 0..n[model]-1 of the cells of `model`."""
        return tuple(range(self.n[model]))


@dataclass(frozen=True)
class NormConfig:
    eps: float = rule(gt=0)
    momentum: float = rule(gt=0, le=1)
    groups: int = rule(ge=1)  # group_norm's groups, clipped per layer (bnflow.models.norms.group_count)


@dataclass(frozen=True)
class NoiseConfig:
    n_mu: float = rule(ge=0)
    n_sigma: float = rule(ge=1)
    r_mu: float = rule(ge=0)
    r_sigma: float = rule(ge=0)


@dataclass(frozen=True)
class ImageTrainConfig:
    """The training keys every image classifier shares (VGG, ResNet): the training loop and the test evaluation read
    them alike; each model adds the keys that build its network."""

    width_mult: float = rule(gt=0, le=4)
    steps: int = rule(ge=1)
    batch_size: int = rule(ge=1)
    momentum: float = rule(ge=0, le=1)
    weight_decay: float = rule(ge=0)
    log_every: int = rule(ge=1)
    eval_every: int = rule(ge=1)
    eval_batch_size: int = rule(ge=1)
    checkpoint_steps: tuple[int, ...] = rule(nonempty=True)
    precision: Literal["fp32", "bf16"]


@dataclass(frozen=True)
class VggConfig(ImageTrainConfig):
    arch: Literal["vgg16", "vgg11"]


@dataclass(frozen=True)
class ResNetConfig(ImageTrainConfig):
    """The CIFAR ResNet (bnflow/models/resnet.py, beyond the paper): `depth` = 6n + 2."""

    depth: Literal[RESNET_DEPTHS]


@dataclass(frozen=True)
class PluginConfig:
    """A user normalisation variant (train.plugins.<name>): `module` is "pkg.mod:Class", importable from the project
    root; the class is built as Class(C) for each normalised layer of C channels (bnflow.models.norms.make_norm)."""

    module: str


@dataclass(frozen=True)
class DlnConfig:
    depth: int = rule(ge=2)
    dim: int = rule(ge=1)
    n_samples: int = rule(ge=2)
    steps: int = rule(ge=1)
    log_every: int = rule(ge=1)
    checkpoint_steps: tuple[int, ...] = rule(nonempty=True)


@dataclass(frozen=True)
class ExecutionConfig:
    device: str
    parallel_runs: int = rule(ge=1)
    sync_every: int = rule(ge=1)
    resume_every_s: float = rule(ge=0)
    progress_every_s: float = rule(ge=0)
    cuda_graphs: bool


@dataclass(frozen=True)
class NumericsConfig:
    """The execution settings that decide a run's numbers (float summation order): recorded in run.json and a
    dependency of the train step, unlike train.execution (bnflow.train.threads)."""

    mode: Literal["separate", "packed"]  # packed: a VGG cell's seeds as one grouped model (bnflow.train.packed)
    threads_per_run: int = rule(ge=1)  # torch intra-op threads of each run (one packed model is one run)


@dataclass(frozen=True)
class ModelProbeConfig:
    """What a probe measures on one model (PROTOCOL §4-5); layers are 1-based conv/linear indices."""

    eta_factors: tuple[float, ...] = rule(gt=0, nonempty=True)
    ics_layers: tuple[int, ...] = rule(ge=1)
    activation_layers: tuple[int, ...] = rule(ge=1)


@dataclass(frozen=True)
class DenseModelProbeConfig(ModelProbeConfig):
    every: int = rule(ge=0)
    activation_every: int = rule(ge=0)  # activations at probes whose step is a multiple of it; 0: at every probe


@dataclass(frozen=True)
class ProbeOptions:
    n_channels: int = rule(ge=0)
    n_units: int = rule(ge=0)
    params: Literal["all", "weights"]
    ics_update: Literal["all", "weights"]
    activation_point: Literal["pre_relu", "post_relu"]


@dataclass(frozen=True)
class DenseProbeConfig(ProbeOptions):
    vgg: DenseModelProbeConfig
    vgg_cpu: DenseModelProbeConfig
    dln: DenseModelProbeConfig
    resnet: DenseModelProbeConfig


@dataclass(frozen=True)
class CurvatureConfig:
    """Beyond the paper (PROTOCOL §8): Hessian spectrum and Theorem 4.1/4.2 checks, checkpoint-wise only."""

    enabled: bool
    eig_k: int = rule(ge=1)
    eig_iters: int = rule(ge=2)
    eig_tol: float = rule(gt=0)
    eig_method: Literal["lanczos", "power", "auto"]
    theorem42_channels: int = rule(ge=0)


@dataclass(frozen=True)
class ProbeConfig(ProbeOptions):
    vgg: ModelProbeConfig
    vgg_cpu: ModelProbeConfig
    dln: ModelProbeConfig
    resnet: ModelProbeConfig
    direction: Literal["gradient", "random"]
    curvature: CurvatureConfig


@dataclass(frozen=True)
class Cell:
    """One grid cell: a model, a variant and an lr, trained for every seed index.

    variant: a built-in variant (vocab.VARIANTS) or a plug-in named in train.plugins (checked by `check_variants`).
    """

    model: Literal[MODELS]
    # a string, not an enum (plug-ins): the schema can say its spelling and the built-in names, not all choices
    variant: str = field(metadata={"pattern": VARIANT_NAME.pattern, "examples": VARIANTS})
    lr: float = rule(gt=0)

    @property
    def id(self) -> str:
        return f"{self.model}-{self.variant}-lr{format_lr(self.lr)}"

    def run_id(self, seed: int) -> str:
        """The run id of STYLE.md: {variant}-lr{lr}-s{seed} (unique within a model)."""
        return f"{self.variant}-lr{format_lr(self.lr)}-s{seed}"


@dataclass(frozen=True)
class TrainConfig:
    seeds: SeedsConfig
    norm: NormConfig
    noise: NoiseConfig
    vgg: VggConfig
    vgg_cpu: VggConfig  # the reduced-scale VGG of PROTOCOL §10 (CPU-sized width and steps, same protocol)
    dln: DlnConfig
    resnet: ResNetConfig
    probes: DenseProbeConfig
    execution: ExecutionConfig
    numerics: NumericsConfig
    plugins: dict[str, PluginConfig]
    grid: dict[str, Cell] = rule(nonempty=True)

    def model_config(self, model: str) -> VggConfig | DlnConfig | ResNetConfig:
        """The train.<model> section of a model family (one of vocab.MODELS)."""
        if model not in MODELS:
            raise ConfigError(f"no model family {model!r}; known: {', '.join(MODELS)}")
        return getattr(self, model)

    def n_layers(self, model: str) -> int:
        """How many numbered layers (#1..#n: conv layers, or the DLN's linear layers) the model has."""
        cfg = self.model_config(model)
        return {"vgg": lambda: vgg_depth(cfg.arch), "vgg_cpu": lambda: vgg_depth(cfg.arch), "dln": lambda: cfg.depth,
                "resnet": lambda: resnet_conv_layers(cfg.depth)}[model]()


# --------------------------------------------------------------------------------------------------- plug-in variants
_PLUGIN_SPEC = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)$")
PLUGIN_TRIAL_CHANNELS = 8
"""The channel count a plug-in is built with at params load (a trial build, before any job starts)."""
_TRIAL_SHAPES = {"image": (4, PLUGIN_TRIAL_CHANNELS, 4, 4), "vector": (4, PLUGIN_TRIAL_CHANNELS)}


@contextlib.contextmanager
def _plugin_code(key: str, spec: str, what: str) -> typing.Iterator[None]:
    """Run a plug-in's own code (its import, constructor or forward): whatever it raises or prints is one params error.

    It sees no command line (sys.argv is just the module name: a module that parses arguments at import gets none
    of bnflow's or Snakemake's) and its console output is kept for the message. SystemExit and KeyboardInterrupt
    are caught too: `sys.exit()` in a plug-in must not end `snakemake -n` silently with its status.
    """
    argv, printed = sys.argv, io.StringIO()
    sys.argv = [spec]
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    except BaseException as e:  # noqa: BLE001 - the user's code: any way out is a params error naming the key
        said = [line.strip() for line in printed.getvalue().splitlines() if line.strip()]
        detail = f"{type(e).__name__}: {e}" + (f"; it printed {said[-1][:200]!r}" if said else "")
        raise ConfigError(f"{key}: {what} ({detail})") from None
    finally:
        sys.argv = argv


def plugin_class(spec: str, key: str) -> Any:
    """Import the plug-in class named by `spec` ("pkg.module:Class"); ConfigError naming `key` when that fails.

    A standard-library or built-in module is refused before it is imported, and anything but a class before it is
    called: `os:_exit` or `sys:exit` would end the process in a way no handler can catch.
    """
    m = _PLUGIN_SPEC.match(spec)
    if not m:
        raise ConfigError(f"{key}: {spec!r} is not of the form 'pkg.module:Class'")
    top = m["module"].split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ConfigError(f"{key}: {m['module']!r} is a module of Python's standard library, not a plug-in; name a "
                          "module of your own that defines a torch.nn.Module class")
    with _plugin_code(key, spec, f"cannot import module {m['module']!r}; it must be importable from the project "
                                 f"root: python -c 'import {m['module']}'"):
        module = importlib.import_module(m["module"])
    cls = getattr(module, m["attr"], None)
    if cls is None or not callable(cls):
        raise ConfigError(f"{key}: module {m['module']!r} has no class {m['attr']!r}")
    if not inspect.isclass(cls):
        raise ConfigError(f"{key}: {m['attr']!r} in module {m['module']!r} is a {type(cls).__name__}, not a class; "
                          "a plug-in names a torch.nn.Module class, built as Class(C)")
    return cls


def check_plugin(spec: str, key: str, shapes: typing.Iterable[tuple[int, ...]] = ()) -> None:
    """Refuse (ConfigError naming `key`) a plug-in that cannot be imported, built as Class(C), or applied.

    Args:
        spec: "pkg.module:Class".
        key: the params key to name, train.plugins.<name>.module.
        shapes: activation shapes (N, C, ...) a module built as Class(C) must map to the same shape in training
            mode, e.g. (4, 8, 4, 4) for a conv net and (4, 8) for the deep linear net, and one per channel count
            the networks that use it have (a plug-in fine at 8 channels may fail at 10: found here, not in a job).
    """
    cls = plugin_class(spec, key)
    import torch  # here, not at the top: only a params file with plug-ins pays for it (the plug-in imports it too)

    if not issubclass(cls, torch.nn.Module):
        raise ConfigError(f"{key}: {spec} is not a torch.nn.Module class; its parameters would never train")
    for shape in shapes or [(4, PLUGIN_TRIAL_CHANNELS)]:
        c = shape[1]
        with _plugin_code(key, spec, f"{spec}({c}) cannot be built; a plug-in is constructed with the channel "
                                     "count as its only argument"):
            layer = cls(c)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with _plugin_code(key, spec, f"{spec}({c}) fails on activations of shape {tuple(shape)}"), torch.no_grad():
            out = layer.train()(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{key}: {spec}({c}) maps activations of shape {tuple(shape)} to {got}; a norm must "
                              "return its input's shape")


def _norm_channels(train: TrainConfig, model: str) -> list[int]:
    """The channel counts of the norm layers of `model` as train.<model> configures it (what Class(C) gets)."""
    cfg = train.model_config(model)
    if model == "dln":
        return [cfg.dim]
    if model == "resnet":
        from bnflow.models.resnet import STAGE_WIDTHS

        widths = STAGE_WIDTHS
    else:
        from bnflow.models.vgg import VGG_CONFIGS

        widths = [c for c in VGG_CONFIGS[cfg.arch] if c != "M"]
    return [max(1, round(c * cfg.width_mult)) for c in widths]


def check_variants(train: TrainConfig) -> None:
    """Plug-in names and modules, and every grid cell's variant (a built-in one or a plug-in), at params load."""
    for name in train.plugins:
        if not VARIANT_NAME.match(name):
            raise ConfigError(f"train.plugins.{name}: a variant name uses only a-z, 0-9 and '_' (it is part of cell "
                              "and run ids)")
        if name in VARIANTS:
            raise ConfigError(f"train.plugins.{name}: {name!r} is the name of a built-in variant; choose another")
    for cell_id, cell in train.grid.items():
        if cell.variant not in VARIANTS and cell.variant not in train.plugins:
            plugins = ", ".join(train.plugins) or "none"
            raise ConfigError(f"train.grid.{cell_id}.variant: {cell.variant!r} is not one of {', '.join(VARIANTS)}, "
                              f"nor a plug-in of train.plugins ({plugins})")
    for name, plugin in train.plugins.items():
        models = {c.model for c in train.grid.values() if c.variant == name}
        shapes = [_TRIAL_SHAPES["image" if m in CLASSIFIERS else "vector"] for m in sorted(models)]
        shapes += [(*shape[:1], c, *shape[2:]) for m in sorted(models)
                   for shape in [_TRIAL_SHAPES["image" if m in CLASSIFIERS else "vector"]]
                   for c in sorted(set(_norm_channels(train, m)))]
        check_plugin(plugin.module, f"train.plugins.{name}.module", list(dict.fromkeys(shapes)))


@dataclass(frozen=True)
class ModelScanConfig:
    variants: tuple[Literal[VARIANTS], ...]
    lrs: tuple[float, ...] = rule(gt=0)
    steps: int = rule(ge=1)


@dataclass(frozen=True)
class LrScanConfig:
    models: tuple[Literal["vgg", "dln"], ...]  # the families the pipeline scans (dvc.yaml's lrscan foreach)
    vgg: ModelScanConfig
    dln: ModelScanConfig
    seeds: int = rule(ge=1)
    loss_fraction: float = rule(gt=0, le=1)


@dataclass(frozen=True)
class SummarizeConfig:
    acc_threshold: float = rule(gt=0, le=1)
    smooth_window: int = rule(ge=1)
    auc_steps: int = rule(ge=1)
    final_window: int = rule(ge=1)
    probe_window: tuple[float, ...] = rule(ge=0, le=1)
    curvature_warmup: float = rule(ge=0, le=1)
    early_fraction: float = rule(gt=0, le=1)


@dataclass(frozen=True)
class StatsConfig:
    seed: int = rule(ge=0)
    ci_level: float = rule(gt=0.5, le=0.999)


@dataclass(frozen=True)
class FiguresConfig:
    dpi: int = rule(ge=30, le=1200)
    band: Literal["minmax", "sd"]


# ------------------------------------------------------------------------------------------------------------- claims
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ClaimSpec:
    """One pre-declared claim (params.yaml `claims:`); params.yaml holds the registry (STATS.md "Claims registry v2").

    figure: where the paper shows it ("Fig 4a", "§3.1", or "beyond the paper").
    sesoi: superiority only, the smallest effect of interest on the reported scale. Ratio scale: the ratio on the
    claimed side of 1 (0.9 = "at least 10% lower" when lower is better, 1.25 when higher is better); the band
    (min(s, 1/s), max(s, 1/s)) is "no effect of interest". Difference scale: a magnitude > 0, band (−s, s).
    margin: the boundary of a non-inferiority or equivalence claim on the reported scale (ratio: e.g. 1.25 when
    lower is better, 0.8 when higher is better; difference: e.g. 0.05 / −0.02; equivalence: the band is
    (1/margin, margin) or (−margin, margin)); rationale: one line saying why that boundary.
    reference: the constant arm B stands for when arm_b is a reference arm (vocab.REFERENCE_ARMS: chance, 2/lr).
    seeds: (first, last), inclusive: the seed indices the claim tests (registry v3: a claim confirmed on fresh seeds
    names them, so the look that generated it never counts as its confirmation); None: every seed of its cells.
    """

    id: str
    family: str
    hypothesis: str
    metric: str
    model: str
    arm_a: str
    arm_b: str
    lr: float
    type: str
    direction: str
    scale: str
    figure: str
    sesoi: float | None = None
    margin: float | None = None
    rationale: str | None = None
    reference: float | None = None
    alpha: float = 0.05
    seeds: tuple[int, int] | None = None


_KEYS = tuple(f.name for f in dataclasses.fields(ClaimSpec))
_REQUIRED = ("id", "family", "hypothesis", "metric", "model", "arm_a", "arm_b", "lr", "type", "direction", "figure")


def _text(entry: typing.Mapping, key: str, path: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}.{key}: must be a non-empty string, got {value!r}")
    return value


def _number(entry: typing.Mapping, key: str, path: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (YAML reads 1e-6 as text: write 1.0e-6)" if isinstance(value, str) else ""
        raise ConfigError(f"{path}.{key}: must be a number, got {type(value).__name__} {value!r}{hint}")
    if not math.isfinite(value):
        raise ConfigError(f"{path}.{key}: must be finite, got {value!r}")
    return float(value)


def _seed_range(entry: typing.Mapping, path: str) -> tuple[int, int] | None:
    """A claim's `seeds: [first, last]` as a tuple, or None when the key is absent (every seed of its cells)."""
    value = entry.get("seeds")
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok:
        raise ConfigError(f"{path}.seeds: must be [first, last], two integer seed indices (inclusive), got {value!r}")
    return int(value[0]), int(value[1])


def _one_of(value: str, choices: typing.Sequence[str], path: str) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: unknown value {value!r}; choose one of {', '.join(choices)}")


def check_claim(c: ClaimSpec, path: str) -> None:
    """Raise ConfigError (naming `path`.key) unless the claim is internally consistent and uses known names."""
    if not _ID.match(c.id):
        raise ConfigError(f"{path}.id: {c.id!r} must start with a letter and use only letters, digits and '_'")
    _one_of(c.family, CLAIM_FAMILIES, f"{path}.family")
    _one_of(c.metric, tuple(CLAIM_METRICS), f"{path}.metric")
    _one_of(c.model, MODELS, f"{path}.model")
    _one_of(c.type, CLAIM_TYPES, f"{path}.type")
    _one_of(c.direction, CLAIM_DIRECTIONS, f"{path}.direction")
    _one_of(c.scale, CLAIM_SCALES, f"{path}.scale")
    if not isinstance(c.figure, str) or not c.figure.strip():
        raise ConfigError(f"{path}.figure: must name the paper figure or section (e.g. 'Fig 4a'), got {c.figure!r}")
    kind, scale, models = CLAIM_METRICS[c.metric]
    if c.model not in models:
        raise ConfigError(f"{path}.metric: {c.metric!r} is not measured for model {c.model!r} "
                          f"(only for {', '.join(models)})")
    # arms: a built-in variant, or a plug-in's name (checked against train.plugins once the whole file is read)
    for key, arm in (("arm_a", c.arm_a), ("arm_b", c.arm_b)):
        if arm not in (*VARIANTS, *REFERENCE_ARMS) and not VARIANT_NAME.fullmatch(arm):
            _one_of(arm, (*VARIANTS, *(REFERENCE_ARMS if key == "arm_b" else ())), f"{path}.{key}")
    if c.arm_a in REFERENCE_ARMS:
        raise ConfigError(f"{path}.arm_a: {c.arm_a!r} is a reference arm; it can only be arm_b")
    if c.arm_a == c.arm_b:
        raise ConfigError(f"{path}.arm_b: must differ from arm_a ({c.arm_a!r})")
    if not c.lr > 0:
        raise ConfigError(f"{path}.lr: must be > 0, got {c.lr!r}")
    if not 0 < c.alpha <= 0.5:
        raise ConfigError(f"{path}.alpha: must be in (0, 0.5], got {c.alpha!r}")
    if c.seeds is not None and not 0 <= c.seeds[0] <= c.seeds[1]:
        raise ConfigError(f"{path}.seeds: must be [first, last] with 0 <= first <= last, got {list(c.seeds)}")
    if c.scale != scale:
        raise ConfigError(f"{path}.scale: {c.metric!r} is compared on the {scale!r} scale; "
                          f"set scale: {scale} or leave the key out")
    if kind == "binary" and c.type != "superiority":
        raise ConfigError(f"{path}.type: {c.metric!r} is a proportion, tested by Fisher's exact test: "
                          "only 'superiority' is supported")
    reference_arm = c.arm_b in REFERENCE_ARMS
    if reference_arm != (c.reference is not None):
        raise ConfigError(f"{path}.reference: give a reference value exactly when arm_b is one of "
                          f"{', '.join(REFERENCE_ARMS)}")
    if reference_arm and kind != "continuous":
        raise ConfigError(f"{path}.arm_b: {c.arm_b!r} needs a metric compared as a difference of means, "
                          f"not {c.metric!r}")
    if c.rationale is not None and (not isinstance(c.rationale, str) or not c.rationale.strip()):
        raise ConfigError(f"{path}.rationale: must be a non-empty line of text, got {c.rationale!r}")
    _check_sesoi(c, f"{path}.sesoi")
    _check_margin(c, f"{path}.margin")
    if c.type != "superiority" and c.rationale is None:
        raise ConfigError(f"{path}.rationale: a {c.type} claim needs a one-line rationale for its margin")


def _check_sesoi(c: ClaimSpec, path: str) -> None:
    """A superiority claim declares its smallest effect of interest on the claimed side of no effect (so a null
    result can be told apart from an underpowered one: the verdict not_reproduced); other claims use a margin."""
    if c.type != "superiority":
        if c.sesoi is not None:
            raise ConfigError(f"{path}: a {c.type} claim takes a margin, not a sesoi; remove it")
        return
    if c.sesoi is None:
        raise ConfigError(f"{path}: a superiority claim needs its smallest effect of interest "
                          f"(e.g. 0.9 on the ratio scale when lower is better)")
    if c.scale == "difference":
        if not c.sesoi > 0:
            raise ConfigError(f"{path}: must be > 0 on the difference scale (a magnitude), got {c.sesoi!r}")
        return
    if c.direction == "lower" and not 0 < c.sesoi < 1:
        raise ConfigError(f"{path}: must be in (0, 1) on the ratio scale when lower is better, got {c.sesoi!r}")
    if c.direction == "higher" and not c.sesoi > 1:
        raise ConfigError(f"{path}: must be > 1 on the ratio scale when higher is better, got {c.sesoi!r}")


def _check_margin(c: ClaimSpec, path: str) -> None:
    """A margin is required for non-inferiority/equivalence, forbidden for superiority, and must lie on the
    unfavourable side of the null (otherwise "not worse than the margin" would claim an improvement)."""
    if c.type == "superiority":
        if c.margin is not None:
            raise ConfigError(f"{path}: a superiority claim takes no margin (it declares a sesoi); remove it or "
                              "change the type")
        return
    if c.margin is None:
        raise ConfigError(f"{path}: a {c.type} claim needs a margin (e.g. 1.25 on the ratio scale)")
    if c.scale == "ratio" and not c.margin > 0:
        raise ConfigError(f"{path}: must be > 0 on the ratio scale, got {c.margin!r}")
    null = 1.0 if c.scale == "ratio" else 0.0
    if c.type == "equivalence":
        above, what = True, "an equivalence band (its upper end)"
    else:
        above, what = c.direction == "lower", f"a non-inferiority claim where {c.direction} is better"
    if above and not c.margin > null:
        raise ConfigError(f"{path}: must be > {null:g} for {what} on the {c.scale} scale, got {c.margin!r}")
    if not above and not c.margin < null:
        raise ConfigError(f"{path}: must be < {null:g} for {what} on the {c.scale} scale, got {c.margin!r}")


def parse_claims(raw: object) -> tuple[ClaimSpec, ...]:
    """Validate params.yaml's `claims:` list into ClaimSpecs; ConfigError names the key path (claims[3].sesoi).

    Args:
        raw: the YAML value, a list of mappings with ClaimSpec's keys (scale, sesoi, margin, rationale, reference,
            alpha optional; sesoi or margin + rationale as the claim's type requires).
    """
    if not isinstance(raw, list) or not raw:
        raise ConfigError("claims: must be a non-empty list of claim mappings (see params.yaml and STATS.md)")
    specs: list[ClaimSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        path = f"claims[{i}]"
        if not isinstance(entry, typing.Mapping):
            raise ConfigError(f"{path}: must be a mapping of claim keys, got {type(entry).__name__}")
        unknown = sorted(str(k) for k in entry if k not in _KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(_KEYS)}")
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise ConfigError(f"{path}.{missing[0]}: missing; every claim needs {', '.join(_REQUIRED)}")
        text = {k: _text(entry, k, path) for k in _REQUIRED if k != "lr"}
        lr, alpha = _number(entry, "lr", path), _number(entry, "alpha", path)
        if lr is None:
            raise ConfigError(f"{path}.lr: must be a number, got None")
        # scale may be left out: it follows from the metric (an unknown metric fails in check_claim first).
        default_scale = CLAIM_METRICS[text["metric"]][1] if text["metric"] in CLAIM_METRICS else ""
        spec = ClaimSpec(**text, lr=lr, scale=_text(entry, "scale", path) if "scale" in entry else default_scale,
                         sesoi=_number(entry, "sesoi", path), margin=_number(entry, "margin", path),
                         rationale=_text(entry, "rationale", path) if entry.get("rationale") is not None else None,
                         reference=_number(entry, "reference", path), alpha=0.05 if alpha is None else alpha,
                         seeds=_seed_range(entry, path))
        check_claim(spec, path)
        if spec.id in seen:
            raise ConfigError(f"{path}.id: duplicate id {spec.id!r} (also claims[{seen[spec.id]}]); ids must be unique")
        seen[spec.id] = i
        specs.append(spec)
    return tuple(specs)



@dataclass(frozen=True)
class Params:
    out_dir: str
    prepare: PrepareConfig
    train: TrainConfig
    probe: ProbeConfig
    lrscan: LrScanConfig
    summarize: SummarizeConfig
    stats: StatsConfig
    claims: tuple  # of ClaimSpec, validated by parse_claims
    figures: FiguresConfig

    def cell(self, cell_id: str) -> Cell:
        try:
            return self.train.grid[cell_id]
        except KeyError:
            known = ", ".join(sorted(self.train.grid))
            raise ConfigError(f"train.grid: no cell {cell_id!r}; known cells: {known}") from None


# ------------------------------------------------------------------------------------------------------------ loading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert YAML's lists/maps to frozen objects."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return types.MappingProxyType({str(k): _convert(v, item_tp, f"{key}.{k}") for k, v in value.items()})
    if tp is tuple:  # the claims registry: validated by its own parser (it knows the metrics and families)
        return parse_claims(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-6 as text: write 1.0e-6)" if isinstance(value, str) else ""
            raise ConfigError(f"{key}: expected a number, got {value!r}{hint}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a bug in this module, not in params.yaml


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if meta.get("nonempty") and len(value) == 0:
        raise ConfigError(f"{key}: must not be empty")
    items = value.values() if isinstance(value, typing.Mapping) else value if isinstance(value, tuple) else (value,)
    for v in items:
        if not isinstance(v, (int, float)):
            continue
        if meta.get("ge") is not None and v < meta["ge"]:
            raise ConfigError(f"{key}: must be >= {meta['ge']}, got {v!r}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ConfigError(f"{key}: must be > {meta['gt']}, got {v!r}")
        if meta.get("le") is not None and v > meta["le"]:
            raise ConfigError(f"{key}: must be <= {meta['le']}, got {v!r}")


def _build(cls: type, raw: Any, key: str) -> Any:
    prefix = f"{key}." if key else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'params'}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key{hint} (valid keys: {', '.join(fields)})")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing key")
    values = {}
    for name, f in fields.items():
        values[name] = _convert(raw[name], hints[name], prefix + name)
        _check_range(values[name], f.metadata, prefix + name)
    return cls(**values)


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


def merge(base: dict, overlay: dict, path: tuple[str, ...] = ()) -> dict:
    """Deep-merge `overlay` onto `base` (mappings key by key; lists, scalars and train.grid replaced)."""
    out = dict(base)
    for k, v in overlay.items():
        here = (*path, str(k))
        if isinstance(v, dict) and isinstance(out.get(k), dict) and here not in REPLACED_BY_OVERLAY:
            out[k] = merge(out[k], v, here)
        else:
            out[k] = v
    return out


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

    summarize.auc_steps beyond a classifier's step budget was cut to the budget, and a smoothing or final window
    longer than a run's logged points was shortened to them: both silently, so `auc_steps: 100000` changed nothing it
    seemed to. Refused here: a value beyond the budget of every model family train.<model> configures (it would mean
    "the whole run" for all of them). A value between two families' budgets still covers the shorter runs whole
    (shrunk test and quick configurations rely on it).
    """
    for key in ("n_train", "n_test"):
        n = getattr(p.prepare.synthetic, key)
        if n > SYNTHETIC_MAX_IMAGES:
            raise ConfigError(f"prepare.synthetic.{key}: {n:,} images exceeds {SYNTHETIC_MAX_IMAGES:,} (4x CIFAR-10's "
                              "50,000, which the synthetic set stands in for: more would need many GB of memory)")
    s = p.summarize
    steps = {m: p.train.model_config(m).steps for m in MODELS}
    logged = {m: steps[m] // p.train.model_config(m).log_every + 1 for m in MODELS}  # steps 0, log_every, ...
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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int):
        super().__init__(f"duplicate key {key} (lines {first} and {second}); YAML would keep only the last and "
                         "silently drop the first: merge the two into one")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping holding the same key twice.

    YAML's own rule is "last wins": a second `train:` in an overlay silently replaced the whole first one.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicates(node, "", set())
        return super().construct_document(node)


def _refuse_duplicates(node: yaml.Node, path: str, seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias to a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            here = f"{path}.{name}" if path else name
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if name in lines:
                    raise _DuplicateKey(here, lines[name], key_node.start_mark.line + 1)
                lines[name] = key_node.start_mark.line + 1
            _refuse_duplicates(value_node, here, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicates(item, f"{path}[{i}]", seen_nodes)


def read_yaml(path: str | Path) -> dict:
    """One params file as plain data; a duplicate key, bad YAML or a non-mapping is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read params file ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def expand_seed_counts(raw: dict) -> dict:
    """train.seeds.n as one count per model family: an int (an overlay's `seeds: {n: 2}`) applies to every family;
    a mapping must name each family once, with a count >= 1."""
    n = raw.get("train", {}).get("seeds", {}).get("n") if isinstance(raw.get("train"), dict) else None
    if n is None or not isinstance(raw["train"].get("seeds"), dict):
        return raw
    if isinstance(n, bool) or not isinstance(n, (int, dict)):
        raise ConfigError(f"train.seeds.n: expected a count per model family ({', '.join(MODELS)}) or one int, "
                          f"got {n!r}")
    counts = dict.fromkeys(MODELS, n) if isinstance(n, int) else dict(n)
    unknown = [m for m in counts if m not in MODELS]
    if unknown:
        raise ConfigError(f"train.seeds.n.{unknown[0]}: no model family {unknown[0]!r}; known: {', '.join(MODELS)}")
    missing = [m for m in MODELS if m not in counts]
    if missing:
        raise ConfigError(f"train.seeds.n.{missing[0]}: missing key (one seed count per model family)")
    for m, c in counts.items():
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"train.seeds.n.{m}: must be an int >= 1, got {c!r}")
    seeds = dict(raw["train"]["seeds"], n=counts)
    return dict(raw, train=dict(raw["train"], seeds=seeds))


def from_dict(raw: dict, *, check_files: bool = True) -> Params:
    """Validate a raw params mapping into `Params` (raises ConfigError naming the key).

    Args:
        raw: params.yaml's content (after overlays).
        check_files: also require the files the params name (prepare.archive) to exist; worker processes that
            re-validate params their parent already checked pass False.
    """
    params = _build(Params, expand_seed_counts(raw), "")
    _check_paths(params)
    _check_semantics(params)
    _check_cross_fields(params)
    if check_files:
        require_files(params)
    return params


def _key_paths(node: Any, path: str = "") -> typing.Iterator[str]:
    """Every key path of a params file: `a.b.c` for mappings, `a[3].b` for list items."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{path}.{k}" if path else str(k)
            yield here
            yield from _key_paths(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _key_paths(v, f"{path}[{i}]")


def load_params(*paths: str | Path, check_files: bool = True) -> Params:
    """Load params.yaml and optional overlays (later files win) into validated, frozen `Params`.

    `check_files=False` leaves out the check that files the params name exist (prepare.archive): a step that never
    reads them (every step but prepare; a clone with committed results but no archive) must not need them.

    A ConfigError about key K also says which file set K (the last one that defines it), so a mistake in an overlay
    is not looked for in params.yaml.
    """
    if not paths:
        raise ConfigError("no params file given (pass --params params.yaml)")
    raw: dict = {}
    origin: dict[str, Path] = {}
    for path in paths:
        data = read_yaml(path)
        origin |= dict.fromkeys(_key_paths(data), Path(path))
        raw = merge(raw, data)
    try:
        return from_dict(raw, check_files=check_files)
    except ConfigError as e:
        key = str(e).split(": ", 1)[0]
        if key not in origin:
            raise
        raise ConfigError(f"{e} (set in {origin[key]})") from None


def to_plain(obj: Any) -> Any:
    """Params (or any section) as plain YAML/JSON-serialisable data, for provenance records."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, typing.Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj

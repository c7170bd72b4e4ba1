"""params.yaml loaded into frozen, typed objects, validated before any work starts.

Every default lives once, in params.yaml; the dataclasses below only say what each key is and which values it may
take. Overlays (e.g. workflow/quick.yaml) are merged key by key on top of the base file, except that an overlay's
`train.grid` replaces the base grid as a whole (a quick run wants fewer cells, not more).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bnflow.errors import ConfigError
from bnflow.vocab import (CELL_ID, CHANCE, CLAIM_DIRECTIONS, CLAIM_FAMILIES, CLAIM_METRICS, CLAIM_SCALES, CLAIM_TYPES,
                          DLN_VARIANTS, MODELS, VARIANTS, VGG_LAYERS, format_lr, vgg_depth)

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
    base: int = rule(ge=0)
    n: int = rule(ge=1)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(range(self.n))


@dataclass(frozen=True)
class NormConfig:
    eps: float = rule(gt=0)
    momentum: float = rule(gt=0, le=1)


@dataclass(frozen=True)
class NoiseConfig:
    n_mu: float = rule(ge=0)
    n_sigma: float = rule(ge=1)
    r_mu: float = rule(ge=0)
    r_sigma: float = rule(ge=0)


@dataclass(frozen=True)
class VggConfig:
    arch: Literal["vgg16", "vgg11"]
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
class ModelProbeConfig:
    """What a probe measures on one model (PROTOCOL §4-5); layers are 1-based conv/linear indices."""

    eta_factors: tuple[float, ...] = rule(gt=0, nonempty=True)
    ics_layers: tuple[int, ...] = rule(ge=1)
    activation_layers: tuple[int, ...] = rule(ge=1)


@dataclass(frozen=True)
class DenseModelProbeConfig(ModelProbeConfig):
    every: int = rule(ge=0)


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
    dln: DenseModelProbeConfig


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
    dln: ModelProbeConfig
    direction: Literal["gradient", "random"]
    curvature: CurvatureConfig


@dataclass(frozen=True)
class Cell:
    """One grid cell: a model, a variant and an lr, trained for every seed index."""

    model: Literal[MODELS]
    variant: Literal[VARIANTS]
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
    dln: DlnConfig
    probes: DenseProbeConfig
    execution: ExecutionConfig
    grid: dict[str, Cell] = rule(nonempty=True)


@dataclass(frozen=True)
class ModelScanConfig:
    variants: tuple[Literal[VARIANTS], ...]
    lrs: tuple[float, ...] = rule(gt=0)
    steps: int = rule(ge=1)


@dataclass(frozen=True)
class LrScanConfig:
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
    """One pre-declared claim (params.yaml `claims:`); params.yaml holds the registry (STATS.md).

    margin: the boundary of a non-inferiority or equivalence claim on the reported scale (ratio: e.g. 1.25 when
    lower is better, 0.8 when higher is better; difference: e.g. 0.05 / −0.02; equivalence: the band is
    (1/margin, margin) or (−margin, margin)). reference: the constant arm B stands for when arm_b is "chance".
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
    margin: float | None = None
    reference: float | None = None
    alpha: float = 0.05


_KEYS = tuple(f.name for f in dataclasses.fields(ClaimSpec))
_REQUIRED = ("id", "family", "hypothesis", "metric", "model", "arm_a", "arm_b", "lr", "type", "direction")


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
    kind, scale, models = CLAIM_METRICS[c.metric]
    if c.model not in models:
        raise ConfigError(f"{path}.metric: {c.metric!r} is not measured for model {c.model!r}")
    variants = DLN_VARIANTS if c.model == "dln" else VARIANTS
    _one_of(c.arm_a, variants, f"{path}.arm_a")
    _one_of(c.arm_b, (*variants, CHANCE), f"{path}.arm_b")
    if c.arm_a == c.arm_b:
        raise ConfigError(f"{path}.arm_b: must differ from arm_a ({c.arm_a!r})")
    if not c.lr > 0:
        raise ConfigError(f"{path}.lr: must be > 0, got {c.lr!r}")
    if not 0 < c.alpha <= 0.5:
        raise ConfigError(f"{path}.alpha: must be in (0, 0.5], got {c.alpha!r}")
    if c.scale != scale:
        raise ConfigError(f"{path}.scale: {c.metric!r} is compared on the {scale!r} scale; "
                          f"set scale: {scale} or leave the key out")
    if kind == "binary" and c.type != "superiority":
        raise ConfigError(f"{path}.type: {c.metric!r} is a proportion, tested by Fisher's exact test: "
                          "only 'superiority' is supported")
    if (c.arm_b == CHANCE) != (c.reference is not None):
        raise ConfigError(f"{path}.reference: give a reference value exactly when arm_b is {CHANCE!r}")
    if c.arm_b == CHANCE and kind != "continuous":
        raise ConfigError(f"{path}.arm_b: {CHANCE!r} needs a metric compared as a difference of means, "
                          f"not {c.metric!r}")
    _check_margin(c, f"{path}.margin")


def _check_margin(c: ClaimSpec, path: str) -> None:
    """A margin is required for non-inferiority/equivalence, forbidden for superiority, and must lie on the
    unfavourable side of the null (otherwise "not worse than the margin" would claim an improvement)."""
    if c.type == "superiority":
        if c.margin is not None:
            raise ConfigError(f"{path}: a superiority claim takes no margin; remove it or change the type")
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
    """Validate params.yaml's `claims:` list into ClaimSpecs; ConfigError names the key path (claims[3].margin).

    Args:
        raw: the YAML value, a list of mappings with ClaimSpec's keys (scale, margin, reference, alpha optional).
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
                         margin=_number(entry, "margin", path), reference=_number(entry, "reference", path),
                         alpha=0.05 if alpha is None else alpha)
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
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (valid keys: {', '.join(fields)})")
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
    for cell_id, cell in p.train.grid.items():
        if cell_id != cell.id:
            raise ConfigError(f"train.grid.{cell_id}: id does not match its values; write it as {cell.id!r}")
    for model, cfg in (("vgg", p.train.vgg), ("dln", p.train.dln)):
        bad = [s for s in cfg.checkpoint_steps if s < 0 or s > cfg.steps]
        if bad:
            raise ConfigError(f"train.{model}.checkpoint_steps: {bad[0]} is outside 0..{cfg.steps} (train.{model}.steps)")
        if list(cfg.checkpoint_steps) != sorted(set(cfg.checkpoint_steps)):
            raise ConfigError(f"train.{model}.checkpoint_steps: must be strictly increasing")
    n_layers = {"vgg": vgg_depth(p.train.vgg.arch), "dln": p.train.dln.depth}
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


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read params file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def from_dict(raw: dict) -> Params:
    """Validate a raw params mapping into `Params` (raises ConfigError naming the key)."""
    params = _build(Params, raw, "")
    _check_semantics(params)
    return params


def load_params(*paths: str | Path) -> Params:
    """Load params.yaml and optional overlays (later files win) into validated, frozen `Params`."""
    if not paths:
        raise ConfigError("no params file given (pass --params params.yaml)")
    raw: dict = {}
    for path in paths:
        raw = merge(raw, read_yaml(path))
    return from_dict(raw)


def to_plain(obj: Any) -> Any:
    """Params (or any section) as plain YAML/JSON-serialisable data, for provenance records."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, typing.Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj

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

MODELS = ("vgg", "dln")
VARIANTS = ("standard", "bn", "noisy_bn", "noisy_standard", "l1", "l2", "linf")
CELL_ID = re.compile(r"^(?P<model>[a-z0-9]+)-(?P<variant>[a-z0-9_]+)-lr(?P<lr>[0-9.e+-]+)$")
REPLACED_BY_OVERLAY = (("train", "grid"),)
VGG_LAYERS = {"vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
              "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}


def rule(*, ge: float | None = None, gt: float | None = None, le: float | None = None, nonempty: bool = False):
    """A dataclass field with range constraints, checked by the loader (no default: params.yaml holds it)."""
    return field(metadata={"ge": ge, "gt": gt, "le": le, "nonempty": nonempty})


def format_lr(lr: float) -> str:
    """The lr as it appears in cell and run ids: Python's shortest general format (0.1, 1e-06)."""
    return format(lr, "g")


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


@dataclass(frozen=True)
class Params:
    out_dir: str
    prepare: PrepareConfig
    train: TrainConfig
    probe: ProbeConfig
    lrscan: LrScanConfig
    summarize: SummarizeConfig
    stats: StatsConfig
    claims: tuple  # of bnflow.stats.ClaimSpec, validated by bnflow.stats.parse_claims
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
        from bnflow.stats.claims import parse_claims

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
    n_layers = {"vgg": sum(1 for c in VGG_LAYERS[p.train.vgg.arch] if c != "M"), "dln": p.train.dln.depth}
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



def _schema_of(tp: Any, meta: typing.Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = meta or {}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {"type": "object", "additionalProperties": False,
                "required": [f.name for f in dataclasses.fields(tp)],
                "properties": {f.name: _schema_of(hints[f.name], f.metadata) for f in dataclasses.fields(tp)}}
    origin = typing.get_origin(tp)
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is tuple:
        out = {"type": "array", "items": _schema_of(typing.get_args(tp)[0], meta)}
        return out | ({"minItems": 1} if meta.get("nonempty") else {})
    if origin is dict:
        out = {"type": "object", "additionalProperties": _schema_of(typing.get_args(tp)[1])}
        return out | ({"minProperties": 1} if meta.get("nonempty") else {})
    if tp is tuple:
        return {"type": "array", "minItems": 1, "items": {"type": "object"},
                "description": "claims registry; see STATS.md and bnflow.stats.parse_claims"}
    out: dict[str, Any] = {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]}
    for key, name in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum")):
        if meta.get(key) is not None:
            out[name] = meta[key]
    return out


def json_schema() -> dict[str, Any]:
    """JSON Schema of params.yaml, generated from the dataclasses (workflow/schemas/params.schema.json)."""
    schema = _schema_of(Params)
    grid = schema["properties"]["train"]["properties"]["grid"]
    grid["propertyNames"] = {"pattern": CELL_ID.pattern}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "bnflow params.yaml",
            "description": "Generated by bnflow.config.json_schema(); edit bnflow/config.py, not this file.", **schema}

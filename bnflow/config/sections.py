"""The params sections as frozen dataclasses: what each key is, which values it may take (`rule`), no defaults.

Every default lives once, in params.yaml. Each dataclass is one section (or sub-section) of it; `rule` attaches the
range constraints the loader (bnflow.config.loading) checks field by field. Rules between fields or sections live in
bnflow.config.checks; the claims registry's entries in bnflow.config.claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bnflow.errors import ConfigError
from bnflow.vocab import MODELS, RESNET_DEPTHS, VARIANT_NAME, VARIANTS, format_lr, resnet_conv_layers, vgg_depth


def rule(*, ge: float | None = None, gt: float | None = None, le: float | None = None, nonempty: bool = False):
    """A dataclass field with range constraints, checked by the loader (no default: params.yaml holds it)."""
    return field(metadata={"ge": ge, "gt": gt, "le": le, "nonempty": nonempty})


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


# ------------------------------------------------------------------------------------------- lr scan and the reports
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


# ------------------------------------------------------------------------------------------------------ the params
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

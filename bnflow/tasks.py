"""What one run trains on: the model, how step t's batch is formed, the loss, and the test evaluation.

The floor below everything that trains or measures: the train step, the checkpoint-wise probe step, the lr scan and
the benchmarks all build their runs here. Two tasks share one training loop (bnflow.train.loop): an image classifier
(VGG, PROTOCOL §2, or the CIFAR ResNet beyond the paper) on a prepared image dataset with mini-batch SGD, and the
deep linear network (full-batch GD on y = A x, PROTOCOL §6). Both keep their data on the training device, so the hot
loop has no DataLoader and no host transfer.

A new image model family is one entry of IMAGE_MODELS below (its builder from its train.<model> section), besides its
names in bnflow.vocab and its params section in bnflow.config / params.yaml; the task, the loop, the probes and the
readers need no change. A variant (built-in or plug-in) reaches the builders through `norm_options`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnflow import seeds
from bnflow.config import Cell, Params, TrainConfig, plugin_class, to_plain
from bnflow.data import load_prepared
from bnflow.data.dln import load_problem
from bnflow.errors import ConfigError
from bnflow.models import build_dln, build_resnet, build_vgg, dln_loss, make_dln_data
from bnflow.models.norms import NoiseSpec, noise_modules, set_noise_generator
from bnflow.vocab import CLASSIFIERS, MODELS

IMAGE_MODELS: dict[str, Callable[..., nn.Module]] = {
    # model family -> builder(train.<model> section, variant, **norm_options(...), generator=...)
    "vgg": lambda cfg, variant, **kw: build_vgg(cfg.arch, variant, width_mult=cfg.width_mult, **kw),
    "vgg_cpu": lambda cfg, variant, **kw: build_vgg(cfg.arch, variant, width_mult=cfg.width_mult, **kw),
    "resnet": lambda cfg, variant, **kw: build_resnet(cfg.depth, variant, width_mult=cfg.width_mult, **kw),
}
"""The image classifiers (vocab.CLASSIFIERS) and how each is built from its params section."""


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


class ImageTask:
    """An image classifier (VGG or ResNet: cell.model) on a prepared CIFAR-style dataset; step t's batch comes from
    the epoch's stateless permutation, the same for every model and variant of a seed."""

    correct_is_defined = True

    def __init__(self, train: TrainConfig, cell: Cell, seed: int, data_path: Path, device: torch.device):
        if cell.model not in IMAGE_MODELS:
            raise ConfigError(f"train.grid.{cell.id}.model: {cell.model!r} is not an image classifier "
                              f"({', '.join(IMAGE_MODELS)})")
        cfg = train.model_config(cell.model)
        self.model_name = cell.model
        self.cfg, self.device, self.base, self.seed = cfg, device, train.seeds.base, seed
        data = load_prepared(data_path)
        self.data_info = {"path": str(data_path), "source": data.source, "source_sha256": data.source_sha256,
                          "n_train": int(len(data.train_labels)), "n_test": int(len(data.test_labels)),
                          "n_classes": len(data.classes)}
        n_train = len(data.train_labels)
        if cfg.batch_size > n_train:
            raise ConfigError(f"train.{cell.model}.batch_size: {cfg.batch_size} exceeds the {n_train} training images "
                              f"of {data_path}")
        self.steps_per_epoch = n_train // cfg.batch_size  # the last partial batch is dropped: fixed shapes
        self.n_train = n_train
        # uint8 NHWC on the device; a batch is permuted to NCHW, which is channels_last in memory (fast cuDNN path)
        self.train_x = torch.from_numpy(data.train_images).to(device)
        self.train_y = torch.from_numpy(data.train_labels).to(device)
        self.test_x = torch.from_numpy(data.test_images).to(device)
        self.test_y = torch.from_numpy(data.test_labels).to(device)
        mean = torch.tensor(data.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(data.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        self.model = build_model(train, cell, seed).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once (PERFORMANCE.md)
        self.generators = _noise_generators(self.model, self.base, seed, device)
        self._epoch, self._perm = -1, None

    def normalise(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = x_u8.permute(0, 3, 1, 2).float()
        if self.device.type != "cuda":
            x = x.contiguous()  # CPU convolutions are faster in NCHW
        return x * self.scale - self.shift

    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices (into the training set) of step `step`'s mini-batch; the same for every variant of a seed."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = seeds.epoch_permutation(self.base, self.seed, epoch, self.n_train).to(self.device)
            self._epoch = epoch
        b = self.cfg.batch_size
        return self._perm[pos * b:(pos + 1) * b]

    def batch(self, step: int) -> Batch:
        idx = self.batch_indices(step)
        return Batch(self.normalise(self.train_x[idx]), self.train_y[idx])

    @staticmethod
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    @staticmethod
    def correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out.argmax(dim=1) == y).sum()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss (mean cross-entropy) and accuracy with the model in eval mode (running statistics, no noise)."""
        was_training = self.model.training
        self.model.eval()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        total_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, len(self.test_y), self.cfg.eval_batch_size):
            x = self.normalise(self.test_x[i:i + self.cfg.eval_batch_size])
            y = self.test_y[i:i + self.cfg.eval_batch_size]
            out = self.model(x).float()
            total_loss += F.cross_entropy(out, y, reduction="sum").double()
            total_correct += self.correct(out, y)
        self.model.train(was_training)
        n = len(self.test_y)
        return float(total_loss) / n, int(total_correct) / n


VggTask = ImageTask  # the name the tests and benchmarks use for a VGG cell's task


class DlnTask:
    """The 25-layer deep linear network: full-batch GD on y = A x.

    The data are the seed's problem in the DLN's prepared file (the `prepare --model dln` step, bnflow.data.dln),
    which the pipeline always passes; without a file (library use, tests) the same problem is drawn from the run's
    data stream directly: both give the same tensors.
    """

    model_name = "dln"
    correct_is_defined = False

    def __init__(self, train: TrainConfig, cell: Cell, seed: int, device: torch.device, data_path: Path | None = None):
        cfg = train.dln
        self.cfg, self.device, self.base, self.seed = cfg, device, train.seeds.base, seed
        if data_path is not None:
            p = load_problem(data_path, self.base, seed, cfg.n_samples, cfg.dim)
            x, y, a = p.x, p.y, p.a
        else:
            x, y, a = make_dln_data(cfg.n_samples, cfg.dim, generator=seeds.torch_generator(self.base, seed, "data"))
        self.x, self.y = x.to(device), y.to(device)
        self.data_info = {"n_samples": cfg.n_samples, "dim": cfg.dim, "A_fro_norm": float(a.norm())}
        self.model = build_model(train, cell, seed).to(device)
        self.generators = _noise_generators(self.model, self.base, seed, device)

    def batch(self, step: int) -> Batch:
        return Batch(self.x, self.y)

    @staticmethod
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dln_loss(out, y)

    @staticmethod
    def correct(out: torch.Tensor, y: torch.Tensor) -> None:
        return None

    def evaluate(self) -> None:
        return None


def noise_spec(train: TrainConfig) -> NoiseSpec:
    n = train.noise
    return NoiseSpec(n_mu=n.n_mu, n_sigma=n.n_sigma, r_mu=n.r_mu, r_sigma=n.r_sigma)


def norm_options(train: TrainConfig, variant: str) -> dict[str, Any]:
    """The builders' norm keyword arguments for `variant`: eps, momentum, noise, groups, and the plug-in's class
    (imported from train.plugins.<variant>.module; None for a built-in variant)."""
    plugin = None
    if variant in train.plugins:
        plugin = plugin_class(train.plugins[variant].module, f"train.plugins.{variant}.module")
    return {"eps": train.norm.eps, "momentum": train.norm.momentum, "noise": noise_spec(train),
            "groups": train.norm.groups, "plugin": plugin}


def build_model(train: TrainConfig, cell: Cell, seed: int) -> nn.Module:
    """The initial model of seed `seed` of `cell`, on the CPU: weights drawn from the run's init stream.

    A plug-in is built while the global torch RNG is seeded from a sub-stream of init (and restored afterwards), so a
    plug-in that draws its own initial values is reproducible and leaves the rest of the program's randomness alone.
    """
    init = seeds.torch_generator(train.seeds.base, seed, "init")
    options = norm_options(train, cell.variant)
    if cell.model in IMAGE_MODELS:
        def build() -> nn.Module:
            return IMAGE_MODELS[cell.model](train.model_config(cell.model), cell.variant, **options, generator=init)
    else:
        cfg = train.dln

        def build() -> nn.Module:
            return build_dln(cfg.depth, cfg.dim, cell.variant, **options, generator=init)
    if options["plugin"] is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.stream_seed(train.seeds.base, seed, "init", 1))
        return build()


def _noise_generators(model: nn.Module, base: int, seed: int, device: torch.device) -> list[torch.Generator]:
    """Give the noise layers (noisy variants) one generator from the run's noise stream; [] for the others."""
    if not noise_modules(model):
        return []
    g = seeds.torch_generator(base, seed, "noise", device=device)
    set_noise_generator(model, g)
    return [g]


def make_task(train: TrainConfig, cell: Cell, seed: int, data_path: Path | None, device: torch.device):
    """The task for `cell`: an ImageTask for an image classifier (it needs the prepared dataset), else a DlnTask
    (its prepared regression problems when `data_path` is given, else drawn directly)."""
    if cell.model in CLASSIFIERS:
        if data_path is None:
            raise ConfigError(f"train.grid.{cell.id}: a {cell.model} run needs --data (the prepared dataset)")
        return ImageTask(train, cell, seed, data_path, device)
    return DlnTask(train, cell, seed, device, data_path)


def config_hash(obj: Any) -> str:
    """Fingerprint of everything that determines a run's numbers (a resume state must match it)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_facts(params: Params, cell_id: str) -> dict[str, Any]:
    """The params that decide the numbers of `cell_id`'s runs: what a run's fingerprint hashes and its run.json
    records (with the seed index and the data's hash, which the caller adds).

    Params that cannot change the run's numbers stay out, so adding an option leaves existing fingerprints (and resume
    states) valid: train.norm.groups enters only for group_norm, train.plugins only the run's own plug-in (its
    module path and the sha256 of its source file: editing the plug-in is a new run), and only the run's model's
    sections of train and train.probes; train.numerics (threads per run, packed mode: they change float summation
    order) always, train.execution (scheduling) and the seed count never.
    """
    cell = params.cell(cell_id)
    train = to_plain(params.train)
    probes = {k: v for k, v in train["probes"].items() if k not in MODELS} | {"model": train["probes"][cell.model]}
    norm = {k: v for k, v in train["norm"].items() if k != "groups" or cell.variant == "group_norm"}
    facts = {"cell": cell_id, "base": params.train.seeds.base, "model": train[cell.model], "norm": norm,
             "noise": train["noise"], "probes": probes, "numerics": train["numerics"]}
    if cell.variant in train["plugins"]:
        spec = train["plugins"][cell.variant]["module"]
        source = Path(inspect.getsourcefile(plugin_class(spec, f"train.plugins.{cell.variant}.module")))
        facts["plugin"] = {"module": spec, "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    return facts


def run_fingerprint(params: Params, cell_id: str, seed: int, data_sha: str | None) -> str:
    """The fingerprint of one run: run_facts, the seed index and the dataset's hash (image models)."""
    return config_hash(run_facts(params, cell_id) | {"seed": seed, "data": data_sha})

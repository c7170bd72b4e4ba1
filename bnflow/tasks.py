"""What one run trains on: the model, how step t's batch is formed, the loss, and the test evaluation.

The floor below everything that trains or measures: the train step, the checkpoint-wise probe step, the lr scan and
the benchmarks all build their runs here, so a new model family is added in this one place. Two tasks share one
training loop (bnflow.train.loop): VGG on a prepared image dataset (mini-batch SGD, PROTOCOL §2) and the
deep linear network (full-batch GD on y = A x, PROTOCOL §6). Both keep their data on the training device, so the hot
loop has no DataLoader and no host transfer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnflow import seeds
from bnflow.config import Cell, Params, TrainConfig, to_plain
from bnflow.data import load_prepared
from bnflow.errors import ConfigError
from bnflow.models import build_dln, build_vgg, dln_loss, make_dln_data
from bnflow.models.norms import NoiseSpec, noise_modules, set_noise_generator


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


class VggTask:
    """VGG on a prepared CIFAR-style dataset; step t's batch comes from the epoch's stateless permutation."""

    model_name = "vgg"
    correct_is_defined = True

    def __init__(self, train: TrainConfig, cell: Cell, seed: int, data_path: Path, device: torch.device):
        cfg = train.vgg
        self.cfg, self.device, self.base, self.seed = cfg, device, train.seeds.base, seed
        data = load_prepared(data_path)
        self.data_info = {"path": str(data_path), "source": data.source, "source_sha256": data.source_sha256,
                          "n_train": int(len(data.train_labels)), "n_test": int(len(data.test_labels))}
        n_train = len(data.train_labels)
        if cfg.batch_size > n_train:
            raise ConfigError(f"train.vgg.batch_size: {cfg.batch_size} exceeds the {n_train} training images of {data_path}")
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
        init = seeds.torch_generator(self.base, seed, "init")
        noise = noise_spec(train)
        self.model = build_vgg(cfg.arch, cell.variant, width_mult=cfg.width_mult, eps=train.norm.eps,
                               momentum=train.norm.momentum, noise=noise, generator=init).to(device)
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


class DlnTask:
    """The 25-layer deep linear network: full-batch GD on y = A x, data drawn from the run's data stream."""

    model_name = "dln"
    correct_is_defined = False

    def __init__(self, train: TrainConfig, cell: Cell, seed: int, device: torch.device):
        cfg = train.dln
        self.cfg, self.device, self.base, self.seed = cfg, device, train.seeds.base, seed
        x, y, a = make_dln_data(cfg.n_samples, cfg.dim, generator=seeds.torch_generator(self.base, seed, "data"))
        self.x, self.y = x.to(device), y.to(device)
        self.data_info = {"n_samples": cfg.n_samples, "dim": cfg.dim, "A_fro_norm": float(a.norm())}
        init = seeds.torch_generator(self.base, seed, "init")
        self.model = build_dln(cfg.depth, cfg.dim, cell.variant, eps=train.norm.eps, momentum=train.norm.momentum,
                               noise=noise_spec(train), generator=init).to(device)
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


def _noise_generators(model: nn.Module, base: int, seed: int, device: torch.device) -> list[torch.Generator]:
    """Give the noise layers (noisy variants) one generator from the run's noise stream; [] for the others."""
    if not noise_modules(model):
        return []
    g = seeds.torch_generator(base, seed, "noise", device=device)
    set_noise_generator(model, g)
    return [g]


def make_task(train: TrainConfig, cell: Cell, seed: int, data_path: Path | None, device: torch.device):
    """The task for `cell` (VggTask needs the prepared dataset; DlnTask generates its own data)."""
    if cell.model == "vgg":
        if data_path is None:
            raise ConfigError(f"train.grid.{cell.id}: a VGG run needs --data (the prepared dataset)")
        return VggTask(train, cell, seed, data_path, device)
    return DlnTask(train, cell, seed, device)


def config_hash(obj: Any) -> str:
    """Fingerprint of everything that determines a run's numbers (a resume state must match it)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_fingerprint(params: Params, cell_id: str, seed: int, data_sha: str | None) -> str:
    """The fingerprint of one run: every param that decides its numbers, and the dataset's hash (VGG)."""
    train = to_plain(params.train)
    model_cfg = train[params.cell(cell_id).model]
    probes = {k: v for k, v in train["probes"].items() if k not in ("vgg", "dln")} | {
        "model": train["probes"][params.cell(cell_id).model]}
    return config_hash({"cell": cell_id, "seed": seed, "base": params.train.seeds.base, "model": model_cfg,
                        "norm": train["norm"], "noise": train["noise"], "probes": probes, "data": data_sha})

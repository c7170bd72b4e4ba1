"""The deep linear network (DLN) regression task of the paper (PROTOCOL §6).

A stack of square bias-free linear layers, optionally normalised after every layer but the last, with no
non-linearity, fitted to y = A x by full-batch gradient descent.
"""

from __future__ import annotations

import torch
from torch import nn

from bnflow.models.blocks import BlockNet
from bnflow.models.norms import REPARAMETRISED, NoiseSpec, NormFactory, check_variant, make_norm, weight_normalise_
from bnflow.models.vgg import glorot_init_, require_cpu_generator


class DLN(BlockNet):
    """Deep linear network; layer #k is linears[k-1] (1-based, forward order).

    Attributes:
        blocks: nn.ModuleList; block k-1 is Sequential(linear, norm) for layer #k. The last layer's norm is
            nn.Identity (no normalisation on the output, PROTOCOL §6 choice), so every block has the same shape.
        linears: list[nn.Linear], linears[k-1] is layer #k.
        norms: list[nn.Module], norms[k-1] is the norm after layer #k (nn.Identity for "standard" and the last).
    """

    @property
    def linears(self) -> list[nn.Linear]:
        return self.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions (N, dim) for inputs x (N, dim), float."""
        for block in self.blocks:
            x = block(x)
        return x


def build_dln(
    depth: int = 25,
    dim: int = 10,
    norm: str = "standard",
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    noise: NoiseSpec = NoiseSpec(),
    groups: int = 32,
    plugin: NormFactory | None = None,
    generator: torch.Generator | None = None,
) -> DLN:
    """Build the DLN of PROTOCOL §6: `depth` Linear(dim, dim, bias=False), a norm after each but the last.

    Args:
        depth: number of linear layers (>= 1; the paper uses 25).
        dim: width of every layer (the paper uses 10).
        norm: variant, one of NORMS, or a plug-in's name (with `plugin`); norms act on (N, dim).
        eps, momentum: BatchNorm / LpNorm / GroupNorm constants.
        noise: noise distribution for the noisy variants (set their generator with set_noise_generator).
        groups: group_norm's requested number of groups (bnflow.models.norms.group_count, (N, C) rule).
        plugin: the plug-in variant's class, built per normalised layer as plugin(dim).
        generator: CPU torch.Generator for the Glorot init, drawn layer by layer in forward order; required.
    Returns:
        The model on the CPU, float32, in training mode.
    """
    check_variant(norm, plugin, "build_dln")
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    generator = require_cpu_generator(generator, "build_dln")
    blocks = []
    for k in range(1, depth + 1):
        linear = nn.Linear(dim, dim, bias=False)
        if k < depth:
            norm_layer = make_norm(norm, dim, spatial=False, eps=eps, momentum=momentum, noise=noise, groups=groups,
                                   plugin=plugin)
        else:
            norm_layer = nn.Identity()
        blocks.append(nn.Sequential(linear, norm_layer))
    model = DLN(blocks, norm)
    glorot_init_(model.linears, generator)
    if norm in REPARAMETRISED:
        weight_normalise_(model.linears[:-1])  # the layers the other variants normalise (not the output layer)
    return model


def make_dln_data(
    n_samples: int = 1000, dim: int = 10, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the DLN regression data set (PROTOCOL §6).

    A is drawn first, then x, from `generator` on its own device.

    Args:
        n_samples: number of samples (the paper uses 1000).
        dim: input and output dimension (the paper uses 10).
        generator: the data stream.
    Returns:
        x (n_samples, dim) ~ N(0, I); y = x A^T (n_samples, dim), i.e. y_i = A x_i; A (dim, dim) with i.i.d.
        N(0, 1) entries. All float32 on the generator's device.
    """
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"make_dln_data: generator must be a torch.Generator, got {type(generator).__name__}")
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    opts = {"generator": generator, "device": generator.device, "dtype": torch.float32}
    a_matrix = torch.randn(dim, dim, **opts)
    x = torch.randn(n_samples, dim, **opts)
    return x, x @ a_matrix.T, a_matrix


def dln_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Half the summed squared error, 0.5 * sum_i ||pred_i - y_i||^2 (PROTOCOL §6 choice).

    Summed (not averaged) over samples and outputs with a 1/2 factor: this matches the loss scale of the paper's
    figures at lr 1e-6, and its gradient w.r.t. pred is simply pred - y.

    Args:
        pred, y: (N, dim) tensors of the same shape.
    Returns:
        Scalar tensor.
    """
    if pred.shape != y.shape:
        raise ValueError(f"dln_loss: pred shape {tuple(pred.shape)} differs from target shape {tuple(y.shape)}")
    return 0.5 * (pred - y).square().sum()

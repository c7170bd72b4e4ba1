"""The VGG-like CIFAR-10 network of the paper, with the normalisation variant as a parameter (PROTOCOL §2).

Layer #k is the k-th conv layer in forward order (1-based). Each conv layer is one block,
Sequential(conv, norm, relu[, maxpool]), so hooks on `blocks`, `convs` and `norms` see clean per-layer tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from bnflow.vocab import VGG_LAYERS
from bnflow.models.blocks import BlockNet
from bnflow.models.norms import REPARAMETRISED, NoiseSpec, NormFactory, check_variant, make_norm, weight_normalise_

# Channel counts per conv layer, "M" = 2x2 max-pool (VGG configurations D and A); the table lives in the vocabulary
# (bnflow.vocab) that params validation also reads, so validation and model building cannot disagree.
VGG_CONFIGS = VGG_LAYERS


def require_cpu_generator(generator: torch.Generator | None, what: str) -> torch.Generator:
    """Return `generator` if it is a CPU torch.Generator, else raise ValueError saying what it is needed for."""
    if generator is None:
        raise ValueError(
            f"{what} needs an explicit torch.Generator (the model-init stream from bnflow's seeds, PROTOCOL §9); "
            "pass generator=torch.Generator().manual_seed(seed)"
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"{what}: generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        # The model is built on the CPU and moved afterwards; a CUDA generator cannot fill CPU tensors.
        raise ValueError(f"{what}: the init generator must be a CPU generator, got one on {generator.device}")
    return generator


def glorot_init_(layers: list[nn.Module], generator: torch.Generator) -> None:
    """Glorot (Xavier) uniform init of each layer's weight, bias zero, drawn in list order (PROTOCOL §2).

    The bound is sqrt(6 / (fan_in + fan_out)), with fans counting the kernel's receptive field for convs;
    PyTorch's default (Kaiming-uniform with a=sqrt(5)) differs, which is why this is set explicitly.
    """
    with torch.no_grad():
        for layer in layers:
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()


def scaled_widths(config: list, width_mult: float) -> list:
    """Scale every channel count of a VGG config by `width_mult` (at least 1 channel); "M" entries stay."""
    return [c if c == "M" else max(1, round(c * width_mult)) for c in config]


class VGG(BlockNet):
    """Conv stack + linear classifier; the forward order of `blocks` defines layer numbers.

    Attributes:
        blocks: nn.ModuleList; block k-1 is Sequential(conv, norm, relu[, maxpool]) for layer #k.
        classifier: nn.Linear(C_last, num_classes); no norm on it (PROTOCOL §2 choice).
        convs: list[nn.Conv2d], convs[k-1] is layer #k (read-only view of the blocks).
        norms: list[nn.Module], norms[k-1] is the norm after layer #k (nn.Identity for "standard").
    """

    def __init__(self, blocks: list[nn.Sequential], classifier: nn.Linear, norm: str) -> None:
        super().__init__(blocks, norm)
        self.classifier = classifier

    @property
    def convs(self) -> list[nn.Conv2d]:
        return self.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images x (N, 3, 32, 32), float, already normalised per channel."""
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(x, 1))


def build_vgg(
    arch: str = "vgg16",
    norm: str = "standard",
    *,
    width_mult: float = 1.0,
    num_classes: int = 10,
    eps: float = 1e-5,
    momentum: float = 0.1,
    noise: NoiseSpec = NoiseSpec(),
    groups: int = 32,
    plugin: NormFactory | None = None,
    generator: torch.Generator | None = None,
) -> VGG:
    """Build the VGG of PROTOCOL §2: per conv, Conv2d(3x3, pad 1, bias) -> norm -> ReLU (-> MaxPool2d(2) at "M").

    Args:
        arch: a key of VGG_CONFIGS ("vgg16" has 13 conv layers, "vgg11" 8).
        norm: variant, one of NORMS, or a plug-in's name (with `plugin`).
        width_mult: > 0; every channel count becomes max(1, round(c * width_mult)) (narrow nets for CPU runs).
        num_classes: classifier outputs.
        eps, momentum: BatchNorm / LpNorm / GroupNorm constants.
        noise: noise distribution for "noisy_bn" / "noisy_standard". The noise modules are built without a
            generator (a separate stream from init): set one with set_noise_generator before training.
        groups: group_norm's requested number of groups (bnflow.models.norms.group_count).
        plugin: the plug-in variant's class, built per conv as plugin(C) (bnflow.models.norms.make_norm).
        generator: CPU torch.Generator for the Glorot init; required (no global RNG is used). Every variant draws
            the same weights from the same generator (weight_norm reparametrises them afterwards).
    Returns:
        The model on the CPU, float32, in training mode. With 32x32 inputs the five pools leave 1x1 maps, so the
        classifier takes C_last features.
    """
    if arch not in VGG_CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(VGG_CONFIGS)}")
    check_variant(norm, plugin, "build_vgg")
    if not (width_mult > 0):
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    generator = require_cpu_generator(generator, "build_vgg")
    config = scaled_widths(VGG_CONFIGS[arch], width_mult)
    blocks: list[nn.Sequential] = []
    in_channels = 3
    for entry in config:
        if entry == "M":
            blocks[-1].append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(in_channels, entry, kernel_size=3, padding=1, bias=True)
        norm_layer = make_norm(norm, entry, spatial=True, eps=eps, momentum=momentum, noise=noise, groups=groups,
                               plugin=plugin)
        # Not in-place: a hook on the norm output must still see the pre-ReLU values.
        blocks.append(nn.Sequential(conv, norm_layer, nn.ReLU(inplace=False)))
        in_channels = entry
    classifier = nn.Linear(in_channels, num_classes)
    model = VGG(blocks, classifier, norm)
    glorot_init_([*model.convs, model.classifier], generator)
    if norm in REPARAMETRISED:
        weight_normalise_(model.convs)  # the layers the other variants normalise; the classifier stays plain
    return model

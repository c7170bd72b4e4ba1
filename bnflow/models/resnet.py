"""A CIFAR ResNet with the normalisation variant as a parameter: beyond the paper (issue 17).

Why ResNet-20 (He, Zhang, Ren & Sun 2016, "Deep Residual Learning", §4.2) rather than pre-activation ResNet-18:
  - it is *the* CIFAR ResNet: 32x32 inputs, three stages of 16/32/64 channels, global average pool, ~0.27M weights
    and 1/8 of the paper's VGG-16's FLOPs per image, so the extended grid stays a GPU run of under an hour;
  - its unit is post-activation, conv -> norm -> ReLU, the paper's placement (norm before the non-linearity,
    PROTOCOL §2), so each conv layer is one block (conv, norm, ReLU) exactly as in bnflow's VGG and every probe
    (landscape, ICS at named layers, activations, curvature, Theorems 4.1/4.2) runs unchanged. Pre-activation
    ResNet-18 puts norm -> ReLU *before* each conv: its norm would not follow "its" conv, and its 11M weights at
    CIFAR resolution make it a different (much larger) experiment.
  - the 6n + 2 family (depth 8, 14, 20, ...) gives a CPU-sized ResNet-8 of the same design for the quick run.

Architecture (depth = 6n + 2, n basic blocks per stage; w = width_mult, widths max(1, round(c·w))):
  layer #1            conv3x3(3 -> 16w), norm, ReLU                                  (the stem)
  stage s = 1, 2, 3   n basic blocks of 16w, 32w, 64w channels; the first block of stages 2 and 3 has stride 2
  basic block         out = ReLU( norm2(conv2( ReLU(norm1(conv1(x))) )) + shortcut(x) )   (post-activation)
  shortcut            identity; where the block changes shape, He et al.'s option A (their choice for the CIFAR
                      ResNets): subsample by 2 and append zero channels. Parameter-free, so there are no projection
                      layers to number: every conv is a main-path layer #k.
  head                global average pool, Linear(64w -> classes); no norm on it (as VGG's classifier)
Convs are 3x3, padding 1, with a bias (zero at init), as in bnflow's VGG: one convention across bnflow's models, and
the normalisation-free variants keep an offset per channel.

Layer numbering (for probes): layer #1 is the stem conv; the b-th basic block in forward order (b = 0, 1, ...) holds
layers #2b+2 (conv1) and #2b+3 (conv2). ResNet-20 has layers #1..#19 (`bnflow.vocab.resnet_conv_layers`).
`blocks[k-1]` = Sequential(conv, norm, ReLU) for layer #k, `norms[k-1]` its norm, `layer_params(k)` its weight and
bias (g, v and bias under weight_norm), all from bnflow's BlockNet. Across residual connections:
  - the forward runs blocks[k-1]'s children itself: for a conv2 layer it adds the shortcut between the norm and the
    ReLU, so that block's ReLU is the block's output non-linearity. Activation hooks ("pre_relu" = the ReLU's input)
    therefore read norm1's output for conv1 layers and the stem, and norm2's output PLUS the shortcut (the residual
    stream before the ReLU) for conv2 layers; "post_relu" is the block's output.
  - ICS's "parameters preceding layer #k" (bnflow.probes.ics.preceding_params_in_blocks) are those of blocks 1..k-1
    in forward order. Here every earlier layer is upstream of layer #k (the residual stream carries each block's
    output forward, and conv2 reads conv1), and no later one is, so forward order is exactly graph order: G' moves
    every parameter that can shift layer #k's input, and only those.

Initialisation: Glorot uniform for every conv and the classifier, biases zero (PROTOCOL §2, as the VGG). Variants that
do not normalise activations (standard, noisy_standard, weight_norm: `bnflow.models.norms.normalises_activations`)
then start every residual branch at zero: conv2's weight is zeroed (under weight_norm its g, since v/‖v‖ needs
v ≠ 0), so every block starts as the identity and the unnormalised ResNet starts as a shallow network whose branches
grow from zero — rule 2 of Fixup (Zhang, Dauphin & Ma 2019) and the "zero-init residual" of Goyal et al. 2017. Variants
that normalise (BN, ℓp, group/layer norm, plug-ins) keep the plain draw, as the standard BN ResNet does: a zero conv
before a normaliser would feed it a constant (σ = √ε) and scale its gradients by 1/√ε ≈ 316.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnflow.models.blocks import BlockNet
from bnflow.models.norms import (REPARAMETRISED, NoiseSpec, NormFactory, check_variant, make_norm,
                                 normalises_activations, weight_normalise_)
from bnflow.models.vgg import glorot_init_, require_cpu_generator
from bnflow.vocab import RESNET_DEPTHS

STAGE_WIDTHS = (16, 32, 64)


def option_a_shortcut(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """He et al.'s parameter-free shortcut: x itself, or x subsampled by `stride` with zero channels appended up to
    `out_channels` where the block changes shape. x: (N, C_in, H, W) -> (N, out_channels, H/stride, W/stride)."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x


class ResNet(BlockNet):
    """CIFAR ResNet (6n + 2 layers); layer numbers, blocks and init as in the module docstring.

    Attributes:
        blocks: nn.ModuleList; block k-1 is Sequential(conv, norm, ReLU) for layer #k.
        classifier: nn.Linear(C_last, num_classes).
        convs: list[nn.Conv2d], convs[k-1] is layer #k.
        residual_closers: the layer numbers k whose ReLU follows the shortcut addition (the conv2 layers).
    """

    def __init__(self, blocks: list[nn.Sequential], classifier: nn.Linear, norm: str) -> None:
        super().__init__(blocks, norm)
        self.classifier = classifier

    @property
    def convs(self) -> list[nn.Conv2d]:
        return self.layers

    @property
    def residual_closers(self) -> list[int]:
        return list(range(3, len(self.blocks) + 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images x (N, 3, H, W), float, already normalised per channel."""
        x = self.blocks[0](x)
        for first in range(1, len(self.blocks), 2):
            inner, outer = self.blocks[first], self.blocks[first + 1]
            conv, norm, relu = outer
            h = norm(conv(inner(x)))
            x = relu(h + option_a_shortcut(x, conv.out_channels, inner[0].stride[0]))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_resnet(
    depth: int = 20,
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
) -> ResNet:
    """Build the CIFAR ResNet of the module docstring.

    Args:
        depth: 6n + 2, one of bnflow.vocab.RESNET_DEPTHS (20 = ResNet-20, 8 for CPU smoke runs).
        norm: variant, one of NORMS, or a plug-in's name (with `plugin`).
        width_mult: > 0; stage widths 16/32/64 become max(1, round(c * width_mult)).
        num_classes: classifier outputs.
        eps, momentum: BatchNorm / LpNorm / GroupNorm constants.
        noise: noise distribution for the noisy variants (set their generator with set_noise_generator).
        groups: group_norm's requested number of groups (bnflow.models.norms.group_count).
        plugin: the plug-in variant's class, built per conv as plugin(C).
        generator: CPU torch.Generator for the Glorot init, drawn conv by conv in forward order, then the classifier;
            required.
    Returns:
        The model on the CPU, float32, in training mode.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"build_resnet: depth must be 6n + 2, one of {', '.join(map(str, RESNET_DEPTHS))}; "
                         f"got {depth!r}")
    check_variant(norm, plugin, "build_resnet")
    if not (width_mult > 0):
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    generator = require_cpu_generator(generator, "build_resnet")
    widths = [max(1, round(c * width_mult)) for c in STAGE_WIDTHS]

    def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=True)
        norm_layer = make_norm(norm, c_out, spatial=True, eps=eps, momentum=momentum, noise=noise, groups=groups,
                               plugin=plugin)
        return nn.Sequential(conv, norm_layer, nn.ReLU(inplace=False))  # not in-place: hooks read the ReLU's input

    blocks = [block(3, widths[0], 1)]
    c_in = widths[0]
    per_stage = (depth - 2) // 6
    for stage, c_out in enumerate(widths):
        for i in range(per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks += [block(c_in, c_out, stride), block(c_out, c_out, 1)]
            c_in = c_out
    model = ResNet(blocks, nn.Linear(c_in, num_classes), norm)
    glorot_init_([*model.convs, model.classifier], generator)
    closers = [model.convs[k - 1] for k in model.residual_closers]
    if norm in REPARAMETRISED:
        weight_normalise_(model.convs)
    if not normalises_activations(norm):
        with torch.no_grad():
            for conv in closers:
                # weight_norm: w = g·v/‖v‖ is zero through g; v keeps its Glorot draw so that v/‖v‖ is defined
                target = conv.parametrizations.weight.original0 if norm in REPARAMETRISED else conv.weight
                target.zero_()
    return model

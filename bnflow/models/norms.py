"""Normalisation layers: BatchNorm, noisy BN (paper Algorithm 1), the lp normalisations (paper Section 3.3), and
four variants beyond the paper (issue 17); plus user plug-ins.

One factory, `make_norm`, builds every variant from its name so that the networks take the variant as a parameter
(PROTOCOL §2, §3, §7). Layers work on (N, C) and (N, C, H, W) activations a, a[n, c, h, w] (H = W = 1 for (N, C)).
The paper's variants normalise per channel c over every other axis (batch, and H x W for convolutions), as BatchNorm
does. The four beyond the paper, in the same terms (ε = train.norm.eps, γ_c / β_c learnable, starting at 1 / 0):

  group_norm            per example n and group g of C/G consecutive channels (G from `group_count`):
                        μ_ng, σ²_ng = mean and biased variance of a[n, c, h, w] over c in g and all h, w;
                        out = γ_c (a − μ_ng) / sqrt(σ²_ng + ε) + β_c. No batch statistics: the same in train and eval
                        mode, and no running estimates (Wu & He 2018).
  layer_norm            group_norm with G = 1: per example over all channels and positions, per-channel affine γ_c,
                        β_c (torch's nn.LayerNorm([C, H, W]) would learn one γ per (c, h, w): not this).
  weight_norm           no activation normalisation (the norm slot is the identity); instead the weight of the layer
                        before it is reparametrised per output channel o as w_o = g_o · v_o / ‖v_o‖₂ (norm over input
                        channels x kernel positions; Salimans & Kingma 2016), g and v trainable, starting at the
                        Glorot draw: v = w_init, g_o = ‖w_init,o‖ (no data-dependent init, so step 0 computes the
                        standard network). `weight_normalise_` does it, on the layers the other variants normalise.
  batch_norm_no_affine  BatchNorm without γ, β: out = (a − μ_c) / sqrt(σ²_c + ε), batch statistics in training,
                        running estimates in eval mode; Theorem 4.1's control with γ = 1 (PROTOCOL §8).

A plug-in variant (train.plugins.<name>.module = "pkg.mod:Class") is built as `Class(num_features)` (see
`make_norm`) wherever a built-in norm would go.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn.utils import parametrizations

from bnflow.vocab import VARIANTS

NORMS = VARIANTS  # the variant names params.yaml accepts (bnflow.config)
"""Variant names, as spelled in params.yaml, run ids and figures (STYLE §6)."""

_LP_BY_NAME = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
REPARAMETRISED = ("weight_norm",)
"""Variants that reparametrise the layer's weight instead of (not as well as) normalising its output."""
WITHOUT_ACTIVATION_NORM = ("standard", "noisy_standard", "weight_norm")
"""Variants whose norm slot does not normalise activations (a residual network starts their branches at zero).
Plug-in variants are taken to normalise."""

NormFactory = Callable[[int], nn.Module]
"""A plug-in variant: called with the channel count C, returns the module put in the norm slot."""


def group_count(channels: int, groups: int, *, spatial: bool) -> int:
    """The number of groups G of `group_norm` for `channels` = C channels (train.norm.groups = `groups`).

    Rule: G is the largest divisor of C that is <= `groups`, so G = groups whenever groups divides C and otherwise
    the nearest coarser grouping that keeps groups equal-sized (C = 48, groups = 32 -> 24; C = 16 -> 16, one channel
    per group). For (N, C) activations (no positions, `spatial` False) G is also at most C // 2, so that each group
    holds at least 2 values per example: a group of one value normalises to 0 and passes no signal. C = 1 gives 1.

    Args:
        channels: C >= 1.
        groups: the requested number of groups, >= 1.
        spatial: True for (N, C, H, W) activations.
    """
    if not (isinstance(channels, int) and channels >= 1):
        raise ValueError(f"group_count: channels must be a positive int, got {channels!r}")
    if not (isinstance(groups, int) and groups >= 1):
        raise ValueError(f"group_count: groups must be a positive int, got {groups!r}")
    cap = groups if spatial else min(groups, max(1, channels // 2))
    return max(d for d in range(1, min(cap, channels) + 1) if channels % d == 0)


def check_variant(kind: str, plugin: NormFactory | None, what: str) -> None:
    """Raise ValueError (starting with `what`) unless `kind` is a built-in variant, or a plug-in given `plugin`."""
    if plugin is None and kind not in NORMS:
        raise ValueError(f"{what}: unknown norm {kind!r}; valid names: {', '.join(NORMS)} (or a plug-in variant, "
                         "passed with plugin=)")
    if plugin is not None and kind in NORMS:
        raise ValueError(f"{what}: plug-in variant {kind!r} has the name of a built-in variant; rename it")


def normalises_activations(kind: str) -> bool:
    """Whether variant `kind` normalises the activations in its norm slot (False: standard, noisy_standard,
    weight_norm; True for every other built-in and every plug-in)."""
    return kind not in WITHOUT_ACTIVATION_NORM


def weight_normalise_(layers: Iterable[nn.Module]) -> None:
    """Reparametrise each layer's weight as w_o = g_o · v_o / ‖v_o‖₂ per output channel o (variant weight_norm).

    Uses torch's parametrisation, so the reparametrisation lives inside the layer itself: `layer.weight` is computed
    from `layer.parametrizations.weight.original0` (g, shape (C_out, 1, ...)) and `.original1` (v, the weight's
    shape), and `layer.parameters()` yields bias, g, v. A network's `layer_params(k)` therefore names g, v and the
    bias of layer #k, and ICS (PROTOCOL §4) moves exactly those. Call it after the Glorot init: v takes the drawn
    weight and g its per-channel norm, so w is unchanged.
    """
    for layer in layers:
        parametrizations.weight_norm(layer, name="weight", dim=0)


@dataclass(frozen=True)
class NoiseSpec:
    """Parameters of the noisy-BN distribution shift (paper Algorithm 1; defaults are the paper's, PROTOCOL §3).

    Args:
        n_mu: half-width of the per-channel mean shift, mu_j ~ U(-n_mu, n_mu). >= 0.
        n_sigma: upper end of the per-channel scale, sigma_j ~ U(1, n_sigma). >= 1.
        r_mu: half-width of the per-position shift around mu_j, m_ij ~ U(mu_j - r_mu, mu_j + r_mu). >= 0.
        r_sigma: standard deviation of the per-position scale around sigma_j, s_ij ~ N(sigma_j, r_sigma). >= 0.
    """

    n_mu: float = 0.5
    n_sigma: float = 1.25
    r_mu: float = 0.1
    r_sigma: float = 0.1

    def __post_init__(self) -> None:
        lower = {"n_mu": 0.0, "n_sigma": 1.0, "r_mu": 0.0, "r_sigma": 0.0}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"NoiseSpec.{f.name} must be a number, got {value!r}")
            # `not (x >= lo)` also rejects NaN; inf would make the uniform draws meaningless.
            if not (value >= lower[f.name]) or math.isinf(value):
                raise ValueError(f"NoiseSpec.{f.name} must be a finite number >= {lower[f.name]:g}, got {value!r}")


class ActivationNoise(nn.Module):
    """Random per-channel and per-position affine distortion of activations (paper Algorithm 1, PROTOCOL §3).

    In training mode every forward call draws, in this order and only from the module's generator:
    mu_j ~ U(-n_mu, n_mu) and sigma_j ~ U(1, n_sigma) per channel j (shape (C,)); then per position i (a sample for
    (N, C) input, a (sample, h, w) triple for (N, C, H, W) input) m_ij ~ U(mu_j - r_mu, mu_j + r_mu) and
    s_ij ~ N(sigma_j, r_sigma), each with the input's shape; the output is s * a + m. The fixed order makes the
    noise a function of the generator state alone. In eval mode the module is the identity (evaluation runs
    without noise, a PROTOCOL §3 choice).

    Args:
        noise: the distribution parameters.
        generator: the only source of randomness; it must live on the activations' device. The trainer usually
            sets it later with `set_generator`, once it knows the device.
    """

    def __init__(self, noise: NoiseSpec = NoiseSpec(), generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(noise, NoiseSpec):
            raise TypeError(f"noise must be a NoiseSpec, got {type(noise).__name__}")
        self.noise = noise
        self.generator: torch.Generator | None = None
        if generator is not None:
            self.set_generator(generator)

    def set_generator(self, generator: torch.Generator) -> None:
        """Use `generator` (on the activations' device) for all later draws."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Distort `a` (N, C) or (N, C, H, W) in training mode; return it unchanged in eval mode."""
        if not self.training:
            return a
        if a.dim() not in (2, 4):
            raise ValueError(f"ActivationNoise takes (N, C) or (N, C, H, W) activations, got shape {tuple(a.shape)}")
        g = self.generator
        if g is None:
            raise RuntimeError(
                "ActivationNoise is in training mode but has no generator: call "
                "bnflow.models.set_noise_generator(model, generator) with a torch.Generator on the model's device"
            )
        if g.device != a.device:
            raise RuntimeError(
                f"ActivationNoise generator is on {g.device} but the activations are on {a.device}: "
                "create the noise generator on the model's device and set it with set_noise_generator"
            )
        spec = self.noise
        channels = a.shape[1]
        # Draw in float32 whatever the activation dtype, so the noise does not depend on precision settings.
        opts = {"generator": g, "device": g.device, "dtype": torch.float32}
        mu = (2.0 * torch.rand(channels, **opts) - 1.0) * spec.n_mu
        sigma = 1.0 + torch.rand(channels, **opts) * (spec.n_sigma - 1.0)
        per_channel = (1, channels) + (1,) * (a.dim() - 2)
        m = mu.view(per_channel) + (2.0 * torch.rand(a.shape, **opts) - 1.0) * spec.r_mu
        s = sigma.view(per_channel) + torch.randn(a.shape, **opts) * spec.r_sigma
        return s.to(a.dtype) * a + m.to(a.dtype)

    def extra_repr(self) -> str:
        n = self.noise
        return f"n_mu={n.n_mu}, n_sigma={n.n_sigma}, r_mu={n.r_mu}, r_sigma={n.r_sigma}"


class LpNorm(nn.Module):
    """BatchNorm-like layer that divides by an lp scale of the uncentred activations (paper Section 3.3, PROTOCOL §7).

    Per channel, over batch (x H x W): mean = E[a] and scale = E|a| (p=1), sqrt(E[a^2] + eps) (p=2) or max|a|
    (p=inf), all computed on `a` BEFORE centring. out = gamma * (a - mean) / denom + beta, where denom = scale + eps
    for p in {1, inf} and denom = scale for p = 2.

    eps choice: for p=2 it goes inside the square root, exactly where BatchNorm puts it (var + eps), so l2 and BN
    share one convention; p=1 and p=inf have no root, so eps is added to the scale. Either way it only guards a
    channel whose activations are all zero.

    Running estimates (used in eval mode, PROTOCOL §7) follow BatchNorm's update:
    running = (1 - momentum) * running + momentum * batch_value, from the batch mean and scale (no Bessel
    correction; running_scale holds the scale before the additive eps). They start at mean 0, scale 1.

    Args:
        p: 1, 2 or math.inf.
        num_features: number of channels C.
        eps: >= 0, see above.
        momentum: in (0, 1], weight of the newest batch in the running estimates.
    """

    def __init__(self, p: float, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if p not in (1, 2, math.inf):
            raise ValueError(f"LpNorm p must be 1, 2 or math.inf, got {p!r}")
        if not (isinstance(num_features, int) and num_features >= 1):
            raise ValueError(f"LpNorm num_features must be a positive int, got {num_features!r}")
        if not (eps >= 0):
            raise ValueError(f"LpNorm eps must be >= 0, got {eps!r}")
        if not (0 < momentum <= 1):
            raise ValueError(f"LpNorm momentum must be in (0, 1], got {momentum!r}")
        self.p = float(p)
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))

    def _batch_scale(self, a: torch.Tensor, dims: list[int]) -> torch.Tensor:
        if self.p == 1:
            return a.abs().mean(dim=dims)
        if self.p == 2:
            return torch.sqrt(a.square().mean(dim=dims) + self.eps)
        return a.abs().amax(dim=dims)

    def _denominator(self, scale: torch.Tensor) -> torch.Tensor:
        return scale if self.p == 2 else scale + self.eps

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Normalise `a` of shape (N, C) or (N, C, H, W), float; returns the same shape."""
        if a.dim() < 2 or a.shape[1] != self.num_features:
            raise ValueError(
                f"LpNorm(num_features={self.num_features}) got activations of shape {tuple(a.shape)}; "
                "expected (N, C) or (N, C, H, W) with C = num_features"
            )
        dims = [0] + list(range(2, a.dim()))
        if self.training:
            mean = a.mean(dim=dims)
            scale = self._batch_scale(a, dims)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_scale.lerp_(scale.detach().to(self.running_scale.dtype), self.momentum)
        else:
            mean, scale = self.running_mean, self.running_scale
        shape = (1, self.num_features) + (1,) * (a.dim() - 2)
        out = (a - mean.view(shape)) / self._denominator(scale).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"p={self.p:g}, num_features={self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"


def make_norm(
    kind: str,
    num_features: int,
    *,
    spatial: bool,
    eps: float = 1e-5,
    momentum: float = 0.1,
    noise: NoiseSpec = NoiseSpec(),
    generator: torch.Generator | None = None,
    groups: int = 32,
    plugin: NormFactory | None = None,
) -> nn.Module:
    """Build the normalisation layer of variant `kind` (one of NORMS, or a plug-in) for `num_features` channels.

    standard -> nn.Identity; bn -> BatchNorm; noisy_bn -> Sequential(BatchNorm, ActivationNoise), so the noise acts
    after gamma, beta and before the ReLU (PROTOCOL §3); noisy_standard -> ActivationNoise alone (the paper's
    control); l1 / l2 / linf -> LpNorm; group_norm -> nn.GroupNorm(group_count(C, groups), C); layer_norm ->
    nn.GroupNorm(1, C); weight_norm -> nn.Identity (its reparametrisation is `weight_normalise_` on the layer);
    batch_norm_no_affine -> BatchNorm(affine=False). Affine parameters start at gamma = 1, beta = 0.

    A plug-in (`plugin` given, `kind` its name, which must not be a built-in one) is built as plugin(num_features):
    one positional int, the channel count C. The module it returns gets the layer's pre-activation, (N, C, H, W) in
    the conv nets and (N, C) in the deep linear net, in training mode during training and probes (whatever batch
    statistics it computes are the batch's, as BN's) and in eval mode for test evaluation; it must return the same
    shape. Its parameters train with the network; its buffers are checkpointed and restored by the probes.

    Args:
        kind: variant name, one of NORMS, or the plug-in's name.
        num_features: channels C.
        spatial: True for (N, C, H, W) activations (BatchNorm2d), False for (N, C) (BatchNorm1d).
        eps, momentum: BatchNorm / LpNorm / GroupNorm constants (PROTOCOL §2 defaults 1e-5, 0.1; GroupNorm has
            no running estimates, so no momentum).
        noise: noise distribution for the noisy variants.
        generator: noise generator for the noisy variants (may be set later with set_noise_generator).
        groups: group_norm's requested group count (train.norm.groups), see `group_count`.
        plugin: the plug-in's class (or any callable C -> nn.Module); only for a plug-in `kind`.
    """
    check_variant(kind, plugin, "make_norm")
    if plugin is not None:
        layer = plugin(num_features)
        if not isinstance(layer, nn.Module):
            raise ValueError(f"plug-in variant {kind!r}: {plugin!r}({num_features}) returned a "
                             f"{type(layer).__name__}, not a torch.nn.Module")
        return layer
    if kind in ("standard", "weight_norm"):
        return nn.Identity()
    if kind == "noisy_standard":
        return ActivationNoise(noise, generator)
    if kind in _LP_BY_NAME:
        return LpNorm(_LP_BY_NAME[kind], num_features, eps=eps, momentum=momentum)
    if kind in ("group_norm", "layer_norm"):
        n_groups = group_count(num_features, groups, spatial=spatial) if kind == "group_norm" else 1
        return nn.GroupNorm(n_groups, num_features, eps=eps, affine=True)  # gamma = 1, beta = 0 by construction
    bn_class = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    if kind == "batch_norm_no_affine":
        return bn_class(num_features, eps=eps, momentum=momentum, affine=False, track_running_stats=True)
    bn = bn_class(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    if kind == "bn":
        return bn
    return nn.Sequential(bn, ActivationNoise(noise, generator))


def noise_modules(model: nn.Module) -> list[ActivationNoise]:
    """All ActivationNoise modules of `model`, in registration (forward) order."""
    return [m for m in model.modules() if isinstance(m, ActivationNoise)]


def set_noise_generator(model: nn.Module, generator: torch.Generator) -> int:
    """Give every ActivationNoise in `model` the same `generator` (on the model's device); returns how many.

    The modules draw from the shared generator one after another in forward order, so one generator state fixes
    the noise of the whole network for a step.
    """
    modules = noise_modules(model)
    for module in modules:
        module.set_generator(generator)
    return len(modules)

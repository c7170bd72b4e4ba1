"""Packed seeds: the S seeds of one VGG cell as one network whose every layer holds S independent copies (issue 16).

Seed i's activations live in channel slice [i*C, (i+1)*C) of a (B, S*C, H, W) tensor; the batch axis holds the S
seeds' own mini-batches side by side (example b of every seed). Then
- a conv is one Conv2d(S*C_in, S*C_out, groups=S): group i sees only seed i's channels and holds seed i's kernel;
- BatchNorm and the lp norms are per channel already, so BatchNorm2d(S*C) / LpNorm(S*C) normalise each (seed,
  channel) over that seed's own mini-batch, with per-(seed, channel) running statistics; GroupNorm(G, C) (group_norm,
  layer_norm) becomes GroupNorm(S*G, S*C), whose groups of consecutive channels never straddle two seeds;
- weight_norm's per-output-channel reparametrisation w_o = g_o v_o / ‖v_o‖ is per row of the grouped conv's weight,
  so the packed conv carries the same parametrisation;
- noisy BN runs each seed's slice through that seed's own ActivationNoise (its own generator, drawn in the order a
  single model draws), so the noise is the one the seed sees when trained alone;
- ReLU and max-pool act per channel; the classifier is a grouped linear map returning logits (B, S, K).
Every parameter, buffer and gradient of seed i is the slice [i*n, (i+1)*n) along dim 0 of the packed tensor and the
packed state_dict has the single model's keys, so `pack_state` / `unpack_state` convert between them and a packed
checkpoint unpacks to exactly the state_dict a separately trained seed has. The training loss is the sum over seeds
of each seed's mean cross-entropy (`packed_losses(...).sum()`): seed i's gradient is that of its own loss, the same as
when trained alone up to float summation order, and elementwise optimisers (SGD) update each slice as alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from bnflow.errors import BnflowError
from bnflow.models.norms import ActivationNoise, LpNorm, NoiseSpec
from bnflow.models.vgg import VGG


class PackingError(BnflowError):
    """The models cannot be packed (a layer type packing does not know, or seeds whose shapes differ)."""


class PackedLinear(nn.Module):
    """S independent Linear(in_features, out_features) layers; weight (S*out, in) and bias (S*out,) stack them."""

    def __init__(self, n_seeds: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.n_seeds, self.in_features, self.out_features = n_seeds, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_seeds * out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n_seeds * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-seed outputs (B, S, out) for inputs (B, S*in): seed i reads features [i*in, (i+1)*in)."""
        s, k, c = self.n_seeds, self.out_features, self.in_features
        out = torch.einsum("bsc,skc->bsk", x.reshape(x.shape[0], s, c), self.weight.view(s, k, c))
        return out if self.bias is None else out + self.bias.view(s, k)


class PackedNoise(nn.Module):
    """Noisy BN's distortion for S seeds: channel slice i goes through seed i's own ActivationNoise."""

    def __init__(self, n_seeds: int, noise: NoiseSpec) -> None:
        super().__init__()
        self.per_seed = nn.ModuleList(ActivationNoise(noise) for _ in range(n_seeds))  # no params: no state keys

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """(B, S*C[, H, W]) -> same shape; identity in eval mode, like ActivationNoise."""
        if not self.training:
            return a
        slices = a.chunk(len(self.per_seed), dim=1)
        return torch.cat([noise(part) for noise, part in zip(self.per_seed, slices, strict=True)], dim=1)


class PackedVGG(nn.Module):
    """S VGG seeds as one network with the single VGG's module tree (`blocks`, `classifier`) and state_dict keys.

    Attributes:
        n_seeds: S.
        blocks: block k-1 = Sequential(grouped conv, packed norm, ReLU[, max-pool]) for layer #k of every seed.
        classifier: PackedLinear.
    """

    def __init__(self, blocks: list[nn.Sequential], classifier: PackedLinear, n_seeds: int, norm: str) -> None:
        super().__init__()
        self.blocks, self.classifier, self.n_seeds, self.norm = nn.ModuleList(blocks), classifier, n_seeds, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, S, K) for packed images (B, S*3, H, W) (`pack_inputs`), normalised per channel."""
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(x, 1))

    def set_noise_generators(self, generators: Sequence[torch.Generator | None]) -> None:
        """Seed i's noise slices draw from generators[i] (its run's noise stream), as its single model does."""
        if len(generators) != self.n_seeds:
            raise PackingError(f"set_noise_generators: {len(generators)} generators for {self.n_seeds} seeds")
        for m in self.modules():
            if isinstance(m, PackedNoise):
                for noise, g in zip(m.per_seed, generators):
                    if g is None:
                        raise PackingError("a noisy variant needs every seed's noise generator (task.generators)")
                    noise.set_generator(g)


def _weight_norm_dim(m: nn.Module) -> int | None:
    """The dim of a layer's weight_norm parametrisation (None when it has none); PackingError for any other one."""
    if not parametrize.is_parametrized(m):
        return None
    plist = m.parametrizations
    ok = (set(plist.keys()) == {"weight"} and len(plist.weight) == 1
          and type(plist.weight[0]).__name__ == "_WeightNorm")
    if not ok:
        raise PackingError(f"packed execution does not know the parametrisation of this {type(m).__name__}; "
                           "set train.numerics.mode: separate for this variant")
    return plist.weight[0].dim


def _pack_module(m: nn.Module, s: int) -> nn.Module:
    """The S-seed counterpart of one layer of a single VGG (weights uninitialised: pack_state fills them)."""
    kind = type(m)
    wn_dim = _weight_norm_dim(m)
    if isinstance(m, nn.Conv2d) and (kind is nn.Conv2d or wn_dim is not None):
        conv = nn.Conv2d(s * m.in_channels, s * m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                         dilation=m.dilation, groups=s * m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
        if wn_dim is not None:
            if wn_dim != 0:  # a norm over other dims would mix the seeds' rows
                raise PackingError(f"weight_norm over dim {wn_dim} cannot be packed (only dim 0, per output channel)")
            parametrizations.weight_norm(conv, name="weight", dim=0)
        return conv
    if wn_dim is not None:
        raise PackingError(f"packed execution packs weight_norm on Conv2d only, not on {kind.__name__}")
    if kind is nn.GroupNorm:
        return nn.GroupNorm(s * m.num_groups, s * m.num_channels, eps=m.eps, affine=m.affine)
    if kind is nn.BatchNorm2d:
        return nn.BatchNorm2d(s * m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                              track_running_stats=m.track_running_stats)
    if kind is LpNorm:
        return LpNorm(m.p, s * m.num_features, eps=m.eps, momentum=m.momentum)
    if kind is ActivationNoise:
        return PackedNoise(s, m.noise)
    if kind is nn.Linear:
        return PackedLinear(s, m.in_features, m.out_features, bias=m.bias is not None)
    if kind is nn.Sequential:
        return nn.Sequential(*(_pack_module(c, s) for c in m))
    if kind in (nn.Identity, nn.ReLU, nn.MaxPool2d):  # per channel, no state
        return copy.deepcopy(m)
    raise PackingError(f"packed execution does not know how to pack a {kind.__name__} layer; "
                       "set train.numerics.mode: separate for this variant")


def packing_problem(model: nn.Module) -> str | None:
    """Why `model` cannot be trained packed (a message), or None when it can."""
    if not isinstance(model, VGG):
        return f"packing is for VGG models, not {type(model).__name__}"
    try:
        for block in model.blocks:
            _pack_module(block, 1)
        _pack_module(model.classifier, 1)
    except PackingError as e:
        return str(e)
    return None


def pack_state(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state_dict from S single-seed ones: every tensor concatenated along dim 0 (0-d counters must agree)."""
    keys = list(states[0])
    out = {}
    for i, st in enumerate(states):
        if list(st) != keys:
            raise PackingError(f"seed {i}'s model has other state keys than seed 0's; seeds of a cell must share "
                               "the architecture")
    for k in keys:
        parts = [st[k] for st in states]
        if parts[0].dim() == 0:
            if any(not torch.equal(p, parts[0]) for p in parts):
                raise PackingError(f"{k}: differs between seeds ({[p.item() for p in parts]}); cannot pack it")
            out[k] = parts[0].clone()
        else:
            if any(p.shape != parts[0].shape for p in parts):
                raise PackingError(f"{k}: shapes differ between seeds ({[tuple(p.shape) for p in parts]})")
            out[k] = torch.cat([p.detach() for p in parts], dim=0)
    return out


def seed_slice(t: torch.Tensor, i: int, n_seeds: int) -> torch.Tensor:
    """Seed i's part of a packed tensor: rows [i*n, (i+1)*n) of dim 0 (a view; 0-d tensors are shared)."""
    if t.dim() == 0:
        return t
    n = t.shape[0] // n_seeds
    return t.narrow(0, i * n, n)


def unpack_state(state: Mapping[str, torch.Tensor], i: int, n_seeds: int) -> dict[str, torch.Tensor]:
    """Seed i's single-model state_dict (same keys and shapes as its VGG's) from a packed one, as views."""
    if not 0 <= i < n_seeds:
        raise PackingError(f"unpack_state: seed position {i} is outside 0..{n_seeds - 1}")
    return {k: seed_slice(v, i, n_seeds) for k, v in state.items()}


def pack_vgg(models: Sequence[VGG]) -> PackedVGG:
    """The packed network of S single VGGs (same arch and variant), with their exact weights and buffers.

    Args:
        models: the seeds' models in seed order, e.g. each seed's VggTask.model (Glorot init from its own stream).
    Returns:
        PackedVGG on the models' device and dtype, in the mode of models[0]; noise generators are not set
        (`set_noise_generators`).
    """
    if not models:
        raise PackingError("pack_vgg: no models to pack")
    problem = packing_problem(models[0])
    if problem:
        raise PackingError(problem)
    s, template = len(models), models[0]
    blocks = [_pack_module(b, s) for b in template.blocks]
    packed = PackedVGG(blocks, _pack_module(template.classifier, s), s, template.norm)
    first = next(template.parameters())
    packed = packed.to(device=first.device, dtype=first.dtype)  # before loading: no rounding of float64 weights
    packed.load_state_dict(pack_state([m.state_dict() for m in models]))
    return packed.train(template.training)


def pack_inputs(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Seed i's images (B, C, H, W) into channels [i*C, (i+1)*C) of one (B, S*C, H, W) tensor."""
    return torch.cat(list(xs), dim=1)


def packed_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each seed's mean cross-entropy, (S,), from logits (B, S, K) and labels (B, S) (column i: seed i's batch)."""
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(dim=0)


def packed_correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions per seed, int64 (S,), from logits (B, S, K) and labels (B, S)."""
    return (out.argmax(dim=2) == y).sum(dim=0)


@torch.no_grad()
def zero_seed(model: nn.Module, i: int, n_seeds: int, opt: torch.optim.Optimizer | None = None) -> None:
    """Zero seed i's parameters (its weights), gradients and optimiser buffers in place (a diverged seed).

    A diverged seed's slices hold NaN/inf; zeroing them keeps non-finite values out of every later kernel while the
    other seeds train on (grouped layers never mix seeds, so this is hygiene, not a correctness need).
    """
    for name, p in model.named_parameters():
        # weight_norm's direction v must stay non-zero (w = g v / ‖v‖): with g = 0 any v gives w = 0
        seed_slice(p.data, i, n_seeds).fill_(1.0 if name.endswith("parametrizations.weight.original1") else 0.0)
        if p.grad is not None:
            seed_slice(p.grad, i, n_seeds).zero_()
        for buf in (opt.state.get(p, {}).values() if opt is not None else ()):
            if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                seed_slice(buf, i, n_seeds).zero_()

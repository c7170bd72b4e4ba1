"""Numerical checks of the paper's Theorems 4.1 and 4.2 on real BN layers (paper §4; PROTOCOL §8).

Notation, per BN channel j in train mode (batch statistics), with its m values (m = N for BatchNorm1d,
N·H·W for BatchNorm2d): y = BN input, μ = mean(y), σ = sqrt(var_biased(y) + ε) (ε folded in, as BN computes),
ŷ = (y − μ)/σ, z = γŷ + β = BN output, g_z = ∂L/∂z, g_y = ∂L/∂y, H_zz / H_yy the Hessians of the mini-batch loss
w.r.t. z / y with everything else fixed (block jj for one channel). The proofs rest on
    g_y = (γ/σ)·P·g_z,   P = I − 11ᵀ/m − ŷŷᵀ/m,
which holds exactly with ε (∂σ/∂y = ŷ/m either way). P is an orthogonal projection only when ‖ŷ‖² = m, i.e.
ε = 0; with ε > 0, ‖ŷ‖²/m = 1 − ε/σ², so the paper's formulas are off by terms of relative size ε/σ². Each check
reports the paper's formula (`rhs`) and the ε-exact identity (`rhs_exact`) that a correct implementation must hit
to float precision; the two differ noticeably only for channels with σ² not ≫ ε (near-constant channels).

Theorem 4.1 (v3 prints "≤" and 1/√m; the proof gives an equality with 1/m):
    ‖g_y‖² = (γ²/σ²)·(‖g_z‖² − ⟨1, g_z⟩²/m − ⟨g_z, ŷ⟩²/m)                  [exact: last term × (2 − ‖ŷ‖²/m)]

Theorem 4.2 (arXiv v3, "the effect of BatchNorm on smoothness"; its ĝ_j is our g_z and its H_jj our H_zz):
    (a)  g_yᵀ H_yy g_y ≤ (γ²/σ²)·g_yᵀ H_zz g_y − (γ/(mσ²))·⟨g_z, ŷ⟩·‖g_y‖²
    (b)  if H_zz "preserves the relative norms" of g_z and g_y:
         g_yᵀ H_yy g_y ≤ (γ²/σ²)·(g_zᵀ H_zz g_z − (1/(mγ))·⟨g_z, ŷ⟩·‖g_y‖²)
What is checked: the curvature of the loss along the gradient w.r.t. the BN input, g_yᵀH_yy g_y (`lhs`, from a
Hessian-vector product w.r.t. y), against the right sides built from Hessian-vector products w.r.t. the BN output.
Differentiating z(y) twice gives, for any direction v on channel j (a = ⟨ŷ, v⟩/m),
    vᵀH_yy v = (Jv)ᵀH_zz(Jv) − (γ/σ²)·(2a⟨g_z, Pv⟩ + ⟨g_z, ŷ⟩⟨Pv, v⟩/m),   Jv = (γ/σ)·Pv = dz along v,
and with ε = 0 and v = g_y (Pv = v, a = 0) this is (a) with EQUALITY; `rhs_exact` is this identity with ε.
(b) is reported as `rhs_assumed` / `margin_assumed`: it holds only under its extra assumption, so a negative
margin there measures that assumption failing, not a bug. A whole-layer variant (channel = −1) uses v = g_y on
all channels of the layer at once: then Jv is scaled per channel and the correction terms add over channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from bnflow.probes.state import LossFn, ProbeError, Snapshot, probe_session, restore_forward_state

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_layers(model: nn.Module, layers: Iterable[int] | None = None) -> list[tuple[int, nn.Module]]:
    """The BatchNorm modules of `model` as (layer number, module), in forward order.

    Layer k is the norm after conv/linear layer #k when the model has bnflow's `norms` list (the BN inside a
    noisy-BN Sequential counts; Identity / ℓp norms are skipped); otherwise BN modules are numbered 1.. in
    registration order.

    Args:
        model: the network.
        layers: keep only these layer numbers (None: all). A number without a BN layer raises ProbeError.
    """
    norms = getattr(model, "norms", None)
    if norms is not None:
        found = []
        for k, norm in enumerate(norms, start=1):
            bns = [m for m in norm.modules() if isinstance(m, BN_TYPES)]
            if bns:
                found.append((k, bns[0]))
    else:
        found = list(enumerate((m for m in model.modules() if isinstance(m, BN_TYPES)), start=1))
    if layers is None:
        return found
    wanted = list(layers)
    have = dict(found)
    missing = [k for k in wanted if k not in have]
    if missing:
        raise ProbeError(f"layers {missing} have no BatchNorm layer; layers with one: {sorted(have)}")
    return [(k, have[k]) for k in wanted]


def _check_batch_stats(layers: Sequence[tuple[int, nn.Module]]) -> None:
    for k, bn in layers:
        if not (bn.training or (bn.running_mean is None and bn.running_var is None)):
            raise ProbeError(f"the BN layer of layer {k} is in eval mode (running statistics): Theorems 4.1/4.2 "
                             "concern the batch-statistics BN of training; call model.train() before the check")


def _capture(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, snap: Snapshot,
             layers: Sequence[tuple[int, nn.Module]], before_forward: Callable[[], object] | None):
    """One forward with hooks: returns (loss, BN inputs, BN outputs), graph kept, in `layers` order."""
    seen: dict[int, list] = {i: [] for i in range(len(layers))}

    def hook(i):
        return lambda _mod, inp, out: seen[i].append((inp[0], out))

    handles = [bn.register_forward_hook(hook(i)) for i, (_, bn) in enumerate(layers)]
    try:
        restore_forward_state(model, snap)
        if before_forward is not None:
            before_forward()
        loss = loss_fn(model, x, y)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ProbeError(f"loss_fn must return a 0-d tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    for i, (k, _) in enumerate(layers):
        if len(seen[i]) != 1:
            raise ProbeError(f"the BN layer of layer {k} ran {len(seen[i])} times in one forward; the checks need "
                             "exactly one call per layer")
        if not seen[i][0][0].requires_grad:
            raise ProbeError(f"the input of the BN layer of layer {k} does not require grad (frozen layers before "
                             "it); ∂L/∂y cannot be taken")
    return loss, [seen[i][0][0] for i in range(len(layers))], [seen[i][0][1] for i in range(len(layers))]


def _by_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, m) float64, m = N·(spatial size)."""
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1).to(torch.float64)


def _normalised(y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ŷ (C, m) and σ (C,) in float64 from the BN input, σ = sqrt(biased var + ε) as BN computes it."""
    yc = _by_channel(y)
    centred = yc - yc.mean(dim=1, keepdim=True)
    sigma = torch.sqrt(centred.square().mean(dim=1) + eps)
    return centred / sigma[:, None], sigma


def _gamma(bn: nn.Module, c: int) -> torch.Tensor:
    if bn.weight is None:
        return torch.ones(c, dtype=torch.float64)
    return bn.weight.detach().to(device="cpu", dtype=torch.float64)


def _rel(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|a − b| / scale; 0 where a = b (also 0/0), inf where scale = 0 but a ≠ b."""
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = diff / scale
    return np.where(diff == 0, 0.0, np.where(scale > 0, out, np.inf))


def theorem41_sides(y: torch.Tensor, g_y: torch.Tensor, g_z: torch.Tensor, gamma: torch.Tensor,
                    eps: float) -> dict[str, np.ndarray]:
    """Both sides of Theorem 4.1 per channel, in float64, from one BN layer's captured tensors.

    Args:
        y: BN input (N, C) or (N, C, H, W); g_y = ∂L/∂y and g_z = ∂L/∂z of the same shape.
        gamma: (C,) BN scale γ.
        eps: the BN's ε (folded into σ).
    Returns:
        Arrays of shape (C,): m, sigma, gamma, lhs = ‖g_y‖², rhs (paper, 1/m), rhs_exact (ε-exact), rel_gap and
        rel_gap_exact = |lhs − rhs| / ((γ²/σ²)‖g_z‖²) (relative to the right side's leading term, so float noise
        is not inflated where the subtractions cancel; 0 when both sides are 0), reduction = ‖g_y‖²/‖g_z‖²
        (NaN where g_z = 0), eps_ratio = ε/σ².
    """
    if not (y.shape == g_y.shape == g_z.shape) or y.dim() < 2:
        raise ProbeError(f"y, g_y, g_z must share one (N, C, ...) shape, got {tuple(y.shape)}, {tuple(g_y.shape)}, "
                         f"{tuple(g_z.shape)}")
    y_hat, sigma = _normalised(y, eps)
    gy, gz = _by_channel(g_y), _by_channel(g_z)
    m = y_hat.shape[1]
    g = gamma.detach().to(device=y_hat.device, dtype=torch.float64).reshape(-1)
    scale = g.square() / sigma.square()
    gz_sq = gz.square().sum(dim=1)
    s_one = gz.sum(dim=1)
    s_hat = (gz * y_hat).sum(dim=1)
    lhs = gy.square().sum(dim=1)
    rhs = scale * (gz_sq - s_one.square() / m - s_hat.square() / m)
    # ‖Pg_z‖² = ‖g_z‖² − ⟨1,g_z⟩²/m − (2 − ‖ŷ‖²/m)⟨g_z,ŷ⟩²/m: P² ≠ P when ‖ŷ‖² = m(1 − ε/σ²) < m.
    rhs_exact = scale * (gz_sq - s_one.square() / m - (2 - y_hat.square().sum(dim=1) / m) * s_hat.square() / m)
    lead = (scale * gz_sq).cpu().numpy()
    lhs_n, rhs_n, exact_n, gz_n = (t.cpu().numpy() for t in (lhs, rhs, rhs_exact, gz_sq))
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = np.where(gz_n > 0, lhs_n / gz_n, np.nan)
    return {
        "m": np.full(len(lhs_n), m),
        "sigma": sigma.cpu().numpy(),
        "gamma": g.cpu().numpy(),
        "lhs": lhs_n,
        "rhs": rhs_n,
        "rhs_exact": exact_n,
        "rel_gap": _rel(lhs_n, rhs_n, lead),
        "rel_gap_exact": _rel(lhs_n, exact_n, lead),
        "reduction": reduction,
        "eps_ratio": (eps / sigma.square()).cpu().numpy(),
    }


def _rows(layer: int, sides: Mapping[str, np.ndarray], channels: Sequence[int]) -> list[dict]:
    return [{"layer": int(layer), "channel": int(c)} | {k: (int(v[i]) if k == "m" else float(v[i]))
                                                         for k, v in sides.items()}
            for i, c in enumerate(channels)]


def theorem41_check(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    layers: Iterable[int] | None = None, before_forward: Callable[[], object] | None = None,
                    generators: Iterable[torch.Generator] = ()) -> list[dict]:
    """Theorem 4.1 on every channel of the model's BN layers, from ONE forward/backward on the batch.

    Runs in fp32 with TF32 off, BN in train mode, and leaves the model bit-identical; the sides are then
    computed in float64 from the captured fp32 tensors (see `theorem41_sides`).

    Args:
        model, loss_fn, x, y: the network (BN in train mode), loss_fn(model, x, y) -> 0-d tensor, the batch.
        layers: layer numbers to check (see `bn_layers`; None: every BN layer).
        before_forward: called before the forward (noise-generator reset for noisy BN).
        generators: generators to save and restore besides the global ones.
    Returns:
        Rows (layer, channel, m, sigma, gamma, lhs, rhs, rhs_exact, rel_gap, rel_gap_exact, reduction,
        eps_ratio), one per channel; [] when the model has no BN layer (standard, ℓp variants).
    """
    found = bn_layers(model, layers)
    if not found:
        return []
    _check_batch_stats(found)
    with probe_session(model, generators) as snap:
        loss, ys, zs = _capture(model, loss_fn, x, y, snap, found, before_forward)
        grads = torch.autograd.grad(loss, [*ys, *zs], allow_unused=True, materialize_grads=True)
    rows = []
    for i, (k, bn) in enumerate(found):
        c = ys[i].shape[1]
        sides = theorem41_sides(ys[i], grads[i], grads[len(found) + i], _gamma(bn, c), bn.eps)
        rows += _rows(k, sides, range(c))
    return rows


def _hvp_at(grad: torch.Tensor, wrt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H·v on one retained graph: grad = ∂L/∂wrt built with create_graph=True."""
    if not grad.requires_grad:  # ∂L/∂wrt does not depend on wrt: that Hessian block is 0
        return torch.zeros_like(v)
    (out,) = torch.autograd.grad(grad, wrt, grad_outputs=v, retain_graph=True, allow_unused=True,
                                 materialize_grads=True)
    return out.detach()


def _as_channels(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C, m) float64 -> like's shape and dtype (inverse of `_by_channel`)."""
    moved = (like.shape[1], like.shape[0], *like.shape[2:])
    return t.reshape(moved).transpose(0, 1).to(dtype=like.dtype, device=like.device).contiguous()


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a.to(torch.float64) * b.to(torch.float64)))


def _theorem42_target(y_t, z_t, gy_t, gz_t, y_hat, sigma, gamma, mask) -> dict[str, float]:
    """Theorem 4.2 quantities for the direction v = g_y restricted to the channels in `mask` (C,) bool."""
    m = y_hat.shape[1]
    gy, gz = _by_channel(gy_t), _by_channel(gz_t)
    keep = mask.to(torch.float64)[:, None]
    v = gy * keep
    a = (y_hat * v).sum(dim=1) / m
    pv = v - v.mean(dim=1, keepdim=True) - y_hat * a[:, None]
    s_hat = (gz * y_hat).sum(dim=1)
    k = (gamma / sigma)[:, None]
    lhs = _dot(_as_channels(v, y_t), _hvp_at(gy_t, y_t, _as_channels(v, y_t)))

    def quad_z(w: torch.Tensor) -> float:
        w_t = _as_channels(w, z_t)
        return _dot(w_t, _hvp_at(gz_t, z_t, w_t))

    quad_paper = quad_z(k * v)  # (γ²/σ²)·g_yᵀH_zz g_y, scaled per channel
    quad_exact = quad_z(k * pv)  # (Jv)ᵀH_zz(Jv)
    quad_grad = quad_z(k * gz * keep)  # (γ²/σ²)·g_zᵀH_zz g_z
    corr_paper = float(((gamma / (m * sigma.square())) * s_hat * v.square().sum(dim=1)).sum())
    corr_exact = float(((gamma / sigma.square()) * (2 * a * (gz * pv).sum(dim=1)
                                                    + s_hat * (pv * v).sum(dim=1) / m)).sum())
    rhs, rhs_exact, rhs_assumed = quad_paper - corr_paper, quad_exact - corr_exact, quad_grad - corr_paper
    scale = np.array(abs(quad_paper) + abs(corr_paper))
    return {
        "lhs": lhs, "quad_z": quad_paper, "curv_term": corr_paper, "rhs": rhs, "margin": rhs - lhs,
        "rel_gap": float(_rel(np.array(lhs), np.array(rhs), scale)),
        "rhs_exact": rhs_exact, "rel_gap_exact": float(_rel(np.array(lhs), np.array(rhs_exact), scale)),
        "quad_z_grad": quad_grad, "rhs_assumed": rhs_assumed, "margin_assumed": rhs_assumed - lhs,
    }


def theorem42_check(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    layers: Iterable[int] | None = None, channels: Mapping[int, Sequence[int]] | None = None,
                    whole_layer: bool = True, before_forward: Callable[[], object] | None = None,
                    generators: Iterable[torch.Generator] = ()) -> list[dict]:
    """Theorem 4.2 (second order, diagonal block) with Hessian-vector products w.r.t. BN input and output.

    One forward and one create_graph backward, then per checked channel (and per whole layer) 1 HVP w.r.t. y and
    3 w.r.t. z, each one backward through the retained double graph: pass a few `channels` per layer on big nets.
    fp32 with TF32 off, BN in train mode, model left bit-identical; scalars accumulate in float64.

    Args:
        model, loss_fn, x, y: the network (BN in train mode), loss_fn(model, x, y) -> 0-d tensor, the batch.
        layers: layer numbers (see `bn_layers`; None: every BN layer, or the keys of `channels` when given).
        channels: layer -> channel indices to check one by one (None: every channel of each layer).
        whole_layer: also add a row with channel = −1 for v = g_y on the whole layer.
        before_forward, generators: as in `theorem41_check`.
    Returns:
        Rows (layer, channel, m, lhs, quad_z, curv_term, rhs, margin, rel_gap, rhs_exact, rel_gap_exact,
        quad_z_grad, rhs_assumed, margin_assumed): lhs = g_yᵀH_yy g_y; quad_z = (γ²/σ²)g_yᵀH_zz g_y;
        curv_term = (γ/(mσ²))⟨g_z, ŷ⟩‖g_y‖²; rhs = quad_z − curv_term (Theorem 4.2 a, margin = rhs − lhs);
        rhs_exact the ε-exact identity; rel_gap(_exact) = |lhs − rhs(_exact)| / (|quad_z| + |curv_term|);
        quad_z_grad = (γ²/σ²)g_zᵀH_zz g_z and rhs_assumed = quad_z_grad − curv_term (Theorem 4.2 b).
        [] when the model has no BN layer.
    """
    if layers is None and channels is not None:
        layers = list(channels)
    found = bn_layers(model, layers)
    if not found:
        return []
    _check_batch_stats(found)
    rows = []
    with probe_session(model, generators) as snap:
        loss, ys, zs = _capture(model, loss_fn, x, y, snap, found, before_forward)
        grads = torch.autograd.grad(loss, [*ys, *zs], create_graph=True, allow_unused=True, materialize_grads=True)
        for i, (k, bn) in enumerate(found):
            y_t, z_t, gy_t, gz_t = ys[i], zs[i], grads[i], grads[len(found) + i]
            c = y_t.shape[1]
            y_hat, sigma = _normalised(y_t, bn.eps)
            gamma = _gamma(bn, c).to(y_hat.device)
            chosen = list(range(c)) if channels is None or k not in channels else [int(j) for j in channels[k]]
            bad = [j for j in chosen if not 0 <= j < c]
            if bad:
                raise ProbeError(f"channels[{k}]: {bad} out of range for a layer with {c} channels")
            targets = [(j, torch.arange(c) == j) for j in chosen]
            if whole_layer:
                targets.append((-1, torch.ones(c, dtype=torch.bool)))
            for j, mask in targets:
                out = _theorem42_target(y_t, z_t, gy_t, gz_t, y_hat, sigma, gamma, mask.to(y_hat.device))
                rows.append({"layer": int(k), "channel": int(j), "m": int(y_hat.shape[1])} | out)
        del grads, ys, zs, loss  # free the double graph inside the session
    return rows

"""Internal covariate shift as the change in a layer's gradient (paper Definition 2.1, Fig 3; PROTOCOL §4).

At step t with batch (x_t, y_t):
  G_k  = ∇_{W_k} L(θ_t)                                   the gradient step t uses for layer k;
  G'_k = ∇_{W_k} L(θ_t with every parameter preceding W_k replaced by its step-t SGD update p − lr·∇_p L(θ_t)).
W_k = weight and bias of the k-th conv/linear layer (norm γ/β excluded). "Preceding" is decided by the caller's
`preceding_params`; `preceding_params_in_blocks` gives bnflow's default: every trainable parameter of the blocks
before k, i.e. earlier conv/linear weights and biases AND earlier norm γ/β, since all of them move in step t and
shift layer k's input distribution. Reported: ‖G − G'‖₂, ‖G − G'‖₂/‖G‖₂ and cos(G, G').
The update is plain SGD (momentum 0, weight decay 0; PROTOCOL §2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bnflow.probes.state import (
    LossFn,
    ProbeError,
    global_norm,
    probe_pass,
    probe_session,
    resolve_params,
)


@dataclass(frozen=True)
class IcsResult:
    """ICS of one layer at one step (Definition 2.1).

    Attributes:
        layer: 1-based layer index k.
        l2: ‖G − G'‖₂.
        rel: l2 / ‖G‖₂; 0 when l2 = 0 (also if G = 0), inf when G = 0 but G' ≠ 0.
        cos: cos(G, G') clamped to [−1, 1]; exactly 1 when G = G' (also G = G' = 0: no shift); NaN when
            exactly one of them is 0 (direction undefined).
        grad_norm: ‖G‖₂.
        shifted_grad_norm: ‖G'‖₂.
    """

    layer: int
    l2: float
    rel: float
    cos: float
    grad_norm: float
    shifted_grad_norm: float

    def to_row(self, step: int) -> dict:
        """Tidy row (step, layer, l2, rel, cos, grad_norm, shifted_grad_norm)."""
        return {"step": int(step), **self.__dict__}


def ics_rows(results: Iterable[IcsResult], step: int) -> list[dict]:
    """Tidy rows for all layers of one probe."""
    return [r.to_row(step) for r in results]


def gradient_shift(g: Sequence[torch.Tensor], g_shift: Sequence[torch.Tensor]) -> torch.Tensor:
    """(l2, rel, cos, ‖G‖, ‖G'‖) of two aligned lists of tensors, as a float64 (5,) tensor (0/0: IcsResult).

    Args:
        g: G, tensors of any shapes (treated as one concatenated vector).
        g_shift: G', same shapes as `g`.
    """
    if len(g) != len(g_shift) or any(a.shape != b.shape for a, b in zip(g, g_shift)):
        raise ProbeError("gradient_shift: G and G' must be lists of tensors with the same shapes")
    a = [t.to(torch.float64).flatten() for t in g]
    b = [t.to(torch.float64).flatten() for t in g_shift]
    norm_a, norm_b = global_norm(a), global_norm(b)
    l2 = global_norm([x - y for x, y in zip(a, b)])
    dot = sum((torch.dot(x, y) for x, y in zip(a, b)), torch.zeros((), dtype=torch.float64, device=norm_a.device))
    zero, one = torch.zeros_like(l2), torch.ones_like(l2)
    rel = torch.where(l2 == 0, zero, l2 / norm_a)  # l2 > 0 = ‖G‖ gives inf
    cos = torch.where(
        l2 == 0,  # G = G' (also both 0): no shift, even where rounding would give 1 - 1 ulp
        one,
        torch.where((norm_a == 0) | (norm_b == 0), torch.full_like(l2, float("nan")), dot / (norm_a * norm_b)),
    )
    # Rounding can push |cos| a few ulps past 1 for nearly parallel gradients.
    cos = torch.where(torch.isnan(cos), cos, cos.clamp(-1.0, 1.0))
    return torch.stack([l2, rel, cos, norm_a, norm_b])


def preceding_params_in_blocks(model: nn.Module, *, include_norm: bool = True) -> Callable[[int], list[nn.Parameter]]:
    """bnflow's default `preceding_params`: parameters of the blocks before layer k, in forward order.

    Args:
        model: exposes `blocks` (nn.ModuleList, block k-1 holds layer #k) and `layer_params(k)`.
        include_norm: True: every trainable parameter of blocks 1..k-1 (conv/linear weight+bias and norm γ/β);
            False: only layer_params(1..k-1) (weights and biases).
    """
    n_blocks = len(model.blocks)

    def preceding(k: int) -> list[nn.Parameter]:
        if not (isinstance(k, int) and 1 <= k <= n_blocks):
            raise ProbeError(f"layers: layer index must be an int in 1..{n_blocks}, got {k!r}")
        if include_norm:
            return [p for block in model.blocks[: k - 1] for p in block.parameters() if p.requires_grad]
        return [p for j in range(1, k) for p in model.layer_params(j)]

    return preceding


def ics_probe(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    layers: Iterable[int],
    layer_params: Callable[[int], Sequence[nn.Parameter]],
    preceding_params: Callable[[int], Sequence[nn.Parameter]],
    grads: Mapping[nn.Parameter, torch.Tensor] | None = None,
    before_forward: Callable[[], object] | None = None,
    generators: Iterable[torch.Generator] = (),
) -> list[IcsResult]:
    """ICS (Definition 2.1) of each layer in `layers` at the current weights, on the batch (x, y).

    Costs one forward+backward for the gradients at θ_t (none when `grads` is given) plus one per layer with a
    non-empty preceding set; a layer with nothing before it has G' = G exactly (l2 = 0, cos = 1) and no pass.
    Runs in fp32 (autocast and TF32 off) and restores the model bit-identically afterwards.

    Args:
        model: the network, left in its current mode (train mode: BN uses batch statistics).
        loss_fn: loss_fn(model, x, y) -> 0-d tensor, the training loss.
        x, y: step t's mini-batch.
        lr: the SGD learning rate of step t.
        layers: 1-based layer indices k.
        layer_params: k -> W_k (weight, bias) of layer k.
        preceding_params: k -> the parameters before layer k that take their step-t update
            (see `preceding_params_in_blocks`).
        grads: optional {parameter: ∇_p L(θ_t)} covering every parameter in layer_params(k) and
            preceding_params(k) for all k, e.g. the training step's own gradients (fp32, no TF32, same noise:
            G is compared with G' computed in fp32, so a precision mismatch would read as ICS).
        before_forward: called before every forward pass (e.g. reset the noise generator to the step's state).
        generators: generators to save and restore besides the global ones.
    """
    layers = list(layers)
    if not layers or len(set(layers)) != len(layers) or not all(isinstance(k, int) and k >= 1 for k in layers):
        raise ProbeError(f"layers must be distinct 1-based ints, got {layers!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ProbeError(f"lr must be a positive number, got {lr!r}")
    own = {k: resolve_params(model, layer_params(k), f"layer_params({k})") for k in layers}
    before = {}
    for k in layers:
        pre = list(preceding_params(k))
        before[k] = resolve_params(model, pre, f"preceding_params({k})") if pre else []
        if {id(p) for p in before[k]} & {id(p) for p in own[k]}:
            raise ProbeError(f"preceding_params({k}) overlaps layer_params({k}): W_k itself must stay at θ_t")
    needed = list({id(p): p for k in layers for p in (*own[k], *before[k])}.values())

    with probe_session(model, generators) as snap:
        if grads is None:
            _, g_all = probe_pass(model, loss_fn, x, y, snap, needed, before_forward)
            grad_of = {id(p): g for p, g in zip(needed, g_all)}
        else:
            by_id = {id(p): g for p, g in grads.items()}
            missing = [tuple(p.shape) for p in needed if id(p) not in by_id]
            if missing:
                raise ProbeError(f"grads lacks gradients for parameters of shapes {missing}; pass them or grads=None")
            grad_of = {}
            for p in needed:
                g = by_id[id(p)]
                if g.shape != p.shape:
                    raise ProbeError(f"grads: gradient of shape {tuple(g.shape)} for a parameter of {tuple(p.shape)}")
                grad_of[id(p)] = g.detach().to(device=p.device, dtype=p.dtype)
        shifts = []
        for k in layers:
            g_k = [grad_of[id(p)] for p in own[k]]
            if not before[k]:
                shifts.append(gradient_shift(g_k, g_k))
                continue
            with torch.no_grad():
                for p in before[k]:
                    # The step-t SGD update as the optimizer applies it (one fused op), from the saved θ_t.
                    torch.add(snap.value_of(p), grad_of[id(p)], alpha=-lr, out=p.data)
            _, g_shift = probe_pass(model, loss_fn, x, y, snap, own[k], before_forward)
            with torch.no_grad():
                for p in before[k]:
                    p.copy_(snap.value_of(p))
            shifts.append(gradient_shift(g_k, g_shift))
        values = torch.stack(shifts).cpu().tolist()
    return [
        IcsResult(layer=k, l2=v[0], rel=v[1], cos=v[2], grad_norm=v[3], shifted_grad_norm=v[4])
        for k, v in zip(layers, values)
    ]

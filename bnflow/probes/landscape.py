"""Loss-landscape probes along the gradient direction (paper §3.2, Figs 4, 10-13; PROTOCOL §5).

At a probed step with weights θ, the step's own mini-batch B and g = ∇L_B(θ), for each step size η:
  loss band              L_B(θ − ηg)
  gradient change        ‖∇L_B(θ − ηg) − g‖₂
  β-smoothness ratio     ‖∇L_B(θ − ηg) − g‖₂ / ‖ηg‖₂, and β_eff = max over η.
Everything is measured on the SAME batch B and from the SAME point θ; never as a spread across runs with
different learning rates, nor as the change between consecutive steps' gradients on different batches (both are
common mistakes, PROTOCOL §5). BN stays in whatever mode the model is in (train mode: batch statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
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


@dataclass(frozen=True, eq=False)
class LandscapeResult:
    """One landscape probe. Arrays are float64 and aligned with `etas`.

    Attributes:
        etas: absolute step sizes η (same units as the learning rate).
        loss0: L_B(θ).
        grad_norm: ‖g‖₂ over the probed parameters.
        loss: L_B(θ − ηg) per η.
        grad_change: ‖∇L_B(θ − ηg) − g‖₂ per η.
        ratio: grad_change / ‖ηg‖₂ per η; NaN where ‖ηg‖₂ = 0.
        beta_eff: max of `ratio` over η; NaN if any ratio is NaN (g = 0, or a non-finite loss/gradient at some
            η, e.g. divergence at the largest step), so a blown-up probe is never silently reported as smooth.
    """

    etas: np.ndarray
    loss0: float
    grad_norm: float
    loss: np.ndarray
    grad_change: np.ndarray
    ratio: np.ndarray
    beta_eff: float

    def to_rows(self, step: int) -> list[dict]:
        """Tidy rows (step, eta, loss, grad_change, ratio), one per η."""
        return [
            {
                "step": int(step),
                "eta": float(eta),
                "loss": float(loss),
                "grad_change": float(change),
                "ratio": float(ratio),
            }
            for eta, loss, change, ratio in zip(self.etas, self.loss, self.grad_change, self.ratio)
        ]

    def summary_row(self, step: int) -> dict:
        """One row per probe: the [min, max] bands over η of Figs 4a/4b and β_eff of Fig 4c (+ loss0, grad_norm).

        Min/max propagate NaN, as beta_eff does.
        """
        return {
            "step": int(step),
            "loss0": self.loss0,
            "grad_norm": self.grad_norm,
            "loss_min": float(np.min(self.loss)),
            "loss_max": float(np.max(self.loss)),
            "grad_change_min": float(np.min(self.grad_change)),
            "grad_change_max": float(np.max(self.grad_change)),
            "beta_eff": self.beta_eff,
        }


def _check_etas(etas: Iterable[float]) -> list[float]:
    out = [float(e) for e in etas]
    if not out:
        raise ProbeError("etas is empty: give at least one step size (e.g. [0.5, 1, 2, 4] x lr)")
    bad = [e for e in out if not (math.isfinite(e) and e > 0)]
    if bad:
        raise ProbeError(f"etas must be finite and > 0 (absolute step sizes), got {bad}")
    return out


def _check_grad(grad: Sequence[torch.Tensor], params: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    grad = list(grad)
    if len(grad) != len(params):
        raise ProbeError(f"{what} has {len(grad)} tensors but {len(params)} parameters are probed; align them")
    for i, (g, p) in enumerate(zip(grad, params)):
        if not isinstance(g, torch.Tensor) or g.shape != p.shape:
            raise ProbeError(
                f"{what}[{i}] must be a tensor of shape {tuple(p.shape)} (the parameter's), "
                f"got {getattr(g, 'shape', type(g).__name__)}"
            )
    return [g.detach().to(device=p.device, dtype=p.dtype) for g, p in zip(grad, params)]


def landscape_probe(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    etas: Iterable[float],
    params: Iterable[nn.Parameter] | None = None,
    grad: Sequence[torch.Tensor] | None = None,
    before_forward: Callable[[], object] | None = None,
    generators: Iterable[torch.Generator] = (),
    direction: Sequence[torch.Tensor] | None = None,
) -> LandscapeResult:
    """Loss band, gradient predictiveness and effective β-smoothness at the current weights (paper §3.2).

    Costs one forward+backward per η, plus one forward+backward for g (one forward only when `grad` is given).
    Runs in fp32 (autocast and TF32 off) and restores the model bit-identically afterwards.

    Args:
        model: the network, left in its current mode (train mode: BN uses batch statistics, as in training).
        loss_fn: loss_fn(model, x, y) -> 0-d tensor, the training loss (mean cross-entropy; ½·Σ‖·‖² for DLN).
        x, y: the probed step's own mini-batch B.
        etas: absolute step sizes η > 0 (e.g. {0.5, 1, 2, 4} × lr for VGG).
        params: parameters the probe moves and differentiates (default: all with requires_grad).
        grad: g, aligned with `params`, e.g. the training step's own gradient, to save a backward pass. It must
            be computed in fp32 without TF32 on the same batch and noise: g is subtracted from gradients the probe
            computes in fp32, so any precision mismatch shows up as gradient change.
        before_forward: called before every forward pass (e.g. to reset the noise generator to the step's state).
        generators: generators to save and restore besides the global ones (e.g. the noise generator).
        direction: d, aligned with `params`, to move along instead of g (the paper's random directions, §3.2):
            the probe measures L_B(θ − ηd) and ‖∇L_B(θ − ηd) − g‖₂ / ‖ηd‖₂. Default: d = g.
    """
    etas = _check_etas(etas)
    params = resolve_params(model, params)
    with probe_session(model, generators) as snap:
        if grad is None:
            loss0, g = probe_pass(model, loss_fn, x, y, snap, params, before_forward)
        else:
            g = _check_grad(grad, params, "grad")
            loss0, _ = probe_pass(model, loss_fn, x, y, snap, [], before_forward)
        g_norm = global_norm(g)
        d = g if direction is None else _check_grad(direction, params, "direction")
        d_norm = g_norm if direction is None else global_norm(d)
        theta = [snap.value_of(p) for p in params]
        losses, changes = [], []
        for eta in etas:
            with torch.no_grad():
                for p, t, gi in zip(params, theta, d):
                    # Computed from the saved θ every time, as one fused op like SGD's update, so step sizes do
                    # not accumulate rounding.
                    torch.add(t, gi, alpha=-eta, out=p.data)
            loss, g_eta = probe_pass(model, loss_fn, x, y, snap, params, before_forward)
            losses.append(loss.to(torch.float64))
            changes.append(global_norm([a - b for a, b in zip(g_eta, g)]))
        values = torch.stack([loss0.to(torch.float64), g_norm, d_norm, *losses, *changes]).cpu().numpy()
    n = len(etas)
    etas_arr = np.asarray(etas, dtype=np.float64)
    loss0_v, g_norm_v, d_norm_v = float(values[0]), float(values[1]), float(values[2])
    loss_arr, change_arr = values[3 : 3 + n], values[3 + n :]
    step_norm = etas_arr * d_norm_v
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(step_norm > 0, change_arr / np.where(step_norm > 0, step_norm, 1.0), np.nan)
    return LandscapeResult(
        etas=etas_arr,
        loss0=loss0_v,
        grad_norm=g_norm_v,
        loss=loss_arr,
        grad_change=change_arr,
        ratio=ratio,
        beta_eff=float(np.max(ratio)),
    )

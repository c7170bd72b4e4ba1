"""Exact snapshots of a model's training state, and the fp32 setting probes run in (PROTOCOL §4, §5).

A probe moves the weights, runs extra forward passes (which update BN running statistics and draw noise) and
computes gradients. Training must continue bit-identically afterwards, so everything a later step can see is
copied before and written back after: parameters, buffers, `.grad` tensors, requires_grad flags, train/eval
modes and generator states. Tensors are restored in place into the original objects, so optimizers, CUDA graphs
and anything else holding references keep working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bnflow.errors import BnflowError


class ProbeError(BnflowError):
    """A probe was called with arguments that do not fit the model (the message names the argument)."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Copies of a model's state, taken by `snapshot` and written back by `restore`.

    Slots are (owning module, attribute name, original tensor object); values map id(original) to a detached
    clone, so tied tensors are copied once.
    """

    root: nn.Module
    param_slots: tuple[tuple[nn.Module, str, nn.Parameter], ...]
    buffer_slots: tuple[tuple[nn.Module, str, torch.Tensor], ...]
    values: dict[int, torch.Tensor]
    grads: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]]
    requires_grad: dict[int, bool]
    modes: tuple[tuple[nn.Module, bool], ...]
    generators: tuple[tuple[torch.Generator, torch.Tensor], ...]

    def value_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The saved value of a parameter or buffer of the snapshotted model (do not modify it)."""
        return self.values[id(tensor)]


def _default_generators() -> list[torch.Generator]:
    # The global generators are protected too, in case a module draws from them (e.g. dropout): restoring them
    # to the exact state they had is invisible to the rest of the program.
    gens = [torch.default_generator]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gens += [torch.cuda.default_generators[i] for i in range(torch.cuda.device_count())]
    return gens


def snapshot(model: nn.Module, generators: Iterable[torch.Generator] = ()) -> Snapshot:
    """Copy every parameter, buffer, gradient, requires_grad flag, module mode and generator state of `model`.

    Args:
        model: the network; all submodules are included.
        generators: torch.Generators whose states are saved as well (e.g. the noise generator); the default CPU
            generator and initialised CUDA default generators are always included.
    """
    param_slots, buffer_slots = [], []
    values: dict[int, torch.Tensor] = {}
    grads: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    requires_grad: dict[int, bool] = {}
    with torch.no_grad():
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is None:
                    continue
                param_slots.append((module, name, p))
                if id(p) not in values:
                    values[id(p)] = p.detach().clone()
                    grads[id(p)] = (p.grad, None if p.grad is None else p.grad.detach().clone())
                    requires_grad[id(p)] = p.requires_grad
            for name, b in module._buffers.items():
                if b is None:
                    continue
                buffer_slots.append((module, name, b))
                if id(b) not in values:
                    values[id(b)] = b.detach().clone()
    gens: list[torch.Generator] = []
    for g in [*generators, *_default_generators()]:
        if not isinstance(g, torch.Generator):
            raise ProbeError(f"generators must hold torch.Generator objects, got {type(g).__name__}")
        if all(g is not h for h in gens):
            gens.append(g)
    return Snapshot(
        root=model,
        param_slots=tuple(param_slots),
        buffer_slots=tuple(buffer_slots),
        values=values,
        grads=grads,
        requires_grad=requires_grad,
        modes=tuple((m, m.training) for m in model.modules()),
        generators=tuple((g, g.get_state()) for g in gens),
    )


def _check_owner(model: nn.Module, snap: Snapshot) -> None:
    if snap.root is not model:
        raise ProbeError("restore(model, snap): snap was taken from a different model; pass the snapshotted model")


def restore_forward_state(model: nn.Module, snap: Snapshot) -> None:
    """Write back buffers and generator states only (used before every probe pass, so each pass starts alike)."""
    _check_owner(model, snap)
    with torch.no_grad():
        for module, name, b in snap.buffer_slots:
            module._buffers[name] = b
            b.copy_(snap.values[id(b)])
    for g, state in snap.generators:
        g.set_state(state)


def restore(model: nn.Module, snap: Snapshot) -> None:
    """Write `snap` back into `model` in place: parameters, buffers, grads, flags, modes and generator states."""
    _check_owner(model, snap)
    with torch.no_grad():
        for module, name, p in snap.param_slots:
            module._parameters[name] = p
            p.copy_(snap.values[id(p)])
        for _, _, p in snap.param_slots:
            grad, value = snap.grads[id(p)]
            if grad is None:
                p.grad = None
            else:
                if p.grad is not grad:  # put the original object back: optimizers may hold it
                    p.grad = grad
                grad.copy_(value)
            p.requires_grad_(snap.requires_grad[id(p)])
    for module, training in snap.modes:
        module.training = training
    restore_forward_state(model, snap)


@contextlib.contextmanager
def preserved(model: nn.Module, generators: Iterable[torch.Generator] = ()) -> Iterator[Snapshot]:
    """Snapshot `model` (and `generators`) on entry and restore on exit, also when the body raises."""
    snap = snapshot(model, generators)
    try:
        yield snap
    finally:
        restore(model, snap)


@contextlib.contextmanager
def fp32_exact(device_types: Iterable[str] = ("cpu",)) -> Iterator[None]:
    """Disable TF32 (cuBLAS matmul and cuDNN) and autocast inside the block; restore the settings after.

    Gradient differences are fragile: TF32/bf16 errors are of the size of the effects measured (PERFORMANCE.md).
    Torch >= 2.9 has two APIs for these flags and raises when the legacy getters see a mix, so each flag is
    saved and restored through the API its current state was set with.

    Args:
        device_types: autocast device types to disable ("cpu", "cuda").
    """
    b = torch.backends
    matmul = b.cuda.matmul
    with contextlib.ExitStack() as stack:
        try:
            # fp32_precision exists from torch 2.9; before that the legacy flags are the only API.
            old_mm, old_mm_new = torch.get_float32_matmul_precision(), getattr(matmul, "fp32_precision", None)
            torch.set_float32_matmul_precision("highest")

            def _restore_mm() -> None:
                torch.set_float32_matmul_precision(old_mm)
                # The legacy setter writes "ieee" where the new API said "none" (same effect): put "none" back.
                if old_mm_new is not None and matmul.fp32_precision != old_mm_new:
                    matmul.fp32_precision = old_mm_new

            stack.callback(_restore_mm)
        except RuntimeError:  # the new API was used: the legacy getter refuses to answer
            old_mm_new = matmul.fp32_precision
            matmul.fp32_precision = "ieee"
            stack.callback(setattr, matmul, "fp32_precision", old_mm_new)
        try:
            old_cudnn = b.cudnn.allow_tf32
            b.cudnn.allow_tf32 = False
            stack.callback(setattr, b.cudnn, "allow_tf32", old_cudnn)
        except RuntimeError:
            conv, rnn = b.cudnn.conv, b.cudnn.rnn
            old_conv, old_rnn = conv.fp32_precision, rnn.fp32_precision
            conv.fp32_precision = rnn.fp32_precision = "ieee"
            stack.callback(setattr, rnn, "fp32_precision", old_rnn)
            stack.callback(setattr, conv, "fp32_precision", old_conv)
        for device_type in dict.fromkeys(device_types):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


@contextlib.contextmanager
def probe_session(model: nn.Module, generators: Iterable[torch.Generator] = ()) -> Iterator[Snapshot]:
    """`preserved` + `fp32_exact` + grad mode on: the environment every probe runs in."""
    device_types = {"cpu"} | {p.device.type for p in model.parameters()}
    for p in model.parameters():
        if p.dtype not in (torch.float32, torch.float64):
            raise ProbeError(
                f"probes compute in float32 (or float64), but the model has a {p.dtype} parameter of shape "
                f"{tuple(p.shape)}; keep master weights in float32 and use autocast for lower precision"
            )
    with preserved(model, generators) as snap, fp32_exact(sorted(device_types)), torch.enable_grad():
        yield snap


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def probe_pass(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    snap: Snapshot,
    wrt: Sequence[torch.Tensor],
    before_forward: Callable[[], object] | None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One probe forward (+ backward when `wrt` is non-empty) at the model's current weights.

    Buffers and generators are first reset to the snapshot, then `before_forward()` runs, so every pass sees the
    same BN statistics state and the same noise. Gradients come from torch.autograd.grad and never touch `.grad`.

    Returns:
        (loss as a detached 0-d tensor, list of gradients matching `wrt`).
    """
    restore_forward_state(model, snap)
    if before_forward is not None:
        before_forward()
    with torch.set_grad_enabled(len(wrt) > 0):
        loss = loss_fn(model, x, y)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ProbeError(f"loss_fn must return a 0-d tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    # A parameter the loss does not depend on (e.g. a frozen head) has gradient 0, not an error.
    grads = list(torch.autograd.grad(loss, list(wrt), allow_unused=True, materialize_grads=True)) if wrt else []
    return loss.detach(), [g.detach() for g in grads]


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """ℓ2 norm of the concatenation of `tensors`, accumulated in float64 (0-d tensor, no host sync)."""
    parts = [torch.linalg.vector_norm(t.to(torch.float64)) for t in tensors]
    if not parts:
        return torch.zeros((), dtype=torch.float64)
    return torch.linalg.vector_norm(torch.stack(parts))


def resolve_params(model: nn.Module, params: Iterable[torch.Tensor] | None, what: str = "params") -> list[nn.Parameter]:
    """The parameters a probe moves: `params` checked against `model`, or all trainable ones when None."""
    if params is None:
        out = [p for p in model.parameters() if p.requires_grad]
    else:
        out = list(params)
    owned = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    for p in out:
        if id(p) not in owned:
            raise ProbeError(f"{what}: a tensor of shape {tuple(p.shape)} is not a parameter of the model")
        if id(p) in seen:
            raise ProbeError(f"{what}: a parameter of shape {tuple(p.shape)} is listed twice")
        if not p.requires_grad:
            raise ProbeError(f"{what}: a parameter of shape {tuple(p.shape)} has requires_grad=False")
        seen.add(id(p))
    if not out:
        raise ProbeError(f"{what} is empty: give at least one trainable parameter")
    return out

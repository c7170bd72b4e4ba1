"""Activation distributions per layer (paper Figs 1c, 2, 6, 8, 9; PROTOCOL §1).

Activations are read with forward hooks on `model.blocks` (block k-1 = Sequential(conv/linear, norm, [relu],
[pool]) holds layer #k). Two points:
  "pre_relu"  the input of the block's nn.ReLU = the output of the norm (noise included for noisy BN); in a block
              without ReLU (DLN), the output of its last non-pooling child (the norm, or the layer itself);
  "post_relu" the output of the block's nn.ReLU.
Values are cloned when the hook fires, so an in-place ReLU cannot overwrite the recorded pre-ReLU values.
Statistics are population statistics (divide by n) over batch × H × W, like BN's batch statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from bnflow.probes.state import ProbeError, probe_session

POINTS = ("pre_relu", "post_relu")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_SKIPPED = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Dropout,
)  # fmt: skip
Units = Mapping[int, Sequence[tuple[int, ...]]] | Sequence[tuple[int, ...]]


def _hook_target(model: nn.Module, k: int, point: str) -> tuple[nn.Module, bool]:
    """(module to hook, True if its input is wanted / False if its output) for layer k at `point`."""
    blocks = model.blocks
    if not (isinstance(k, int) and 1 <= k <= len(blocks)):
        raise ProbeError(f"layers: layer index must be an int in 1..{len(blocks)}, got {k!r}")
    if point not in POINTS:
        raise ProbeError(f"point must be one of {POINTS}, got {point!r}")
    block = blocks[k - 1]
    children = list(block.children()) or [block]
    relus = [m for m in children if isinstance(m, nn.ReLU)]
    if point == "post_relu" and not relus:
        raise ProbeError(f"layer {k} has no nn.ReLU in its block, so it has no post_relu point; use pre_relu")
    if relus:
        target, want_input = relus[0], point == "pre_relu"
    else:
        target, want_input = [m for m in children if not isinstance(m, _SKIPPED)][-1], False
    # A module object shared by several blocks would fire once per block and record the wrong layer.
    owners = sum(any(m is target for m in b.modules()) for b in blocks)
    if owners != 1:
        raise ProbeError(f"layer {k}: the hooked module {type(target).__name__} is shared by {owners} blocks")
    return target, want_input


@contextlib.contextmanager
def recording(model: nn.Module, layers: Iterable[int], point: str = "pre_relu") -> Iterator[dict[int, torch.Tensor]]:
    """Record the activations of the next forward pass inside the block (e.g. the training step's own forward).

    Yields a dict that fills as the forward runs: layer k -> detached clone of its activation, shape (N, C, H, W)
    or (N, C), in the dtype the forward used. Only the first forward pass in the block is kept. Hooks are removed
    on exit. Hooks do not fire inside a replayed CUDA graph: record on an eager step.

    Args:
        model: exposes `blocks`; layer k is block k-1.
        layers: 1-based layer indices.
        point: "pre_relu" or "post_relu" (module docstring).
    """
    acts: dict[int, torch.Tensor] = {}
    targets = {k: _hook_target(model, k, point) for k in dict.fromkeys(layers)}
    handles = []
    try:
        for k, (module, want_input) in targets.items():

            def store(value: torch.Tensor, k: int = k) -> None:
                if k not in acts:
                    acts[k] = value.detach().clone()

            if want_input:
                handles.append(module.register_forward_pre_hook(lambda m, args, store=store: store(args[0])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out, store=store: store(out)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


def record_activations(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layers: Iterable[int],
    point: str = "pre_relu",
    before_forward: Callable[[], object] | None = None,
    generators: Iterable[torch.Generator] = (),
) -> dict[int, torch.Tensor]:
    """One extra fp32 forward of `x` that records activations; the model is restored bit-identically after.

    The model keeps its mode (train mode: BN batch statistics, noise on), so the distributions are those training
    sees; BN running statistics touched by the pass are restored. Returns {layer: activation tensor}.
    """
    layers = list(layers)
    with probe_session(model, generators), torch.no_grad(), recording(model, layers, point) as acts:
        if before_forward is not None:
            before_forward()
        model(x)
    missing = [k for k in layers if k not in acts]
    if missing:
        raise ProbeError(f"layers {missing} were not reached by the forward pass of the model")
    return acts


def channel_stats(acts: Mapping[int, torch.Tensor]) -> list[dict]:
    """Rows (layer, channel, mean, var): per-channel mean and population variance over batch × H × W."""
    rows = []
    for k in sorted(acts):
        a = acts[k].to(torch.float64)
        dims = [0, *range(2, a.dim())]
        stats = torch.stack([a.mean(dims), a.var(dims, correction=0)], dim=1).cpu().numpy()
        rows += [{"layer": k, "channel": c, "mean": float(m), "var": float(v)} for c, (m, v) in enumerate(stats)]
    return rows


def _units_for(units: Units, k: int) -> list[tuple[int, ...]]:
    chosen = units.get(k, []) if isinstance(units, Mapping) else units
    return [tuple(int(i) for i in u) for u in chosen]


def unit_values(acts: Mapping[int, torch.Tensor], units: Units) -> dict[tuple[int, tuple[int, ...]], np.ndarray]:
    """{(layer, unit): float64 values across the batch (N,)} for each unit of each recorded layer.

    Args:
        acts: {layer: activation (N, C, H, W) or (N, C)}.
        units: per layer {k: [(channel, h, w), ...]} ((unit,) for linear layers), or one list for every layer.
    """
    out = {}
    for k in sorted(acts):
        a = acts[k]
        for unit in _units_for(units, k):
            if len(unit) != a.dim() - 1 or any(not 0 <= i < n for i, n in zip(unit, a.shape[1:])):
                raise ProbeError(f"units: {unit} does not index layer {k}'s activation of shape {tuple(a.shape[1:])}")
            out[(k, unit)] = a[(slice(None), *unit)].to(torch.float64).cpu().numpy()
    return out


def _unit_label(unit: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in unit)


def unit_summaries(values: Mapping[tuple[int, tuple[int, ...]], np.ndarray]) -> list[dict]:
    """Rows (layer, unit, channel, q05, q25, q50, q75, q95, mean, std) from `unit_values` (std: population)."""
    rows = []
    for (k, unit), v in values.items():
        qs = np.quantile(v, QUANTILES)
        row = {"layer": k, "unit": _unit_label(unit), "channel": unit[0]}
        row.update({f"q{round(q * 100):02d}": float(x) for q, x in zip(QUANTILES, qs)})
        row.update({"mean": float(np.mean(v)), "std": float(np.std(v))})
        rows.append(row)
    return rows


def unit_histograms(values: Mapping[tuple[int, tuple[int, ...]], np.ndarray], bins: Sequence[float]) -> list[dict]:
    """Fixed-bin counts per unit for ridge plots: rows (layer, unit, bin_left, bin_right, count).

    Bins are numpy's (half-open, the last one closed). Two extra rows per unit with bin_left = -inf and
    bin_right = +inf count the values below and above the range, so every finite value is counted once.

    Args:
        values: from `unit_values`.
        bins: increasing bin edges (at least 2), the same at every step so ridges are comparable.
    """
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ProbeError(f"bins must be at least 2 strictly increasing edges, got {list(bins)!r}")
    rows = []
    for (k, unit), v in values.items():
        counts, _ = np.histogram(v, bins=edges)
        label = _unit_label(unit)
        rows.append({"layer": k, "unit": label, "bin_left": -np.inf, "bin_right": edges[0],
                     "count": int(np.sum(v < edges[0]))})  # fmt: skip
        rows += [
            {"layer": k, "unit": label, "bin_left": float(lo), "bin_right": float(hi), "count": int(c)}
            for lo, hi, c in zip(edges[:-1], edges[1:], counts)
        ]
        rows.append({"layer": k, "unit": label, "bin_left": edges[-1], "bin_right": np.inf,
                     "count": int(np.sum(v > edges[-1]))})  # fmt: skip
    return rows


def choose_units(shape: Sequence[int], count: int, generator: torch.Generator) -> list[tuple[int, ...]]:
    """`count` distinct units of an activation of per-example shape (C, H, W) or (C,), drawn from `generator`."""
    numel = int(np.prod(shape))
    if not 1 <= count <= numel:
        raise ProbeError(f"count must be in 1..{numel} for shape {tuple(shape)}, got {count}")
    flat = torch.randperm(numel, generator=generator)[:count].tolist()
    return [tuple(int(i) for i in np.unravel_index(f, tuple(shape))) for f in flat]


def activation_stats(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layers: Iterable[int],
    units: Units,
    point: str = "pre_relu",
    before_forward: Callable[[], object] | None = None,
    generators: Iterable[torch.Generator] = (),
) -> tuple[list[dict], list[dict]]:
    """Per-channel (layer, channel, mean, var) rows and per-unit quantile rows from one extra forward of `x`.

    Args:
        model: exposes `blocks`; kept in its mode and restored bit-identically.
        x: input batch.
        layers: 1-based layer indices.
        units: per layer {k: [(channel, h, w), ...]} ((unit,) for linear layers), or one list for every layer.
        point: "pre_relu" or "post_relu".
        before_forward: called before the forward (e.g. to set the noise generator).
        generators: generators to save and restore besides the global ones.
    """
    acts = record_activations(
        model, x, layers=layers, point=point, before_forward=before_forward, generators=generators
    )
    return channel_stats(acts), unit_summaries(unit_values(acts, units))

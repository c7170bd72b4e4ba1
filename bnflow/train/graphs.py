"""One whole training step (forward, loss, backward, SGD update) captured as a CUDA graph and replayed.

At batch 128 the GPU is launch-bound (PERFORMANCE.md: 5.4 ms/step eager vs 2.3 ms/step under CUDA graphs on an
H200), so replaying one graph per step is where a single run's speed comes from. The graph computes exactly the
eager step's kernels on fixed buffers: the batch is copied into `static_x`/`static_y` before each replay, gradients
are zeroed in place inside the graph, and the noise generator is registered with the graph so every replay draws
fresh noise from it. Warm-up steps (needed before capture) run on a snapshot that is restored afterwards, so the
run's numbers do not depend on whether graphs are used, up to GPU non-determinism.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bnflow.probes.state import restore, snapshot

log = logging.getLogger("bnflow.train")
WARMUP_STEPS = 3


def graphs_supported(device: torch.device, momentum: float, weight_decay: float) -> tuple[bool, str]:
    """Whether the step can be captured; plain SGD keeps no state that would need re-initialising per replay."""
    if device.type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if momentum or weight_decay:
        return False, "CUDA graphs are used for plain SGD only (momentum = weight_decay = 0, the paper's protocol)"
    return True, ""


class GraphedStep:
    """Capture `model`'s training step for batches shaped like (x, y); `__call__` replays it on a new batch."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 autocast: torch.autocast, generators: Sequence[torch.Generator]):
        self.static_x = torch.empty_like(x)
        self.static_y = torch.empty_like(y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            opt.zero_grad(set_to_none=False)
            with autocast:
                out = model(self.static_x)
            loss = loss_fn(out.float(), self.static_y)
            loss.backward()
            opt.step()
            return out, loss

        # Warm-up on a side stream (cuDNN autotuning, lazy allocations of .grad), then undo its updates.
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        snap = snapshot(model, generators)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step()
        torch.cuda.current_stream().wait_stream(side)
        restore(model, snap)
        self.graph = torch.cuda.CUDAGraph()
        for g in generators:
            self.graph.register_generator_state(g)
        with torch.cuda.graph(self.graph):
            self.out, self.loss = step()
        restore(model, snap)  # capture records kernels without running them; restore anyway, buffers included
        log.info("captured the training step as a CUDA graph")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one step on (x, y); returns the graph's output and loss tensors (overwritten by the next call)."""
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.out, self.loss

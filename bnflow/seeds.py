"""Random streams: every random number bnflow draws comes from here (STYLE.md §9, PROTOCOL §9).

A run's streams are spawned from numpy's SeedSequence keyed by (base seed, seed index, stream), so each stream is
independent of the others and of the variant: the same seed index gives every variant the same initial weights (where
shapes agree), the same data order and the same problem instance, which blocks comparisons across variants.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = {"init": 0, "data": 1, "noise": 2, "probe": 3}


def stream_seed(base: int, index: int, stream: str, *extra: int) -> int:
    """A 63-bit integer seed for `stream` of run (base, index); `extra` keys sub-streams (e.g. the epoch)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; streams: {', '.join(STREAMS)}")
    words = np.random.SeedSequence([base, index, STREAMS[stream], *extra]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def torch_generator(base: int, index: int, stream: str, *extra: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded from stream_seed."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(base, index, stream, *extra))
    return g


def epoch_permutation(base: int, index: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a permutation of range(n), int64 on the CPU.

    Stateless in the epoch, so a resumed run or a checkpoint-wise probe regenerates any step's mini-batch exactly.
    """
    return torch.randperm(n, generator=torch_generator(base, index, "data", epoch))

"""Plug-in classes that break the plug-in contract one way each, and one that draws its own initial values: the
params validation (bnflow.config.check_variants) and the task builder (bnflow.tasks.build_model) are tested on them."""

import torch
from torch import nn


class TakesNoChannels(nn.Module):
    """Cannot be built as Class(C)."""

    def __init__(self) -> None:
        super().__init__()


class NotAModule:
    """Built fine, but not a torch.nn.Module: its parameters would never train."""

    def __init__(self, num_features: int) -> None:
        self.num_features = num_features

    def __call__(self, a):
        return a


class DropsChannels(nn.Module):
    """Returns the wrong shape."""

    def __init__(self, num_features: int) -> None:
        super().__init__()

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a[:, :1]


class ImagesOnly(nn.Module):
    """Works on (N, C, H, W) only, so it cannot go into the deep linear network."""

    def __init__(self, num_features: int) -> None:
        super().__init__()

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.dim() != 4:
            raise ValueError("ImagesOnly takes (N, C, H, W) activations")
        return a - a.mean(dim=(2, 3), keepdim=True)


class RandomGain(nn.Module):
    """A per-channel gain drawn from the global torch RNG at construction (what nn.Linear's init does too)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(0.5 + torch.rand(num_features))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.gain.view(1, -1, *([1] * (a.dim() - 2)))

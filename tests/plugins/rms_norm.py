"""A tiny plug-in normalisation for the tests (train.plugins: {rms: {module: "plugins.rms_norm:RMSNorm"}}).

RMS normalisation per example (Zhang & Sennrich 2019, over channels and positions, no centring):
out[n, c, ...] = γ_c · a[n, c, ...] / sqrt(mean over (c, ...) of a[n]² + ε). Written against the plug-in contract of
bnflow.models.norms.make_norm only (built as RMSNorm(C); (N, C) or (N, C, H, W) in, same shape out).
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, a.dim()))
        rms = torch.sqrt(a.square().mean(dim=dims, keepdim=True) + self.eps)
        return a / rms * self.weight.view(1, -1, *([1] * (a.dim() - 2)))

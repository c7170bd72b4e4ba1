"""What VGG and the deep linear net share: a stack of blocks, block k-1 = Sequential(layer #k, norm, ...)."""

from __future__ import annotations

from torch import nn


class BlockNet(nn.Module):
    """A network whose layer #k (1-based) is `blocks[k-1][0]` and its norm `blocks[k-1][1]`.

    Probes hook these blocks (activations), move `layer_params(k)` (ICS) and read `norms`.
    """

    def __init__(self, blocks: list[nn.Sequential], norm: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm

    @property
    def layers(self) -> list[nn.Module]:
        return [block[0] for block in self.blocks]

    @property
    def norms(self) -> list[nn.Module]:
        return [block[1] for block in self.blocks]

    def layer_params(self, k: int) -> list[nn.Parameter]:
        """Weight (and bias, if any) of layer #k (1-based); norm gamma/beta are excluded (PROTOCOL §4)."""
        if not (isinstance(k, int) and 1 <= k <= len(self.blocks)):
            raise ValueError(f"layer number must be an int in 1..{len(self.blocks)}, got {k!r}")
        return list(self.layers[k - 1].parameters())

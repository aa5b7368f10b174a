"""`small`: a 4-conv CNN for 32x32 / 64x64 inputs, used by CPU tests and benchmarks.

`small-wide` doubles every width: a second, unrelated architecture for the
two-encoder (adapter) benchmarks at about 4x the compute.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.backbones import BACKBONES
from trainer.backbones.common import EmbeddingHead, conv_out

WIDTHS = (32, 64, 128, 256)
WIDE = tuple(2 * w for w in WIDTHS)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.PReLU(cout))


class SmallNet(nn.Module):
    def __init__(self, dim: int, image_size: int, in_channels: int = 3,
                 dropout: float = 0.0, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        layers = [_conv(in_channels, widths[0], 1)]
        layers += [_conv(a, b, 2) for a, b in zip(widths, widths[1:])]
        self.body = nn.Sequential(*layers)
        self.head = EmbeddingHead(widths[-1], conv_out(image_size, len(widths) - 1), dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@BACKBONES.register("small")
def small(dim: int, image_size: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return SmallNet(dim, image_size, in_channels, dropout)


@BACKBONES.register("small-wide")
def small_wide(dim: int, image_size: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return SmallNet(dim, image_size, in_channels, dropout, widths=WIDE)

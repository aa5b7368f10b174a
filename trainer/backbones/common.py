"""Pieces shared by backbone families."""

from __future__ import annotations

import torch
from torch import nn

from gallery.errors import BadInput


def conv_out(size: int, strides: int) -> int:
    """Spatial size after `strides` 3x3/stride-2/pad-1 convolutions."""
    for _ in range(strides):
        size = (size - 1) // 2 + 1
    return size


class EmbeddingHead(nn.Module):
    """insightface's BN -> dropout -> flatten -> FC -> BN1d (scale frozen at 1)."""

    def __init__(self, channels: int, spatial: int, dim: int, dropout: float) -> None:
        super().__init__()
        if spatial < 1:
            raise BadInput("image size too small for this backbone")
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial * spatial, dim)
        self.features = nn.BatchNorm1d(dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.bn(x), 1))
        if torch.is_autocast_enabled(x.device.type):
            # like insightface: the embedding layer runs in fp32 under fp16 autocast
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.features(self.fc(x.float()))
        return self.features(self.fc(x))

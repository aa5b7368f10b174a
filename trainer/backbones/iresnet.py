"""insightface IResNet (arcface_torch): 18/34/50/100, made for 112x112 inputs.

Pre-activation-style IBasicBlock (BN-conv-BN-PReLU-conv(stride)-BN + shortcut),
4 stride-2 stages (112 -> 7), then BN-dropout-FC-BN to the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.backbones import BACKBONES
from trainer.backbones.common import EmbeddingHead, conv_out

DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3),
          "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
WIDTHS = (64, 128, 256, 512)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, depths: tuple[int, ...], dim: int, image_size: int,
                 in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64, eps=1e-5), nn.PReLU(64))
        stages, inplanes = [], 64
        for planes, depth in zip(WIDTHS, depths):
            blocks = [IBasicBlock(inplanes, planes, 2)]
            blocks += [IBasicBlock(planes, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.head = EmbeddingHead(WIDTHS[-1], conv_out(image_size, len(depths)), dim, dropout)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)  # insightface's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _builder(name: str):
    def build(dim: int, image_size: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
        return IResNet(DEPTHS[name], dim, image_size, in_channels, dropout)

    build.__name__ = name
    return build


for _name in DEPTHS:
    BACKBONES.register(_name)(_builder(_name))

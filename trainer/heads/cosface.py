"""CosFace / AM-softmax (Wang et al.): target cos(theta) - m, scale s."""

from __future__ import annotations

import torch

from trainer.heads import HEADS
from trainer.heads.base import MarginHead


@HEADS.register("cosface")
class CosFace(MarginHead):
    NAME = "cosface"

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(dim, num_classes, s=s, m=m)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m

"""ArcFace (Deng et al.): additive angular margin, target cos(theta + m), scale s."""

from __future__ import annotations

import math

import torch

from trainer.heads import HEADS
from trainer.heads.base import MarginHead


@HEADS.register("arcface")
class ArcFace(MarginHead):
    NAME = "arcface"

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(0.0))
        cos_margin = cos_target * math.cos(self.m) - sin * math.sin(self.m)
        # past theta = pi - m, cos(theta + m) stops decreasing; insightface's fallback
        # keeps the logit monotonic there: cos(theta) - m * sin(m)
        threshold = math.cos(math.pi - self.m)
        return torch.where(cos_target > threshold, cos_margin,
                           cos_target - math.sin(math.pi - self.m) * self.m)

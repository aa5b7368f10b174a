"""Head base class and the normalised-cosine machinery shared by margin heads."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    PARAMS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim, self.num_classes = int(dim), int(num_classes)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.dim))
        nn.init.normal_(self.weight, std=0.01)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)

    def describe(self) -> dict:
        return {"name": type(self).NAME, **{k: float(getattr(self, k)) for k in self.PARAMS}}


class MarginHead(Head):
    """Cosine logits s * cos(theta_j); subclasses change the target column."""

    PARAMS = ("s", "m")

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(dim, num_classes)
        self.s, self.m = float(s), float(m)

    def cosines(self, embeddings: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        # fp32 even under autocast: margins on fp16 cosines lose the target angle
        return F.linear(F.normalize(embeddings.float()), F.normalize(weight.float()))

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosines(embeddings, weight).clamp(-1.0, 1.0)
        target = cos.gather(1, labels.view(-1, 1))
        cos = cos.scatter(1, labels.view(-1, 1), self.target_logit(target))
        return cos * self.s

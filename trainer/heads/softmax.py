"""Plain softmax: a linear classifier with bias on unnormalised features.

The paper's "weak old model": no margin, no normalisation, so its feature
space is loosely clustered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.heads import HEADS
from trainer.heads.base import Head


@HEADS.register("softmax")
class Softmax(Head):
    NAME = "softmax"

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        # a replacement class matrix (e.g. old prototypes) has no bias of its own
        if weight is None:
            return F.linear(embeddings.float(), self.weight.float(), self.bias.float())
        return F.linear(embeddings.float(), weight.float())

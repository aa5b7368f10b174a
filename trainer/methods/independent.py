"""`independent`: the classification head's loss alone, no compatibility constraint.

This is plain training (`gallery train`) and the new* reference model of the
compatibility protocol.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.methods import METHODS
from trainer.methods.base import CompatMethod


@METHODS.register("independent")
class Independent(CompatMethod):
    name = "independent"

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = head(embeddings, labels)
        return value, {"head_loss": value.detach()}

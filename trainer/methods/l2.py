"""`l2`: the head's loss plus a hinge on the distance between new and old features.

loss = head(e, y) + w * mean_i max(||n(old_i) - n(e_i)||_2 - tau, 0), with n() L2
normalisation; tau = 0 is plain L2, tau = 0.2 the "weakened L2" of the MixBCT paper.
The old features are constants (buffers), so only the new model moves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gallery.errors import BadInput
from trainer.methods import METHODS
from trainer.methods.base import MethodContext
from trainer.old_features import OldFeatureMethod


@METHODS.register("l2")
class L2(OldFeatureMethod):
    name = "l2"

    def __init__(self, l2_weight: float = 10.0, tau: float = 0.0, **extra: float) -> None:
        if l2_weight < 0:
            raise BadInput(f"--l2-weight must be >= 0, got {l2_weight}")
        if tau < 0:
            raise BadInput(f"--tau must be >= 0, got {tau}")
        super().__init__(l2_weight=float(l2_weight), tau=float(tau), **extra)
        self.l2_weight = float(l2_weight)
        self.tau = float(tau)

    def prepare(self, context: MethodContext) -> None:
        self.prepare_old_features(context)

    def distance_term(self, embeddings: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """mean_i max(||n(old_i) - n(e_i)|| - tau, 0) over the batch."""
        old = self.old_rows(indices, embeddings)
        distance = torch.linalg.vector_norm(F.normalize(embeddings, dim=1) - old, dim=1)
        return torch.clamp(distance - self.tau, min=0.0).mean()

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        head_loss = head(embeddings, labels)
        l2_term = self.distance_term(embeddings, indices)
        total = head_loss + self.l2_weight * l2_term
        return total, {"head_loss": head_loss.detach(), "l2": l2_term.detach()}

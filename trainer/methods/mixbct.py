"""`mixbct`: MixBCT (Liang et al., arXiv 2308.06948), as DESIGN §2 step 3 describes it.

Per batch, round(mix_ratio * B) rows whose old feature is credible (trainer.credible)
are picked at random (all credible rows when fewer) and their new embeddings are
replaced by the L2-normalised old features. The head's loss (ArcFace) on the mixed batch
is the whole loss: the old rows are constants, so they pull the class weights W toward
the old model's class layout, and the new rows must satisfy the margin against that W.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gallery.errors import BadInput
from trainer.credible import credible_mask
from trainer.methods import METHODS
from trainer.methods.base import MethodContext
from trainer.old_features import OldFeatureMethod


@METHODS.register("mixbct")
class MixBCT(OldFeatureMethod):
    name = "mixbct"

    def __init__(self, mix_ratio: float = 0.3, credible_t: float = 0.9) -> None:
        if not 0.0 <= mix_ratio <= 1.0:
            raise BadInput(f"--mix-ratio must be in [0, 1], got {mix_ratio}")
        if not 0.0 < credible_t <= 1.0:
            raise BadInput(f"--credible-t must be in (0, 1], got {credible_t}")
        super().__init__(mix_ratio=float(mix_ratio), credible_t=float(credible_t))
        self.mix_ratio = float(mix_ratio)
        self.credible_t = float(credible_t)
        # host memory, not a buffer: out of DDP's broadcast and off the GPU (one bool per image)
        self.credible = torch.zeros(0, dtype=torch.bool)

    def prepare(self, context: MethodContext) -> None:
        self.prepare_old_features(context)

    def on_old_features(self, features: np.ndarray, labels: np.ndarray,
                        device: torch.device | str) -> None:
        mask = credible_mask(features, labels, self.credible_t)
        self.credible = torch.from_numpy(mask)
        self.credible_fraction = float(mask.mean())

    def choose_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Boolean (B,) mask of batch rows to replace by their old features."""
        credible = self.credible[indices.cpu()]
        candidates = torch.nonzero(credible).flatten()
        wanted = min(round(self.mix_ratio * len(indices)), len(candidates))
        # torch's global CPU RNG: the fit loop reseeds it every epoch, so a resumed run
        # picks the same rows as an uninterrupted one
        order = torch.randperm(len(candidates))[:wanted]
        chosen = torch.zeros(len(indices), dtype=torch.bool)
        chosen[candidates[order]] = True
        return chosen

    def mix(self, embeddings: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed embeddings, replaced-row mask). Replaced rows carry no backbone gradient."""
        if self.credible.numel() == 0:
            raise RuntimeError("mixbct: prepare() was not called before loss()")
        chosen = self.choose_rows(indices).to(embeddings.device)
        # torch.where routes the gradient of replaced rows to the constant, not to e
        mixed = torch.where(chosen[:, None], self.old_rows(indices, embeddings), embeddings)
        return mixed, chosen

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mixed, chosen = self.mix(embeddings, indices)
        value = head(mixed, labels)
        return value, {"head_loss": value.detach(), "mixed_rows": chosen.sum()}

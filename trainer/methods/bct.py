"""`bct`: Shen et al. (CVPR 2020) backward-compatible training with the influence loss.

loss = head(e, y) + weight * CE(influence logits against frozen old class prototypes P, y).
Two variants, chosen with `bct_variant` (`--bct-variant`):

- `official`: BCT as the MixBCT authors' repo (yuleung/MixBCT, BCT_Methods/BCT) runs it
  in every config: P = class means of the *raw* old features, L2-normalised
  (tools/get_feature/get_avg_feature.py); logits = n(e) . P^T, plain cosines with no
  margin and no scale (BCT_FC in backbones/iresnet_bct.py).
- `scaled` (default): P = normalised mean of *normalised* old features, and the influence
  logits are the main head's margin logits with its scale (`bct_scale` swaps the scale):
  a stronger constraint, since cosines in [-1, 1] give a cross-entropy that barely moves.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gallery.errors import BadInput
from trainer.methods import METHODS
from trainer.methods.base import MethodContext
from trainer.old_features import OldFeatureMethod

SCALE_ATTRIBUTES = ("scale", "s")
VARIANTS = ("official", "scaled")


def class_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int,
                     normalise_rows: bool = True) -> np.ndarray:
    """(C x d) normalised per-class mean of the (optionally row-normalised) features.

    normalise_rows=False is the official BCT's prototype: the mean of raw features.
    Absent classes stay zero.
    """
    data = np.asarray(features, dtype=np.float64)
    if normalise_rows:
        data = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((num_classes, data.shape[1]))
    np.add.at(sums, labels, data)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def cosine_logits(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The official BCT_FC: n(e) . W^T with W as given (no margin, no scale)."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)  # fp32 under autocast
    return F.normalize(embeddings.to(dtype), dim=1) @ prototypes.to(dtype).t()


def head_scale(head: nn.Module) -> float | None:
    for attribute in SCALE_ATTRIBUTES:
        value = getattr(head, attribute, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


@METHODS.register("bct")
class BCT(OldFeatureMethod):
    name = "bct"

    def __init__(self, bct_weight: float = 1.0, bct_scale: float | None = None,
                 bct_variant: str = "scaled") -> None:
        if bct_weight < 0:
            raise BadInput(f"BCT influence weight must be >= 0, got {bct_weight}")
        if bct_scale is not None and bct_scale <= 0:
            raise BadInput(f"--bct-scale must be > 0, got {bct_scale}")
        if bct_variant not in VARIANTS:
            raise BadInput(f"unknown --bct-variant {bct_variant!r}; valid: {', '.join(VARIANTS)}")
        if bct_variant == "official" and bct_scale is not None:
            raise BadInput("--bct-scale applies to --bct-variant scaled only (official BCT "
                           "uses plain cosine logits)")
        super().__init__(bct_weight=float(bct_weight), bct_scale=bct_scale,
                         bct_variant=bct_variant)
        self.bct_weight = float(bct_weight)
        self.bct_scale = None if bct_scale is None else float(bct_scale)
        self.bct_variant = bct_variant
        self.register_buffer("prototypes", torch.zeros(0, 0), persistent=False)

    def prepare(self, context: MethodContext) -> None:
        self._num_classes = int(context.num_classes)
        self.prepare_old_features(context)
        if self.bct_variant == "official":
            return
        scale = head_scale(context.head)
        if self.bct_scale is not None and scale is None:
            raise BadInput("--bct-scale needs a head with a scale (arcface/cosface), "
                           f"not {type(context.head).__name__}")
        # record the scale actually used, so the model's metadata is self-explanatory
        self.hyperparameters["bct_scale"] = self.bct_scale if self.bct_scale is not None else scale

    def on_old_features(self, features: np.ndarray, labels: np.ndarray,
                        device: torch.device | str) -> None:
        num_classes = getattr(self, "_num_classes", int(labels.max()) + 1)
        prototypes = class_prototypes(features, labels, num_classes,
                                      normalise_rows=self.bct_variant == "scaled")
        self.prototypes = torch.from_numpy(prototypes).to(device)

    def influence_logits(self, embeddings: torch.Tensor, labels: torch.Tensor,
                         head: nn.Module) -> torch.Tensor:
        if self.bct_variant == "official":
            return cosine_logits(embeddings, self.prototypes)
        logits = head.logits(embeddings, labels, weight=self.prototypes.to(embeddings))
        if self.bct_scale is not None:
            # the head applied its own scale s to cos(theta) (+margin); swap s for bct_scale
            logits = logits * (self.bct_scale / head_scale(head))
        return logits

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.prototypes.numel() == 0:
            raise RuntimeError("bct: prepare() was not called before loss()")
        head_loss = head(embeddings, labels)
        influence = F.cross_entropy(self.influence_logits(embeddings, labels, head), labels)
        total = head_loss + self.bct_weight * influence
        return total, {"head_loss": head_loss.detach(), "influence": influence.detach()}

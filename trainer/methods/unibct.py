"""`unibct`: UniBCT (Zhang et al., IJCAI 2022), BCT with graph-refined old prototypes.

As the MixBCT authors' repo runs it (yuleung/MixBCT, BCT_Methods/UniBCT): the official
BCT's influence loss, CE(n(e) . P^T, y) with no margin or scale, but the prototypes P
are rebuilt from the *current new model* at 10/35 and 20/35 of training (epochs 10 and
20 of 35 there), and the influence term is off (weight 0) before the first rebuild.
Rebuild, per class with n images (refine_prototype.py, the paper's Eq. 9-10):

    A = softmax over rows (dim 0) of (f_i . f_j / temperature), diagonal masked out
    V = (1 - lambda) (I - lambda A)^-1 . O      O: the class's raw old features
    P_c = mean of V's rows                      (not normalised, as the official copy)

f are the new model's features of the class's images. Two deliberate differences from
the official copy: f is L2-normalised (the paper's cosine affinity; the official code
feeds raw iresnet features, which at temperature 0.05 makes A one-hot), and the learning
rate follows this project's one schedule for every method (the official UniBCT uses a
step decay at epochs 20/26/32 where the other methods use a polynomial decay).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gallery.errors import BadInput
from trainer.methods import METHODS
from trainer.methods.base import MethodContext
from trainer.methods.bct import class_prototypes, cosine_logits
from trainer.old_features import OldFeatureMethod

REFINE_AT = (10 / 35, 20 / 35)  # fractions of training, from the official 35-epoch config


def refine_epochs(epochs: int) -> list[int]:
    """0-based epochs before which the prototypes are rebuilt (at least one epoch trained)."""
    return sorted({min(max(1, round(epochs * f)), epochs - 1) for f in REFINE_AT} - {0})


def refined_prototypes(new: np.ndarray, old: np.ndarray, labels: np.ndarray, num_classes: int,
                       lamb: float, temperature: float) -> np.ndarray:
    """(C x d) UniBCT prototypes: per class, old features propagated over the new graph."""
    new = torch.from_numpy(np.asarray(new, np.float64))
    new = F.normalize(new, dim=1)
    old = torch.from_numpy(np.asarray(old, np.float64))
    out = torch.zeros(num_classes, old.shape[1], dtype=torch.float64)
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, boundaries):
        f, o = new[members], old[members]
        edges = f @ f.t() / temperature
        edges.fill_diagonal_(-1e9)
        edges = torch.softmax(edges, dim=0)
        eye = torch.eye(len(members), dtype=torch.float64)
        propagated = (1 - lamb) * torch.linalg.solve(eye - lamb * edges, o)
        out[int(labels[members[0]])] = propagated.mean(dim=0)
    return out.float().numpy()


@METHODS.register("unibct")
class UniBCT(OldFeatureMethod):
    name = "unibct"

    def __init__(self, unibct_weight: float = 1.0, unibct_lambda: float = 0.9,
                 unibct_temperature: float = 0.05) -> None:
        if unibct_weight < 0:
            raise BadInput(f"UniBCT influence weight must be >= 0, got {unibct_weight}")
        if not 0.0 <= unibct_lambda < 1.0:
            raise BadInput(f"UniBCT lambda must be in [0, 1), got {unibct_lambda}")
        if unibct_temperature <= 0:
            raise BadInput(f"UniBCT temperature must be > 0, got {unibct_temperature}")
        super().__init__(unibct_weight=float(unibct_weight), unibct_lambda=float(unibct_lambda),
                         unibct_temperature=float(unibct_temperature))
        self.influence_weight = float(unibct_weight)
        self.lamb, self.temperature = float(unibct_lambda), float(unibct_temperature)
        # persistent: a run resumed after a rebuild needs the rebuilt prototypes
        self.register_buffer("prototypes", torch.zeros(0, 0))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))

    def prepare(self, context: MethodContext) -> None:
        self._num_classes = int(context.num_classes)
        self._dataset = context.dataset
        self.prepare_old_features(context)

    def on_old_features(self, features: np.ndarray, labels: np.ndarray,
                        device: torch.device | str) -> None:
        # before the first rebuild: the official BCT's prototypes (their weight is 0 then)
        num_classes = getattr(self, "_num_classes", int(labels.max()) + 1)
        self._labels = labels
        protos = class_prototypes(features, labels, num_classes, normalise_rows=False)
        self.prototypes = torch.from_numpy(protos).to(device)

    def start_epoch(self, epoch: int, epochs: int, backbone: nn.Module) -> None:
        if epoch not in refine_epochs(epochs):
            return
        new = self._new_features(backbone)
        protos = refined_prototypes(new, self.old_features, self._labels,
                                    self.prototypes.shape[0], self.lamb, self.temperature)
        self.prototypes = torch.from_numpy(protos).to(self.prototypes.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # BatchNorm statistics differ per rank (no buffer broadcast): use rank 0's rebuild
            torch.distributed.broadcast(self.prototypes, src=0)
        self.active = torch.ones((), dtype=torch.bool, device=self.active.device)

    def _new_features(self, backbone: nn.Module) -> np.ndarray:
        from trainer.data import make_loader

        device = next(backbone.parameters()).device
        was_training = backbone.training
        backbone.eval()
        chunks = []
        with torch.no_grad():
            for images, _, _ in make_loader(self._dataset, 256, train=False):
                chunks.append(backbone(images.to(device)).float().cpu())
        backbone.train(was_training)
        return torch.cat(chunks).numpy()

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.prototypes.numel() == 0:
            raise RuntimeError("unibct: prepare() was not called before loss()")
        head_loss = head(embeddings, labels)
        influence = F.cross_entropy(cosine_logits(embeddings, self.prototypes), labels)
        # a tensor factor, not `if self.active`: no host sync per step on a GPU
        total = head_loss + self.influence_weight * self.active.to(influence) * influence
        return total, {"head_loss": head_loss.detach(), "influence": influence.detach()}

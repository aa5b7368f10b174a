"""A change of dimension in compatible training: v2 (dim D) plus a learned projection to v1's d.

`train-compatible --old v1(128-d) --dim 512` trains a 512-d backbone whose embedding e
serves v2 galleries, and a linear projection P: 512 -> 128 whose output P(e) is what v2
queries compare with v1 rows. The compatibility method (l2, bct, mixbct) acts on P(e)
exactly as it acts on a same-dimension model's embedding, with its own head over the old
dimension; the full embedding keeps the run's head loss:

    loss = head_D(e, y) + method.loss(P(e), y, idx, head_d)

The projection lives in the backbone (ProjectedBackbone), so the .pt, its model_id and
the ONNX export carry it; the method wrapper only borrows it. Neither the fit loop nor
any method file knows about it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from trainer.methods.base import CompatMethod, MethodContext


class ProjectedBackbone(nn.Module):
    """forward(x) = the full embedding; project(e) = its image in the old space."""

    def __init__(self, body: nn.Module, dim: int, old_dim: int) -> None:
        super().__init__()
        self.body = body
        self.projection = nn.Linear(dim, old_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        # fp32 like the embedding layer (also under fp16 autocast): the old-space vectors
        # are compared across models
        if torch.is_autocast_enabled(embeddings.device.type):
            with torch.autocast(device_type=embeddings.device.type, enabled=False):
                return self.projection(embeddings.float())
        return self.projection(embeddings.float())


class BothOutputs(nn.Module):
    """Export view: (embedding, old-space embedding), the two outputs the ONNX declares."""

    def __init__(self, backbone: ProjectedBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.backbone(x)
        return e, self.backbone.project(e)


class ProjectedMethod(CompatMethod):
    """Wraps a registered method so it acts on the projection; adds the full embedding's head."""

    requires_old_model = True

    def __init__(self, inner: CompatMethod, backbone: ProjectedBackbone, old_head: nn.Module) -> None:
        super().__init__(**inner.hyperparameters)
        self.name = inner.name
        self.inner, self.old_head = inner, old_head
        # borrowed, not registered: the projection's weights belong to the backbone (and the .pt)
        self._backbone = [backbone]

    def prepare(self, context: MethodContext) -> None:
        self.inner.prepare(replace(context, embedding_dim=self.old_head.dim, head=self.old_head))

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             head: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        full = head(embeddings, labels)
        compat, logs = self.inner.loss(self._backbone[0].project(embeddings), labels, indices, self.old_head)
        # logged as detached device tensors: the loop sums them and syncs once per epoch
        return full + compat, {"full_head_loss": full.detach(),
                               **{f"projected_{k}": v for k, v in logs.items()}}

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "projection": {"dim": int(self.old_head.dim),
                                                         "head": self.old_head.describe()}}


def old_space_dim(config: Any) -> int | None:
    """The old model's dimension when a compatible run's --dim differs from it, else None."""
    from trainer.methods import load_all
    from trainer.old_features import read_old_features
    from trainer.old_model import load_old_model

    if not load_all().get(config.method).requires_old_model:
        return None
    if config.old_features:
        dim = int(read_old_features(config.old_features).features.shape[1])
    elif config.old_model:
        dim = int(load_old_model(config.old_model).dim)
    else:
        return None
    return None if dim == int(config.dim) else dim

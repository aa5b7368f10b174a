"""The contract between the single fit loop and a compatibility method.

The loop computes embeddings e = backbone(x) for a batch (images, labels, dataset
indices) and asks the method for the loss. The method may use the classification
head (ArcFace/CosFace/softmax) and whatever it prepared before training (old
features, prototypes). `independent` is the method with no constraint, so plain
`gallery train` runs through the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class MethodContext:
    """What a method may look at before training starts."""

    dataset: Any                  # the training dataset: len(), labels (np.ndarray), num_classes
    num_classes: int
    embedding_dim: int
    device: torch.device
    head: nn.Module
    old_model: str | None = None  # path to the old encoder (.pt, TorchScript or ONNX)
    old_features: str | None = None  # precomputed old features (HDF5), if the user gave them
    cache_dir: Path | None = None    # where extracted old features may be cached
    extras: dict = field(default_factory=dict)


class CompatMethod(nn.Module):
    """Base class. Subclasses register with @METHODS.register("name").

    A method is an nn.Module so buffers (old features, prototypes) and any extra
    parameters move with `.to(device)` and are checkpointed with the model.
    """

    name: ClassVar[str] = ""
    requires_old_model: ClassVar[bool] = False

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__()
        self.hyperparameters = dict(hyperparameters)

    def prepare(self, context: MethodContext) -> None:
        """Called once before the first step (extract old features, build masks...)."""

    def start_epoch(self, epoch: int, epochs: int, backbone: nn.Module) -> None:
        """Called by the loop before each epoch (0-based) of `epochs`, before train mode.

        For methods whose targets follow the new model (UniBCT refines its prototypes
        with the new backbone's features); a method must derive what it does here from
        (epoch, epochs) and its checkpointed buffers, so a resumed run does the same.
        """

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Return the scalar training loss and a dict of values to log: detached scalar
        tensors, which the loop sums on the device and reads once per epoch (float() here
        would make the host wait for the GPU at every step)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Method name and hyperparameters, recorded in the model's metadata."""
        return {"method": self.name, **self.hyperparameters}

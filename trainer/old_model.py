"""The frozen old model (`--old`) as a feature extractor.

Any encoder gallery.encoder can load serves: our `.pt` checkpoints and TorchScript files
(trainer.torch_encoder, its `gallery.encoders` plugins, weights_only loading) and ONNX
image encoders (onnxruntime). Nothing is unpickled beyond torch.load(weights_only=True).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gallery.encoder import load_encoder
from gallery.errors import BadInput


def load_old_model(path: str | Path) -> Any:
    """Load the old encoder (an object following gallery.encoder's Encoder protocol)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"old model not found: {path}")
    return load_encoder(path)


def old_model_id(identity: dict) -> str:
    """The identity recorded as `compatible_with`: gallery.model_id, else the file sha256."""
    model_id = identity.get("model_id")
    if model_id:
        return str(model_id)
    sha = identity.get("sha256")
    if not sha:
        raise BadInput("old model identity has neither a model_id nor a sha256")
    return str(sha)


def summary(identity: dict) -> dict[str, Any]:
    """The small, JSON-safe part of an identity that goes into metadata and caches."""
    return {
        "model_id": identity.get("model_id"),
        "sha256": identity.get("sha256"),
        "format": identity.get("format"),
        "path": str(identity.get("path", "")),
    }

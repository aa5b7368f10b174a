"""The frozen old model (`--old`) as a feature extractor.

Any encoder gallery can load serves: our `.pt` checkpoints and TorchScript files
(through trainer.torch_encoder, weights_only loading) and ONNX image encoders (through
gallery.encoder, onnxruntime). Nothing is unpickled beyond torch.load(weights_only=True).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gallery.errors import BadInput

TORCH_SUFFIXES = (".pt", ".pth", ".ts")


def load_old_model(path: str | Path) -> Any:
    """Load the old encoder (an object following gallery.encoder's Encoder protocol)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"old model not found: {path}")
    if path.suffix.lower() in TORCH_SUFFIXES:
        # importing registers the .pt/.pth/.ts loaders in gallery.encoder.ENCODER_LOADERS
        import trainer.torch_encoder  # noqa: F401
    from gallery.encoder import load_encoder

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

"""Our `.pt` model files and TorchScript files as gallery Encoders.

The package declares the two loaders below as entry points of the group
`gallery.encoders` (pyproject.toml), so gallery.encoder.load_encoder opens ".pt",
".pth" and ".ts" files like ONNX ones wherever torch is installed, without anyone
importing this module first. `.pt` files load with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import PreprocessSpec

from trainer.checkpoint import load_model

log = logging.getLogger(__name__)


class TorchEncoder:
    """Encoder protocol: spec, dim, identity, embed(NCHW float32) -> (N, dim) raw float32."""

    def __init__(self, module: torch.nn.Module, spec: PreprocessSpec, dim: int,
                 identity: dict[str, Any], device: torch.device) -> None:
        self.module, self.spec, self.dim = module, spec, int(dim)
        self.identity, self.device = identity, device
        # the spec's mean/std as (1, C, 1, 1) device tensors, made once (embed_uint8 per batch)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # a v2 trained with a change of dimension (trainer.projection) also maps into v1's space
        projection = getattr(module, "projection", None)
        self.old_space_dim = int(projection.out_features) if projection is not None else None

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        expected = (self.spec.channels, self.spec.height, self.spec.width)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise BadInput(f"encoder input has shape {tuple(batch.shape)}, expected (N, *{expected})")
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    @torch.no_grad()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.module(self._tensor(batch)).float().cpu().numpy()

    @torch.no_grad()
    def embed_uint8(self, images: np.ndarray) -> np.ndarray:
        """NHWC uint8 in the spec's colour order -> (N, dim): gallery.preprocess.to_tensor's
        (x - mean) / std in float32, done on the device."""
        pixels = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        tensor = ((pixels - self._mean) / self._std).contiguous()
        return self.module(tensor).float().cpu().numpy()

    @torch.no_grad()
    def embed_old_space(self, batch: np.ndarray) -> np.ndarray:
        """The projection into v1's space (models trained with a change of dimension)."""
        if self.old_space_dim is None:
            raise BadInput("this model has no old-space output")
        return self.module.project(self.module(self._tensor(batch))).float().cpu().numpy()


def _device(providers: Any, require_gpu: bool) -> torch.device:
    if require_gpu and not torch.cuda.is_available():
        raise BadInput("a GPU was required but torch sees no CUDA device")
    wants_cpu = providers is not None and all("CUDA" not in str(p) for p in providers)
    return torch.device("cuda" if torch.cuda.is_available() and not wants_cpu else "cpu")


def load_pt_encoder(path: str | Path, providers: Any = None, require_gpu: bool = False,
                    **_: Any) -> TorchEncoder:
    device = _device(providers, require_gpu)
    loaded = load_model(path, device)
    meta = loaded.meta
    metadata = {k: v for k, v in meta.items() if k not in ("parity_images",)}
    identity = {"sha256": file_sha256(path), "model_id": meta["model_id"], "path": str(path),
                "format": "pt", "metadata": metadata}
    return TorchEncoder(loaded.backbone, loaded.spec, meta["arch"]["dim"], identity, device)


def load_torchscript_encoder(path: str | Path, providers: Any = None, require_gpu: bool = False,
                             **_: Any) -> TorchEncoder:
    """TorchScript files carry their preprocessing in `_extra_files['gallery.json']`."""
    device = _device(providers, require_gpu)
    extra = {"gallery.json": ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise BadInput(f"cannot read TorchScript model {path}: {exc.__class__.__name__}") from None
    if not extra["gallery.json"]:
        raise BadInput(f"{path} lacks gallery.json (preprocessing, dim) in its extra files")
    meta = json.loads(extra["gallery.json"])
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    identity = {"sha256": file_sha256(path), "model_id": meta.get("model_id"),
                "path": str(path), "format": "torchscript", "metadata": meta}
    return TorchEncoder(module.eval(), spec, int(meta["dim"]), identity, device)

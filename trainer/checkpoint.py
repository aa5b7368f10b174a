"""Model files (.pt) and resumable training checkpoints (.ckpt).

Both are plain dicts of tensors, numbers, strings and lists, so they load with
torch.load(weights_only=True): a model file never executes code when opened.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gallery.errors import BadInput
from gallery.preprocess import PreprocessSpec

MODEL_FORMAT = "gallery.model/1"
CKPT_FORMAT = "gallery.ckpt/1"


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes): the model_id, stable across .pt/.onnx."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write next to the target then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def model_payload(backbone: nn.Module, arch: dict, spec: PreprocessSpec, classes: list[str],
                  label_map_sha256: str, method: dict, head: dict,
                  parity_images: torch.Tensor, config: dict) -> dict[str, Any]:
    # standard (NCHW-contiguous) layout on disk whatever layout training used
    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    return {
        "format": MODEL_FORMAT, "state_dict": state, "arch": dict(arch),
        "preprocess": spec.to_dict(), "classes": list(classes),
        "label_map_sha256": label_map_sha256, "model_id": weights_fingerprint(state),
        "method": dict(method), "compatible_with": method.get("compatible_with"),
        "head": dict(head), "parity_images": parity_images.cpu(), "config": dict(config),
    }


def read_model_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; none is usable
        raise BadInput(f"cannot read model {path}: {exc.__class__.__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise BadInput(f"{path} is not a gallery model file (format {MODEL_FORMAT})")
    _check_arch(payload.get("arch"), path)
    return payload


def _check_arch(arch: Any, path: Path) -> None:
    """The declared architecture within sane bounds before anything is allocated for it."""
    from gallery.limits import check_dim, check_input

    if not isinstance(arch, dict) or "dim" not in arch or "image_size" not in arch:
        raise BadInput(f"{path}: `arch` must be a dict with dim and image_size")
    check_dim(arch["dim"], f"arch.dim of {path}")
    check_input(arch["image_size"], arch["image_size"], arch.get("in_channels", 3), f"arch of {path}")


@dataclass
class LoadedModel:
    backbone: nn.Module
    meta: dict[str, Any]

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the backbone from its arch config and weights, in eval mode."""
    from trainer.backbones import build_backbone

    payload = read_model_file(path)
    backbone = build_backbone(payload["arch"])
    backbone.load_state_dict(payload["state_dict"])
    backbone.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return LoadedModel(backbone, meta)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInput(f"cannot read checkpoint {path}: {exc.__class__.__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise BadInput(f"{path} is not a gallery training checkpoint")
    return payload

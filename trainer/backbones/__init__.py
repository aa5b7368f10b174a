"""Backbone registry: name -> builder(dim, image_size, in_channels, dropout) -> nn.Module.

The architecture config saved in every .pt (`{"name", "dim", "image_size",
"in_channels", "dropout"}`) is exactly what `build_backbone` needs to rebuild it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from gallery.errors import BadInput
from gallery.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
_FAMILIES = ("iresnet", "small")


def load_all() -> Registry[Callable[..., nn.Module]]:
    for family in _FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
    return BACKBONES


def arch_config(name: str, dim: int, image_size: int, in_channels: int = 3,
                dropout: float = 0.0, projection: int | None = None) -> dict[str, Any]:
    arch = {"name": name, "dim": int(dim), "image_size": int(image_size),
            "in_channels": int(in_channels), "dropout": float(dropout)}
    if projection:  # v2 of another dim than v1: a learned map to v1's space (trainer.projection)
        arch["projection"] = int(projection)
    return arch


def build_backbone(arch: dict[str, Any]) -> nn.Module:
    """Build an untrained backbone from its architecture config."""
    load_all()
    builder = BACKBONES.get(str(arch.get("name")))
    try:
        backbone = builder(dim=int(arch["dim"]), image_size=int(arch["image_size"]),
                           in_channels=int(arch.get("in_channels", 3)),
                           dropout=float(arch.get("dropout", 0.0)))
    except KeyError as exc:
        raise BadInput(f"architecture config lacks {exc.args[0]!r}") from None
    if arch.get("projection"):
        from trainer.projection import ProjectedBackbone

        backbone = ProjectedBackbone(backbone, int(arch["dim"]), int(arch["projection"]))
    return backbone


__all__ = ["BACKBONES", "arch_config", "build_backbone", "load_all"]

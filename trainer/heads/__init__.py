"""Classification heads: registry HEADS, `Head(dim, num_classes, **params)`.

Every head owns `weight` (num_classes x dim), computes `logits(e, labels,
weight=None)` with its margin and scale on the target column, and `forward(e,
labels)` = cross-entropy of those logits. Compat methods may pass another class
matrix as `weight` (BCT: frozen old prototypes).
"""

from __future__ import annotations

import importlib

from gallery.errors import BadInput
from gallery.registry import Registry

from trainer.heads.base import Head

HEADS: Registry[type[Head]] = Registry("head")
_MODULES = ("arcface", "cosface", "softmax")


def load_all() -> Registry[type[Head]]:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return HEADS


def build_head(name: str, dim: int, num_classes: int, **params: float) -> Head:
    cls = load_all().get(name)
    unknown = sorted(set(params) - set(cls.PARAMS))
    if unknown:
        raise BadInput(f"head {name!r} has no parameter(s) {', '.join(unknown)}; "
                       f"valid: {', '.join(cls.PARAMS) or 'none'}")
    return cls(dim, num_classes, **params)


__all__ = ["HEADS", "Head", "build_head", "load_all"]

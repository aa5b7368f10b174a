"""Where a store's model files are: recorded relative to the store's folder when they lie
inside it (the folder can move or be mounted elsewhere and still find them), absolute
otherwise; checked by sha256 before a rollout step makes a model the query model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gallery.errors import BadInput
from gallery.model_identity import model_sha256

if TYPE_CHECKING:
    from gallery.store import Store


def to_stored(store_path: str | Path, path: str | Path | None) -> str | None:
    """The form a model path is recorded in: relative to the store's folder when inside it."""
    if path is None:
        return None
    folder = Path(store_path).resolve().parent
    absolute = Path(path) if Path(path).is_absolute() else Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(folder))
    except ValueError:
        return str(absolute)


def resolve(store_path: str | Path, stored: str | None) -> Path | None:
    """A recorded model path -> a path usable from any working directory."""
    if not stored:
        return None
    path = Path(stored)
    return path if path.is_absolute() else Path(store_path).resolve().parent / path


def problem(store: "Store", version: str) -> str | None:
    """Why `version`'s recorded file cannot serve queries (None: it can, or it is embedding-only)."""
    info = store.model(version)
    if not info.has_encoder:
        return None
    path = Path(info.path) if info.path else None  # model() gives it resolved
    if path is None or not path.is_file():
        return f"the file of model {info.version} is missing: {path or '(none recorded)'}"
    digest = model_sha256(path)  # the .onnx and its external data files
    if digest != info.sha256:
        return (f"the file of model {info.version} changed: {path} has sha256 {digest[:12]}..., "
                f"the store recorded {info.sha256[:12]}...")
    return None


def require(store: "Store", version: str, allow_missing: bool = False) -> None:
    """BadInput (before any write) when `version` is to become the query model without its file."""
    why = problem(store, version)
    if why is not None and not allow_missing:
        raise BadInput(f"{why} (gallery model set-path {store.path} {version} PATH, or "
                       "--allow-missing-model to serve embedding queries only)")

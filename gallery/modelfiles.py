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


def problem(store: "Store", version: str, path: str | Path | None = None) -> str | None:
    """Why `version`'s file cannot serve queries (None: it can, or it is embedding-only).
    The file checked is `path` when given (upgrade's --model), else the recorded one."""
    info = store.model(version)
    if not info.has_encoder:
        return None
    if path is None:
        path = Path(info.path) if info.path else None  # model() gives it resolved
    if path is None or not Path(path).is_file():
        return f"the file of model {info.version} is missing: {path or '(none recorded)'}"
    digest = model_sha256(path)  # the .onnx and its external data files
    if digest != info.sha256:
        return (f"the file of model {info.version} changed: {path} has sha256 {digest[:12]}..., "
                f"the store recorded {info.sha256[:12]}...")
    return None


def require(store: "Store", version: str, allow_missing: bool = False, path: str | Path | None = None,
            remedy: str | None = None) -> str | None:
    """The one check before `version` becomes the query model (rollback, upgrade): BadInput
    (before any write) when its file is missing or is another model, unless `allow_missing`;
    then the problem is returned (the store serves embedding queries only) and None otherwise."""
    why = problem(store, version, path)
    if why is not None and not allow_missing:
        remedy = remedy or f"gallery model set-path {store.path} {version} PATH"
        raise BadInput(f"{why} ({remedy}, or --allow-missing-model to serve embedding queries only)")
    return why

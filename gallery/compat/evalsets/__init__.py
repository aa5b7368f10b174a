"""Evaluation sets for the compatibility checker, chosen from what --data points at."""

from __future__ import annotations

from pathlib import Path

from gallery.compat.evalsets.base import EvalSet
from gallery.compat.evalsets.embeddings import EmbeddingSet, read_embeddings, write_embeddings
from gallery.compat.evalsets.folder import FolderSet
from gallery.compat.evalsets.ijbc import IjbcSet, aggregate_templates, is_ijbc_dir
from gallery.compat.evalsets.insightface_bin import BinSet, read_bin
from gallery.errors import BadInput

__all__ = [
    "BinSet", "EmbeddingSet", "EvalSet", "FolderSet", "IjbcSet", "aggregate_templates",
    "open_evalset", "read_bin", "read_embeddings", "write_embeddings",
]


def open_evalset(data: str | Path) -> EvalSet:
    """An identity folder, an insightface .bin, or an IJB-C folder (has ijbc_face_tid_mid.txt)."""
    path = Path(data)
    if not path.exists():
        raise BadInput(f"evaluation data not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".bin":
            return BinSet(path)
        raise BadInput(f"{path}: expected an identity folder, an IJB-C folder or an insightface .bin")
    if is_ijbc_dir(path):
        return IjbcSet(path)
    return FolderSet(path)

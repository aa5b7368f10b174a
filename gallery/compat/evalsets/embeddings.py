"""Precomputed embeddings for both models in one HDF5 file (schema in docs/report-schema.md).

    /old, /new            (N x d) float: item embeddings by each model, same item order
    /reference            (N x d') float, optional: the independent reference model
    /labels               (N,) int or string, optional: identity per item -> 1:1 and 1:N protocols
    /pairs, /issame       (M x 2) int and (M,) bool, optional: fixed 1:1 pairs
    attrs old_sha256, new_sha256, reference_sha256, *_model_id: optional model identities

A user with private images runs the check from features alone. With --data as
well, the rows are the items of that evaluation set (e.g. IJB-C faces) and its
protocol is used.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from gallery.compat.evalsets.base import EvalSet
from gallery.compat.protocols import PairProtocol, ProtocolConfig
from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.h5safe import open_input

ROLES = ("old", "new", "reference")


def read_embeddings(path: str | Path) -> dict:
    """{"features": {role: array}, "labels", "pairs", "issame", "identities": {role: {...}}}."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"embeddings file not found: {path}")
    try:
        handle = open_input(path)
    except OSError:
        raise BadInput(f"{path} is not an HDF5 file") from None
    with handle:
        features = {r: np.asarray(handle[r], dtype=np.float32) for r in ROLES if r in handle}
        labels = _labels(handle["labels"][()]) if "labels" in handle else None
        pairs = np.asarray(handle["pairs"], dtype=np.int64) if "pairs" in handle else None
        issame = np.asarray(handle["issame"], dtype=bool) if "issame" in handle else None
        identities = {r: _identity(handle.attrs, r, path) for r in ROLES if r in features}
    _check(path, features, labels, pairs, issame)
    return {"features": features, "labels": labels, "pairs": pairs, "issame": issame,
            "identities": identities}


def _labels(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype.kind in ("S", "O"):
        return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in raw.ravel()])
    return raw.ravel()


def _identity(attrs, role: str, path: Path) -> dict:
    sha = attrs.get(f"{role}_sha256")
    model_id = attrs.get(f"{role}_model_id")
    return {"sha256": None if sha is None else str(sha), "model_id": None if model_id is None else str(model_id),
            "path": None, "format": "embeddings", "source": str(path)}


def _check(path: Path, features: dict, labels, pairs, issame) -> None:
    if "old" not in features or "new" not in features:
        raise BadInput(f"{path}: needs datasets /old and /new (embeddings by each model)")
    for role, array in features.items():
        if array.ndim != 2 or array.shape[0] == 0:
            raise BadInput(f"{path}: /{role} must be a non-empty (N x dim) array, got {array.shape}")
        if not np.isfinite(array).all():
            raise BadInput(f"{path}: /{role} contains NaN or infinity")
    # widths are the checker's call: an --adapter maps one width onto another
    if features["old"].shape[0] != features["new"].shape[0]:
        raise BadInput(f"{path}: /old has {features['old'].shape[0]} rows, /new {features['new'].shape[0]}")
    n = features["old"].shape[0]
    if any(a.shape[0] != n for a in features.values()):
        raise BadInput(f"{path}: every embeddings dataset needs {n} rows")
    if labels is not None and labels.size != n:
        raise BadInput(f"{path}: /labels has {labels.size} entries for {n} embeddings")
    if (pairs is None) != (issame is None):
        raise BadInput(f"{path}: /pairs and /issame go together")
    if pairs is not None:
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] != issame.size:
            raise BadInput(f"{path}: /pairs must be (M x 2) with M = len(/issame)")
        if pairs.min() < 0 or pairs.max() >= n:
            raise BadInput(f"{path}: /pairs indexes rows outside 0..{n - 1}")


def write_embeddings(path: str | Path, features: dict[str, np.ndarray], identities: dict[str, dict],
                     labels: np.ndarray | None = None, pairs: PairProtocol | None = None) -> None:
    """Write item embeddings in the format read_embeddings reads (atomic rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as handle:
        for role, array in features.items():
            handle.create_dataset(role, data=np.asarray(array, dtype=np.float32))
            for key in ("sha256", "model_id"):
                if identities.get(role, {}).get(key):
                    handle.attrs[f"{role}_{key}"] = identities[role][key]
        if labels is not None:
            labels = np.asarray(labels)
            handle.create_dataset("labels", data=labels.astype("S") if labels.dtype.kind == "U" else labels)
        if pairs is not None:
            handle.create_dataset("pairs", data=np.stack([pairs.left, pairs.right], axis=1).astype(np.int64))
            handle.create_dataset("issame", data=np.asarray(pairs.issame, dtype=bool))
    tmp.replace(path)


class EmbeddingSet(EvalSet):
    """Precomputed embeddings used as the evaluation set itself (labels and/or pairs inside)."""

    kind = "embeddings"

    def __init__(self, path: str | Path, data: dict | None = None) -> None:
        self.data = data if data is not None else read_embeddings(path)
        if self.data["labels"] is None and self.data["pairs"] is None:
            raise BadInput(f"{path}: without --data the file needs /labels or /pairs + /issame")
        super().__init__(str(path), file_sha256(path), self.data["features"]["old"].shape[0])

    def unit_labels(self) -> np.ndarray | None:
        return self.data["labels"]

    def pair_protocol(self, config: ProtocolConfig) -> PairProtocol | None:
        if self.data["pairs"] is not None:
            pairs = self.data["pairs"]
            return PairProtocol(pairs[:, 0], pairs[:, 1], self.data["issame"])
        return super().pair_protocol(config)

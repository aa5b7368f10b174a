"""The on-disk layout of a gallery store (a directory) and the model record.

Layout (schema version 4, see SCHEMA_VERSION; `gallery migrate` converts the single-file v1/v2 stores):
  STORE/MANIFEST         JSON, the commit point (manifest.py): format, schema_version, version
                         (bumped by every commit), dim (the first model's: each model record has
                         its own), dtype, created, active_model, aliases,
                         models {version: ModelInfo fields}, parents (rollout lineage),
                         segments [{file, start, rows, dim, bytes, sha256}], batches [{start, stop,
                         sha256, chain, model}], committed, chain, deletions [{file, rows, bytes,
                         sha256}], overlays {version: {files: [{..., dim, provenance}], plan: {...} | null,
                         adapter_plan: {...} | null}},
                         history [events], next_file
  STORE/seg-NNNNNN.h5    rows of one commit (segments.py): SEGMENT_COLUMNS + embedding (rows, dim);
                         each segment records its own dim: its model's (models of several dims, spaces.py)
  STORE/del-NNNNNN.npy   tombstones of one removal: (row, deleted_at)
  STORE/ovl-NNNNNN.h5    re-made vectors of one commit (a backfill, or an adapter's): row, embedding, content_hash
  STORE/plan-NNNNNN.npy  the rows a backfill run visits (fixed when it starts)
  STORE/LOCK             the writer's pid (informational; the lock is an flock on STORE itself)
  STORE/index*           the faiss index sidecar (gallery/index/sidecar.py), bound to a content checksum

Rows are numbered 0..committed-1 across the segments in manifest order; a row's number
never changes (compaction merges files, not rows). Strings are fixed-width UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

from gallery.errors import BadInput

FORMAT = "gallery.store"
EMPTY_CHAIN = "0" * 64  # the batch chain checksum of a store with no rows
# v4: models (and row segments) of several dimensions, overlay records with a provenance
# and dim, adapter plans. A v3 store (one dimension) is a valid v4 store: it is read and
# written as it is; `gallery migrate` bumps the number (a manifest commit), and so does the
# commit that first registers a model of another dimension (a v3 reader would misread it).
SCHEMA_VERSION = 4
READABLE_SCHEMAS = (3, 4)
PLAN_KEYS = ("plan", "adapter_plan")  # an overlay's unfinished backfill run, adapter run
DTYPES = ("float32", "float16")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Column name -> numpy dtype. Strings are fixed-width UTF-8 bytes, not HDF5
# variable-length strings: those live in the global heap, which a killed writer
# can leave corrupt; fixed-width chunks are rewritten in place.
ITEM_COLUMNS: dict[str, str] = {
    "id": "S128",
    "identity": "S128",
    "model": "S64",           # version that embedded the row
    "content_hash": "S64",    # hex sha256 of the source image file or of the embedding
    "enrolled_at": "float64",
    "deleted": "uint8",      # tombstone: never returned again, id never reused
    "deleted_at": "float64",
    "id_hash": "uint64",     # id_hash(id), see below (schema v2)
}


# What a row segment stores per row (tombstones live in deletion files).
SEGMENT_COLUMNS: dict[str, str] = {k: v for k, v in ITEM_COLUMNS.items() if k not in ("deleted", "deleted_at")}


def id_hash(ids: Sequence[str]) -> np.ndarray:
    """uint64 per id: the first 8 bytes, little endian, of blake2b(UTF-8 id, digest_size=8)."""
    digests = b"".join(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest() for i in ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def now_iso(timespec: str = "seconds") -> str:
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise BadInput(f"invalid model version name {version!r} (letters, digits, . _ -)")
    return version


@dataclass
class ModelInfo:
    """Everything the store knows about one encoder version.

    `sha256` is the identity of the model file (None for embedding-only galleries,
    which identify the model by `model_id`). `thresholds` maps a gallery model
    version to the decision threshold calibrated for queries by *this* model
    against rows embedded by that version.
    """

    version: str
    dim: int
    sha256: str | None = None
    model_id: str | None = None
    path: str | None = None
    format: str | None = None           # "onnx" | "pt" | "torchscript" | None
    input_size: tuple[int, int] | None = None
    color_order: str | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    compatible_with: str | None = None  # the older model this one was trained against
    thresholds: dict[str, float] = field(default_factory=dict)
    compat_report: dict | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)

    @classmethod
    def from_encoder(cls, version: str, encoder: Any) -> "ModelInfo":
        """Record an Encoder (gallery.encoder protocol) as model `version`."""
        spec, ident = encoder.spec, encoder.identity
        meta = dict(ident.get("metadata") or {})
        return cls(
            version=check_version_name(version),
            dim=int(encoder.dim),
            sha256=ident.get("sha256"),
            model_id=ident.get("model_id"),
            path=ident.get("path"),
            format=ident.get("format"),
            input_size=(spec.height, spec.width),
            color_order=spec.color_order,
            channels=spec.channels,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            compatible_with=meta.get("gallery.compatible_with"),
            metadata={str(k): str(v) for k, v in meta.items()},
        )

    @property
    def has_encoder(self) -> bool:
        return self.sha256 is not None

    def to_attrs(self) -> dict[str, Any]:
        """HDF5-friendly attrs: None is omitted, containers become JSON strings."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            out[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "ModelInfo":
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in attrs.items():
            if key not in known:
                continue  # attrs added by later code (rollout) are kept on disk, ignored here
            value = raw.item() if isinstance(raw, np.generic) else raw
            if isinstance(value, bytes):
                value = value.decode()
            if key in ("thresholds", "compat_report", "metadata", "input_size", "mean", "std"):
                value = json.loads(value)
                if key in ("input_size", "mean", "std"):
                    value = tuple(value)
            kwargs[key] = value
        kwargs["dim"] = int(kwargs["dim"])
        return cls(**kwargs)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("metadata")
        return data

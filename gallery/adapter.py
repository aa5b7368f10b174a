"""Embedding adapters: h maps old-model (v1) vectors into a new model's (v2) space.

An adapter is an ONNX file (written by `gallery train-adapter`) with one input, a
(N, from_dim) batch of raw v1 embeddings, and one output, (N, to_dim) L2-normalised
vectors comparable with the new model's embeddings. Its `metadata_props` name both
models (file sha256 and `gallery.model_id`) and the data it was trained on, so a
check or an upgrade can refuse an adapter made for other models. No torch here:
serving machines run adapters with onnxruntime like any encoder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gallery.errors import BadInput
from gallery.model_identity import model_sha256
from gallery.preprocess import META_PREFIX

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "gallery.adapter/1"
KEY = META_PREFIX + "adapter."  # gallery.adapter.<field>
# metadata every adapter carries; metadata_props are strings: ids as text ("" = none),
# integers in decimal, structured fields as JSON
TEXT_FIELDS = ("format", "from_sha256", "from_model_id", "to_sha256", "to_model_id",
               "data_fingerprint", "model_id")
INT_FIELDS = ("from_dim", "to_dim", "num_images")
JSON_FIELDS = ("arch", "training")
FIELDS = TEXT_FIELDS + INT_FIELDS + JSON_FIELDS


def adapter_metadata(values: dict[str, Any]) -> dict[str, str]:
    """`gallery.adapter.*` metadata_props from a dict holding every FIELDS entry."""
    missing = [f for f in FIELDS if f not in values]
    if missing:
        raise ValueError(f"adapter metadata lacks {', '.join(missing)}")
    props = {KEY + f: str(values[f] or "") for f in TEXT_FIELDS}
    props.update({KEY + f: str(int(values[f])) for f in INT_FIELDS})
    props.update({KEY + f: json.dumps(values[f], sort_keys=True, default=str) for f in JSON_FIELDS})
    return props


@dataclass
class Adapter:
    """An adapter file opened in onnxruntime: `apply(old raw vectors) -> v2-space unit vectors`."""

    path: Path
    session: Any
    meta: dict[str, Any]
    identity: dict[str, Any]

    @property
    def from_dim(self) -> int:
        return int(self.meta["from_dim"])

    @property
    def to_dim(self) -> int:
        return int(self.meta["to_dim"])

    def apply(self, vectors: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.from_dim:
            raise BadInput(f"adapter {self.path.name} maps {self.from_dim}-d vectors, "
                           f"got shape {vectors.shape}")
        if not len(vectors):
            return np.zeros((0, self.to_dim), np.float32)
        name = self.session.get_inputs()[0].name
        parts = [self.session.run(None, {name: vectors[s : s + batch_size]})[0]
                 for s in range(0, len(vectors), batch_size)]
        out = np.asarray(np.concatenate(parts), dtype=np.float32)
        if not np.isfinite(out).all():
            raise BadInput(f"adapter {self.path.name} produced NaN or inf vectors")
        return out

    def check_models(self, old: dict, new: dict) -> None:
        """Refuse an adapter trained for other models (by file sha256, else model_id)."""
        for side, identity in (("from", old), ("to", new)):
            role = "old" if side == "from" else "new"
            if not _same_model(self.meta, side, identity):
                raise BadInput(
                    f"adapter {self.path.name} maps {str(self.meta['from_sha256'])[:12]} -> "
                    f"{str(self.meta['to_sha256'])[:12]}, but the {role} model is "
                    f"{str(identity.get('sha256'))[:12]} (train an adapter for these models)")

    def describe(self) -> dict[str, Any]:
        return {**self.identity, "from_dim": self.from_dim, "to_dim": self.to_dim,
                "from_sha256": self.meta["from_sha256"], "to_sha256": self.meta["to_sha256"],
                "from_model_id": self.meta["from_model_id"], "to_model_id": self.meta["to_model_id"],
                "data_fingerprint": self.meta["data_fingerprint"], "arch": self.meta["arch"],
                "training": self.meta["training"]}


def _same_model(meta: dict, side: str, identity: dict) -> bool:
    sha, model_id = identity.get("sha256"), identity.get("model_id")
    if sha and sha == meta.get(f"{side}_sha256"):
        return True
    # the same weights re-exported (.pt -> .onnx) keep their model_id but not their sha256
    return bool(model_id) and model_id == meta.get(f"{side}_model_id")


def read_adapter_metadata(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    if props.get(KEY + "format") != ADAPTER_FORMAT:
        raise BadInput(f"{path} is not a gallery adapter (no {KEY}format = {ADAPTER_FORMAT}); "
                       "make one with `gallery train-adapter`")
    missing = [KEY + f for f in FIELDS if KEY + f not in props]
    if missing:
        raise BadInput(f"{path}: adapter metadata lacks {', '.join(missing)}")
    meta: dict[str, Any] = {f: props[KEY + f] or None for f in TEXT_FIELDS}
    try:
        meta.update({f: int(props[KEY + f]) for f in INT_FIELDS})
        meta.update({f: json.loads(props[KEY + f]) for f in JSON_FIELDS})
    except ValueError as exc:
        raise BadInput(f"{path}: malformed adapter metadata ({exc})") from None
    return meta


def load_adapter(path: str | Path) -> Adapter:
    import onnxruntime as ort  # CLI start-up: only commands that run a model pay its import

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"adapter file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"cannot load adapter {path}: {first[:200]}") from None
    meta = read_adapter_metadata(dict(session.get_modelmeta().custom_metadata_map), path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].shape[1] != int(meta["from_dim"]):
        raise BadInput(f"{path}: adapter input is not (N, {meta['from_dim']})")
    if not outputs or len(outputs[0].shape) != 2 or outputs[0].shape[1] != int(meta["to_dim"]):
        raise BadInput(f"{path}: adapter output is not (N, {meta['to_dim']})")
    identity = {"sha256": model_sha256(path), "model_id": meta["model_id"],  # external data included
                "path": str(path.resolve()), "format": "adapter"}
    return Adapter(path, session, meta, identity)

"""A face_recognition / dlib gallery as store version v1 (embedding-only).

The face_recognition library's users keep 128-d encodings from dlib's
`dlib_face_recognition_resnet_model_v1` next to a name per face, usually pickled.
We read only pickle-free formats (a pickle can run code on load):

- .npy   (N, 128) float array, with `ids`: a CSV `id,label` (one row per encoding)
- .csv   header `id,label,<128 value columns>`, one encoding per row
- .h5    datasets `encodings` (N, 128), `ids` and `labels` (strings)

The store records the model as "dlib-resnet-v1" with no encoder file: these rows
are the backfill-free starting point a compatible v2 is trained against.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from gallery.arrayfiles import READ_ERRORS, load_npy
from gallery.errors import BadInput
from gallery.h5safe import open_input
from gallery.store.core import Store
from gallery.store.schema import ModelInfo

log = logging.getLogger(__name__)

DLIB_MODEL_ID = "dlib-resnet-v1"
DLIB_DIM = 128
DLIB_METADATA = {
    "gallery.arch": "dlib_face_recognition_resnet_model_v1",
    "gallery.dim": str(DLIB_DIM),
    "gallery.source": "face_recognition/dlib encodings (embedding-only)",
    # face_recognition compares raw encodings by Euclidean distance <= 0.6
    "gallery.face_recognition_tolerance": "0.6",
}


def read_dlib_encodings(path: str | Path, ids: str | Path | None = None
                        ) -> tuple[np.ndarray, list[str], list[str]]:
    """(encodings (N,128) float32, ids, labels) from .npy(+ids CSV), .csv or .h5."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"encodings file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if ids is None:
            raise BadInput(f"{path.name}: a .npy holds only numbers; pass --ids FILE.csv (id,label rows)")
        encodings = _read_npy(path)
        item_ids, labels = _read_id_csv(Path(ids))
    elif suffix == ".csv":
        encodings, item_ids, labels = _read_csv(path)
    elif suffix in (".h5", ".hdf5"):
        encodings, item_ids, labels = _read_h5(path)
    else:
        raise BadInput(f"dlib encodings must be .npy, .csv or .h5 (pickles are refused), got {path.name}")
    return _checked(encodings, item_ids, labels, path)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return load_npy(path)
    except ValueError as exc:
        raise BadInput(f"{path}: not a plain numeric .npy ({str(exc)[:80]})") from None
    except READ_ERRORS as exc:
        raise BadInput(f"{path}: not a readable .npy file ({exc.__class__.__name__})") from None


def _read_id_csv(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise BadInput(f"ids file not found: {path}")
    rows = _csv_rows(path)
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"] or len(rows[0]) != 2:
        raise BadInput(f"{path}: header must be exactly id,label")
    bad = [n for n, r in enumerate(rows[1:], start=2) if len(r) != 2]
    if bad:
        raise BadInput(f"{path}:{bad[0]}: expected 2 columns (id,label)")
    return [r[0] for r in rows[1:]], [r[1] for r in rows[1:]]


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [r for r in csv.reader(handle) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(f"{path}: not a UTF-8 CSV text file ({exc.__class__.__name__})") from None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    rows = _csv_rows(path)
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"]:
        raise BadInput(f"{path}: header must start with id,label followed by the encoding columns")
    width = len(rows[0])
    values, item_ids, labels = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise BadInput(f"{path}:{line}: expected {width} columns, got {len(row)}")
        try:
            values.append([float(v) for v in row[2:]])
        except ValueError:
            raise BadInput(f"{path}:{line}: encoding values must be numbers") from None
        item_ids.append(row[0])
        labels.append(row[1])
    return np.asarray(values, dtype=np.float64).reshape(len(values), width - 2), item_ids, labels


def _read_h5(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    try:
        with open_input(path) as handle:
            missing = [k for k in ("encodings", "ids", "labels") if k not in handle]
            if missing:
                raise BadInput(f"{path}: missing dataset(s) {', '.join(missing)} "
                               "(expected encodings, ids, labels)")
            encodings = np.asarray(handle["encodings"][...])
            item_ids = [_text(v) for v in handle["ids"][...]]
            labels = [_text(v) for v in handle["labels"][...]]
    except READ_ERRORS as exc:
        raise BadInput(f"{path}: not a readable HDF5 file ({exc.__class__.__name__})") from None
    return encodings, item_ids, labels


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _checked(encodings: np.ndarray, item_ids: list[str], labels: list[str], path: Path
             ) -> tuple[np.ndarray, list[str], list[str]]:
    if not np.issubdtype(encodings.dtype, np.number):
        raise BadInput(f"{path}: encodings must be numeric, got dtype {encodings.dtype}")
    if encodings.ndim != 2 or encodings.shape[1] != DLIB_DIM:
        raise BadInput(f"{path}: dlib encodings are (N, {DLIB_DIM}), got shape {encodings.shape}")
    if len(encodings) == 0:
        raise BadInput(f"{path}: no encodings")
    if len(item_ids) != len(encodings) or len(labels) != len(encodings):
        raise BadInput(f"{path}: {len(encodings)} encodings but {len(item_ids)} ids and {len(labels)} labels")
    bad = np.flatnonzero(~np.isfinite(encodings).all(axis=1))
    if bad.size:
        raise BadInput(f"{path}: encoding row {bad[0]} contains NaN or inf")
    if any(not label for label in labels):
        raise BadInput(f"{path}: empty label in row {labels.index('') + 1}")
    return encodings.astype(np.float32), item_ids, labels


def import_dlib(encodings_path: str | Path, store_path: str | Path, ids: str | Path | None = None,
                version: str = "dlib-v1", dtype: str = "float32") -> dict[str, Any]:
    """Create a new store holding a dlib gallery as model `version` (model_id dlib-resnet-v1).

    Everything is read and validated before the store is created; the store appears with
    its rows and its `import_dlib` record or not at all (Store.create's `fill`), so an
    import killed half-way can simply be run again.
    """
    encodings, item_ids, labels = read_dlib_encodings(encodings_path, ids)
    model = ModelInfo(version=version, dim=DLIB_DIM, model_id=DLIB_MODEL_ID, format=None,
                      metadata=dict(DLIB_METADATA))
    store_path = Path(store_path)
    enrolled: dict[str, Any] = {}

    def fill(store: Store) -> None:
        enrolled.update(store.enroll(encodings, item_ids, labels))
        store.append_history({"event": "import_dlib", "source": str(encodings_path), "rows": len(item_ids)})

    Store.create(store_path, model, dtype=dtype, fill=fill).close()
    log.info("imported %d dlib encodings into %s", len(item_ids), store_path)
    return {"store": str(store_path), "version": version, "model_id": DLIB_MODEL_ID,
            "items": enrolled["rows"], "identities": len(set(labels)), "dim": DLIB_DIM}

"""IJB-C (and IJB-B) meta files, in the layout of insightface's IJB evaluation.

    DIR/meta/ijbc_face_tid_mid.txt         "<image> <template_id> <media_id>" per face
    DIR/meta/ijbc_template_pair_label.txt  "<template_1> <template_2> <0|1>" (1:1)
    DIR/meta/ijbc_1N_gallery_G1.csv, _G2.csv, ijbc_1N_probe_mixed.csv
                                           CSV with header TEMPLATE_ID,SUBJECT_ID,... (1:N)
    DIR/meta/ijbc_name_5pts_score.txt      optional "<image> x1 y1 .. x5 y5 score": aligned crops
    DIR/loose_crop/<image>

Files may also sit directly in DIR. Faces are aggregated into templates: L2-normalise
each face, mean within a media, sum over the media of a template, L2-normalise.
The mixed probes search G1 and G2 separately (SearchProtocol.galleries), as the IJB-C
1:N protocol does: a probe whose subject is in G2 is a non-mated search of G1 and vice versa.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from gallery.compat.evalsets.base import EvalSet
from gallery.compat.protocols import PairProtocol, ProtocolConfig, SearchProtocol
from gallery.encoder import Encoder
from gallery.errors import BadInput
from gallery.faces.align import align_face
from gallery.fingerprint import file_sha256, strings_sha256
from gallery.preprocess import PreprocessSpec, l2_normalize, load_image, to_color_order

FACES = "ijbc_face_tid_mid.txt"
PAIRS = "ijbc_template_pair_label.txt"
LANDMARKS = "ijbc_name_5pts_score.txt"
GALLERIES = ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv")
GALLERY_NAMES = ("G1", "G2")
PROBES = "ijbc_1N_probe_mixed.csv"


def is_ijbc_dir(path: Path) -> bool:
    return path.is_dir() and _find(path, FACES) is not None


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / "meta" / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def _rows(path: Path, fields: int, what: str) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields:
                raise BadInput(f"{path} line {number}: expected {fields} columns ({what}), got {len(parts)}")
            rows.append(parts)
    if not rows:
        raise BadInput(f"{path} is empty")
    return rows


def _ints(values: list[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError:
        raise BadInput(f"{path}: column {column} must hold integers") from None


def read_faces(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image names, template ids, media ids) per face."""
    rows = _rows(path, 3, "image template_id media_id")
    names = [r[0] for r in rows]
    return names, _ints([r[1] for r in rows], path, "template_id"), _ints([r[2] for r in rows], path, "media_id")


def read_template_pairs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = _rows(path, 3, "template_1 template_2 label")
    labels = _ints([r[2] for r in rows], path, "label")
    if not np.isin(labels, (0, 1)).all():
        raise BadInput(f"{path}: labels must be 0 or 1")
    return _ints([r[0] for r in rows], path, "template_1"), _ints([r[1] for r in rows], path, "template_2"), labels == 1


def read_template_subjects(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids) from a 1:N CSV; one row per image, templates deduplicated."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip().upper() for h in next(reader, [])]
        if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
            raise BadInput(f"{path}: header must name TEMPLATE_ID and SUBJECT_ID columns, got {header[:4]}")
        t_col, s_col = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
        rows = [r for r in reader if r]
    if not rows or any(len(r) <= max(t_col, s_col) for r in rows):
        raise BadInput(f"{path}: rows are missing the TEMPLATE_ID/SUBJECT_ID columns")
    templates = _ints([r[t_col] for r in rows], path, "TEMPLATE_ID")
    subjects = _ints([r[s_col] for r in rows], path, "SUBJECT_ID")
    unique, first = np.unique(templates, return_index=True)
    return unique, subjects[first]


def aggregate_templates(features: np.ndarray, templates: np.ndarray, media: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted template ids, template embeddings): normalise faces, mean per media, sum, normalise."""
    faces = l2_normalize(features).astype(np.float64)
    order = np.lexsort((media, templates))
    keys_t, keys_m = templates[order], media[order]
    new_group = np.r_[True, (np.diff(keys_t) != 0) | (np.diff(keys_m) != 0)]
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.r_[starts, order.size])
    media_means = np.add.reduceat(faces[order], starts, axis=0) / counts[:, None]
    media_templates = keys_t[starts]
    t_starts = np.flatnonzero(np.r_[True, np.diff(media_templates) != 0])
    summed = np.add.reduceat(media_means, t_starts, axis=0)
    return media_templates[t_starts], l2_normalize(summed)


class IjbcSet(EvalSet):
    kind = "ijbc"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        faces_file = _find(self.root, FACES)
        if faces_file is None:
            raise BadInput(f"{root}: no {FACES} (in meta/ or the folder itself)")
        self.names, self.face_templates, self.face_media = read_faces(faces_file)
        self.template_ids = np.unique(self.face_templates)
        self.pairs_file = _find(self.root, PAIRS)
        self.search_files = [_find(self.root, n) for n in (*GALLERIES, PROBES)]
        has_search = self.search_files[-1] is not None and any(self.search_files[:2])
        if self.pairs_file is None and not has_search:
            raise BadInput(f"{root}: needs {PAIRS} (1:1) or gallery + {PROBES} (1:N) meta files")
        if not has_search:
            self.search_files = []
        self.image_dir = self.root / "loose_crop" if (self.root / "loose_crop").is_dir() else self.root / "images"
        landmarks = _find(self.root, LANDMARKS)
        self.landmarks = self._read_landmarks(landmarks) if landmarks else None
        meta = [f for f in (faces_file, self.pairs_file, *self.search_files, landmarks) if f]
        super().__init__(str(root), strings_sha256(f"{f.name}:{file_sha256(f)}" for f in meta), len(self.names))

    def _read_landmarks(self, path: Path) -> dict[str, np.ndarray]:
        rows = _rows(path, 12, "image x1 y1 ... x5 y5 score")
        try:
            return {r[0]: np.asarray(r[1:11], dtype=np.float64).reshape(5, 2) for r in rows}
        except ValueError:
            raise BadInput(f"{path}: landmark columns must be numbers") from None

    def image_batches(self, encoder: Encoder, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.names), batch_size):
            yield np.stack([self._load(n, encoder) for n in self.names[start : start + batch_size]])

    def _load(self, name: str, encoder: Encoder) -> np.ndarray:
        path = self.image_dir / name
        if not path.is_file():
            raise BadInput(f"IJB-C image not found: {path}")
        spec = encoder.spec
        if self.landmarks is None or spec.height != spec.width:
            return load_image(path, spec)
        if name not in self.landmarks:
            raise BadInput(f"no landmarks for IJB-C image {name} in {LANDMARKS}")
        rgb = load_image(path, PreprocessSpec(*_native_size(path), "RGB"))
        crop = align_face(rgb, self.landmarks[name], size=spec.height)
        return to_color_order(crop, spec)

    def to_units(self, item_features: np.ndarray) -> np.ndarray:
        ids, feats = aggregate_templates(item_features, self.face_templates, self.face_media)
        assert np.array_equal(ids, self.template_ids)  # both are the sorted unique template ids
        return feats

    def _unit(self, templates: np.ndarray, source: Path) -> np.ndarray:
        index = np.searchsorted(self.template_ids, templates)
        index = np.minimum(index, self.template_ids.size - 1)
        missing = self.template_ids[index] != templates
        if missing.any():
            raise BadInput(f"{source}: template {int(templates[missing][0])} has no face in {FACES}")
        return index

    def pair_protocol(self, config: ProtocolConfig) -> PairProtocol | None:
        if self.pairs_file is None:
            return None
        t1, t2, issame = read_template_pairs(self.pairs_file)
        return PairProtocol(self._unit(t1, self.pairs_file), self._unit(t2, self.pairs_file), issame)

    def search_protocol(self, config: ProtocolConfig) -> SearchProtocol | None:
        if not self.search_files:
            return None
        files = {name: f for name, f in zip(GALLERY_NAMES, self.search_files[:2]) if f is not None}
        galleries = {name: read_template_subjects(f) for name, f in files.items()}
        p_templates, p_subjects = read_template_subjects(self.search_files[-1])
        for name, (_, subjects) in galleries.items():
            if len(galleries) > 1 and not np.isin(p_subjects, subjects).any():
                raise BadInput(f"{files[name]}: no probe in {PROBES} has a subject of gallery {name}")
        sizes = np.cumsum([0] + [t.size for t, _ in galleries.values()])
        return SearchProtocol(
            gallery=np.concatenate([self._unit(t, files[n]) for n, (t, _) in galleries.items()]),
            gallery_labels=np.concatenate([s for _, s in galleries.values()]),
            probes=self._unit(p_templates, self.search_files[-1]),
            probe_labels=p_subjects,
            # the protocol searches G1 and G2 separately; one gallery file: nothing to split
            galleries={} if len(galleries) < 2 else
            {name: np.arange(sizes[k], sizes[k + 1]) for k, name in enumerate(galleries)},
        )

    def describe(self) -> dict:
        out = super().describe()
        out.update(num_templates=int(self.template_ids.size), aligned=self.landmarks is not None)
        return out


def _native_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size[1], image.size[0]

"""Enrol and search with face photos: the `--detect` / `--landmarks` hook of the store CLI.

Same contract as gallery.store.sources.enroll_images and gallery.search.search_images,
except each photo becomes an aligned face crop (YuNet landmarks, or given ones)
before the store's encoder sees it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from gallery.encoder import Encoder, embed_images
from gallery.errors import BadInput
from gallery.faces.align import read_landmarks
from gallery.faces.crop import FaceCropper
from gallery.fingerprint import file_sha256

log = logging.getLogger(__name__)


def make_cropper(encoder: Encoder, detector: str | Path | None = None,
                 landmarks: str | Path | None = None) -> FaceCropper:
    """Landmarks file first (no detection needed for listed photos), YuNet for the rest."""
    points = read_landmarks(landmarks) if landmarks else None
    yunet = None
    if detector is not None or points is None:
        from gallery.faces.detect import YuNetDetector

        yunet = YuNetDetector(detector)
    alignment = encoder.identity.get("metadata", {}).get("gallery.alignment")
    if alignment == "none":
        log.warning("model declares no face alignment (preset raw); using ArcFace 5-point crops")
    return FaceCropper(encoder.spec, yunet, points)


def embed_face_photos(encoder: Encoder, cropper: FaceCropper, paths: Sequence[Path],
                      batch_size: int = 64, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Aligned crops embedded in batches; a photo without a face raises BadInput naming it."""
    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    parts = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        parts.append(embed_images(encoder, cropper.crop_many(chunk)))
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


def enroll_face_images(store: Any, root: str | Path, labels: str | Path | None = None,
                       model_path: str | Path | None = None, loader: Any = None,
                       batch_size: int = 64, progress: Callable[[int], None] | None = None,
                       detector: str | Path | None = None, landmarks: str | Path | None = None,
                       **load_kwargs: Any) -> dict:
    """Like sources.enroll_images, on aligned faces; every photo is cropped before any write."""
    from gallery.store import sources

    store.require_writer()
    paths, ids, identities = sources.list_labelled_images(root, labels)
    encoder = sources.model_encoder(store, None, model_path, loader, **load_kwargs)
    cropper = make_cropper(encoder, detector, landmarks)
    emb = embed_face_photos(encoder, cropper, paths, batch_size, progress)
    hashes = [file_sha256(p) for p in paths]
    return store.enroll(emb, ids, identities, model_version=store.active_model, content_hashes=hashes)


def search_face_images(store: Any, paths: list, detector: str | Path | None = None,
                       landmarks: str | Path | None = None, model_path: str | Path | None = None,
                       loader: Any = None, batch_size: int = 64, progress: Any = None,
                       **kwargs: Any) -> tuple[Any, list[str]]:
    """Like gallery.search.search_images, on aligned faces of the query photos."""
    from gallery.search import search
    from gallery.store.sources import expand_image_args, model_encoder

    files = expand_image_args(paths)
    load_kwargs = {k: kwargs.pop(k) for k in ("providers", "require_gpu") if k in kwargs}
    encoder = model_encoder(store, kwargs.get("query_version"), model_path, loader, **load_kwargs)
    cropper = make_cropper(encoder, detector, landmarks)
    queries = embed_face_photos(encoder, cropper, files, batch_size, progress)
    return search(store, queries, **kwargs), [str(f) for f in files]

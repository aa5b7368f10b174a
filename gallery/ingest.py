"""Images in, per item: how a model's photos become its input, and what happens to the ones
that cannot (unreadable file, no face found).

- The model's declared preprocessing is enforced: a model whose metadata declares
  `gallery.alignment = arcface-5pt` (face presets) gets YuNet-detected, 5-point-aligned
  crops by default; `detect=False` (`--no-detect`) opts out for crops already aligned.
- A bad item is an item error: `on_error="fail"` raises the first one (nothing written),
  `"skip"` leaves it out and reports it, so one photo without a face no longer aborts a batch.
- `enroll_images` checks ids (and with `skip_existing`, identical content) against the store
  *before* any encoding, so a re-run costs only the new photos.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from gallery.encoder import embed_images, load_registered
from gallery.errors import BadInput
from gallery.faces.crop import make_cropper
from gallery.fingerprint import file_sha256
from gallery.imagefolder import expand_image_args, list_labelled_images
from gallery.preprocess import load_image

if TYPE_CHECKING:
    from gallery.encoder import Encoder
    from gallery.store import Store

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
ALIGNED_FACES = "arcface-5pt"  # gallery.faces.presets.ALIGN_ARCFACE (not imported: needs no cv2 here)


def declares_faces(encoder: "Encoder") -> bool:
    """The model says its input is an aligned face crop."""
    return encoder.identity.get("metadata", {}).get("gallery.alignment") == ALIGNED_FACES


def uses_faces(encoder: "Encoder", detect: bool | None = None) -> bool:
    """Whether `encoder`'s images are detected + aligned: as asked, else as the model declares."""
    return declares_faces(encoder) if detect is None else detect


def image_loader(encoder: "Encoder", detect: bool | None = None, detector: str | Path | None = None,
                 landmarks: str | Path | None = None) -> Callable[[Path], np.ndarray]:
    """path -> HxWxC uint8 ready for `embed_images`: aligned face crops when the model declares
    face alignment (unless detect=False) or landmarks are given, else the plain resize."""
    faces = bool(landmarks) or uses_faces(encoder, detect)
    if not faces:
        return lambda path: load_image(path, encoder.spec)
    try:
        cropper = make_cropper(encoder, detector if detect is not False else None, landmarks,
                               use_detector=detect is not False)
    except BadInput as exc:
        if detect is None:  # detection came from the model's declaration: say how to opt out
            raise BadInput(f"{exc} (the model declares aligned face input; --no-detect if the images "
                           "are aligned crops already)") from None
        raise
    return cropper.crop


@dataclass
class Embedded:
    embeddings: np.ndarray                 # (len(kept), dim)
    kept: list[int]                        # input positions that were embedded
    errors: list[dict] = field(default_factory=list)  # {"item", "error"} per skipped input


def embed_items(encoder: "Encoder", paths: Sequence[Path], load: Callable[[Path], np.ndarray],
                on_error: str = "fail", batch_size: int = 64,
                progress: Callable[[int], None] | None = None, names: Sequence[str] | None = None) -> Embedded:
    """Load and embed each path; a BadInput for one item fails the call or skips the item."""
    if on_error not in ON_ERROR:
        raise BadInput(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    parts, kept, errors, batch, batch_pos = [], [], [], [], []
    for pos, path in enumerate(paths):
        try:
            batch.append(load(Path(path)))
            batch_pos.append(pos)
        except BadInput as exc:
            if on_error == "fail":
                raise
            errors.append({"item": str(names[pos] if names else path), "error": str(exc)})
        if len(batch) == batch_size or pos == len(paths) - 1:
            if batch:
                parts.append(embed_images(encoder, batch))
                kept += batch_pos
            batch, batch_pos = [], []
        if progress is not None:
            progress(1)
    emb = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
    return Embedded(emb, kept, errors)


def enroll_images(store: "Store", root: str | Path, labels: str | Path | None = None,
                  model_path: str | Path | None = None, batch_size: int = 64,
                  progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                  skip_existing: bool = False, on_error: str = "fail", detect: bool | None = None,
                  detector: str | Path | None = None, landmarks: str | Path | None = None,
                  **load_kwargs: Any) -> dict:
    """Encode ROOT's images with the active model and enrol them (ids = relative paths), with a
    per-item report: `skipped_existing` (ids, or identical files, already enrolled) and `errors`."""
    store.require_writer()
    if on_error not in ON_ERROR:
        raise BadInput(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    paths, ids, identities = list_labelled_images(root, labels)
    hashes = [file_sha256(p) for p in paths]
    present = store.find_ids(ids)
    skipped = []
    if present and not skip_existing:  # before any encoding: a re-run fails in milliseconds
        clash = [i for i in ids if i in present]
        raise BadInput(f"ids already in store (removed ids are never reused): {', '.join(clash[:5])}"
                       + (" ..." if len(clash) > 5 else "") + "; --skip-existing enrols only the new ones")
    if skip_existing:
        columns = store.columns()
        live_hashes = set(columns["content_hash"][~columns["deleted"]].tolist())
        keep = []
        for n, (item, digest) in enumerate(zip(ids, hashes)):
            if item in present or digest in live_hashes:
                skipped.append({"item": item, "reason": "id in store" if item in present else "same file enrolled"})
            else:
                keep.append(n)
        paths, ids, hashes = [paths[n] for n in keep], [ids[n] for n in keep], [hashes[n] for n in keep]
        identities = [identities[n] for n in keep]
    report = {"model": store.active_model, "rows": 0, "skipped_existing": skipped, "errors": []}
    if not paths:
        return report
    if on_total is not None:
        on_total(len(paths))
    encoder = load_registered(store.model(), store.path, model_path, **load_kwargs)
    load = image_loader(encoder, detect, detector, landmarks)
    done = embed_items(encoder, paths, load, on_error, batch_size, progress, names=ids)
    report["errors"] = done.errors
    if not done.kept:
        return report
    pick = done.kept
    result = store.enroll(done.embeddings, [ids[n] for n in pick], [identities[n] for n in pick],
                          model_version=store.active_model, content_hashes=[hashes[n] for n in pick])
    return {**result, **{k: report[k] for k in ("skipped_existing", "errors")}}


def embed_queries(encoder: "Encoder", paths: Sequence[str | Path], batch_size: int = 64,
                  progress: Callable[[int], None] | None = None, on_error: str = "skip",
                  detect: bool | None = None, detector: str | Path | None = None,
                  landmarks: str | Path | None = None, on_total: Callable[[int], None] | None = None,
                  ) -> tuple[np.ndarray, list[str], list[dict]]:
    """Query images (files or folders) embedded by `encoder`: (embeddings, names of the
    embedded ones, errors of the skipped ones); `on_total(images)`, then `progress(1)` per image."""
    files = expand_image_args(paths)
    if on_total is not None:
        on_total(len(files))
    done = embed_items(encoder, files, image_loader(encoder, detect, detector, landmarks), on_error,
                       batch_size, progress)
    return done.embeddings, [str(files[n]) for n in done.kept], done.errors

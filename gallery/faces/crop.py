"""Photo path -> aligned face crop in the encoder's size and colour order.

This is the hook enrolment and search use for face photos (`--detect`, or a
landmarks file): the result is exactly what gallery.encoder.embed_images expects.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gallery.errors import BadInput
from gallery.faces.align import align_face, read_landmarks
from gallery.faces.detect import YuNetDetector, main_face
from gallery.preprocess import PreprocessSpec, to_color_order

log = logging.getLogger(__name__)


def load_photo(path: str | Path) -> np.ndarray:
    """Decode a photo to HxWx3 RGB uint8, honouring EXIF orientation (phone photos)."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInput(f"not a readable image: {path} ({exc.__class__.__name__})") from None


class FaceCropper:
    """Aligns one face per photo, from given landmarks or from YuNet detection."""

    def __init__(self, spec: PreprocessSpec, detector: YuNetDetector | None = None,
                 landmarks: Mapping[str, np.ndarray] | None = None) -> None:
        if spec.height != spec.width:
            raise BadInput(
                f"face alignment needs a square encoder input, got {spec.height}x{spec.width}"
            )
        if detector is None and landmarks is None:
            raise BadInput("face cropping needs a detector or a landmarks file")
        self.spec = spec
        self.detector = detector
        self.landmarks = dict(landmarks or {})

    def landmarks_for(self, path: Path, image: np.ndarray) -> np.ndarray:
        for key in (str(path), path.name):
            if key in self.landmarks:
                return self.landmarks[key]
        if self.detector is None:
            raise BadInput(f"no landmarks given for {path.name}")
        face = main_face(self.detector.detect(image))
        if face is None:
            raise BadInput(f"no face detected in {path}")
        return face.landmarks

    def crop(self, path: str | Path) -> np.ndarray:
        """One aligned crop, HxWxC uint8 in the spec's colour order."""
        path = Path(path)
        return self.crop_image(load_photo(path), path)

    def crop_image(self, image: np.ndarray, name: str | Path) -> np.ndarray:
        """The same crop of a photo already decoded to HxWx3 RGB uint8 (an HTTP upload:
        gallery/serve); `name` keys the landmarks and names the photo in errors."""
        aligned = align_face(image, self.landmarks_for(Path(name), image), size=self.spec.width)
        return to_color_order(aligned, self.spec)

    def crop_many(self, paths: Sequence[str | Path],
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Aligned crops of every photo, NxHxWxC uint8; the first bad photo raises BadInput."""
        crops = []
        for path in paths:
            crops.append(self.crop(path))
            if progress is not None:
                progress(1)
        if not crops:
            return np.zeros((0, self.spec.height, self.spec.width, self.spec.channels), np.uint8)
        return np.stack(crops)


def make_cropper(encoder: Any, detector: str | Path | None = None,
                 landmarks: str | Path | None = None, use_detector: bool = True) -> FaceCropper:
    """The cropper of a model (`encoder`: its spec and declared alignment): landmarks file
    first (no detection needed for listed photos), YuNet for the rest (never with
    use_detector=False: `--no-detect` with a landmarks file)."""
    points = read_landmarks(landmarks) if landmarks else None
    yunet = YuNetDetector(detector) if use_detector and (detector is not None or points is None) else None
    alignment = encoder.identity.get("metadata", {}).get("gallery.alignment")
    if alignment == "none":
        log.warning("model declares no face alignment (preset raw); using ArcFace 5-point crops")
    return FaceCropper(encoder.spec, yunet, points)

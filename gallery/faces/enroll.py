"""The face cropper of a model: YuNet landmarks, or given ones, to aligned crops.

gallery.ingest uses it for enrolment, image search and the rest whenever the model
declares aligned face input (or `--detect` / `--landmarks` asks for it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gallery.encoder import Encoder
from gallery.faces.align import read_landmarks
from gallery.faces.crop import FaceCropper

log = logging.getLogger(__name__)


def make_cropper(encoder: Encoder, detector: str | Path | None = None,
                 landmarks: str | Path | None = None, use_detector: bool = True) -> FaceCropper:
    """Landmarks file first (no detection needed for listed photos), YuNet for the rest
    (never with use_detector=False: `--no-detect` with a landmarks file)."""
    points = read_landmarks(landmarks) if landmarks else None
    yunet = None
    if use_detector and (detector is not None or points is None):
        from gallery.faces.detect import YuNetDetector

        yunet = YuNetDetector(detector)
    alignment = encoder.identity.get("metadata", {}).get("gallery.alignment")
    if alignment == "none":
        log.warning("model declares no face alignment (preset raw); using ArcFace 5-point crops")
    return FaceCropper(encoder.spec, yunet, points)

"""Face detection + 5 landmarks with OpenCV's YuNet (cv2.FaceDetectorYN).

OpenCV is the optional `[faces]` extra; the YuNet ONNX file is given by the user
(`--detector`, or $GALLERY_YUNET_MODEL) and never downloaded. YuNet's landmark order
(eye on the image's left, eye on the image's right, nose, mouth corners left/right)
is the ArcFace template's, so its points go straight into gallery.faces.align.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery.errors import BadInput

log = logging.getLogger(__name__)

YUNET_ENV = "GALLERY_YUNET_MODEL"


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, width, height in image pixels
    landmarks: np.ndarray                     # 5x2, image pixels, template order
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


def _cv2():
    try:
        import cv2  # optional dependency (the [faces] extra): only face detection needs it
    except ImportError:
        raise BadInput(
            "face detection needs OpenCV: pip install 'gallery[faces]' (opencv-python-headless)"
        ) from None
    if not hasattr(cv2, "FaceDetectorYN"):
        raise BadInput(f"OpenCV {cv2.__version__} lacks FaceDetectorYN; 4.5.4 or newer is needed")
    # OpenCV's own logger writes `[ WARN:0@...] setPreferableTarget` to stderr on every
    # detector it builds: noise between our one-line errors; real failures raise anyway.
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is not None:
        logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
    elif hasattr(cv2, "setLogLevel"):  # older builds
        cv2.setLogLevel(2)  # LOG_LEVEL_ERROR
    return cv2


def resolve_detector_path(path: str | Path | None) -> Path:
    """The YuNet model: the given path, else $GALLERY_YUNET_MODEL; never a guess or download."""
    chosen = path or os.environ.get(YUNET_ENV)
    if not chosen:
        raise BadInput(f"face detection needs a YuNet ONNX model: pass --detector or set ${YUNET_ENV}")
    chosen = Path(chosen)
    if not chosen.is_file():
        raise BadInput(f"YuNet model not found: {chosen}")
    return chosen


class YuNetDetector:
    """Detect faces in RGB uint8 images; large photos are detected on a downscaled copy."""

    def __init__(self, model: str | Path | None = None, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, max_side: int = 640) -> None:
        cv2 = _cv2()
        self.path = resolve_detector_path(model)
        self.max_side = max_side
        try:
            self._net = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320),
                                                  score_threshold, nms_threshold, 5000)
        except cv2.error as exc:
            raise BadInput(f"cannot load YuNet model {self.path}: {str(exc).strip()[:200]}") from None

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces, highest score first."""
        cv2 = _cv2()
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise BadInput(f"detector expects an HxWx3 uint8 image, got {image_rgb.shape}")
        height, width = image_rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        # Map back to the original image: a pixel centre x in the small image is
        # (x + 0.5) / scale - 0.5 in the original.
        faces = [
            Face(
                box=tuple(float(v) for v in row[:4] / scale),
                landmarks=(row[4:14].reshape(5, 2).astype(np.float64) + 0.5) / scale - 0.5,
                score=float(row[14]),
            )
            for row in rows
        ]
        return sorted(faces, key=lambda f: -f.score)


def main_face(faces: list[Face]) -> Face | None:
    """The face an enrolment photo is about: the largest detected one."""
    return max(faces, key=lambda f: f.area) if faces else None

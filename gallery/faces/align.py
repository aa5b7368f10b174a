"""5-point face alignment to the standard ArcFace 112x112 template.

Every insightface-style recogniser (ArcFace, SFace, ...) was trained on crops made
this way, so a recogniser fed unaligned boxes loses most of its accuracy. The
similarity transform (rotation, uniform scale, translation) is the least-squares
fit of Umeyama (1991); the warp uses OpenCV when installed and Pillow otherwise.

Landmark order is the insightface/YuNet one, in image coordinates: the eye on the
image's left, the eye on the image's right, nose tip, left mouth corner, right
mouth corner.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from gallery.errors import BadInput

log = logging.getLogger(__name__)

# insightface `arcface_dst`: where the five landmarks sit in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
TEMPLATE_SIZE = 112


def template_for(size: int) -> np.ndarray:
    """The ArcFace template scaled to a square crop of side `size` (insightface does the same)."""
    if size <= 0:
        raise BadInput(f"crop size must be positive, got {size}")
    return ARCFACE_TEMPLATE * (size / TEMPLATE_SIZE)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping src points onto dst; returns 2x3 [sR | t].

    Umeyama's closed form; the reflection case (det < 0) is excluded so a face is
    never mirrored to fit a mislabelled landmark set.
    """
    src = _points(src, "source landmarks")
    dst = _points(dst, "template landmarks")
    if len(src) != len(dst):
        raise BadInput(f"{len(src)} source landmarks but {len(dst)} template points")
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = (src_c**2).sum() / len(src)
    if var_src < 1e-12:
        raise BadInput("landmarks are all at one point; cannot fit an alignment")
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / var_src
    translation = mean_dst - scale * rotation @ mean_src
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map Nx2 points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Warp an HxWxC (or HxW) uint8 image so its 5 landmarks land on the template.

    Returns a size x size crop with the same channels and channel order as the input.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise BadInput(f"expected an HxW or HxWxC uint8 image, got {image.dtype} {image.shape}")
    matrix = umeyama(landmarks, template_for(size))
    return warp_affine(image, matrix, size)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Bilinear warp with zero border; `matrix` maps input pixels to output pixels."""
    try:
        import cv2  # optional dependency (the [faces] extra); PIL warps without it
    except ImportError:
        cv2 = None
    if cv2 is not None:
        out = cv2.warpAffine(image, matrix.astype(np.float64), (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.reshape((size, size) + image.shape[2:])
    return warp_affine_pillow(image, matrix, size)


def warp_affine_pillow(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The same warp with Pillow only (no OpenCV in the default install)."""
    # Pillow wants the output->input map, so invert the 2x3 matrix.
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]
    # Pillow samples at pixel centres (x + 0.5); OpenCV at integer coordinates.
    # Shift so both give the same result for the same matrix.
    shift_in = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    shift_out = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    coeffs = (shift_in @ np.vstack([inverse, [0, 0, 1]]) @ shift_out)[:2]
    squeeze = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if squeeze else image)
    out = pil.transform((size, size), Image.AFFINE, tuple(coeffs.ravel()), resample=Image.BILINEAR)
    result = np.asarray(out, dtype=np.uint8)
    return result[:, :, None] if squeeze else result


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """Per-image 5-point landmarks from CSV or JSON, keyed by image file name.

    CSV: a header row `image,x1,y1,...,x5,y5`. JSON: {"name.jpg": [[x, y] x 5], ...}.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"landmarks file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path}: expected an object mapping image name to 5 [x, y] points")
        return {str(k): _points(v, f"{path}: landmarks of {k}", count=5) for k, v in data.items()}
    if suffix == ".csv":
        return _read_landmarks_csv(path)
    raise BadInput(f"landmarks file must be .csv or .json, got {path.name}")


def _read_landmarks_csv(path: Path) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or len(rows[0]) != 11 or rows[0][0].strip().lower() != "image":
        raise BadInput(f"{path}: header must be image,x1,y1,...,x5,y5 (11 columns)")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 11:
            raise BadInput(f"{path}:{line}: expected 11 columns, got {len(row)}")
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise BadInput(f"{path}:{line}: landmark coordinates must be numbers") from None
        result[row[0]] = _points(np.reshape(values, (5, 2)), f"{path}:{line}", count=5)
    return result


def _points(value: object, what: str, count: int | None = None) -> np.ndarray:
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInput(f"{what}: not a list of [x, y] numbers") from None
    if points.ndim != 2 or points.shape[1] != 2 or (count is not None and len(points) != count):
        expected = f"{count}x2" if count else "Nx2"
        raise BadInput(f"{what}: expected {expected} points, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise BadInput(f"{what}: coordinates must be finite")
    return points

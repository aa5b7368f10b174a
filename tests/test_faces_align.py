"""5-point alignment: the fit against an independent least-squares solve, and the warp
checked on pixels (dots drawn at known landmark positions must land on the template)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.faces import align


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, [[tx], [ty]]])


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent reference: x' = a x - b y + tx, y' = b x + a y + ty solved linearly."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_umeyama_recovers_exact_similarity() -> None:
    truth = _similarity(23.0, 2.7, 140.0, 60.0)
    src = align.ARCFACE_TEMPLATE
    dst = align.apply_transform(truth, src)
    np.testing.assert_allclose(align.umeyama(src, dst), truth, atol=1e-9)


def test_umeyama_matches_linear_least_squares_on_noisy_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = rng.uniform(0, 300, size=(5, 2))
        dst = align.apply_transform(_similarity(rng.uniform(-40, 40), rng.uniform(0.2, 3),
                                                *rng.uniform(-50, 50, 2)), src)
        dst += rng.normal(0, 3, size=dst.shape)
        np.testing.assert_allclose(align.umeyama(src, dst), _lstsq_similarity(src, dst), atol=1e-7)


def _dot_image(points: np.ndarray, shape=(480, 460), radius=2.5) -> np.ndarray:
    """Gray image with a soft bright disc at each point (sub-pixel centres)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for x, y in points:
        image = np.maximum(image, np.clip(radius + 0.5 - np.hypot(xx - x, yy - y), 0, 1))
    return np.round(image * 255).astype(np.uint8)


def _centroids(image: np.ndarray, near: np.ndarray, window: int = 7) -> np.ndarray:
    """Intensity-weighted centroid of the blob around each expected position."""
    found = []
    img = image.astype(np.float64)
    for x, y in near:
        x0, y0 = int(round(x)) - window, int(round(y)) - window
        patch = img[max(y0, 0): y0 + 2 * window + 1, max(x0, 0): x0 + 2 * window + 1]
        yy, xx = np.mgrid[: patch.shape[0], : patch.shape[1]]
        total = patch.sum()
        assert total > 0, f"no dot found near {(x, y)}"
        found.append([(xx * patch).sum() / total + max(x0, 0), (yy * patch).sum() / total + max(y0, 0)])
    return np.array(found)


@pytest.mark.parametrize("angle,scale", [(0.0, 1.0), (17.0, 1.8), (-28.0, 2.6), (9.0, 0.9)])
@pytest.mark.parametrize("backend", ["default", "pillow"])
def test_warped_landmarks_land_on_template_within_1px(angle, scale, backend) -> None:
    # A face whose landmarks are the template moved by a known similarity, plus noise
    # a landmark detector would add.
    rng = np.random.default_rng(int(abs(angle) * 10 + scale * 100))
    landmarks = align.apply_transform(_similarity(angle, scale, 150, 120), align.ARCFACE_TEMPLATE)
    landmarks += rng.normal(0, 0.4, landmarks.shape)
    image = _dot_image(landmarks, radius=2.5 * scale)
    matrix = align.umeyama(landmarks, align.ARCFACE_TEMPLATE)
    if backend == "pillow":
        crop = align.warp_affine_pillow(image, matrix, 112)
    else:
        crop = align.align_face(image, landmarks)
    assert crop.shape == (112, 112)
    found = _centroids(crop, align.ARCFACE_TEMPLATE)
    error = np.hypot(*(found - align.ARCFACE_TEMPLATE).T)
    assert error.max() < 1.0, error


def test_pillow_and_opencv_warps_agree() -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV not installed ([faces] extra)")
    del cv2
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(200, 180, 3), dtype=np.uint8)
    matrix = _similarity(12.0, 0.7, -10, 5)
    a = align.warp_affine(image, matrix, 112).astype(int)
    b = align.warp_affine_pillow(image, matrix, 112).astype(int)
    inner = (slice(8, -8), slice(8, -8))  # borders differ in how they blend with zero
    assert np.abs(a[inner] - b[inner]).mean() < 2.0


def test_scaled_template_for_other_crop_sizes() -> None:
    np.testing.assert_allclose(align.template_for(224), align.ARCFACE_TEMPLATE * 2)


def test_read_landmarks_csv_and_json(tmp_path) -> None:
    pts = align.ARCFACE_TEMPLATE + 3
    (tmp_path / "l.csv").write_text(
        "image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na.jpg," + ",".join(map(str, pts.ravel())) + "\n"
    )
    (tmp_path / "l.json").write_text(json.dumps({"a.jpg": pts.tolist()}))
    for name in ("l.csv", "l.json"):
        got = align.read_landmarks(tmp_path / name)
        np.testing.assert_allclose(got["a.jpg"], pts)


@pytest.mark.parametrize(
    "name,text,needle",
    [
        ("bad.csv", "image,x1\na.jpg,1\n", "header"),
        ("bad2.csv", "image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na.jpg,1,2,3\n", "11 columns"),
        ("bad3.csv", "image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na.jpg,1,2,3,4,5,6,7,8,9,z\n", "numbers"),
        ("bad.json", '{"a.jpg": [[1, 2], [3, 4]]}', "5x2"),
        ("bad2.json", "[1, 2]", "object"),
        ("bad.txt", "", ".csv or .json"),
    ],
)
def test_bad_landmark_files_raise_one_clear_line(tmp_path, name, text, needle) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BadInput, match=needle):
        align.read_landmarks(tmp_path / name)


def test_degenerate_landmarks_rejected() -> None:
    with pytest.raises(BadInput, match="one point"):
        align.umeyama(np.ones((5, 2)), align.ARCFACE_TEMPLATE)

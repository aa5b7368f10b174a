"""Image preprocessing, declared by the model and never guessed.

One implementation serves training, old-feature extraction, ONNX export checks,
enrolment and search, so an encoder sees the same pixels everywhere. The spec
travels inside ONNX `metadata_props` under the `gallery.` prefix.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from gallery.errors import BadInput
from gallery.limits import MAX_IMAGE_PIXELS, check_input

META_PREFIX = "gallery."
COLOR_ORDERS = ("RGB", "BGR", "GRAY")


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw pixels become the encoder's input tensor (NCHW float32)."""

    height: int = 112
    width: int = 112
    color_order: str = "RGB"
    mean: tuple[float, ...] = (127.5, 127.5, 127.5)
    std: tuple[float, ...] = (127.5, 127.5, 127.5)

    def __post_init__(self) -> None:
        if self.color_order not in COLOR_ORDERS:
            raise BadInput(f"colour order {self.color_order!r} not one of {COLOR_ORDERS}")
        # a declared 100000x100000 input would make the first enrol allocate ~30 GB
        check_input(self.height, self.width, self.channels, "the model's declared input size")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise BadInput(f"mean/std need {self.channels} values for {self.color_order}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or 0.0 in self.std:
            raise BadInput(f"mean/std must be finite and std non-zero, got {self.mean}/{self.std}")

    @property
    def channels(self) -> int:
        return 1 if self.color_order == "GRAY" else 3

    def to_metadata(self) -> dict[str, str]:
        return {
            META_PREFIX + "input_size": f"{self.height},{self.width}",
            META_PREFIX + "color_order": self.color_order,
            META_PREFIX + "channels": str(self.channels),
            META_PREFIX + "mean": ",".join(repr(float(v)) for v in self.mean),
            META_PREFIX + "std": ",".join(repr(float(v)) for v in self.std),
            META_PREFIX + "layout": "NCHW",
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "PreprocessSpec":
        """Read the spec from model metadata; a missing key is an error, not a default."""
        keys = ("input_size", "color_order", "mean", "std")
        missing = [META_PREFIX + k for k in keys if META_PREFIX + k not in meta]
        if missing:
            raise BadInput(
                "model metadata lacks preprocessing keys "
                f"{', '.join(missing)}; declare them (gallery import-encoder)"
            )
        height, width = (int(v) for v in meta[META_PREFIX + "input_size"].split(","))
        return cls(
            height=height,
            width=width,
            color_order=meta[META_PREFIX + "color_order"],
            mean=tuple(float(v) for v in meta[META_PREFIX + "mean"].split(",")),
            std=tuple(float(v) for v in meta[META_PREFIX + "std"].split(",")),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PreprocessSpec":
        try:
            return cls(
                height=int(data["height"]),
                width=int(data["width"]),
                color_order=str(data["color_order"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise BadInput(f"malformed preprocessing spec ({exc.__class__.__name__}: {exc})") from None


def load_image(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Decode one file to HxWxC uint8 in the spec's size and colour order.

    Raises BadInput naming the file when it is not a readable image.
    """
    limit = MAX_IMAGE_PIXELS.value()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # a raised limit is ours to grant, not Pillow's to refuse
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns (or raises its own type) at its global limit;
            # ours is checked from the header, before a single pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > limit:
                raise BadInput(f"image {path} is {width}x{height} = {width * height:,} pixels, above the "
                               f"limit {limit:,}; set {MAX_IMAGE_PIXELS.env} to allow more")
            image = image.convert("L" if spec.color_order == "GRAY" else "RGB")
            if image.size != (spec.width, spec.height):
                image = image.resize((spec.width, spec.height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # raised by Image.open at twice Pillow's limit
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise BadInput(f"image {path} is {int(size[1]) if size else 0:,} pixels, above the limit {limit:,}; "
                       f"set {MAX_IMAGE_PIXELS.env} to allow more") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInput(f"not a readable image: {path} ({exc.__class__.__name__})") from None
    return to_color_order(pixels, spec)


def to_color_order(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB (or gray) HxWxC/HxW uint8 -> the spec's channel order, always HxWxC."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.color_order == "GRAY":
        if pixels.shape[2] == 3:
            pixels = np.round(pixels @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[:, :, None]
        return pixels
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels[:, :, ::-1] if spec.color_order == "BGR" else pixels


def to_tensor(images: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Stack NxHxWxC uint8 images (already in colour order) into normalised NCHW float32."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != (spec.height, spec.width, spec.channels):
        raise BadInput(
            f"images have shape {batch.shape[1:]}, encoder expects "
            f"{(spec.height, spec.width, spec.channels)}"
        )
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    batch = (batch - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)

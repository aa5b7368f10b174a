"""Stand-in encoders for the compatibility checker's tests: fixed random projections of
8x8 grey pixels (distinct, checkable embeddings without a network), and their images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gallery.preprocess import PreprocessSpec, l2_normalize, to_tensor

SPEC = PreprocessSpec(8, 8, "GRAY", (127.5,), (127.5,))


class ProjectionEncoder:
    """A fixed random projection of the pixels: enough to make distinct, checkable embeddings."""

    def __init__(self, seed: int, dim: int = 6) -> None:
        self.spec, self.dim = SPEC, dim
        self.weight = np.random.default_rng(seed).normal(size=(64, dim)).astype(np.float32)
        self.identity = {"sha256": f"{seed:064d}", "model_id": f"proj-{seed}", "path": "", "format": "test",
                         "metadata": {}}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1) @ self.weight


ENCODERS = {"old": ProjectionEncoder(0), "new": ProjectionEncoder(1)}


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8), dtype=np.uint8)


def embed_units(encoder, images):
    return l2_normalize(encoder.embed(to_tensor(images[..., None], SPEC)))

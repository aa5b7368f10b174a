"""Batch transforms: seeded horizontal flip and the shared normalisation.

Flip decisions are drawn per (seed, epoch) for the whole dataset up front, so a
sample's augmentation does not depend on worker count, sharding or resumption.
"""

from __future__ import annotations

import numpy as np
import torch

from gallery.preprocess import PreprocessSpec, to_tensor


def flip_mask(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """Boolean per dataset index: flip this image in this epoch."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).random(num_items) < 0.5


def flip_horizontal(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flip the masked NHWC images left-right (a copy; the cached array is untouched)."""
    out = np.array(images, copy=True)
    if mask.any():
        out[mask] = out[mask][:, :, ::-1]
    return out


def to_batch_tensor(images: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """NHWC uint8 -> normalised NCHW float32 via gallery.preprocess (same as serving)."""
    return torch.from_numpy(to_tensor(images, spec))

"""Resource limits on what a user can ask for, each one refusal line and one env variable.

A service that passes user input to gallery must not be able to make it allocate
without bound: a k of 10^8, a model that declares a 100000x100000 input, a PNG that
decodes to 400 megapixels. Every limit has a default that real use stays far below
and an environment variable that raises (or lowers) it; README "Limits" lists them.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

from gallery.errors import BadInput


@dataclass(frozen=True)
class Limit:
    env: str
    default: int
    what: str  # "k", "embedding dimension", ... as the refusal names it

    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            value = int(raw)
        except ValueError:
            raise BadInput(f"{self.env}={raw!r} is not an integer") from None
        if value < 1:
            raise BadInput(f"{self.env} must be >= 1, got {value}")
        return value

    def check(self, value: int, context: str = "") -> int:
        """Refuse `value` above the limit; returns it unchanged otherwise."""
        limit = self.value()
        if value > limit:
            where = f" ({context})" if context else ""
            raise BadInput(f"{self.what} {value:,} is above the limit {limit:,}{where}; "
                           f"set {self.env} to allow more")
        return value


MAX_K = Limit("GALLERY_MAX_K", 10_000, "k")
MAX_DIM = Limit("GALLERY_MAX_DIM", 65_536, "embedding dimension")
MAX_INPUT_SIDE = Limit("GALLERY_MAX_INPUT_SIDE", 4_096, "model input side")
# Pillow's own default bomb threshold (~89.5 Mpx, a 0.25 GiB RGB image): decoding a
# larger one is refused before any pixel is read, not warned about.
MAX_IMAGE_PIXELS = Limit("GALLERY_MAX_IMAGE_PIXELS", 89_478_485, "image pixel count")
# One encoder batch as float32 NCHW: larger batches are split, never allocated.
MAX_BATCH_BYTES = Limit("GALLERY_MAX_BATCH_BYTES", 1 << 30, "encoder batch size in bytes")

ALL = (MAX_K, MAX_DIM, MAX_INPUT_SIDE, MAX_IMAGE_PIXELS, MAX_BATCH_BYTES)
CHANNELS = (1, 3)  # grey or colour: every PreprocessSpec colour order gives one of these


def check_k(k: object) -> int:
    """Hits per query: an integer in [1, GALLERY_MAX_K]."""
    value = _integer(k, "k", "")
    if value < 1:
        raise BadInput(f"k must be >= 1, got {value}")
    return MAX_K.check(value)


def check_dim(dim: object, context: str = "") -> int:
    """An embedding dimension: an integer in [1, GALLERY_MAX_DIM]."""
    value = _integer(dim, "embedding dimension", context)
    if value < 1:
        raise BadInput(f"embedding dimension must be >= 1, got {value}" + (f" ({context})" if context else ""))
    return MAX_DIM.check(value, context)


def check_input(height: object, width: object, channels: object, context: str = "") -> tuple[int, int, int]:
    """A model's declared input: sides in [1, GALLERY_MAX_INPUT_SIDE], 1 or 3 channels."""
    sides = []
    for name, side in (("height", height), ("width", width)):
        value = _integer(side, f"input {name}", context)
        if value < 1:
            raise BadInput(f"input {name} must be >= 1, got {value}" + (f" ({context})" if context else ""))
        sides.append(MAX_INPUT_SIDE.check(value, context))
    count = _integer(channels, "input channels", context)
    if count not in CHANNELS:
        raise BadInput(f"input channels must be 1 or 3, got {count}" + (f" ({context})" if context else ""))
    return sides[0], sides[1], count


def batch_rows(requested: int, bytes_per_row: int) -> int:
    """How many rows of `bytes_per_row` one batch may hold: `requested`, or fewer so the
    batch stays within GALLERY_MAX_BATCH_BYTES (at least one row)."""
    budget = MAX_BATCH_BYTES.value()
    return max(1, min(int(requested), budget // max(1, int(bytes_per_row))))


def _integer(value: object, what: str, context: str) -> int:
    # bool is an int subclass, and a float such as 4e9 or 1.5 would truncate silently: refused
    suffix = f" ({context})" if context else ""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise BadInput(f"{what} must be an integer, got {value!r}{suffix}")
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"{what} must be an integer, got {value!r}{suffix}") from None

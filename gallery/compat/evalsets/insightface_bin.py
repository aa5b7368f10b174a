"""insightface verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin).

The file is a pickle of (list of encoded images, list of issame flags): images
2k and 2k+1 form pair k. Pickles can run arbitrary code, so they are read with
an Unpickler that resolves no global except the handful needed to rebuild
bytes and numpy bool arrays/scalars; anything else is refused as bad input.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np

from gallery.compat.evalsets.base import EvalSet
from gallery.compat.protocols import PairProtocol, ProtocolConfig
from gallery.encoder import Encoder
from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import load_image

# (module, name) pairs a legitimate .bin may reference. Protocol-2 pickles written
# by Python 3 rebuild bytes with _codecs.encode; numpy flags need the array and
# scalar reconstructors (module path changed in numpy 2).
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED:
            raise BadInput(f"refusing to load {module}.{name} from a verification .bin (not images + flags)")
        return super().find_class(module, name)


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame flags) from an insightface .bin, without arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"verification file not found: {path}")
    try:
        with open(path, "rb") as handle:
            data = _RestrictedUnpickler(handle, encoding="bytes").load()
    except BadInput:
        raise
    except Exception as exc:  # truncated or non-pickle file: many exception types
        raise BadInput(f"{path} is not an insightface .bin ({exc.__class__.__name__})") from None
    return _validate(data, path)


def _validate(data: object, path: Path) -> tuple[list[bytes], np.ndarray]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise BadInput(f"{path}: expected a pickled (images, issame) pair")
    images, issame = data
    if isinstance(images, np.ndarray) or not isinstance(images, (list, tuple)):
        raise BadInput(f"{path}: images must be a list of encoded image bytes")
    if not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise BadInput(f"{path}: images must be a list of encoded image bytes")
    flags = np.asarray(issame)
    if flags.ndim != 1 or not (flags.dtype == bool or all(isinstance(v, (bool, np.bool_)) for v in flags)):
        raise BadInput(f"{path}: issame must be a flat list of booleans")
    flags = flags.astype(bool)
    if len(images) != 2 * flags.size:
        raise BadInput(f"{path}: {len(images)} images for {flags.size} pairs (need exactly 2 per pair)")
    return [bytes(b) for b in images], flags


class BinSet(EvalSet):
    kind = "insightface-bin"

    def __init__(self, path: str | Path) -> None:
        self.images, self.issame = read_bin(path)
        super().__init__(str(path), file_sha256(path), len(self.images))

    def image_batches(self, encoder: Encoder, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.images), batch_size):
            chunk = self.images[start : start + batch_size]
            yield np.stack([self._decode(start + k, b, encoder) for k, b in enumerate(chunk)])

    def _decode(self, index: int, blob: bytes, encoder: Encoder) -> np.ndarray:
        try:
            return load_image(io.BytesIO(blob), encoder.spec)
        except BadInput:
            raise BadInput(f"{self.path}: image {index} is not a decodable image") from None

    def pair_protocol(self, config: ProtocolConfig) -> PairProtocol:
        index = np.arange(self.issame.size, dtype=np.int64)
        return PairProtocol(left=2 * index, right=2 * index + 1, issame=self.issame)

    def search_protocol(self, config: ProtocolConfig) -> None:
        return None  # pairs only: no identities to enrol

    def describe(self) -> dict:
        out = super().describe()
        out["num_pairs"] = int(self.issame.size)
        return out

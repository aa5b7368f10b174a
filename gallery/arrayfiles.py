"""Reading a user's embedding file (.npy or .h5): never unpickled, never a pointer, never
more memory than the file holds, and any malformation one BadInput line.

A .npy header is Python literal text: a flipped bit makes numpy's parser raise
tokenize/syntax errors, an empty file EOFError (which click would turn into a bare
"Aborted."), and a header that declares 10^12 rows would be allocated before the short
read is noticed. The file is therefore memory-mapped (a declared shape larger than the
file is refused by the mapping) and copied. HDF5 files go through gallery.h5safe.
"""

from __future__ import annotations

import tokenize
from pathlib import Path

import numpy as np

from gallery.errors import BadInput
from gallery.h5safe import open_input

# what numpy and h5py raise on malformed files (h5py: OSError, RuntimeError, KeyError, ...)
READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError, RuntimeError, KeyError,
               TypeError, OverflowError, MemoryError, IndexError)


def load_npy(path: Path) -> np.ndarray:
    """A .npy as an in-memory array; raises READ_ERRORS on malformed files."""
    if path.stat().st_size == 0:
        raise EOFError("empty file")
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickle user files
    return np.array(mapped)


def read_embedding_file(path: str | Path, what: str = "embeddings") -> tuple[np.ndarray, list[str] | None,
                                                                           list[str] | None]:
    """(array, ids, identities) from .npy or .h5 (`embeddings`, optional `ids`, `identities`)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{what} file not found: {path}")
    ids = identities = None
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".h5", ".hdf5"):
        raise BadInput(f"{what} file must be .npy or .h5: {path}")
    try:
        if suffix == ".npy":
            array = load_npy(path)
        else:
            with open_input(path) as h5:
                if "embeddings" not in h5:
                    raise BadInput(f"{path} has no `embeddings` dataset")
                array = h5["embeddings"][:]
                ids = [str(v) for v in h5["ids"].asstr()[:]] if "ids" in h5 else None
                identities = [str(v) for v in h5["identities"].asstr()[:]] if "identities" in h5 else None
    except READ_ERRORS as exc:
        raise BadInput(f"cannot read {what} from {path} ({exc.__class__.__name__})") from None
    return np.asarray(array), ids, identities

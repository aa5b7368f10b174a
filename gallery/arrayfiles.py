"""Reading a user's embedding file (.npy or .h5, with its ids file): never unpickled, never
a pointer, never more memory than the file holds, and any malformation one BadInput line.
Enrolments and queries (`gallery enroll --embeddings`, `search --embeddings`, the sharded
and GPU searches) read their files through `read_embedding_file`.

A .npy header is Python literal text: a flipped bit makes numpy's parser raise
tokenize/syntax errors, an empty file EOFError (which click would turn into a bare
"Aborted."), and a header that declares 10^12 rows would be allocated before the short
read is noticed. The file is therefore memory-mapped (a declared shape larger than the
file is refused by the mapping) and copied. HDF5 files go through gallery.h5safe.
"""

from __future__ import annotations

import csv
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


def read_ids_file(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Lines `id` or `id,identity` (an `id[,identity]` header line is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"ids file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(f"{path}: not a UTF-8 CSV text file ({exc.__class__.__name__})") from None
    if rows and [c.strip().lower() for c in rows[0]][:1] == ["id"]:
        rows = rows[1:]
    if not rows:
        raise BadInput(f"ids file is empty: {path}")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() not in (1, 2):
        raise BadInput(f"{path}: every line must be `id` or `id,identity`")
    ids = [r[0].strip() for r in rows]
    identities = [r[1].strip() for r in rows] if len(rows[0]) == 2 else None
    return ids, identities


def _read_arrays(path: Path) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    """(array, ids, identities) as the file holds them (.h5: `embeddings`, optional `ids`, `identities`)."""
    if not path.is_file():
        raise BadInput(f"embeddings file not found: {path}")
    ids = identities = None
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".h5", ".hdf5"):
        raise BadInput(f"embeddings file must be .npy or .h5: {path}")
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
        raise BadInput(f"cannot read embeddings from {path} ({exc.__class__.__name__})") from None
    return np.asarray(array), ids, identities


def read_embedding_file(path: str | Path, ids_path: str | Path | None = None, *, queries: bool = False
                        ) -> tuple[np.ndarray, list[str], list[str] | None]:
    """(embeddings (rows, dim), ids, identities) from a .npy (ids from `ids_path`, an ids
    file) or a .h5 (`embeddings`, optional `ids` and `identities`; `ids_path` overrides).
    Enrolments need ids; `queries` may come without (one vector is a (1, dim) query), and
    are then named by row number."""
    path = Path(path)
    emb, ids, identities = _read_arrays(path)
    if ids_path is not None:
        ids, identities = read_ids_file(ids_path)
    if ids is None and not queries:
        raise BadInput(f"no ids for {path}: pass --ids FILE (one `id[,identity]` per line)")
    emb = np.atleast_2d(emb) if ids is None else emb
    if emb.ndim != 2:
        raise BadInput(f"{path}: embeddings must be (rows, dim), got shape {emb.shape}")
    if ids is not None and len(emb) != len(ids):
        raise BadInput(f"{path}: {emb.shape} embeddings do not match {len(ids)} ids")
    return emb, ids if ids is not None else [str(i) for i in range(len(emb))], identities

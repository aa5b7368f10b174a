"""Values a gallery must never hold: checked at the entry points, before any write.

Enrolment (`Store.enroll`) and search (`gallery.search.search`) call these, so every
path in (CLI, library, rollout) refuses the same inputs with the same line:

- embeddings: real integer or float dtypes only (a complex array would silently lose
  its imaginary part, a bool or string one is not an embedding); every value finite
  once cast to float32; every row's L2 norm within [MIN_NORM, MAX_NORM]. A row of
  1e-19 normalises to noise and one of 1e19 overflows float32's sum of squares, after
  which `verify` would call the store damaged.
- ids and identities: no control characters (NUL, newline, tab, ...), no line or
  paragraph separators and no bidirectional-text overrides. A trailing NUL is lost by
  the fixed-width column (the id can then never be removed), a newline forges a line
  in every text listing, and U+202E makes a log show a different id than is stored.
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np

from gallery.errors import BadInput

MIN_NORM = 1e-6
MAX_NORM = 1e12
CHUNK = 65_536
# Unicode bidirectional formatting characters (UAX #9): embeddings, overrides, isolates, marks.
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def real_dtype(array: np.ndarray, what: str) -> None:
    """Only signed/unsigned integers and floats (float16..float64)."""
    if array.dtype.kind not in "iuf":
        raise BadInput(f"{what} must be a real integer or float array, got dtype {array.dtype}")


def vectors(array: np.ndarray, what: str) -> np.ndarray:
    """Check dtype, finiteness and norms of (N, d) vectors; returns them as float32."""
    array = np.asarray(array)
    real_dtype(array, what)
    with np.errstate(over="ignore"):  # values beyond float32 become inf: refused below
        out = array.astype(np.float32, copy=False)
    if out.ndim != 2 or out.shape[0] == 0:
        return out  # shape problems are the caller's to word (it knows the store's dim)
    finite = np.empty(len(out), bool)
    norms = np.empty(len(out), np.float64)
    for lo in range(0, len(out), CHUNK):  # float64 copies one chunk at a time, not the whole input
        block = out[lo : lo + CHUNK]
        finite[lo : lo + CHUNK] = np.isfinite(block).all(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            norms[lo : lo + CHUNK] = np.linalg.norm(block.astype(np.float64), axis=1)
    bad = np.flatnonzero(~finite)
    if bad.size:
        raise BadInput(f"{what} contain NaN or inf in {bad.size} row(s), first row {bad[0]}")
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise BadInput(f"{what} contain {zero.size} all-zero row(s), first row {zero[0]}")
    tiny = np.flatnonzero(norms < MIN_NORM)
    if tiny.size:
        raise BadInput(f"{what} have {tiny.size} row(s) with L2 norm below {MIN_NORM:g} "
                       f"(first row {tiny[0]}, norm {norms[tiny[0]]:.3g}): no usable direction")
    huge = np.flatnonzero(norms > MAX_NORM)
    if huge.size:
        raise BadInput(f"{what} have {huge.size} row(s) with L2 norm above {MAX_NORM:g} "
                       f"(first row {huge[0]}, norm {norms[huge[0]]:.3g}): not an embedding")
    return out


def bad_character(text: str) -> str | None:
    """The first character an id may not contain, or None."""
    for char in text:
        if char in BIDI or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            return char
    return None


def names(values: Sequence[str], what: str) -> None:
    """Ids or identities: refuse control characters, separators and bidi overrides."""
    for value in values:
        char = bad_character(value)
        if char is not None:
            raise BadInput(f"{what} {value!r} contains the control character U+{ord(char):04X} "
                           f"({unicodedata.name(char, 'control')})")


def enrolment(embeddings: np.ndarray, ids: Sequence[str], identities: Sequence[str] | None) -> None:
    """Everything `Store.enroll` refuses about its input's values (shapes and ids the store checks)."""
    vectors(embeddings, "embeddings")
    names([str(i) for i in ids], "id")
    if identities is not None:
        names([str(i) for i in identities], "identity")

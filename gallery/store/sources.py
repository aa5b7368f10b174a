"""Where enrolments and queries come from: image folders, label CSVs, embedding files.

Everything is read, decoded and encoded before the store is touched, so a bad
file anywhere in the input leaves the store unchanged.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from gallery.arrayfiles import read_embedding_file
from gallery.errors import BadInput
from gallery.imagefolder import IMAGE_SUFFIXES, list_image_folder

log = logging.getLogger(__name__)


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


def read_embeddings_file(path: str | Path, ids_path: str | Path | None = None, need_ids: bool = True
                         ) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    """.npy (ids from `ids_path`) or .h5 with `embeddings` and optional `ids`/`identities`.
    Enrolment needs ids; queries (`need_ids=False`) may come without."""
    path = Path(path)
    emb, ids, identities = read_embedding_file(path)  # refuses pickles, pointers, malformed files
    if ids_path is not None:
        ids, identities = read_ids_file(ids_path)
    if ids is None and need_ids:
        raise BadInput(f"no ids for {path}: pass --ids FILE (one `id[,identity]` per line)")
    emb = np.asarray(emb) if ids is not None else np.atleast_2d(np.asarray(emb))
    if emb.ndim != 2:
        raise BadInput(f"{path}: embeddings must be (rows, dim), got shape {emb.shape}")
    if ids is not None and len(emb) != len(ids):
        raise BadInput(f"{path}: {emb.shape} embeddings do not match {len(ids)} ids")
    return emb, ids, identities


def read_queries(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """A .npy/.h5 file of query embeddings -> (queries, names: the .h5's ids or row numbers)."""
    queries, ids, _ = read_embeddings_file(path, need_ids=False)
    return queries, ids or [str(i) for i in range(len(queries))]


def list_labelled_images(root: str | Path, labels: str | Path | None = None
                         ) -> tuple[list[Path], list[str], list[str]]:
    """(paths, item ids, identities): ROOT/<identity>/<image>, or a `path,identity` CSV."""
    root = Path(root)
    if labels is None:
        listing = list_image_folder(root)
        ids = [str(p.relative_to(root)) for p in listing.paths]
        return listing.paths, ids, listing.identities
    if not root.is_dir():
        raise BadInput(f"image folder not found: {root}")
    rel, identities = read_ids_file(labels)
    if identities is None:
        raise BadInput(f"{labels}: each line must be `path,identity`")
    paths = [root / r for r in rel]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BadInput(f"{labels}: image not found: {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    return paths, rel, identities


def expand_image_args(paths: Sequence[str | Path]) -> list[Path]:
    """Query images: files as given, folders expanded to their images (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BadInput(f"no images found under {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise BadInput(f"image not found: {p}")
    if not out:
        raise BadInput("no query images given")
    return out

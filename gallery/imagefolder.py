"""The identity-folder layout: ROOT/<identity>/<image> (or a folder with a `path,identity`
CSV), and query image arguments (files, folders). No torch here.

Listing is sorted so the identity -> label map and the dataset order are
deterministic on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gallery.arrayfiles import read_ids_file
from gallery.errors import BadInput
from gallery.fingerprint import ContentDigest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


@dataclass(frozen=True)
class FolderListing:
    root: Path
    paths: list[Path]          # every image, sorted by (identity, file name)
    identities: list[str]      # identity of each path
    classes: list[str]         # sorted unique identities; label = index here

    @property
    def labels(self) -> list[int]:
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[name] for name in self.identities]

    def name(self, i: int) -> str:
        """Path of image i relative to the root, as the fingerprint names it."""
        return self.paths[i].relative_to(self.root).as_posix()

    def fingerprint(self) -> str:
        """Changes when any file is added, removed, renamed or its bytes change.

        Reads every file; trainer.data.imagefolder computes the same value from the
        bytes it decodes, so training pays no second read.
        """
        digest = ContentDigest()
        for i, path in enumerate(self.paths):
            try:
                digest.add(self.name(i), path.read_bytes())
            except OSError as exc:
                raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        return digest.hexdigest()


def list_image_folder(root: str | Path, min_identities: int = 1) -> FolderListing:
    """List ROOT/<identity>/<file>; files with non-image suffixes are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"image folder not found: {root}")
    paths: list[Path] = []
    identities: list[str] = []
    for identity_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(identity_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                identities.append(identity_dir.name)
    if not paths:
        raise BadInput(f"no images found under {root} (expected ROOT/<identity>/<image>)")
    classes = sorted(set(identities))
    if len(classes) < min_identities:
        raise BadInput(
            f"{root} has {len(classes)} identity folder(s); at least {min_identities} needed"
        )
    return FolderListing(root=root, paths=paths, identities=identities, classes=classes)


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

"""The on-disk layout shared by every dataset builder, written all-or-nothing.

  OUT/manifest.json                       resolved config, faces/classes, counts, file sha256s
  OUT/<scenario>/<part>/<identity>/*.png  ImageFolder (scenario: open-class | open-data,
  OUT/<scenario>/<part>.h5                part: old | new | eval)

A build goes into a sibling temporary folder that is renamed into place at the
end, so an interrupted build never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.datasets.writers import write_hdf5, write_imagefolder

FORMATS = ("imagefolder", "hdf5")
PARTS = ("old", "new", "eval")


@dataclass
class Part:
    """One split ready to write: images with their identity names."""

    images: np.ndarray                 # (N, H, W, C) uint8
    identities: list[str]              # identity of each image
    files: list[str]                   # file name of each image inside its identity folder
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def classes(self) -> list[str]:
        return sorted(set(self.identities))

    def labels(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.classes())}
        return np.array([index[n] for n in self.identities], dtype=np.int64)

    def names(self) -> list[str]:
        return [f"{i}/{f}" for i, f in zip(self.identities, self.files)]


def parse_formats(text: str) -> tuple[str, ...]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise BadInput(f"unknown format(s) {bad or text!r}; valid: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


@dataclass
class Staging:
    """A temporary sibling of OUT; `commit` moves it into place."""

    out: Path
    tmp: Path


def begin(out: str | Path, overwrite: bool) -> Staging:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BadInput(f"output folder is not empty: {out} (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return Staging(out=out, tmp=tmp)


def write_part(
    staging: Staging, scenario: str, part_name: str, part: Part, formats: tuple[str, ...],
    attrs: dict, progress: Callable[[int], None] | None = None,
) -> dict:
    """Write one split in the requested formats; return its manifest entry."""
    part = _in_folder_order(part)
    base = staging.tmp / scenario
    base.mkdir(parents=True, exist_ok=True)
    entry: dict = {"identities": len(part.classes()), "images": int(len(part.images))}
    if "imagefolder" in formats:
        write_imagefolder(base / part_name, part.names(), part.images, progress)
        entry["imagefolder"] = f"{scenario}/{part_name}"
    if "hdf5" in formats:
        h5 = base / f"{part_name}.h5"
        write_hdf5(h5, part.images, part.labels(), part.classes(), part.names(), part.extra,
                   {**attrs, "scenario": scenario, "part": part_name})
        entry["hdf5"] = f"{scenario}/{part_name}.h5"
        entry["hdf5_sha256"] = file_sha256(h5)
    return entry


def _in_folder_order(part: Part) -> Part:
    """Sort rows by (identity, file) so HDF5 rows follow list_image_folder's order."""
    order = sorted(range(len(part.files)), key=lambda i: (part.identities[i], part.files[i]))
    if order == list(range(len(order))):
        return part
    return Part(images=part.images[order], identities=[part.identities[i] for i in order],
                files=[part.files[i] for i in order], extra={k: v[order] for k, v in part.extra.items()})


def commit(staging: Staging, manifest: dict) -> Path:
    """Write manifest.json and move the finished build to OUT (replacing it)."""
    (staging.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    if staging.out.exists():
        shutil.rmtree(staging.out)
    os.replace(staging.tmp, staging.out)
    return staging.out


def abort(staging: Staging) -> None:
    shutil.rmtree(staging.tmp, ignore_errors=True)


def iter_parts(manifest: dict) -> Iterator[tuple[str, str, dict]]:
    for scenario, parts in sorted(manifest["splits"].items()):
        for name, entry in sorted(parts.items()):
            yield scenario, name, entry

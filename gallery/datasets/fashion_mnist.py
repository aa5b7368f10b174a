"""Fashion-MNIST from the Debian `dataset-fashion-mnist` IDX files, in the common layout.

Classes become identities (folder names `c0-t-shirt` ... `c9-ankle-boot`).
open-data: old/new get disjoint images of all 10 classes from the training file.
open-class: the 10 classes are cut into disjoint old/new/eval sets.
eval images always come from the t10k file, so they are never training images.
"""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from gallery.errors import BadInput
from gallery.datasets import layout
from gallery.datasets.splits import parse_scenarios, split_identities, split_open_data

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle-boot")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0,0,type,ndim then big-endian dims."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"IDX file not found: {path} (apt-get install dataset-fashion-mnist)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise BadInput(f"not an IDX file: {path}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise BadInput(f"IDX file {path} is truncated or padded: {len(body)} bytes, header says {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


@dataclass
class FashionConfig:
    out: str
    root: str = DEFAULT_ROOT
    image_size: int = 32
    per_class: int | None = None        # cap on training images per class (None: all 6,000)
    eval_per_class: int | None = None   # cap on t10k images per class (None: all 1,000)
    seed: int = 0
    old_fraction: float = 0.3
    eval_classes: int = 2               # open-class only
    scenarios: Sequence[str] = ("open-data",)
    formats: Sequence[str] = ("imagefolder", "hdf5")
    overwrite: bool = False


def load_split(root: str | Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(root)
    images = read_idx(_find(root, f"{kind}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{kind}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise BadInput(f"{root}: {kind} images {images.shape} do not match labels {labels.shape}")
    return images, labels


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise BadInput(f"{stem}[.gz] not found under {root} (apt-get install dataset-fashion-mnist)")


def build_fashion_mnist(config: FashionConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Write Fashion-MNIST in the scenario layout; return the manifest (also in OUT)."""
    if not 8 <= config.image_size <= 512:
        raise BadInput(f"image size must be between 8 and 512, got {config.image_size}")
    scenarios = parse_scenarios(config.scenarios)
    formats = layout.parse_formats(",".join(config.formats))
    train = _cap(*load_split(config.root, "train"), config.per_class, config.seed)
    test = _cap(*load_split(config.root, "t10k"), config.eval_per_class, config.seed + 1)
    names = [f"c{i}-{n}" for i, n in enumerate(CLASS_NAMES)]
    staging = layout.begin(config.out, config.overwrite)
    try:
        splits = {}
        for scenario in scenarios:
            parts = _scenario_parts(scenario, config, names, train, test)
            attrs = {"builder": "fashion-mnist", "seed": config.seed, "image_size": config.image_size}
            splits[scenario] = {p: layout.write_part(staging, scenario, p, part, formats, attrs, progress)
                                for p, part in parts.items()}
        manifest = {
            "builder": "fashion-mnist",
            "config": {k: v for k, v in asdict(config).items() if k not in ("out", "overwrite")}
            | {"scenarios": list(scenarios), "formats": list(formats)},
            "classes": names,
            "splits": splits,
            "color_order": "GRAY",
        }
        layout.commit(staging, manifest)
    except BaseException:
        layout.abort(staging)
        raise
    return manifest


def _cap(images: np.ndarray, labels: np.ndarray, per_class: int | None, seed: int):
    """Keep a seeded random `per_class` images of each class (all when None), in file order.

    Returns (images, labels, file row of each kept image)."""
    if per_class is None:
        return images, labels, np.arange(len(labels))
    if per_class < 2:
        raise BadInput(f"need at least 2 images per class, got {per_class}")
    rng = np.random.default_rng([seed, 0xFA])
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    keep.sort()
    return images[keep], labels[keep], keep


def _scenario_parts(scenario, config, names, train, test) -> dict[str, layout.Part]:
    train_y, test_y = train[1], test[1]
    if scenario == "open-data":
        old_rows, new_rows = split_open_data(train_y, config.old_fraction, config.seed)
        return {
            "old": _part(train, old_rows, names, config.image_size, "train"),
            "new": _part(train, new_rows, names, config.image_size, "train"),
            "eval": _part(test, np.arange(len(test_y)), names, config.image_size, "test"),
        }
    eval_fraction = config.eval_classes / len(names)
    split = split_identities(names, len(names), eval_fraction, config.old_fraction, config.seed)
    member = {n: part for part in ("old", "new", "eval") for n in getattr(split, part)}
    rows = {p: np.flatnonzero([member[names[y]] == p for y in (test_y if p == "eval" else train_y)])
            for p in ("old", "new", "eval")}
    return {
        "old": _part(train, rows["old"], names, config.image_size, "train"),
        "new": _part(train, rows["new"], names, config.image_size, "train"),
        "eval": _part(test, rows["eval"], names, config.image_size, "test"),
    }


def _part(source_arrays, rows, names, size, source) -> layout.Part:
    """Rows index the (capped) arrays; file names and source_index use the IDX file row."""
    images, labels, origin = source_arrays
    return layout.Part(
        images=_resize(images[rows], size),
        identities=[names[y] for y in labels[rows]],
        files=[f"{source}-{r:05d}.png" for r in origin[rows]],
        extra={"source_index": origin[rows].astype(np.int32)},
    )


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 28, 28) -> (N, size, size, 1) with bilinear resampling (Pillow, deterministic)."""
    if images.shape[1:] == (size, size):
        return images[:, :, :, None].copy()
    out = np.empty((len(images), size, size, 1), np.uint8)
    for i, image in enumerate(images):
        out[i, :, :, 0] = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return out

"""Fashion-MNIST builder: IDX parsing against a struct reference, splits, bad files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gallery.datasets.fashion_mnist import DEFAULT_ROOT, FashionConfig, build_fashion_mnist, load_split, read_idx
from gallery.datasets.writers import read_hdf5
from gallery.errors import BadInput
from gallery.imagefolder import list_image_folder

pytestmark = pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist")


def _reference_labels(path: str) -> list[int]:
    with gzip.open(path, "rb") as handle:
        magic, count = struct.unpack(">II", handle.read(8))
        assert magic == 2049
        return list(handle.read(count))


def test_read_idx_matches_struct_reference():
    labels = read_idx(f"{DEFAULT_ROOT}/t10k-labels-idx1-ubyte.gz")
    assert labels.tolist() == _reference_labels(f"{DEFAULT_ROOT}/t10k-labels-idx1-ubyte.gz")
    images, labels = load_split(DEFAULT_ROOT, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    with gzip.open(f"{DEFAULT_ROOT}/train-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        first = np.frombuffer(handle.read(784), np.uint8).reshape(28, 28)
    assert np.array_equal(images[0], first)


def test_bad_idx_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(BadInput, match="not an IDX"):
        read_idx(tmp_path / "junk")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(BadInput, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(BadInput, match="not found"):
        build_fashion_mnist(FashionConfig(out=str(tmp_path / "o"), root=str(tmp_path)))
    assert not (tmp_path / "o").exists()


def test_open_data_and_open_class_layouts(tmp_path):
    out = tmp_path / "fm"
    build_fashion_mnist(FashionConfig(out=str(out), per_class=40, eval_per_class=10, image_size=28,
                                      scenarios=("open-data", "open-class")))
    old = read_hdf5(out / "open-data" / "old.h5")
    new = read_hdf5(out / "open-data" / "new.h5")
    ev = read_hdf5(out / "open-data" / "eval.h5")
    assert old["classes"] == new["classes"] == ev["classes"] and len(old["classes"]) == 10
    assert not set(old["source_index"].tolist()) & set(new["source_index"].tolist())
    assert np.bincount(old["labels"]).tolist() == [12] * 10 and np.bincount(new["labels"]).tolist() == [28] * 10
    assert np.bincount(ev["labels"]).tolist() == [10] * 10
    # pixels are the original training images (size 28: no resampling)
    train_x, train_y = load_split(DEFAULT_ROOT, "train")
    rows = old["source_index"]
    assert np.array_equal(old["images"][:, :, :, 0], train_x[rows])
    assert [old["classes"][l] for l in old["labels"]] == [old["classes"][y] for y in train_y[rows]]
    listing = list_image_folder(out / "open-data" / "old")
    assert old["names"] == [str(p.relative_to(listing.root)) for p in listing.paths]
    assert old["labels"].tolist() == listing.labels
    png = np.asarray(Image.open(out / "open-data" / "old" / old["names"][0]))
    assert np.array_equal(png, old["images"][0, :, :, 0])
    parts = {p: set(list_image_folder(out / "open-class" / p).classes) for p in ("old", "new", "eval")}
    assert sum(len(s) for s in parts.values()) == 10 and len(set.union(*parts.values())) == 10
    assert len(parts["eval"]) == 2


def test_resize_to_32(tmp_path):
    out = tmp_path / "fm32"
    build_fashion_mnist(FashionConfig(out=str(out), per_class=4, eval_per_class=2, formats=("hdf5",)))
    data = read_hdf5(out / "open-data" / "old.h5")
    assert data["images"].shape[1:] == (32, 32, 1)
    assert not (out / "open-data" / "old").exists()

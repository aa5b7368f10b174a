"""Training data readers and loaders, on real Fashion-MNIST images."""

from __future__ import annotations

import io
import struct

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from gallery.errors import BadInput
from gallery.fingerprint import strings_sha256
from gallery.preprocess import PreprocessSpec
from trainer.data import RecordIODataset, make_loader, open_dataset
from trainer.data.recordio import MAGIC, pack_record, write_recordio
from trainer.data.samples import FASHION_CLASSES, fashion_mnist, write_image_folder

SPEC = PreprocessSpec(height=32, width=32)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fmnist():
    images, labels = fashion_mnist(per_class=6)
    return images, labels


def _reference(image28: np.ndarray) -> np.ndarray:
    """Independent path: PIL gray -> RGB -> bilinear 32x32."""
    return np.asarray(Image.fromarray(image28).convert("RGB").resize((32, 32), Image.BILINEAR))


def test_image_folder_reads_labels_and_pixels(tmp_path, fmnist):
    images, labels = fmnist
    write_image_folder(tmp_path / "fm", images, labels, FASHION_CLASSES)
    data = open_dataset(tmp_path / "fm", SPEC)
    assert data.classes == sorted(FASHION_CLASSES)
    assert len(data) == len(images) and data.num_classes == 10
    assert data.label_map_sha256() == strings_sha256(sorted(FASHION_CLASSES))
    # files are listed sorted by (class name, file name); file name = original index
    expected_order = sorted(range(len(images)), key=lambda i: (FASHION_CLASSES[labels[i]], i))
    for pos, original in enumerate(expected_order):
        assert data.classes[data.labels[pos]] == FASHION_CLASSES[labels[original]]
    np.testing.assert_array_equal(data.images_uint8([0])[0], _reference(images[expected_order[0]]))
    image, label, index = data[3]
    assert image.shape == (3, 32, 32) and index == 3 and label == data.labels[3]
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0


def test_image_folder_bad_inputs(tmp_path, fmnist):
    images, labels = fmnist
    root = write_image_folder(tmp_path / "fm", images[:30], labels[:30], FASHION_CLASSES)
    assert (root / "bag").is_dir() and (root / "boot").is_dir()
    (root / "boot" / "broken1.png").write_bytes(b"not a png")
    (root / "bag" / "broken2.jpg").write_bytes(b"\x89PNG garbage")
    with pytest.raises(BadInput, match=r"2 unreadable image\(s\).*broken1\.png") as err:
        open_dataset(root, SPEC)
    assert "broken2.jpg" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no images"):
        open_dataset(tmp_path / "empty", SPEC)
    single = write_image_folder(tmp_path / "one", images[:3], np.zeros(3, int), FASHION_CLASSES)
    with pytest.raises(BadInput, match="1 identity"):
        open_dataset(single, SPEC)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_arrays_resize_and_dense_labels(tmp_path, fmnist, suffix):
    images, labels = fmnist
    raw = labels * 10 + 5  # sparse labels: must become 0..9 in sorted order
    names = [f"c{i}" for i in range(100)]
    path = tmp_path / f"fm{suffix}"
    if suffix == ".npz":
        np.savez(path, images=images, labels=raw, classes=np.array(names))
    else:
        with h5py.File(path, "w") as f:
            f["images"], f["labels"] = images, raw
            f["classes"] = np.array(names, dtype="S")
    data = open_dataset(path, SPEC)
    assert data.classes == [f"c{c * 10 + 5}" for c in range(10)]
    np.testing.assert_array_equal(data.labels, labels)
    for i in (0, 7, len(images) - 1):
        np.testing.assert_array_equal(data.images_uint8([i])[0], _reference(images[i]))


def test_arrays_bad_inputs(tmp_path, fmnist):
    images, labels = fmnist
    np.savez(tmp_path / "nolabels.npz", images=images)
    with pytest.raises(BadInput, match="lacks array"):
        open_dataset(tmp_path / "nolabels.npz", SPEC)
    np.savez(tmp_path / "empty.npz", images=images[:0], labels=labels[:0])
    with pytest.raises(BadInput, match="empty"):
        open_dataset(tmp_path / "empty.npz", SPEC)
    with pytest.raises(BadInput, match="not found"):
        open_dataset(tmp_path / "missing.npz", SPEC)


# --- RecordIO, written by hand from the format description (not with our writer) ---

def _frame(cflag: int, chunk: bytes) -> bytes:
    pad = b"\0" * ((-len(chunk)) % 4)
    return struct.pack("<II", MAGIC, (cflag << 29) | len(chunk)) + chunk + pad


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_recordio_insightface_layout(tmp_path, fmnist):
    images, labels = fmnist
    n = 12
    records = {}
    # key 0: insightface header record, flag=2, labels (first non-image key, last key)
    records[0] = _frame(0, struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", n + 1, n + 3))
    for k in range(1, n + 1):
        payload = struct.pack("<IfQQ", 0, float(labels[k - 1] + 100), k, 0) + _png(images[k - 1])
        records[k] = _frame(0, payload)
    # identity-range records after the images must be ignored
    records[n + 1] = _frame(0, struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 1, 3))
    rec, lines = bytearray(), []
    for key, blob in records.items():
        lines.append(f"{key}\t{len(rec)}\n")
        rec += blob
    (tmp_path / "train.rec").write_bytes(bytes(rec))
    (tmp_path / "train.idx").write_text("".join(lines))
    data = open_dataset(tmp_path, SPEC)
    assert isinstance(data, RecordIODataset)
    np.testing.assert_array_equal(data.keys, np.arange(1, n + 1))
    assert data.classes == sorted({str(int(v) + 100) for v in labels[:n]}, key=int)
    assert [data.classes[v] for v in data.labels] == [str(int(v) + 100) for v in labels[:n]]
    for i in (0, 5, n - 1):
        np.testing.assert_array_equal(data.images_uint8([i])[0], _reference(images[i]))
    # worker processes open their own map and decode the same pixels
    single = [b[0] for b in make_loader(data, 5)]
    workers = [b[0] for b in make_loader(data, 5, num_workers=2)]
    for a, b in zip(single, workers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recordio_multipart_record_and_writer(tmp_path, fmnist):
    images, labels = fmnist
    magic = struct.pack("<I", MAGIC)
    header = struct.pack("<IfQQ", 0, 1.0, 0, 0)  # 24 bytes: aligned
    body = _png(images[0])
    payload = header + magic + body  # contains the magic at aligned offset 24
    # dmlc writer: part before the magic (cflag 1), then the rest (cflag 3)
    expected = _frame(1, header) + _frame(3, body)
    assert pack_record(payload) == expected
    items = [(float(labels[i]), _png(images[i])) for i in range(8)]
    write_recordio(tmp_path / "x.rec", items)
    data = RecordIODataset(tmp_path / "x.rec", SPEC)  # no header record: every key an image
    np.testing.assert_array_equal(data.keys, np.arange(8))
    assert len(data) == 8
    np.testing.assert_array_equal(data.images_uint8([3])[0], _reference(images[3]))
    from trainer.data.recordio import read_record, unpack_header

    joined = read_record(expected, 0)
    assert joined == payload
    assert unpack_header(joined)[1] == magic + body


def test_recordio_without_index_or_truncated(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(BadInput, match="no index train.idx"):
        open_dataset(tmp_path / "train.rec", SPEC)
    (tmp_path / "train.idx").write_text("")
    with pytest.raises(BadInput, match="empty"):
        open_dataset(tmp_path / "train.rec", SPEC)
    from trainer.data.recordio import read_record

    whole = pack_record(struct.pack("<IfQQ", 0, 1.0, 0, 0) + b"x" * 10)
    with pytest.raises(BadInput, match="truncated"):
        read_record(whole[:-8], 0)
    with pytest.raises(BadInput, match="bad RecordIO magic"):
        read_record(b"\0" * 16, 0)


# --- loaders ---

def _array_dataset(tmp_path, fmnist):
    images, labels = fmnist
    np.savez(tmp_path / "fm.npz", images=images, labels=labels)
    return open_dataset(tmp_path / "fm.npz", SPEC)


def test_train_loader_order_is_seeded_per_epoch(tmp_path, fmnist):
    data = _array_dataset(tmp_path, fmnist)
    def epoch_indices(seed, epoch):
        loader = make_loader(data, 8, train=True, seed=seed)
        loader.set_epoch(epoch)
        return np.concatenate([idx.numpy() for _, _, idx in loader])
    first = epoch_indices(0, 0)
    assert len(first) == (len(data) // 8) * 8 and len(set(first)) == len(first)
    np.testing.assert_array_equal(first, epoch_indices(0, 0))
    assert not np.array_equal(first, epoch_indices(0, 1))
    assert not np.array_equal(first, epoch_indices(1, 0))


def test_train_loader_flips_and_eval_loader_does_not(tmp_path, fmnist):
    data = _array_dataset(tmp_path, fmnist)
    loader = make_loader(data, 16, train=True, seed=3)
    flipped = same = 0
    for images, labels, idx in loader:
        plain = make_loader(data, 16).__iter__().__next__()  # eval batch, for dtype sanity
        assert plain[0].dtype == images.dtype
        for img, i in zip(images.numpy(), idx.numpy()):
            ref = data[int(i)][0].numpy()
            if np.array_equal(img, ref):
                same += 1
            else:
                np.testing.assert_array_equal(img, ref[:, :, ::-1])
                flipped += 1
        np.testing.assert_array_equal(labels.numpy(), data.labels[idx.numpy()])
    assert flipped > 5 and same > 5
    eval_idx = np.concatenate([idx.numpy() for _, _, idx in make_loader(data, 7)])
    np.testing.assert_array_equal(eval_idx, np.arange(len(data)))
    first = next(iter(make_loader(data, 7)))[0].numpy()
    np.testing.assert_array_equal(first[0], data[0][0].numpy())


def test_sharded_loaders_cover_each_index_once(tmp_path, fmnist):
    data = _array_dataset(tmp_path, fmnist)
    shards = []
    for rank in range(2):
        loader = make_loader(data, 5, train=True, seed=1, rank=rank, world_size=2)
        loader.set_epoch(2)
        shards.append(np.concatenate([idx.numpy() for _, _, idx in loader]))
    assert not set(shards[0]) & set(shards[1])
    assert len(shards[0]) == len(shards[1]) == (len(data) // 2 // 5) * 5


def test_recordio_unreadable_image_names_the_record(tmp_path, fmnist):
    images, labels = fmnist
    write_recordio(tmp_path / "x.rec", [(0.0, _png(images[0])), (1.0, b"garbage bytes")])
    data = RecordIODataset(tmp_path / "x.rec", SPEC)
    with pytest.raises(BadInput, match="unreadable image in .*x.rec record 1"):
        data.images_uint8([0, 1])

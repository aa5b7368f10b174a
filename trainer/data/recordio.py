"""insightface / MXNet IndexedRecordIO (`train.rec` + `train.idx`) without mxnet.

Format (dmlc-core recordio + mxnet.recordio), little-endian:
- record: uint32 magic 0xced7230a, uint32 lrec = cflag << 29 | length, payload,
  zero padding to a multiple of 4. A payload that contains the magic at an aligned
  offset is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 =
  whole); the reader re-inserts the magic between parts.
- payload: IRHeader struct '<IfQQ' (flag, label, id, id2); when flag > 0, `flag`
  float32 labels follow and `label` is unused; then the encoded image bytes.
- .idx: text lines "key<TAB>byte offset".
insightface datasets put a header record at key 0 whose labels give the image key
range [1, label[0]); without it every key is an image.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256_memo, strings_sha256
from gallery.preprocess import PreprocessSpec, load_image

from trainer.data.base import TrainDataset, check_labels, dense_labels

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


def read_index(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    keys, offsets = [], []
    for line_no, line in enumerate(idx_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            keys.append(int(parts[0]))
            offsets.append(int(parts[1]))
        except (IndexError, ValueError):
            raise BadInput(f"{idx_path}:{line_no}: expected 'key<TAB>offset'") from None
    return np.asarray(keys, np.int64), np.asarray(offsets, np.int64)


def read_record(buffer: bytes | mmap.mmap, offset: int) -> bytes:
    """One logical record starting at `offset` of the file's bytes, multi-part records joined."""
    parts: list[bytes] = []
    pos = offset
    while True:
        if pos + 8 > len(buffer):
            raise BadInput(f"truncated RecordIO record at byte {offset}")
        magic, lrec = struct.unpack_from("<II", buffer, pos)
        if magic != MAGIC:
            raise BadInput(f"bad RecordIO magic at byte {offset} (index and .rec disagree?)")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if pos + 8 + length > len(buffer):
            raise BadInput(f"truncated RecordIO record at byte {offset}")
        parts.append(bytes(buffer[pos + 8:pos + 8 + length]))
        pos += 8 + length + (-length) % 4
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def unpack_header(payload: bytes) -> tuple[np.ndarray, bytes, int]:
    """-> (labels as float32 array, image bytes, id)."""
    flag, label, ident, _ = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size:]
    if flag > 0:
        labels = np.frombuffer(body[: 4 * flag], dtype="<f4").copy()
        return labels, body[4 * flag:], ident
    return np.asarray([label], np.float32), body, ident


class RecordIODataset(TrainDataset):
    """Images decoded lazily per batch: MS1Mv3-size sets do not fit in memory."""

    def __init__(self, rec_path: str | Path, spec: PreprocessSpec) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise BadInput(f"RecordIO file not found: {self.rec_path}")
        if not self.idx_path.is_file():
            raise BadInput(f"{self.rec_path} has no index {self.idx_path.name} next to it")
        self.spec = spec
        self.source = str(self.rec_path)
        keys, offsets = read_index(self.idx_path)
        self._offset = dict(zip(keys.tolist(), offsets.tolist()))
        self._handle, self._pid = None, -1
        self.keys = self._image_keys(keys)
        raw = [self._labels_of(k)[0] for k in self.keys]
        self.labels, self.classes = dense_labels(np.asarray(raw, np.int64))
        check_labels(self.labels, self.classes, self.source)

    def _file(self) -> mmap.mmap:
        # a read-only map per process: no read syscalls per record (5M+ headers at start-up)
        if self._handle is None or self._pid != os.getpid():
            if self.rec_path.stat().st_size == 0:
                raise BadInput(f"dataset {self.rec_path} is empty")
            with open(self.rec_path, "rb") as handle:
                self._handle = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        # spawned DataLoader workers get a copy without the map; they open their own
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def _payload(self, key: int) -> bytes:
        return read_record(self._file(), self._offset[int(key)])

    def _labels_of(self, key: int) -> np.ndarray:
        return unpack_header(self._payload(key))[0]

    def _image_keys(self, keys: np.ndarray) -> np.ndarray:
        if len(keys) == 0:
            raise BadInput(f"dataset {self.idx_path} is empty")
        if 0 in self._offset:
            labels, body, _ = unpack_header(self._payload(0))
            if len(labels) >= 2 and not body:  # insightface header record
                return np.arange(1, int(labels[0]), dtype=np.int64)
        return np.sort(keys)

    def listing_fingerprint(self) -> str:
        """Every byte of .idx and .rec: a record rewritten in place changes it."""
        return strings_sha256([file_sha256_memo(self.idx_path), file_sha256_memo(self.rec_path)])

    def images_uint8(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.stack([self._decode(int(self.keys[i])) for i in indices])

    def _decode(self, key: int) -> np.ndarray:
        _, body, _ = unpack_header(self._payload(key))
        try:  # the same decode/resize/colour path as every other image in gallery
            return load_image(io.BytesIO(body), self.spec)
        except BadInput:
            raise BadInput(f"unreadable image in {self.rec_path} record {key}") from None


def pack_record(payload: bytes) -> bytes:
    """Frame one payload the way dmlc RecordIOWriter does (split at aligned magics)."""
    out, start = bytearray(), 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
            out += payload[start:i] + b"\0" * ((-(i - start)) % 4)
            start = i + 4
    rest = len(payload) - start
    out += struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | rest)
    out += payload[start:] + b"\0" * ((-rest) % 4)
    return bytes(out)


def write_recordio(rec_path: str | Path, items: Iterable[tuple[float, bytes]]) -> int:
    """Write (label, encoded image) items as keys 0.. plus the .idx; returns the count."""
    rec_path = Path(rec_path)
    lines, count = [], 0
    with open(rec_path, "wb") as handle:
        for key, (label, image_bytes) in enumerate(items):
            lines.append(f"{key}\t{handle.tell()}\n")
            header = _HEADER.pack(0, float(label), key, 0)
            handle.write(pack_record(header + image_bytes))
            count += 1
    rec_path.with_suffix(".idx").write_text("".join(lines))
    return count

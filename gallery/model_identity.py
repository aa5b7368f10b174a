"""A model's identity: sha256 of its file and, for ONNX, of every external data file.

An ONNX model may keep its weights in separate files ("external data", referenced
by relative `location` from tensors in the graph). onnxruntime reads them at load,
so the .onnx file's own sha256 does not name the model: swap the weights file and
the same .onnx computes something else. `model_sha256` is therefore:

- the file's sha256 when the model references no external data (every model made
  by `gallery train/export` and every model recorded before this existed: their
  identities are unchanged), else
- sha256 of the text `gallery.onnx-external/1\\n<sha256 of the .onnx>\\n` followed, for
  each distinct location in sorted (code point) order, by `<location>\\0<sha256 of that
  file>\\n` - a defined order, so the same files always give the same identity.

Locations are resolved as onnxruntime resolves them (relative to the model's folder)
and refused when absolute, containing `..`, a symlink or missing, so an identity never
covers a file outside the model's folder. The .onnx protobuf is walked with a small
wire-format reader (no onnx package needed: the serving install has none); tests
check its locations against onnx's own external_data_helper.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path, PurePosixPath

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# (message, field number) -> message type of that (length-delimited) field; onnx.proto3 numbers
_SUBMESSAGES = {
    ("model", 7): "graph", ("model", 25): "function",
    ("graph", 1): "node", ("graph", 5): "tensor", ("graph", 15): "sparse",
    ("function", 7): "node",
    ("node", 5): "attribute",
    ("attribute", 5): "tensor", ("attribute", 6): "graph", ("attribute", 10): "tensor",
    ("attribute", 11): "graph", ("attribute", 22): "sparse", ("attribute", 23): "sparse",
    ("sparse", 1): "tensor", ("sparse", 2): "tensor",
}
_MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies); deeper is a hostile file, not a model


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one message: ints for varints, memoryviews else."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Malformed(f"wire type {wire}")
        if pos > len(buf):
            raise _Malformed("field runs past the end")
        yield number, wire, value


def _tensor_location(buf: memoryview) -> str | None:
    location, external = None, False
    for number, wire, value in _fields(buf):
        if number == 14 and wire == 0:
            external = value == EXTERNAL
        elif number == 13 and wire == 2:
            entry = {n: bytes(v) for n, w, v in _fields(value) if w == 2}
            if entry.get(1) == b"location":
                location = entry.get(2, b"").decode("utf-8", "replace")
    return location if external else None


def external_locations(data: bytes | memoryview) -> list[str]:
    """Every external data location the ONNX model in `data` references (sorted, distinct)."""
    found: set[str] = set()
    stack = [("model", memoryview(data), 0)]
    while stack:
        kind, buf, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _Malformed("graphs nested too deeply")
        if kind == "tensor":
            location = _tensor_location(buf)
            if location is not None:
                found.add(location)
            continue
        for number, wire, value in _fields(buf):
            sub = _SUBMESSAGES.get((kind, number))
            if sub is not None and wire == 2:
                stack.append((sub, value, depth + 1))
    return sorted(found)


def _resolve(model: Path, location: str) -> Path:
    parts = PurePosixPath(location.replace("\\", "/"))
    if not location or parts.is_absolute() or ".." in parts.parts or ":" in location:
        raise BadInput(f"{model}: external data location {location!r} is not a plain relative path "
                       "inside the model's folder")
    path = model.parent.joinpath(*parts.parts)
    if path.is_symlink():
        raise BadInput(f"{model}: external data {location!r} is a symlink")
    if not path.is_file():
        raise BadInput(f"{model}: external data file {location!r} not found next to the model")
    return path


def _walk(data) -> list[str]:
    # returns (rather than raises) so that no frame still holds a view of the mapping when
    # the caller closes it
    try:
        return external_locations(data)
    except (_Malformed, ValueError, IndexError):
        return []  # not a protobuf we can walk: onnxruntime will refuse to load it


def onnx_external_files(path: str | Path) -> list[tuple[str, Path]]:
    """(location, file) for each external data file of an ONNX model, in identity order."""
    path = Path(path)
    if path.stat().st_size == 0:
        return []
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        locations = _walk(mapped)
    return [(loc, _resolve(path, loc)) for loc in locations]


def model_sha256(path: str | Path) -> str:
    """The identity of a model file (see the module docstring)."""
    path = Path(path)
    digest = file_sha256(path)
    if path.suffix.lower() != ".onnx":
        return digest
    files = onnx_external_files(path)
    if not files:
        return digest
    combined = hashlib.sha256(f"gallery.onnx-external/1\n{digest}\n".encode())
    for location, file in files:
        combined.update(location.encode("utf-8") + b"\0" + file_sha256(file).encode() + b"\n")
    return combined.hexdigest()

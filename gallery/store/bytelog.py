"""Append-only JSON logs (/history, /batches) stored as plain bytes + end offsets.

Not HDF5 variable-length strings: those live in the global heap, which a writer
killed mid-update leaves corrupt. Two fixed-type chunked datasets are written in
place, so a crash can only leave bytes past the last recorded end, which readers
ignore and the next append overwrites.
"""

from __future__ import annotations

import json

import h5py
import numpy as np


def create(parent: h5py.Group, name: str) -> h5py.Group:
    group = parent.create_group(name)
    group.create_dataset("bytes", shape=(0,), maxshape=(None,), chunks=(65536,), dtype="u1")
    group.create_dataset("ends", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="i8")
    return group


def append(group: h5py.Group, record: dict) -> None:
    data = np.frombuffer(json.dumps(record, sort_keys=True, default=str).encode(), dtype="u1")
    ends = group["ends"]
    start = int(ends[-1]) if ends.shape[0] else 0
    stop = start + data.size
    group["bytes"].resize((stop,))
    group["bytes"][start:stop] = data
    # Recording the end is what makes the record exist.
    ends.resize((ends.shape[0] + 1,))
    ends[-1] = stop


def read(group: h5py.Group) -> list[dict]:
    ends = group["ends"][:]
    if not ends.size:
        return []
    blob = group["bytes"][: int(ends[-1])].tobytes()
    starts = np.concatenate([[0], ends[:-1]])
    return [json.loads(blob[s:e]) for s, e in zip(starts, ends)]


def record(group: h5py.Group, i: int) -> dict:
    """Record number i alone (0-based): reads its bytes only."""
    ends = group["ends"]
    start = int(ends[i - 1]) if i else 0
    return json.loads(group["bytes"][start : int(ends[i])].tobytes())


def truncate(group: h5py.Group, count: int) -> None:
    """Keep only the first `count` records (drop what an interrupted writer left)."""
    ends = group["ends"]
    if ends.shape[0] > count:
        ends.resize((count,))
    keep = int(ends[-1]) if count else 0
    if group["bytes"].shape[0] != keep:
        group["bytes"].resize((keep,))


def count(group: h5py.Group) -> int:
    return int(group["ends"].shape[0])

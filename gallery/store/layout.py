"""Creating the current layout of a new store file (see schema.py for what each part holds)."""

from __future__ import annotations

import h5py
import numpy as np

from gallery.store import bytelog, schema
from gallery.store.schema import ModelInfo

EMPTY_CHAIN = "0" * 64  # fixed width, so later updates rewrite the attribute in place


def write_model(h5: h5py.File, model: ModelInfo) -> None:
    group = h5["models"].create_group(model.version)
    for key, value in model.to_attrs().items():
        group.attrs[key] = value


def create_column(items: h5py.Group, name: str, rows: int = 0) -> h5py.Dataset:
    """One /items column of schema.ITEM_COLUMNS, resizable (new stores, migrations)."""
    return items.create_dataset(name, shape=(rows,), maxshape=(None,), chunks=(4096,),
                                dtype=schema.ITEM_COLUMNS[name])


def init_layout(h5: h5py.File, model: ModelInfo, dtype: str) -> None:
    h5.attrs.update({
        "format": schema.FORMAT, "schema_version": schema.SCHEMA_VERSION,
        # microseconds: `created` tells stores apart (an engine view names its store by it);
        # two stores made in the same second had the same identity
        "created": schema.now_iso("microseconds"), "dim": model.dim, "dtype": dtype,
        "active_model": model.version, "aliases": "{}",
    })
    h5.create_group("models")
    write_model(h5, model)
    items = h5.create_group("items")
    items.attrs["committed"] = 0
    items.attrs["chain"] = np.bytes_(EMPTY_CHAIN)  # running checksum of committed batches
    items.attrs["removed"] = 0
    for name in schema.ITEM_COLUMNS:
        create_column(items, name)
    rows = max(1, (1 << 20) // (4 * model.dim))   # ~1 MiB chunks of whole rows
    items.create_dataset("embedding", shape=(0, model.dim), maxshape=(None, model.dim),
                         chunks=(rows, model.dim), dtype=dtype)
    for log_name in ("batches", "history"):
        bytelog.create(h5, log_name)

"""Numbered schema migrations: MIGRATIONS[n] turns a schema-n file into schema n+1.

A writer opening an older store runs the missing steps in order, each recorded in
/history; readers refuse an older store rather than guess at its layout, and
every code version refuses a store newer than it understands.
"""

from __future__ import annotations

import logging
from typing import Callable

import h5py

from gallery.errors import BadInput
from gallery.store import idindex, schema
from gallery.store.layout import create_column

log = logging.getLogger(__name__)

Migration = Callable[[h5py.File], None]


def _v1_to_v2(h5: h5py.File) -> None:
    """Schema 2 adds /items/id_hash (schema.py), computed from the committed rows' ids a
    block at a time (memory bounded at any size). Rows past `committed` (an interrupted
    enrol's tail) get none: the next enrol truncates every column to `committed`."""
    items = h5["items"]
    if "id_hash" in items:  # left by a migration killed part-way (schema_version still 1)
        del items["id_hash"]
    n = int(items.attrs["committed"])
    create_column(items, "id_hash", n)
    idindex.fill(items, n)


# MIGRATIONS[n] turns schema n into n + 1; add the next one and bump schema.SCHEMA_VERSION.
MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


def file_schema_version(h5: h5py.File) -> int:
    return int(h5.attrs.get("schema_version", 0))


def check_readable(h5: h5py.File, path: str) -> None:
    """Readers: the file must be exactly the current schema."""
    version = file_schema_version(h5)
    if version > schema.SCHEMA_VERSION:
        raise BadInput(
            f"store {path} has schema v{version}, newer than this gallery understands "
            f"(v{schema.SCHEMA_VERSION}); upgrade gallery"
        )
    if version < schema.SCHEMA_VERSION:
        raise BadInput(
            f"store {path} has schema v{version} (current v{schema.SCHEMA_VERSION}); "
            f"run `gallery migrate {path}`"
        )


def migrate(h5: h5py.File, path: str, record: Callable[[dict], None]) -> list[int]:
    """Writers: apply every missing step in order; returns the versions migrated from."""
    version = file_schema_version(h5)
    if version > schema.SCHEMA_VERSION:
        check_readable(h5, path)
    applied = []
    while version < schema.SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise BadInput(f"store {path}: no migration from schema v{version}")
        log.info("migrating %s from schema v%d to v%d", path, version, version + 1)
        step(h5)
        h5.flush()  # the step's data reaches the file before the version says it is there
        h5.attrs["schema_version"] = version + 1
        record({"event": "migrate", "from": version, "to": version + 1})
        h5.flush()
        applied.append(version)
        version += 1
    return applied

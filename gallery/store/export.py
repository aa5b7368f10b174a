"""Export the live rows of a store to a plain .h5 or .npz file (no store machinery)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np

from gallery.errors import BadInput
from gallery.store.ranges import gather

if TYPE_CHECKING:
    from gallery.store.core import Store

SUFFIXES = (".h5", ".hdf5", ".npz")


def export(store: "Store", out: str | Path, progress: Callable[[int], None] | None = None,
           on_total: Callable[[int], None] | None = None) -> dict:
    """Write the live rows; `on_total(rows)` then `progress(n)` as each block is read."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise BadInput(f"export target must end in {', '.join(SUFFIXES)}: {out}")
    if not out.parent.is_dir():
        raise BadInput(f"output folder does not exist: {out.parent}")
    cols = store.columns()
    live = np.flatnonzero(~cols["deleted"])
    if on_total is not None:
        on_total(int(live.size))
    arrays = {
        # as queries of the query model see them (its space, backfills substituted)
        "embeddings": gather(store, live, progress),
        "ids": cols["id"][live].astype(str),
        "identities": cols["identity"][live].astype(str),
        "model_versions": cols["model"][live].astype(str),
    }
    models = json.dumps([m.summary() for m in store.models()], sort_keys=True, default=str)
    # Written beside the target and renamed: a failed export leaves no half file.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")
    try:
        if out.suffix.lower() == ".npz":
            np.savez(tmp, models=np.array(models), active_model=np.array(store.active_model), **arrays)
        else:
            with h5py.File(tmp, "w") as h5:
                for name, values in arrays.items():
                    if values.dtype.kind == "U":
                        h5.create_dataset(name, data=values.astype(object), dtype=h5py.string_dtype())
                    else:
                        h5.create_dataset(name, data=values)
                h5.attrs["models"] = models
                h5.attrs["active_model"] = store.active_model
                h5.attrs["source"] = str(store.path)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"out": str(out), "rows": int(live.size), "dim": int(arrays["embeddings"].shape[1])}


"""Versioned gallery store: one HDF5 file per gallery (see schema.py for the layout)."""

from gallery.store.core import Store
from gallery.store.generation import generation
from gallery.store.locking import WriterLock
from gallery.store.schema import SCHEMA_VERSION, ModelInfo

__all__ = ["Store", "generation", "ModelInfo", "WriterLock", "SCHEMA_VERSION"]

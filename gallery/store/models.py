"""The model records of a store: versions, the active query model, aliases, thresholds.

A mixin of Store (gallery/store/core.py), which supplies `manifest`, `path`, `_cache`,
`require_writer`, `transaction` and `append_history`. Every change is one manifest commit
together with its history record.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gallery.errors import BadInput
from gallery.limits import check_dim
from gallery.modelfiles import resolve, to_stored
from gallery.store import schema
from gallery.store.schema import ModelInfo


def with_stored_path(store_path: Path, model: ModelInfo) -> ModelInfo:
    """The record as written: its file path relative to the store's folder when inside it
    (in memory, `model()` gives it resolved, so a record read and written back is unchanged)."""
    return replace(model, path=to_stored(store_path, model.path))


class ModelRecords:
    manifest: dict
    path: Path
    _cache: dict[str, Any]
    require_writer: Callable[[], None]
    append_history: Callable[[dict], None]
    transaction: Callable[[], Any]
    commit: Callable[[], None]
    schema_version: int

    @property
    def active_model(self) -> str:
        return str(self.manifest["active_model"])

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self.manifest["aliases"])

    def model_versions(self) -> list[str]:
        return sorted(self.manifest["models"])

    def model(self, version: str | None = None) -> ModelInfo:
        """The record of a version or alias (default: the active query model)."""
        version = self.resolve_version(version or self.active_model)
        info = ModelInfo.from_attrs(self.manifest["models"][version])
        found = resolve(self.path, info.path)  # recorded relative to the store's folder when inside it
        info.path = None if found is None else str(found)
        return info

    def thresholds(self, query_version: str | None = None) -> dict[str, float]:
        """Calibrated thresholds for queries by a model, per gallery version (cached: search
        calls this per batch, and decoding a model's attrs costs milliseconds)."""
        version = self.resolve_version(query_version or self.active_model)
        cache = self._cache.setdefault("thresholds", {})
        if version not in cache:
            cache[version] = self.model(version).thresholds
        return dict(cache[version])

    def models(self) -> list[ModelInfo]:
        return [self.model(v) for v in self.model_versions()]

    def resolve_version(self, name: str) -> str:
        """A version name or alias -> the version; unknown -> BadInput listing both."""
        if name in self.manifest["models"]:
            return name
        aliases = self.aliases
        if name in aliases:
            return aliases[name]
        valid = ", ".join(self.model_versions() + sorted(aliases))
        raise BadInput(f"unknown model version {name!r} in {self.path}; valid: {valid}")

    def add_model(self, model: ModelInfo) -> None:
        """Register a new encoder version; does not activate it. Its dimension may differ
        from the other models' (spaces.py): which models' rows its queries can then compare
        with is the rollout's business (an adapter, an old-space output; gallery/rollout)."""
        self.require_writer()
        schema.check_version_name(model.version)
        if model.version in self.manifest["models"] or model.version in self.aliases:
            raise BadInput(f"model version {model.version!r} already exists in {self.path}")
        check_dim(model.dim, f"model {model.version}")
        with self.transaction():
            if model.dim not in {int(m["dim"]) for m in self.manifest["models"].values()}:
                # a reader of schema v3 assumes one dimension: it must refuse this store
                self.manifest["schema_version"] = max(self.schema_version, schema.SCHEMA_VERSION)
            self.manifest["models"][model.version] = with_stored_path(self.path, model).to_attrs()
            self.append_history({"event": "add_model", "model": model.version, "sha256": model.sha256,
                                 "dim": model.dim})

    def update_model(self, model: ModelInfo) -> None:
        """Rewrite an existing version's record (thresholds, compat report...)."""
        self.require_writer()
        self.resolve_version(model.version)
        self.manifest["models"][model.version] = with_stored_path(self.path, model).to_attrs()
        self._cache.pop("thresholds", None)
        self.commit()

    def set_active_model(self, version: str) -> None:
        self.require_writer()
        resolved = self.resolve_version(version)
        previous = self.active_model
        with self.transaction():
            self.manifest["active_model"] = resolved
            self.append_history({"event": "activate", "model": resolved, "previous": previous})

    def set_alias(self, alias: str, version: str | None) -> None:
        """Point `alias` at a version (None removes it)."""
        self.require_writer()
        aliases = self.aliases
        if version is None:
            aliases.pop(alias, None)
        else:
            schema.check_version_name(alias)
            if alias in self.manifest["models"]:
                raise BadInput(f"alias {alias!r} clashes with a model version")
            aliases[alias] = self.resolve_version(version)
        with self.transaction():
            self.manifest["aliases"] = dict(sorted(aliases.items()))
            self.append_history({"event": "alias", "alias": alias, "model": aliases.get(alias)})

    def engine_cursor(self, key: str) -> dict | None:
        """The sync cursor gallery.engines recorded for `key` (an engine + collection), or None."""
        return self.manifest.get("engine_cursors", {}).get(key)

    def set_engine_cursor(self, key: str, cursor: dict | None) -> None:
        """Record (None: forget) an engine sync cursor: small JSON in the manifest, one commit,
        no history event (a sync writes it after every engine batch)."""
        self.require_writer()
        table = dict(self.manifest.get("engine_cursors", {}))
        if cursor is None:
            table.pop(key, None)
        else:
            table[key] = cursor
        self.manifest["engine_cursors"] = dict(sorted(table.items()))
        self.commit()

    def set_threshold(self, query_version: str, gallery_version: str, value: float) -> None:
        """Record the decision threshold for queries by one model against rows of another."""
        if not np.isfinite(value):
            raise BadInput(f"threshold must be finite, got {value}")
        info = self.model(query_version)
        gallery_version = self.resolve_version(gallery_version)
        info.thresholds[gallery_version] = float(value)
        with self.transaction():
            self.update_model(info)
            self.append_history({"event": "threshold", "query": info.version, "gallery": gallery_version,
                                 "value": float(value)})

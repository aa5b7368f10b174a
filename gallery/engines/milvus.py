"""Milvus (a server, or milvus-lite embedded in a local `.db` file: same client, same API).

A serving view is one collection: `row` (INT64 primary key = store row), `item_id`,
`identity`, `model_version` (VARCHAR) and `enrolled_at` (DOUBLE), each with an INVERTED
scalar index for filtering, and one `embedding` FLOAT_VECTOR searched by inner product
(the store's vectors are unit length, so IP = cosine, the store's score). The view
record (query model, thresholds, versions) is the collection property `gallery.view`.

Why one collection per query model rather than a partition key on model_version: what
a row serves (which vector, judged by which threshold) depends on the query model (a
backfill replaces a row's vector for v2 but not for v1), so two query models need two
copies of the row, and only a whole collection can sit behind an alias, which is what
makes the upgrade/rollback switch atomic for readers.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from gallery.engines.base import ENGINES, Engine, Hits, Rows, fill, local_path, pad_hits

PROPERTY = "gallery.view"
# Index types milvus-lite builds (a Milvus server builds these and more).
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ", "AUTOINDEX")
INDEX_PARAMS = {"IVF_FLAT": {"nlist": 1024}, "IVF_SQ8": {"nlist": 1024}, "HNSW": {"M": 32, "efConstruction": 200},
                "HNSW_SQ": {"M": 32, "efConstruction": 200, "sq_type": "SQ8"}}
PAGE = 16384  # Milvus caps one query's offset + limit at 16384 rows


@ENGINES.register("milvus")
class MilvusEngine(Engine):
    name = "milvus"

    def __init__(self, uri: str, timeout: float = 10.0) -> None:
        super().__init__(uri)
        try:
            from pymilvus import MilvusClient  # optional dependency (the [serving] extra)
        except ImportError:
            raise self.fail("connect", "pymilvus is not installed (pip install '.[serving]')") from None
        # pymilvus logs every failed RPC with a traceback before raising (we report the raised
        # error as one line instead), and milvus-lite's in-process gRPC server logs the RPCs it
        # does not implement (AllocTimestamp, which pymilvus only uses to wait on index builds).
        for name in ("pymilvus", "grpc._server"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        path = local_path(uri)
        if path is not None and not path.endswith(".db"):
            raise self.fail("connect", "a local Milvus (milvus-lite) is a file ending in .db, "
                            "a server an http(s):// URL")
        self.client = self.call("connect", MilvusClient, path or uri, timeout=timeout)
        self._loaded: set[str] = set()

    def _load(self, collection: str) -> None:
        # Milvus searches and queries only loaded collections; a reopened milvus-lite file
        # or a restarted server starts with them released. Loading a loaded one is a no-op.
        if collection not in self._loaded:
            self.call("load_collection", self.client.load_collection, collection)
            self._loaded.add(collection)

    def close(self) -> None:
        self.call("close", self.client.close)

    def exists(self, collection: str) -> bool:
        return bool(self.call("has_collection", self.client.has_collection, collection))

    def create_view(self, collection: str, dim: int, versions: list[str], index: str) -> None:
        from pymilvus import DataType, MilvusClient  # optional dependency (the [serving] extra)

        index = index.upper()
        if index not in INDEX_TYPES:
            raise self.fail("create_collection", f"index type {index!r} not one of {', '.join(INDEX_TYPES)}")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("item_id", DataType.VARCHAR, max_length=512)  # 128 UTF-8 bytes in the store
        schema.add_field("identity", DataType.VARCHAR, max_length=512)
        schema.add_field("model_version", DataType.VARCHAR, max_length=64)
        schema.add_field("enrolled_at", DataType.DOUBLE)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        params = self.client.prepare_index_params()
        params.add_index("embedding", index_type=index, metric_type="IP", params=INDEX_PARAMS.get(index, {}))
        for field in self.FIELDS:  # INVERTED: the scalar index both milvus-lite and a server build
            params.add_index(field, index_type="INVERTED")
        self.call("create_collection", self.client.create_collection, collection, schema=schema,
                  index_params=params)

    def dim(self, collection: str) -> int:
        info = self.call("describe_collection", self.client.describe_collection, collection)
        field = next(f for f in info["fields"] if f["name"] == "embedding")
        return int(field["params"]["dim"])

    def upsert(self, collection: str, rows: Rows) -> None:
        data = [{"row": int(r), "item_id": str(i), "identity": str(p), "model_version": str(m),
                 "enrolled_at": float(t), "embedding": v}
                for r, i, p, m, t, v in zip(rows.rows.tolist(), rows.item_ids, rows.identities, rows.models,
                                            rows.enrolled_at.tolist(), rows.vectors.tolist())]
        self.call("upsert", self.client.upsert, collection, data)

    def delete(self, collection: str, rows: np.ndarray) -> None:
        self.call("delete", self.client.delete, collection, ids=[int(r) for r in rows])

    def _pages(self, collection: str, lo: int, hi: int, fields: list[str]) -> list[dict]:
        # By primary-key ranges: one query may not reach past 16384 rows.
        self._load(collection)
        out: list[dict] = []
        for start in range(lo, hi, PAGE):
            stop = min(hi, start + PAGE)
            out += self.call("query", self.client.query, collection, filter=f"row >= {start} and row < {stop}",
                             output_fields=["row", *fields], limit=stop - start)
        return out

    def settle(self, collection: str) -> None:
        # Seals the written rows into segments the vector index covers (milvus-lite otherwise
        # scans its in-memory table in Python on every search; a server seals on its own
        # schedule). Once per sync, after the last batch.
        self.call("flush", self.client.flush, collection)

    def models_in(self, collection: str, lo: int, hi: int) -> dict[int, str]:
        return {int(h["row"]): str(h["model_version"]) for h in self._pages(collection, lo, hi, ["model_version"])}

    def scan(self, collection: str, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = sorted(self._pages(collection, 0, upto, ["model_version", "embedding"]), key=lambda h: int(h["row"]))
        return (np.array([int(h["row"]) for h in found], np.int64),
                np.array([str(h["model_version"]) for h in found], dtype=str),
                np.array([np.asarray(h["embedding"], np.float32) for h in found], np.float32).reshape(len(found), -1))

    def meta(self, collection: str) -> dict | None:
        info = self.call("describe_collection", self.client.describe_collection, collection)
        raw = (info.get("properties") or {}).get(PROPERTY)
        return json.loads(raw) if raw else None

    def set_meta(self, collection: str, meta: dict) -> None:
        self.call("alter_collection_properties", self.client.alter_collection_properties, collection,
                  properties={PROPERTY: json.dumps(meta, sort_keys=True)})

    def alias_target(self, alias: str) -> str | None:
        if alias not in self.call("list_aliases", self.client.list_aliases).get("aliases", []):
            return None
        return str(self.call("describe_alias", self.client.describe_alias, alias)["collection_name"])

    def point_alias(self, alias: str, collection: str) -> None:
        if self.alias_target(alias) is None:
            self.call("create_alias", self.client.create_alias, collection, alias)
        else:
            self.call("alter_alias", self.client.alter_alias, collection, alias)

    def drop(self, collection: str) -> None:
        self.call("drop_collection", self.client.drop_collection, collection)

    def knobs(self, ef_search: int | None, nprobe: int | None) -> dict:
        return {name: value for name, value in (("ef", ef_search), ("nprobe", nprobe)) if value is not None}

    def search(self, collection: str, queries: np.ndarray, k: int, versions: list[str],
               params: dict | None = None) -> Hits:
        # One vector field holds every row's serving vector: one search answers for all versions.
        self._load(collection)
        found = self.call("search", self.client.search, collection, data=queries.tolist(), limit=k,
                          output_fields=["item_id", "identity", "model_version"],
                          search_params={"metric_type": "IP", "params": params or {}})
        hits = pad_hits(len(queries), k)
        for q, per_query in enumerate(found):
            ranked = []
            for h in per_query:
                entity = h.get("entity", h)
                row = h.get("row", h.get("id"))
                ranked.append((float(h["distance"]), int(row), str(entity["item_id"]), str(entity["identity"]),
                               str(entity["model_version"])))
            fill(hits, q, ranked)
        return hits

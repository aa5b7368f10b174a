"""Qdrant (a server URL, or local mode in a folder: same client, same API).

A serving view is one collection with a *named vector per model version*: each point
(id = store row) carries its serving vector under the name of the version that made it,
and the payload item_id, identity, model_version, enrolled_at (payload indexes on each;
local mode ignores them, a server uses them for filtering). Scores are dot products of
unit vectors (= cosine, the store's score). A query runs once per version present,
`using` that version's vector (points without it are not candidates), and the hits are
merged by score: the same top-k as one search over every row. The view record lives in
the collection's metadata under "gallery".

Named vectors are fixed when a collection is created, so a view is created with a vector
for every version the store knows; a row whose version the collection lacks (a model
registered later) makes sync build a new generation of the view (sync.py).
"""

from __future__ import annotations

import warnings

import numpy as np

from gallery.engines.base import ENGINES, Engine, Hits, Rows, fill, local_path, pad_hits

KEY = "gallery"


@ENGINES.register("qdrant")
class QdrantEngine(Engine):
    name = "qdrant"

    def __init__(self, uri: str, timeout: float = 10.0) -> None:
        super().__init__(uri)
        try:
            from qdrant_client import QdrantClient  # optional dependency (the [serving] extra)
        except ImportError:
            raise self.fail("connect", "qdrant-client is not installed (pip install '.[serving]')") from None
        path = local_path(uri)
        if uri == ":memory:":  # nothing persisted: for benchmarks and one-process experiments
            self.client = self.call("connect", QdrantClient, location=":memory:")
        elif path is not None:
            self.client = self.call("connect", QdrantClient, path=path)
        else:
            self.client = self.call("connect", QdrantClient, url=uri, timeout=int(timeout), check_compatibility=False)

    def close(self) -> None:
        self.call("close", self.client.close)

    def exists(self, collection: str) -> bool:
        return bool(self.call("collection_exists", self.client.collection_exists, collection))

    def create_view(self, collection: str, dim: int, versions: list[str], index: str) -> None:
        from qdrant_client import models  # optional dependency (the [serving] extra)

        config = {v: models.VectorParams(size=dim, distance=models.Distance.DOT) for v in versions}
        self.call("create_collection", self.client.create_collection, collection, vectors_config=config)
        kinds = {"item_id": models.PayloadSchemaType.KEYWORD, "identity": models.PayloadSchemaType.KEYWORD,
                 "model_version": models.PayloadSchemaType.KEYWORD, "enrolled_at": models.PayloadSchemaType.FLOAT}
        with warnings.catch_warnings():  # local mode warns that payload indexes are a no-op there
            warnings.simplefilter("ignore", UserWarning)
            for field, kind in kinds.items():
                self.call("create_payload_index", self.client.create_payload_index, collection, field, kind)

    def _vectors_config(self, collection: str) -> dict:
        info = self.call("get_collection", self.client.get_collection, collection)
        return dict(info.config.params.vectors or {})

    def dim(self, collection: str) -> int:
        sizes = {params.size for params in self._vectors_config(collection).values()}
        return int(sizes.pop()) if len(sizes) == 1 else -1

    def vector_names(self, collection: str) -> set[str]:
        return set(self._vectors_config(collection))

    def upsert(self, collection: str, rows: Rows) -> None:
        from qdrant_client import models  # optional dependency (the [serving] extra)

        points = [models.PointStruct(id=int(r), vector={str(m): v},
                                     payload={"item_id": str(i), "identity": str(p), "model_version": str(m),
                                              "enrolled_at": float(t)})
                  for r, i, p, m, t, v in zip(rows.rows.tolist(), rows.item_ids, rows.identities, rows.models,
                                              rows.enrolled_at.tolist(), rows.vectors.tolist())]
        self.call("upsert", self.client.upsert, collection, points=points, wait=True)

    def delete(self, collection: str, rows: np.ndarray) -> None:
        from qdrant_client import models  # optional dependency (the [serving] extra)

        self.call("delete", self.client.delete, collection,
                  points_selector=models.PointIdsList(points=[int(r) for r in rows]), wait=True)

    def models_in(self, collection: str, lo: int, hi: int) -> dict[int, str]:
        found = self.call("retrieve", self.client.retrieve, collection, ids=list(range(lo, hi)),
                          with_payload=["model_version"], with_vectors=False)
        return {int(p.id): str(p.payload["model_version"]) for p in found}

    def scan(self, collection: str, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        points, offset = [], None
        while True:
            page, offset = self.call("scroll", self.client.scroll, collection, limit=4096, offset=offset,
                                     with_payload=["model_version"], with_vectors=True)
            points += [p for p in page if int(p.id) < upto]
            if offset is None:
                break
        points.sort(key=lambda p: int(p.id))
        models_ = [str(p.payload["model_version"]) for p in points]
        return (np.array([int(p.id) for p in points], np.int64), np.array(models_, dtype=str),
                np.array([p.vector[m] for p, m in zip(points, models_)], np.float32).reshape(len(points), -1))

    def meta(self, collection: str) -> dict | None:
        info = self.call("get_collection", self.client.get_collection, collection)
        return (info.config.metadata or {}).get(KEY)

    def set_meta(self, collection: str, meta: dict) -> None:
        self.call("update_collection", self.client.update_collection, collection, metadata={KEY: meta})

    def alias_target(self, alias: str) -> str | None:
        found = self.call("get_aliases", self.client.get_aliases).aliases
        return next((a.collection_name for a in found if a.alias_name == alias), None)

    def point_alias(self, alias: str, collection: str) -> None:
        from qdrant_client import models  # optional dependency (the [serving] extra)

        ops = []
        if self.alias_target(alias) is not None:  # delete + create in one request: an atomic switch
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection,
                                                                               alias_name=alias)))
        self.call("update_collection_aliases", self.client.update_collection_aliases, change_aliases_operations=ops)

    def drop(self, collection: str) -> None:
        self.call("delete_collection", self.client.delete_collection, collection)

    def knobs(self, ef_search: int | None, nprobe: int | None) -> dict:
        return {} if ef_search is None else {"hnsw_ef": ef_search}  # no IVF in Qdrant

    def search(self, collection: str, queries: np.ndarray, k: int, versions: list[str],
               params: dict | None = None) -> Hits:
        from qdrant_client import models  # optional dependency (the [serving] extra)

        search_params = models.SearchParams(**params) if params else None
        requests = [models.QueryRequest(query=q.tolist(), using=v, limit=k, with_payload=True, params=search_params)
                    for q in queries for v in versions]
        answers = self.call("query_batch_points", self.client.query_batch_points, collection,
                            requests=requests) if requests else []
        hits = pad_hits(len(queries), k)
        for q in range(len(queries)):
            ranked = [(float(p.score), int(p.id), str(p.payload["item_id"]), str(p.payload["identity"]),
                       str(p.payload["model_version"]))
                      for answer in answers[q * len(versions):(q + 1) * len(versions)] for p in answer.points]
            fill(hits, q, ranked)
        return hits

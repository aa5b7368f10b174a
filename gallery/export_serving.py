"""Export a store to serving collections: Qdrant (named vector per model version) and
Milvus (bulk-insert NumPy column files + the collection schema).

What a serving copy must keep from a versioned gallery: which model made each vector.
- Qdrant: one point per live row (point id = store row, never reused), one *named
  vector per model version* (the row's original embedding under the version that
  enrolled it, plus every backfilled re-embedding under its version), payload
  item_id, identity, enrolled_version and `model_version`: the version whose vector
  the active query model uses for that row (the store's own search semantics).
  A query by the active model runs once per serving version present, `using` that
  version's vector with a filter `model_version == version`, and the hits are merged
  by score (what `query_qdrant` does); backfill later = upsert one named vector.
- Milvus: multi-vector rows cannot leave a vector out, so the export is the serving
  view: fields row (INT64, primary), item_id, identity, enrolled_version (VARCHAR),
  model_version (VARCHAR, partition key) and embedding (FLOAT_VECTOR, COSINE), as one
  `<field>.npy` per field (Milvus bulk insert's NumPy format) plus schema.json.
Both are written from the live rows in chunks, so a store larger than memory exports.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from gallery.errors import BadInput
from gallery.store.items import decode

if TYPE_CHECKING:
    from gallery.store import Store

CHUNK = 65536


def version_vectors(store: "Store") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """version -> (rows, float32 vectors): originals by enrolling version + backfills."""
    n = store.committed
    raw_models = decode(store.h5["items"]["model"][:n])
    deleted = store.tombstones()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for version in np.unique(raw_models[~deleted]).tolist():
        rows = np.flatnonzero((raw_models == version) & ~deleted)
        out[str(version)] = (rows, np.asarray(store.h5["items"]["embedding"][rows] if rows.size else
                                              np.empty((0, store.dim)), np.float32))
    if "rollout" in store.h5:
        from gallery.rollout import overlay

        for version in overlay.versions(store):
            g = overlay.group(store, version)
            count = overlay.state(g)[0]
            rows = g["row"][:count]
            keep = ~deleted[rows]
            old_rows, old_vecs = out.get(version, (np.empty(0, np.int64), np.empty((0, store.dim), np.float32)))
            vecs = np.asarray(g["embedding"][:count], np.float32)[keep]
            out[version] = (np.concatenate([old_rows, rows[keep]]), np.concatenate([old_vecs, vecs]))
    return out


def _live_chunks(store: "Store") -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    cols = store.columns()
    raw_models = decode(store.h5["items"]["model"][: store.committed])
    live = np.flatnonzero(~cols["deleted"])
    for lo in range(0, live.size, CHUNK):
        rows = live[lo : lo + CHUNK]
        yield rows, {"item_id": cols["id"][rows], "identity": cols["identity"][rows],
                     "model_version": cols["model"][rows], "enrolled_version": raw_models[rows]}


def export_qdrant(store: "Store", client: Any, collection: str, batch: int = 1024) -> dict:
    """Create `collection` in a qdrant_client.QdrantClient (local or remote) and upload."""
    from qdrant_client import models

    per_version = version_vectors(store)
    if client.collection_exists(collection):
        raise BadInput(f"Qdrant collection {collection!r} already exists; choose another name")
    client.create_collection(collection, vectors_config={
        v: models.VectorParams(size=store.dim, distance=models.Distance.COSINE) for v in per_version})
    with warnings.catch_warnings():  # local mode says payload indexes are a no-op there; a server uses it
        warnings.simplefilter("ignore", UserWarning)
        client.create_payload_index(collection, "model_version", models.PayloadSchemaType.KEYWORD)
    lookup = {v: dict(zip(rows.tolist(), range(len(rows)))) for v, (rows, _) in per_version.items()}
    points = 0
    for rows, payload in _live_chunks(store):
        structs = []
        for j, row in enumerate(rows.tolist()):
            vectors = {v: per_version[v][1][lookup[v][row]].tolist() for v in per_version if row in lookup[v]}
            structs.append(models.PointStruct(id=row, vector=vectors,
                                              payload={k: str(col[j]) for k, col in payload.items()}))
        for lo in range(0, len(structs), batch):
            client.upsert(collection, points=structs[lo : lo + batch], wait=True)
        points += len(structs)
    return {"collection": collection, "points": points, "vectors": {v: len(r) for v, (r, _) in per_version.items()},
            "dim": store.dim, "active_model": store.active_model}


def query_qdrant(client: Any, collection: str, query: np.ndarray, k: int, versions: list[str]) -> list[tuple]:
    """Serving-side search: per version `using` its vector and filtered to its rows, merged."""
    from qdrant_client import models

    hits = []
    for v in versions:
        flt = models.Filter(must=[models.FieldCondition(key="model_version", match=models.MatchValue(value=v))])
        res = client.query_points(collection, query=np.asarray(query, np.float32).tolist(), using=v,
                                  query_filter=flt, limit=k, with_payload=True)
        hits += [(p.score, p.id, p.payload["item_id"], v) for p in res.points]
    return sorted(hits, key=lambda h: -h[0])[:k]


def milvus_schema(store: "Store") -> dict:
    return {
        "collection": Path(store.path).stem, "description": f"gallery store {store.path}",
        "fields": [
            {"name": "row", "type": "INT64", "is_primary": True, "auto_id": False},
            {"name": "item_id", "type": "VARCHAR", "max_length": 128},
            {"name": "identity", "type": "VARCHAR", "max_length": 128},
            {"name": "enrolled_version", "type": "VARCHAR", "max_length": 64},
            {"name": "model_version", "type": "VARCHAR", "max_length": 64, "is_partition_key": True},
            {"name": "embedding", "type": "FLOAT_VECTOR", "dim": store.dim},
        ],
        "index": {"field": "embedding", "metric_type": "COSINE", "index_type": "HNSW"},
        "active_model": store.active_model, "models": [m.version for m in store.models()],
        "query": "filter `model_version == \"<v>\"` per serving version, merge by score",
    }


def export_milvus(store: "Store", out: str | Path) -> dict:
    """Write OUT/<field>.npy (bulk-insert NumPy format) and OUT/schema.json."""
    out = Path(out)
    if out.exists():
        raise BadInput(f"export folder already exists: {out}")
    if not out.parent.is_dir():
        raise BadInput(f"output folder does not exist: {out.parent}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.mkdir()
    try:
        n = store.count()
        emb = np.lib.format.open_memmap(tmp / "embedding.npy", "w+", np.float32, (n, store.dim))
        fields: dict[str, list[np.ndarray]] = {"row": [], "item_id": [], "identity": [],
                                               "enrolled_version": [], "model_version": []}
        at = 0
        for rows, payload in _live_chunks(store):
            emb[at : at + len(rows)] = store.embeddings(rows)  # the serving vectors (backfills applied)
            at += len(rows)
            fields["row"].append(rows.astype(np.int64))
            for name, col in payload.items():
                fields[name].append(np.asarray(col, dtype=str))
        emb.flush()
        del emb
        for name, parts in fields.items():
            values = np.concatenate(parts) if parts else np.empty(0, np.int64 if name == "row" else "<U1")
            np.save(tmp / f"{name}.npy", values, allow_pickle=False)
        (tmp / "schema.json").write_text(json.dumps(milvus_schema(store), indent=2))
        os.replace(tmp, out)  # the folder appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "rows": n, "dim": store.dim, "files": sorted(p.name for p in out.iterdir())}

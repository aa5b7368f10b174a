"""The scale-out commands through the CLI: search-shards, search-gpu, export-serving."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cli_helpers import ok, run
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store

DIM = 12




@pytest.fixture()
def shards(tmp_path):
    x = l2_normalize(np.random.default_rng(0).normal(size=(400, DIM)))
    paths = []
    for s in range(2):
        path = tmp_path / f"s{s}.h5"
        with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m")) as st:
            st.enroll(x[s::2], [f"i{i}" for i in range(s, 400, 2)])
        paths.append(path)
    np.save(tmp_path / "q.npy", x[[3, 10, 201]] + 0.01)
    return x, paths, tmp_path / "q.npy"


def test_search_shards(shards):
    x, paths, q = shards
    records = ok("search-shards", *paths, "--embeddings", q, "-k", "3", "--index", "flat", "--json")
    assert [r["hits"][0]["item_id"] for r in records] == ["i3", "i10", "i201"]
    assert records[0]["hits"][0]["shard"] == str(paths[1]) and records[1]["hits"][0]["shard"] == str(paths[0])
    assert "shard 1" in ok("search-shards", *paths, "--embeddings", q).stdout


def test_search_gpu_matches_flat_search(shards):
    pytest.importorskip("torch")
    _, paths, q = shards
    ours = ok("search-gpu", paths[0], "--embeddings", q, "-k", "4", "--device", "cpu", "--dtype", "float32", "--json")
    ref = ok("search", paths[0], "--embeddings", q, "-k", "4", "--index", "flat", "--json")
    assert [[h["item_id"] for h in r["hits"]] for r in ours] == [[h["item_id"] for h in r["hits"]] for r in ref]


def test_export_serving_is_an_alias_of_sync(shards, tmp_path):
    _, paths, _ = shards
    store = tmp_path / "g.h5"
    shutil.copytree(paths[0], store)  # a sync records its cursor in the store
    assert run("export-serving", store).exit_code == 2
    pytest.importorskip("pymilvus")
    out = ok("export-serving", store, "--milvus", tmp_path / "m.db", "--collection", "faces", "--json")
    assert (out["engine"], out["collection"], out["upserted"]) == ("milvus", "faces__v1", 200)
    again = ok("sync", "milvus", store, "--uri", tmp_path / "m.db", "--collection", "faces", "--json")
    assert again["upserted"] == again["deleted"] == 0  # the same sync: nothing left to send
    out = ok("export-serving", store, "--qdrant", tmp_path / "qd", "--collection", "faces", "--json")
    assert (out["engine"], out["upserted"]) == ("qdrant", 200)

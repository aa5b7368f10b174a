"""`gallery sync` and `gallery search --engine` through the CLI: the engine answers like the
local search, and engine failures are one line naming the engine and the operation,
exit 2, with the store byte-identical."""

from __future__ import annotations


import numpy as np
import pytest

from cli_helpers import ok, run, store_sha256
from engine_helpers import KINDS, engine_uri, unit, upgrade, v1_store
from gallery.store import ModelInfo, Store


def _sha(path) -> str:
    return store_sha256(path)


@pytest.mark.parametrize("kind", KINDS)
def test_sync_then_search_through_the_engine_decides_like_the_store(kind, tmp_path):
    store = v1_store(tmp_path / "g.h5", threshold=0.75)  # random 16-d queries: rejected
    uri = engine_uri(kind, tmp_path)
    np.save(tmp_path / "q.npy", np.vstack([unit(6, 1)[:6] + 0.1 * unit(6, 3), unit(6, 4)]))
    out = ok("sync", kind, store, "--uri", uri, "--batch", "50", "--index", "FLAT", "--json")
    assert (out["collection"], out["upserted"], out["batches"]) == ("g__v1", 120, 3)
    assert ok("sync", kind, store, "--uri", uri, "--json")["upserted"] == 0
    ours = ok("search", store, "--engine", uri, "--embeddings", tmp_path / "q.npy", "-k", "4", "--json")
    ref = ok("search", store, "--embeddings", tmp_path / "q.npy", "-k", "4", "--index", "flat", "--json")
    assert [r["match"] for r in ours] == [r["match"] for r in ref]
    assert [r["rejected"] for r in ours] == [r["rejected"] for r in ref] and any(r["rejected"] for r in ref)
    assert [[h["item_id"] for h in r["hits"]] for r in ours] == [[h["item_id"] for h in r["hits"]] for r in ref]
    named = ok("search", store, "--engine", f"{kind}:{uri}", "--embeddings", tmp_path / "q.npy", "-k", "4",
               "--ef-search", "64", "--json")  # the knob reaches the engine (FLAT: exact regardless)
    assert named == ours


def _fails(args, store, engine: str, operation: str) -> str:
    before = _sha(store)
    result = run(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {engine} {operation} failed"), result.stderr
    assert _sha(store) == before
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_engine_errors_are_one_line_exit_2_store_unchanged(kind, tmp_path):
    store = v1_store(tmp_path / "g.h5")
    uri = engine_uri(kind, tmp_path)
    np.save(tmp_path / "q.npy", unit(2, 5))
    down = "http://127.0.0.1:9"  # nothing listens on the discard port
    _fails(["sync", kind, store, "--uri", down], store, kind, "connect" if kind == "milvus" else "get_aliases")
    ok("sync", kind, store, "--uri", uri)
    line = _fails(["search", store, "--engine", f"{kind}:{uri}", "--collection", "nope", "--embeddings",
                   tmp_path / "q.npy"], store, kind, "search")
    assert "no alias or collection 'nope'" in line
    with Store.open(store, "a") as st:
        upgrade(st)  # the engine still serves v1's view: v2 queries must not meet it
    line = _fails(["search", store, "--engine", uri, "--embeddings", tmp_path / "q.npy"], store, kind, "search")
    assert "serves query model v1, the store's is v2" in line
    small = tmp_path / "small.h5"  # same alias "g", another dimension
    with Store.create(small, ModelInfo(version="v1", dim=8, model_id="m8")) as st:
        st.enroll(np.eye(8, dtype=np.float32), [f"e{i}" for i in range(8)])
    line = _fails(["sync", kind, small, "--uri", uri, "--collection", "g"], small, kind, "sync")
    assert "dimension 16, the store 8" in line
    stranger = v1_store(tmp_path / "stranger.h5", seed=4)  # same alias and dimension, another store
    line = _fails(["sync", kind, stranger, "--uri", uri, "--collection", "g"], stranger, kind, "sync")
    assert "holds the view of another store" in line


def test_search_images_through_the_engine(tmp_path):
    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder, write_digit_folder

    make_onnx_encoder(tmp_path / "v1.onnx")
    write_digit_folder(tmp_path / "images", n_per_class=4)
    write_digit_folder(tmp_path / "queries", n_per_class=1, seed=5)
    store, uri = tmp_path / "g.h5", engine_uri("milvus", tmp_path)
    ok("init", store, "--model", tmp_path / "v1.onnx")
    ok("enroll", store, "--images", tmp_path / "images")
    ok("sync", "milvus", store, "--uri", uri, "--index", "FLAT")
    ours = ok("search", store, "--engine", uri, "--image", tmp_path / "queries", "-k", "3", "--json")
    ref = ok("search", store, "--image", tmp_path / "queries", "-k", "3", "--index", "flat", "--json")
    assert [r["query"] for r in ours] == [r["query"] for r in ref] and len(ours) == 10
    assert [[h["item_id"] for h in r["hits"]] for r in ours] == [[h["item_id"] for h in r["hits"]] for r in ref]
    assert [(r["match"], r["rejected"]) for r in ours] == [(r["match"], r["rejected"]) for r in ref]

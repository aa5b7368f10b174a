"""Bit rot: one flipped bit in a segment, a deletion file or the index sidecar. `verify` names
the damaged file (exit 1); search never answers from damaged data (it refuses with one line,
or, for the sidecar, rebuilds it from the store and answers exactly)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_helpers import run
from gallery.index import sidecar_path
from gallery.store import ModelInfo, Store
from gallery.search import search

DIM = 8


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "g.h5"
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m")) as st:
        st.enroll(np.random.default_rng(0).normal(size=(300, DIM)), [f"r{i}" for i in range(300)])
        st.remove(["r3", "r4"])
    np.save(tmp_path / "q.npy", np.random.default_rng(1).normal(size=(2, DIM)).astype(np.float32))
    return path


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _one_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_flipped_bit_in_segment_data(store, tmp_path):
    segment = next(store.glob("seg-*.h5"))
    with Store.open(store) as st:
        emb = st.embeddings()
    raw = segment.read_bytes()
    # A byte inside the stored vectors (found by value: row 150's first float32).
    offset = raw.index(np.float32(emb[150, 0]).tobytes())
    _flip(segment, offset)
    verify = run("verify", store, "--json")
    assert verify.exit_code == 1 and f"segment file {segment.name} fails its checksum" in verify.stdout
    assert run("verify", store, "--quick", "--json").exit_code == 0  # sizes only: --quick cannot see a flip
    search = run("search", store, "--embeddings", tmp_path / "q.npy", "--index", "flat")
    assert search.exit_code == 2 and f"{segment.name} is damaged" in _one_error(search)


def test_flipped_bit_in_a_deletion_file(store, tmp_path):
    deletions = next(store.glob("del-*.npy"))
    _flip(deletions, deletions.stat().st_size - 12)  # inside the row numbers: could bring r3 back
    verify = run("verify", store, "--json")
    assert verify.exit_code == 1 and f"deletions file {deletions.name} fails its checksum" in verify.stdout
    search = run("search", store, "--embeddings", tmp_path / "q.npy")
    assert search.exit_code == 2 and f"{deletions.name} is damaged" in _one_error(search)


def test_flipped_bit_in_the_sidecar_is_rebuilt_never_searched(store, tmp_path):
    with Store.open(store) as st:
        reference = search(st, np.load(tmp_path / "q.npy"), k=5, kind="flat").ids.tolist()
        faiss_file = sidecar_path(st).name
    good = store.parent / "good"
    shutil.copytree(store, good)
    _flip(store / faiss_file, (store / faiss_file).stat().st_size - 20)  # the id map at the end
    verify = run("verify", store, "--json")
    assert verify.exit_code == 1 and f"{faiss_file} does not match the checksum" in verify.stdout
    hits = run("search", store, "--embeddings", tmp_path / "q.npy", "-k", "5", "--json")
    assert hits.exit_code == 0
    assert [[h["item_id"] for h in q["hits"]] for q in json.loads(hits.stdout)] == reference
    assert run("verify", store).exit_code == 0  # rebuilt by the search
    # Another store's valid sidecar swapped in: its record is for other content (stale), or,
    # with the record kept, its file fails the checksum: never searched either way.
    with Store.open(good, "a") as st:
        st.enroll(np.random.default_rng(5).normal(size=(20, DIM)), [f"x{i}" for i in range(20)])
        search(st, np.load(tmp_path / "q.npy"), k=5)  # its sidecar now holds 20 more vectors
        other = sidecar_path(st).name
    shutil.copy(good / other, store / json.loads((store / "sidecar.index.json").read_text())["file"])
    assert run("verify", store, "--json").exit_code == 1
    hits = run("search", store, "--embeddings", tmp_path / "q.npy", "-k", "5", "--json")
    assert [[h["item_id"] for h in q["hits"]] for q in json.loads(hits.stdout)] == reference


def test_flipped_bit_in_the_manifest(store, tmp_path):
    """A flip that still parses as JSON (one digit of the committed count): refused at open by
    the manifest's own checksum, by every command, with one line; nothing is written."""
    manifest = store / "MANIFEST"
    text = manifest.read_text()
    at = text.index('"committed": 300') + len('"committed": ')
    manifest.write_text(text[:at] + "2" + text[at + 1:])  # 300 -> 200: valid JSON, wrong
    for args in (("info", store), ("verify", store), ("search", store, "--embeddings", tmp_path / "q.npy"),
                 ("remove", store, "r1")):
        result = run(*args)
        assert result.exit_code == 2 and "MANIFEST fails its checksum" in _one_error(result), args
    assert manifest.read_text() != text and json.loads(manifest.read_text())["committed"] == 200

"""`gallery upgrade --adapter` (issue 20): a 64-d v1 store moved to a 128-d v2 through an
adapter trained by `gallery train-adapter`, end to end through the CLI: the search after
the upgrade against a naive reference (numpy over h(stored v1 vector)), rollback giving the
very same answers as before, and every refusal leaving the store unchanged (exit 2).
Kill-and-resume of the adapter run: tests/test_fault_syscalls.py (scenario upgrade-adapter)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_helpers import ok, run, store_sha256

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tiny_models import make_onnx_adapter, make_onnx_encoder, write_digit_folder

    root = tmp_path_factory.mktemp("adapter_rollout")
    make_onnx_encoder(root / "v1.onnx", dim=64, seed=0)
    make_onnx_encoder(root / "v2.onnx", dim=128, seed=1)
    make_onnx_encoder(root / "v3.onnx", dim=128, seed=2)
    write_digit_folder(root / "gallery", n_per_class=5, seed=0)
    write_digit_folder(root / "probes", n_per_class=2, seed=1)
    write_digit_folder(root / "eval", n_per_class=6, seed=2)
    write_digit_folder(root / "adapt", n_per_class=8, seed=3)
    ok("train-adapter", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--data", root / "adapt",
       "--out", root / "a.onnx", "--epochs", "3", "--hidden", "32", "--json")
    make_onnx_adapter(root / "wrong.onnx", root / "v1.onnx", root / "v3.onnx")  # for v1 -> v3
    ok("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--adapter", root / "a.onnx",
       "--data", root / "eval", "--json", root / "report.json", "--max-new-drop", "1", "--impostor-pairs", "300")
    store = root / "stores" / "g"
    store.parent.mkdir()
    ok("init", store, "--model", root / "v1.onnx")
    ok("enroll", store, "--images", root / "gallery")
    ok("threshold", "set", store, "v1", "v1", "0.2")
    return root, store


@pytest.fixture
def work(base, tmp_path):
    root, store = base
    copy = tmp_path / "g"
    shutil.copytree(store, copy)
    return root, copy


def _search(store, root) -> str:
    result = run("search", store, "--image", root / "probes", "-k", "5", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


def test_upgrade_with_adapter_searches_like_the_reference_and_rolls_back_exactly(work):
    from gallery.adapter import load_adapter
    from gallery.encoder import load_encoder
    from gallery.ingest import embed_queries
    from gallery.preprocess import l2_normalize
    from gallery.store import Store, spaces

    root, store = work
    before = _search(store, root)
    done = ok("upgrade", store, "--model", root / "v2.onnx", "--adapter", root / "a.onnx",
              "--report", root / "report.json", "--batch-size", "16", "--json")
    assert (done["from"], done["to"], done["route"]) == ("v1", "v2", "adapter")
    assert done["adapter"]["rows"] == 50 and done["adapter"]["from_dim"] == 64
    assert ok("verify", store, "--json")["ok"]
    report = json.loads((root / "report.json").read_text())
    adapted = next(t["threshold"] for t in report["thresholds"] if (t["query"], t["gallery"]) == ("new", "adapted"))
    with Store.open(store) as st:
        assert st.model("v2").thresholds["v1"] == pytest.approx(adapted)
        assert [s["dim"] for s in st.manifest["segments"]] == [64] and st.model("v2").dim == 128
        assert [f["provenance"] for f in st.manifest["overlays"]["v2"]["files"]] == ["adapter"] * 4
        raw = spaces.raw_vectors(st, np.arange(50))
        ids = st.columns()["id"]
    # the reference: v2 queries against h(stored v1 vector), brute force
    queries, names, _ = embed_queries(load_encoder(root / "v2.onnx"), [root / "probes"])
    mapped = l2_normalize(load_adapter(root / "a.onnx").apply(raw))
    scores = l2_normalize(queries) @ mapped.T
    after = json.loads(_search(store, root))
    assert [r["query"] for r in after] == names
    for q, record in enumerate(after):
        top = np.argsort(-scores[q], kind="stable")[:5]
        assert [h["item_id"] for h in record["hits"]] == [str(ids[r]) for r in top]
        np.testing.assert_allclose([h["score"] for h in record["hits"]], scores[q, top], atol=1e-5)
        assert {h["model_version"] for h in record["hits"]} == {"v1"}
        assert all(h["threshold"] == pytest.approx(adapted) for h in record["hits"])
    ok("rollback", store)
    assert _search(store, root) == before  # the v1 query path, byte for byte
    assert ok("verify", store, "--json")["ok"]


def test_refusals_exit_2_and_leave_the_store_unchanged(work):
    root, store = work
    digest = store_sha256(store)
    cases = [
        ((), "give that adapter with --adapter"),  # the report scored an adapter; none given
        (("--adapter", root / "wrong.onnx"), "maps .* -> .*, but the new model is"),
        (("--adapter", root / "v1.onnx"), "not a gallery adapter"),
    ]
    for extra, message in cases:
        result = run("upgrade", store, "--model", root / "v2.onnx", "--report", root / "report.json", *extra)
        assert result.exit_code == 2, result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        import re
        assert re.search(message, lines[0]), lines[0]
        assert store_sha256(store) == digest
    # a v3 (128-d) with v2's report and the v1->v3 adapter: the report did not score it
    result = run("upgrade", store, "--model", root / "v3.onnx", "--report", root / "report.json",
                 "--adapter", root / "wrong.onnx")
    assert result.exit_code == 2 and "error:" in result.stderr
    assert store_sha256(store) == digest


def test_another_dim_without_adapter_or_projection_is_refused_in_one_line():
    """The route check itself (a check-compat report for two dims always scores an adapter
    or a projection, so the CLI cannot reach this case without a hand-made report)."""
    from pathlib import Path

    from gallery.errors import BadInput
    from gallery.rollout.upgrade import _route
    from gallery.store import ModelInfo

    class Named:
        path = Path("/stores/g")

    old, new = ModelInfo(version="v1", dim=64), ModelInfo(version="v2", dim=128)
    with pytest.raises(BadInput, match=r"--model gives 128-d embeddings, the query model v1 of /stores/g gives "
                                       r"64-d: give --adapter .* or a model trained with `train-compatible --dim`"):
        _route(Named(), {"models": {}}, old, new, None)
    assert _route(Named(), {"models": {}}, old, ModelInfo(version="v2", dim=64), None) == "direct"
    projecting = ModelInfo(version="v2", dim=128, metadata={"gallery.old_space_dim": "64"})
    assert _route(Named(), {"models": {}}, old, projecting, None) == "old_space"

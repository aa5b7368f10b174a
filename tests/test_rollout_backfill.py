"""Lazy backfill on real digit images: rows without (or with changed) images stay v1,
backfilled rows equal an independent v2 encoding, rollback hides them exactly, lineage
v1->v2->v3, rows keep their own model over older backfills, --trust-images."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest

from gallery.encoder import embed_paths, load_encoder
from gallery.index import check_sidecar
from gallery.preprocess import l2_normalize
from gallery.store import Store
from gallery.store.ranges import embeddings_between
from gallery.store import manifest as store_manifest  # hand edits keep its checksum valid

pytest.importorskip("torch")
from cli_helpers import ok, report, run  # noqa: E402


def test_backfill_then_rollback_then_upgrade_again(rollout_work, tmp_path):
    root, store, passing, _ = rollout_work
    images = tmp_path / "images"
    shutil.copytree(root / "gallery", images)
    gone = sorted(images.rglob("*.png"))[::7]
    for p in gone:
        p.unlink()
    changed = sorted(images.rglob("*.png"))[3]
    changed.write_bytes(sorted((root / "probes").rglob("*.png"))[0].read_bytes())
    with Store.open(store) as st:
        v1_emb, ids = st.embeddings(), st.columns()["id"]
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    result = ok("backfill", store, "--images", images, "--batch-size", "8", "--json")
    assert result["skipped_no_image"] == len(gone) and result["embedded"] == len(ids) - len(gone) - 1
    assert result["remaining_older_rows"] == len(gone) + 1  # the rows left on v1 (status below), after the run
    with Store.open(store) as st:
        cols, emb = st.columns(), st.embeddings()
        assert check_sidecar(st.verify(), st)["ok"]
        for lo, hi in ((0, 5), (3, len(ids))):  # the block reader of index builds sees backfills too
            assert np.array_equal(embeddings_between(st, lo, hi), emb[lo:hi])
    expect_v2 = np.array([(images / i).is_file() and (images / i) != changed for i in ids])
    assert (cols["model"] == np.where(expect_v2, "v2", "v1")).all()
    paths = [images / i for i in ids[expect_v2]]
    reference = l2_normalize(embed_paths(load_encoder(root / "v2.onnx"), paths, batch_size=3))
    assert np.allclose(emb[expect_v2], reference, atol=1e-5)
    assert np.array_equal(emb[~expect_v2], v1_emb[~expect_v2])
    status = ok("backfill", store, "--status", "--json")
    assert status["ok"] and status["rows_per_model"] == {"v1": len(gone) + 1, "v2": int(expect_v2.sum())}
    damaged = tmp_path / "damaged.h5"
    shutil.copytree(store, damaged)
    manifest = store_manifest.load(damaged)
    for record in manifest["overlays"]["v2"]["files"]:  # a NaN written through HDF5, checksums updated:
        path = damaged / record["file"]                   # only the value check can see it
        with h5py.File(path, "r+", locking=False) as h5:
            h5["embedding"][0] = np.full(h5["embedding"].shape[1], np.nan)
        record["bytes"], record["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    store_manifest.commit(damaged, manifest, durable=False)
    bad = run("backfill", damaged, "--status", "--json")
    assert bad.exit_code == 1 and "not finite unit vectors" in bad.stdout
    assert run("verify", damaged).exit_code == 1  # `gallery verify` checks backfilled rows too
    again = ok("backfill", store, "--images", images, "--json")
    assert again["planned"] == 1 and again["embedded"] == 0  # only the changed image, still refused
    hits = ok("search", store, "--image", root / "probes", "-k", "3", "--threshold", "-1", "--json")
    assert {h["model_version"] for rec in hits for h in rec["hits"]} <= {"v1", "v2"}
    ok("rollback", store)
    with Store.open(store) as st:
        assert np.array_equal(st.embeddings(), v1_emb) and set(st.columns()["model"]) == {"v1"}
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    with Store.open(store) as st:
        assert np.array_equal(st.embeddings(), emb)


def test_second_upgrade_keeps_backfilled_rows_and_rolls_back_one_step(rollout_work, tmp_path):
    root, store, passing, _ = rollout_work
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    ok("backfill", store, "--images", root / "gallery", "--json")
    with Store.open(store) as st:
        v2_emb = st.embeddings()
    v3_report = report(root, "v2.onnx", "v3.onnx", "v2v3.json", "--max-new-drop", "1")
    assert run("upgrade", store, "--model", root / "v3.onnx", "--report", passing).exit_code == 2
    ok("upgrade", store, "--model", root / "v3.onnx", "--report", v3_report)
    with Store.open(store) as st:  # v3 queries see the v2-backfilled rows (v3 was checked against v2)
        assert st.active_model == "v3" and set(st.columns()["model"]) == {"v2"}
        assert np.array_equal(st.embeddings(), v2_emb)
    pruned = ok("prune", store, "--drop-rollback", "--json")
    assert pruned["removed"] == [] and pruned["kept"]["v2"] == "backfilled rows on the query path"
    assert ok("rollback", store, "--json")["to"] == "v2"
    assert ok("rollback", store, "--json")["to"] == "v1"
    assert run("rollback", store).exit_code == 2


def test_rows_keep_their_own_model_over_an_older_backfill(rollout_work, tmp_path):
    root, store, passing, _ = rollout_work
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    ok("enroll", store, "--images", root / "later")  # rows embedded by v2
    with Store.open(store) as st:
        v2_view, models = st.embeddings(), st.columns()["model"]
    ok("rollback", store)
    images = tmp_path / "all"
    shutil.copytree(root / "later", images)
    back = ok("backfill", store, "--images", images, "--json")  # v1 re-embeds the v2 rows
    assert back["model"] == "v1" and back["embedded"] == int((models == "v2").sum())
    with Store.open(store) as st:
        assert set(st.columns()["model"]) == {"v1"}
        assert not np.allclose(st.embeddings()[models == "v2"], v2_view[models == "v2"])
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    with Store.open(store) as st:  # v2 queries see the v2 originals again, not v1's backfill
        assert np.array_equal(st.columns()["model"], models)
        assert np.array_equal(st.embeddings(), v2_view)


def test_trust_images_for_rows_enrolled_as_embeddings(rollout_work, tmp_path):
    root, store, passing, _ = rollout_work
    paths = sorted((root / "later").rglob("*.png"))
    ids = [str(p.relative_to(root / "later")) for p in paths]
    emb = embed_paths(load_encoder(root / "v1.onnx"), paths)  # made elsewhere: no image hash
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "ids.csv").write_text("".join(f"{i},{p.parent.name}\n" for i, p in zip(ids, paths)))
    ok("enroll", store, "--embeddings", tmp_path / "e.npy", "--ids", tmp_path / "ids.csv")
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    refused = ok("backfill", store, "--images", root / "later", "--json")
    assert refused["planned"] == len(ids) and refused["embedded"] == 0  # hash is the embedding's
    trusted = ok("backfill", store, "--images", root / "later", "--trust-images", "--json")
    assert trusted["embedded"] == len(ids)
    with Store.open(store) as st:
        cols = st.columns()
        rows = np.flatnonzero(np.isin(cols["id"], ids))
        assert (cols["model"][rows] == "v2").all()
        reference = l2_normalize(embed_paths(load_encoder(root / "v2.onnx"), [root / "later" / i for i in cols["id"][rows]]))
        assert np.allclose(st.embeddings(rows), reference, atol=1e-5)
    assert ok("history", store, "--all", "--json")[0]["event"] == "init"

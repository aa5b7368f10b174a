"""CLI round trip with a real ONNX encoder on real digit images, and every bad input:
one line on stderr, exit code 2, the store file byte-identical."""

from __future__ import annotations


import numpy as np
import pytest

from cli_helpers import ok, run, store_sha256
from gallery.fingerprint import file_sha256
from gallery.preprocess import PreprocessSpec, l2_normalize, load_image

pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, torch_reference, write_digit_folder  # noqa: E402




@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    net, spec = make_onnx_encoder(root / "enc.onnx")
    paths = write_digit_folder(root / "gallery", n_per_class=6, seed=0)
    probes = write_digit_folder(root / "probes", n_per_class=2, seed=1)
    store = root / "g.h5"
    ok("init", store, "--model", root / "enc.onnx")
    return root, net, spec, paths, probes, store


def test_cli_round_trip(setup, tmp_path):
    root, net, spec, paths, probes, store = setup
    enrolled = ok("enroll", store, "--images", root / "gallery", "--json")
    assert enrolled["rows"] == 60 and enrolled["model"] == "v1"

    # Embeddings made elsewhere by the same model, with an `id,identity` file.
    extra = np.random.default_rng(7).normal(size=(5, 16)).astype(np.float32)
    np.save(tmp_path / "extra.npy", extra)
    (tmp_path / "ids.csv").write_text("id,identity\n" + "".join(f"e{i},extra{i}\n" for i in range(5)))
    assert ok("enroll", store, "--embeddings", tmp_path / "extra.npy", "--ids", tmp_path / "ids.csv",
              "--json")["rows"] == 5

    # Search with images: compare with an independent reference (torch net + numpy cosine).
    rgb = lambda ps: np.stack([load_image(p, PreprocessSpec(32, 32)) for p in ps])  # noqa: E731
    gallery_emb = np.vstack([l2_normalize(torch_reference(net, rgb(paths), spec)), l2_normalize(extra)])
    gallery_ids = [str(p.relative_to(root / "gallery")) for p in paths] + [f"e{i}" for i in range(5)]
    query = l2_normalize(torch_reference(net, rgb(probes[:4]), spec))
    records = ok("search", store, *sum((["--image", p] for p in probes[:4]), []), "-k", "3", "--json")
    for rec, q in zip(records, query):
        expected = np.argsort(-(gallery_emb @ q))[:3]
        assert [h["item_id"] for h in rec["hits"]] == [gallery_ids[i] for i in expected]
        assert rec["hits"][0]["model_version"] == "v1"
        # no threshold calibrated for v1 queries vs v1 rows: every hit listed, none accepted
        assert rec["rejected"] and rec["uncalibrated_pairs"] == ["v1->v1"]
        assert [(h["threshold"], h["accepted"]) for h in rec["hits"]] == [(None, False)] * 3
    opted = ok("search", store, "--image", probes[0], "-k", "3", "--accept-uncalibrated", "--json")[0]
    assert opted["match"] == opted["hits"][0]["identity"] and opted["hits"][0]["match"]

    # Search with embeddings and an open-set threshold.
    np.save(tmp_path / "q.npy", np.vstack([extra[:2], -extra[:1]]))
    records = ok("search", store, "--embeddings", tmp_path / "q.npy", "--threshold", "0.99", "--json")
    assert [r["match"] for r in records] == ["extra0", "extra1", None]
    assert records[2]["rejected"] and not any(h["accepted"] for h in records[2]["hits"])
    assert all(h["threshold"] == pytest.approx(0.99) for r in records for h in r["hits"])

    ok("remove", store, "e0", paths[0].parent.name + "/" + paths[0].name)
    records = ok("search", store, "--embeddings", tmp_path / "q.npy", "-k", "70", "--json")
    returned = {h["item_id"] for r in records for h in r["hits"]}
    assert "e0" not in returned and f"{paths[0].parent.name}/{paths[0].name}" not in returned
    assert len(returned) == 63

    assert ok("verify", store, "--json")["ok"]
    info = ok("info", store, "--json")
    assert info["live"] == 63 and info["models"][0]["sha256"] == file_sha256(root / "enc.onnx")
    assert info["models"][0]["input_size"] == [32, 32] and info["models"][0]["color_order"] == "RGB"
    assert ok("export", store, "--out", tmp_path / "x.npz", "--json")["rows"] == 63
    assert "v1" in ok("search", store, "--embeddings", tmp_path / "q.npy").stdout  # table output


def _fails(store, *args, code=2, match=""):
    before = store_sha256(store) if store.exists() else None
    result = run(*args)
    assert result.exit_code == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.stderr
    if before is not None:
        assert store_sha256(store) == before


def test_cli_bad_inputs(setup, tmp_path):
    root, _, _, _, _, store = setup
    np.save(tmp_path / "wide.npy", np.ones((2, 20), np.float32))
    (tmp_path / "two.csv").write_text("a\nb\n")
    _fails(store, "enroll", store, "--embeddings", tmp_path / "wide.npy", "--ids", tmp_path / "two.csv",
           match="dimension 20")
    nan = np.ones((2, 16), np.float32)
    nan[1, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    _fails(store, "enroll", store, "--embeddings", tmp_path / "nan.npy", "--ids", tmp_path / "two.csv",
           match="NaN or inf")
    np.save(tmp_path / "good.npy", np.ones((2, 16), np.float32))
    (tmp_path / "dup.csv").write_text("same\nsame\n")
    _fails(store, "enroll", store, "--embeddings", tmp_path / "good.npy", "--ids", tmp_path / "dup.csv",
           match="duplicate ids")
    _fails(store, "enroll", store, "--embeddings", tmp_path / "good.npy", "--ids", tmp_path / "two.csv",
           "--model-version", "v9", match="unknown model version 'v9'")
    bad = tmp_path / "bad" / "alice"
    bad.mkdir(parents=True)
    write_digit_folder(tmp_path / "bad", n_per_class=1)
    (bad / "photo.png").write_text("not a png")
    # the same ids are enrolled already: refused before any encoding; skipping them, the bad photo fails
    _fails(store, "enroll", store, "--images", tmp_path / "bad", match="ids already in store")
    _fails(store, "enroll", store, "--images", tmp_path / "bad", "--skip-existing", match="photo.png")
    (tmp_path / "empty").mkdir()
    _fails(store, "enroll", store, "--images", tmp_path / "empty", match="no images")
    _fails(store, "search", store, "--image", bad / "photo.png", "--on-error", "fail", match="photo.png")
    skipped = ok("search", store, "--image", bad / "photo.png", "--json")  # default: an item error
    assert skipped[0]["query"] == "photo.png" or skipped[0]["query"].endswith("photo.png")
    assert "not a readable image" in skipped[0]["error"] and skipped[0]["hits"] == []
    _fails(store, "info", tmp_path / "absent.h5", match="store not found")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 512)
    _fails(corrupt, "verify", corrupt, match="not a readable HDF5")
    (tmp_path / "text.onnx").write_text("hello")
    _fails(tmp_path / "new.h5", "init", tmp_path / "new.h5", "--model", tmp_path / "text.onnx",
           match="cannot load ONNX")
    assert not (tmp_path / "new.h5").exists()
    make_onnx_encoder(tmp_path / "bare.onnx", metadata=False)
    _fails(tmp_path / "new.h5", "init", tmp_path / "new.h5", "--model", tmp_path / "bare.onnx",
           match="not a gallery image encoder")
    assert not (tmp_path / "new.h5").exists()


def test_cli_lock_and_embedding_only(setup, tmp_path):
    from gallery.store import Store

    _, _, _, _, _, store = setup
    with Store.open(store, "a"):
        _fails(store, "remove", store, "e1", code=3, match="locked by another writer")
        assert ok("info", store, "--json")["rows"] >= 60  # readers are not blocked
    emb_store = tmp_path / "emb.h5"
    ok("init", emb_store, "--dim", "8", "--model-id", "dlib-like", "--version", "legacy")
    _fails(emb_store, "enroll", emb_store, "--images", setup[0] / "gallery", match="embedding-only")
    _fails(tmp_path / "x.h5", "init", tmp_path / "x.h5", "--dim", "8", match="--model-id")


def test_python_api_round_trip_with_images(setup, tmp_path):
    """The same round trip through the library's front door: images -> store -> search -> remove -> verify."""
    import gallery
    from gallery.encoder import embed_paths, load_encoder
    from gallery.store import Store

    root, _, _, paths, probes, _ = setup
    encoder = load_encoder(root / "enc.onnx")
    with gallery.create(tmp_path / "api.h5", root / "enc.onnx") as g:
        assert g.enroll(root / "gallery")["rows"] == 60
        extra = embed_paths(encoder, probes[:3])
        g.enroll(extra, ["x0", "x1", "x2"], ["extra", "extra", "extra"])
        result = g.search(probes[:3], k=2)
        assert result.ids[:, 0].tolist() == ["x0", "x1", "x2"]
        assert result.models[:, 0].tolist() == ["v1"] * 3 and result.names == [str(p) for p in probes[:3]]
        assert np.allclose(result.scores[:, 0], 1.0, atol=1e-5)
        # vectors and images answer alike: the same rows for the encoder's own embeddings
        assert np.array_equal(g.search(extra, k=2).rows, result.rows)
        g.remove(["x0"])
        again = g.search(probes[:1], k=61)
        assert "x0" not in again.ids.tolist()[0] and (again.rows >= 0).sum() == 61
        report = g.verify()
    assert report["ok"] and report["live"] == 62
    with Store.open(tmp_path / "api.h5") as store:
        assert store.model().sha256 == encoder.identity["sha256"]
        assert store.model().input_size == (32, 32) and store.model().mean == (127.5, 127.5, 127.5)


def test_cli_labels_csv(setup, tmp_path):
    root, _, _, paths, _, _ = setup
    store = tmp_path / "labels.h5"
    ok("init", store, "--model", root / "enc.onnx", "--version", "enc-1")
    rel = [str(p.relative_to(root / "gallery")) for p in paths[:4]]
    (tmp_path / "labels.csv").write_text("".join(f"{r},person{i % 2}\n" for i, r in enumerate(rel)))
    assert ok("enroll", store, "--images", root / "gallery", "--labels", tmp_path / "labels.csv",
              "--json")["rows"] == 4
    from gallery.store import Store

    with Store.open(store) as st:
        assert st.columns()["id"].tolist() == rel
        assert st.columns()["identity"].tolist() == ["person0", "person1", "person0", "person1"]
        assert set(st.columns()["model"].tolist()) == {"enc-1"}
    (tmp_path / "missing.csv").write_text("nowhere.png,someone\n")
    _fails(store, "enroll", store, "--images", root / "gallery", "--labels", tmp_path / "missing.csv",
           match="image not found")


def test_cli_export_model_and_init_from_pt(tmp_path):
    """`gallery export m.pt --out m.onnx` (trainer's exporter), then a store on each file."""
    trainer_fit = pytest.importorskip("trainer.fit")
    from trainer.config import TrainConfig
    from trainer.data.samples import fashion_mnist

    images, labels = fashion_mnist(per_class=10)
    np.savez(tmp_path / "fm.npz", images=images, labels=labels)
    pt = tmp_path / "m.pt"
    trainer_fit.fit(TrainConfig(data=str(tmp_path / "fm.npz"), out=str(pt), arch="small", head="arcface",
                                dim=16, image_size=32, epochs=1, batch_size=32, lr=0.05, seed=1,
                                device="cpu", head_params={"s": 16.0, "m": 0.2}))
    result = ok("export", pt, "--out", tmp_path / "m.onnx", "--json")
    assert result["kind"] == "model" and (tmp_path / "m.onnx").is_file()
    _fails(tmp_path / "x", "export", pt, "--out", tmp_path / "m.txt", match="must end in .onnx")
    onnx_info = ok("init", tmp_path / "a.h5", "--model", tmp_path / "m.onnx", "--json")["models"][0]
    pt_info = ok("init", tmp_path / "b.h5", "--model", pt, "--json")["models"][0]
    assert onnx_info["model_id"] == pt_info["model_id"] and onnx_info["format"] == "onnx"
    assert pt_info["format"] == "pt" and onnx_info["input_size"] == pt_info["input_size"] == [32, 32]

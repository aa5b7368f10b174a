"""The library's front door from plain Python: gallery.open / create and the Gallery's
methods, trainer.train, and encoder formats as `gallery.encoders` entry points
(`load_encoder("v1.pt")` in a fresh interpreter, a third-party format, a plugin whose
dependency is missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gallery
from gallery.errors import BadInput, StoreLocked
from gallery.preprocess import l2_normalize
from gallery.store import Store


def python(code: str, *extra_path: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (nothing imported beforehand), this checkout first."""
    root = Path(__file__).resolve().parents[1]
    paths = [str(p) for p in extra_path] + [str(root), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo in small: trainer.train -> v1.pt, a store created with it, 10 identities enrolled."""
    pytest.importorskip("torch")
    from PIL import Image

    from trainer import train
    from trainer.data.samples import fashion_mnist

    root = tmp_path_factory.mktemp("demo")
    images, labels = fashion_mnist(per_class=20)
    np.savez(root / "train.npz", images=images, labels=labels)
    result = train(data=root / "train.npz", out=root / "v1.pt", arch="small", head="arcface", dim=32,
                   image_size=32, epochs=1, batch_size=32, lr=0.05, seed=3, device="cpu", threads=1)
    assert result.finished and Path(result.model).is_file()
    for i, (image, label) in enumerate(zip(images[::20], labels[::20])):  # one image per class
        folder = root / "enrol" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.pad(image, 2)).convert("RGB").save(folder / f"{i}.png")
    with gallery.create(root / "store.h5", root / "v1.pt") as g:
        assert g.enroll(root / "enrol")["rows"] == 10
    return root


def test_open_and_search_demo_store_from_plain_python(demo):
    """`import gallery; g = gallery.open(store); g.search(images)` with a .pt model, nothing else imported."""
    probe = sorted((demo / "enrol" / "class3").glob("*.png"))[0]
    result = python(f"""
        import json, sys
        import gallery
        g = gallery.open({str(demo / 'store.h5')!r})
        records = g.search([{str(probe)!r}], k=3, accept_uncalibrated=True).to_records()  # no threshold calibrated
        assert "trainer.torch_encoder" in sys.modules  # loaded through the entry point, on demand
        print(json.dumps(records))
    """)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["query"] == str(probe) and record["match"] == "class3"
    assert record["hits"][0]["item_id"] == f"class3/{probe.name}" and record["hits"][0]["score"] > 0.999


def test_load_pt_encoder_from_plain_python(demo):
    result = python(f"""
        from gallery.encoder import load_encoder
        encoder = load_encoder({str(demo / 'v1.pt')!r})
        print(encoder.identity["format"], encoder.dim)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pt", "32"]



def test_the_readme_python_example_runs_as_written(demo, tmp_path):
    """README's "From Python" block, unchanged, in a fresh interpreter, in a folder laid out
    like the demo's outputs (the small demo's store and v1, a second model as v2)."""
    from trainer import train

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    runs = tmp_path / "runs" / "demo"
    runs.mkdir(parents=True)
    shutil.copytree(demo / "store.h5", runs / "store.h5")
    shutil.copy(demo / "v1.pt", runs / "v1.pt")  # the store records v1.pt's absolute path: the demo's copy
    assert train(data=demo / "train.npz", out=runs / "v2.pt", arch="small", head="arcface", dim=32,
                 image_size=32, epochs=1, batch_size=32, lr=0.05, seed=4, device="cpu", threads=1).finished
    shutil.copytree(demo / "enrol", runs / "data" / "open-class" / "eval")
    (runs / "some-queries").mkdir()
    for i, probe in enumerate(sorted((demo / "enrol").rglob("*.png"))[:3]):
        shutil.copy(probe, runs / "some-queries" / f"q{i}.png")
    for photo in sorted((demo / "enrol").rglob("*.png")):  # new ids: ids are paths under the folder
        (tmp_path / "new-photos" / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, tmp_path / "new-photos" / photo.parent.name / f"new{photo.name}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines[:3]] == [f"runs/demo/some-queries/q{i}.png" for i in range(3)]
    assert lines[3].split()[1] == "v1"  # report.passed (either way), then the query model
    with gallery.open(runs / "store.h5") as g:
        assert g.info()["live"] == 10 + 10  # the ten new photos went in, encoded by v1


def _plugin(root: Path, name: str, module_code: str) -> Path:
    """A distribution on sys.path declaring `gallery.encoders` entry points, as a third party would."""
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[gallery.encoders]\nnpz = {name}_loader:load\n")
    (root / f"{name}_loader.py").write_text(textwrap.dedent(module_code))
    return root


def test_third_party_format_through_the_entry_point(tmp_path):
    plugins = _plugin(tmp_path / "site", "npzenc", """
        import numpy as np
        from gallery.preprocess import PreprocessSpec

        class NpzEncoder:
            def __init__(self, path, providers=None, require_gpu=False):
                self.weight = np.load(path)["weight"]
                self.dim = self.weight.shape[1]
                self.spec = PreprocessSpec(height=4, width=4, color_order="GRAY", mean=(0.0,), std=(255.0,))
                self.identity = {"sha256": None, "model_id": "npz", "path": str(path), "format": "npz"}

            def embed(self, batch):
                return batch.reshape(len(batch), -1) @ self.weight

        def load(path, providers=None, require_gpu=False):
            return NpzEncoder(path, providers, require_gpu)
    """)
    weight = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    np.savez(tmp_path / "m.npz", weight=weight)
    result = python(f"""
        import numpy as np
        from gallery.encoder import embed_images, load_encoder
        encoder = load_encoder({str(tmp_path / 'm.npz')!r})
        image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
        print(encoder.identity["format"], *embed_images(encoder, [image])[0].round(5))
    """, plugins)
    assert result.returncode == 0, result.stderr
    fmt, *values = result.stdout.split()
    expected = (np.arange(16, dtype=np.float32) / 255.0) @ weight  # the plugin's maths, by hand
    assert fmt == "npz" and np.allclose([float(v) for v in values], expected, atol=1e-4)


def test_plugin_with_missing_dependency_says_what_is_missing(tmp_path):
    plugins = _plugin(tmp_path / "site", "brokenenc", "import not_installed_anywhere\n")
    (tmp_path / "m.npz").write_bytes(b"x")
    result = python(f"""
        from gallery.encoder import load_encoder
        from gallery.errors import BadInput
        try:
            load_encoder({str(tmp_path / 'm.npz')!r})
        except BadInput as exc:
            print(exc)
        try:
            load_encoder({str(tmp_path / 'm.npz')!r}.replace(".npz", ".xyz"))
        except BadInput as exc:
            print(exc)
    """, plugins)
    assert result.returncode == 0, result.stderr
    missing, _ = result.stdout.splitlines()
    assert "cannot load .npz models" in missing and "not_installed_anywhere" in missing
    (tmp_path / "m.xyz").write_bytes(b"x")
    with pytest.raises(BadInput, match=r"unknown encoder format '\.xyz'; valid: .*\.onnx"):
        from gallery.encoder import load_encoder
        load_encoder(tmp_path / "m.xyz")


def test_gallery_vectors_against_a_brute_force_reference(tmp_path):
    """Enrol arrays, search arrays and a query file: hits equal a numpy top-k over the live rows."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((300, 24)).astype(np.float32)
    ids = [f"item{i}" for i in range(300)]
    g = gallery.create(tmp_path / "g.h5", dim=24, model_id="random")
    assert g.enroll(vectors, ids, [f"p{i % 30}" for i in range(300)])["rows"] == 300
    assert g.remove(["item7", "item8"])["removed"] == 2
    queries = vectors[:10] + 0.3 * rng.standard_normal((10, 24)).astype(np.float32)
    result = g.search(queries, k=5)
    live = np.array([i not in (7, 8) for i in range(300)])
    scores = l2_normalize(queries) @ l2_normalize(vectors).T
    scores[:, ~live] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert np.array_equal(result.rows, expected)
    assert result.ids[0, 0] == "item0" and result.names == [str(i) for i in range(10)]
    np.save(tmp_path / "q.npy", queries)
    assert np.array_equal(g.search(embeddings=tmp_path / "q.npy", k=5).rows, expected)
    info = g.info()
    assert info["live"] == 298 and info["rows"] == 300 and g.verify()["ok"]
    g.close()


def test_gallery_raises_the_errors_the_cli_maps(tmp_path):
    with pytest.raises(BadInput, match="store not found"):
        gallery.open(tmp_path / "missing.h5")
    g = gallery.create(tmp_path / "g.h5", dim=4, model_id="m")
    with pytest.raises(BadInput, match="give either"):
        g.search()
    with pytest.raises(BadInput, match="needs `ids`"):
        g.enroll(np.ones((2, 4), np.float32))
    with pytest.raises(BadInput, match="embedding-only"):
        g.search([tmp_path / "g.h5"])  # an image query needs the model's encoder
    g.refresh()  # HDF5: this process may not hold a read handle while it opens a writer
    with Store.open(tmp_path / "g.h5", "a"):  # another writer holds the lock
        with pytest.raises(StoreLocked):
            g.enroll(np.ones((1, 4), np.float32), ["a"])
    assert g.info()["rows"] == 0  # nothing half-written
    g.enroll(np.ones((1, 4), np.float32), ["a"])
    assert g.search(np.ones(4, np.float32), k=1).ids[0, 0] == "a"  # its own write is seen

"""Glyph builder: deterministic bytes, disjoint splits, held-out faces, formats agree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from gallery.datasets import layout
from gallery.datasets.fonts import covered_pool, face_codepoints, gb2312_level1, select_faces
from gallery.datasets.glyphs import GlyphConfig, build_glyphs
from gallery.datasets.splits import split_identities, split_open_data
from gallery.datasets.writers import read_hdf5
from gallery.errors import BadInput
from gallery.imagefolder import list_image_folder

SMALL = dict(identities=40, per_identity=6, eval_per_identity=4, image_size=24, seed=7)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pixel_hashes(folder: Path) -> list[str]:
    listing = list_image_folder(folder)
    return [hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in listing.paths]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("glyphs") / "data"
    return out, build_glyphs(GlyphConfig(out=str(out), **SMALL))


def test_gb2312_level1_pool():
    chars = gb2312_level1()
    assert len(chars) == 3755 and len(set(chars)) == 3755
    assert chars[0] == "啊" and chars[-1] == "座"


def test_same_args_same_bytes_any_worker_count(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_glyphs(GlyphConfig(out=str(again), workers=2, **SMALL))
    first, second = _tree_hashes(out), _tree_hashes(again)
    assert len(first) > 100 and first == second
    other = tmp_path / "other-seed"
    build_glyphs(GlyphConfig(out=str(other), **{**SMALL, "seed": 8}))
    assert _tree_hashes(other) != first


def test_open_class_identities_are_disjoint(built):
    out, manifest = built
    sets = {p: set(list_image_folder(out / "open-class" / p).classes) for p in ("old", "new", "eval")}
    assert not sets["old"] & sets["new"] and not sets["old"] & sets["eval"] and not sets["new"] & sets["eval"]
    assert len(sets["old"] | sets["new"] | sets["eval"]) == SMALL["identities"]
    assert len(sets["eval"]) == round(0.2 * 40) and len(sets["old"]) == round(0.3 * 32)
    assert sets["old"] == set(manifest["identities"]["old"])


def test_open_data_same_identities_disjoint_images(built):
    out, _ = built
    old, new = out / "open-data" / "old", out / "open-data" / "new"
    assert list_image_folder(old).classes == list_image_folder(new).classes
    old_px, new_px = _pixel_hashes(old), _pixel_hashes(new)
    assert not set(old_px) & set(new_px)
    # the two scenarios hold the same training images, just cut differently
    oc = _pixel_hashes(out / "open-class" / "old") + _pixel_hashes(out / "open-class" / "new")
    assert sorted(oc) == sorted(old_px + new_px)
    per_identity = np.bincount(list_image_folder(old).labels)
    assert set(per_identity.tolist()) == {round(0.3 * SMALL["per_identity"])}


def test_holdout_faces_only_in_eval(built):
    out, manifest = built
    held = {i for i, f in enumerate(manifest["faces"]) if f["role"] == "eval-only"}
    assert held, "default held-out faces should be installed (setup.sh)"
    for scenario in ("open-class", "open-data"):
        for part in ("old", "new"):
            assert not held & set(read_hdf5(out / scenario / f"{part}.h5")["face"].tolist())
    eval_faces = set(read_hdf5(out / "open-class" / "eval.h5")["face"].tolist())
    assert held <= eval_faces


def test_hdf5_matches_imagefolder(built):
    out, _ = built
    for part in ("old", "eval"):
        data = read_hdf5(out / "open-class" / f"{part}.h5")
        listing = list_image_folder(out / "open-class" / part)
        assert data["classes"] == listing.classes
        assert data["names"] == [str(p.relative_to(listing.root)) for p in listing.paths]
        assert data["labels"].tolist() == listing.labels
        pngs = np.stack([np.asarray(Image.open(p)) for p in listing.paths])
        assert np.array_equal(pngs, data["images"][:, :, :, 0])
        assert data["images"].shape[1:] == (24, 24, 1)


def test_images_show_the_character(built):
    """Each image has ink, and images of one identity are more alike than of two."""
    out, _ = built
    data = read_hdf5(out / "open-class" / "new.h5")
    x = data["images"][:, :, :, 0].astype(np.float32)
    assert (x.reshape(len(x), -1).std(axis=1) > 8).all()
    z = x.reshape(len(x), -1)
    z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    sim = z @ z.T / z.shape[1]
    same = data["labels"][:, None] == data["labels"][None, :]
    np.fill_diagonal(same, False)
    diff = data["labels"][:, None] != data["labels"][None, :]
    assert sim[same].mean() > sim[diff].mean() + 0.05


def test_pool_characters_are_really_drawn():
    """Independent of the cmap check: a pool character never renders as .notdef."""
    faces = select_faces()
    pool = covered_pool(faces)
    assert len(pool) > 2000
    rng = np.random.default_rng(0)
    sample = [pool[i] for i in rng.choice(len(pool), 40, replace=False)]
    for face in faces:
        font = ImageFont.truetype(face.path, 32, index=face.index)
        notdef = np.asarray(font.getmask("\U0010fffd"))
        for ch in sample:
            assert np.asarray(font.getmask(ch)).tobytes() != notdef.tobytes(), (face.design, ch)
        missing = [ch for ch in gb2312_level1() if ord(ch) not in face_codepoints(face.path, face.index)]
        assert not set(missing) & set(pool)


def test_split_identities_reference():
    names = [f"id{i:03d}" for i in range(100)]
    split = split_identities(names, 50, 0.2, 0.3, seed=3)
    assert (len(split.eval), len(split.old), len(split.new)) == (10, 12, 28)
    assert len(set(split.old) | set(split.new) | set(split.eval)) == 50
    assert split == split_identities(names, 50, 0.2, 0.3, seed=3)
    assert split != split_identities(names, 50, 0.2, 0.3, seed=4)
    with pytest.raises(BadInput):
        split_identities(names, 101, 0.2, 0.3, seed=3)


def test_split_open_data_reference():
    labels = np.repeat(np.arange(5), [10, 3, 7, 2, 20])
    old, new = split_open_data(labels, 0.3, seed=1)
    assert not set(old) & set(new) and len(old) + len(new) == len(labels)
    for c, n in enumerate([10, 3, 7, 2, 20]):
        n_old = int((labels[old] == c).sum())
        assert n_old == min(max(round(0.3 * n), 1), n - 1) and (labels[new] == c).sum() == n - n_old


def test_bad_input_leaves_nothing_behind(tmp_path, monkeypatch):
    with pytest.raises(BadInput, match="identities"):
        build_glyphs(GlyphConfig(out=str(tmp_path / "x"), **{**SMALL, "identities": 100000}))
    with pytest.raises(BadInput, match="held-out"):
        build_glyphs(GlyphConfig(out=str(tmp_path / "x"), holdout_faces=["No Such Face"], **SMALL))
    assert not list(tmp_path.iterdir())
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("precious")
    with pytest.raises(BadInput, match="not empty"):
        build_glyphs(GlyphConfig(out=str(keep), **SMALL))
    assert (keep / "mine.txt").read_text() == "precious"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(layout, "write_part", boom)
    with pytest.raises(RuntimeError):
        build_glyphs(GlyphConfig(out=str(tmp_path / "y"), **SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_cli_data_glyphs(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["data", "glyphs", "--out", str(out), "--identities", "12", "--per-identity", "3",
            "--eval-per-identity", "2", "--image-size", "16", "--scenarios", "open-class", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and (out / "open-class" / "eval.h5").is_file()
    assert not (out / "open-data").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.output
    bad = runner.invoke(app, ["data", "glyphs", "--out", str(tmp_path / "b"), "--scenarios", "closed"])
    assert bad.exit_code == 2 and "scenario" in bad.output


def test_builders_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; "
            "import gallery.datasets.glyphs, gallery.datasets.fashion_mnist, cli.commands.data")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_font_dirs_override_replaces_system_discovery(tmp_path, monkeypatch):
    """GALLERY_FONT_DIRS (a host without the Debian fonts, e.g. a GPU machine given
    subset fonts): only the faces found there are used, with their real design names."""
    import shutil

    from gallery.datasets.fonts import discover_faces, one_face_per_design

    installed = {f.design: f for f in one_face_per_design(discover_faces())}
    face = installed.get("Droid Sans Fallback") or next(iter(installed.values()))
    shutil.copy(face.path, tmp_path / Path(face.path).name)
    monkeypatch.setenv("GALLERY_FONT_DIRS", str(tmp_path))
    found = discover_faces()
    assert {f.path for f in found} == {str(tmp_path / Path(face.path).name)}
    assert face.design in {f.design for f in found}
    monkeypatch.setenv("GALLERY_FONT_DIRS", str(tmp_path / "empty"))
    with pytest.raises(BadInput, match="no CJK fonts found"):
        select_faces()

"""ONNX encoder runtime: metadata-driven preprocessing, parity with torch, clear errors."""

from __future__ import annotations


import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import PreprocessSpec, load_image

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from tiny_models import digit_images, make_onnx_encoder, torch_reference, write_digit_folder  # noqa: E402


@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_onnx_matches_torch_on_real_images(tmp_path, color):
    from gallery.encoder import embed_paths, load_encoder

    net, spec = make_onnx_encoder(tmp_path / "enc.onnx", color=color)
    enc = load_encoder(tmp_path / "enc.onnx")
    assert enc.spec == spec and enc.dim == 16
    assert enc.identity["sha256"] == file_sha256(tmp_path / "enc.onnx")
    assert enc.identity["model_id"] == "tiny-0" and enc.identity["format"] == "onnx"
    paths = write_digit_folder(tmp_path / "imgs", n_per_class=3)
    rgb = np.stack([np.asarray(load_image(p, PreprocessSpec(32, 32))) for p in paths])
    expected = torch_reference(net, rgb, spec)
    for batch_size in (1, 7, 64):  # dynamic batch, including a ragged last batch
        got = embed_paths(enc, paths, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_fixed_batch_model_is_chunked(tmp_path):
    from gallery.encoder import embed_images, load_encoder

    net, spec = make_onnx_encoder(tmp_path / "fixed.onnx", fixed_batch=4)
    images, _ = digit_images(1)
    rgb = np.repeat(images[..., None], 3, axis=3)
    got = embed_images(load_encoder(tmp_path / "fixed.onnx"), rgb)  # 10 images, batch fixed at 4
    np.testing.assert_allclose(got, torch_reference(net, rgb, spec), atol=1e-4, rtol=1e-4)


def test_gray_spec_and_progress(tmp_path):
    from gallery.encoder import embed_paths, load_encoder

    make_onnx_encoder(tmp_path / "g.onnx", color="GRAY")
    enc = load_encoder(tmp_path / "g.onnx")
    assert enc.spec.channels == 1
    paths = write_digit_folder(tmp_path / "imgs", n_per_class=1)
    seen = []
    out = embed_paths(enc, paths, batch_size=4, progress=seen.append)
    assert out.shape == (10, 16) and sum(seen) == 10 and seen == [4, 4, 2]


def test_missing_metadata_is_not_an_image_encoder(tmp_path):
    from gallery.encoder import load_encoder

    make_onnx_encoder(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(BadInput, match="not a gallery image encoder"):
        load_encoder(tmp_path / "bare.onnx")


def test_non_image_onnx_rejected(tmp_path):
    from gallery.encoder import load_encoder

    mlp = torch.nn.Linear(10, 4)
    torch.onnx.export(mlp, (torch.zeros(1, 10),), str(tmp_path / "mlp.onnx"), dynamo=False)
    with pytest.raises(BadInput, match="not an image encoder"):
        load_encoder(tmp_path / "mlp.onnx")


def test_garbage_and_unknown_files(tmp_path):
    from gallery.encoder import load_encoder

    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(BadInput, match="cannot load ONNX model"):
        load_encoder(tmp_path / "junk.onnx")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(BadInput, match=r"unknown encoder format '\.xyz'; valid: .*\.onnx"):
        load_encoder(tmp_path / "m.xyz")
    with pytest.raises(BadInput, match="model file not found"):
        load_encoder(tmp_path / "absent.onnx")


def test_require_gpu_fails_loudly_without_cuda(tmp_path):
    import onnxruntime

    from gallery.encoder import load_encoder

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    make_onnx_encoder(tmp_path / "e.onnx")
    with pytest.raises(BadInput, match="CUDA is not the active"):
        load_encoder(tmp_path / "e.onnx", require_gpu=True)


def test_unreadable_image_names_the_file(tmp_path):
    from gallery.encoder import embed_paths, load_encoder

    make_onnx_encoder(tmp_path / "e.onnx")
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(BadInput, match="broken.png"):
        embed_paths(load_encoder(tmp_path / "e.onnx"), [bad])


def test_contradictory_channels_metadata(tmp_path):
    from gallery.encoder import load_encoder

    make_onnx_encoder(tmp_path / "e.onnx")
    model = onnx.load(str(tmp_path / "e.onnx"))
    for entry in model.metadata_props:
        if entry.key == "gallery.channels":
            entry.value = "1"
    onnx.save(model, str(tmp_path / "e.onnx"))
    with pytest.raises(BadInput, match="gallery.channels=1 contradicts colour order RGB"):
        load_encoder(tmp_path / "e.onnx")

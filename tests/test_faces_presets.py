"""import-encoder: declared preprocessing reaches gallery.encoder, checked against numpy.

The models are tiny hand-built ONNX graphs (pixel mean per channel -> linear map),
so the expected embedding of any image can be computed independently in numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="import-encoder needs the onnx package ([faces] extra)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gallery.encoder import embed_images, load_encoder  # noqa: E402
from gallery.errors import BadInput  # noqa: E402
from gallery.faces.presets import import_encoder  # noqa: E402
from gallery.preprocess import META_PREFIX  # noqa: E402

W = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)


def _tiny_model(path, size=(112, 112), batch=1, channels=3, baked_reshape=False, dynamic_hw=False):
    """x (N,C,H,W) -> mean over H,W -> (N,C) @ W -> (N,8)."""
    hw = ["H", "W"] if dynamic_hw else list(size)
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, channels, *hw])
    y = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, 8])
    shape = [1, channels] if baked_reshape else [0, channels]  # 0 copies the batch dim
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
    ]
    inits = [numpy_helper.from_array(np.array(shape, np.int64), "shape"),
             numpy_helper.from_array(W[:channels], "w")]
    # Weights listed as graph inputs too, as old MXNet exports (SFace) do.
    extra = [helper.make_tensor_value_info("w", TensorProto.FLOAT, [channels, 8])]
    graph = helper.make_graph(nodes, "tiny", [x] + extra, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.metadata_props.add(key="author", value="test")
    onnx.save(model, str(path))
    return path


def _reference(images_rgb: np.ndarray, mean: float, std: float, bgr: bool = False) -> np.ndarray:
    x = images_rgb.astype(np.float64)
    if bgr:
        x = x[..., ::-1]
    pooled = ((x - mean) / std).mean(axis=(1, 2))
    return pooled @ W.astype(np.float64)


@pytest.mark.parametrize("preset,mean,std", [("arcface", 127.5, 127.5), ("sface", 0.0, 1.0)])
def test_preset_preprocessing_reaches_the_encoder(tmp_path, preset, mean, std) -> None:
    src = _tiny_model(tmp_path / "m.onnx")
    summary = import_encoder(src, preset, tmp_path / "w.onnx")
    assert summary["dim"] == 8 and summary["batch"] == "N" and summary["alignment"] == "arcface-5pt"
    encoder = load_encoder(tmp_path / "w.onnx")
    assert (encoder.spec.height, encoder.spec.color_order, encoder.spec.mean[0]) == (112, "RGB", mean)
    images = np.random.default_rng(1).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(embed_images(encoder, images), _reference(images, mean, std),
                               rtol=1e-4, atol=1e-4)
    meta = encoder.identity["metadata"]
    assert meta[META_PREFIX + "preset"] == preset and meta["author"] == "test"
    assert encoder.identity["model_id"] == summary["model_id"]


def test_raw_preset_takes_model_size_and_overrides(tmp_path) -> None:
    src = _tiny_model(tmp_path / "m.onnx", size=(32, 24))
    import_encoder(src, "raw", tmp_path / "w.onnx",
                   overrides={"color_order": "BGR", "mean": (10.0, 20.0, 30.0), "std": (2.0, 2.0, 2.0)})
    encoder = load_encoder(tmp_path / "w.onnx")
    assert (encoder.spec.height, encoder.spec.width, encoder.spec.color_order) == (32, 24, "BGR")
    rgb = np.random.default_rng(2).integers(0, 256, (3, 32, 24, 3), dtype=np.uint8)
    bgr = rgb[..., ::-1]  # embed_images expects pixels already in the spec's order
    expected = ((bgr.astype(np.float64) - [10, 20, 30]) / 2).mean(axis=(1, 2)) @ W
    np.testing.assert_allclose(embed_images(encoder, bgr), expected, rtol=1e-4, atol=1e-4)


def test_model_id_is_weights_only(tmp_path) -> None:
    src = _tiny_model(tmp_path / "m.onnx")
    a = import_encoder(src, "arcface", tmp_path / "a.onnx")
    b = import_encoder(tmp_path / "a.onnx", "sface", tmp_path / "b.onnx")
    assert a["model_id"] == b["model_id"] and a["sha256"] != b["sha256"]
    W2 = W.copy()
    W2[0, 0] += 1
    model = onnx.load(str(src))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(W2, "w"))
    onnx.save(model, str(tmp_path / "m2.onnx"))
    assert import_encoder(tmp_path / "m2.onnx", "arcface", tmp_path / "c.onnx")["model_id"] != a["model_id"]


def test_baked_batch_reshape_keeps_fixed_batch(tmp_path) -> None:
    src = _tiny_model(tmp_path / "m.onnx", baked_reshape=True)
    summary = import_encoder(src, "arcface", tmp_path / "w.onnx")
    assert summary["batch"] == 1
    encoder = load_encoder(tmp_path / "w.onnx")
    images = np.random.default_rng(3).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(embed_images(encoder, images), _reference(images, 127.5, 127.5),
                               rtol=1e-4, atol=1e-4)


def test_cli_import_encoder_json(tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    src = _tiny_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["import-encoder", str(src), "--preset", "sface",
                                      "--out", str(tmp_path / "w.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dim"] == 8
    again = CliRunner().invoke(app, ["import-encoder", str(src), "--preset", "sface",
                                     "--out", str(tmp_path / "w.onnx")])
    assert again.exit_code == 2 and "exists" in again.output


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(preset="nope"), "unknown encoder preset 'nope'; valid: arcface, raw, sface"),
        (dict(preset="raw", overrides={"color_order": "GRAY"}), "3 channels"),
        (dict(preset="raw", model_kw={"dynamic_hw": True}), "--size"),
        (dict(preset="raw", overrides={"size": (64, 64)}), "model input is 112x112"),
        (dict(preset="arcface", out="w.txt"), "must end in .onnx"),
        (dict(preset="arcface", out="m.onnx"), "must differ"),
        (dict(preset="arcface", bad_file=True), "not an ONNX model"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, kwargs, needle) -> None:
    src = _tiny_model(tmp_path / "m.onnx", **kwargs.get("model_kw", {}))
    if kwargs.get("bad_file"):
        src.write_bytes(b"this is not a protobuf at all")
    out = tmp_path / kwargs.get("out", "w.onnx")
    with pytest.raises(BadInput, match=needle.replace("(", r"\(").replace(")", r"\)")):
        import_encoder(src, kwargs["preset"], out, overrides=kwargs.get("overrides"))
    assert not (tmp_path / "w.onnx").exists() and not (tmp_path / "w.onnx.part").exists()


@pytest.mark.parametrize("args,needle", [
    (["--size", "12y"], "--size must be HxW"),
    (["--mean", "a,b,c"], "--mean must be comma-separated numbers"),
    (["--preset", "nope"], "unknown encoder preset"),
])
def test_cli_bad_options_exit_2(tmp_path, args, needle) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    src = _tiny_model(tmp_path / "m.onnx")
    base = ["import-encoder", str(src), "--out", str(tmp_path / "w.onnx")]
    if "--preset" not in args:
        base += ["--preset", "raw"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "w.onnx").exists()

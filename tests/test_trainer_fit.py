"""The fit loop, model files, ONNX export and resume, on real Fashion-MNIST at 32x32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gallery.errors import BadInput, GateFailed
from gallery.preprocess import PreprocessSpec, to_tensor
from trainer.checkpoint import load_model, weights_fingerprint
from trainer.config import TrainConfig
from trainer.data import open_dataset
from trainer.data.samples import fashion_mnist
from trainer.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    images, labels = fashion_mnist(per_class=30)
    path = tmp_path_factory.mktemp("fm") / "fm300.npz"
    np.savez(path, images=images, labels=labels)
    return path


def _config(data_file, out, **kw) -> TrainConfig:
    base = dict(data=str(data_file), out=str(out), arch="small", head="arcface", dim=32,
                image_size=32, epochs=2, batch_size=32, lr=0.05, seed=7, device="cpu",
                head_params={"s": 16.0, "m": 0.2})
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "v1.pt"
    seen = []
    result = fit(_config(data_file, out, onnx=str(out.with_suffix(".onnx"))),
                 progress=seen.append)
    return out, result, seen


def test_two_epochs_lower_the_loss_and_write_outputs(trained):
    out, result, seen = trained
    epochs = result.metrics["epochs"]
    assert result.finished and result.epochs_completed == 2 and len(epochs) == 2
    assert epochs[1]["loss"] < 0.9 * epochs[0]["loss"]
    assert result.metrics["final_loss"] < result.metrics["first_loss"]
    assert sum(seen) == result.steps * 32 and result.steps == 2 * (300 // 32)
    for suffix in (".metrics.json", ".loss.png", ".config.json", ".ckpt", ".onnx"):
        assert out.with_name("v1" + suffix).exists(), suffix
    resolved = TrainConfig.from_file(out.with_name("v1.config.json"))
    assert resolved.device == "cpu" and resolved.head_params == {"s": 16.0, "m": 0.2}
    metrics = json.loads(out.with_name("v1.metrics.json").read_text())
    assert metrics["total_steps"] == result.steps


def test_model_file_loads_weights_only_and_is_self_describing(trained):
    out, _, _ = trained
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "gallery.model/1"
    assert payload["arch"]["name"] == "small" and payload["arch"]["dim"] == 32
    assert payload["model_id"] == weights_fingerprint(payload["state_dict"])
    assert payload["method"]["method"] == "independent"
    assert payload["classes"] == [str(c) for c in range(10)]
    assert PreprocessSpec.from_dict(payload["preprocess"]) == PreprocessSpec(32, 32)


def test_onnx_reproduces_torch_embeddings(trained):
    out, _, _ = trained
    loaded = load_model(out)
    # held-out real images (test split), not the parity images stored in the .pt
    images, _ = fashion_mnist("test", per_class=3)
    np.savez(out.with_name("heldout.npz"), images=images, labels=np.arange(len(images)) % 10)
    pixels = open_dataset(out.with_name("heldout.npz"), loaded.spec).images_uint8(range(30))
    batch = to_tensor(pixels, loaded.spec)
    with torch.no_grad():
        expected = loaded.backbone(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(out.with_suffix(".onnx")),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    assert got.shape == (30, 32)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected).max() > 0.1  # a real, non-degenerate embedding
    props = {p.key: p.value for p in onnx.load(str(out.with_suffix(".onnx"))).metadata_props}
    assert props["gallery.model_id"] == loaded.meta["model_id"]
    assert props["gallery.dim"] == "32" and props["gallery.arch"] == "small"
    assert props["gallery.input_size"] == "32,32" and props["gallery.color_order"] == "RGB"
    assert props["gallery.label_map_sha256"] == loaded.meta["label_map_sha256"]
    assert json.loads(props["gallery.method"])["method"] == "independent"


def test_torch_encoder_matches_onnx_encoder(trained):
    from gallery.encoder import load_encoder

    import trainer.torch_encoder  # noqa: F401  registers .pt

    out, _, _ = trained
    pt_enc, onnx_enc = load_encoder(out), load_encoder(out.with_suffix(".onnx"))
    assert pt_enc.dim == onnx_enc.dim == 32 and pt_enc.spec == onnx_enc.spec
    assert pt_enc.identity["model_id"] == onnx_enc.identity["model_id"]
    assert pt_enc.identity["format"] == "pt"
    batch = to_tensor(load_model(out).meta["parity_images"].numpy(), pt_enc.spec)
    np.testing.assert_allclose(pt_enc.embed(batch), onnx_enc.embed(batch), atol=1e-4)


def test_export_refuses_on_mismatch(trained, monkeypatch, tmp_path):
    import trainer.export as export

    out, _, _ = trained
    real_export = export._torch_export

    def tampered(backbone, sample, path):  # export a model whose weights differ slightly
        with torch.no_grad():
            backbone.head.fc.bias.add_(1e-2)
        real_export(backbone, sample, path)
        with torch.no_grad():
            backbone.head.fc.bias.sub_(1e-2)

    monkeypatch.setattr(export, "_torch_export", tampered)
    target = tmp_path / "bad.onnx"
    with pytest.raises(GateFailed, match="disagrees with torch"):
        export.export_onnx(out, target)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_resume_equals_uninterrupted(data_file, tmp_path):
    full = fit(_config(data_file, tmp_path / "full.pt", epochs=3))
    part = fit(_config(data_file, tmp_path / "part.pt", epochs=3, stop_after=1))
    assert not part.finished and part.model is None and part.epochs_completed == 1
    resumed = fit(_config(data_file, tmp_path / "part.pt", epochs=3, resume=True))
    assert resumed.finished and resumed.steps == full.steps
    a, b = full.metrics["epochs"], resumed.metrics["epochs"]
    assert [e["lr"] for e in a] == [e["lr"] for e in b]
    np.testing.assert_allclose([e["loss"] for e in a], [e["loss"] for e in b], rtol=1e-4)
    sa = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "part.pt", weights_only=True)["state_dict"]
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(BadInput, match="config differs in lr"):
        fit(_config(data_file, tmp_path / "part.pt", epochs=3, lr=0.01, resume=True))
    with pytest.raises(BadInput, match="no checkpoint"):
        fit(_config(data_file, tmp_path / "none.pt", resume=True))


def test_torchscript_encoder_matches_pt(trained, tmp_path):
    from gallery.encoder import load_encoder

    import trainer.torch_encoder  # noqa: F401  registers .pt and .ts
    from trainer.export import export_torchscript

    out, _, _ = trained
    export_torchscript(out, tmp_path / "v1.ts")
    ts_enc, pt_enc = load_encoder(tmp_path / "v1.ts"), load_encoder(out)
    assert ts_enc.identity["format"] == "torchscript" and ts_enc.dim == 32
    assert ts_enc.identity["model_id"] == pt_enc.identity["model_id"]
    images, _ = fashion_mnist("test", per_class=1)
    pixels = np.stack([np.repeat(np.pad(im, 2)[:, :, None], 3, axis=2) for im in images])
    batch = to_tensor(pixels, ts_enc.spec)
    np.testing.assert_allclose(ts_enc.embed(batch), pt_enc.embed(batch), atol=1e-5)
    with pytest.raises(BadInput, match="expected"):
        pt_enc.embed(batch[:, :, :16])


def test_export_iresnet18_with_real_images(tmp_path):
    """An insightface backbone (PReLU, BN, residuals) exports within tolerance."""
    from trainer.backbones import arch_config, build_backbone
    from trainer.checkpoint import atomic_save, model_payload
    from trainer.export import export_onnx

    torch.manual_seed(0)
    arch = arch_config("iresnet18", 16, 32)
    net = build_backbone(arch)
    images, _ = fashion_mnist("test", per_class=2)
    pixels = np.stack([np.repeat(np.pad(im, 2)[:, :, None], 3, axis=2) for im in images])
    spec = PreprocessSpec(32, 32)
    for module in net.modules():  # cumulative BN averages: real statistics in one pass
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(to_tensor(pixels, spec)))
    net.eval()
    payload = model_payload(net, arch, spec, ["a", "b"], "0" * 64, {"method": "independent"},
                            {"name": "arcface"}, torch.from_numpy(pixels[:8]), {})
    atomic_save(payload, tmp_path / "ir18.pt")
    report = export_onnx(tmp_path / "ir18.pt", tmp_path / "ir18.onnx", images=pixels[8:])
    assert report["parity_images"] == 20
    assert report["max_abs_diff"] <= 1e-4 * report["output_scale"]
    session = ort.InferenceSession(str(tmp_path / "ir18.onnx"),
                                   providers=["CPUExecutionProvider"])
    batch = to_tensor(pixels, spec)
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * report["output_scale"])


def test_adamw_warmup_schedule_is_wired(data_file, tmp_path):
    result = fit(_config(data_file, tmp_path / "w.pt", optimizer="adamw", lr=1e-3,
                         warmup_epochs=1.0, epochs=2))
    n = 300 // 32  # steps per epoch
    first, second = result.metrics["epochs"]
    assert first["lr"] == pytest.approx(1e-3)  # last warm-up step reaches the peak
    assert second["lr"] == pytest.approx(1e-3 * (1 - (n - 1) / n) ** 2)
    assert second["loss"] < first["loss"]
    from PIL import Image

    with Image.open(tmp_path / "w.loss.png") as image:
        assert image.format == "PNG" and image.size[0] > 100

"""End-to-end `gallery check-compat` on real Fashion-MNIST images with trained encoders.

Three small MLP encoders are trained here with plain torch on Fashion-MNIST and
exported to ONNX (graph written with onnx.helper, gallery.* metadata):
- old: trained on a small slice (the v1 model),
- new-compatible: the old model fine-tuned on 13x more data against the old
  model's frozen classifier (BCT's influence loss alone), so new->old works,
- new-independent: same data, own classifier only: not compatible.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from gallery.compat.report import SCHEMA_VERSION, validate_report
from gallery.datasets.fashion_mnist import load_split
from gallery.fingerprint import file_sha256
from gallery.preprocess import META_PREFIX, PreprocessSpec

DIM = 32
SPEC = PreprocessSpec(28, 28, "GRAY", (127.5,), (127.5,))


def _net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, DIM))


def _cosine_logits(emb, weight, scale=16.0):
    return scale * torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(weight).T


def _train(images, labels, seed, steps, old_head=None, init=None, own_head=True):
    """Cosine-softmax training; with old_head, also the BCT influence loss against it;
    with init, start from those weights (fine-tuning the old model keeps its space)."""
    net = _net(seed)
    if init is not None:
        net.load_state_dict(init.state_dict())
    head = torch.nn.Parameter(torch.randn(10, DIM) * 0.1)
    opt = torch.optim.Adam([*net.parameters(), head], lr=3e-3)
    x = torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5)[:, None]
    y = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        emb = net(x[idx])
        loss = torch.nn.functional.cross_entropy(_cosine_logits(emb, head), y[idx]) if own_head else 0.0
        if old_head is not None:
            loss = loss + torch.nn.functional.cross_entropy(_cosine_logits(emb, old_head), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, head.detach()


def _export(net, path, model_id):
    lin1, lin2 = net[1], net[3]
    inits = [numpy_helper.from_array(t.detach().numpy().astype(np.float32), n) for t, n in
             ((lin1.weight, "w1"), (lin1.bias, "b1"), (lin2.weight, "w2"), (lin2.bias, "b2"))]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["embedding"], transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", DIM])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {**SPEC.to_metadata(), META_PREFIX + "dim": str(DIM), META_PREFIX + "model_id": model_id}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("compat")
    train_x, train_y = load_split("/usr/share/datasets/fashion-mnist", "train")
    test_x, test_y = load_split("/usr/share/datasets/fashion-mnist", "t10k")
    old_net, old_head = _train(train_x[:300], train_y[:300], seed=0, steps=30)
    new_x, new_y = train_x[1000:5000], train_y[1000:5000]
    compat_net, _ = _train(new_x, new_y, seed=1, steps=600, old_head=old_head, init=old_net, own_head=False)
    indep_net, _ = _train(new_x, new_y, seed=2, steps=600)
    paths = {}
    for name, net in (("old", old_net), ("compat", compat_net), ("indep", indep_net)):
        paths[name] = root / f"{name}.onnx"
        _export(net, paths[name], model_id=f"test-{name}")
    wide = _net(3)
    wide[3] = torch.nn.Linear(128, 64)
    paths["wide"] = root / "wide.onnx"
    _export_wide(wide, paths["wide"])
    data = root / "eval"
    for label in range(10):
        folder = data / f"class{label}"
        folder.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(test_y == label)[:30]):
            Image.fromarray(test_x[i]).save(folder / f"{k:03d}.png")
    return root, paths, data


def _export_wide(net, path):
    global DIM
    saved, DIM = DIM, 64
    try:
        _export(net, path, "test-wide")
    finally:
        DIM = saved


def _run(*args):
    return CliRunner().invoke(app, ["check-compat", *map(str, args)])


def test_pass_with_compatible_model(setup):
    root, paths, data = setup
    report_path, plot = root / "pass.json", root / "pass.png"
    result = _run("--old", paths["old"], "--new", paths["compat"], "--data", data, "--json", report_path,
                  "--reference", paths["indep"], "--require-criterion", "--max-new-drop", "0.5",
                  "--impostor-pairs", "20000", "--plot", plot, "--old-to-new",
                  "--gallery-per-identity", "3")
    assert result.exit_code == 0, result.output
    report = validate_report(json.loads(report_path.read_text()))
    assert report["schema_version"] == SCHEMA_VERSION and report["passed"] is True
    assert report["failed_gates"] == [] and {g["name"] for g in report["gates"]} == {
        "require_criterion", "max_new_drop"}
    assert report["models"]["old"]["sha256"] == file_sha256(paths["old"])
    assert report["models"]["new"]["model_id"] == "test-compat"
    assert report["data"]["kind"] == "folder" and report["data"]["num_items"] == 300
    assert set(report["comparisons"]) == {"old/old", "new/new", "new->old", "old->new", "reference/reference"}
    assert report["headline"]["metric"] == "rank1"
    old_old = report["comparisons"]["old/old"]["identification"]["rank1"]
    cross = report["comparisons"]["new->old"]["identification"]["rank1"]
    assert report["criterion"] == {"new_to_old": cross, "old_old": old_old, "margin": cross - old_old,
                                   "passed": True, "comparison": "new->old"}
    ref = report["comparisons"]["reference/reference"]["identification"]["rank1"]
    assert report["gain"]["value"] == pytest.approx((cross - old_old) / (ref - old_old))
    pairs = {(t["query"], t["gallery"]) for t in report["thresholds"]}
    assert pairs == {("old", "old"), ("new", "new"), ("new", "old"), ("old", "new"), ("reference", "reference")}
    cross_entry = next(t for t in report["thresholds"] if (t["query"], t["gallery"]) == ("new", "old"))
    assert cross_entry["query_sha256"] == file_sha256(paths["compat"])
    assert cross_entry["gallery_sha256"] == file_sha256(paths["old"])
    assert cross_entry["far"] == 1e-4 and cross_entry["achieved_far"] <= 1e-4
    ver = report["comparisons"]["old/old"]["verification"]
    assert ver["skipped_far"] == [1e-6, 1e-5]  # 20k impostors measure 1e-4 and above only
    assert plot.stat().st_size > 10_000


def test_gate_fails_for_independent_model(setup):
    root, paths, data = setup
    report_path = root / "fail.json"
    result = _run("--old", paths["old"], "--new", paths["indep"], "--data", data, "--json", report_path,
                  "--require-criterion", "--impostor-pairs", "5000", "--gallery-per-identity", "3")
    assert result.exit_code == 1, result.output
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["failed_gates"] == ["require_criterion"]
    # an independently trained model does not share the old embedding space
    assert report["criterion"]["new_to_old"] < 0.5 * report["criterion"]["old_old"]


def test_bad_inputs_exit_2(setup, tmp_path):
    root, paths, data = setup
    result = _run("--old", paths["old"], "--new", paths["wide"], "--data", data)
    assert result.exit_code == 2 and "not compatible by construction" in result.output
    result = _run("--old", paths["old"], "--new", tmp_path / "missing.onnx", "--data", data)
    assert result.exit_code == 2 and "not found" in result.output
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(one / "a.png")
    result = _run("--old", paths["old"], "--new", paths["compat"], "--data", tmp_path / "one")
    assert result.exit_code == 2 and "identity" in result.output
    result = _run("--old", paths["old"], "--new", paths["compat"], "--data", data, "--min-gain", "0.1")
    assert result.exit_code == 2 and "--reference" in result.output


def _pt_model(path, dim, seed):
    """An untrained `small` backbone saved in the trainer's .pt format."""
    from trainer.backbones import arch_config, build_backbone
    from trainer.checkpoint import atomic_save, model_payload

    torch.manual_seed(seed)
    arch = arch_config("small", dim, 32, in_channels=1)
    backbone = build_backbone(arch).eval()
    spec = PreprocessSpec(32, 32, "GRAY", (127.5,), (127.5,))
    atomic_save(model_payload(backbone, arch, spec, [], "", {"name": "independent"}, {},
                              torch.zeros(1, 1, 32, 32), {}), path)


def test_pt_models_and_identical_models(setup):
    root, _, data = setup
    _pt_model(root / "a.pt", 16, 0)
    _pt_model(root / "b.pt", 24, 1)
    report_path = root / "same.json"
    result = _run("--old", root / "a.pt", "--new", root / "a.pt", "--data", data, "--json", report_path,
                  "--require-criterion", "--impostor-pairs", "2000")
    # the same model on both sides: new->old equals old/old, which is not an improvement
    assert result.exit_code == 1, result.output
    report = json.loads(report_path.read_text())
    comps = report["comparisons"]
    assert comps["new->old"]["verification"]["auc"] == pytest.approx(comps["old/old"]["verification"]["auc"])
    assert report["criterion"]["margin"] == pytest.approx(0.0, abs=1e-12)
    assert report["models"]["old"]["format"] == "pt" and report["models"]["old"]["model_id"]
    result = _run("--old", root / "a.pt", "--new", root / "b.pt", "--data", data)
    assert result.exit_code == 2 and "16-d" in result.output and "24-d" in result.output

"""`gallery train-adapter` and `check-compat --adapter`: h maps a v1 space into a v2 space.

Two tiny encoders of different dims are trained on real digits (sklearn) by the one fit
loop; the adapter is trained on the digits of some classes and evaluated on others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import ok, run
from gallery.adapter import load_adapter
from gallery.fingerprint import file_sha256

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TRAIN = ["--arch", "small", "--image-size", "8", "--epochs", "3", "--batch-size", "64", "--lr", "0.05",
         "--device", "cpu", "--json"]


def _folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels)):
        (root / f"d{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"d{label}" / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """v1 (12-d, softmax, seed 0) and v2 (20-d, arcface, seed 1) on all digits; adapter data =
    digits 0-6 (first half of the images), evaluation = the other half of every class."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("adapter")
    d = load_digits()
    images = (d.images * 15).astype(np.uint8)
    half = np.arange(len(images)) % 2 == 0
    np.savez(root / "train.npz", images=images[half], labels=d.target[half])
    ok("train", "--data", root / "train.npz", "--head", "softmax", "--dim", "12", "--seed", "0",
       "--out", root / "v1.pt", "--onnx", root / "v1.onnx", *TRAIN)
    ok("train", "--data", root / "train.npz", "--head", "arcface", "--dim", "20", "--seed", "1",
       "--out", root / "v2.pt", "--onnx", root / "v2.onnx", *TRAIN)
    pick = half & (d.target < 7)
    _folder(root / "adapt", images[pick][:420], d.target[pick][:420])
    rest = ~half
    _folder(root / "eval", images[rest][::3], d.target[rest][::3])
    return root


def _adapter(work: Path, name: str, *args) -> dict:
    return ok("train-adapter", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "adapt",
              "--out", work / name, "--epochs", "15", *args, "--json")


def _numpy_forward(state: dict, x: np.ndarray) -> np.ndarray:
    """Independent reference of ResidualAdapter: plain numpy, exact GELU (erf)."""
    from scipy.special import erf

    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = z @ state["linear.weight"].T + state["linear.bias"]
    h, i = z, 0
    while f"mlp.{i}.weight" in state:
        h = h @ state[f"mlp.{i}.weight"].T + state[f"mlp.{i}.bias"]
        if f"mlp.{i + 2}.weight" in state:
            h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        i += 2
    y = y + h if i else y
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def test_export_parity_onnx_vs_torch_and_numpy(tmp_path):
    from trainer.adapter import AdapterConfig, PairedFeatures, export_adapter, fit_adapter, split_indices

    rng = np.random.default_rng(0)
    old = rng.normal(size=(300, 12)).astype(np.float32)
    new = np.tanh(old @ rng.normal(size=(12, 20))).astype(np.float32)
    pairs = PairedFeatures(old, new, np.arange(300) % 5, True, "f" * 64,
                           {"sha256": "a" * 64, "model_id": "m1"}, {"sha256": "b" * 64, "model_id": None})
    config = AdapterConfig(out=str(tmp_path / "h.onnx"), epochs=3, hidden=32)
    model, metrics = fit_adapter(config, pairs, split_indices(300, 0.1, 1.0, 0))
    exported = export_adapter(model, config, pairs, metrics)
    probe = rng.normal(size=(50, 12)).astype(np.float32) * 3  # unseen vectors, not unit norm
    adapter = load_adapter(tmp_path / "h.onnx")
    with torch.no_grad():
        expected = model(torch.from_numpy(probe)).numpy()
    state = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    assert np.abs(adapter.apply(probe) - expected).max() < 1e-5
    assert np.abs(adapter.apply(probe) - _numpy_forward(state, probe)).max() < 1e-5
    assert exported["max_abs_diff"] <= 1e-4
    assert adapter.meta["from_model_id"] == "m1" and adapter.meta["to_model_id"] is None
    assert (adapter.from_dim, adapter.to_dim) == (12, 20)


def test_nothing_written_when_parity_fails(tmp_path, monkeypatch):
    import trainer.adapter as mod
    from gallery.errors import GateFailed

    rng = np.random.default_rng(1)
    old = rng.normal(size=(40, 6)).astype(np.float32)
    pairs = mod.PairedFeatures(old, old[:, :4], np.arange(40) % 4, True, "f", {"sha256": "a"}, {"sha256": "b"})
    config = mod.AdapterConfig(out=str(tmp_path / "h.onnx"), epochs=1, hidden=8)
    model, metrics = mod.fit_adapter(config, pairs, mod.split_indices(40, 0.1, 1.0, 0))
    monkeypatch.setattr(mod, "PARITY_ATOL", -1.0)
    with pytest.raises(GateFailed):
        mod.export_adapter(model, config, pairs, metrics)
    assert list(tmp_path.iterdir()) == []


def test_held_out_top1_equals_a_naive_loop():
    from trainer.adapter import held_out_top1

    rng = np.random.default_rng(4)
    q, g = torch.from_numpy(rng.normal(size=(12, 4))), torch.from_numpy(rng.normal(size=(12, 4)))
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 5, 5])
    s = (q @ g.T).numpy()
    own = np.mean([int(np.argmax(s[i]) == i) for i in range(12)])
    hits = []
    for i in range(12):
        others = [j for j in range(12) if j != i]
        if any(int(labels[j]) == int(labels[i]) for j in others):
            best = max(others, key=lambda j: s[i, j])
            hits.append(int(labels[best]) == int(labels[i]))
    assert held_out_top1(q, g, None) == pytest.approx(own)
    assert held_out_top1(q, g, labels) == pytest.approx(np.mean(hits))


def test_ridge_init_equals_sklearn_ridge():
    from sklearn.linear_model import Ridge

    from trainer.adapter import ridge_init

    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(80, 10)), rng.normal(size=(80, 7))
    a, b = ridge_init(z, y, ridge=0.01)
    zc = z - z.mean(0)
    alpha = 0.01 * np.trace(zc.T @ zc) / 10
    reference = Ridge(alpha=alpha, fit_intercept=True).fit(z, y)
    assert np.allclose(a, reference.coef_, atol=1e-5) and np.allclose(b, reference.intercept_, atol=1e-5)


def test_contrastive_term_equals_a_naive_loop():
    from trainer.adapter import label_term

    rng = np.random.default_rng(3)
    out = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(9, 5))), dim=1)
    new = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(9, 5))), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1])
    got = float(label_term("contrastive", out, new, labels, None, 0.1))
    total = 0.0
    for i in range(9):
        logits = [float(out[i] @ new[j]) / 0.1 for j in range(9)]
        norm = np.log(sum(np.exp(v) for v in logits))
        positives = [j for j in range(9) if labels[j] == labels[i]]
        total += -sum(logits[j] - norm for j in positives) / len(positives)
    assert got == pytest.approx(total / 9, rel=1e-9)


def test_train_adapter_cli_outputs_and_identity(work):
    result = _adapter(work, "h.onnx")
    adapter = load_adapter(work / "h.onnx")
    assert adapter.meta["from_sha256"] == file_sha256(work / "v1.onnx")
    assert adapter.meta["to_sha256"] == file_sha256(work / "v2.onnx")
    import torch as _torch

    v2_id = _torch.load(work / "v2.pt", weights_only=True)["model_id"]
    assert adapter.meta["to_model_id"] == v2_id
    assert (adapter.from_dim, adapter.to_dim) == (12, 20)
    metrics = json.loads((work / "h.metrics.json").read_text())
    assert metrics["data_fingerprint"] == adapter.meta["data_fingerprint"]
    assert metrics["num_train"] + metrics["num_val"] == 420 == adapter.meta["num_images"]
    # the shipped epoch is the best held-out one: never worse than the ridge starting point
    assert metrics["selection"] == "identity top-1"
    best = (metrics["val_top1"], metrics["val_cos"])
    assert best >= (metrics["linear_init_val_top1"], metrics["linear_init_val_cos"])
    assert all(best >= (e["val_top1"], e["val_cos"]) for e in metrics["epochs"])
    assert result["max_abs_diff"] <= 1e-4
    assert (work / "h.loss.png").stat().st_size > 0 and (work / "h.config.json").is_file()


def test_check_compat_adapter_beats_no_map_and_feeds_the_gate(work):
    if not (work / "h.onnx").exists():
        _adapter(work, "h.onnx")
    report_path = work / "r.json"
    result = run("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "eval",
                 "--adapter", work / "h.onnx", "--impostor-pairs", "3000", "--out", report_path)
    assert result.exit_code in (0, 1), result.stderr
    report = json.loads(report_path.read_text())
    values = report["headline"]["values"]
    assert set(values) == {"old/old", "new/new", "new->h(old)"}  # 12-d vs 20-d: no raw new->old
    assert report["criterion"]["comparison"] == "new->h(old)"
    assert report["criterion"]["new_to_old"] == values["new->h(old)"]
    # 10 classes: chance rank-1 is ~0.1; the map makes v2 queries find v1 entries
    assert values["new->h(old)"] > 0.5
    assert report["models"]["adapted"]["sha256"] == file_sha256(work / "h.onnx")
    assert any(t["gallery"] == "adapted" for t in report["thresholds"])
    gate = run("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "eval",
               "--adapter", work / "h.onnx", "--impostor-pairs", "3000", "--require-criterion")
    assert gate.exit_code == (0 if report["criterion"]["passed"] else 1)


def test_check_compat_refuses_an_adapter_for_other_models(work):
    if not (work / "h.onnx").exists():
        _adapter(work, "h.onnx")
    swapped = run("check-compat", "--old", work / "v2.onnx", "--new", work / "v1.onnx", "--data", work / "eval",
                  "--adapter", work / "h.onnx")
    assert swapped.exit_code == 2 and "adapter h.onnx maps" in swapped.stderr
    raw = run("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "eval")
    assert raw.exit_code == 2 and "--adapter" in raw.stderr
    not_adapter = run("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data",
                      work / "eval", "--adapter", work / "v1.onnx")
    assert not_adapter.exit_code == 2 and "not a gallery adapter" in not_adapter.stderr


def test_labels_and_flat_folders(work, tmp_path):
    import shutil

    labelled = _adapter(work, "hl.onnx", "--labels", "--label-loss", "contrastive", "--arch", "linear")
    assert load_adapter(work / "hl.onnx").meta["training"]["label_loss"] == "contrastive"
    assert labelled["val_cos"] is not None
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((work / "adapt").rglob("*.png"))[:60]:
        shutil.copy(path, flat / f"{path.parent.name}_{path.name}")
    ok("train-adapter", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", flat,
       "--out", tmp_path / "f.onnx", "--epochs", "2", "--json")
    refused = run("train-adapter", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", flat,
                  "--out", tmp_path / "g.onnx", "--labels")
    assert refused.exit_code == 2 and "identity folders" in refused.stderr
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "h.onnx"], "--old, --new, --data required"),
    (["--arch", "deep"], "unknown adapter arch 'deep'; valid: residual, linear"),
    (["--label-loss", "triplet"], "unknown label loss"),
    (["--fraction", "0"], "--fraction must be in (0, 1]"),
    (["--out", "h.pt"], "--out must name a .onnx file"),
])
def test_bad_input_is_one_line_exit_2(work, tmp_path, args, message):
    base = [] if args[0] == "--out" and args[1] == "h.onnx" else [
        "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "adapt"]
    if "--out" not in args:
        args = [*args, "--out", tmp_path / "h.onnx"]
    result = run("train-adapter", *base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("error:") == 1


def test_adapter_on_saved_embeddings_equals_the_model_run(work):
    """check-compat --embeddings (no model files, as for dlib) + --adapter gives the same numbers."""
    if not (work / "h.onnx").exists():
        _adapter(work, "h.onnx")
    common = ["--adapter", work / "h.onnx", "--impostor-pairs", "2000"]
    ok("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "eval", *common,
       "--save-embeddings", work / "e.h5", "--out", work / "live.json")
    ok("check-compat", "--embeddings", work / "e.h5", *common, "--out", work / "saved.json")
    live, saved = (json.loads((work / n).read_text()) for n in ("live.json", "saved.json"))
    assert saved["headline"]["values"] == pytest.approx(live["headline"]["values"], abs=1e-6)
    assert "new->h(old)" in saved["headline"]["values"]

"""train-compatible with a change of dimension: a 32-d v2 plus a learned projection to v1's 16-d."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import ok, run
from tiny_models import write_digit_split

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
COMMON = ["--arch", "small", "--image-size", "8", "--epochs", "2", "--batch-size", "64", "--lr", "0.05",
          "--device", "cpu"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """sklearn digits: v1 (16-d) on classes 0-4, v2 on 5-9, evaluation folder from held-out images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("projection")
    images, labels = write_digit_split(root, old_rows=300, new_rows=300, limit=1200)
    for i in range(1200, 1400):
        (root / "eval" / f"d{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / "eval" / f"d{labels[i]}" / f"{i}.png")
    ok("train", "--data", root / "old.npz", "--head", "softmax", "--dim", "16", "--out", root / "v1.pt",
       "--onnx", root / "v1.onnx", *COMMON, "--json")
    ok("train-compatible", "--old", root / "v1.pt", "--data", root / "new.npz", "--method", "mixbct",
       "--dim", "32", "--out", root / "v2.pt", "--onnx", root / "v2.onnx", *COMMON, "--json")
    return root


def test_model_file_and_onnx_declare_both_spaces(work):
    import onnx

    from trainer.checkpoint import read_model_file

    v1, v2 = read_model_file(work / "v1.pt"), read_model_file(work / "v2.pt")
    assert v2["arch"]["dim"] == 32 and v2["arch"]["projection"] == 16
    assert v2["compatible_with"] == v1["model_id"]
    assert v2["method"]["method"] == "mixbct" and v2["method"]["projection"]["dim"] == 16
    assert v2["state_dict"]["projection.weight"].shape == (16, 32)
    graph = onnx.load(str(work / "v2.onnx"))
    assert [o.name for o in graph.graph.output] == ["embedding", "old_space"]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["gallery.dim"] == "32" and meta["gallery.old_space_dim"] == "16"


def test_old_space_output_is_the_projection_of_the_embedding(work):
    """ONNX outputs vs an independent torch reference: P @ backbone(x), P from the .pt."""
    from gallery.encoder import embed_images, load_encoder, old_space_view
    from gallery.preprocess import to_tensor
    from trainer.checkpoint import load_model, read_model_file

    encoder = load_encoder(work / "v2.onnx")
    view = old_space_view(encoder)
    assert (encoder.dim, view.dim) == (32, 16)
    pixels = np.repeat(np.load(work / "new.npz")["images"][:20, :, :, None], 3, axis=-1)
    full, projected = embed_images(encoder, pixels), embed_images(view, pixels)
    loaded = load_model(work / "v2.pt")
    weight = read_model_file(work / "v2.pt")["state_dict"]["projection.weight"].numpy()
    with torch.no_grad():
        reference = loaded.backbone(torch.from_numpy(to_tensor(pixels, encoder.spec))).numpy()
    assert np.abs(full - reference).max() < 1e-4
    assert np.abs(projected - reference @ weight.T).max() < 1e-4
    assert old_space_view(load_encoder(work / "v1.onnx")) is None


def test_check_compat_compares_v2_queries_through_the_projection(work):
    report_path = work / "r.json"
    result = run("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "eval",
                 "--impostor-pairs", "3000", "--out", report_path)
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_path.read_text())
    cross = report["comparisons"]["new->old"]
    assert (cross["query"], cross["gallery"]) == ("new_old_space", "old")
    assert report["models"]["new_old_space"]["dim"] == 16 and report["models"]["new"]["dim"] == 32
    # the .pt and the .onnx give the same report numbers (TorchEncoder projects like the ONNX)
    again = run("check-compat", "--old", work / "v1.pt", "--new", work / "v2.pt", "--data", work / "eval",
                "--impostor-pairs", "3000", "--out", work / "r_pt.json")
    assert again.exit_code == 0, again.stderr
    pt = json.loads((work / "r_pt.json").read_text())
    for name in ("old/old", "new/new", "new->old"):
        assert pt["headline"]["values"][name] == pytest.approx(report["headline"]["values"][name], abs=1e-9)
    refused = run("check-compat", "--old", work / "v1.onnx", "--new", work / "v2.onnx", "--data", work / "eval",
                  "--old-to-new")
    assert refused.exit_code == 2 and "one dimension" in refused.stderr


def test_projection_run_resumes_like_an_uninterrupted_one(work):
    """The projection and the old-space head are in the checkpoint: stop after 1 epoch, resume."""
    from trainer.checkpoint import read_model_file

    args = ["--old", work / "v1.pt", "--data", work / "new.npz", "--method", "l2", "--dim", "24", *COMMON]
    ok("train-compatible", *args, "--out", work / "full" / "v2.pt", "--json")
    from trainer.config import TrainConfig
    from trainer.fit import fit

    config = json.loads((work / "full" / "v2.config.json").read_text())
    assert config["old_dim"] == 16
    config.update(out=str(work / "split" / "v2.pt"), stop_after=1)
    fit(TrainConfig.from_dict(config))
    fit(TrainConfig.from_dict({**config, "stop_after": None, "resume": True}))
    a, b = read_model_file(work / "full" / "v2.pt"), read_model_file(work / "split" / "v2.pt")
    assert a["model_id"] == b["model_id"]

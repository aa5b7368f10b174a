"""`gallery train-compatible` end to end on real (tiny) data through the one fit loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tiny_models import write_digit_split
from trainer.methods import METHODS, load_all

load_all()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
runner = CliRunner()
COMMON = ["--arch", "small", "--dim", "16", "--image-size", "16", "--epochs", "1",
          "--batch-size", "64", "--lr", "0.05", "--device", "cpu"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """sklearn digits: classes 0-4 for the old model, 5-9 for the new one; v1 trained once."""
    root = tmp_path_factory.mktemp("compat")
    write_digit_split(root, old_rows=250, new_rows=250)
    result = runner.invoke(app, ["train", "--data", str(root / "old.npz"), "--head", "softmax",
                                 "--out", str(root / "v1.pt"), "--onnx", str(root / "v1.onnx"),
                                 *COMMON, "--json"])
    assert result.exit_code == 0, result.output
    return root


def compat(work: Path, *args: str) -> "object":
    return runner.invoke(app, ["train-compatible", "--data", str(work / "new.npz"), *COMMON,
                               *args])


def test_help_lists_the_registry():
    result = runner.invoke(app, ["train-compatible", "--help"])
    assert result.exit_code == 0
    for name in METHODS.names():
        assert name in result.output


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_and_records_compatibility(work, method):
    import onnx

    from trainer.checkpoint import read_model_file

    v1 = read_model_file(work / "v1.pt")
    out, onnx_out = work / f"v2_{method}.pt", work / f"v2_{method}.onnx"
    result = compat(work, "--old", str(work / "v1.pt"), "--method", method, "--out", str(out),
                    "--onnx", str(onnx_out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["finished"] is True
    v2 = read_model_file(out)
    assert v2["method"]["method"] == method
    meta = {p.key: p.value for p in onnx.load(str(onnx_out)).metadata_props}
    assert json.loads(meta["gallery.method"])["method"] == method
    if METHODS.get(method).requires_old_model:
        assert v2["compatible_with"] == v1["model_id"]
        assert meta["gallery.compatible_with"] == v1["model_id"]
    config = json.loads(out.with_name(out.stem + ".config.json").read_text())
    assert config["method"] == method and config["old_model"] == str(work / "v1.pt")
    defaults = {"l2": {"l2_weight": 10.0, "tau": 0.0}, "mixbct": {"mix_ratio": 0.3, "credible_t": 0.9}}
    for key, value in defaults.get(method, {}).items():
        assert v2["method"][key] == value and config["method_params"][key] == value


def test_onnx_old_model_and_old_features_file(work):
    from trainer.checkpoint import read_model_file

    v1_id = read_model_file(work / "v1.pt")["model_id"]
    out = work / "onnx_old" / "v2.pt"
    result = compat(work, "--old", str(work / "v1.onnx"), "--method", "l2", "--tau", "0.2",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    v2 = read_model_file(out)
    assert v2["compatible_with"] == v1_id and v2["method"]["tau"] == 0.2
    cache = list(out.parent.glob("old_features-*.h5"))
    assert len(cache) == 1  # extracted once, next to the model
    again = compat(work, "--old-features", str(cache[0]), "--method", "bct", "--bct-scale", "16",
                   "--out", str(work / "from_file" / "v2.pt"))
    assert again.exit_code == 0, again.output
    v2b = read_model_file(work / "from_file" / "v2.pt")
    assert v2b["compatible_with"] == v1_id and v2b["method"]["bct_scale"] == 16.0


@pytest.mark.parametrize("args,message", [
    (["--method", "mixbct"], "needs the old model"),
    (["--method", "mixbct", "--old", "{v1}", "--tau", "0.2"], "--tau does not apply"),
    (["--method", "nope", "--old", "{v1}"], "valid: bct, independent, l2, mixbct, nccl, unibct"),
    (["--method", "mixbct", "--old", "{missing}"], "not found"),
    (["--method", "mixbct", "--old", "{v1}", "--mix-ratio", "2"], "--mix-ratio"),
    (["--method", "bct", "--old", "{v1}", "--bct-variant", "paper"], "valid: official, scaled"),
    (["--method", "bct", "--old", "{v1}", "--bct-variant", "official", "--bct-scale", "8"],
     "scaled only"),
])
def test_bad_input_exits_2(work, args, message):
    args = [a.format(v1=work / "v1.pt", missing=work / "nope.pt") for a in args]
    result = compat(work, *args, "--out", str(work / "bad" / "v2.pt"))
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert not (work / "bad" / "v2.pt").exists()


def test_config_file_method_and_option_override(work):
    from trainer.checkpoint import read_model_file

    cfg = work / "l2.json"
    cfg.write_text(json.dumps({"method": "l2", "method_params": {"tau": 0.2, "l2_weight": 5.0}}))
    out = work / "cfg" / "v2.pt"
    result = compat(work, "--config", str(cfg), "--old", str(work / "v1.pt"), "--tau", "0.1",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    method = read_model_file(out)["method"]
    assert (method["method"], method["tau"], method["l2_weight"]) == ("l2", 0.1, 5.0)


def test_official_bct_variant_is_recorded(work):
    from trainer.checkpoint import read_model_file

    out = work / "official" / "v2.pt"
    result = compat(work, "--old", str(work / "v1.pt"), "--method", "bct", "--bct-variant",
                    "official", "--out", str(out))
    assert result.exit_code == 0, result.output
    method = read_model_file(out)["method"]
    assert method["bct_variant"] == "official" and method["bct_scale"] is None

"""`gallery train`: the users' interface, bad input -> one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from trainer.data.samples import FASHION_CLASSES, fashion_mnist, write_image_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images, labels = fashion_mnist(per_class=12)
    return write_image_folder(tmp_path_factory.mktemp("cli") / "fm", images, labels,
                              FASHION_CLASSES)


def _train(*args: str):
    return runner.invoke(app, ["train", *args])


def test_train_json_writes_model_and_onnx(folder, tmp_path):
    out = tmp_path / "v1.pt"
    result = _train("--data", str(folder), "--arch", "small", "--head", "cosface", "--dim", "16",
                    "--image-size", "32", "--epochs", "2", "--seed", "3", "--batch-size", "16",
                    "--out", str(out), "--onnx", str(tmp_path / "v1.onnx"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["finished"] and report["model"] == str(out)
    assert report["steps"] == 2 * (120 // 16) and len(report["epochs"]) == 2
    assert (tmp_path / "v1.onnx").exists()
    payload = torch.load(out, weights_only=True)
    assert payload["head"] == {"name": "cosface", "s": 64.0, "m": 0.4}
    assert payload["config"]["seed"] == 3


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet7"], "unknown backbone 'resnet7'; valid: iresnet100, iresnet18"),
    (["--head", "sphere"], "unknown head 'sphere'; valid: arcface, cosface, softmax"),
    (["--dim", "0"], "--dim must be >= 1"),
    (["--onnx", "model.pt"], "--onnx must name a .onnx file"),
])
def test_bad_names_and_values_exit_2(folder, tmp_path, args, message):
    result = _train("--data", str(folder), "--image-size", "32", "--epochs", "1",
                    "--out", str(tmp_path / "x.pt"), *args)
    assert result.exit_code == 2
    assert message in result.stderr.replace("\n", "")
    assert not (tmp_path / "x.pt").exists()


def test_bad_data_exit_2(folder, tmp_path):
    single = tmp_path / "single"
    (single / "a").mkdir(parents=True)
    for name in ("1.png", "2.png"):
        (single / "a" / name).write_bytes((folder / "bag" / sorted(
            p.name for p in (folder / "bag").iterdir())[0]).read_bytes())
    cases = [(single, "1 identity folder(s); at least 2 needed"), (tmp_path / "nothing", "not found")]
    (tmp_path / "lonely.rec").write_bytes(b"\0" * 8)
    cases.append((tmp_path / "lonely.rec", "no index lonely.idx"))
    for data, message in cases:
        result = _train("--data", str(data), "--image-size", "32", "--out",
                        str(tmp_path / "x.pt"))
        assert result.exit_code == 2, (data, result.output)
        assert message in result.stderr


def test_resume_with_other_config_exit_2(folder, tmp_path):
    base = ["--data", str(folder), "--image-size", "32", "--dim", "8", "--batch-size", "32",
            "--out", str(tmp_path / "r.pt"), "--epochs", "1"]
    assert _train(*base).exit_code == 0
    result = _train(*base[:-1], "2", "--resume")
    assert result.exit_code == 2 and "config differs in epochs" in result.stderr


def test_gpu_config_parses_and_bad_configs_are_rejected(tmp_path):
    from pathlib import Path

    from gallery.errors import BadInput
    from trainer.config import TrainConfig

    root = Path(__file__).resolve().parents[1]
    cfg = TrainConfig.from_file(root / "configs" / "gpu_iresnet50.toml", data="/data/ms1m")
    assert (cfg.arch, cfg.image_size, cfg.batch_size, cfg.amp) == ("iresnet50", 112, 256, True)
    assert cfg.head_params == {"s": 64.0, "m": 0.5} and cfg.data == "/data/ms1m"
    (tmp_path / "bad.toml").write_text('arch = "small"\nlearning_rate = 0.1\n')
    with pytest.raises(BadInput, match="unknown training option.*learning_rate"):
        TrainConfig.from_file(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("arch = \n")
    with pytest.raises(BadInput, match="cannot parse config"):
        TrainConfig.from_file(tmp_path / "broken.toml")

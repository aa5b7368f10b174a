"""`gallery train-compatible --method auto` on a tiny set: split, leaderboard, winner."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from gallery.errors import BadInput
from trainer.auto import CANDIDATES, Budget, rank_key, run_auto, split_identities
from tiny_models import write_digit_split
from trainer.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
runner = CliRunner()
COMMON = ["--arch", "small", "--dim", "16", "--image-size", "16", "--batch-size", "64",
          "--lr", "0.05", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("auto")
    write_digit_split(root, old_rows=250, new_rows=300)
    result = runner.invoke(app, ["train", "--data", str(root / "old.npz"), "--head", "softmax",
                                 "--out", str(root / "v1.pt"), "--epochs", "2", *COMMON])
    assert result.exit_code == 0, result.output
    return root


def test_budget_and_ranking_rules():
    assert Budget.parse("3") == Budget(epochs=3) and Budget.parse("2e") == Budget(epochs=2)
    assert Budget.parse("20m") == Budget(minutes=20.0)
    for bad in ("0", "x", "2.5", "-1m"):
        with pytest.raises(BadInput, match="auto-budget"):
            Budget.parse(bad)
    rows = [{"margin": -0.01, "new_new": 0.99}, {"margin": 0.02, "new_new": 0.50},
            {"margin": 0.30, "new_new": 0.40}, {"margin": -0.20, "new_new": 0.95}]
    ordered = sorted(rows, key=rank_key, reverse=True)
    # passing first (by new/new), then failing by margin
    assert [r["margin"] for r in ordered] == [0.02, 0.30, -0.01, -0.20]


def test_split_is_seeded_disjoint_and_complete():
    labels = np.repeat(np.arange(10), 3)
    train, val = split_identities(labels, 10, seed=4)
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(range(10))
    again = split_identities(labels, 10, seed=4)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    with pytest.raises(BadInput, match="at least 4 identities"):
        split_identities(np.repeat(np.arange(3), 2), 3, seed=0)


def test_cli_auto_writes_leaderboard_and_retrains_the_winner(work):
    from trainer.checkpoint import read_model_file

    out = work / "auto" / "v2.pt"
    result = runner.invoke(app, ["train-compatible", "--data", str(work / "new.npz"), *COMMON,
                                 "--epochs", "2", "--old", str(work / "v1.pt"), "--method",
                                 "auto", "--auto-budget", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    board = json.loads(out.with_name("v2.leaderboard.json").read_text())["leaderboard"]
    assert [r["candidate"] for r in board] == [r["candidate"] for r in answer["leaderboard"]]
    assert sorted(r["candidate"] for r in board) == sorted(CANDIDATES)
    assert board == sorted(board, key=rank_key, reverse=True)
    assert all(r["epochs"] == 1 for r in board) and answer["winner"] == board[0]["candidate"]
    for suffix in ("md", "png"):
        assert out.with_name(f"v2.leaderboard.{suffix}").stat().st_size > 0
    # the winner, retrained on ALL identities with the full config
    model = read_model_file(out)
    assert model["method"]["method"] == board[0]["method"]
    assert len(model["classes"]) == 5 and answer["final"]["epochs_completed"] == 2
    # the split: validation identities never trained on during the search
    split = out.parent / "v2.auto" / "split"
    with h5py.File(split / "search_train.h5") as handle:
        trained = {c.decode() for c in handle["classes"][...][np.unique(handle["labels"][...])]}
    held = {p.name for p in (split / "validation").iterdir()}
    assert len(held) == 2 and not trained & held and len(trained | held) == 5
    # a candidate's row is check-compat's answer on the validation identities
    first = board[0]
    check = runner.invoke(app, ["check-compat", "--old", str(work / "v1.pt"), "--new",
                                str(out.parent / "v2.auto" / f"{first['candidate']}.pt"),
                                "--data", str(split / "validation"), "--json"])
    report = json.loads(check.stdout)
    assert report["criterion"]["margin"] == pytest.approx(first["margin"])
    assert report["headline"]["values"]["new/new"] == pytest.approx(first["new_new"])


def test_minutes_budget_and_missing_old(work, tmp_path):
    cfg = TrainConfig(data=str(work / "new.npz"), out=str(tmp_path / "m.pt"), arch="small",
                      dim=16, image_size=16, batch_size=64, lr=0.05, device="cpu", epochs=1,
                      threads=1, old_model=str(work / "v1.pt"))
    result = run_auto(cfg, "0.01m", candidates={"l2-w10": ("l2", {"l2_weight": 10.0})})
    assert result.epochs_per_candidate >= 1 and result.winner == "l2-w10"
    assert (tmp_path / "m.auto" / "calibration.pt").exists()  # one timed epoch
    with pytest.raises(BadInput, match="pass --old"):
        run_auto(TrainConfig(data=cfg.data, out=cfg.out, old_features="x.h5"), "1")

"""DDP (2 ranks, gloo, CPU) trains the same weights as one process with the global batch.

DDP averages the ranks' gradients: with per-sample losses (here L2 against old features),
2 ranks x batch B take exactly the steps one process takes with batch 2B (the sampler's
rank shards interleave one permutation). BatchNorm breaks this on purpose (per-rank
batch statistics), so the test backbone has none. It also checks that the old features
and method state are no DDP buffers, and that --clip-scope backbone clips the backbone only.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from trainer.backbones import BACKBONES
from trainer.config import TrainConfig
from trainer.data import open_dataset
from trainer.fit import fit
from trainer.old_features import OldFeatures, write_old_features

DIM = 8


class _Flat(nn.Module):
    def __init__(self, dim: int, image_size: int, in_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, dim)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _register() -> None:
    """A BatchNorm-free backbone; registered only while these tests (or their ranks) run."""
    if "test-flat" not in BACKBONES:
        BACKBONES.register("test-flat")(lambda dim, image_size, in_channels=3, dropout=0.0:
                                        _Flat(dim, image_size, in_channels))


@pytest.fixture(autouse=True)
def flat_backbone():
    _register()
    yield
    BACKBONES._items.pop("test-flat", None)  # other tests list the registry's names


def _config(root, out: str, batch: int, method: str = "l2", **kw) -> TrainConfig:
    params = {"l2_weight": 1.0} if method == "l2" else {}
    return TrainConfig(data=str(root / "d.npz"), out=str(root / out), arch="test-flat",
                       head="arcface", head_params={"s": 8.0, "m": 0.1}, dim=DIM, image_size=8,
                       color_order="GRAY", epochs=2, batch_size=batch, lr=0.05, device="cpu",
                       threads=1, method=method, method_params=params,
                       old_features=str(root / "old.h5"), **kw)


def _rank(rank: int, port: int, root, kw) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _register()
    fit(_config(root, "ddp.pt", 8, **kw))


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 8, 8), dtype=np.uint8)
    labels = np.arange(64) % 4
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    data = open_dataset(tmp_path / "d.npz", _config(tmp_path, "x.pt", 8).preprocess_spec())
    write_old_features(tmp_path / "old.h5", OldFeatures(
        rng.normal(size=(64, DIM)).astype(np.float32), data.labels,
        {"sha256": "0" * 64, "model_id": "old"}, data.listing_fingerprint()))
    return tmp_path


@pytest.mark.parametrize("method,clip", [("l2", "all"), ("l2", "backbone"), ("unibct", "all")])
def test_two_ranks_equal_one_process_with_the_global_batch(root, method, clip):
    # small clip: clipping is active every step; unibct rebuilds its prototypes at epoch 1
    kw = {"clip_scope": clip, "grad_clip": 0.05, "method": method}
    mp.start_processes(_rank, args=(_port(), root, kw), nprocs=2, start_method="spawn")
    single = fit(_config(root, "single.pt", 16, **kw))
    assert single.finished
    a = torch.load(root / "ddp.ckpt", weights_only=True)["model"]
    b = torch.load(root / "single.ckpt", weights_only=True)["model"]
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    # no old-feature matrix in the state (and so none in DDP's buffers)
    assert not any("old" in key for key in a)


def test_clip_scope_changes_the_result(root):
    fit(_config(root, "all.pt", 16, clip_scope="all", grad_clip=0.05))
    fit(_config(root, "bb.pt", 16, clip_scope="backbone", grad_clip=0.05))
    a = torch.load(root / "all.ckpt", weights_only=True)["model"]
    b = torch.load(root / "bb.ckpt", weights_only=True)["model"]
    assert not torch.allclose(a["head.weight"], b["head.weight"])

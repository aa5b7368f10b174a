"""DDP code path: `torchrun --nproc_per_node 2 gallery train` on CPU (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data.samples import fashion_mnist

TORCHRUN = Path(sys.executable).with_name("torchrun")
GALLERY = Path(sys.executable).with_name("gallery")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not (TORCHRUN.exists() and GALLERY.exists()), reason="needs torchrun")
def test_two_process_training_shards_data_and_syncs(tmp_path):
    images, labels = fashion_mnist(per_class=16)
    np.savez(tmp_path / "fm.npz", images=images, labels=labels)
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(GALLERY), "train", "--data", str(tmp_path / "fm.npz"), "--arch", "small",
           "--dim", "16", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
           "--device", "cpu", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # exactly one JSON document: rank 0 prints alone
    # 160 images / 2 ranks = 80 per rank = 5 batches of 16 per epoch
    assert report["finished"] and report["steps"] == 2 * 5
    metrics = json.loads(out.with_name("ddp.metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["epochs"][1]["loss"] < metrics["epochs"][0]["loss"]
    payload = torch.load(out, weights_only=True)
    assert payload["arch"]["name"] == "small" and len(payload["classes"]) == 10

"""Methods with state that changes during training (UniBCT's rebuilt prototypes, NCCL's
queue) checkpoint it: a run stopped and resumed ends with the same weights as one that
ran straight through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig
from trainer.data import open_dataset
from trainer.fit import fit
from trainer.old_features import OldFeatures, write_old_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    labels = np.arange(96) % 6
    images = np.clip(rng.normal(40 * labels[:, None, None], 30, (96, 16, 16)), 0, 255).astype(np.uint8)
    np.savez(root / "d.npz", images=images, labels=labels)
    data = open_dataset(root / "d.npz", _config(root, "nccl", "x.pt").preprocess_spec())
    write_old_features(root / "old.h5", OldFeatures(
        rng.normal(size=(96, 8)).astype(np.float32) + np.eye(6, 8)[labels] * 3, data.labels,
        {"sha256": "0" * 64, "model_id": "old"}, data.listing_fingerprint()))
    return root


def _config(root, method: str, out: str, **kw) -> TrainConfig:
    return TrainConfig(data=str(root / "d.npz"), out=str(root / out), arch="small", dim=8,
                       image_size=16, color_order="GRAY", epochs=4, batch_size=16, lr=0.05,
                       device="cpu", threads=1, method=method,
                       method_params={"queue_size": 40} if method == "nccl" else {},
                       old_features=str(root / "old.h5"), **kw)


@pytest.mark.parametrize("method", ["unibct", "nccl"])
def test_resume_equals_uninterrupted(root, method):
    full = fit(_config(root, method, f"{method}-full.pt"))
    fit(_config(root, method, f"{method}-part.pt", stop_after=3))  # resumes after the last rebuild
    resumed = fit(_config(root, method, f"{method}-part.pt", resume=True))
    assert resumed.finished and resumed.steps == full.steps
    a = torch.load(root / f"{method}-full.ckpt", weights_only=True)["model"]
    b = torch.load(root / f"{method}-part.ckpt", weights_only=True)["model"]
    state = {"unibct": "method.prototypes", "nccl": "method.feat_queue"}[method]
    assert state in a and float(a[state].abs().sum()) > 0  # the method's state is saved
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)

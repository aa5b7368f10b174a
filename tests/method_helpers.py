"""The compat methods' test kit: a stand-in ArcFace head, plain-loop references
(unit, naive_arcface, naive_prototypes) and `setup`, which builds a method over seeded old
features. Shared by test_methods.py and test_methods_baselines.py; needs torch."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.methods import METHODS, load_all

load_all()
N, D, C, B = 60, 8, 6, 20


class StandInArcFace(nn.Module):
    def __init__(self, dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim))
        self.scale, self.margin = scale, margin

    def logits(self, e, y, weight=None):
        w = F.normalize(self.weight if weight is None else weight, dim=1)
        cos = (F.normalize(e, dim=1) @ w.T).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, y[:, None])) + self.margin)
        return self.scale * cos.scatter(1, y[:, None], target)

    def forward(self, e, y):
        return F.cross_entropy(self.logits(e, y), y)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(sum(float(x) ** 2 for x in v))


def naive_arcface(e: np.ndarray, y: int, w: np.ndarray, s: float, m: float) -> float:
    """One sample's ArcFace cross-entropy with plain loops."""
    u = unit(e)
    logits = []
    for c in range(len(w)):
        cos = float(np.dot(u, unit(w[c])))
        logits.append(s * (math.cos(math.acos(cos) + m) if c == y else cos))
    top = max(logits)
    return -(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits)))


def naive_prototypes(old: np.ndarray, labels: np.ndarray) -> np.ndarray:
    protos = []
    for c in range(C):
        rows = [unit(old[i]) for i in range(len(labels)) if labels[i] == c]
        protos.append(unit(np.sum(rows, axis=0)))
    return np.array(protos)


def setup(method_name: str, dtype: torch.dtype, **params):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(N) % C
    old = rng.normal(size=(N, D)) + 2 * np.eye(C, D)[labels]
    method = METHODS.get(method_name)(**params)
    method.set_old_features(old, labels, {"sha256": "f" * 64, "model_id": "old-id"}, D)
    head = StandInArcFace(D, C).to(dtype)
    idx = torch.from_numpy(rng.choice(N, B, replace=False))
    e = torch.randn(B, D, dtype=dtype, requires_grad=True)
    y = torch.from_numpy(labels)[idx]
    return method, head, e, y, idx, old.astype(np.float32).astype(np.float64)


TOL = {torch.float32: 2e-5, torch.float64: 1e-10}

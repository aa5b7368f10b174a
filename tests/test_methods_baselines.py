"""The paper's other baselines against naive per-sample references: the official BCT,
UniBCT (prototype rebuild + loss) and NCCL (queue + both contrastive terms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery.errors import BadInput
from method_helpers import B, C, D, N, TOL, naive_arcface, setup, unit
from trainer.methods import METHODS, load_all
from trainer.methods.unibct import refine_epochs, refined_prototypes

load_all()


def naive_ce(logits: list[float], y: int) -> float:
    top = max(logits)
    return -(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_official_bct(dtype):
    method, head, e, y, idx, old = setup("bct", dtype, bct_variant="official")
    labels = np.arange(N) % C
    # class mean of RAW old features, then normalised (get_avg_feature.py)
    protos = np.array([unit(np.mean([old[i] for i in range(N) if labels[i] == c], axis=0))
                       for c in range(C)])
    np.testing.assert_allclose(method.prototypes.numpy(), protos, atol=1e-6)
    value, logs = method.loss(e, y, idx, head)
    en = e.detach().double().numpy()
    p = method.prototypes.double().numpy()
    infl = [naive_ce([float(np.dot(unit(en[i]), p[c])) for c in range(C)], int(y[i]))
            for i in range(B)]
    arc = [naive_arcface(en[i], int(y[i]), head.weight.detach().double().numpy(), 30.0, 0.5)
           for i in range(B)]
    assert logs["influence"] == pytest.approx(np.mean(infl), rel=TOL[dtype])
    assert value.item() == pytest.approx(np.mean(arc) + np.mean(infl), rel=TOL[dtype])
    # unscaled cosines: the influence term stays within 2 of log(C) (|logit| <= 1)
    assert abs(np.mean(infl) - math.log(C)) <= 2.0


def test_official_bct_differs_from_scaled_and_rejects_scale():
    official, head, e, y, idx, _ = setup("bct", torch.float64, bct_variant="official")
    scaled, *_ = setup("bct", torch.float64)
    assert not torch.allclose(official.prototypes, scaled.prototypes)
    assert official.loss(e, y, idx, head)[1]["influence"] != pytest.approx(
        scaled.loss(e, y, idx, head)[1]["influence"])
    with pytest.raises(BadInput, match="scaled only"):
        METHODS.get("bct")(bct_variant="official", bct_scale=8.0)
    with pytest.raises(BadInput, match="valid: official, scaled"):
        METHODS.get("bct")(bct_variant="paper")


def naive_unibct_prototype(new: np.ndarray, old: np.ndarray, lamb: float, t: float) -> np.ndarray:
    """Eq. 9-10 for one class with plain loops (numpy inverse)."""
    n = len(new)
    f = [unit(v) for v in new]
    edges = np.zeros((n, n))
    for j in range(n):  # softmax over i (dim 0) of column j, diagonal excluded
        column = [(-1e9 if i == j else float(np.dot(f[i], f[j])) / t) for i in range(n)]
        top = max(column)
        total = sum(math.exp(v - top) for v in column)
        for i in range(n):
            edges[i, j] = math.exp(column[i] - top) / total
    propagate = (1 - lamb) * np.linalg.inv(np.eye(n) - lamb * edges)
    return np.mean([sum(propagate[i, k] * old[k] for k in range(n)) for i in range(n)], axis=0)


def test_unibct_prototypes_and_schedule():
    rng = np.random.default_rng(3)
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0, 3])  # class 3 is a singleton
    new, old = rng.normal(size=(11, 5)), rng.normal(size=(11, 5)) * 4
    got = refined_prototypes(new, old, labels, 5, 0.9, 0.05)
    for c in range(4):
        rows = labels == c
        np.testing.assert_allclose(got[c], naive_unibct_prototype(new[rows], old[rows], 0.9, 0.05),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[3], old[10], rtol=1e-6)  # a singleton keeps its feature
    assert not got[4].any()  # absent class
    assert refine_epochs(35) == [10, 20] and refine_epochs(7) == [2, 4]
    assert refine_epochs(2) == [1] and refine_epochs(1) == []


def test_unibct_loss_off_then_on_after_rebuild():
    method, head, e, y, idx, old = setup("unibct", torch.float64)
    labels = np.arange(N) % C
    head_only = np.mean([naive_arcface(e[i].detach().numpy(), int(y[i]),
                                       head.weight.detach().double().numpy(), 30.0, 0.5)
                         for i in range(B)])
    assert method.loss(e, y, idx, head)[0].item() == pytest.approx(head_only, rel=1e-10)

    class Fixed(nn.Module):  # a "backbone" whose features are a known matrix
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.flatten(1)[:, :D].double() * 3 + 1

    images = np.random.default_rng(1).integers(0, 255, (N, 4, 4, 1)).astype(np.uint8)
    from gallery.preprocess import PreprocessSpec
    from trainer.data.base import ArrayDataset

    spec = PreprocessSpec(height=4, width=4, color_order="GRAY", mean=(0.0,), std=(1.0,))
    method._dataset = ArrayDataset(images, labels, [str(c) for c in range(C)], spec, "x", "x")
    method.start_epoch(0, 7, Fixed())  # not a rebuild epoch
    assert not bool(method.active)
    method.start_epoch(2, 7, Fixed())
    assert bool(method.active)
    feats = images.reshape(N, -1)[:, :D].astype(np.float64) * 3 + 1
    expected = np.array([naive_unibct_prototype(feats[labels == c], old[labels == c], 0.9, 0.05)
                         for c in range(C)])
    np.testing.assert_allclose(method.prototypes.double().numpy(), expected, rtol=1e-4, atol=1e-4)
    value, logs = method.loss(e, y, idx, head)
    en = e.detach().numpy()
    p = method.prototypes.double().numpy()  # raw (unnormalised) rebuilt prototypes
    infl = np.mean([naive_ce([float(np.dot(unit(en[i]), p[c])) for c in range(C)], int(y[i]))
                    for i in range(B)])
    assert value.item() == pytest.approx(head_only + infl, rel=1e-6)


def naive_nccl_term(query: list[np.ndarray], keys: list[np.ndarray], key_labels: list[int],
                    old_q: list[np.ndarray], old_keys: list[np.ndarray], y: list[int]) -> float:
    total = 0.0
    for i in range(len(query)):
        scores = [float(np.dot(query[i], k)) for k in keys]
        top = max(scores)
        log_z = top + math.log(sum(math.exp(s - top) for s in scores))
        num, count = 0.0, 0
        for j, k in enumerate(keys):
            if key_labels[j] == y[i]:
                w = 0.5 * (float(np.dot(old_q[i], old_keys[j])) + 1)
                num += w * (scores[j] - log_z)
                count += 1
        total += -num / count
    return total / len(query)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nccl_two_batches_against_a_naive_queue(dtype):
    q = 32  # smaller than two batches: the second batch wraps the queue
    method, head, e, y, idx, old = setup("nccl", dtype, queue_size=q)
    w = head.weight.detach().double().numpy()
    queue: list[tuple[np.ndarray, np.ndarray, int]] = [(np.zeros(D), np.zeros(C), -1)] * q
    header = 0
    rng = np.random.default_rng(5)
    for step in range(2):
        if step:
            idx = torch.from_numpy(rng.choice(N, B, replace=False))
            y = torch.from_numpy(np.arange(N) % C)[idx]
            e = torch.randn(B, D, dtype=dtype)
        value, logs = method.loss(e, y, idx, head)
        en = e.detach().double().numpy()
        ol = [unit(old[int(i)]) for i in idx]
        yl = [int(v) for v in y]

        def arc_logits(v, c_y):  # the head's logits (margin + scale) as plain numbers
            return [30.0 * (math.cos(math.acos(np.dot(unit(v), unit(w[c]))) + 0.5) if c == c_y
                            else float(np.dot(unit(v), unit(w[c])))) for c in range(C)]

        for i in range(B):  # push first, one sample at a time
            queue[header] = (ol[i], np.array(arc_logits(ol[i], yl[i])), yl[i])
            header = (header + 1) % q
        keys, logit_keys, key_labels = zip(*queue)
        head_loss = np.mean([naive_arcface(en[i], yl[i], w, 30.0, 0.5) for i in range(B)])
        l1 = naive_nccl_term([unit(v) for v in en], list(keys), list(key_labels), ol,
                             list(keys), yl)
        l2 = naive_nccl_term([np.array(arc_logits(v, yl[i])) for i, v in enumerate(en)],
                             list(logit_keys), list(key_labels), ol, list(keys), yl)
        tol = 1e-6 if dtype == torch.float64 else 1e-4  # the queue holds float32 rows
        assert logs["l1"] == pytest.approx(l1, rel=tol)
        assert logs["l2"] == pytest.approx(l2, rel=tol)
        assert value.item() == pytest.approx(head_loss + l1 + 0.01 * l2, rel=tol)
    assert int(method.header) == (2 * B) % q


def test_nccl_gradient_reaches_embeddings_only():
    method, head, e, y, idx, _ = setup("nccl", torch.float32)
    value, _ = method.loss(e, y, idx, head)
    value.backward()
    assert e.grad is not None and float(e.grad.abs().sum()) > 0
    assert not method.feat_queue.requires_grad and not method.logit_queue.requires_grad


@pytest.mark.parametrize("name,params", [
    ("unibct", dict(unibct_lambda=1.0)), ("unibct", dict(unibct_temperature=0)),
    ("nccl", dict(queue_size=0)), ("nccl", dict(nccl_beta=-1)),
])
def test_bad_hyperparameters(name, params):
    with pytest.raises(BadInput):
        METHODS.get(name)(**params)

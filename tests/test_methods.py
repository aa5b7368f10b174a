"""Each compat method's loss against a naive per-sample implementation (float32, float64).

The head is a small stand-in implementing the agreed Head interface (weight,
forward(e, y), logits(e, y, weight=None) with margin and scale on the target column).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gallery.errors import BadInput
from method_helpers import B, C, D, N, TOL, StandInArcFace, naive_arcface, naive_prototypes, setup, unit
from trainer.methods import METHODS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_independent(dtype):
    method = METHODS.get("independent")()
    torch.manual_seed(0)
    head = StandInArcFace(D, C).to(dtype)
    e, y = torch.randn(B, D, dtype=dtype), torch.arange(B) % C
    value, _ = method.loss(e, y, torch.arange(B), head)
    w = head.weight.detach().double().numpy()
    expected = np.mean([naive_arcface(e[i].double().numpy(), int(y[i]), w, 30.0, 0.5) for i in range(B)])
    assert float(value.detach()) == pytest.approx(expected, rel=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.0, 0.2, 1.1])
def test_l2(dtype, tau):
    method, head, e, y, idx, old = setup("l2", dtype, l2_weight=10.0, tau=tau)
    value, logs = method.loss(e, y, idx, head)
    w = head.weight.detach().double().numpy()
    en = e.detach().double().numpy()
    arc = [naive_arcface(en[i], int(y[i]), w, 30.0, 0.5) for i in range(B)]
    hinge = [max(math.dist(unit(old[int(idx[i])]), unit(en[i])) - tau, 0.0) for i in range(B)]
    assert value.item() == pytest.approx(np.mean(arc) + 10.0 * np.mean(hinge), rel=TOL[dtype])
    assert logs["l2"] == pytest.approx(np.mean(hinge), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bct_scale", [None, 8.0])
def test_bct(dtype, bct_scale):
    method, head, e, y, idx, old = setup("bct", dtype, bct_scale=bct_scale)
    value, logs = method.loss(e, y, idx, head)
    labels = np.arange(N) % C
    protos = naive_prototypes(old, labels)
    np.testing.assert_allclose(method.prototypes.numpy(), protos, atol=1e-6)
    w = head.weight.detach().double().numpy()
    en = e.detach().double().numpy()
    s = 30.0 if bct_scale is None else bct_scale
    arc = [naive_arcface(en[i], int(y[i]), w, 30.0, 0.5) for i in range(B)]
    # float32 prototypes are what the method holds; use them for the float64 check too
    p = method.prototypes.double().numpy()
    infl = [naive_arcface(en[i], int(y[i]), p, s, 0.5) for i in range(B)]
    assert logs["influence"] == pytest.approx(np.mean(infl), rel=TOL[dtype])
    assert value.item() == pytest.approx(np.mean(arc) + np.mean(infl), rel=TOL[dtype])


def test_bct_scale_matters():
    """Unscaled logits barely constrain: the influence loss stays near log(C)."""
    method, head, e, y, idx, _ = setup("bct", torch.float64, bct_scale=1.0)
    _, logs = method.loss(e, y, idx, head)
    assert abs(logs["influence"] - math.log(C)) < 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixbct_loss(dtype):
    method, head, e, y, idx, old = setup("mixbct", dtype, mix_ratio=0.3, credible_t=0.9)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    value, logs = method.loss(e, y, idx, head)
    torch.set_rng_state(state)  # replay the same row choice for the reference
    chosen = method.choose_rows(idx).numpy()
    assert logs["mixed_rows"] == chosen.sum() == round(0.3 * B)
    w = head.weight.detach().double().numpy()
    en = e.detach().double().numpy()
    rows = [unit(old[int(idx[i])]) if chosen[i] else en[i] for i in range(B)]
    expected = np.mean([naive_arcface(rows[i], int(y[i]), w, 30.0, 0.5) for i in range(B)])
    assert value.item() == pytest.approx(expected, rel=TOL[dtype])


def test_mixbct_rows_are_credible_and_exact_count():
    method, _, _, _, _, _ = setup("mixbct", torch.float32, mix_ratio=0.3, credible_t=0.5)
    credible = method.credible.numpy()
    seen = set()
    for trial in range(30):
        idx = torch.from_numpy(np.random.default_rng(trial).choice(N, B, replace=False))
        chosen = method.choose_rows(idx).numpy()
        n_credible = int(credible[idx.numpy()].sum())
        assert chosen.sum() == min(round(0.3 * B), n_credible)
        assert credible[idx.numpy()[chosen]].all()
        seen.add(tuple(np.flatnonzero(chosen)))
    assert len(seen) > 1  # random, not a fixed pattern
    # fewer credible rows than wanted: all of them are taken
    few = torch.from_numpy(np.r_[np.flatnonzero(credible)[:3], np.flatnonzero(~credible)[:17]])
    chosen = method.choose_rows(few).numpy()
    assert chosen.sum() == 3 and chosen[:3].all()


def test_mixbct_gradients():
    method, head, _, y, idx, _ = setup("mixbct", torch.float32, mix_ratio=0.5, credible_t=1.0)
    backbone = nn.Linear(5, D)
    e = backbone(torch.randn(B, 5))
    e.retain_grad()
    state = torch.get_rng_state()
    value, _ = method.loss(e, y, idx, head)
    torch.set_rng_state(state)
    chosen = method.choose_rows(idx)
    value.backward()
    grad_rows = e.grad.abs().sum(dim=1)
    # replaced rows get exactly zero gradient, the others a real one
    assert int(chosen.sum()) == B // 2
    assert torch.all(grad_rows[chosen] == 0) and torch.all(grad_rows[~chosen] > 0)
    # all rows replaced: the backbone gets nothing, the class weights still learn
    method2, head2, _, y2, idx2, _ = setup("mixbct", torch.float32, mix_ratio=1.0, credible_t=1.0)
    backbone.zero_grad()
    value2, logs2 = method2.loss(backbone(torch.randn(B, 5)), y2, idx2, head2)
    value2.backward()
    assert logs2["mixed_rows"] == B
    assert backbone.weight.grad is None or float(backbone.weight.grad.abs().sum()) == 0.0
    assert float(head2.weight.grad.abs().sum()) > 0


def test_dim_mismatch_is_bad_input():
    method = METHODS.get("mixbct")()
    with pytest.raises(BadInput, match="dim"):
        method.set_old_features(np.ones((4, 16)), np.arange(4), {"sha256": "a"}, 8)


@pytest.mark.parametrize("name,params", [
    ("l2", dict(l2_weight=-1)), ("l2", dict(tau=-0.1)), ("mixbct", dict(mix_ratio=1.5)),
    ("mixbct", dict(credible_t=0.0)), ("bct", dict(bct_scale=0)),
])
def test_bad_hyperparameters(name, params):
    with pytest.raises(BadInput):
        METHODS.get(name)(**params)


def test_describe_carries_compatible_with():
    for name in ("l2", "bct", "mixbct"):
        method, *_ = setup(name, torch.float32)
        info = method.describe()
        assert info["method"] == name and info["compatible_with"] == "old-id"
    assert METHODS.get("mixbct")().describe()["mix_ratio"] == 0.3


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_a_tiny_net(name):
    """Registry-wide smoke: a few SGD steps, finite loss that goes down."""
    method, head, _, _, _, _ = setup(name, torch.float32) if name != "independent" else (
        METHODS.get(name)(), StandInArcFace(D, C), *(None,) * 4)
    torch.manual_seed(1)
    x = torch.randn(N, 5) + 3 * torch.eye(C, 5)[torch.arange(N) % C]
    y = torch.arange(N) % C
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, D))
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        value, logs = method.loss(net(x), y, torch.arange(N), head)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def naive_real_arcface(e: np.ndarray, y: int, w: np.ndarray, s: float, m: float) -> float:
    """ArcFace with insightface's fallback past theta = pi - m (as trainer.heads.arcface)."""
    u = unit(e)
    logits = []
    for c in range(len(w)):
        cos = float(np.dot(u, unit(w[c])))
        if c == y:
            cos = math.cos(math.acos(cos) + m) if cos > math.cos(math.pi - m) else cos - math.sin(m) * m
        logits.append(s * cos)
    top = max(logits)
    return -(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits)))


@pytest.mark.parametrize("name", ["l2", "bct", "mixbct"])
def test_with_the_real_arcface_head(name):
    from trainer.heads import build_head

    method, _, e, y, idx, old = setup(name, torch.float32)
    head = build_head("arcface", D, C, s=64.0, m=0.5)
    torch.nn.init.normal_(head.weight)
    state = torch.get_rng_state()
    value, _ = method.loss(e, y, idx, head)
    torch.set_rng_state(state)
    w = head.weight.detach().double().numpy()
    en = e.detach().double().numpy()
    rows = en
    if name == "mixbct":
        chosen = method.choose_rows(idx).numpy()
        rows = [unit(old[int(idx[i])]) if chosen[i] else en[i] for i in range(B)]
    expected = np.mean([naive_real_arcface(rows[i], int(y[i]), w, 64.0, 0.5) for i in range(B)])
    if name == "l2":
        expected += 10 * np.mean([math.dist(unit(old[int(idx[i])]), unit(en[i])) for i in range(B)])
    if name == "bct":
        p = method.prototypes.double().numpy()
        expected += np.mean([naive_real_arcface(en[i], int(y[i]), p, 64.0, 0.5) for i in range(B)])
    assert value.item() == pytest.approx(expected, rel=1e-4)

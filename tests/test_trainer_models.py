"""Every registered backbone and head, against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gallery.errors import BadInput
from trainer.backbones import BACKBONES, arch_config, build_backbone, load_all as load_backbones
from trainer.heads import HEADS, build_head, load_all as load_heads
from trainer.schedule import lr_at

load_backbones()
load_heads()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# parameter counts of insightface's arcface_torch iresnets (112x112 input, 512-d)
INSIGHTFACE_PARAMS = {"iresnet18": 24.0e6, "iresnet34": 34.1e6, "iresnet50": 43.6e6,
                      "iresnet100": 65.2e6}


def test_registries_hold_the_issue_names():
    assert set(BACKBONES.names()) == {"small", "small-wide", "iresnet18", "iresnet34", "iresnet50", "iresnet100"}
    assert set(HEADS.names()) == {"arcface", "cosface", "softmax"}
    with pytest.raises(BadInput, match="valid: iresnet100, iresnet18"):
        build_backbone(arch_config("resnet9", 8, 32))
    with pytest.raises(BadInput, match="valid: arcface, cosface, softmax"):
        build_head("sphereface", 8, 3)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_shapes_gradients_and_rebuild(name):
    torch.manual_seed(0)
    size = 32 if name == "small" else 16  # iresnets take any size; 16 keeps CPU time low
    arch = arch_config(name, 16, size)
    net = build_backbone(arch)
    x = torch.randn(3, 3, size, size)
    out = net(x)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.square().sum().backward()
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    # the arch config + state dict is all a .pt needs to rebuild the same function
    net.eval()
    twin = build_backbone(arch)
    twin.load_state_dict(net.state_dict())
    twin.eval()
    torch.testing.assert_close(twin(x), net(x))


@pytest.mark.parametrize("name", sorted(INSIGHTFACE_PARAMS))
def test_iresnet_parameter_counts_match_insightface(name):
    with torch.device("meta"):  # count without allocating 65M floats
        full = build_backbone(arch_config(name, 512, 112))
    count = sum(p.numel() for p in full.parameters())
    assert abs(count - INSIGHTFACE_PARAMS[name]) / INSIGHTFACE_PARAMS[name] < 2e-3


def _naive_logits(name, head, e, y, weight):
    """Per-row, per-class loop with math.* — no shared code with the heads."""
    e, w = e.double().numpy(), weight.double().numpy()
    out = np.zeros((len(e), len(w)))
    for i in range(len(e)):
        for j in range(len(w)):
            if name == "softmax":
                out[i, j] = e[i] @ w[j] + (head.bias[j].item() if weight is head.weight else 0)
                continue
            cos = e[i] @ w[j] / (np.linalg.norm(e[i]) * np.linalg.norm(w[j]))
            if j == y[i] and name == "arcface":
                theta = math.acos(max(-1.0, min(1.0, cos)))
                cos = (math.cos(theta + head.m) if theta + head.m <= math.pi
                       else cos - head.m * math.sin(head.m))
            elif j == y[i] and name == "cosface":
                cos -= head.m
            out[i, j] = head.s * cos
    return out


@pytest.mark.parametrize("name", HEADS.names())
def test_head_logits_and_loss_match_naive_reference(name):
    torch.manual_seed(1)
    head = build_head(name, 8, 5)
    with torch.no_grad():
        head.weight.normal_()
    e = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    # include a row nearly opposite its class, where ArcFace's fallback branch applies
    with torch.no_grad():
        e[5] = -head.weight[0] + 0.01 * torch.randn(8)
    logits = head.logits(e, y)
    np.testing.assert_allclose(logits.detach().double().numpy(),
                               _naive_logits(name, head, e, y, head.weight.detach()),
                               rtol=1e-4, atol=1e-3)
    ref = _naive_logits(name, head, e, y, head.weight.detach())
    ref_loss = np.mean([np.log(np.exp(r - r.max()).sum()) + r.max() - r[t]
                        for r, t in zip(ref, y.numpy())])
    loss = head(e, y)
    assert abs(float(loss.detach()) - ref_loss) < 1e-3 * max(1.0, ref_loss)
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    # a replacement class matrix (BCT prototypes) is used instead of the head's own
    other = torch.randn(5, 8)
    np.testing.assert_allclose(head.logits(e, y, weight=other).detach().double().numpy(),
                               _naive_logits(name, head, e, y, other), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", HEADS.names())
def test_head_parameters_are_validated(name):
    with pytest.raises(BadInput, match="has no parameter"):
        build_head(name, 8, 3, gamma=2.0)
    head = build_head(name, 8, 3)
    assert head.weight.shape == (3, 8)
    assert head.describe()["name"] == name


def test_margin_head_params_reach_the_logits():
    e, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    plain = build_head("cosface", 8, 3, s=10.0, m=0.0)
    margin = build_head("cosface", 8, 3, s=10.0, m=0.3)
    margin.load_state_dict(plain.state_dict())
    diff = (plain.logits(e, y) - margin.logits(e, y)).detach()
    expected = torch.zeros(4, 3)
    expected[torch.arange(4), y] = 3.0
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=0)


def test_poly_schedule_with_warmup():
    total, warm, base = 100, 10, 0.1
    lrs = [lr_at(s, total, base, warm, 2.0) for s in range(total)]
    np.testing.assert_allclose(lrs[:warm], base * np.arange(1, warm + 1) / warm)
    for s in range(warm, total):
        assert lrs[s] == pytest.approx(base * (1 - (s - warm) / (total - warm)) ** 2)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))
    assert lr_at(total, total, base, warm) == 0.0


@pytest.mark.parametrize("color_order", ["RGB", "GRAY"])
def test_torch_encoder_uint8_path_equals_host_preprocessing(tmp_path, color_order):
    """embed_images hands a torch encoder raw uint8 pixels (normalised on its device);
    the embeddings must be those of gallery.preprocess.to_tensor + embed, bit for bit."""
    from gallery.encoder import embed_images
    from gallery.fingerprint import strings_sha256
    from gallery.preprocess import PreprocessSpec, to_tensor
    from trainer.checkpoint import atomic_save, model_payload
    from trainer.torch_encoder import load_pt_encoder

    channels = 1 if color_order == "GRAY" else 3
    spec = PreprocessSpec(height=32, width=32, color_order=color_order,
                          mean=(120.0,) * channels, std=(60.0,) * channels)
    arch = arch_config("small", 16, 32, channels)
    torch.manual_seed(0)
    net = build_backbone(arch).eval()
    atomic_save(model_payload(net, arch, spec, ["a"], strings_sha256(["a"]), {"name": "independent"},
                              {"name": "arcface"}, torch.zeros(1, channels, 32, 32), {}), tmp_path / "m.pt")
    encoder = load_pt_encoder(tmp_path / "m.pt")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, channels), np.uint8)
    np.testing.assert_array_equal(embed_images(encoder, images),
                                  encoder.embed(to_tensor(images, spec)))

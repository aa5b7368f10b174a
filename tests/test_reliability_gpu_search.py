"""gallery.gpu_search on torch's CPU kernels: exact against numpy brute force.

The GPU runs the same code with CUDA tensors (bench/gpu_search.py); these tests pin
the algorithm: blocks, ragged tails, query batches, the two-level top-k, the float16
candidate + float32 re-score path, padding when k > N, and the store integration.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.preprocess import l2_normalize

torch = pytest.importorskip("torch")
from gallery.gpu_search import TorchFlatIndex, search_store, two_level_topk  # noqa: E402
from gallery.search import search  # noqa: E402


def _clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(n // 8 + 1, dim)))
    x = l2_normalize(centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, dim)) / np.sqrt(dim))
    q = l2_normalize(centres[rng.integers(0, len(centres), 37)] + 0.7 * rng.normal(size=(37, dim)) / np.sqrt(dim))
    return x, q


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q.astype(np.float64) @ x.astype(np.float64).T  # independent reference, float64
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


@pytest.mark.parametrize("k", [1, 10, 50])
def test_two_level_topk_equals_topk(k):
    g = torch.Generator().manual_seed(k)
    s = torch.randn(13, 64 * 64, generator=g)
    values, cols = two_level_topk(s, k)  # c = 4096 >= 4 * 64 * k for k <= 16: the grouped path
    ref_v, ref_c = torch.topk(s, k, dim=1)
    assert torch.equal(values, ref_v) and torch.equal(cols, ref_c)


def test_two_level_topk_puts_all_winners_in_one_group():
    """The case the proof covers: every top-k score sits in the same group."""
    s = torch.zeros(2, 64 * 64)
    s[:, 128:138] = torch.arange(10, 0, -1).float()
    values, cols = two_level_topk(s, 10)
    assert cols[0].tolist() == list(range(128, 138)) and values[0, 0] == 10


def test_float32_exact_over_blocks_and_batches():
    x, q = _clustered(3000, 24, seed=1)
    rows = np.random.default_rng(2).permutation(10_000)[:3000]  # ids are arbitrary store rows
    index = TorchFlatIndex(24, device="cpu", dtype="float32", block_rows=256 + 13, query_batch=10)
    for lo in range(0, 3000, 700):  # added in chunks, ragged last block
        index.add(x[lo : lo + 700], rows[lo : lo + 700])
    scores, got = index.search(q, 10)
    ref_s, ref_i = _brute(x, q, 10)
    np.testing.assert_array_equal(got, rows[ref_i])
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_float16_candidates_rescored_in_float32():
    x, q = _clustered(9000, 32, seed=3)
    # First block 8192 rows: the grouped top-k path (>= 4 x 64 x 26 candidates); tail 808: direct.
    index = TorchFlatIndex(32, device="cpu", dtype="float16", block_rows=8192)
    index.add(x)
    scores, got = index.search(q, 10)
    x16 = x.astype(np.float16).astype(np.float32)  # what the index holds
    ref_s, ref_i = _brute(x16, q, 10)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_k_larger_than_gallery_pads_and_bad_shapes_raise():
    x, q = _clustered(20, 8, seed=4)
    index = TorchFlatIndex(8, device="cpu", dtype="float32")
    index.add(x)
    scores, rows = index.search(q[:3], 25)
    assert (rows[:, 20:] == -1).all() and np.isneginf(scores[:, 20:]).all()
    assert sorted(rows[0, :20].tolist()) == list(range(20))
    with pytest.raises(BadInput, match="dimension is 8"):
        index.search(np.ones((2, 9), np.float32), 3)
    with pytest.raises(BadInput, match="k must be"):
        index.search(q, 0)


def test_search_store_matches_faiss_flat(tmp_path):
    from gallery.store import ModelInfo, Store

    x, q = _clustered(600, 16, seed=5)
    with Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=16, model_id="m")) as st:
        st.enroll(x, [f"i{i}" for i in range(600)])
        st.remove(["i3", "i40"])
        ours = search_store(st, q, k=5, device="cpu", dtype="float32")
        ref = search(st, q, k=5, kind="flat")
    np.testing.assert_array_equal(ours.rows, ref.rows)
    assert ours.ids.tolist() == ref.ids.tolist() and "i3" not in ours.ids
    np.testing.assert_allclose(ours.scores, ref.scores, atol=1e-5)


def test_import_gallery_gpu_search_does_not_import_torch():
    code = "import sys, gallery.gpu_search; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fused_group_maxima_selection_is_exact(tmp_path):
    """The Triton path (gallery.gpu_kernels), run by Triton's CPU interpreter where
    Triton is installed (TRITON_INTERPRET must be set before triton is imported, hence
    a child process): same answer as brute force over the float16 rows, with a partial
    last group and rows that are not in store order."""
    pytest.importorskip("triton")
    x, q = _clustered(1000, 32, seed=6)  # 1000 = 7 full groups of 128 + 104
    rows = np.random.default_rng(7).permutation(5000)[:1000]
    np.savez(tmp_path / "in.npz", x=x, q=q, rows=rows)
    code = f"""
import numpy as np, torch
from gallery import gpu_kernels
from gallery.gpu_search import TorchFlatIndex
d = np.load({str(tmp_path / "in.npz")!r})
maxima = gpu_kernels.group_maxima(torch.from_numpy(d["q"]).half(), torch.from_numpy(d["x"]).half())
index = TorchFlatIndex(32, device="cpu", dtype="float16", select="fused", rerank=4)
index.add(d["x"], d["rows"])
scores, got = index.search(d["q"], 10)
np.savez({str(tmp_path / "out.npz")!r}, maxima=maxima.numpy(), scores=scores, got=got)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    out = np.load(tmp_path / "out.npz")
    full = q.astype(np.float64) @ x.astype(np.float16).astype(np.float64).T
    group = 128
    ref = np.stack([full[:, lo : lo + group].max(1) for lo in range(0, 1000, group)], 1)
    np.testing.assert_allclose(out["maxima"], ref, atol=2e-3)
    ref_s, ref_i = _brute(x.astype(np.float16).astype(np.float32), q, 10)
    np.testing.assert_array_equal(out["got"], rows[ref_i])
    np.testing.assert_allclose(out["scores"], ref_s, atol=1e-5)


def test_fused_select_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BadInput, match="select='fused' needs"):
        TorchFlatIndex(8, device="cpu", dtype="float16", select="fused")
    assert TorchFlatIndex(8, device="cpu", dtype="float16").fused is False  # auto: torch ops
    with pytest.raises(BadInput, match="select must be one of auto, fused, torch"):
        TorchFlatIndex(8, device="cpu", select="faiss")

"""A fused GPU kernel for exact search: scores and their per-group maxima in one pass.

Why: exact search over N rows first needs, per query, the few groups of GROUP
consecutive rows whose best score is highest (gallery.gpu_search explains why the
answer lies inside them). Written with torch, the (queries x N) score matrix goes to
GPU memory and is read back to take those maxima: at 10M x 512 that traffic and the
selection kernels cost three times the matrix product itself (H200 run in
BENCHMARKS.md). This Triton kernel keeps each (BLOCK_M x GROUP) tile of scores in
registers and writes only its row maxima, so the pass costs about one matrix product.

Triton (shipped with CUDA builds of torch) is imported lazily: `available()` says
whether the kernel can run; gallery.gpu_search falls back to torch ops otherwise.
`TRITON_INTERPRET=1` runs the kernel on the CPU (tests).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

GROUP = 128  # rows per group = the kernel's tile width


def available(device: Any) -> bool:
    """True when the fused kernel can run on `device` (a torch.device)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401  optional dependency (comes with CUDA builds of torch)
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def _kernel() -> Any:
    # triton and torch are optional dependencies (GPU hosts); `import gallery` works without them.
    import triton
    import triton.language as tl

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bm, bk, w, s in ((128, 64, 8, 3), (128, 64, 4, 4), (256, 64, 8, 3), (64, 64, 4, 4))]
    if os.environ.get("TRITON_INTERPRET") == "1":
        configs = configs[:1]

    @triton.autotune(configs=configs, key=["K"])
    @triton.jit
    def group_max_kernel(q_ptr, x_ptr, out_ptr, M, N, K, stride_qm, stride_xn, stride_om,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr):
        # one flat grid (its y axis would cap groups at 65,535); query tiles vary fastest,
        # so programs running together share one gallery tile, read once into L2
        num_m = tl.cdiv(M, BLOCK_M)
        pid = tl.program_id(0)
        pid_m = pid % num_m
        pid_n = pid // num_m
        # 64-bit offsets: 10M rows x 512 columns is past 2**31 elements
        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = (pid_n * GROUP_N + tl.arange(0, GROUP_N)).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, GROUP_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            a = tl.load(q_ptr + offs_m[:, None] * stride_qm + kk[None, :],
                        mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = tl.load(x_ptr + offs_n[None, :] * stride_xn + kk[:, None],
                        mask=(offs_n[None, :] < N) & (kk[:, None] < K), other=0.0)
            acc = tl.dot(a, b, acc=acc)
        acc = tl.where(offs_n[None, :] < N, acc, float("-inf"))
        best = tl.max(acc, axis=1)
        tl.store(out_ptr + offs_m * stride_om + pid_n, best, mask=offs_m < M)

    return group_max_kernel


def group_maxima(q: Any, x: Any, out: Any | None = None) -> Any:
    """(M, K) queries x (N, K) rows, both float16 and row-contiguous -> (M, ceil(N/GROUP))
    float32: the best score of each query in each group of GROUP consecutive rows."""
    # torch and triton are optional dependencies (GPU hosts); `import gallery` works without them.
    import torch
    import triton

    if q.dtype != x.dtype or q.shape[1] != x.shape[1]:
        raise ValueError(f"queries {tuple(q.shape)} {q.dtype} vs rows {tuple(x.shape)} {x.dtype}")
    q, x = q.contiguous(), x.contiguous()
    m, k = q.shape
    n = x.shape[0]
    groups = -(-n // GROUP)
    if out is None:
        out = torch.empty((m, groups), dtype=torch.float32, device=q.device)
    kernel = _kernel()
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * groups,)  # noqa: E731
    kernel[grid](q, x, out, m, n, k, q.stride(0), x.stride(0), out.stride(0), GROUP_N=GROUP)
    return out

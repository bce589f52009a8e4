"""Time the attention kernels available for CogVideoX-2B's attention shape on this GPU.

One window at 480x720 is 226 text + 13·30·45 = 17,776 tokens, 30 heads of dimension 64. FLOPs of one attention
call: 4·B·H·N²·D (QKᵀ and A·V). Prints TFLOP/s per kernel and the relative error of each against an fp32
reference on a slice of the heads, so a faster but approximate kernel (SageAttention's INT8 QKᵀ) is judged on both.

    python scripts/attention_probe.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, repeats=10):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    b, h, n, d = 2, 30, 17776, 64
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.float16) for _ in range(3))
    flops = 4 * b * h * n * n * d
    ref = F.scaled_dot_product_attention(q[:, :2].float(), k[:, :2].float(), v[:, :2].float())
    kernels = {}
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        def run(name=name):
            with sdpa_kernel([getattr(SDPBackend, name)]):
                return F.scaled_dot_product_attention(q, k, v)
        kernels[name.lower()] = run
    try:
        from sageattention import sageattn

        kernels["sage"] = lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    except Exception as exc:  # not installed, or no Triton
        print(f"sageattention unavailable: {exc}")
    for name, fn in kernels.items():
        try:
            t = bench(fn)
            out = fn()[:, :2].float()
            err = ((out - ref).norm() / ref.norm()).item()
            print(f"{name:<22} {t * 1e3:8.1f} ms  {flops / t / 1e12:6.0f} TFLOP/s  rel.err {err:.1e}")
        except Exception as exc:
            print(f"{name:<22} failed: {str(exc).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()

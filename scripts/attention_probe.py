"""Time the attention kernels available for a backbone's attention shape on this GPU.

Shapes (`--shape`, one window, both CFG branches as the batch):
- cogvideox-2b (default): 480x720 is 226 text + 13·30·45 = 17,776 joint tokens, 30 heads of dimension 64;
- wan-1.3b: 480x832 is 21·30·52 = 32,760 video tokens in self-attention, 12 heads of dimension 128 (the
  cross-attention to 512 text tokens is timed as a second line);
- wan-14b: 720x1280 is 21·45·80 = 75,600 video tokens, 40 heads of dimension 128 (and its cross-attention).
FLOPs of one attention call: 4·B·H·N_q·N_kv·D (QKᵀ and A·V). Prints TFLOP/s per kernel and the relative error of
each against an fp32 reference on a slice of the heads, so a faster but approximate kernel (SageAttention's INT8
QKᵀ) is judged on both. FlashAttention-3 (`flash_attn_interface`, flash-attention's Hopper build) is timed when it
is installed (`fa3`).

    python scripts/attention_probe.py
    python scripts/attention_probe.py --shape wan-1.3b
"""

from __future__ import annotations

import argparse
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


#: shape → list of (label, batch, heads, query tokens, key/value tokens, head dim)
SHAPES = {
    "cogvideox-2b": [("joint", 2, 30, 17776, 17776, 64)],
    "wan-1.3b": [("self", 2, 12, 32760, 32760, 128), ("cross", 2, 12, 32760, 512, 128)],
    "wan-14b": [("self", 2, 40, 75600, 75600, 128), ("cross", 2, 40, 75600, 512, 128)],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cogvideox-2b")
    args = ap.parse_args()
    torch.manual_seed(0)
    for label, b, h, nq, nk, d in SHAPES[args.shape]:
        print(f"{args.shape} {label}: batch {b}, {h} heads, {nq} x {nk} tokens, head dim {d}")
        probe(b, h, nq, nk, d)


def probe(b: int, h: int, nq: int, nk: int, d: int) -> None:
    q = torch.randn(b, h, nq, d, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(b, h, nk, d, device="cuda", dtype=torch.float16) for _ in range(2))
    flops = 4 * b * h * nq * nk * d
    ref = F.scaled_dot_product_attention(q[:1, :2].float(), k[:1, :2].float(), v[:1, :2].float())  # fp32, one sample, 2 heads
    kernels = {}
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        def run(name=name):
            with sdpa_kernel([getattr(SDPBackend, name)]):
                return F.scaled_dot_product_attention(q, k, v)
        kernels[name.lower()] = run
    try:
        try:  # FlashAttention-3 takes [B, N, H, D]: the fa3-fwd package (pip), else flash-attention's hopper build
            from fa3_fwd_interface import flash_attn_func
        except ImportError:
            from flash_attn_interface import flash_attn_func

        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))

        def fa3():
            out = flash_attn_func(qt, kt, vt)
            out = out[0] if isinstance(out, tuple) else out
            return out.transpose(1, 2)

        kernels["fa3"] = fa3
    except Exception as exc:  # not installed (needs flash-attention's hopper build)
        print(f"fa3 (fa3_fwd_interface / flash_attn_interface) unavailable: {exc}")
    try:
        from sageattention import sageattn

        kernels["sage"] = lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    except Exception as exc:  # not installed, or no Triton
        print(f"sageattention unavailable: {exc}")
    for name, fn in kernels.items():
        try:
            t = bench(fn)
            out = fn()[:1, :2].float()
            err = ((out - ref).norm() / ref.norm()).item()
            print(f"{name:<22} {t * 1e3:8.1f} ms  {flops / t / 1e12:6.0f} TFLOP/s  rel.err {err:.1e}")
        except Exception as exc:
            print(f"{name:<22} failed: {str(exc).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()

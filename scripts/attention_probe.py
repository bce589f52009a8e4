"""Time the attention kernels available for a backbone's attention shape on this GPU.

Shapes (`--shape`, one or more; one window, both CFG branches as the batch):
- cogvideox-2b (default): 480x720 is 226 text + 13·30·45 = 17,776 joint tokens, 30 heads of dimension 64 (fp16);
- wan-1.3b: 480x832 is 21·30·52 = 32,760 video tokens in self-attention, 12 heads of dimension 128 (the
  cross-attention to 512 text tokens is timed as a second line);
- wan-14b: 720x1280 is 21·45·80 = 75,600 video tokens, 40 heads of dimension 128 (and its cross-attention);
- wan2.2-a14b: each expert of Wan 2.2 T2V-A14B at its 720p default, the wan-14b shape;
- wan2.2-ti2v-5b: 1280x704 through the spatial-16 VAE and the 2x2 patch is 31·22·40 = 27,280 video tokens, 24 heads
  of dimension 128 (and its cross-attention to 512 text tokens);
- hunyuan-1.5: 480x848 is 31·30·53 = 49,290 video tokens joined by 1,985 text rows (729 vision + 256 ByT5 + 1,000
  Qwen), 16 heads of dimension 128, under the model's mask (diffusers' HunyuanVideo15AttnProcessor2_0: a [B, 1, S,
  S] boolean mask, valid query AND valid key, the valid rows a prefix: the video, then `--valid-text` text rows;
  128 by default, a long prompt; t2v: no vision rows, no quoted text). Timed with the mask (what the model runs),
  without it (what a mask-free kernel would cost on the whole sequence) and as FlashAttention-3 on the valid
  prefix only (what a padding-free call computes: exact for the valid rows; padding rows are left out).
The Wan and Hunyuan shapes run in bf16 (the models' dtype; the fa3-fwd kernel has bf16 and e4m3 kernels only).

FLOPs of one attention call: 4·B·H·N_q·N_kv·D (QKᵀ and A·V) of the whole shape, masked positions included, for every
kernel of a shape (so TFLOP/s compare as times do). Prints TFLOP/s per kernel and the relative error of each against
an fp32 reference (math kernel) on the first 256 queries of two heads, so a faster but approximate kernel
(SageAttention's INT8 QKᵀ) is judged on both. `auto` is longgen's `backbone.attention=auto` order for the SDPA
families (cuDNN, flash, efficient, math as priorities); the kernel that actually ran is read from the profiler.
FlashAttention-3 (`fa3`: the fa3-fwd package, else flash-attention's Hopper build) is timed when installed.

    python scripts/attention_probe.py
    python scripts/attention_probe.py --shape hunyuan-1.5 wan2.2-ti2v-5b wan2.2-a14b --json attention.json
    python scripts/attention_probe.py --shape hunyuan-1.5 --tiny      # CPU dry run: tokens / 64, 2 heads
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, repeats=10, warmups=3):
    """Median seconds of `fn` (CUDA events on a GPU, wall time on the CPU) after `warmups` calls."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        if not torch.cuda.is_available():
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


#: shape → list of (label, batch, heads, query tokens, key/value tokens, head dim); query = key tokens: self/joint
SHAPES = {
    "cogvideox-2b": [("joint", 2, 30, 17776, 17776, 64)],
    "wan-1.3b": [("self", 2, 12, 32760, 32760, 128), ("cross", 2, 12, 32760, 512, 128)],
    "wan-14b": [("self", 2, 40, 75600, 75600, 128), ("cross", 2, 40, 75600, 512, 128)],
    "wan2.2-a14b": [("self", 2, 40, 75600, 75600, 128), ("cross", 2, 40, 75600, 512, 128)],
    "wan2.2-ti2v-5b": [("self", 2, 24, 27280, 27280, 128), ("cross", 2, 24, 27280, 512, 128)],
    "hunyuan-1.5": [("joint", 2, 16, 49290 + 1985, 49290 + 1985, 128)],
}
#: shapes whose joint attention carries the model's text-padding mask: video tokens before the text rows
MASKED_VIDEO_TOKENS = {"hunyuan-1.5": 49290}
FP16_SHAPES = ("cogvideox-2b",)
#: longgen's `backbone.attention=auto` SDPA order (longgen/backbones/attention.py SDPA_KERNELS["auto"])
AUTO_ORDER = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), nargs="+", default=["cogvideox-2b"])
    ap.add_argument("--valid-text", type=int, default=128, help="hunyuan-1.5: valid text rows after the video")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per kernel (fewer when a call takes > 0.2 s)")
    ap.add_argument("--tiny", action="store_true", help="dry run: tokens / 64, 2 heads, on the CPU without a GPU")
    ap.add_argument("--json", default=None, help="also write every line here as JSON (rewritten after each kernel)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows: list[dict] = []
    for shape in args.shape:
        dtype = torch.float16 if shape in FP16_SHAPES else torch.bfloat16
        video = MASKED_VIDEO_TOKENS.get(shape)
        for label, b, h, nq, nk, d in SHAPES[shape]:
            valid = None if video is None else video + args.valid_text
            if args.tiny:
                h, nq, nk = 2, max(8, nq // 64), max(8, nk // 64)
                valid = None if valid is None else max(8, valid // 64)
            print(f"{shape} {label}: batch {b}, {h} heads, {nq} x {nk} tokens, head dim {d}, {dtype}"
                  + ("" if valid is None else f", mask: the first {valid} rows valid"), flush=True)
            for row in probe(b, h, nq, nk, d, dtype, valid, args.repeats):
                rows.append({"shape": shape, "label": label, "batch": b, "heads": h, "q_tokens": nq, "kv_tokens": nk,
                             "head_dim": d, "dtype": str(dtype).removeprefix("torch."), "valid_rows": valid, **row})
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"device": device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def fa3_function():
    """FlashAttention-3's flash_attn_func ([B, N, H, D] in and out): the fa3-fwd package, else flash-attention's
    Hopper build; None (and a line saying why) when neither imports."""
    try:
        try:
            from fa3_fwd_interface import flash_attn_func
        except ImportError:
            from flash_attn_interface import flash_attn_func
        return flash_attn_func
    except Exception as exc:  # not installed, or its CUDA library does not load here
        print(f"fa3 (fa3_fwd_interface / flash_attn_interface) unavailable: {str(exc).splitlines()[0][:120]}")
        return None


def probe(b: int, h: int, nq: int, nk: int, d: int, dtype: torch.dtype, valid: int | None, repeats: int
          ) -> list[dict]:
    """Time every kernel on random q [b, h, nq, d], k/v [b, h, nk, d]; with `valid`, also under the model's mask
    (the first `valid` rows valid, as queries and as keys). Returns one dict per kernel (and prints it)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(b, h, nq, d, device=device, dtype=dtype)
    k, v = (torch.randn(b, h, nk, d, device=device, dtype=dtype) for _ in range(2))
    flops = 4 * b * h * nq * nk * d
    mask = None
    if valid is not None:  # the processor's mask: [b, 1, S, S] bool, valid query AND valid key
        keep = torch.arange(nk, device=device) < valid  # [S]
        mask = (keep[:, None] & keep[None, :]).expand(b, 1, nq, nk).contiguous()  # [b, 1, S, S]
    kernels: dict[str, tuple] = {}  # name → (function, mask used)
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        kernels[name.lower()] = (sdpa_call(q, k, v, None, [name]), None)
    kernels["auto"] = (sdpa_call(q, k, v, mask, list(AUTO_ORDER)), mask)
    if mask is not None:
        for name in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            kernels[f"{name.lower()} + mask"] = (sdpa_call(q, k, v, mask, [name]), mask)
    flash = fa3_function() if device == "cuda" else None
    if flash is not None:
        qt, kt, vt = (x.transpose(1, 2).to(torch.bfloat16).contiguous() for x in (q, k, v))  # [b, n, h, d]
        kernels["fa3"] = (fa3_call(flash, qt, kt, vt, nq, None), None)
        if valid is not None:
            kernels["fa3, valid prefix"] = (fa3_call(flash, qt, kt, vt, nq, valid), mask)
    try:
        from sageattention import sageattn

        kernels["sage"] = (lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False), None)
    except Exception as exc:  # not installed, or no Triton: the probe reports the kernels it has
        print(f"sageattention unavailable: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
    rows = []
    for name, (fn, used_mask) in kernels.items():
        row: dict = {"kernel": name}
        try:
            first = time_once(fn)
            row["seconds"] = bench(fn, repeats=repeats if first < 0.2 else 3, warmups=2)
            row["tflops"] = flops / row["seconds"] / 1e12
            row["rel_err"] = relative_error(fn(), q, k, v, used_mask, valid)
            if name == "auto":
                row["ran"] = kernel_that_ran(fn)
            print(f"{name:<22} {row['seconds'] * 1e3:9.1f} ms  {row['tflops']:6.0f} TFLOP/s  rel.err "
                  f"{row['rel_err']:.1e}" + (f"  ran: {row['ran']}" if "ran" in row else ""), flush=True)
        except Exception as exc:  # the kernel does not run for this shape / dtype / mask here
            row["error"] = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            print(f"{name:<22} failed: {row['error']}", flush=True)
        rows.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def sdpa_call(q, k, v, mask, backends: list[str]):
    """torch SDPA restricted to `backends` (in that priority), with the boolean mask if given."""
    def run():
        with sdpa_kernel([getattr(SDPBackend, n) for n in backends], set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return run


def fa3_call(flash, qt, kt, vt, nq: int, valid: int | None):
    """FlashAttention-3 on [b, n, h, d] bf16 → [b, h, n, d]; with `valid`, on the first `valid` rows only (the rows
    after them come back as zeros, which the reference's masked rows are not compared against)."""
    def run():
        if valid is None:
            out = flash(qt, kt, vt)
        else:
            out = flash(qt[:, :valid], kt[:, :valid], vt[:, :valid])
        out = out[0] if isinstance(out, tuple) else out  # [b, n or valid, h, d]
        if valid is not None:
            out = F.pad(out, (0, 0, 0, 0, 0, nq - valid))  # [b, n, h, d]
        return out.transpose(1, 2)

    return run


def time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def relative_error(out: torch.Tensor, q, k, v, mask, valid: int | None, queries: int = 256) -> float:
    """‖out − ref‖ / ‖ref‖ on sample 0, heads 0–1, the first `queries` queries (valid rows), ref in fp32 (math)."""
    sl = (slice(0, 1), slice(0, 2), slice(0, min(queries, q.shape[2] if valid is None else valid)))
    m = None if mask is None else mask[sl[0], :, sl[2]]  # [1, 1, queries, S]
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q[sl].float(), k[:1, :2].float(), v[:1, :2].float(), attn_mask=m)
    got = out[sl].float()
    return ((got - ref).norm() / ref.norm()).item()


def kernel_that_ran(fn) -> str:
    """The name of the longest GPU kernel of one call (the attention kernel SDPA dispatched to)."""
    if not torch.cuda.is_available():
        return "cpu (no GPU kernels)"
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        events = [(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0), e.key)
                  for e in prof.key_averages()]
        return max(events)[1][:100] if events else "no GPU kernel recorded"
    except Exception as exc:  # no CUPTI here: say so rather than fail the probe
        return f"unknown (profiler: {str(exc).splitlines()[0][:80]})"


if __name__ == "__main__":
    sys.exit(main())

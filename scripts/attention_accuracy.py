"""Accuracy and speed of longgen's attention kernels on full-size CogVideoX (random weights), on one GPU.

1. The attention call alone at CogVideoX-2B's shape (2 × 30 heads × 17,776 tokens × 64): time (CUDA events,
   median of 10) and relative L2 error against an fp32 reference on two heads, for cuDNN SDPA (fp16, bf16),
   FlashAttention-3 bf16 (and fed fp16 tensors, cast by longgen), FlashAttention-3 e4m3 with longgen's scaling.
2. A whole window's clean estimate x̂0 (2 windows, CFG 6, t = 979) through the real transformer, for each
   `backbone.attention` (and with the feed-forward's GELU in the GEMM epilogue, `backbone.fused_gelu=true`),
   against the fp16 cuDNN path with the feed-forward as diffusers writes it: relative
   L2 error of x̂0 and seconds per forward (eager, median of 3). (An earlier version also tried torchao FP8 linear
   layers; the numbers are in benchmarks/README.md.)

    python scripts/attention_accuracy.py --json benchmarks/results/attention-accuracy.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from longgen.backbones import attention as kernels
from longgen.build import build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_probe import bench as cuda_time  # noqa: E402  (CUDA-event median after warm-ups)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def op_level() -> dict:
    torch.manual_seed(0)
    b, h, n, d = 2, 30, 17776, 64
    q, k, v = (torch.randn(b, h, n, d, device="cuda") for _ in range(3))
    ref = F.scaled_dot_product_attention(q[:, :2], k[:, :2], v[:, :2])  # fp32 reference on two heads
    flops = 4 * b * h * n * n * d
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name, dtype, fn in (
        ("cudnn-fp16", torch.float16, "sdpa"),
        ("cudnn-bf16", torch.bfloat16, "sdpa"),
        ("fa3-bf16", torch.bfloat16, "fa3"),
        ("fa3-from-fp16", torch.float16, "fa3"),
        ("fa3-fp8", torch.bfloat16, "fa3-fp8"),
        ("fa3-fp8-from-fp16", torch.float16, "fa3-fp8"),
    ):
        qq, kk, vv = (x.to(dtype) for x in (q, k, v))
        attend = kernels.kernel_func(fn)
        ctx = sdpa_kernel([SDPBackend.CUDNN_ATTENTION]) if fn == "sdpa" else torch.autocast("cuda", enabled=False)
        with ctx:
            seconds = cuda_time(lambda: attend(qq, kk, vv))
            err = rel(attend(qq[:, :2], kk[:, :2], vv[:, :2]), ref)
        out[name] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "rel_error": err}
        print(name, out[name], flush=True)
    return out


def window_level(backbone_name: str, only: list[str] | None = None) -> dict:
    results = {}
    base = ["backbone.random_weights=true", "backbone.compile=false"]
    unfused = "backbone.fused_gelu=false"  # the feed-forward as diffusers writes it (GEMM, then GELU)
    configs = [
        ("cudnn-fp16", ["backbone.attention=cudnn", "backbone.dtype=float16", unfused]),
        ("cudnn-bf16", ["backbone.attention=cudnn", "backbone.dtype=bfloat16", unfused]),
        ("fa3-fp16-model", ["backbone.attention=fa3", "backbone.dtype=float16", unfused]),
        ("fa3-fp16-model-fused-gelu", ["backbone.attention=fa3", "backbone.dtype=float16", "backbone.fused_gelu=true"]),
        ("fa3-fp8-fp16-model", ["backbone.attention=fa3-fp8", "backbone.dtype=float16", unfused]),
    ]
    reference = None
    for label, extra in configs:
        if only and label != "cudnn-fp16" and label not in only:
            continue
        with initialize_config_module("longgen.conf", version_base="1.3"):
            cfg = compose("generate", overrides=[f"backbone={backbone_name}", *base, *extra])
        try:
            backbone = build(cfg.backbone, "backbone", backbone_name)
            backbone.load()
        except Exception as exc:  # e.g. torchao missing: record and go on
            results[label] = {"skipped": str(exc).splitlines()[0][:200]}
            print(label, results[label], flush=True)
            continue
        backbone.encode_prompts(["a corgi in a red scarf on a snowy street"])
        x = torch.randn((2, backbone.window, *backbone.latent_shape), generator=torch.Generator().manual_seed(0)).cuda()
        x0 = backbone.predict(x, 979, [0, 0], 6.0).x0
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            backbone.predict(x, 979, [0, 0], 6.0)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if reference is None:
            reference = x0
        results[label] = {"x0_rel_error_vs_cudnn_fp16": rel(x0, reference),
                          "s_per_forward_eager": statistics.median(times) / 4,
                          "attention_used": backbone.describe().get("attention_used")}
        print(label, results[label], flush=True)
        backbone.release()
        del backbone
        torch.cuda.empty_cache()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--json", default="benchmarks/results/attention-accuracy.json")
    ap.add_argument("--only", nargs="*", default=None, help="window-level configs to run (the reference always runs)")
    ap.add_argument("--no-op", action="store_true", help="skip the attention-call measurements")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "op": None if args.no_op else op_level(), "window": window_level(args.backbone, args.only)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()

"""Does the feed-forward's GELU cost less inside the GEMM (cuBLASLt's GELU+bias epilogue) than after it?

CogVideoX's feed-forward opens with Linear(1920 → 5120) + GELU (tanh approximation). Compiled, longgen runs the
GEMM with its bias in cuBLAS and the GELU as a separate Inductor kernel (one more read and write of the
[tokens, 5120] activation: 2.5 % of a forward on an H100, scripts/profile_step.py). `torch._addmm_activation(...,
use_gelu=True)` asks cuBLASLt for the GEMM with bias and GELU (tanh) applied to the fp32 accumulator. This times
both at the shape of one transformer call (micro-batch 4: 4 × 17,776 tokens) and reports their error against an
fp32 reference:

    python scripts/gemm_epilogue_probe.py --out $OUT/gemm-epilogue.json
    python scripts/gemm_epilogue_probe.py --tokens 512 --out /tmp/ge.json        (CPU check)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4 * 17776)
    ap.add_argument("--dim", type=int, default=1920)
    ap.add_argument("--inner", type=int, default=5120)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((args.tokens, args.dim), generator=gen).to(device, dtype)  # [tokens, dim]
    w = (torch.randn((args.inner, args.dim), generator=gen) / args.dim**0.5).to(device, dtype)  # [inner, dim]
    b = (torch.randn((args.inner,), generator=gen) * 0.1).to(device, dtype)  # [inner]

    def separate():
        return F.gelu(F.linear(x, w, b), approximate="tanh")  # [tokens, inner]

    def epilogue():
        return torch._addmm_activation(b, x, w.t(), use_gelu=True)  # [tokens, inner]

    compiled = torch.compile(separate, dynamic=False)
    reference = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
    flops = 2 * args.tokens * args.dim * args.inner
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "shape": [args.tokens, args.dim, args.inner], "variants": {}}
    for name, fn in (("separate_eager", separate), ("separate_compiled", compiled), ("epilogue", epilogue)):
        ms = timed(fn, device, args.repeats)
        out = fn().float()
        err = float((out - reference).norm() / reference.norm())
        result["variants"][name] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err_vs_fp32": err}
        print(name, result["variants"][name], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

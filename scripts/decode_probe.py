"""Where the VAE decode's time can go (issue 13: W1 end to end = sampling + decode).

Builds the backbone as scripts/bench.py does (full-size, random weights), draws random latents of a 4× video and
times the streamed decode (`decode_stream`, all frames to host uint8, no mp4 encode) in several variants, each
once to warm up and then `--repeats` times (median):
- `native`: the VAE's group norms are torch's kernel (`backbone.vae_norm=native`, longgen before 2026-11-22);
- `parallel`: the group norms as split-block reductions (`backbone.vae_norm=parallel`, what longgen runs);
- `_untiled` (suffix): the whole frame decoded at once; without it the VAE's spatial tiling is as configured
  (`backbone.vae_tiling`; diffusers' CogVideoX tiles are half the frame each way, so 3 × 3 overlapping tiles);
- `_channels_last_3d` (suffix): the VAE's weights and activations in NDHWC layout (cuDNN's channels-last conv3d
  kernels, no layout conversion around each convolution);
- `_cudnn_benchmark` (suffix): cuDNN picks its conv algorithms by timing them (per process: not bit-reproducible between
  processes, which longgen's exactness guarantees forbid by default — measured to know what it would buy);
- `_compiled` (suffix): every ResNet block, up/mid block and the output norm of the decoder under torch.compile (Inductor
  fuses the group norms, the spatial modulation, SiLU and the causal padding around cuDNN's convolutions); the
  first (warm-up) decode's time, which includes compiling, is reported too.
Variants run in the order given; the group-norm swap is one-way, so `native`/`channels_last_3d` come before the
parallel ones. For each it prints the seconds, the peak GPU memory and how the frames differ from the first variant's (uint8).
`--profile` adds a torch.profiler table of one decode per variant (GPU kernels grouped by class), `--conv-bench` times
the decoder's 3×3×3 convolutions alone at their real shapes (cuDNN conv3d, and conv3d as three conv2d taps).

    python scripts/decode_probe.py --variants native parallel parallel_untiled --profile parallel_untiled --out $OUT/decode-probe.json
    python scripts/decode_probe.py --backbone tiny --profile parallel --conv-bench --out /tmp/decode.json      (CPU check)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import sync  # noqa: E402

from hydra import compose, initialize_config_module  # noqa: E402

from longgen.backbones.group_norm import parallel_group_norms  # noqa: E402
from longgen.build import build  # noqa: E402
from longgen.windows import latent_length  # noqa: E402


def decode_all(backbone, latents: torch.Tensor) -> tuple[float, np.ndarray]:
    sync(backbone.device)
    t0 = time.perf_counter()
    frames = np.concatenate(list(backbone.decode_stream(latents)))  # [F, H, W, 3]
    sync(backbone.device)
    return time.perf_counter() - t0, frames


def conv_layout(vae, fmt: torch.memory_format) -> None:
    """Put the 5-D conv weights in `fmt` (activations follow the weights' layout through cuDNN)."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=fmt)


def compile_decoder(vae) -> None:
    """Regional compile of the decoder: each mid/up block (their ResNets, upsampler) and the output norm."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    decoder = vae.decoder
    decoder.mid_block.compile(dynamic=False)
    for block in decoder.up_blocks:
        block.compile(dynamic=False)
    decoder.norm_out.compile(dynamic=False)


def conv_bench(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int, int]]) -> list[dict]:
    """Time one causal 3×3×3 convolution (input frames + 2 cached, spatial padding 1) at each (C, T, H, W).

    `conv3d`: cuDNN's 3-D convolution as diffusers calls it; `taps2d`: the same sum written as three 2-D
    convolutions over frames (one per temporal tap, channels-last), layout conversions included; `taps2d_core`:
    the three conv2d calls alone (what a decoder kept in frame-major channels-last layout would pay)."""
    rows = []
    for c, t, h, w in shapes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((1, c, t + 2, h, w), generator=gen).to(device, dtype)  # [1, C, T+2, H, W]
        weight = (torch.randn((c, c, 3, 3, 3), generator=gen) / (27 * c) ** 0.5).to(device, dtype)
        flops = 2 * c * c * 27 * t * h * w

        def conv3d():
            return torch.nn.functional.conv3d(x, weight, padding=(0, 1, 1))  # [1, C, T, H, W]

        frames = x[0].transpose(0, 1).contiguous(memory_format=torch.channels_last)  # [T+2, C, H, W] as NHWC
        taps = [weight[:, :, k].contiguous(memory_format=torch.channels_last) for k in range(3)]  # [C, C, 3, 3]

        def taps2d_core():
            out = torch.nn.functional.conv2d(frames[0:t], taps[0], padding=1)  # [T, C, H, W]
            out += torch.nn.functional.conv2d(frames[1 : t + 1], taps[1], padding=1)
            out += torch.nn.functional.conv2d(frames[2 : t + 2], taps[2], padding=1)
            return out

        def taps2d():
            nonlocal frames
            frames = x[0].transpose(0, 1).contiguous(memory_format=torch.channels_last)
            return taps2d_core().transpose(0, 1).unsqueeze(0).contiguous()  # [1, C, T, H, W]

        reference = conv3d().float()
        row = {"shape": [c, t, h, w], "tflop": flops / 1e12}
        for name, fn in (("conv3d", conv3d), ("taps2d", taps2d), ("taps2d_core", taps2d_core)):
            ms = cuda_ms(fn, device)
            out = fn().float()
            if out.shape != reference.shape:
                out = out.transpose(0, 1).unsqueeze(0)
            err = float((out - reference).norm() / reference.norm())
            row[name] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err_vs_conv3d": err}
        print("conv", row, flush=True)
        rows.append(row)
    return rows


def cuda_ms(fn, device: torch.device, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_decode(backbone, latents: torch.Tensor, title: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    from profile_step import table

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if backbone.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall, _ = decode_all(backbone, latents)
    return table(prof, wall, title)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--length-factor", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", nargs="*", default=["native", "parallel", "parallel_untiled"],
                    choices=[f"{norm}{tiling}{extra}" for norm in ("native", "parallel") for tiling in ("", "_untiled")
                             for extra in ("", "_channels_last_3d", "_cudnn_benchmark", "_compiled")])
    ap.add_argument("--profile", nargs="*", default=[], help="variants to profile (one more decode each)")
    ap.add_argument("--conv-bench", action="store_true")
    ap.add_argument("--override", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    overrides = [f"backbone={args.backbone}", "backbone.vae_norm=native", *args.override]
    if not args.backbone.startswith("tiny"):
        overrides.append("backbone.random_weights=true")
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=overrides)
    backbone = build(cfg.backbone, "backbone", args.backbone)
    backbone.load()
    length = latent_length(backbone.window, int(cfg.backbone.stride), args.length_factor)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, length, *backbone.latent_shape), generator=gen).to(backbone.device)
    vae = backbone.pipe.vae
    result: dict = {"backbone": args.backbone, "latent_frames": length,
                    "device": torch.cuda.get_device_name(backbone.device) if backbone.device.type == "cuda" else "cpu",
                    "variants": {}}
    if args.conv_bench:
        h, w = backbone.latent_shape[1:]
        shapes = [(128, 8, 8 * h, 8 * w), (256, 8, 4 * h, 4 * w), (256, 4, 2 * h, 2 * w), (512, 2, h, w)]
        if backbone.device.type != "cuda":
            shapes = [(8, 4, 4 * h, 4 * w)]
        result["conv_bench"] = conv_bench(backbone.device, vae.dtype, shapes)
    reference = None
    tiled_by_config = vae.use_tiling
    for name in args.variants:
        conv_layout(vae, torch.channels_last_3d if name.endswith("channels_last_3d") else torch.contiguous_format)
        torch.backends.cudnn.benchmark = name.endswith("cudnn_benchmark")
        vae.use_tiling = tiled_by_config and "_untiled" not in name
        if name.startswith("parallel"):
            parallel_group_norms(vae)
        if name.endswith("compiled"):
            compile_decoder(vae)
        if backbone.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(backbone.device)
        first, _ = decode_all(backbone, latents)  # warm-up (cuDNN's benchmark or compilation runs here)
        times, frames = [], None
        for _ in range(args.repeats):
            secs, frames = decode_all(backbone, latents)
            times.append(secs)
        if reference is None:
            reference = frames
        diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
        result["variants"][name] = {"seconds": statistics.median(times), "times": times, "first_s": first,
                                    "frames": int(frames.shape[0]), "max_abs_diff_vs_first_variant": int(diff.max()),
                                    "values_differing": int((diff > 0).sum()), "values": int(diff.size),
                                    "tiled": bool(vae.use_tiling)}
        if backbone.device.type == "cuda":
            result["variants"][name]["peak_gpu_gb"] = torch.cuda.max_memory_allocated(backbone.device) / 2**30
        print(name, result["variants"][name], flush=True)
        if name in args.profile:
            result["variants"][name]["profile"] = profile_decode(backbone, latents, f"one decode, {name}")
            print(result["variants"][name]["profile"], flush=True)
    torch.backends.cudnn.benchmark = False
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Where the VAE decode's time can go (issue 13: W1 end to end = sampling + decode).

Builds the backbone as scripts/bench.py does (full-size, random weights), draws random latents of a 4× video and
times the streamed decode (`decode_stream`, all frames to host uint8, no mp4 encode) in several variants, each
once to warm up and then `--repeats` times (median):
- `default`: what longgen runs;
- `channels_last_3d`: the VAE's weights and activations in NDHWC layout (cuDNN's channels-last conv3d kernels);
- `cudnn_benchmark`: cuDNN picks its conv algorithms by timing them (per process: not bit-reproducible between
  processes, which longgen's exactness guarantees forbid by default — measured to know what it would buy).
For each variant it prints the seconds and whether the frames equal the default's (max |difference| in uint8).

    python scripts/decode_probe.py --out $OUT/decode-probe.json
    python scripts/decode_probe.py --backbone tiny --out /tmp/decode.json      (CPU check)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--length-factor", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--override", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    overrides = [f"backbone={args.backbone}", *args.override]
    if not args.backbone.startswith("tiny"):
        overrides.append("backbone.random_weights=true")
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=overrides)
    backbone = build(cfg.backbone, "backbone", args.backbone)
    backbone.load()
    length = latent_length(backbone.window, backbone.stride, args.length_factor)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, length, *backbone.latent_shape), generator=gen).to(backbone.device)
    vae = backbone.pipe.vae
    result: dict = {"backbone": args.backbone, "latent_frames": length,
                    "device": torch.cuda.get_device_name(backbone.device) if backbone.device.type == "cuda" else "cpu",
                    "variants": {}}
    reference = None
    for name in ("default", "channels_last_3d", "cudnn_benchmark"):
        if name == "channels_last_3d":
            conv_layout(vae, torch.channels_last_3d)
        if name == "cudnn_benchmark":
            conv_layout(vae, torch.contiguous_format)
            torch.backends.cudnn.benchmark = True
        decode_all(backbone, latents)  # warm-up (cuDNN's benchmark runs here)
        times, frames = [], None
        for _ in range(args.repeats):
            secs, frames = decode_all(backbone, latents)
            times.append(secs)
        if reference is None:
            reference = frames
        diff = int(np.abs(frames.astype(np.int16) - reference.astype(np.int16)).max())
        result["variants"][name] = {"seconds": statistics.median(times), "times": times,
                                    "frames": int(frames.shape[0]), "max_abs_diff_vs_default": diff}
        print(name, result["variants"][name], flush=True)
    torch.backends.cudnn.benchmark = False
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

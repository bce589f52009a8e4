"""Do two processes compute the same bytes with compiled CogVideoX-2B blocks? (issue 23's lane finding)

Builds the backbone from conf/backbone/cogvideox-2b.yaml with random weights, then runs a fixed sequence of
guided predictions whose CFG-stacked rows split into calls of different sizes (micro_batch from argv), and prints
one sha256 per prediction as JSON. Compare the lines of several processes started with different environments
(PYTHONHASHSEED, TORCHINDUCTOR_CACHE_DIR, TORCHINDUCTOR_FORCE_DISABLE_CACHES) to find what breaks exactness.

    python3 scripts/compile_probe.py --micro-batch 4 --tag a
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from longgen.backbones.cogvideox import CogVideoXBackbone

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone" / "cogvideox-2b.yaml"
WINDOWS = [3, 1, 2, 3]  # guided: rows 6, 2, 4, 6 -> calls (4, 2), (2), (4), (4, 2) at micro_batch 4


def set_inductor(settings: list[str]) -> dict:
    """Apply KEY=VALUE Inductor settings (after longgen's own, which happen at load); returns what was applied."""
    import ast

    import torch._inductor.config as inductor

    applied = {}
    for item in settings:
        key, value = item.split("=", 1)
        owner, name = inductor, key
        if "." in key:
            head, name = key.rsplit(".", 1)
            owner = getattr(inductor, head)
        if not hasattr(owner, name):
            applied[key] = "absent in this torch"
            continue
        setattr(owner, name, ast.literal_eval(value))
        applied[key] = value
    return applied


def trace_autotuning() -> dict:
    """Record, per Triton kernel that Inductor benchmarks at run time, how many configs it timed and which won."""
    from torch._inductor.runtime import triton_heuristics

    tuned: dict = {}
    original = triton_heuristics.CachingAutotuner.autotune_to_one_config

    def traced(self, *args, **kwargs):
        n = len(self.launchers)
        result = original(self, *args, **kwargs)
        name = getattr(self.fn, "__name__", "?")
        tuned[f"{name}#{len(tuned)}"] = f"{n} configs -> {self.launchers[0].config}"
        return result

    triton_heuristics.CachingAutotuner.autotune_to_one_config = traced
    return tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--tag", default="")
    parser.add_argument("--conf", type=Path, default=CONF, help="a CogVideoX backbone config (tiny.yaml for a CPU check)")
    parser.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                        help="an Inductor config value set before compiling (Python literal), e.g. triton.autotune_pointwise=False")
    args = parser.parse_args()
    applied = set_inductor(args.inductor)
    tuned = trace_autotuning()
    conf = OmegaConf.to_container(OmegaConf.load(args.conf))
    conf.pop("_target_")
    for key in CogVideoXBackbone.config_only:  # the sampling defaults are the samplers' (backbones/face.py)
        conf.pop(key, None)
    frames = (conf["num_frames"] - 1) // conf["temporal_compression"] + 1
    shape = (frames, conf["latent_channels"], conf["height"] // 8, conf["width"] // 8)
    conf.update(model_path=None, random_weights=True, micro_batch=args.micro_batch,
                compile={"auto": "auto", "true": True, "false": False}[args.compile])
    start = time.time()
    bb = CogVideoXBackbone(**conf)
    bb.load()
    bb.encode_prompts(["a red fox runs through snow", "the fox sleeps"], "")
    gen = torch.Generator("cpu").manual_seed(0)
    hashes = []
    for b in WINDOWS:
        x = torch.randn(b, *shape, generator=gen).to(bb.device)
        pred = bb.predict(x, 700, [k % 2 for k in range(b)], 6.0)
        hashes.append(hashlib.sha256(pred.x0.cpu().numpy().tobytes()).hexdigest()[:16])
    env = {k: os.environ.get(k) for k in ("PYTHONHASHSEED", "TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FORCE_DISABLE_CACHES")}
    print(json.dumps({"tag": args.tag, "inductor": applied, "autotuned": tuned, "micro_batch": args.micro_batch, "compiled": bb.compiled, "env": env,
                      "hashes": hashes, "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()

"""Which settings keep a GPU run byte-identical across processes (issue 23's lane finding)?

For one CogVideoX-2B SynCoS configuration (random full-size weights; SynCoS stage 2 mixes call sizes), runs in
parallel: two fresh uninterrupted runs of the same seed, and for each variant an uninterrupted run against the
lane's interrupted chain (SIGINT → resume → kill -9 → resume). Prints one row per variant. Run it on the GPU
machine after `scripts/gpu_lane.sh` has installed longgen (PYTHONPATH=/tmp/longgen-lane-site,
IMAGEIO_FFMPEG_EXE=/tmp/longgen-lane-site/ffmpeg), from outside the checkout:

    python3 /path/to/longgen/scripts/determinism_probe.py --variant backbone.micro_batch=4 --variant backbone.compile=false
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))
import test_lane as lane  # noqa: E402  the lane's CLI helpers and interrupted chain

SYNCOS = ["sampler=syncos", "num_windows=3", "sampler.num_steps=6", "sampler.t_min=500", "sampler.iters=3"]


def fresh_pair(base: Path, options: list[str]) -> str:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda tag: lane.ok(lane.cli("generate", *lane.COG, *SYNCOS, *options,
                                                     f"hydra.run.dir={base / tag}", cwd=base)), ("fresh-a", "fresh-b")))
    a, b = lane.latents(base / "fresh-a"), lane.latents(base / "fresh-b")
    return f"| two fresh runs {' '.join(options)} | {torch.equal(a, b)} | {float((a - b).abs().max()):.3g} |"


def chain(base: Path, tag: str, options: list[str]) -> str:
    command = ["generate", *lane.COG, *SYNCOS, *options]
    lane.ok(lane.cli(*command, f"hydra.run.dir={base / (tag + '-whole')}", cwd=base))
    seen = lane.interrupted_chain(command, base / (tag + "-chain"), base)
    a, b = lane.latents(base / (tag + "-whole")), lane.latents(base / (tag + "-chain"))
    return f"| chain {' '.join(options)} ({seen}) | {torch.equal(a, b)} | {float((a - b).abs().max()):.3g} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[],
                        help="options of one chain, space-separated (repeatable); none: the defaults")
    parser.add_argument("--base", type=Path, default=Path("/tmp/determinism-probe"))
    args = parser.parse_args()
    args.base.mkdir(parents=True, exist_ok=True)
    variants = [v.split() for v in args.variant] or [[]]
    with concurrent.futures.ThreadPoolExecutor(len(variants) + 1) as pool:
        jobs = [pool.submit(fresh_pair, args.base, variants[0])]
        jobs += [pool.submit(chain, args.base, f"v{k}", v) for k, v in enumerate(variants)]
        print("| variant | equal | max abs diff |\n|---|---|---|")
        for job in jobs:
            try:
                print(job.result())
            except Exception as exc:  # one variant failing must not hide the others
                print(f"| (failed) | – | {str(exc).splitlines()[0][:200]} |")


if __name__ == "__main__":
    main()

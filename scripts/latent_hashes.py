"""The latents' sha256 of a fixed set of CLI runs on the tiny backbones: one row per sampler, noise, extend and a
multi-shot scene. Run it before and after a change that must not change any result (issue 24's structural step)
and compare the tables.

    python scripts/latent_hashes.py > before.md
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TINY = ["backbone=tiny", "backbone.height=16", "backbone.width=16"]
WAN = ["backbone=tiny-wan", "backbone.height=16", "backbone.width=16"]
PROMPT = "prompt=a red fox walks through a snowy birch forest"
STEPS = "sampler.num_steps=4"
RUNS = {
    "direct": [*TINY, "sampler=direct", "num_windows=1", STEPS, "sampler.eta=0.5"],
    "gen-l-video": [*TINY, "sampler=gen-l-video", "num_windows=3", STEPS],
    "gen-l-video + freenoise": [*TINY, "sampler=gen-l-video", "noise=freenoise", "num_windows=3", STEPS],
    "syncos": [*TINY, "sampler=syncos", "num_windows=3", STEPS, "sampler.t_min=500", "sampler.iters=3"],
    "glc (abam)": [*TINY, "sampler=glc", "num_windows=3", STEPS, "sampler.abam=true"],
    "fifo": [*TINY, "sampler=fifo", "num_windows=2", "sampler.num_partitions=1"],
    "wan syncos": [*WAN, "sampler=syncos", "num_windows=2", STEPS, "sampler.t_min=500", "sampler.iters=2"],
    "wan fifo": [*WAN, "sampler=fifo", "num_windows=2", "sampler.num_partitions=1"],
}
STORY = {
    "characters": {"1": "a tall woman in a green raincoat"},
    "environment": "a rainy harbour at dusk",
    "story": "she waits for a ferry",
    "shots": ["Wide shot: Character 1 stands at the pier.", "[SHOT CUT] Close-up: Character 1 smiles."],
}


def cli(*args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"longgen {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def digest(run_dir: Path) -> str:
    """The sha256 of the latents as longgen wrote them before their files recorded the backbone (the latents tensor
    and its `tensors_sha256` as the only metadata), so the tables of benchmarks/structural-step.md stay comparable:
    the record (longgen/run/latent_space.py) changes the file's bytes, not the latents."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(run_dir / "latents.safetensors"), framework="pt") as f:
        latents, meta = f.get_tensor("latents"), f.metadata()
    return hashlib.sha256(save({"latents": latents}, metadata={"tensors_sha256": meta["tensors_sha256"]})).hexdigest()[:16]


def generate(base: Path, name: str, options: list[str]) -> str:
    run = base / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "")
    cli("generate", *options, PROMPT, "save_latents=true", f"hydra.run.dir={run}", cwd=base)
    return digest(run)


def extend(base: Path) -> str:
    source = base / "extend-source"
    cli("generate", *TINY, "sampler=direct", "num_windows=1", "sampler.num_steps=3", PROMPT, f"hydra.run.dir={source}",
        cwd=base)
    run = base / "extend"
    cli("extend", str(source / "video.mp4"), *TINY, "save_latents=true", "prompt=the fox leaps", STEPS,
        f"hydra.run.dir={run}", cwd=base)
    return digest(run)


def scene(base: Path) -> str:
    story = base / "scene.json"
    story.write_text(json.dumps(STORY))
    run = base / "scene"
    cli("generate", *TINY, f"story={story}", "sampler=gen-l-video", STEPS, "shots.windows=[1,2]",
        "shots.cross_attention=0.5", "save_latents=true", f"hydra.run.dir={run}", cwd=base)
    return digest(run)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        base = Path(tmp)
        jobs = {name: pool.submit(generate, base, name, options) for name, options in RUNS.items()}
        jobs["extend (defaults)"] = pool.submit(extend, base)
        jobs["multi-shot, cross-shot attention"] = pool.submit(scene, base)
        print("| run | latents sha256 (16) |\n|---|---|")
        for name, job in jobs.items():
            print(f"| {name} | `{job.result()}` |")


if __name__ == "__main__":
    main()

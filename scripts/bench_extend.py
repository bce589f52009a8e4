"""Measure `longgen extend` and multi-shot scenes as a user runs them (the CLI, one process per command).

1. generate a source video, then extend it with each context (replace; per-frame on backbones that have per-frame
   timesteps), and report the join's seam score (`manifest.json` → join.seam: `longgen eval`'s seam ratio of the
   frame difference and the warping error across the join, flagged above 2) next to the seam ratios of the source's
   own window boundaries (`longgen eval`), which is what an unremarkable transition scores with these weights;
2. generate a four-shot scene with cross-shot attention off and on, and report the sampling time, the transformer
   forwards, the number of scenes PySceneDetect finds (the cuts should be found: 4 takes → 4 scenes with trained
   weights) and each take's mean colour distance to the reference take (CIELAB ΔE of the takes' mean colours, a
   crude consistency proxy; lower with cross-shot attention is the hoped-for direction).

Weights: trained ones from the local Hugging Face cache or `--model-path`; `--random` uses random weights (timing
only — seam and colour numbers then say nothing). Writes benchmarks/results/extend_<backbone>.json.

    python scripts/bench_extend.py --backbone cogvideox-2b --model-path /models/CogVideoX-2b
    python scripts/bench_extend.py --backbone wan2.1-t2v-1.3b --model-path /models/Wan2.1-T2V-1.3B-Diffusers
    python scripts/bench_extend.py --backbone tiny --steps 2 --out /tmp/bench-extend      (CPU smoke run)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE_PROMPT = "A red fox trots through a snowy birch forest, soft morning light, photorealistic"
NEXT_PROMPT = "A red fox trots through a snowy birch forest, soft morning light, photorealistic. The fox stops and looks back."
SCENE = {
    "characters": {"1": "a red fox with a white-tipped tail", "2": "a grey owl"},
    "environment": "a snowy birch forest, soft morning light, photorealistic",
    "story": "a fox meets an owl at dawn",
    "shots": ["Wide shot: Character 1 trots between the birches.", "[SHOT CUT] Close-up: Character 2 blinks on a branch.",
              "[SHOT CUT] Medium shot: Character 1 looks up at Character 2.", "[SHOT CUT] Close-up: Character 1 sniffs the snow."],
}


def longgen(*args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"longgen {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def take_colours(video: Path, takes: list[dict]) -> list[list[float]]:
    """Mean CIELAB colour of every take's frames."""
    import cv2

    from longgen.eval.inputs import read_video

    frames, _ = read_video(video)
    out = []
    for take in takes:
        a, b = take["video_frames"]
        lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB).astype(np.float64) for f in frames[a:b]])
        lab[..., 0] *= 100 / 255
        lab[..., 1:] -= 128
        out.append(lab.reshape(-1, 3).mean(axis=0).tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--random", action="store_true", help="random weights (timing only)")
    ap.add_argument("--sampler", default="gen-l-video")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.5, help="shots.cross_attention of the 'on' run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "runs" / "extend"))
    args = ap.parse_args()
    out = Path(args.out)
    common = [f"backbone={args.backbone}", f"sampler={args.sampler}", f"sampler.num_steps={args.steps}",
              "save_latents=true", "overwrite=true"]
    if args.model_path:
        common.append(f"model_path={args.model_path}")
    if args.random:
        common.append("backbone.random_weights=true")
    result: dict = {"backbone": args.backbone, "sampler": args.sampler, "steps": args.steps, "random": args.random}

    src = out / "source"
    result["source_s"] = longgen("generate", *common, f"prompt={SOURCE_PROMPT}", f"num_windows={args.windows}",
                                 f"hydra.run.dir={src}")
    longgen("eval", str(src))
    source_seams = [row["ratio"] for row in json.loads((src / "eval.json").read_text())["seams"] if row["ratio"]]
    result["source_window_seams"] = {"median": float(np.median(source_seams)) if source_seams else None,
                                     "max": max(source_seams) if source_seams else None}
    per_frame = "hunyuan" not in args.backbone  # CogVideoX and Wan take a timestep per latent frame; HunyuanVideo 1.5 not
    for context in ["replace", *(["per-frame"] if per_frame else [])]:
        run = out / f"extend-{context}"
        seconds = longgen("extend", str(src / "video.mp4"), *common, f"prompt={NEXT_PROMPT}",
                          f"num_windows={args.windows}", f"context={context}", f"hydra.run.dir={run}")
        m = manifest(run)
        result[f"extend_{context}"] = {"seconds": seconds, "sample_s": m["timings"].get("sample_s"),
                                       "join_seam": m["join"]["seam"], "frames": m["frames"]}

    scene = out / "scene.json"
    scene.parent.mkdir(parents=True, exist_ok=True)
    scene.write_text(json.dumps(SCENE))
    for share in (0.0, args.share):
        run = out / f"scene-{share:g}"
        longgen("generate", *common, f"story={scene}", "shots.windows=1", f"shots.cross_attention={share}",
                f"hydra.run.dir={run}")
        longgen("eval", str(run))
        m = manifest(run)
        colours = take_colours(run / "video.mp4", m["takes"])
        ref = np.array(colours[0])
        result[f"scene_{share:g}"] = {
            "sample_s": m["timings"].get("sample_s"), "forwards": m["transformer_forwards"],
            "scenes_found": json.loads((run / "eval.json").read_text())["summary"]["num_scenes"],
            "takes": len(m["takes"]),
            "delta_e_to_reference": [float(np.linalg.norm(np.array(c) - ref)) for c in colours[1:]],
        }
    target = REPO / "benchmarks" / "results" / f"extend_{args.backbone}{'_random' if args.random else ''}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

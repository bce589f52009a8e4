"""Time `longgen eval`'s weight-free metrics on a 193-frame 720×480 video (target: under 30 s on 2 CPU cores).

Without --video, writes a synthetic run directory first: 193 frames (CogVideoX-2B at 4×: L = 49 latent frames,
10 windows of 13, stride 4) of a textured scene panning at a few pixels per frame with moving objects, a slow light
change and sensor-like noise, encoded with longgen's own H.264 writer (crf 18), plus a manifest.json with the
window plan, so every stage runs — seams included. The timed part is what `longgen eval RUN` does for one run:
decode the mp4, run every metric, write eval.json.

    taskset -c 0,1 python scripts/bench_eval.py                 # two cores, synthetic video
    taskset -c 0,1 python scripts/bench_eval.py --video RUN_DIR  # an existing run directory or .mp4

Reports the best wall time of --repeat runs and the CPU seconds they used (all threads, plus the ffmpeg decoder):
on a shared machine the wall time includes waiting for other processes, the CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from longgen.eval.evaluate import evaluate_target, to_json, write_json_atomic
from longgen.eval.inputs import resolve
from longgen.eval.settings import default_settings
from longgen.writer import Mp4Writer

FRAMES, WIDTH, HEIGHT, FPS = 193, 720, 480, 8
LATENT, WINDOW, STRIDE = 49, 13, 4


def synthetic_frames(seed: int = 0):
    """Chunks of uint8 [f, 480, 720, 3]: a panning textured background, two moving discs, light drift, noise."""
    rng = np.random.default_rng(seed)
    big_h, big_w = HEIGHT + 64, WIDTH + 4 * FRAMES + 64
    texture = cv2.GaussianBlur(rng.standard_normal((big_h, big_w, 3)).astype(np.float32), (0, 0), 6)
    texture = 110 + 60 * texture / texture.std()
    for t0 in range(0, FRAMES, 16):
        chunk = []
        for t in range(t0, min(FRAMES, t0 + 16)):
            x = int(round(3.5 * t))
            frame = texture[20: 20 + HEIGHT, x: x + WIDTH].copy()
            for k, colour in enumerate(((220, 60, 40), (40, 90, 230))):
                cx = int(WIDTH / 2 + 220 * np.sin(0.05 * t + k * 2.0))
                cy = int(HEIGHT / 2 + 120 * np.cos(0.07 * t + k))
                cv2.circle(frame, (cx, cy), 45, colour, -1, lineType=cv2.LINE_AA)
            frame *= 1.0 + 0.15 * t / FRAMES
            frame += rng.normal(0, 2.0, frame.shape).astype(np.float32)
            chunk.append(np.clip(frame, 0, 255).astype(np.uint8))
        yield np.stack(chunk)


def write_synthetic_run(run_dir: Path) -> None:
    video = Mp4Writer().write(synthetic_frames(), run_dir, FPS, FRAMES)
    starts = list(range(0, LATENT - WINDOW + 1, STRIDE))
    manifest = {
        "seed": 0, "sampler": {"name": "synthetic"}, "backbone": {"name": "synthetic"},
        "latent_length": LATENT, "window": WINDOW, "stride": STRIDE,
        "windows": [{"start": s, "end": s + WINDOW, "local_prompt": 0} for s in starts],
        "frames": video["frames"], "fps": FPS, "width": WIDTH, "height": HEIGHT,
        "outputs": {"video": "video.mp4"},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (the ffmpeg decoder)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", help="run directory or .mp4 to time instead of the synthetic video")
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions (the best is reported)")
    parser.add_argument("--json", help="also write the timings to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.video
        if path is None:
            path = str(Path(tmp) / "run")
            Path(path).mkdir()
            t0 = time.perf_counter()
            write_synthetic_run(Path(path))
            print(f"wrote the synthetic run in {time.perf_counter() - t0:.1f} s (not timed)")
        targets, _ = resolve([path])
        settings = default_settings()
        best = best_cpu = None
        for _ in range(max(1, args.repeat)):
            t0, c0 = time.perf_counter(), _cpu_seconds()
            result = to_json(evaluate_target(targets[0], settings))
            out = (targets[0].run_dir or Path(tmp)) / "eval.json"
            write_json_atomic(result, out)
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            best = wall if best is None else min(best, wall)
            best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
    info = result["video_info"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    record = {
        "video": "synthetic" if args.video is None else args.video,
        "frames": info["frames"], "size": f"{info['width']}x{info['height']}",
        "analysis_size": info["analysis_size"], "cores": cores, "cv2_threads": cv2.getNumThreads(),
        "wall_s": round(best, 2), "cpu_s": round(best_cpu, 2), "load_average_1min": os.getloadavg()[0],
        "stages_s": result["timings"], "summary": result["summary"],
        "python": platform.python_version(), "opencv": cv2.__version__, "machine": platform.machine(),
        "command": " ".join(sys.argv),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "summary"}, indent=1))
    print(f"{info['frames']} frames {info['width']}x{info['height']} on {cores} core(s): {best:.1f} s wall, "
          f"{best_cpu:.1f} s CPU (all threads + ffmpeg), load average {os.getloadavg()[0]:.1f} "
          f"(target < 30 s: {'met' if best < 30 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

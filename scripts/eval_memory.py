"""Peak memory of `longgen eval` against the length of the video (issue 27: "eval of a ten-minute video streams").

Writes synthetic videos of the given lengths (a view panning over a smooth random texture, with a hard cut every
20 s so scene detection and repetition have work to do; generated one frame at a time with imageio-ffmpeg, never
held whole), runs `longgen eval VIDEO` on each in a fresh process and reads that process's peak resident set size
(ru_maxrss from os.wait4, i.e. what /usr/bin/time -v reports as "Maximum resident set size").

    .venv/bin/python scripts/eval_memory.py --minutes 1 4 --fps 8 --size 240x160

`--python` picks the interpreter that runs longgen (another checkout's virtual environment measures that
checkout). Prints one Markdown row per video: frames, seconds, peak RSS, and the growth per minute between the
shortest and the longest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random RGB texture, uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal((height, width, 3)).astype(np.float32), (0, 0), 3.0)
    return np.clip(120 + 45 * noise / noise.std(), 0, 255).astype(np.uint8)


def write_video(path: Path, frames: int, fps: int, width: int, height: int) -> None:
    """A pan of 1 px/frame over a texture that changes every 20 s (a hard cut), written frame by frame."""
    import imageio_ffmpeg

    shot = 20 * fps
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", quality=None,
                                         output_params=["-crf", "18"], macro_block_size=1)
    writer.send(None)
    big = None
    for t in range(frames):
        if t % shot == 0:
            big = texture(height, width + shot + 2, seed=t // shot)  # [H, W + shot + 2, 3]
        x0 = t % shot
        writer.send(np.ascontiguousarray(big[:, x0: x0 + width]))  # [H, W, 3]
    writer.close()


def peak_rss(python: str, video: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of `longgen eval VIDEO` in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    command = [python, "-m", "longgen.cli", "eval", str(video), f"hydra.run.dir={out}"]
    t0 = time.perf_counter()
    # run from the video's directory: `-m` puts the working directory first on sys.path, and the longgen measured
    # must be the interpreter's own, not a checkout the script happens to be started from
    process = subprocess.Popen(command, env=env, cwd=video.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"eval of {video} failed: {process.stderr.read().decode(errors='replace')[-2000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # Linux reports ru_maxrss in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--size", default="240x160", help="WIDTHxHEIGHT")
    parser.add_argument("--python", default=sys.executable, help="interpreter whose longgen is measured")
    parser.add_argument("--work", default=None, help="directory for the videos (default: a temporary one)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        print("| minutes | frames | size | peak RSS (MiB) | wall (s) |\n|---|---|---|---|---|")
        for minutes in args.minutes:
            frames = round(minutes * 60 * args.fps)
            video = work / f"synthetic-{frames}.mp4"
            if not video.exists():
                write_video(video, frames, args.fps, width, height)
            rss, seconds = peak_rss(args.python, video, work / f"eval-{frames}")
            rows.append((minutes, rss))
            print(f"| {minutes:g} | {frames} | {width}×{height} | {rss:.0f} | {seconds:.0f} |", flush=True)
        print()
        for (m0, r0), (m1, r1) in zip(rows, rows[1:]):
            if m1 > m0:
                print(f"growth {m0:g} → {m1:g} min: {(r1 - r0) / (m1 - m0):.1f} MiB per minute of video at {args.fps} fps")


if __name__ == "__main__":
    main()

"""Markdown summary of the issue 27 minute-length runs of scripts/minutes_gpu.sh, for benchmarks/README.md.

    python3 scripts/minutes_report.py --job LABEL RUN_DIR TRACE.csv [--job ...] [--fps 16]

For each job: what its run directory holds (manifest.json of a finished `longgen generate`, else the checkpoint of
a stopped one), and what scripts/memory_trace.py saw from outside.
- A finished run: frames, windows, steps, GPUs, the manifest's per-stage seconds, `peak_gpu_memory_bytes`
  (torch.cuda.max_memory_allocated of rank 0) and `peak_host_memory_bytes` (rank 0's peak RSS, decode and mp4
  included), seconds per step = sample_s / num_steps, and the projection to 50 steps:
  load + encode + 50 x (sample_s / num_steps) + decode. The rule holds because every Gen-L-Video step runs the same
  windows (the same transformer forwards, the manifest's transformer_forwards / steps) and memory does not depend on
  the number of steps; the first step carries the kernels' warm-up, so the projection errs high.
- A stopped run: the checkpoint's step (done of total) and the sampling seconds it recorded.
- The trace: peak RSS of the whole process tree (gpus=N workers and ffmpeg included) and peak nvidia-smi
  memory.used (whole device, CUDA context and allocator reserve included), and, for the decode, the peaks per
  minute of video written (frames from the log's `decode: N/M` progress lines, interpolated in time between them)
  with their growth per minute of video (least-squares slope over the minutes, and last minute minus first).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

GB = 1e9


def gb(value) -> str:
    return "–" if value is None else f"{value / GB:.2f}"


def read_trace(path: Path) -> list[dict]:
    """The trace's rows with numbers: t, rss (tree), gpu (max MiB over GPUs, as bytes; None without nvidia-smi),
    phase, done, total."""
    if not path.is_file():
        return []
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            gpus = [int(v) for v in r["gpu_mib"].split(";") if v]
            rows.append({"t": float(r["t"]), "rss": int(r["rss_bytes"]), "gpu": max(gpus) * 2**20 if gpus else None,
                         "phase": r["phase"], "done": int(r["done"]) if r["done"] else None,
                         "total": int(r["total"]) if r["total"] else None,
                         "elapsed": float(r["elapsed"]) if r.get("elapsed") else None})
    return rows


def decode_frames(rows: list[dict]) -> tuple[list[tuple[dict, float]], list[tuple[float, int]]]:
    """The rows of the decode with the frames written at their time: the progress counts change only when a line
    is logged, so the count is interpolated in time between the first sightings of successive counts, from the
    decode's start (the first line's time less its `elapsed`) at frame 0. Also returns those sightings."""
    seen: list[tuple[float, int]] = []  # (t, done) where a new decode count first appeared
    for r in rows:
        if r["phase"] == "decode" and r["done"] is not None and (not seen or r["done"] != seen[-1][1]):
            if not seen and r["elapsed"]:
                seen.append((r["t"] - r["elapsed"], 0))
            seen.append((r["t"], r["done"]))
    if len(seen) < 2:
        return [], seen
    out = []
    for r in rows:
        if r["t"] < seen[0][0] or r["t"] > seen[-1][0]:
            continue
        for (t0, d0), (t1, d1) in zip(seen, seen[1:]):
            if t0 <= r["t"] <= t1:
                out.append((r, d0 + (d1 - d0) * (r["t"] - t0) / (t1 - t0)))
                break
    return out, seen


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def per_minute(rows: list[dict], fps: int) -> list[str]:
    """Markdown rows: decode peaks per minute of video, and their growth per minute."""
    framed, seen = decode_frames(rows)
    if not framed:
        return ["(no decode progress in the trace: fewer than two `decode: N/M` lines were logged)"]
    per = fps * 60
    (t0, d0), (t1, d1) = seen[0], seen[-1]
    head = [f"Decode (+ mp4): frames {d0}-{d1} of {framed[-1][0]['total']} in {t1 - t0:.0f} s, "
            f"{(t1 - t0) / ((d1 - d0) / per):.1f} s per minute of video.", ""]
    last = max((framed[-1][0]["total"] - 2) // per, 0)  # 9,601 frames: minutes 0..9 (the last frame joins minute 9)
    minutes: dict[int, list[dict]] = {}
    for r, frames in framed:
        minutes.setdefault(min(int(frames // per), last), []).append(r)
    lines = [*head, "| minute of video | samples | peak RSS, tree (GB) | peak GPU used (GB) |", "|---|---|---|---|"]
    keys = sorted(minutes)
    rss = [max(r["rss"] for r in minutes[m]) for m in keys]
    gpu = [max((r["gpu"] or 0) for r in minutes[m]) for m in keys]
    for m, a, g in zip(keys, rss, gpu):
        lines.append(f"| {m + 1} | {len(minutes[m])} | {gb(a)} | {gb(g) if g else '–'} |")
    if len(keys) > 1:
        xs = [float(m) for m in keys]
        lines.append("")
        lines.append(f"Growth per minute of video (slope over {len(keys)} minutes): RSS {slope(xs, rss) / 1e6:+.1f} MB, "
                     f"GPU {slope(xs, gpu) / 1e6:+.1f} MB; last minute minus first: RSS {(rss[-1] - rss[0]) / 1e6:+.1f} MB, "
                     f"GPU {(gpu[-1] - gpu[0]) / 1e6:+.1f} MB.")
    return lines


def run_facts(run: Path) -> list[str]:
    """Markdown lines from a finished run's manifest, else from a stopped run's checkpoint."""
    manifest = run / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        t = m["timings"]
        steps = m["sampler"].get("num_steps") or 0
        per_step = t.get("sample_s", 0.0) / steps if steps else None
        fixed = t.get("load_s", 0.0) + t.get("encode_text_s", 0.0) + t.get("decode_s", 0.0)
        lines = [
            f"- {m['frames']} frames ({m['latent_length']} latent) at {m['fps']} fps, {m['width']}x{m['height']}, "
            f"{m['sampler']['name']}, {len(m['windows'])} windows, {steps} steps, "
            f"{m['distributed']['world_size']} process(es), attention {m['backbone'].get('attention_used')}",
            f"- stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()),
            f"- peak GPU (manifest, max_memory_allocated): {gb(m.get('peak_gpu_memory_bytes'))} GB; "
            f"peak host RSS (manifest, rank 0 incl. decode + mp4): {gb(m.get('peak_host_memory_bytes'))} GB",
        ]
        if per_step is not None:
            lines.append(f"- {per_step:.1f} s per step ({m['transformer_forwards'] / steps:.0f} forwards per step); "
                         f"projected at 50 steps: {fixed + 50 * per_step:.0f} s = load + encode + decode "
                         f"{fixed:.0f} s + 50 x {per_step:.1f} s")
        return lines
    checkpoint = run / "checkpoint.safetensors"
    if checkpoint.is_file():
        from longgen.run.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        return [f"- stopped run: checkpoint after step {ckpt.state.done} of {ckpt.total}, sampling "
                f"{ckpt.counters.get('sample_s', 0.0):.1f} s, {ckpt.counters.get('forwards', 0)} forwards "
                f"({checkpoint.stat().st_size / GB:.2f} GB checkpoint)"]
    videos = sorted(run.glob("*.mp4"))
    if videos:  # `longgen decode LATENTS.safetensors out=RUN`: the video only
        return [f"- decode only: {v.name} ({v.stat().st_size / 1e6:.0f} MB)" for v in videos]
    return ["- no manifest, checkpoint or video (the run did not get through its first step)"]


def job_section(label: str, run: Path, trace: Path, fps: int) -> list[str]:
    rows = read_trace(trace)
    lines = [f"### {label}", ""]
    lines += run_facts(run) if run.is_dir() else [f"- {run}: no run directory"]
    if rows:
        gpus = [r["gpu"] for r in rows if r["gpu"] is not None]
        lines.append(f"- trace ({len(rows)} samples over {rows[-1]['t']:.0f} s): peak RSS of the process tree "
                     f"{gb(max(r['rss'] for r in rows))} GB, peak GPU used (nvidia-smi) {gb(max(gpus)) if gpus else '–'} GB")
        lines += ["", *per_minute(rows, fps)]
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", nargs=3, action="append", metavar=("LABEL", "RUN_DIR", "TRACE"), required=True)
    ap.add_argument("--fps", type=int, default=16, help="frames per second of the video (Wan 16, CogVideoX 8)")
    args = ap.parse_args()
    out = []
    for label, run, trace in args.job:
        out += job_section(label, Path(run), Path(trace), args.fps)
    print("\n".join(out))


if __name__ == "__main__":
    main()

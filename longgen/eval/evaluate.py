"""Run the metrics on one video and write its eval.json.

Stages, each a pure function of frames (and latents) from the metric modules:
  pixel differences → flicker → analysis frames (downscaled) → flow (warp, motion) → seams → colour drift →
  scene cuts → long-horizon similarity (SSIM curve, repetition, freeze) → model metrics (local weights only).

Resolution: flicker and the pixel seam score use the full frames, as VBench's flicker does. Flow, warping error
and scene detection use "analysis frames", area-downscaled by the smallest whole factor k that brings the long side
to at most `settings.analysis_long_side` (720×480 → 360×240 with the default 360); Lab statistics and SSIM use
"stats frames", downscaled again to a long side of at most `settings.stats_long_side` (→ 180×120). This is what
keeps a 193-frame 720×480 video under 30 s on two CPU cores (scripts/bench_eval.py, benchmarks/README.md): flow,
float Lab conversion and SSIM cost grow with pixel count, while what they measure here is coarse — generated motion
is smooth at 360 pixels, a frame's mean colour does not depend on resolution, and long-range similarity is about
layout and content rather than fine texture. Flow magnitudes are reported in pixels of the original video (× k);
warping errors and SSIM values are those of the downscaled frames (compare them only at equal settings).
PySceneDetect itself downscales frames wider than 256 pixels before detecting cuts, so detection at 360 pixels is
at least as fine as its default.

Memory: a video is read one frame at a time (`read_streamed`): the full-resolution differences are taken against
the previous frame, every frame is downscaled to its analysis size at once, and the model metrics see chunks of
`models.batch` full frames; so at most one chunk of full frames is held, whatever the length (a 1-minute 4K clip
was 45 GB read whole), and what grows with the length is the analysis frames (≤ 360 pixels on the long side).

eval.json (written atomically: a temporary file, then a rename) holds `summary` (one number per metric, the report
and the table read these), `curves` (per frame or per pair, for plots), `seams` (per window boundary), `scenes`,
`geometry`, `settings`, `timings`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from longgen.errors import UsageError
from longgen.eval import drift, flicker, flow, scenes, seams, similarity
from longgen.eval.inputs import Geometry, Target, read_latents
from longgen.eval.settings import Settings, default_settings
from longgen.rundir import write_text

log = logging.getLogger("longgen")

SCHEMA = "longgen-eval/1"
PIXEL_SEAM_FLOOR = 0.5  # ε of the frame-difference seam ratio, grey levels (seams.py)
WARP_SEAM_FLOOR = 3 * (0.5 / 255) ** 2  # least ε of the warping-error seam ratio: half a grey level in each channel


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)


def analysis_factor(height: int, width: int, long_side: int) -> int:
    """The smallest whole factor k with max(H, W)/k ≤ long_side."""
    return max(1, math.ceil(max(height, width) / long_side))


def downscale(frame: np.ndarray, k: int) -> np.ndarray:
    """One uint8 frame [H, W, 3] area-downscaled by the whole factor k → [H // k, W // k, 3]."""
    if k == 1:
        return frame
    h, w = frame.shape[:2]
    return cv2.resize(frame, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)


def analysis_frames(frames: np.ndarray, long_side: int) -> tuple[np.ndarray, int]:
    """Frames area-downscaled by the smallest whole factor k with max(H, W)/k ≤ long_side, and k."""
    k = analysis_factor(*frames.shape[1:3], long_side)
    if k == 1:
        return frames, 1
    return np.stack([downscale(f, k) for f in frames]), k


@dataclass
class Video:
    """What the metrics need of a video: its geometry and rate, the full-resolution differences of consecutive
    frames (float64 [T − 1]) and the analysis frames (uint8 [T, h, w, 3], downscaled by `factor`)."""

    fps: float
    height: int
    width: int
    differences: np.ndarray
    small: np.ndarray
    factor: int

    @property
    def frames(self) -> int:
        return len(self.small)

    @classmethod
    def of(cls, frames: np.ndarray, fps: float, long_side: int) -> "Video":
        """From frames already in memory (uint8 [T, H, W, 3])."""
        small, factor = analysis_frames(frames, long_side)
        return cls(fps, *frames.shape[1:3], flicker.frame_differences(frames), small, factor)


def read_streamed(path: Path, long_side: int, chunk: int = 16,
                  on_chunk: Callable[[np.ndarray], None] | None = None) -> Video:
    """Read a video one frame at a time into a `Video` (never more than `chunk` full frames held); `on_chunk`
    receives the full frames in chunks of `chunk` (uint8 [n, H, W, 3]) for the model metrics. One line when ffmpeg
    cannot read it or it has fewer than 2 frames."""
    import imageio_ffmpeg

    differences: list[float] = []
    small: list[np.ndarray] = []
    held: list[np.ndarray] = []
    previous = None
    reader = None
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = (int(v) for v in meta["size"])
        factor = analysis_factor(height, width, long_side)
        for raw in reader:
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            if previous is not None:
                differences.append(float(cv2.absdiff(frame, previous).mean()))  # as flicker.frame_differences
            small.append(downscale(frame, factor))
            previous = frame
            if on_chunk is not None:
                held.append(frame)
                if len(held) == chunk:
                    on_chunk(np.stack(held))
                    held = []
        if on_chunk is not None and held:
            on_chunk(np.stack(held))
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not a video ffmpeg can read ({reason})") from None
    finally:
        if reader is not None:
            reader.close()
    if len(small) < 2:
        raise UsageError(f"{path} has {len(small)} frame(s); at least 2 are needed to measure a video")
    fps = float(meta.get("fps") or 0) or 8.0
    return Video(fps, height, width, np.asarray(differences, dtype=np.float64), np.stack(small), factor)


# ---------------------------------------------------------------------------------------------------- stages
def flow_stage(small: np.ndarray, factor: int, fps: float, height: int, width: int, settings: Settings):
    curves = flow.flow_curves(small, settings.flow, scale=float(factor))
    is_dynamic, share = flow.dynamic_degree(curves.motion_top5, fps, height, width)
    summary = {
        "warp_error": _nanmean(curves.warp),
        "motion_px": float(np.mean(curves.motion)),
        "dynamic": bool(is_dynamic),
        "dynamic_share": share,
    }
    return summary, {"warp": curves.warp, "motion_px": curves.motion}


def seam_stage(differences: np.ndarray, warp: np.ndarray, geometry: Geometry | None, latents: np.ndarray | None,
               settings: Settings):
    """Per-boundary seam ratios: frame difference and warping error (pixels), and latents; empty without a plan."""
    if geometry is None:
        return {}, [], None
    length, c = geometry.latent_length, geometry.compression
    boundaries = seams.window_boundaries(geometry.windows, length)
    pixel = seams.seam_ratios(seams.transition_differences_from_pixels(differences, length, c), boundaries,
                              settings.seam_radius, PIXEL_SEAM_FLOOR)
    warped = seams.transition_differences_from_pixels(warp, length, c)
    motion = seams.seam_ratios(warped, boundaries, settings.seam_radius,
                               max(WARP_SEAM_FLOOR, seams.relative_floor(warped)))
    latent: dict[int, float] = {}
    if latents is not None and len(latents) == length:
        moves = seams.transition_differences_from_latents(latents)
        latent = seams.seam_ratios(moves, boundaries, settings.seam_radius, seams.relative_floor(moves))
    rows = []
    for b in boundaries:
        p = seams.pixel_pair(b, c)
        row: dict[str, Any] = {"latent": b, "pixel_pair": [p, p + 1], "ratio": pixel.get(b), "warp_ratio": motion.get(b)}
        row["flagged"] = any(r is not None and r > settings.seam_ratio for r in (row["ratio"], row["warp_ratio"]))
        if latent:
            row["latent_ratio"] = latent.get(b)
            row["latent_flagged"] = row["latent_ratio"] is not None and row["latent_ratio"] > settings.seam_ratio
        rows.append(row)
    summary: dict[str, Any] = {
        "seam_boundaries": len(boundaries),
        "seams_flagged": sum(r["flagged"] for r in rows),
        "seam_max_ratio": max(pixel.values()) if pixel else None,
        "seam_max_warp_ratio": max(motion.values()) if motion else None,
    }
    if latent:
        summary["latent_seams_flagged"] = sum(r["latent_flagged"] for r in rows)
        summary["latent_seam_max_ratio"] = max(latent.values())
    info = {"latent_length": length, "compression": c, "window": geometry.window,
            "windows": [list(w) for w in geometry.windows], "boundaries": boundaries,
            "boundary_frames": [seams.pixel_pair(b, c) + 0.5 for b in boundaries]}
    return summary, rows, info


def drift_stage(small: np.ndarray, fps: float, reference_frames: int):
    stats = drift.lab_statistics(small)
    delta = drift.delta_e_from_reference(stats, reference_frames)
    worst = int(np.argmax(delta))
    summary = {
        "drift_max_delta_e": float(delta[worst]),
        "drift_max_at_frame": worst,
        "drift_L_per_s": drift.slope_per_second(stats.L, fps),
        "drift_a_per_s": drift.slope_per_second(stats.a, fps),
        "drift_b_per_s": drift.slope_per_second(stats.b, fps),
        "drift_reference_frames": min(reference_frames, len(small)),
    }
    curves = {"lab_L": stats.L, "lab_a": stats.a, "lab_b": stats.b, "lab_L_std": stats.L_std, "delta_e": delta}
    return summary, curves


def scene_stage(small: np.ndarray, fps: float, settings: Settings):
    cuts = scenes.scene_cuts(small, fps, settings.scene_threshold, settings.scene_min_len)
    return {"num_scenes": len(cuts) + 1}, {"cuts": cuts, "threshold": settings.scene_threshold,
                                           "min_scene_len": settings.scene_min_len}


def similarity_stage(small: np.ndarray, differences: np.ndarray, fps: float, settings: Settings):
    lags, values = similarity.lag_curve(similarity.SsimFrames(small), settings.ssim_pairs_per_lag)
    score, lag = similarity.repetition(small, max(2, round(fps * settings.repetition_gap_s)))
    share, longest = similarity.freeze(differences, settings.freeze_mae)
    far = values[lags >= (len(small) - 1) / 2]
    summary = {
        "ssim_adjacent": float(values[0]),
        "ssim_long_range": float(np.mean(far)) if far.size else float(values[-1]),
        "repetition": score,
        "repetition_lag": lag,
        "freeze_share": share,
        "freeze_longest": longest,
    }
    return summary, {"ssim_lag": lags, "ssim": values}


def measure(frames: np.ndarray, fps: float, settings: Settings, geometry: Geometry | None = None,
            latents: np.ndarray | None = None) -> dict:
    """Every weight-free metric of uint8 RGB frames [T, H, W, 3]."""
    return measure_video(Video.of(frames, fps, settings.analysis_long_side), settings, geometry, latents)


def measure_video(video: Video, settings: Settings, geometry: Geometry | None = None,
                  latents: np.ndarray | None = None) -> dict:
    """Every weight-free metric of a video (its differences and analysis frames)."""
    timings: dict[str, float] = {}
    height, width, fps, small, factor = video.height, video.width, video.fps, video.small, video.factor
    with _timed(timings, "flicker"):
        differences = video.differences
        summary: dict[str, Any] = {"flicker": flicker.temporal_flickering(differences)}
        curves: dict[str, Any] = {"frame_mae": differences}
    with _timed(timings, "downscale"):
        tiny, _ = analysis_frames(small, settings.stats_long_side)
    with _timed(timings, "flow"):
        part, more = flow_stage(small, factor, fps, height, width, settings)
        summary.update(part)
        curves.update(more)
    with _timed(timings, "seams"):
        part, seam_rows, geometry_info = seam_stage(differences, curves["warp"], geometry, latents, settings)
        summary.update(part)
    with _timed(timings, "drift"):
        reference = geometry.frames_for(geometry.window) if geometry else settings.drift_reference_frames
        part, more = drift_stage(tiny, fps, reference)
        summary.update(part)
        curves.update(more)
    with _timed(timings, "scenes"):
        part, scene_info = scene_stage(small, fps, settings)
        summary.update(part)
    with _timed(timings, "similarity"):
        part, more = similarity_stage(tiny, differences, fps, settings)
        summary.update(part)
        curves.update(more)
    return {
        "video_info": {"frames": video.frames, "fps": fps, "width": width, "height": height,
                       "analysis_size": [small.shape[2], small.shape[1]], "analysis_factor": factor,
                       "stats_size": [tiny.shape[2], tiny.shape[1]]},
        "summary": summary,
        "curves": curves,
        "seams": seam_rows,
        "scenes": scene_info,
        "geometry": geometry_info,
        "settings": settings.as_dict(),
        "timings": timings,
    }


# ---------------------------------------------------------------------------------------------------- models
class ModelMetrics:
    """The model-based metrics asked for (conf/eval.yaml `models`), with their weights loaded once."""

    def __init__(self, cfg: Any | None) -> None:
        from longgen.eval.semantic import MODEL_METRICS

        cfg = dict(cfg or {})
        requested = cfg.get("metrics", "auto")
        self.explicit = requested != "auto"
        if requested == "auto":
            names = [m for m, key in MODEL_METRICS.items() if cfg.get(key) not in (None, "")]
        elif isinstance(requested, str):
            names = [requested]
        else:
            names = [str(m) for m in (requested or [])]
        unknown = [m for m in names if m not in MODEL_METRICS]
        if unknown:
            raise UsageError(f"unknown model metric {unknown[0]!r}; choose from {', '.join(MODEL_METRICS)} (or models.metrics=auto)")
        self.names = names
        self.paths = {key: cfg.get(key) for key in ("clip", "dino")}
        self.device = str(cfg.get("device") or "cpu")
        self.batch = int(cfg.get("batch") or 16)
        if self.batch < 1:
            raise UsageError(f"models.batch={self.batch} must be at least 1")
        self.clip = self.dino = None

    def load(self) -> None:
        """Load the weights the requested metrics need (a one-line error if they are not given or not a model)."""
        from longgen.eval.semantic import Clip, Dino

        for name in self.names:
            if name in ("prompt_fidelity", "background_consistency") and self.clip is None:
                self.clip = Clip(self.paths["clip"], self.device, name)
            if name == "subject_consistency" and self.dino is None:
                self.dino = Dino(self.paths["dino"], self.device, name)

    def measure(self, frames: np.ndarray, prompts: tuple[str, list[str], np.ndarray] | None) -> tuple[dict, dict]:
        """The metrics of frames held in memory (uint8 [T, H, W, 3])."""
        self.start()
        self.add(frames)
        return self.finish(prompts)

    def start(self) -> None:
        """Begin a video whose frames arrive in chunks (`add`), then `finish`."""
        self._clip_images: list[np.ndarray] = []
        self._dino_images: list[np.ndarray] = []
        self.seconds = 0.0

    def add(self, frames: np.ndarray) -> None:
        """The image features of one chunk of frames (uint8 [n, H, W, 3]); the frames are not kept."""
        t0 = time.perf_counter()
        if self.clip is not None:
            self._clip_images.append(self.clip.image_features(frames, self.batch))
        if "subject_consistency" in self.names:
            self._dino_images.append(self.dino.image_features(frames, self.batch))
        self.seconds += time.perf_counter() - t0

    def finish(self, prompts: tuple[str, list[str], np.ndarray] | None) -> tuple[dict, dict]:
        from longgen.eval.semantic import prompt_fidelity, vbench_consistency

        summary: dict[str, Any] = {}
        detail: dict[str, Any] = {}
        if not self.names:
            return summary, detail
        clip_images = np.concatenate(self._clip_images) if self._clip_images else None
        if "subject_consistency" in self.names:
            summary["subject_consistency"] = vbench_consistency(np.concatenate(self._dino_images))
        if "background_consistency" in self.names:
            summary["background_consistency"] = vbench_consistency(clip_images)
        if "prompt_fidelity" in self.names and prompts is not None:
            glob, local, frame_prompt = prompts
            texts = self.clip.text_features([glob, *local])  # [1 + P, D]
            summary["prompt_fidelity_global"] = prompt_fidelity(clip_images, texts[:1], np.zeros(len(clip_images), int))[0]
            per_segment = prompt_fidelity(clip_images, texts[1:], frame_prompt)
            present = [v for v in per_segment if np.isfinite(v)]
            summary["prompt_fidelity_local"] = float(np.mean(present))
            detail["prompt_fidelity_segments"] = per_segment
        return summary, detail


def frame_prompts(target: Target, frames: int, prompt: str | None) -> tuple[str, list[str], np.ndarray] | None:
    """(global prompt, local prompts, local-prompt index of each frame) for prompt fidelity, or None if unknown.
    Frames map to a story segment through their latent frame, as generate maps windows (by position)."""
    from longgen.story import Story

    if target.story is not None:
        story = Story.from_dict(target.story, where=f"{target.run_dir}/story.json")
    elif prompt:
        story = Story.single(str(prompt))
    else:
        return None
    geometry = target.geometry
    if geometry is not None:
        index = [story.prompt_index_at(geometry.latent_of(t) + 0.5, geometry.latent_length) for t in range(frames)]
    else:
        index = [story.prompt_index_at(t + 0.5, frames) for t in range(frames)]
    glob = story.global_prompt.strip() or story.local_prompts[0]
    return glob, list(story.local_prompts), np.asarray(index, dtype=int)


# ---------------------------------------------------------------------------------------------------- one target
def run_facts(target: Target) -> dict:
    manifest = target.manifest or {}
    return {
        "sampler": (manifest.get("sampler") or {}).get("name"),
        "seed": manifest.get("seed"),
        "backbone": (manifest.get("backbone") or {}).get("name"),
        "overrides": target.overrides,
    }


def evaluate_target(target: Target, settings: Settings, models: ModelMetrics | None = None,
                    prompt: str | None = None) -> dict:
    """Read the target's video (and latents), run every metric, return the eval.json content."""
    t0 = time.perf_counter()
    with_models = models is not None and bool(models.names)
    if with_models:
        models.start()
    video = read_streamed(target.video, settings.analysis_long_side, chunk=models.batch if with_models else 16,
                          on_chunk=models.add if with_models else None)  # the model metrics see full frames
    latents = read_latents(target.latents) if target.latents else None
    result = {"schema": SCHEMA, "label": target.label, "video": str(target.video),
              "run_dir": str(target.run_dir) if target.run_dir else None, "run": run_facts(target)}
    result.update(measure_video(video, settings, target.geometry, latents))
    if with_models:
        t1 = time.perf_counter()
        prompts = frame_prompts(target, video.frames, prompt)
        if prompts is None and "prompt_fidelity" in models.names:
            log.info("prompt_fidelity skipped for %s: no story.json beside it and no prompt=…", target.video)
        summary, detail = models.finish(prompts)
        result["summary"].update(summary)
        result["models"] = {"metrics": models.names, **{k: str(v) for k, v in models.paths.items() if v}, **detail}
        result["timings"]["models"] = round(models.seconds + time.perf_counter() - t1, 3)
    result["timings"]["total"] = round(time.perf_counter() - t0, 3)
    return result


def to_json(value: Any) -> Any:
    """numpy → Python, NaN/inf → null, floats to 7 significant digits (curves stay compact)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.7g}") if math.isfinite(value) else None
    return value


def write_json_atomic(data: Any, path: Path) -> None:
    """eval.json through a fresh, unpredictable temporary file in its directory, renamed into place."""
    write_text(path, json.dumps(to_json(data), indent=1, allow_nan=False) + "\n")


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def evaluate_run_dir(run_dir: str | Path) -> dict:
    """`generate eval=true`: the weight-free metrics of a finished run, written to its eval.json and printed."""
    from longgen.eval.inputs import run_target
    from longgen.eval.table import print_table

    run_dir = Path(run_dir)
    result = to_json(evaluate_target(run_target(run_dir), default_settings()))
    write_json_atomic(result, run_dir / "eval.json")
    print_table([result])
    log.info("wrote %s (%.1f s)", run_dir / "eval.json", result["timings"]["total"])
    return result

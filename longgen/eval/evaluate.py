"""Run the metrics on one video and write its eval.json.

Stages, each from the metric modules (pure functions of frames, or the same fed one frame at a time):
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

Memory: a video file is read one frame at a time and every stage is fed as it arrives (measured.py,
`measure_file`): the full-resolution differences are taken against the previous frame, flow against the previous
analysis frame, PySceneDetect keeps its previous frame, and the model metrics see chunks of `models.batch` full
frames; what is kept per frame is a few floats (curves, Lab statistics; the model metrics' feature vectors, 2–3 kB)
and, on disk, one uint8 grey stats frame for the SSIM curve and repetition. So memory is flat in the video's
length (benchmarks/README.md, "eval memory vs length"). `measure` takes frames already in memory instead.

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
from typing import Any, Iterator

import numpy as np

from longgen.errors import UsageError
from longgen.eval import drift, flicker, flow, seams, similarity
from longgen.eval.inputs import Geometry, Target, read_latent_moves
from longgen.eval.measured import Measured, measured_in_memory, measure_file
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


# ---------------------------------------------------------------------------------------------------- stages
def flow_stage(curves: flow.FlowCurves, fps: float, height: int, width: int):
    is_dynamic, share = flow.dynamic_degree(curves.motion_top5, fps, height, width)
    summary = {
        "warp_error": _nanmean(curves.warp),
        "motion_px": float(np.mean(curves.motion)),
        "dynamic": bool(is_dynamic),
        "dynamic_share": share,
    }
    return summary, {"warp": curves.warp, "motion_px": curves.motion}


def seam_stage(differences: np.ndarray, warp: np.ndarray, geometry: Geometry | None, moves: np.ndarray | None,
               settings: Settings):
    """Per-boundary seam ratios: frame difference and warping error (pixels), and the latents' transition
    differences `moves` [F] when there are latents; empty without a plan."""
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
    if moves is not None and len(moves) == length:
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


def drift_stage(stats: drift.LabStats, fps: float, reference_frames: int):
    delta = drift.delta_e_from_reference(stats, reference_frames)
    worst = int(np.argmax(delta))
    summary = {
        "drift_max_delta_e": float(delta[worst]),
        "drift_max_at_frame": worst,
        "drift_L_per_s": drift.slope_per_second(stats.L, fps),
        "drift_a_per_s": drift.slope_per_second(stats.a, fps),
        "drift_b_per_s": drift.slope_per_second(stats.b, fps),
        "drift_reference_frames": min(reference_frames, len(stats.L)),
    }
    curves = {"lab_L": stats.L, "lab_a": stats.a, "lab_b": stats.b, "lab_L_std": stats.L_std, "delta_e": delta}
    return summary, curves


def scene_stage(cuts: list[int], settings: Settings):
    return {"num_scenes": len(cuts) + 1}, {"cuts": cuts, "threshold": settings.scene_threshold,
                                           "min_scene_len": settings.scene_min_len}


def similarity_stage(measured: Measured, settings: Settings):
    lags, values = measured.ssim_lags, measured.ssim
    score, lag = measured.repetition
    share, longest = similarity.freeze(measured.differences, settings.freeze_mae)
    far = values[lags >= (measured.frames - 1) / 2]
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
    """Every weight-free metric of uint8 RGB frames [T, H, W, 3] held in memory (the plain whole-array path; a
    video file is read one frame at a time instead, `measured.measure_file`, with the same results)."""
    moves = None if latents is None else seams.transition_differences_from_latents(latents)
    return summarise(measured_in_memory(frames, fps, settings), settings, geometry, moves)


def summarise(measured: Measured, settings: Settings, geometry: Geometry | None = None,
              moves: np.ndarray | None = None) -> dict:
    """The eval.json content (less the run facts and the model metrics) of a video's measurements; `moves` [F]:
    the latents' transition differences, if any."""
    timings = {k: round(v, 3) for k, v in measured.timings.items()}
    differences = measured.differences
    summary: dict[str, Any] = {"flicker": flicker.temporal_flickering(differences)}
    curves: dict[str, Any] = {"frame_mae": differences}
    part, more = flow_stage(measured.flow, measured.fps, measured.height, measured.width)
    summary.update(part)
    curves.update(more)
    with _timed(timings, "seams"):
        part, seam_rows, geometry_info = seam_stage(differences, curves["warp"], geometry, moves, settings)
        summary.update(part)
    reference = geometry.frames_for(geometry.window) if geometry else settings.drift_reference_frames
    part, more = drift_stage(measured.lab, measured.fps, reference)
    summary.update(part)
    curves.update(more)
    part, scene_info = scene_stage(measured.cuts, settings)
    summary.update(part)
    part, more = similarity_stage(measured, settings)
    summary.update(part)
    curves.update(more)
    return {
        "video_info": {"frames": measured.frames, "fps": measured.fps, "width": measured.width,
                       "height": measured.height, "analysis_size": list(measured.analysis_size),
                       "analysis_factor": measured.factor, "stats_size": list(measured.stats_size)},
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
    measured = measure_file(target.video, settings, chunk=models.batch if with_models else 16,
                          on_chunk=models.add if with_models else None)  # the model metrics see full frames
    moves = read_latent_moves(target.latents) if target.latents else None
    result = {"schema": SCHEMA, "label": target.label, "video": str(target.video),
              "run_dir": str(target.run_dir) if target.run_dir else None, "run": run_facts(target)}
    result.update(summarise(measured, settings, target.geometry, moves))
    if with_models:
        t1 = time.perf_counter()
        prompts = frame_prompts(target, measured.frames, prompt)
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

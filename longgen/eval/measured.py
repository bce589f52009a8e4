"""The per-frame and per-pair measurements of a video that the eval summaries are made of, taken two ways:

- `measure_file`: the video read one frame at a time (ffmpeg through imageio-ffmpeg) and every metric fed as it
  arrives (`VideoStream`), so memory is flat in the video's length: what stays in memory is the previous full
  frame and the previous analysis frame, each stage's O(1) state (PySceneDetect's previous frame), and a few floats
  per frame (the difference, warp and motion curves, 4 Lab statistics). The two metrics that compare frames far
  apart (the SSIM curve and repetition) read one uint8 grey stats frame per frame back from a temporary file
  (`similarity.GreyStore`: h·w bytes a frame on disk, 21.6 kB at 180×120), holding at most 64 frames' SSIM maps
  and two blocks of frames for the correlation tiles (≤ 20 MiB each, `similarity.TILE_BYTES`);
- `measured_in_memory`: the plain reference over frames already held in memory, each metric over the whole stack.

Both give the same numbers (tests/test_eval_stream.py): identical curves, cuts and SSIM values; repetition equal to
float rounding of its correlations (see similarity.py).

Sizes: flow, warping error and scene detection use "analysis frames", area-downscaled by the smallest whole factor
k that brings the long side to at most `settings.analysis_long_side`; Lab statistics, SSIM and repetition use
"stats frames", the analysis frames downscaled again to a long side of at most `settings.stats_long_side`
(evaluate.py says why).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from longgen.errors import UsageError
from longgen.eval import drift, flicker, flow, scenes, similarity
from longgen.eval.settings import Settings

STAGES = ("flicker", "downscale", "flow", "drift", "scenes", "similarity")


def analysis_factor(height: int, width: int, long_side: int) -> int:
    """The smallest whole factor k with max(H, W)/k ≤ long_side."""
    return max(1, math.ceil(max(height, width) / long_side))


def scaled_size(height: int, width: int, k: int) -> tuple[int, int]:
    """(height, width) of a frame after `downscale` by k."""
    return (height, width) if k == 1 else (max(1, height // k), max(1, width // k))


def downscale(frame: np.ndarray, k: int) -> np.ndarray:
    """One uint8 frame [H, W, 3] area-downscaled by the whole factor k → [H // k, W // k, 3]."""
    if k == 1:
        return frame
    h, w = scaled_size(*frame.shape[:2], k)
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def analysis_frames(frames: np.ndarray, long_side: int) -> tuple[np.ndarray, int]:
    """Frames area-downscaled by the smallest whole factor k with max(H, W)/k ≤ long_side, and k."""
    k = analysis_factor(*frames.shape[1:3], long_side)
    if k == 1:
        return frames, 1
    return np.stack([downscale(f, k) for f in frames]), k


def repetition_gap(fps: float, settings: Settings) -> int:
    """The least distance, in frames, at which a frame counts as reappearing."""
    return max(2, round(fps * settings.repetition_gap_s))


@dataclass
class Measured:
    """What the summaries of a video are made of, however its frames were read."""

    fps: float
    height: int
    width: int
    frames: int
    factor: int                     # analysis frames = frames downscaled by this
    analysis_size: tuple[int, int]  # (width, height) of the analysis frames
    stats_size: tuple[int, int]     # (width, height) of the stats frames
    differences: np.ndarray         # [T−1] mean |frame_{t+1} − frame_t| at full resolution, grey levels
    flow: flow.FlowCurves           # [T−1] each
    lab: drift.LabStats             # [T] each
    cuts: list[int]                 # first frames of the scenes after the first
    ssim_lags: np.ndarray           # [D] distances of the SSIM curve
    ssim: np.ndarray                # [D] its mean SSIM at each distance
    repetition: tuple[float, int]   # (share of frames that reappear, median distance of their best match)
    timings: dict[str, float]


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def measured_in_memory(frames: np.ndarray, fps: float, settings: Settings) -> Measured:
    """The plain reference: every metric over the whole stack of uint8 RGB frames [T, H, W, 3] held in memory."""
    timings: dict[str, float] = {}
    with _timed(timings, "flicker"):
        differences = flicker.frame_differences(frames)
    with _timed(timings, "downscale"):
        small, factor = analysis_frames(frames, settings.analysis_long_side)  # [T, h, w, 3]
        tiny, _ = analysis_frames(small, settings.stats_long_side)  # [T, h', w', 3]
    with _timed(timings, "flow"):
        curves = flow.flow_curves(small, settings.flow, scale=float(factor))
    with _timed(timings, "drift"):
        lab = drift.lab_statistics(tiny)
    with _timed(timings, "scenes"):
        cuts = scenes.scene_cuts(small, fps, settings.scene_threshold, settings.scene_min_len)
    with _timed(timings, "similarity"):
        lags, values = similarity.lag_curve(similarity.SsimFrames(tiny), settings.ssim_pairs_per_lag)
        repeated = similarity.repetition(tiny, repetition_gap(fps, settings))
    return Measured(fps, frames.shape[1], frames.shape[2], len(frames), factor, (small.shape[2], small.shape[1]),
                    (tiny.shape[2], tiny.shape[1]), differences, curves, lab, cuts, lags, values, repeated, timings)


class VideoStream:
    """Every metric fed one full frame at a time (`add`), then `finish`; memory flat in the number of frames
    (the module docstring lists what is kept). Close it (`with`) to delete its temporary file."""

    def __init__(self, fps: float, height: int, width: int, settings: Settings) -> None:
        self.fps, self.height, self.width, self.settings = fps, height, width, settings
        self.factor = analysis_factor(height, width, settings.analysis_long_side)
        self.small_size = scaled_size(height, width, self.factor)  # (h, w) of the analysis frames
        self.stats_factor = analysis_factor(*self.small_size, settings.stats_long_side)
        self.tiny_size = scaled_size(*self.small_size, self.stats_factor)  # (h, w) of the stats frames
        self.flow = flow.FlowStream(settings.flow, scale=float(self.factor))
        self.scenes = scenes.SceneStream(fps, settings.scene_threshold, settings.scene_min_len)
        self.grey = similarity.GreyStore()
        self.differences: list[float] = []    # per pair
        self.lab: list[np.ndarray] = []       # per frame, float64 [4]
        self.previous: np.ndarray | None = None
        self.frames = 0
        self.timings = dict.fromkeys(STAGES, 0.0)

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.grey.file.close()

    def add(self, frame: np.ndarray) -> None:
        """One uint8 RGB frame [H, W, 3], the next of the video; it is not kept beyond the next call."""
        clock = _Clock(self.timings)
        if self.previous is not None:
            self.differences.append(float(cv2.absdiff(frame, self.previous).mean()))  # as flicker.frame_differences
        clock("flicker")
        small = downscale(frame, self.factor)  # [h, w, 3]
        tiny = downscale(small, self.stats_factor)  # [h', w', 3]
        clock("downscale")
        self.flow.add(small)
        clock("flow")
        self.lab.append(drift.frame_statistics(tiny))
        clock("drift")
        self.scenes.add(small)
        clock("scenes")
        self.grey.add(cv2.cvtColor(tiny, cv2.COLOR_RGB2GRAY))  # [h', w'] uint8, to disk
        clock("similarity")
        self.previous = frame
        self.frames += 1

    def finish(self) -> Measured:
        """The measurements of the frames added so far (at least 2)."""
        with _timed(self.timings, "similarity"):
            lags, values = similarity.lag_curve(similarity.StoredSsim(self.grey), self.settings.ssim_pairs_per_lag)
            repeated = similarity.stored_repetition(self.grey, repetition_gap(self.fps, self.settings))
        with _timed(self.timings, "scenes"):
            cuts = self.scenes.cuts()
        (h, w), (th, tw) = self.small_size, self.tiny_size
        return Measured(self.fps, self.height, self.width, self.frames, self.factor, (w, h), (tw, th),
                        np.asarray(self.differences, dtype=np.float64), self.flow.curves(),
                        drift.stack_statistics(self.lab), cuts, lags, values, repeated, self.timings)


class _Clock:
    """Adds the seconds since the previous call (or since it was made) to timings[name]."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] += now - self.t
        self.t = now


def measure_file(path: Path, settings: Settings, chunk: int = 16,
               on_chunk: Callable[[np.ndarray], None] | None = None) -> Measured:
    """Measure a video file read one frame at a time; `on_chunk` receives the full frames in chunks of `chunk`
    (uint8 [n, H, W, 3]) for the model metrics, so at most one chunk of full frames is held. One line when ffmpeg
    cannot read it or it has fewer than 2 frames."""
    frames = _decoded(path)
    fps, height, width = next(frames)
    held: list[np.ndarray] = []
    with VideoStream(fps, height, width, settings) as stream:
        for frame in frames:
            stream.add(frame)
            if on_chunk is not None:
                held.append(frame)
                if len(held) == chunk:
                    on_chunk(np.stack(held))
                    held = []
        if on_chunk is not None and held:
            on_chunk(np.stack(held))
        if stream.frames < 2:
            raise UsageError(f"{path} has {stream.frames} frame(s); at least 2 are needed to measure a video")
        return stream.finish()


def _decoded(path: Path) -> Iterator:
    """Yield (fps, height, width) once, then the frames one at a time (uint8 [H, W, 3]); one line (UsageError)
    when ffmpeg cannot read the file."""
    import imageio_ffmpeg

    reader = None
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = (int(v) for v in meta["size"])
        yield float(meta.get("fps") or 0) or 8.0, height, width
        for raw in reader:
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not a video ffmpeg can read ({reason})") from None
    finally:
        if reader is not None:
            reader.close()

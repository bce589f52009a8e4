"""Classical optical flow between consecutive frames: warping error and motion amount.

Flow: OpenCV's DIS (Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016; medium preset) or
Farnebäck ("Two-Frame Motion Estimation Based on Polynomial Expansion", SCIA 2003), on grey frames. Convention:
flow F from frame a to frame b satisfies a(x) ≈ b(x + F(x)).

Warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018, Sec. 4, E_warp): warp frame
t+1 back onto frame t with the forward flow, Ŵ(x) = I_{t+1}(x + F(x)), and average the squared colour distance over
the pixels M that are not occluded,

    E_t = Σ_x M(x) · ‖I_t(x) − Ŵ(x)‖²  /  Σ_x M(x)        (RGB in [0, 1], ‖·‖² summed over the 3 channels)
    E_warp = mean_t E_t

M comes from the forward–backward consistency check of Sundaram, Brox & Keutzer ("Dense point trajectories by
GPU-accelerated large displacement optical flow", ECCV 2010, Eq. 5): with the backward flow B sampled at the
forward target, B̃(x) = B(x + F(x)), a pixel is kept when
    |F + B̃|² ≤ 0.01 · (|F|² + |B̃|²) + 0.5
and its target x + F(x) lies inside the frame.

Motion amount: mean flow magnitude per pair (pixels of the original video per frame), and, as a dynamic-degree
proxy, VBench's "Dynamic Degree" rule (Huang et al., CVPR 2024; `vbench/dynamic_degree.py`) applied to this flow
instead of RAFT: per pair the mean of the largest 5 % of magnitudes; the video counts as dynamic when at least
round(4·T/16) of its T − 1 pairs exceed max(1, 8/fps) · 6 · min(H, W)/256 pixels. At 8 fps (CogVideoX) this is VBench's
rule exactly; at other rates VBench first subsamples the video to ≈ 8 fps, which is not done here.

Everything here runs on frames already downscaled by the caller (see evaluate.analysis_frames); `scale` converts
flow magnitudes back to pixels of the original video. Warping errors are those of the downscaled frames.
`flow_curves` takes frames held in memory; `FlowStream` computes the same numbers fed one frame at a time (it keeps
the previous frame and three floats per pair), which is how `longgen eval` reads a video of any length.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

METHODS = ("dis", "farneback")
# Sundaram et al. 2010, Eq. 5
_FB_RELATIVE = 0.01
_FB_ABSOLUTE = 0.5


class FlowEstimator:
    """Dense flow between two uint8 grey images [H, W] → float32 [H, W, 2] (dx, dy) with a(x) ≈ b(x + F(x))."""

    def __init__(self, method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown flow method {method!r}; choose one of {METHODS}")
        self.method = method
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._dis is not None:
            return self._dis.calc(a, b, None)
        # pyramid scale 0.5, 3 levels, 15 px window, 3 iterations, polynomial n=5, sigma 1.2 (OpenCV's example values)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates x, y as float32 [H, W] each (cached per frame size)."""
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return gx, gy


def target_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x + F_x, y + F_y, mask of targets inside the frame) for a flow [H, W, 2]."""
    gx, gy = _grid(*flow.shape[:2])
    map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
    h, w = flow.shape[:2]
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return map_x, map_y, inside


def _squared_norm(v: np.ndarray) -> np.ndarray:
    """Σ over the last axis of v², for [H, W, C] float32 (a matrix product: numpy's small-axis sums are slow)."""
    return (v * v) @ np.ones(v.shape[-1], dtype=v.dtype)


def _remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _fb_check(forward: np.ndarray, back: np.ndarray, inside: np.ndarray) -> np.ndarray:
    gap = _squared_norm(forward + back)
    bound = _FB_RELATIVE * (_squared_norm(forward) + _squared_norm(back)) + _FB_ABSOLUTE
    return inside & (gap <= bound)


def consistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow is undone by the backward flow at its target, and whose target is in the frame."""
    map_x, map_y, inside = target_maps(forward)
    return _fb_check(forward, _remap(backward, map_x, map_y), inside)  # backward sampled at x + F(x), [H, W, 2]


def warping_error(frame_a: np.ndarray, frame_b: np.ndarray, forward: np.ndarray, backward: np.ndarray) -> float:
    """Lai et al.'s E_t for one pair of uint8 RGB frames [H, W, 3] and their flows; NaN when every pixel is occluded."""
    map_x, map_y, inside = target_maps(forward)
    mask = _fb_check(forward, _remap(backward, map_x, map_y), inside)
    count = int(np.count_nonzero(mask))
    if count == 0:
        return float("nan")
    warped = _remap(frame_b.astype(np.float32), map_x, map_y)  # frame t+1 seen from frame t, grey levels [H, W, 3]
    per_pixel = _squared_norm(frame_a.astype(np.float32) - warped)  # [H, W] ‖·‖² over the channels
    return float(per_pixel.sum(where=mask, dtype=np.float64)) / count / (255.0 * 255.0)


@dataclass
class FlowCurves:
    warp: np.ndarray         # [T−1] warping error of pair (t, t+1)
    motion: np.ndarray       # [T−1] mean flow magnitude, original-video pixels per frame
    motion_top5: np.ndarray  # [T−1] mean of the largest 5 % of magnitudes (VBench's per-pair statistic), same unit


def flow_curves(frames: np.ndarray, method: str, scale: float = 1.0) -> FlowCurves:
    """Forward and backward flow of every consecutive pair of uint8 RGB frames [T, h, w, 3] held in memory."""
    estimate = FlowEstimator(method)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    n = len(frames) - 1
    warp, motion, top5 = np.empty(n), np.empty(n), np.empty(n)
    for t in range(n):
        warp[t], motion[t], top5[t] = pair_measures(estimate, frames[t], frames[t + 1], grey[t], grey[t + 1], scale)
    return FlowCurves(warp=warp, motion=motion, motion_top5=top5)


def pair_measures(estimate: FlowEstimator, frame_a: np.ndarray, frame_b: np.ndarray, grey_a: np.ndarray,
                  grey_b: np.ndarray, scale: float) -> tuple[float, float, float]:
    """(warping error, mean magnitude, mean of the top 5 % magnitudes) of one pair: RGB uint8 [h, w, 3] and their
    grey versions [h, w]; magnitudes × `scale` (pixels of the original video)."""
    forward = estimate(grey_a, grey_b)
    backward = estimate(grey_b, grey_a)
    warp = warping_error(frame_a, frame_b, forward, backward)
    # |F| per pixel, float32 [h·w]; not cv2.magnitude, whose last bits vary from call to call (its vector and scalar
    # paths split the pixels by where the buffer happens to be allocated)
    dx, dy = forward[..., 0], forward[..., 1]
    magnitude = np.sqrt(dx * dx + dy * dy).ravel() * np.float32(scale)
    return warp, float(magnitude.mean(dtype=np.float64)), top_share_mean(magnitude, 0.05)


class FlowStream:
    """The same curves as `flow_curves`, fed one frame at a time (`add`); holds only the previous frame."""

    def __init__(self, method: str, scale: float = 1.0) -> None:
        self.estimate = FlowEstimator(method)
        self.scale = scale
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # (RGB [h, w, 3], grey [h, w])
        self.rows: list[tuple[float, float, float]] = []  # per pair (warp, motion, top 5 %)

    def add(self, frame: np.ndarray) -> None:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.previous is not None:
            frame_a, grey_a = self.previous
            self.rows.append(pair_measures(self.estimate, frame_a, frame, grey_a, grey, self.scale))
        self.previous = (frame, grey)

    def curves(self) -> FlowCurves:
        rows = np.asarray(self.rows, dtype=np.float64).reshape(-1, 3)  # [T−1, 3]
        return FlowCurves(warp=rows[:, 0].copy(), motion=rows[:, 1].copy(), motion_top5=rows[:, 2].copy())


def top_share_mean(values: np.ndarray, share: float) -> float:
    """Mean of the largest `share` of `values` (at least one value)."""
    k = max(1, int(values.size * share))
    return float(np.partition(values, values.size - k)[values.size - k:].mean())


def dynamic_degree(motion_top5: np.ndarray, fps: float, height: int, width: int) -> tuple[bool, float]:
    """VBench's dynamic/static decision on the per-pair top-5 % magnitudes: (is dynamic, share of pairs above the
    threshold). `height`/`width` are those of the original video, `motion_top5` in its pixels."""
    threshold = max(1.0, 8.0 / fps) * 6.0 * min(height, width) / 256.0
    above = int(np.sum(motion_top5 > threshold))
    needed = round(4 * (len(motion_top5) + 1) / 16.0)  # VBench counts frames: round(4 · T / 16)
    return above >= needed, above / max(1, len(motion_top5))

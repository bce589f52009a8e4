"""Colour and exposure drift over the video, from per-frame CIELAB statistics.

Each frame is converted to CIELAB (OpenCV's sRGB → Lab with the D65 white point: L* in [0, 100], a*, b* about
[−127, 127]; CIE 15:2004) and summarised by its mean L*, a*, b* and the standard deviation of L* (contrast).
Drift is measured two ways:
- slope: least-squares line through each mean over time, in Lab units per second — a steady brightening,
  darkening or colour cast;
- deviation from the first window: ΔE*ab (CIE76: Euclidean distance in Lab) between each frame's mean colour and
  the mean colour of the frames of the first sampling window (or the first `reference_frames` frames of a video
  without a manifest); its maximum and where it occurs.
Means over a frame barely change under area downscaling, so the caller passes downscaled frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class LabStats:
    L: np.ndarray      # [T] mean L*
    a: np.ndarray      # [T] mean a*
    b: np.ndarray      # [T] mean b*
    L_std: np.ndarray  # [T] standard deviation of L* over the frame


def lab_statistics(frames: np.ndarray) -> LabStats:
    """Per-frame CIELAB statistics of uint8 RGB frames [T, H, W, 3]."""
    return stack_statistics([frame_statistics(frame) for frame in frames])


def frame_statistics(frame: np.ndarray) -> np.ndarray:
    """(mean L*, mean a*, mean b*, std L*) of one uint8 RGB frame [H, W, 3], float64 [4]: what a video read one
    frame at a time keeps of each frame for the drift metrics."""
    lab = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # [H, W, 3] float32
    stats = np.empty(4)
    stats[:3] = lab.reshape(-1, 3).mean(axis=0)
    stats[3] = lab[..., 0].std()
    return stats


def stack_statistics(rows: list[np.ndarray]) -> LabStats:
    """LabStats from the per-frame rows of `frame_statistics`, in frame order."""
    stats = np.stack(rows) if rows else np.empty((0, 4))  # [T, 4]
    return LabStats(L=stats[:, 0], a=stats[:, 1], b=stats[:, 2], L_std=stats[:, 3])


def slope_per_second(values: np.ndarray, fps: float) -> float:
    """Least-squares slope of `values` against time in seconds (0 for a single frame)."""
    if len(values) < 2:
        return 0.0
    seconds = np.arange(len(values)) / float(fps)
    return float(np.polyfit(seconds, values, 1)[0])


def delta_e_from_reference(stats: LabStats, reference_frames: int) -> np.ndarray:
    """ΔE*ab (CIE76) of each frame's mean colour from the mean colour of the first `reference_frames` frames."""
    lab = np.stack([stats.L, stats.a, stats.b], axis=1)  # [T, 3]
    reference = lab[: max(1, min(reference_frames, len(lab)))].mean(axis=0)  # [3]
    return np.sqrt(np.sum((lab - reference) ** 2, axis=1))

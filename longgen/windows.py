"""Window geometry for long videos made of overlapping fixed-length windows ("chunks").

A video of L latent frames is covered by windows of M latent frames (the backbone's native clip length) that
start every S frames (the stride). Following SynCoS (supplementary §B) and Gen-L-Video, the natural length for N
windows is L = M + S·(N − 1); for any other L the last window is aligned to the end so no tail frame is left
uncovered (the public Gen-L-Video code drops such frames; we never do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from longgen.errors import UsageError


@dataclass(frozen=True)
class WindowPlan:
    """Start frames of windows of `window` latent frames over a latent of `length` frames."""

    length: int
    window: int
    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        for s in self.starts:
            if s < 0 or s + self.window > self.length:
                raise ValueError(f"window start {s} does not fit a latent of {self.length} frames")

    @property
    def count(self) -> int:
        return len(self.starts)

    def centres(self) -> list[float]:
        """Centre of each window in latent-frame coordinates (frame i spans [i, i+1))."""
        return [s + self.window / 2 for s in self.starts]

    def coverage(self) -> list[int]:
        """How many windows cover each latent frame."""
        counts = [0] * self.length
        for s in self.starts:
            for f in range(s, s + self.window):
                counts[f] += 1
        return counts


def strided_plan(length: int, window: int, stride: int) -> WindowPlan:
    """Windows every `stride` frames from 0, plus an end-aligned last window when the stride does not land there."""
    check_geometry(length, window, stride)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return WindowPlan(length, window, tuple(starts))


def check_geometry(length: int, window: int, stride: int) -> None:
    if window <= 0:
        raise UsageError(f"the backbone's window must be positive, got {window}")
    if stride <= 0 or stride > window:
        raise UsageError(
            f"sampler.stride={stride} is invalid: it must be between 1 and the window length {window} (latent frames)"
        )
    if length < window:
        raise UsageError(
            f"the video ({length} latent frames) is shorter than one window ({window} latent frames): "
            f"use num_windows>=1 or length_factor>=1"
        )


#: length when none is given: the SynCoS paper's main setting (4x the native clip)
DEFAULT_LENGTH_FACTOR = 4.0


def latent_length(
    window: int,
    stride: int,
    temporal_compression: int,
    num_windows: int | None = None,
    length_factor: float | None = None,
    latent_frames: int | None = None,
) -> int:
    """Latent length L from at most one of: N windows, a multiple K of the native clip, or L itself.

    `length_factor=K` asks for K times the native number of video frames F = c·(M − 1) + 1 (c the VAE's temporal
    compression); it is rounded to the nearest whole number of windows, so that L = M + S·(N − 1) and every
    window sits on the stride grid (K = 4 on CogVideoX-2B gives N = 10, L = 49, 193 frames).
    """
    given = {k: v for k, v in dict(num_windows=num_windows, length_factor=length_factor, latent_frames=latent_frames).items() if v is not None}
    if len(given) > 1:
        raise UsageError(f"give only one of num_windows, length_factor, latent_frames (got {', '.join(given)}); "
                         f"set the other to null, e.g. length_factor=null after +experiment=…, which sets length_factor")
    if stride <= 0 or stride > window:
        check_geometry(window, window, stride)
    if num_windows is not None:
        if int(num_windows) != num_windows or num_windows < 1:
            raise UsageError(f"num_windows={num_windows} must be a whole number >= 1")
        return window + stride * (int(num_windows) - 1)
    if length_factor is not None:
        if not length_factor >= 1:
            raise UsageError(f"length_factor={length_factor} must be >= 1 (1 is the backbone's native clip length)")
        native_frames = temporal_compression * (window - 1) + 1
        target_latent = (length_factor * native_frames - 1) / temporal_compression + 1
        n = max(1, int(math.floor((target_latent - window) / stride + 0.5)) + 1)
        return window + stride * (n - 1)
    if latent_frames is not None:
        if int(latent_frames) != latent_frames or latent_frames < window:
            raise UsageError(
                f"latent_frames={latent_frames} must be a whole number of at least one window ({window} latent frames)"
            )
        return int(latent_frames)
    return latent_length(window, stride, temporal_compression, length_factor=DEFAULT_LENGTH_FACTOR)

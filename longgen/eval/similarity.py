"""Long-horizon similarity: SSIM at growing frame distances, repetition and freeze.

SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error Visibility to Structural
Similarity", IEEE TIP 2004, Eq. 13) on grey frames with their settings: an 11×11 Gaussian window of σ = 1.5,
C1 = (0.01·255)², C2 = (0.03·255)², averaged over the SSIM map:
    SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)).

Curve S(d): mean SSIM of frame pairs (t, t+d) for every distance d (up to `pairs_per_lag` pairs per distance,
spread evenly over the video). A consistent video keeps S high at large d; drift makes it fall.

Repetition (a loop, or content that comes back): frame t "reappears" when some frame at least `gap` frames away
(one second by default) is more similar to it than its own neighbouring frames are. Similarity here is the Pearson
correlation of the grey frames (zero-mean, unit-norm vectors; all pairs at once as one matrix product), so the
self-calibrated test "far > near" needs no threshold. Score = share of frames that reappear; lag = the median
distance to their best far match (the closest of equally good ones: the loop period). A continuous shot scores
≈ 0, a clip played in a loop 1. An exactly frozen video scores 0 (nothing is more similar than the neighbours);
a near-static one can score anything, since noise decides "far > near" — read it with the freeze share and motion.

Freeze: share of consecutive pairs whose mean absolute difference is below a threshold (grey levels), and the
longest run of such frames.
"""

from __future__ import annotations

import cv2
import numpy as np

_WINDOW = (11, 11)
_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


class SsimFrames:
    """Grey frames with their local means and variances precomputed, so each pair costs one more blur."""

    def __init__(self, frames: np.ndarray) -> None:
        self.grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
        self.mu = [_blur(g) for g in self.grey]
        self.var = [_blur(g * g) - m * m for g, m in zip(self.grey, self.mu)]

    def __len__(self) -> int:
        return len(self.grey)

    def pair(self, i: int, j: int) -> float:
        mu_x, mu_y = self.mu[i], self.mu[j]
        cov = _blur(self.grey[i] * self.grey[j]) - mu_x * mu_y
        num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
        den = (mu_x * mu_x + mu_y * mu_y + _C1) * (self.var[i] + self.var[j] + _C2)
        return float(np.mean(num / den))


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, _WINDOW, _SIGMA, borderType=cv2.BORDER_REFLECT_101)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB frames [H, W, 3] (on their grey versions)."""
    return SsimFrames(np.stack([a, b])).pair(0, 1)


def lag_curve(frames: SsimFrames, pairs_per_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances d = 1 … T−4 (at least 1), mean SSIM at each): every distance keeps at least 4 pairs when T allows."""
    n = len(frames)
    lags = np.arange(1, max(2, n - 3))
    lags = lags[lags < n]
    values = np.empty(len(lags))
    for k, d in enumerate(lags):
        starts = np.unique(np.round(np.linspace(0, n - 1 - d, min(pairs_per_lag, n - d))).astype(int))
        values[k] = np.mean([frames.pair(int(t), int(t + d)) for t in starts])
    return lags, values


def repetition(frames: np.ndarray, gap: int) -> tuple[float, int]:
    """(share of frames that reappear at least `gap` frames away, median distance of their best match) for uint8
    RGB frames [T, H, W, 3]; (0, 0) when the video is shorter than gap + 1 frames."""
    n = len(frames)
    if n <= gap or n < 2:
        return 0.0, 0
    v = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel() for f in frames])  # [T, H·W]
    v -= v.mean(axis=1, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    corr = v @ v.T  # [T, T] Pearson correlation of every pair of frames
    idx = np.arange(n)
    near = np.full(n, -np.inf)
    near[:-1] = np.maximum(near[:-1], corr[idx[:-1], idx[:-1] + 1])
    near[1:] = np.maximum(near[1:], corr[idx[1:], idx[1:] - 1])
    distance = np.abs(idx[:, None] - idx[None, :])  # [T, T]
    far = np.where(distance >= gap, corr, -np.inf)  # [T, T] only frames at least `gap` away
    best = far.max(axis=1)  # [T]
    again = best > near + 1e-6
    if not again.any():
        return 0.0, 0
    # the distance to the best far match; among equally good ones (a loop repeats many times) the closest
    period = np.where(far >= best[:, None] - 1e-9, distance, n).min(axis=1)
    return float(again.mean()), int(np.median(period[again]))


def freeze(pair_differences: np.ndarray, threshold: float) -> tuple[float, int]:
    """(share of consecutive pairs below `threshold`, longest run of frozen frames counted in frames)."""
    still = pair_differences < threshold
    longest = run = 0
    for s in still:
        run = run + 1 if s else 0
        longest = max(longest, run)
    return float(still.mean()) if len(still) else 0.0, longest + 1 if longest else 0

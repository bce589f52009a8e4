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

The SSIM curve and repetition compare frames far apart, so a video read one frame at a time keeps one compact
descriptor per frame for them: its grey stats frame (uint8, h·w bytes), in a `GreyStore` on disk rather than in
memory. `StoredSsim` and `stored_repetition` compute from it the same numbers as `SsimFrames` and `repetition`
compute from frames in memory: identical SSIM values; correlations equal to float rounding (the [T, T] product is
taken in tiles, and BLAS may sum a tile's dot products in another order than the whole matrix's).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Callable, Iterator

import cv2
import numpy as np

_WINDOW = (11, 11)
_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


class SsimFrames:
    """Grey frames with their local means and variances precomputed, so each pair costs one more blur."""

    def __init__(self, frames: np.ndarray) -> None:
        prepared = [_prepare(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)) for f in frames]
        self.grey = [p[0] for p in prepared]
        self.mu = [p[1] for p in prepared]
        self.var = [p[2] for p in prepared]

    def __len__(self) -> int:
        return len(self.grey)

    def pair(self, i: int, j: int) -> float:
        return _ssim((self.grey[i], self.mu[i], self.var[i]), (self.grey[j], self.mu[j], self.var[j]))


class StoredSsim:
    """The `SsimFrames` interface over a `GreyStore` on disk: a frame's mean and variance maps are recomputed when
    it is read again, and only the last `cache` frames' maps are kept (3 float32 maps each)."""

    def __init__(self, store: "GreyStore", cache: int = 64) -> None:
        self.store = store
        self.prepared = functools.lru_cache(maxsize=cache)(lambda i: _prepare(store.frame(i)))

    def __len__(self) -> int:
        return len(self.store)

    def pair(self, i: int, j: int) -> float:
        return _ssim(self.prepared(i), self.prepared(j))


def _prepare(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey, local mean, local variance) as float32 [h, w] each, of one uint8 grey frame [h, w]."""
    g = grey.astype(np.float32)
    mu = _blur(g)
    return g, mu, _blur(g * g) - mu * mu


def _ssim(x: tuple[np.ndarray, ...], y: tuple[np.ndarray, ...]) -> float:
    """Mean SSIM of two prepared frames (see `_prepare`)."""
    (gx, mu_x, var_x), (gy, mu_y, var_y) = x, y
    cov = _blur(gx * gy) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2)
    return float(np.mean(num / den))


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, _WINDOW, _SIGMA, borderType=cv2.BORDER_REFLECT_101)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB frames [H, W, 3] (on their grey versions)."""
    return SsimFrames(np.stack([a, b])).pair(0, 1)


def lag_curve(frames: SsimFrames | StoredSsim, pairs_per_lag: int) -> tuple[np.ndarray, np.ndarray]:
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
    v = _unit_rows(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))  # [T, H·W]
    return repetition_of(v @ v.T, gap)  # [T, T] Pearson correlation of every pair of frames


def repetition_of(corr: np.ndarray, gap: int) -> tuple[float, int]:
    """`repetition`'s rule applied to the correlation matrix [T, T] of T > gap frames."""
    n = len(corr)
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


class GreyStore:
    """The grey stats frames of a video read one frame at a time, for the metrics that compare frames far apart
    (the SSIM curve, repetition): uint8 [h, w] per frame, appended to an unnamed temporary file (deleted when
    closed; in $TMPDIR) instead of memory, so memory stays flat in the length while disk holds h·w bytes a frame
    (180×120: 21.6 kB, 207 MB for ten minutes at 16 fps). Frames are read back with pread, through the page cache
    and not the process's resident memory."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(buffering=0)
        self.shape: tuple[int, int] | None = None
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __enter__(self) -> "GreyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def add(self, grey: np.ndarray) -> None:
        """Append one uint8 grey frame [h, w] (every frame of a video has the same size)."""
        self.shape = self.shape or grey.shape
        if grey.shape != self.shape:
            raise ValueError(f"frame of size {grey.shape} after frames of size {self.shape}")
        data = memoryview(np.ascontiguousarray(grey, dtype=np.uint8)).cast("B")
        while data:
            data = data[self.file.write(data):]
        self.count += 1

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Frames start … stop − 1 as uint8 [stop − start, h, w]."""
        size = self.shape[0] * self.shape[1]
        data = os.pread(self.file.fileno(), size * (stop - start), size * start)
        return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, *self.shape)

    def frame(self, index: int) -> np.ndarray:
        return self.frames(index, index + 1)[0]


TILE_BYTES = 20 << 20  # float64 bytes of one block of frames for the correlation tiles (two are held)


def stored_repetition(store: GreyStore, gap: int, block: int | None = None) -> tuple[float, int]:
    """`repetition` of the frames in a store, computed tile by tile: the [T, T] correlation matrix is never held,
    only [block, block] tiles of it (the upper triangle) and two [block, h·w] float64 blocks of frames; by default
    as many frames as fit TILE_BYTES (32 … 256; 121 at 180×120, 256 at 120×80)."""
    n = len(store)
    if n <= gap or n < 2:
        return 0.0, 0
    if block is None:
        block = int(np.clip(TILE_BYTES // (8 * store.shape[0] * store.shape[1]), 32, 256))
    return tiled_repetition(lambda wanted: _tiles(store, block, wanted), n, gap)


def tiled_repetition(tiles: Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]], n: int,
                     gap: int) -> tuple[float, int]:
    """`repetition_of` the correlation matrix of n > gap frames given as tiles: `tiles(wanted)` yields (row
    indices, column indices, correlations) of every tile on or above the diagonal that touches a wanted frame.
    One pass finds each frame's nearest-neighbour and best far correlation and, as it goes, the distance of its
    closest match within 1e-9 of the best so far; frames that reappear and whose best rose by 1e-9 or less during
    the pass (an earlier candidate may have dropped out of the tolerance) get a second pass against their final
    best — exactly the rule of `repetition_of`."""
    matches = _Matches(n)
    for rows, cols, corr in tiles(np.ones(n, bool)):
        distance = np.abs(np.subtract.outer(rows, cols))  # [r, c]
        adjacent = np.where(distance == 1, corr, -np.inf)
        far = np.where(distance >= gap, corr, -np.inf)  # [r, c] only frames at least `gap` apart
        matches.update(rows, adjacent.max(axis=1), far, distance)
        matches.update(cols, adjacent.max(axis=0), far.T, distance.T)
    again = matches.best > matches.near + 1e-6
    if not again.any():
        return 0.0, 0
    redo = again & matches.ambiguous
    period = matches.period
    if redo.any():
        period[redo] = n
        best = matches.best
        for rows, cols, corr in tiles(redo):
            distance = np.abs(np.subtract.outer(rows, cols))  # [r, c]
            far = np.where(distance >= gap, corr, -np.inf)
            for index, f, d in ((rows, far, distance), (cols, far.T, distance.T)):
                closest = np.where(f >= best[index, None] - 1e-9, d, n).min(axis=1)
                period[index] = np.where(redo[index], np.minimum(period[index], closest), period[index])
    return float(again.mean()), int(np.median(period[again]))


class _Matches:
    """Per frame, over the tiles seen so far: the best correlation with a neighbour (`near`) and with a frame far
    away (`best`), the distance of the closest far frame within 1e-9 of `best` (`period`), and whether `best` ever
    rose by 1e-9 or less (`ambiguous`: then an earlier candidate may have dropped out of the tolerance)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.near = np.full(n, -np.inf)
        self.best = np.full(n, -np.inf)
        self.period = np.full(n, n)
        self.ambiguous = np.zeros(n, bool)

    def update(self, index: np.ndarray, near: np.ndarray, far: np.ndarray, distance: np.ndarray) -> None:
        """Frames `index` [k] against one tile: their neighbour correlations [k], far correlations [k, m] (−inf
        where not far) and distances [k, m]."""
        self.near[index] = np.maximum(self.near[index], near)
        old = self.best[index]
        top = far.max(axis=1)  # [k]
        best = np.maximum(old, top)
        self.ambiguous[index] |= (top > old) & (top <= old + 1e-9)
        closest = np.where(far >= best[:, None] - 1e-9, distance, self.n).min(axis=1)  # [k]
        reset = top > old + 1e-9  # every earlier candidate is now more than 1e-9 below the best
        self.period[index] = np.where(reset, closest, np.minimum(self.period[index], closest))
        self.best[index] = best


def _tiles(store: GreyStore, block: int, wanted: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(row indices [r], column indices [c], Pearson correlations [r, c]) of every tile on or above the diagonal of
    the frames' correlation matrix that touches a `wanted` frame (bool [T])."""
    n = len(store)
    for r0 in range(0, n, block):
        rows = np.arange(r0, min(n, r0 + block))
        row_vectors = None
        for c0 in range(r0, n, block):
            cols = np.arange(c0, min(n, c0 + block))
            if not (wanted[rows].any() or wanted[cols].any()):
                continue
            if row_vectors is None:
                row_vectors = _unit_rows(store.frames(rows[0], rows[-1] + 1))
            col_vectors = row_vectors if c0 == r0 else _unit_rows(store.frames(cols[0], cols[-1] + 1))
            yield rows, cols, row_vectors @ col_vectors.T


def _unit_rows(grey: np.ndarray) -> np.ndarray:
    """uint8 grey frames [n, h, w] → zero-mean, unit-norm float64 rows [n, h·w] (as in `repetition`)."""
    v = grey.reshape(len(grey), -1).astype(np.float64)
    v -= v.mean(axis=1, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v

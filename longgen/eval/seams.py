"""Seam score: does the video jump where the sampler's windows begin or end?

Long videos here are sampled as overlapping windows of latent frames (manifest.json `windows`: [start, end) in
latent frames). Where the set of windows covering a frame changes — at every window start > 0 and every window end
< L — fusion weights change abruptly, and a visible jump ("seam") can appear between latent frames b−1 and b.

Pixels of a latent frame (CogVideoX's causal VAE, temporal compression c = 4; `frames_for` in
longgen/backbones/cogvideox.py gives c·(L−1)+1 frames): latent 0 decodes to pixel frame 0 and latent f ≥ 1 to
pixel frames c·(f−1)+1 … c·f. So the transition b−1 → b is the pixel pair (c·(b−1), c·(b−1)+1).

Score of a boundary b: the difference across it against a local reference,

    ratio(b) = (D_b + ε) / (median{D_b' : b' within ±R latent frames of b, b' ≠ b, b' not a boundary} + ε)

where D is a per-transition difference:
- pixels: the mean absolute frame difference across the transition (grey levels; the per-pair curve of
  flicker.frame_differences taken at the transition pairs) — the measure the issue asks for;
- motion-compensated: the warping error across the transition (flow.py) — in a moving shot the plain frame
  difference is dominated by motion, so a brightness or content jump of the size of that motion hides in it, while
  after warping it stands out (a +25 grey-level jump in a 3.5 px/frame pan: ratio 1.4 in frame difference, 30 in
  warping error);
- latents: mean |z_b − z_{b−1}| of the latents themselves when latents.safetensors exists. Only transitions between latent frames serve as reference: a causal video VAE decodes
each latent frame into a block of c frames, so the pixel change between blocks is typically larger than inside one
and must be compared with its own kind. If fewer than two non-boundary transitions lie within ±R, all other
transitions within ±R are used. ε keeps a static video at ratio 1 (0.5 grey level for frame differences; for
warping errors 1 % of the median transition difference but at least the error of half a grey level in every
channel, 3·(0.5/255)²; for latents 1 % of the median). A boundary is flagged when its frame-difference or
its warping-error ratio exceeds the threshold (default 2); latent ratios are flagged separately.
"""

from __future__ import annotations

import numpy as np


def window_boundaries(windows: list[tuple[int, int]], length: int) -> list[int]:
    """Latent indices b in (0, L) where a window starts or ends: the transition between latent frames b−1 and b."""
    edges = {s for s, _ in windows} | {e for _, e in windows}
    return sorted(b for b in edges if 0 < b < length)


def pixel_pair(boundary: int, compression: int) -> int:
    """Index p of the decoded frame pair (p, p+1) that straddles the latent transition boundary−1 → boundary."""
    return compression * (boundary - 1)


def transition_differences_from_pixels(pair_differences: np.ndarray, length: int, compression: int) -> np.ndarray:
    """D[b] for b = 1 … L−1 (D[0] unused, NaN) from a per-pair curve of the video [T−1] (frame differences or
    warping errors)."""
    out = np.full(length, np.nan)
    for b in range(1, length):
        p = pixel_pair(b, compression)
        if p < len(pair_differences):
            out[b] = pair_differences[p]
    return out


def transition_differences_from_latents(latents: np.ndarray) -> np.ndarray:
    """D[b] = mean |z_b − z_{b−1}| for latents [F, C, H, W]; D[0] is NaN."""
    z = latents.astype(np.float64)
    out = np.full(len(z), np.nan)
    out[1:] = np.abs(z[1:] - z[:-1]).reshape(len(z) - 1, -1).mean(axis=1)  # [F−1, C·H·W] → [F−1]
    return out


def seam_ratios(transitions: np.ndarray, boundaries: list[int], radius: int, floor: float) -> dict[int, float]:
    """ratio(b) for every boundary b (see the module docstring); `transitions` is D indexed by latent frame."""
    is_boundary = set(boundaries)
    length = len(transitions)
    ratios = {}
    for b in boundaries:
        if not np.isfinite(transitions[b]):
            continue
        near = [k for k in range(max(1, b - radius), min(length - 1, b + radius) + 1)
                if k != b and np.isfinite(transitions[k])]
        calm = [k for k in near if k not in is_boundary]
        pool = calm if len(calm) >= 2 else near
        if not pool:
            continue
        reference = float(np.median(transitions[pool]))
        ratios[b] = float((transitions[b] + floor) / (reference + floor))
    return ratios


def relative_floor(transitions: np.ndarray) -> float:
    """ε for warping errors and latents: 1 % of the median transition difference (tiny when nothing changes)."""
    finite = transitions[np.isfinite(transitions)]
    return 0.01 * float(np.median(finite)) + 1e-12 if finite.size else 1e-12

"""Temporal flickering as VBench defines it.

Source: Huang et al., "VBench: Comprehensive Benchmark Suite for Video Generative Models" (CVPR 2024), dimension
"Temporal Flickering", as computed by the public VBench code (`vbench/temporal_flickering.py`): for frames
I_0 … I_{T−1} with values 0…255,

    d_t   = mean over all pixels and channels of |I_{t+1} − I_t|        (t = 0 … T−2)
    score = (255 − mean_t d_t) / 255

so 1 means consecutive frames are identical. VBench applies it to static-scene prompts only; on a generated long
video it measures frame-to-frame change of any origin (flicker, motion, jumps), and the per-pair curve d_t is what
the seam score and the freeze score build on.
"""

from __future__ import annotations

import cv2
import numpy as np


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each consecutive pair, in grey levels: uint8 [T, H, W, 3] → float64 [T−1]."""
    out = np.empty(len(frames) - 1, dtype=np.float64)
    for t in range(len(frames) - 1):
        out[t] = cv2.absdiff(frames[t + 1], frames[t]).mean()  # exact integer |a − b|, averaged in float64
    return out


def temporal_flickering(differences: np.ndarray) -> float:
    """VBench's score from the per-pair differences d_t: (255 − mean d_t) / 255."""
    return float((255.0 - float(np.mean(differences))) / 255.0)

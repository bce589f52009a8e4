"""Scene cuts with PySceneDetect's ContentDetector.

VBench-Long (the long-video track of VBench, `vbench/long_eval/utils.py`, `split_video_into_scenes`) splits a long
video into scenes with `ContentDetector(threshold=27.0)` and its default minimum scene length of 15 frames; SynCoS
reports the resulting count as "Num Scenes" (lower is better for a one-story video). ContentDetector scores each
frame by the mean change of hue, saturation and luminance from the previous frame and cuts where the score reaches
the threshold. Frames are fed from memory, so the video is not decoded twice; the caller passes frames downscaled
the way PySceneDetect itself downscales videos wider than 256 pixels before detection.
"""

from __future__ import annotations

import numpy as np


def _position(index: int, fps: float):
    """PySceneDetect ≥ 0.7 takes frame timecodes; 0.6 takes frame numbers."""
    import scenedetect

    major_minor = tuple(int(p) for p in scenedetect.__version__.split(".")[:2])
    if major_minor >= (0, 7):
        return scenedetect.FrameTimecode(index, fps)
    return index


def _frame_number(cut) -> int:
    return int(cut.frame_num) if hasattr(cut, "frame_num") else int(cut)


def scene_cuts(frames: np.ndarray, fps: float, threshold: float = 27.0, min_scene_len: int = 15) -> list[int]:
    """Frame indices where a new scene starts (the first frame of each scene after the first), for uint8 RGB frames
    [T, H, W, 3]. The number of scenes is len(cuts) + 1."""
    from scenedetect.detectors import ContentDetector

    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
    cuts = []
    for i, frame in enumerate(frames):
        bgr = np.ascontiguousarray(frame[..., ::-1])  # PySceneDetect expects OpenCV's BGR order
        cuts += detector.process_frame(_position(i, fps), bgr)
    cuts += detector.post_process(_position(len(frames) - 1, fps))
    return sorted({_frame_number(c) for c in cuts if 0 < _frame_number(c) < len(frames)})

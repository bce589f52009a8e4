"""Scene cuts with PySceneDetect's ContentDetector.

VBench-Long (the long-video track of VBench, `vbench/long_eval/utils.py`, `split_video_into_scenes`) splits a long
video into scenes with `ContentDetector(threshold=27.0)` and its default minimum scene length of 15 frames; SynCoS
reports the resulting count as "Num Scenes" (lower is better for a one-story video). ContentDetector scores each
frame by the mean change of hue, saturation and luminance from the previous frame and cuts where the score reaches
the threshold. Frames are fed one at a time as the video is read (`SceneStream`), so the video is not decoded
twice and no frame is kept; the caller passes frames downscaled the way PySceneDetect itself downscales videos
wider than 256 pixels before detection.
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
    stream = SceneStream(fps, threshold, min_scene_len)
    for frame in frames:
        stream.add(frame)
    return stream.cuts()


class SceneStream:
    """PySceneDetect's ContentDetector fed one uint8 RGB frame [H, W, 3] at a time (`add`), then `cuts`; the
    detector keeps only its previous frame, so memory does not grow with the length."""

    def __init__(self, fps: float, threshold: float = 27.0, min_scene_len: int = 15) -> None:
        from scenedetect.detectors import ContentDetector

        self.fps = fps
        self.detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
        self.found: list = []
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        bgr = np.ascontiguousarray(frame[..., ::-1])  # PySceneDetect expects OpenCV's BGR order
        self.found += self.detector.process_frame(_position(self.frames, self.fps), bgr)
        self.frames += 1

    def cuts(self) -> list[int]:
        found = self.found + self.detector.post_process(_position(self.frames - 1, self.fps))
        return sorted({_frame_number(c) for c in found if 0 < _frame_number(c) < self.frames})

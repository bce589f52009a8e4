"""`longgen eval` reads a video one frame at a time (longgen/eval/measured.py) and must give the same numbers as the
plain whole-array path `measure(frames, …)` on the same frames: every summary number, curve, seam row and scene
cut. Exact equality throughout: each per-frame and per-pair number is computed by the same operations on the same
pixels, only in a streamed order; repetition's correlations are taken in tiles (equal to float rounding), which on
these videos leaves its score and lag identical, and it is pinned exactly as well.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from longgen.eval import similarity
from longgen.eval.evaluate import evaluate_target, measure, summarise
from longgen.eval.inputs import Geometry, Target, read_latent_moves
from longgen.eval.measured import VideoStream
from longgen.eval.settings import default_settings
from test_eval_metrics import FPS, panning

C, M = 4, 5
GEOMETRY = Geometry(latent_length=13, compression=C, window=M, windows=[(0, 5), (4, 9), (8, 13)])  # 49 frames
# downscaled twice (64×48 → 32×24 → 16×12), so both resizes of the stream are exercised
SETTINGS = dataclasses.replace(default_settings(), analysis_long_side=32, stats_long_side=16)


def story_video() -> np.ndarray:
    """49 frames [49, 48, 64, 3]: a brightening pan over one texture, a hard cut at frame 24 to another texture
    seen in a 6-frame loop (repetition), with frames 24–26 frozen; a jump at frame 33 (a window seam)."""
    ramp = np.linspace(0, 30, 24)[:, None, None, None]
    first = np.clip(panning(24, 48, 64, dx=1, dy=0, seed=1) + ramp, 0, 255)  # [24, 48, 64, 3]
    loop = panning(6, 48, 64, dx=2, dy=1, seed=7, tint=(1.2, 0.8, 0.9))  # [6, 48, 64, 3]
    second = np.concatenate([loop[:1], loop[:1], *[loop] * 4])[:25].astype(np.float64)  # [25, 48, 64, 3]
    second[9:] += 12  # frame 33 on
    return np.clip(np.concatenate([first, second]), 0, 255).astype(np.uint8)


def streamed(frames: np.ndarray, fps: float, settings, moves: np.ndarray) -> dict:
    with VideoStream(fps, *frames.shape[1:3], settings) as stream:
        for frame in frames:
            stream.add(frame)
        return summarise(stream.finish(), settings, GEOMETRY, moves)


LATENTS = np.cumsum(np.random.default_rng(0).standard_normal((13, 4, 3, 4)), axis=0).astype(np.float32)
LATENTS[9:] += 4.0  # a latent seam at boundary 9


def assert_same(got, want, where: str = "") -> None:
    """Equal dicts, lists and arrays (NaN equal to NaN), exactly."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{k}]")
    elif isinstance(want, np.ndarray):
        assert np.array_equal(got, want, equal_nan=True), where
    else:
        assert got == want or (got != got and want != want), f"{where}: {got!r} != {want!r}"


@pytest.fixture(scope="module")
def story():
    frames = story_video()
    return frames, measure(frames, FPS, SETTINGS, GEOMETRY, LATENTS)


def test_streamed_metrics_equal_the_whole_array_ones(story, tmp_path):
    from safetensors.numpy import save_file

    frames, reference = story
    s = reference["summary"]
    # the video exercises every metric: a cut, a loop, a freeze, drift, motion, flagged seams in pixels and latents
    assert s["num_scenes"] == 2 and s["repetition"] > 0.2 and s["freeze_share"] > 0
    assert s["drift_max_delta_e"] > 5 and s["motion_px"] > 0.5 and s["seams_flagged"] >= 1
    assert s["latent_seams_flagged"] == 1
    save_file({"latents": LATENTS}, str(tmp_path / "latents.safetensors"))
    moves = read_latent_moves(tmp_path / "latents.safetensors", chunk=5)  # chunks of latent frames, not all
    result = streamed(frames, FPS, SETTINGS, moves)
    assert sorted(result["timings"]) == sorted(reference["timings"])
    for part in ("summary", "curves", "seams", "scenes", "geometry", "video_info", "settings"):
        assert_same(result[part], reference[part], part)


def test_an_mp4_read_one_frame_at_a_time_equals_measure_of_its_decoded_frames(story, tmp_path):
    """The whole `longgen eval` path: ffmpeg decoding, chunks to the model metrics, the analysis and stats sizes."""
    import imageio_ffmpeg

    from longgen.writer import Mp4Writer

    Mp4Writer(crf=0).write([story[0]], tmp_path, int(FPS), len(story[0]))
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "video.mp4"), pix_fmt="rgb24")
    size = next(reader)["size"]
    decoded = np.stack([np.frombuffer(raw, np.uint8).reshape(size[1], size[0], 3) for raw in reader])
    result = evaluate_target(Target(video=tmp_path / "video.mp4", label="story"), SETTINGS)
    reference = measure(decoded, FPS, SETTINGS)
    assert result["video_info"]["frames"] == 49
    for part in ("summary", "curves", "scenes", "video_info"):
        assert_same(result[part], reference[part], part)


@pytest.mark.parametrize("block", [1, 5, 16, 128])
def test_tiled_repetition_equals_the_whole_matrix(block):
    """Tiles smaller than, across and larger than the video; a loop, so the best far matches tie."""
    tiny = story_video()[:, ::4, ::4]  # [49, 12, 16, 3]
    with similarity.GreyStore() as store:
        for frame in tiny:
            store.add(np.ascontiguousarray(frame[..., 1]))
        grey = np.stack([frame[..., 1] for frame in tiny])[..., None].repeat(3, axis=-1)  # grey as RGB
        for gap in (3, 8, 30):
            assert similarity.stored_repetition(store, gap, block) == similarity.repetition(grey, gap), gap
        assert np.array_equal(store.frames(10, 13), grey[10:13, ..., 0])


def test_stored_ssim_curve_equals_the_in_memory_one():
    tiny = story_video()[:, ::4, ::4]  # [49, 12, 16, 3]
    with similarity.GreyStore() as store:
        for frame in tiny:
            store.add(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        stored = similarity.lag_curve(similarity.StoredSsim(store, cache=2), 16)  # a cache that misses
        whole = similarity.lag_curve(similarity.SsimFrames(tiny), 16)
    assert np.array_equal(stored[0], whole[0]) and np.array_equal(stored[1], whole[1])


def matrix_tiles(corr: np.ndarray, block: int):
    """`tiles` for `similarity.tiled_repetition` over a correlation matrix held whole (the upper triangle)."""
    def tiles(wanted):
        n = len(corr)
        for r0 in range(0, n, block):
            for c0 in range(r0, n, block):
                rows, cols = np.arange(r0, min(n, r0 + block)), np.arange(c0, min(n, c0 + block))
                if wanted[rows].any() or wanted[cols].any():
                    yield rows, cols, corr[r0: r0 + block, c0: c0 + block]
    return tiles


def crafted(pairs: dict[tuple[int, int], float], n: int = 12) -> np.ndarray:
    """A symmetric correlation matrix [n, n]: 1 on the diagonal, 0.5 between neighbours, 0.1 elsewhere, `pairs` set."""
    distance = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    corr = np.where(distance == 0, 1.0, np.where(distance == 1, 0.5, 0.1))
    for (i, j), value in pairs.items():
        corr[i, j] = corr[j, i] = value
    return corr


@pytest.mark.parametrize("pairs, want", [
    # frame 0's far matches arrive in tiles of 4 as 0.9 − 0.9e-9 (distance 3), 0.9 (5), 0.9 + 0.5e-9 (10): within the
    # tolerance of the final best only the last two, so its period is 5, not the 3 its running best allowed
    ({(0, 3): 0.9 - 0.9e-9, (0, 5): 0.9, (0, 10): 0.9 + 0.5e-9}, (4 / 12, 5)),
    # frame 6 first matches frame 3 (0.8, distance 3), then frame 11 far better (0.95, distance 5): the first drops out
    ({(6, 3): 0.8, (6, 11): 0.95}, (3 / 12, 5)),
])
def test_tiled_repetition_keeps_the_tolerance_rule_when_the_best_rises(pairs, want):
    corr = crafted(pairs)
    assert similarity.repetition_of(corr, 3) == pytest.approx(want)
    assert similarity.tiled_repetition(matrix_tiles(corr, 4), 12, 3) == pytest.approx(want)

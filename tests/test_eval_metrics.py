"""Weight-free metrics of `longgen eval` on synthetic videos with known answers (small frames, fast).

Oracles: the formulas written out here independently (VBench flicker as a plain loop, SSIM with scipy's Gaussian
filter, CIE L* from the sRGB and CIELAB definitions, Lai et al.'s warping error with exact flows), plus
metamorphic properties (time reversal, static scenes, known translations, injected jumps, cuts, loops).
"""

from __future__ import annotations

import numpy as np
import pytest

from longgen.eval import drift, flicker, flow, seams, similarity
from longgen.eval.evaluate import measure
from longgen.eval.inputs import Geometry
from longgen.eval.settings import default_settings

FPS = 8.0


def texture(height: int, width: int, seed: int = 0, sigma: float = 2.0, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Smooth random RGB texture, uint8 [H, W, 3], values well inside 0…255."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal((height, width, 3)).astype(np.float32), (0, 0), sigma)
    img = 120 + 45 * noise / noise.std()
    return np.clip(img * np.asarray(tint, dtype=np.float32), 0, 255).astype(np.uint8)


def panning(frames: int, height: int, width: int, dx: int, dy: int, seed: int = 0, tint=(1, 1, 1)) -> np.ndarray:
    """A view moving over a large texture so that content moves by (+dx, +dy) pixels per frame:
    frame_t(x) = frame_{t+1}(x + (dx, dy)), i.e. the forward flow is (dx, dy)."""
    margin = frames * max(abs(dx), abs(dy)) + 2
    big = texture(height + 2 * margin, width + 2 * margin, seed, tint=tint)
    out = []
    for t in range(frames):
        y0, x0 = margin - t * dy, margin - t * dx
        out.append(big[y0: y0 + height, x0: x0 + width])
    return np.stack(out)


# ---------------------------------------------------------------------------------------------------- flicker
def vbench_flicker_loop(frames: np.ndarray) -> float:
    """VBench temporal flickering written out: (255 − mean over pairs of mean |a − b|) / 255."""
    maes = []
    for t in range(len(frames) - 1):
        a = frames[t].astype(np.int64)
        b = frames[t + 1].astype(np.int64)
        total = 0
        for value in np.abs(b - a).ravel():
            total += int(value)
        maes.append(total / a.size)
    return (255.0 - sum(maes) / len(maes)) / 255.0


def test_flicker_equals_the_vbench_formula_written_out():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, 7, 9, 3), dtype=np.uint8)
    score = flicker.temporal_flickering(flicker.frame_differences(frames))
    assert score == pytest.approx(vbench_flicker_loop(frames), abs=1e-12)
    assert score == pytest.approx(flicker.temporal_flickering(flicker.frame_differences(frames[::-1])), abs=1e-12)


def test_static_scene_flicker_one_warp_zero_no_motion_frozen():
    frames = np.repeat(texture(32, 48)[None], 20, axis=0)
    result = measure(frames, FPS, default_settings())
    s = result["summary"]
    assert s["flicker"] == 1.0
    assert s["warp_error"] < 1e-6
    assert s["motion_px"] < 0.05
    assert s["freeze_share"] == 1.0 and s["freeze_longest"] == 20
    assert s["num_scenes"] == 1
    assert s["repetition"] == 0.0  # nothing far away is more alike than the (identical) neighbours
    assert s["drift_max_delta_e"] == pytest.approx(0.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------------- flow, warp
@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_flow_recovers_a_known_translation(method):
    frames = panning(2, 48, 64, dx=2, dy=1)
    estimate = flow.FlowEstimator(method)
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    forward = estimate(grey[0], grey[1])
    interior = forward[8:-8, 8:-8].reshape(-1, 2)
    assert np.median(interior, axis=0) == pytest.approx([2.0, 1.0], abs=0.1)


def test_translation_has_near_zero_warping_error_and_its_motion_in_original_pixels():
    # 96×128 frames with an analysis size of 64: flow runs at half size, motion is reported at full size
    frames = panning(12, 96, 128, dx=4, dy=2)
    settings = default_settings()
    settings = type(settings)(**{**settings.as_dict(), "analysis_long_side": 64})
    s = measure(frames, FPS, settings)["summary"]
    assert s["motion_px"] == pytest.approx(np.hypot(4, 2), rel=0.08)
    assert s["warp_error"] < 2e-3
    assert s["flicker"] < 0.95  # the content moves: consecutive frames differ
    noisy = frames.astype(np.int16) + np.random.default_rng(0).integers(-25, 26, frames.shape)
    s_noisy = measure(np.clip(noisy, 0, 255).astype(np.uint8), FPS, settings)["summary"]
    assert s_noisy["warp_error"] > 5 * s["warp_error"]  # per-frame noise cannot be warped away


def test_warping_error_is_lai_et_al_formula_with_exact_flows():
    a = texture(20, 24, seed=3)
    b = np.clip(a.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    zero = np.zeros((20, 24, 2), np.float32)
    # no motion, every pixel brighter by 20 grey levels in all 3 channels: E = 3·(20/255)² exactly
    expected = np.mean(np.sum(((a.astype(float) - b.astype(float)) / 255.0) ** 2, axis=-1))
    assert flow.warping_error(a, b, zero, zero) == pytest.approx(expected, rel=1e-6)
    # an exact integer translation warps to zero error on the pixels whose target stays in the frame
    frames = panning(2, 20, 24, dx=3, dy=0)
    forward = np.zeros((20, 24, 2), np.float32)
    forward[..., 0] = 3.0
    backward = -forward
    assert flow.warping_error(frames[0], frames[1], forward, backward) == pytest.approx(0.0, abs=1e-10)
    mask = flow.consistent(forward, backward)
    assert not mask[:, -3:].any() and mask[:, :-3].all()  # targets x + 3 beyond the right edge are left out
    # a backward flow that does not undo the forward one marks every pixel occluded
    assert np.isnan(flow.warping_error(frames[0], frames[1], forward, np.zeros_like(forward)))


# ---------------------------------------------------------------------------------------------------- seams
L, C, M, S = 25, 4, 13, 4
GEOMETRY = Geometry(latent_length=L, compression=C, window=M, windows=[(s, s + M) for s in range(0, L - M + 1, S)])


def test_window_boundaries_and_their_pixel_pairs():
    assert seams.window_boundaries(GEOMETRY.windows, L) == [4, 8, 12, 13, 17, 21]
    # CogVideoX: latent 0 → frame 0, latent f → frames 4f−3 … 4f; transition 11 → 12 is frames 44 → 45
    assert seams.pixel_pair(12, C) == 44
    assert GEOMETRY.latent_of(44) == 11 and GEOMETRY.latent_of(45) == 12
    assert GEOMETRY.frames_for(L) == 97


def test_injected_jump_is_flagged_at_that_boundary_only():
    frames = panning(GEOMETRY.frames_for(L), 24, 32, dx=1, dy=0).astype(np.int16)
    jump_at = 4 * 12 - 3  # first video frame of latent 12 (CogVideoX: latent f → frames 4f−3 … 4f)
    frames[jump_at:] += 40
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    latents = np.cumsum(0.1 * rng.standard_normal((L, 4, 3, 4)), axis=0)  # a smooth random walk [F, C, H, W]
    latents[17:] += 3.0
    result = measure(frames, FPS, default_settings(), GEOMETRY, latents.astype(np.float32))
    flagged = [r["latent"] for r in result["seams"] if r["flagged"]]
    latent_flagged = [r["latent"] for r in result["seams"] if r["latent_flagged"]]
    assert flagged == [12]
    assert latent_flagged == [17]
    for key in ("ratio", "warp_ratio"):  # both the frame difference and the motion-compensated one see it
        ratios = {r["latent"]: r[key] for r in result["seams"]}
        assert ratios[12] > 2.5 and max(v for b, v in ratios.items() if b != 12) < 1.5, key
    assert result["summary"]["seams_flagged"] == 1 and result["summary"]["latent_seams_flagged"] == 1


def test_a_jump_hidden_by_fast_motion_is_caught_by_the_warping_error():
    frames = panning(GEOMETRY.frames_for(L), 32, 48, dx=3, dy=0).astype(np.int16)
    frames[4 * 8 - 3:] += 12  # latent 8 onwards a little brighter; the 3 px/frame pan changes frames more
    result = measure(np.clip(frames, 0, 255).astype(np.uint8), FPS, default_settings(), GEOMETRY)
    row = {r["latent"]: r for r in result["seams"]}
    assert row[8]["ratio"] < 2 < row[8]["warp_ratio"]
    assert [b for b, r in row.items() if r["flagged"]] == [8]


def test_seam_ratio_reference_uses_non_boundary_transitions():
    # transitions: boundaries 4 and 5 both jump (10), everything else 1: each is compared with the calm ones
    d = np.full(12, 1.0)
    d[0] = np.nan
    d[4] = d[5] = 10.0
    ratios = seams.seam_ratios(d, [4, 5], radius=3, floor=0.0)
    assert ratios == {4: pytest.approx(10.0), 5: pytest.approx(10.0)}


# ---------------------------------------------------------------------------------------------------- scenes
def test_hard_cut_gives_two_scenes_at_the_cut():
    a = panning(30, 32, 48, dx=1, dy=0, seed=1, tint=(0.4, 0.6, 1.4))
    b = panning(30, 32, 48, dx=-1, dy=1, seed=2, tint=(1.5, 1.1, 0.4))
    result = measure(np.concatenate([a, b]), FPS, default_settings())
    assert result["summary"]["num_scenes"] == 2
    assert result["scenes"]["cuts"] == [30]
    assert measure(a, FPS, default_settings())["summary"]["num_scenes"] == 1


# ---------------------------------------------------------------------------------------------------- drift
def cie_lightness(grey: np.ndarray) -> np.ndarray:
    """L* of neutral sRGB grey levels (IEC 61966-2-1 transfer function, CIE 1976 L*, D65)."""
    c = grey / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    eps = (6 / 29) ** 3
    return np.where(linear > eps, 116 * np.cbrt(linear) - 16, (29 / 3) ** 3 * linear)


def test_linear_brightness_ramp_has_the_known_drift_slope():
    levels = 40 + 2 * np.arange(80)
    frames = np.broadcast_to(levels[:, None, None, None], (80, 16, 16, 3)).astype(np.uint8)
    s = measure(frames, FPS, default_settings())["summary"]
    lightness = cie_lightness(levels.astype(float))
    expected_slope = np.polyfit(np.arange(80) / FPS, lightness, 1)[0]
    assert s["drift_L_per_s"] == pytest.approx(expected_slope, rel=5e-3)
    assert abs(s["drift_a_per_s"]) < 1e-2 and abs(s["drift_b_per_s"]) < 1e-2
    reference = lightness[:49].mean()  # no manifest: the first 49 frames are the reference
    assert s["drift_max_delta_e"] == pytest.approx(lightness[-1] - reference, abs=0.05)
    assert s["drift_max_at_frame"] == 79


def test_delta_e_uses_the_first_window_of_a_run():
    stats = drift.LabStats(L=np.array([50, 52, 60, 70.0]), a=np.zeros(4), b=np.array([0, 0, 0, 5.0]),
                           L_std=np.zeros(4))
    assert drift.delta_e_from_reference(stats, 2) == pytest.approx([1, 1, 9, np.hypot(19, 5)])


# ---------------------------------------------------------------------------------------------------- SSIM, repetition
def ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 SSIM with scipy's Gaussian filter (σ 1.5, radius 5, mirrored edges)."""
    from scipy.ndimage import gaussian_filter

    def blur(x):
        return gaussian_filter(x, 1.5, truncate=5 / 1.5, mode="mirror")

    x, y = a.astype(np.float64), b.astype(np.float64)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))))


def test_ssim_matches_an_independent_implementation():
    import cv2

    a, b = texture(30, 40, seed=4), texture(30, 40, seed=5)
    b = (0.5 * a + 0.5 * b).astype(np.uint8)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (a, b)]
    assert similarity.ssim(a, b) == pytest.approx(ssim_scipy(*grey), abs=1e-4)
    assert similarity.ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_looped_clip_is_found_as_repetition_and_a_continuous_pan_is_not():
    clip = panning(16, 32, 40, dx=3, dy=0, seed=6)
    looped = np.concatenate([clip] * 4)  # 64 frames, period 16
    s = measure(looped, FPS, default_settings())["summary"]
    assert s["repetition"] == 1.0 and s["repetition_lag"] == 16
    half = np.concatenate([panning(32, 32, 40, dx=3, dy=0, seed=7), clip, clip])  # only the last 32 frames loop
    assert measure(half, FPS, default_settings())["summary"]["repetition"] == pytest.approx(0.5)
    pan = panning(64, 32, 40, dx=3, dy=0, seed=6)
    assert measure(pan, FPS, default_settings())["summary"]["repetition"] == 0.0


def test_repetition_counts_frames_matched_beyond_the_gap():
    frames = panning(10, 16, 16, dx=1, dy=0).copy()  # neighbours alike, far frames less so
    frames[7] = frames[2]  # frames 2 and 7 match each other (distance 5), nothing else does
    assert similarity.repetition(frames, gap=5) == (pytest.approx(0.2), 5)
    assert similarity.repetition(frames, gap=9) == (0.0, 0)  # only frames 0 and 9 are that far apart

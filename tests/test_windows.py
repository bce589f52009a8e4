"""Window geometry and the pure step maths (longgen.windows, longgen.diffusion)."""

from __future__ import annotations

import pytest
import torch

from longgen.diffusion import StepCoeffs, ddim_step, fuse_windows, gather_windows, scatter_windows
from longgen.errors import UsageError
from longgen.windows import latent_length, strided_plan


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(num_windows=1), 13),
        (dict(num_windows=10), 49),  # SynCoS 4x on CogVideoX-2B: N=10, L=49, 193 frames
        (dict(num_windows=13), 61),  # 5x: N=13, L=61
        (dict(length_factor=4), 49),
        (dict(length_factor=5), 61),
        (dict(length_factor=1), 13),
        (dict(), 49),  # default: 4x
        (dict(latent_frames=19), 19),
    ],
)
def test_latent_length(kwargs, expected):
    assert latent_length(13, 4, 4, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_windows=0), dict(num_windows=2.5), dict(length_factor=0.5), dict(latent_frames=12),
     dict(num_windows=2, length_factor=3)],
)
def test_latent_length_rejects(kwargs):
    with pytest.raises(UsageError):
        latent_length(13, 4, 4, **kwargs)


def test_strided_plan_covers_every_frame_and_end_aligns():
    for length in range(13, 60):
        for stride in range(1, 14):
            plan = strided_plan(length, 13, stride)
            assert plan.starts[0] == 0 and plan.starts[-1] == length - 13
            assert min(plan.coverage()) >= 1
            assert all(b > a for a, b in zip(plan.starts, plan.starts[1:]))


@pytest.mark.parametrize("length,stride", [(12, 4), (20, 0), (20, 14), (20, -1)])
def test_strided_plan_rejects(length, stride):
    with pytest.raises(UsageError):
        strided_plan(length, 13, stride)


def test_gather_scatter_roundtrip_and_fusion_average():
    video = torch.randn(10, 2, 3, 3, dtype=torch.float64)
    starts = [0, 3, 5]
    win = gather_windows(video, starts, 5)  # [3, 5, 2, 3, 3]
    for i, s in enumerate(starts):
        assert torch.equal(win[i], video[s : s + 5])
    total, count = scatter_windows(win, starts, 10)
    assert count.tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 1, 1]
    assert torch.allclose(fuse_windows(win, starts, 10), video)
    # explicit per-frame loop average of different per-window values
    vals = torch.randn(3, 5, 2, 3, 3, dtype=torch.float64)
    fused = fuse_windows(vals, starts, 10)
    for f in range(10):
        members = [vals[i, f - s] for i, s in enumerate(starts) if s <= f < s + 5]
        assert torch.allclose(fused[f], torch.stack(members).mean(0))


def test_averaged_ddim_steps_equal_step_of_averaged_x0():
    """The fusion identity Gen-L-Video relies on (eta = 0, one shared t), in float64."""
    c = StepCoeffs(t=500, a=0.6, s=0.8, a_prev=0.7, s_prev=0.714142842854285)
    x = torch.randn(10, 2, 3, 3, dtype=torch.float64)
    starts = [0, 3, 5]
    x0s = torch.randn(3, 5, 2, 3, 3, dtype=torch.float64)
    per_window = torch.stack([ddim_step(x[s : s + 5], x0s[i], c) for i, s in enumerate(starts)])
    a = fuse_windows(per_window, starts, 10)
    b = ddim_step(x, fuse_windows(x0s, starts, 10), c)
    assert (a - b).abs().max() < 1e-12


def test_ddim_eta_needs_noise_and_keeps_variance_formula():
    c = StepCoeffs(t=500, a=0.6, s=0.8, a_prev=0.7, s_prev=0.714142842854285)
    x, x0 = torch.randn(4), torch.randn(4)
    with pytest.raises(ValueError):
        ddim_step(x, x0, c, eta=1.0)
    z = torch.randn(4)
    out = ddim_step(x, x0, c, eta=1.0, noise=z)
    ab, abp = 0.36, 0.49
    sigma = (((1 - abp) / (1 - ab)) * (1 - ab / abp)) ** 0.5
    eps = (x - 0.6 * x0) / 0.8
    assert torch.allclose(out, 0.7 * x0 + (1 - abp - sigma**2) ** 0.5 * eps + sigma * z)

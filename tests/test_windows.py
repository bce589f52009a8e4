"""Window geometry and the pure step maths (longgen.windows, longgen.diffusion)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from longgen.diffusion import StepCoeffs, ddim_step, fuse_windows, gather_windows, scatter_windows
from longgen.errors import UsageError
from longgen.windows import (EventPlan, WindowPlan, assign_events, event_plan, event_slots, latent_length,
                             strided_plan)


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


def test_length_factor_rounds_to_the_nearest_whole_window():
    """K = 2.5 on CogVideoX-2B asks for 2.5·49 = 122.5 frames, (122.5 − 1)/4 + 1 = 31.375 latent frames, between
    the grid lengths 29 (N = 5) and 33 (N = 6): 33 is nearer (1.625 against 2.375)."""
    assert latent_length(13, 4, 4, length_factor=2.5) == 33
    assert latent_length(13, 4, 4, length_factor=2.2) == 29  # 27.7 latent frames: 29 is nearer than 25


def test_a_window_centred_on_an_edge_shows_the_later_event():
    """Segments are half-open, [edges[k−1], edges[k]): a centre exactly on an edge belongs to the next event (a GLC
    local window shifted by 2 on a 49-frame story of two equal events is centred on the edge 24.5)."""
    events = EventPlan(edges=(24.5, 49.0), events=(0, 1))
    assert events.event_at(24.5) == 1
    assert events.event_at(24.499) == 0
    assert events.window_event(18, 13) == 1  # centre 18 + 6.5 = 24.5


def test_equally_near_assignments_give_the_boundary_to_the_earlier_window():
    """Windows of 13 every 4 frames (centres 6.5, 10.5, 14.5, 18.5) and a short middle event [11.5, 13.5) that no
    centre falls in: the window at 10.5 and the one at 14.5 are both 1 frame from it, so [0, 1, 2, 2] and
    [0, 0, 1, 2] cost the same; the rule gives the event the earlier window."""
    assert assign_events([6.5, 10.5, 14.5, 18.5], [11.5, 13.5, 25.0]) == [0, 1, 2, 2]


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_with_eta_is_diffusers_ddim_step(eta):
    """`ddim_step` with η > 0 against diffusers' DDIMScheduler.step (x0-prediction, the same ᾱ and variance noise)
    at every step of a 5-step schedule: σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)."""
    sched = DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing",
                          prediction_type="sample", set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(5)
    acp = sched.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    for t in sched.timesteps.tolist():
        prev = t - 1000 // 5
        ab, abp = float(acp[t]), (float(acp[prev]) if prev >= 0 else 1.0)
        c = StepCoeffs(t=t, a=ab**0.5, s=(1 - ab) ** 0.5, a_prev=abp**0.5, s_prev=(1 - abp) ** 0.5)
        x, x0, z = (torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
        ours = ddim_step(x, x0, c, eta=eta, noise=z)
        reference = sched.step(x0, t, x, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(ours, reference, rtol=0, atol=1e-6), t  # the scheduler computes in float32


def test_fusion_leaves_uncovered_frames_at_zero_and_a_lone_window_as_it_is():
    """Frames no window covers are 0 (SynCoS's gradient relies on it) and a frame one window covers keeps its value."""
    vals = torch.randn(1, 5, 2, 3, 3, dtype=torch.float64)
    fused = fuse_windows(vals, [2], 10)
    assert torch.equal(fused[2:7], vals[0])
    assert not fused[:2].any() and not fused[7:].any()


def test_a_window_centred_on_the_join_has_an_event_slot_of_its_own():
    """Windows of 4 frames every 2 (centres 2, 4, 6, 8, 10) with the join at frame 4 (`longgen extend`): the window
    centred exactly on the join is not held on the first event, so 4 windows can show an event each, and the one
    centred at 2, held, shows the first: 5 slots."""
    plan = WindowPlan(12, 4, (0, 2, 4, 6, 8))
    assert event_slots(plan, origin=4) == 5
    # and five events do get a window each (edges count from the join)
    assert event_plan(plan, [0.5, 1.0, 3.0, 5.0, 8.0], origin=4).events == (0, 1, 2, 3, 4)

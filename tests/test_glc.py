"""GLC-Diffusion (arXiv 2501.05484) pinned to Gen-L-Video (itself pinned to diffusers' scheduler in test_oracles),
formulas written out here independently (γ schedule, DDIM, VMCR loss, Eq. 11 in the Fourier domain), and
metamorphic properties (coverage, seeds, micro-batch invariance, ABAM λ = 1). Tiny random CogVideoX on the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from longgen.build import build
from longgen.denoiser import Denoiser, Prediction
from longgen.errors import UsageError
from longgen.samplers.base import SamplerState, SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import (
    GLCSampler,
    MotionWeights,
    default_dilation,
    dilated_clips,
    shifted_starts,
    vmcr_linear_grad,
    vmcr_slope,
    vmcr_update,
)
from longgen.samplers.glc_noise import (
    fusion_std,
    lowpass_filter,
    reinit_noise,
    shuffle_map,
)
from longgen.windows import strided_plan

from conftest import REPO, make_tiny

OFF = dict(global_path=False, noise_reinit=False, vmcr=False, abam=False, random_shift=False)


def _noise(length, shape, seed=0):
    return torch.randn((1, length, *shape), generator=torch.Generator().manual_seed(seed))


def _run(backbone, noise, ids=(0,), gen_seed=1):
    ids = list(ids)

    def prompt_for_window(start, size):
        return ids[min(len(ids) - 1, int((start + size / 2) * len(ids) / noise.shape[1]))]

    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=prompt_for_window,
                       generator=torch.Generator().manual_seed(gen_seed))


@pytest.fixture(scope="module")
def tiny2():
    return make_tiny(prompts=("a cat", "a dog runs"))


# ------------------------------------------------------------------------------------------ reduction to Gen-L-Video
@pytest.mark.parametrize("length,stride", [(21, 4), (19, 4), (25, 6)])
def test_all_modules_off_is_gen_l_video(tiny2, length, stride):
    noise = _noise(length, tiny2.latent_shape, seed=3)
    ours = GLCSampler(num_steps=5, stride=stride, **OFF).sample(_run(tiny2, noise, [0, 1]))
    ref = GenLVideoSampler(num_steps=5, stride=stride).sample(_run(tiny2, noise, [0, 1]))
    assert (ours - ref).abs().max().item() <= 1e-6
    # the comparison is sensitive: switching the global path on moves the result
    on = GLCSampler(num_steps=5, stride=stride, **{**OFF, "global_path": True, "gamma0": 0.3})
    assert (on.sample(_run(tiny2, noise, [0, 1])) - ref).abs().max().item() > 1e-4


# ------------------------------------------------------------------------------------------ window geometry
@pytest.mark.parametrize("length", [13, 14, 21, 33, 37, 49, 73])
@pytest.mark.parametrize("padding", ["reflect", "replicate", "circular"])
def test_dilated_clips_cover_every_frame(length, padding):
    m = 13
    clips = dilated_clips(length, m, padding=padding)
    d = default_dilation(length, m)
    assert d * m >= length and (d - 1) * m < length  # smallest d whose d clips reach past the end
    assert clips.shape == (d, m)
    assert clips.min() >= 0 and clips.max() < length
    counts = torch.bincount(clips.reshape(-1), minlength=length)
    assert (counts >= 1).all(), "a frame is missing from the global path"
    assert counts.sum() == d * m
    # each clip steps d frames through the video (where it is not in the padding), so it spans the whole video
    left = (d * m - length) // 2
    for i in range(d):
        pos = i + d * torch.arange(m) - left  # padded positions, independently of the implementation
        inside = (pos >= 0) & (pos < length)
        assert torch.equal(clips[i][inside], pos[inside])
        assert pos[inside].max() - pos[inside].min() >= length - 2 * d


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dilated_clips_with_small_dilation_still_cover(dilation):
    clips = dilated_clips(33, 13, dilation=dilation)
    counts = torch.bincount(clips.reshape(-1), minlength=33)
    assert (counts >= 1).all()
    assert clips.shape[0] == dilation * math.ceil(33 / (13 * dilation))


def test_padding_modes_read_the_right_frames():
    # L = 14, M = 13: d = 2, 26 padded positions, 12 of padding, 6 on each side
    reflect = dilated_clips(14, 13, padding="reflect")
    replicate = dilated_clips(14, 13, padding="replicate")
    circular = dilated_clips(14, 13, padding="circular")
    assert reflect[0, :3].tolist() == [6, 4, 2] and reflect[1, -3:].tolist() == [11, 9, 7]  # mirrored, ends once
    assert replicate[0, :3].tolist() == [0, 0, 0] and replicate[1, -3:].tolist() == [13, 13, 13]
    assert circular[0, :3].tolist() == [8, 10, 12] and circular[1, -3:].tolist() == [1, 3, 5]


@pytest.mark.parametrize("length,stride", [(33, 4), (19, 4), (13, 4), (40, 5)])
def test_shifted_starts_cover_and_reduce_to_grid(length, stride):
    m = 13
    assert shifted_starts(length, m, stride, 0) == strided_plan(length, m, stride).starts
    for offset in range(stride):
        starts = shifted_starts(length, m, stride, offset)
        assert all(0 <= s <= length - m for s in starts)
        covered = set()
        for s in starts:
            covered.update(range(s, s + m))
        assert covered == set(range(length))
        interior = [s for s in starts if s not in (0, length - m)]
        assert all((s - offset) % stride == 0 for s in interior)


# ------------------------------------------------------------------------------------------ γ schedule (Eq. 9)
class PathDenoiser(Denoiser):
    """Returns x̂0 = 1 for the first `n_global` windows of a batch and 0 for the rest; records its inputs."""

    def __init__(self, backbone, n_global):
        self.inner = backbone
        self.window = backbone.window
        self.latent_shape = backbone.latent_shape
        self.device = torch.device("cpu")
        self.n_global = n_global
        self.calls = []

    def schedule(self, num_steps):
        return self.inner.schedule(num_steps)

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        self.calls.append((t, x_t.clone()))
        x0 = torch.zeros_like(x_t)
        x0[: self.n_global] = 1.0
        return Prediction(x0=x0, eps=torch.zeros_like(x_t))


def test_gamma_follows_exponential_schedule_at_used_steps(tiny2):
    length, steps = 21, 6
    n_global = default_dilation(length, tiny2.window)
    den = PathDenoiser(tiny2, n_global)
    noise = _noise(length, tiny2.latent_shape, seed=4)
    sampler = GLCSampler(num_steps=steps, noise_reinit=False, vmcr=False, abam=False, gamma0=0.005, beta=0.0005)
    out = sampler.sample(_run(den, noise))
    acp = tiny2.pipe.scheduler.alphas_cumprod.double()
    ts = [int(t) for t, _ in den.calls]
    assert ts == list(tiny2.schedule(steps).timesteps)
    # combined x̂0 = γ·1 + (1 − γ)·0 = γ(t): each next input is the hand-written DDIM step towards it
    x = noise[0].double()
    jump = 1000 // steps
    for k, t in enumerate(ts):
        gamma = 0.005 * math.exp(0.0005 * t)
        assert sampler._trace[k]["gamma"] == pytest.approx(gamma, rel=1e-12)
        a, s = math.sqrt(acp[t]), math.sqrt(1 - acp[t])
        ab_prev = float(acp[t - jump]) if t - jump >= 0 else 1.0
        x = math.sqrt(ab_prev) * gamma + math.sqrt(1 - ab_prev) * (x - a * gamma) / s
        # the first local window (start 0, after the global clips) holds frames 0..M−1
        nxt = den.calls[k + 1][1][n_global] if k + 1 < len(ts) else out[0, : tiny2.window]
        assert torch.allclose(nxt.double(), x[: tiny2.window], atol=1e-5)
    assert sampler._trace[0]["gamma"] > sampler._trace[-1]["gamma"]  # γ grows with t


def test_gamma_above_one_is_rejected(tiny2):
    sampler = GLCSampler(num_steps=2, gamma0=0.5, beta=0.01, **{**OFF, "global_path": True})
    with pytest.raises(UsageError, match="gamma0"):
        sampler.sample(_run(tiny2, _noise(21, tiny2.latent_shape)))


# ------------------------------------------------------------------------------------------ seeds
def test_same_seed_same_video_other_seed_differs(tiny2):
    noise = _noise(21, tiny2.latent_shape, seed=7)
    sampler = GLCSampler(num_steps=3)
    a = sampler.sample(_run(tiny2, noise, [0, 1], gen_seed=5))
    b = sampler.sample(_run(tiny2, noise, [0, 1], gen_seed=5))
    assert torch.equal(a, b)
    c = sampler.sample(_run(tiny2, noise, [0, 1], gen_seed=6))  # other re-init unit, shuffles and shifts
    assert (a - c).abs().max() > 1e-3
    d = sampler.sample(_run(tiny2, _noise(21, tiny2.latent_shape, seed=8), [0, 1], gen_seed=5))
    assert (a - d).abs().max() > 1e-3


def test_random_shift_comes_from_the_run_generator(tiny2):
    noise = _noise(33, tiny2.latent_shape, seed=7)
    sampler = GLCSampler(num_steps=8, noise_reinit=False, vmcr=False, abam=False)
    sampler.sample(_run(tiny2, noise, gen_seed=11))
    starts = [r["local_starts"] for r in sampler._trace]
    gen = torch.Generator().manual_seed(11)
    offsets = [int(torch.randint(0, 4, (1,), generator=gen)) for _ in range(8)]
    assert starts == [shifted_starts(33, 13, 4, o) for o in offsets]
    assert len(set(starts)) > 1


# ------------------------------------------------------------------------------------------ noise re-init (Eq. 11)
def _fft3(x):
    return torch.fft.fftn(x.double(), dim=(0, 2, 3))


def test_noise_reinit_keeps_unit_variance():
    length, m, c, h, w = 30, 13, 4, 16, 16
    gen = torch.Generator().manual_seed(0)
    for kind in ("gaussian", "butterworth", "ideal"):
        sq = torch.zeros(length, dtype=torch.float64)
        sq_raw = torch.zeros(length, dtype=torch.float64)
        reps = 30
        for r in range(reps):
            unit = torch.randn(m, c, h, w, generator=gen)
            eta = torch.randn(length, c, h, w, generator=gen)
            out = reinit_noise(unit, eta, torch.Generator().manual_seed(r), 4, kind, 0.25, 0.25)
            raw = reinit_noise(unit, eta, torch.Generator().manual_seed(r), 4, kind, 0.25, 0.25, renormalize=False)
            sq += out.double().pow(2).mean(dim=(1, 2, 3)) / reps
            sq_raw += raw.double().pow(2).mean(dim=(1, 2, 3)) / reps
        assert abs(sq.mean().item() - 1.0) < 0.01, kind
        assert (sq - 1.0).abs().max().item() < 0.06, kind
        if kind == "gaussian":  # plain Eq. 11 loses variance in the transition band: the correction is needed
            assert sq_raw.mean().item() < 0.975


def test_fusion_std_matches_monte_carlo():
    length, m, h, w = 20, 13, 8, 8
    source = shuffle_map(length, m, 4, torch.Generator().manual_seed(3))
    lp = lowpass_filter(length, h, w, "gaussian", 0.4, 0.3)
    gen = torch.Generator().manual_seed(1)
    unit = torch.randn(m, 2000, h, w, generator=gen, dtype=torch.float64)  # channels as independent repeats
    eta = torch.randn(length, 2000, h, w, generator=gen, dtype=torch.float64)
    z = unit[source]
    fused = torch.fft.ifftn(torch.fft.fftn(z, dim=(0, 2, 3)) * lp[:, None] + torch.fft.fftn(eta, dim=(0, 2, 3)) * (1 - lp[:, None]), dim=(0, 2, 3)).real
    empirical = fused.pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(empirical, fusion_std(source, m, lp) ** 2, rtol=0.02)


def test_fusion_std_is_the_exact_std_of_the_linear_map():
    """`fusion_std` against the variance of Eq. 11 computed exactly: the fusion is linear in the unit noise ε and the
    global noise η, so each output element's variance is the sum of the squares of its responses to every unit
    impulse of ε (repeated by the shuffle map) and of η, pushed through Eq. 11 written here with torch.fft."""
    length, m, h, w = 20, 13, 4, 4
    source = shuffle_map(length, m, 4, torch.Generator().manual_seed(3))
    lp = lowpass_filter(length, h, w, "gaussian", 0.4, 0.3)[:, None]  # [L, 1, h, w]
    dims = (0, 2, 3)
    unit = torch.eye(m * h * w, dtype=torch.float64).reshape(-1, m, h, w).transpose(0, 1)  # [M, K, h, w] impulse k
    eta = torch.eye(length * h * w, dtype=torch.float64).reshape(-1, length, h, w).transpose(0, 1)  # [L, K', h, w]
    low = torch.fft.ifftn(torch.fft.fftn(unit[source], dim=dims) * lp, dim=dims).real  # [L, K, h, w]
    high = torch.fft.ifftn(torch.fft.fftn(eta, dim=dims) * (1 - lp), dim=dims).real  # [L, K', h, w]
    var = low.pow(2).sum(1) + high.pow(2).sum(1)  # [L, h, w]: the same at every pixel of a frame
    expected = fusion_std(source, m, lp[:, 0]) ** 2  # [L]
    assert torch.allclose(var, expected[:, None, None].expand_as(var), rtol=1e-9, atol=0)


def test_local_shuffle_repeats_the_unit_within_groups():
    source = shuffle_map(40, 13, 4, torch.Generator().manual_seed(2))
    assert source[:13].tolist() == list(range(13))
    for start in (13, 26, 39):
        block = source[start : start + 13].tolist()
        for lo in range(0, len(block), 4):
            group = list(range(lo, min(13, lo + 4)))
            if len(block) == 13:  # a whole repeat: each group is a permutation of itself
                assert sorted(block[lo : lo + 4]) == group
            else:  # the truncated last repeat: frames still come from their own group
                assert set(block[lo : lo + 4]) <= set(group)
    assert source[13:26].tolist() != list(range(13))  # actually shuffled


def test_noise_reinit_low_frequencies_come_from_the_shuffled_noise():
    length, m, c, h, w = 27, 13, 3, 16, 16
    gen = torch.Generator().manual_seed(5)
    unit = torch.randn(m, c, h, w, generator=gen)
    eta = torch.randn(length, c, h, w, generator=gen)
    out = reinit_noise(unit, eta, torch.Generator().manual_seed(9), 4, "ideal", 0.5, 0.4, renormalize=False)
    shuffled = unit[shuffle_map(length, m, 4, torch.Generator().manual_seed(9))]  # [L, C, H, W]
    # the pass band of an ideal filter with cutoffs (0.5 spatial, 0.4 temporal), written out here
    ft = torch.fft.fftfreq(length, dtype=torch.float64)[:, None, None]
    fh = torch.fft.fftfreq(h, dtype=torch.float64)[None, :, None]
    fw = torch.fft.fftfreq(w, dtype=torch.float64)[None, None, :]
    band = ((ft / 0.2) ** 2 + (fh / 0.25) ** 2 + (fw / 0.25) ** 2) <= 1  # [L, H, W]
    assert 10 < band.sum() < band.numel() - 10
    spec_out, spec_low, spec_high = _fft3(out), _fft3(shuffled), _fft3(eta)
    inside = band[:, None].expand_as(spec_out)
    assert torch.allclose(spec_out[inside], spec_low[inside], atol=1e-3)
    assert torch.allclose(spec_out[~inside], spec_high[~inside], atol=1e-3)
    assert not torch.allclose(spec_out[inside], spec_high[inside], atol=1e-1)


# ------------------------------------------------------------------------------------------ VMCR (Eqs. 12–15)
def _reference_motion_loss(x0, lam_f, lam_mse, lam_phase):
    """Eqs. 12–14 with explicit loops: cos/L2 over whole frames, orthonormal 2D FFT, wrapped phase difference."""
    deltas = [x0[i + 1] - x0[i] for i in range(x0.shape[0] - 1)]
    total = x0.new_zeros(())
    for da, db in zip(deltas[:-1], deltas[1:]):
        cos = (da * db).sum() / (da.norm() * db.norm())
        total = total + (1 - cos) + lam_mse * ((da - db) ** 2).sum()
        n = da.shape[-1] * da.shape[-2]
        fa = torch.fft.fftn(da, dim=(-2, -1)) / math.sqrt(n)
        fb = torch.fft.fftn(db, dim=(-2, -1)) / math.sqrt(n)
        amp = (fa.abs() - fb.abs()).abs().sum()
        phase = torch.angle(fa * fb.conj()).abs().sum()  # the phase difference, wrapped by construction
        total = total + lam_f * (amp + lam_phase * phase)
    return total


def test_vmcr_gradient_matches_reference_autograd():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 3, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(7, 3, 8, 8, generator=gen, dtype=torch.float64)
    a_prev, s_prev = 0.3, math.sqrt(1 - 0.09)
    z_ref = a_prev * x0 + s_prev * eps  # the DDIM result whose clean estimate is x0
    z = z_ref + 0.1 * torch.randn(7, 3, 8, 8, generator=gen, dtype=torch.float64)  # a moved point (vmcr_iters > 1)
    weights = MotionWeights(0.2, 0.001, 1.0)
    # affine: this step's eps held fixed, x0(z) = (z - s_prev eps) / a_prev
    grad, loss = vmcr_linear_grad(z, z_ref, x0, vmcr_slope("affine", a_prev), weights)
    zr = z.clone().requires_grad_(True)
    ref_loss = _reference_motion_loss((zr - s_prev * eps) / a_prev, 0.2, 0.001, 1.0)
    (ref_grad,) = torch.autograd.grad(ref_loss, zr)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    # tweedie: slope a_prev, i.e. x0(z) = x0 + a_prev (z - z_ref); at z_ref the gradient is a_prev * grad_x0 l(x0)
    grad_tw, _ = vmcr_linear_grad(z_ref, z_ref, x0, vmcr_slope("tweedie", a_prev), weights)
    x0r = x0.clone().requires_grad_(True)
    (g_x0,) = torch.autograd.grad(_reference_motion_loss(x0r, 0.2, 0.001, 1.0), x0r)
    assert torch.allclose(grad_tw, a_prev * g_x0, rtol=1e-6, atol=1e-12)
    # sensitive: other weights give another gradient
    other, _ = vmcr_linear_grad(z, z_ref, x0, vmcr_slope("affine", a_prev), MotionWeights(0.5, 0.001, 1.0))
    assert not torch.allclose(other, ref_grad, rtol=1e-3)


@pytest.mark.parametrize("omega", [2e-5, 1e-4])
@pytest.mark.parametrize("source", ["tweedie", "affine"])
def test_vmcr_update_decreases_the_loss(omega, source):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(9, 4, 8, 8, generator=gen, dtype=torch.float64)
    z = torch.randn(9, 4, 8, 8, generator=gen, dtype=torch.float64)
    weights = MotionWeights()
    slope = vmcr_slope(source, 0.5)
    grad, before = vmcr_linear_grad(z, z, x0, slope, weights)
    z_new = vmcr_update(z, grad, omega / slope**2)  # the same step in x0 for both slopes
    _, after = vmcr_linear_grad(z_new, z, x0, slope, weights)
    assert after < before
    assert torch.equal(vmcr_update(z, grad, 0.0), z)


def test_vmcr_false_skips_cleanly(tiny2):
    noise = _noise(21, tiny2.latent_shape, seed=2)
    base = dict(num_steps=3, noise_reinit=False, abam=False)
    off = GLCSampler(vmcr=False, **base)
    a = off.sample(_run(tiny2, noise))
    assert all(r["vmcr_loss"] is None for r in off._trace)
    zero = GLCSampler(vmcr=True, omega=0.0, **base)
    assert torch.equal(zero.sample(_run(tiny2, noise)), a)
    assert all(r["vmcr_loss"] is not None for r in zero._trace)
    none_in_range = GLCSampler(vmcr=True, vmcr_t_min=2000, vmcr_t_max=3000, **base)
    assert torch.equal(none_in_range.sample(_run(tiny2, noise)), a)
    on = GLCSampler(vmcr=True, omega=1e-3, **base)
    assert (on.sample(_run(tiny2, noise)) - a).abs().max() > 1e-6


@pytest.mark.parametrize("options, said", [
    ({"vmcr": False, "vmcr_source": "model"}, "sampler.vmcr_source=model does nothing with sampler.vmcr=false"),
    ({"vmcr": False, "vmcr_source": "model", "vmcr_iters": 2}, "sampler.vmcr_source=model sampler.vmcr_iters=2 "),
    ({"vmcr": False}, None),  # VMCR's options at their defaults: nothing to say
    ({"vmcr": True, "vmcr_source": "model"}, None),
])
def test_vmcr_options_with_vmcr_off_are_said_once_at_start(tiny2, caplog, options, said):
    """sampler.vmcr=false with VMCR's own options set (the paper experiment's vmcr_source=model under a vmcr ablation)
    runs, as the ablation sweep needs, and says once at start that those options do nothing."""
    sampler = GLCSampler(num_steps=1, noise_reinit=False, abam=False, **options)
    with caplog.at_level("WARNING", logger="longgen.samplers.glc"):
        sampler.begin(_run(tiny2, _noise(21, tiny2.latent_shape)))
    lines = [r.getMessage() for r in caplog.records if "does nothing with sampler.vmcr=false" in r.getMessage()]
    assert len(lines) == (said is not None) and all(said in line for line in lines), lines


def test_vmcr_change_to_z_is_bounded_at_every_step(tiny2):
    """Default VMCR (Tweedie slope a_prev, paper omega 2e-5) changes z_{t-1} by |dz|/|z| <= 1e-3 at every step of a
    run without its trust region (vmcr_max_step = 1e-3) having to act: typically 1e-6..2e-5, with a spike of ~3e-4
    at one step of this seed where a Fourier coefficient of the motion is near zero (the phase term's gradient grows
    like 1/|F|). The affine slope 1/a_prev is far stronger at high noise and is held to vmcr_max_step there."""
    noise = _noise(21, tiny2.latent_shape, seed=12)
    steps = 10
    sampler = GLCSampler(num_steps=steps)
    sampler.sample(_run(tiny2, noise, [0, 1]))
    changes = [r["vmcr_change"] for r in sampler._trace]
    assert len(changes) == steps and all(0 < c <= 1e-3 for c in changes), changes
    assert not any(r["vmcr_limited"] for r in sampler._trace) and sorted(changes)[steps // 2] < 5e-5
    # the recorded change is |z_with - z_without| / |z_without| of the step, measured here on step 0
    def first_step(sampler_):
        run = _run(tiny2, noise, [0, 1])
        sampler_.begin(run)
        state = SamplerState(sampler_.initial_state(run))
        sampler_.step(run, state, 0)
        return state.tensors["x"]

    with_vmcr = GLCSampler(num_steps=steps)
    z_with, z_without = first_step(with_vmcr), first_step(GLCSampler(num_steps=steps, vmcr=False))
    measured = ((z_with - z_without).norm() / z_without.norm()).item()
    assert with_vmcr._trace[0]["vmcr_change"] == pytest.approx(measured, rel=1e-3)
    # affine: far stronger at the first step; with the default trust region it is held to 1e-3 of |z|
    affine = GLCSampler(num_steps=steps, vmcr_source="affine", vmcr_max_step=None)
    first_step(affine)
    assert affine._trace[0]["vmcr_change"] > 100 * changes[0]
    capped = GLCSampler(num_steps=steps, vmcr_source="affine")
    z_capped = first_step(capped)
    assert capped._trace[0]["vmcr_limited"] and capped._trace[0]["vmcr_change"] == pytest.approx(1e-3)
    assert ((z_capped - z_without).norm() / z_without.norm()).item() == pytest.approx(1e-3, rel=1e-3)
    assert capped.describe()["vmcr_steps_limited"] == 1


def test_vmcr_model_source_gradient_matches_autograd_through_the_model(tiny2):
    """Per-window vector-Jacobian products equal autograd through one differentiable pass over all windows."""
    length = 21
    sampler = GLCSampler(num_steps=4, noise_reinit=False, abam=False, gamma0=0.2, vmcr_source="model")
    run = _run(tiny2, _noise(length, tiny2.latent_shape, seed=8), [0, 1])
    global_index, global_ids = sampler._global(run)
    win = sampler._windows(run, global_index, global_ids)
    z = torch.randn(length, *tiny2.latent_shape, generator=torch.Generator().manual_seed(3))
    t_next = 500
    grad, loss = sampler._vmcr_model_grad(tiny2, z, win, t_next, MotionWeights())

    zr = z.clone().requires_grad_(True)
    gamma = 0.2 * math.exp(0.0005 * t_next)
    g = global_index.shape[0]
    with torch.enable_grad():
        clips = torch.stack([zr[idx] for idx in win.index])  # [K, M, C, H, W]
        x0 = tiny2.predict_grad(clips, t_next, win.prompt_ids, 6.0).x0
        fused = []
        for rows, index in ((slice(0, g), win.global_index), (slice(g, None), win.local_index)):
            total = torch.zeros_like(zr)
            count = torch.zeros(length)
            for clip, idx in zip(x0[rows], index):
                for j, f in enumerate(idx.tolist()):
                    total = total.index_add(0, torch.tensor([f]), clip[j : j + 1])
                    count[f] += 1
            fused.append(total / count[:, None, None, None])
        ref_loss = _reference_motion_loss(gamma * fused[0] + (1 - gamma) * fused[1], 0.2, 0.001, 1.0)
        (ref_grad,) = torch.autograd.grad(ref_loss, zr)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-4)
    assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-5 * ref_grad.abs().max().item())


# ------------------------------------------------------------------------------------------ ABAM (Eq. 10)
def test_abam_lambda_one_is_plain_attention_and_lambda_below_one_differs(tiny2):
    noise = _noise(21, tiny2.latent_shape, seed=6)
    base = dict(num_steps=3, noise_reinit=False, vmcr=False)
    before = dict(tiny2.pipe.transformer.attn_processors)
    plain = GLCSampler(abam=False, **base).sample(_run(tiny2, noise, [0, 1]))
    one = GLCSampler(abam=True, abam_lambda=1.0, **base).sample(_run(tiny2, noise, [0, 1]))
    # equal up to rounding: ABAM runs each branch's anchors in calls of their own (micro_batch.run_stacked), so the
    # transformer calls hold other batches than the plain predict's
    assert (one - plain).abs().max() <= 1e-5
    low = GLCSampler(abam=True, abam_lambda=0.1, **base).sample(_run(tiny2, noise, [0, 1]))
    assert (low - plain).abs().max() > 1e-3
    after = dict(tiny2.pipe.transformer.attn_processors)
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert "predict" not in vars(tiny2)


def test_abam_processors_removed_after_an_exception(tiny2):
    before = dict(tiny2.pipe.transformer.attn_processors)
    x = torch.randn(3, 13, *tiny2.latent_shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KeyError):
        with tiny2.anchor_attention(0.1):
            assert all(type(p).__name__ == "JointAttention" and p.video_kv is not None
                       for p in tiny2.pipe.transformer.attn_processors.values())
            tiny2.predict(x, 500, [0, 1, 0], 6.0)
            raise KeyError("boom")
    with pytest.raises(ValueError, match="do not add up"):
        with tiny2.anchor_attention(0.1, groups=[1, 1]):
            tiny2.predict(x, 500, [0, 1, 0], 6.0)
    after = dict(tiny2.pipe.transformer.attn_processors)
    assert all(before[k] is after[k] for k in before)
    assert "predict" not in vars(tiny2)
    with pytest.raises(UsageError):
        tiny2.anchor_attention(1.5).__enter__()


def test_abam_anchor_is_independent_of_micro_batch(tiny2):
    noise = _noise(21, tiny2.latent_shape, seed=9)
    sampler = GLCSampler(num_steps=2, noise_reinit=False, vmcr=False, abam=True, abam_lambda=0.1)
    outs = []
    try:
        for mb in (1, 5, 64):  # 1: every anchor runs alone; 5: the conditional anchor shares a call with others
            tiny2.micro_batch = mb
            outs.append(sampler.sample(_run(tiny2, noise, [0, 1])))
    finally:
        tiny2.micro_batch = 64
    assert (outs[0] - outs[2]).abs().max() <= 2e-5
    assert (outs[1] - outs[2]).abs().max() <= 2e-5


def test_abam_anchor_per_guidance_branch_and_group():
    """Guided ABAM = guidance applied to an unconditional-only and a conditional-only ABAM pass (each with its own
    anchors); each group's anchor is untouched by the blend; a one-window group is plain attention."""
    backbone = make_tiny(prompts=("a cat", "a dog runs", ""), negative="")  # id 2 is the negative prompt
    x = torch.randn(5, 13, *backbone.latent_shape, generator=torch.Generator().manual_seed(4))
    ids, groups, t, scale = [0, 1, 1, 0, 1], [2, 3], 600, 6.0
    plain = backbone.predict(x, t, ids, scale).x0
    with backbone.anchor_attention(0.3, groups=groups):
        guided = backbone.predict(x, t, ids, scale).x0
        uncond = backbone.predict(x, t, [2] * 5, 1.0).x0
        cond = backbone.predict(x, t, ids, 1.0).x0
    assert torch.allclose(guided, uncond + scale * (cond - uncond), atol=1e-4)
    assert torch.allclose(guided[[0, 2]], plain[[0, 2]], atol=1e-4)  # the anchors
    assert (guided[[1, 3, 4]] - plain[[1, 3, 4]]).abs().max() > 1e-3
    with backbone.anchor_attention(0.3, groups=[1, 1, 1, 1, 1]):
        single = backbone.predict(x, t, ids, scale).x0
    assert torch.allclose(single, plain, atol=1e-4)


class _Bare(Denoiser):
    window = 13
    latent_shape = (4, 8, 8)
    device = torch.device("cpu")

    def schedule(self, num_steps):
        raise AssertionError("not reached")

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        raise AssertionError("not reached")


def test_backbones_without_abam_or_gradients_raise_usage_error():
    with pytest.raises(UsageError, match="abam=false"):
        _Bare().anchor_attention(0.1)
    with pytest.raises(UsageError, match="vmcr_source=tweedie"):
        _Bare().predict_grad(torch.zeros(1, 13, 4, 8, 8), 1, [0], 1.0)


# ------------------------------------------------------------------------------------------ switches and config
@pytest.mark.parametrize(
    "switch",
    ["global_path", "local_path", "noise_reinit", "vmcr", "abam", "random_shift", None],
)
def test_every_switch_runs(tiny2, switch):
    kwargs = {} if switch is None else {switch: False}
    out = GLCSampler(num_steps=2, **kwargs).sample(_run(tiny2, _noise(21, tiny2.latent_shape), [0, 1]))
    assert out.shape == (1, 21, *tiny2.latent_shape) and torch.isfinite(out).all()


def test_model_source_vmcr_runs(tiny2):
    sampler = GLCSampler(num_steps=2, vmcr_source="model", omega=1e-3)
    out = sampler.sample(_run(tiny2, _noise(21, tiny2.latent_shape), [0, 1]))
    assert torch.isfinite(out).all() and all(r["vmcr_loss"] is not None for r in sampler._trace)


@pytest.mark.parametrize(
    "override,match",
    [
        ({"global_path": False, "local_path": False}, "at least one path"),
        ({"padding": "mirror"}, "padding"),
        ({"filter": "box"}, "filter"),
        ({"vmcr_source": "fresh"}, "vmcr_source"),
        ({"vmcr_max_step": 0}, "vmcr_max_step"),
        ({"abam_lambda": 2.0}, "abam_lambda"),
        ({"dilation": 0}, "dilation"),
        ({"spatial_cutoff": 0}, "spatial_cutoff"),
    ],
)
def test_bad_options_fail_fast(override, match):
    cfg = OmegaConf.load(REPO / "conf" / "sampler" / "glc.yaml")
    cfg.stride = 4
    for k, v in override.items():
        cfg[k] = v
    with pytest.raises(UsageError, match=match):
        build(cfg, "sampler", "glc")


def test_config_defaults_are_the_papers():
    cfg = OmegaConf.load(REPO / "conf" / "sampler" / "glc.yaml")
    cfg.stride = 4
    s = build(cfg, "sampler", "glc")
    assert (s.gamma0, s.beta, s.abam_lambda) == (0.005, 0.0005, 0.1)
    assert (s.lambda_f, s.lambda_mse, s.lambda_phase, s.omega) == (0.2, 0.001, 1.0, 2e-5)
    assert (s.vmcr_source, s.vmcr_max_step) == ("tweedie", 1e-3)  # our choices, see glc.yaml
    # the manifest says which reading of lambda is used: Eq. 10, lambda weights the clip's own K/V
    info = s.describe()
    assert info["abam_anchor_weight"] == pytest.approx(0.9) and "Eq. 10" in info["abam_convention"]
    assert all([s.global_path, s.local_path, s.noise_reinit, s.vmcr, s.abam, s.random_shift])


def test_cli_generates_a_glc_video(tmp_path):
    exe = Path(sys.executable).with_name("longgen")
    out = tmp_path / "run"
    # a hand-written story whose second local prompt lacks the global description: generate warns (issue 9)
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global": "A red fox in deep snow.",
                                 "local": ["A red fox in deep snow. It trots.", "The fox curls up and sleeps."]}))
    cmd = [str(exe), "generate", "sampler=glc", "backbone=tiny", "num_windows=6", f"story={story}",
           "sampler.num_steps=2", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    log_text = "".join(p.read_text() for p in out.glob("*.log"))
    assert "local prompt 2 of 2 does not contain the global prompt" in log_text, log_text[-2000:]
    assert "local prompt 1" not in log_text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["latent_length"] == 33
    assert manifest["frames"] == 4 * (33 - 1) + 1 == 129
    assert (out / "video.mp4").stat().st_size > 0
    assert manifest["sampler"]["name"] == "glc"
    # 2 steps, 3 global clips + 6 or 7 local windows, CFG doubles
    assert manifest["transformer_forwards"] in (36, 38, 40)


def test_abam_keeps_one_compiled_graph_for_all_blocks():
    """Compiled blocks with ABAM on: one graph per distinct call shape, shared by every block, no graph breaks
    (the blend is an opaque custom op and one processor serves all layers). A processor that closes over its layer
    index makes Dynamo compile each block separately until its recompile limit (8 here, then eager blocks)."""
    from torch._dynamo.testing import CompileCounter

    den = make_tiny(prompts=("a cat", "a dog runs"), **{"architecture.transformer.num_layers": 6})
    counter = CompileCounter()
    torch._dynamo.reset()
    try:
        for block in den._blocks():
            block.compile(backend=counter, dynamic=False)
        x = torch.randn(3, 13, *den.latent_shape, generator=torch.Generator().manual_seed(0))
        den.micro_batch = 2
        eager = None
        with den.anchor_attention(0.1, groups=[1, 2]):
            compiled = den.predict(x, 500, [0, 1, 0], 6.0).x0
        # calls: per branch the 2 anchors, then the other window: 2 call sizes, and the first block's input has
        # other strides than the later blocks' (one more graph each): 4 graphs whatever the number of blocks
        assert counter.frame_count <= 4, counter.frame_count
        for block in den._blocks():
            block._compiled_call_impl = None  # back to eager for the reference
        with den.anchor_attention(0.1, groups=[1, 2]):
            eager = den.predict(x, 500, [0, 1, 0], 6.0).x0
        assert (compiled - eager).abs().max() <= 1e-5
    finally:
        torch._dynamo.reset()


def test_anchor_blend_op_counts_layers_per_transformer_call():
    """The op finds its layer by counting its calls inside a transformer call: layer l of the other rows blends with
    layer l's anchor, not with another layer's."""
    from longgen.backbones.anchor_attention import AnchorLayout, anchor_blend

    key = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))  # [b, heads, N, hd]
    layout = AnchorLayout(0.5)
    with layout.call(2):
        layout.phases(2)
        with layout.running([0]):
            for layer in range(3):  # a different anchor per layer
                anchor_blend(key[:1] + 10 * layer, key[:1] - 10 * layer)
        with layout.running([1]):
            for layer in range(3):
                k, v = anchor_blend(key[1:], key[1:])
                assert torch.allclose(k, 0.5 * key[1:] + 0.5 * (key[:1] + 10 * layer), atol=1e-6)
                assert torch.allclose(v, 0.5 * key[1:] + 0.5 * (key[:1] - 10 * layer), atol=1e-6)


def test_anchor_blend_op_agrees_with_its_shape_function():
    """The custom op's outputs have the layout its fake (shape) function promises the compiler — Inductor asserts
    it on the GPU — for CogVideoX's strided [b, heads, N, hd] views, and they are Eq. 10 written out."""
    from longgen.backbones.anchor_attention import AnchorLayout, anchor_blend

    gen = torch.Generator().manual_seed(0)
    key = torch.randn(2, 6, 3, 4, generator=gen).transpose(1, 2)  # [b, heads, N, hd], not contiguous
    value = torch.randn(2, 6, 3, 4, generator=gen).transpose(1, 2)
    layout = AnchorLayout(0.3)
    with layout.call(2):
        layout.phases(2)  # one branch: row 0 is the anchor, row 1 the other
        with layout.running([0]):
            for _ in range(30):  # store the anchor for layers 0..29
                k0, v0 = anchor_blend(key[:1], value[:1])
        assert torch.equal(k0, key[:1]) and k0.stride() == key[:1].stride()
        with layout.running([1]):
            k1, v1 = anchor_blend(key[1:], value[1:])
            assert k1.stride() == key[1:].stride() and v1.stride() == value[1:].stride()
            assert torch.allclose(k1, 0.3 * key[1:] + 0.7 * key[:1], atol=1e-6)
            assert torch.allclose(v1, 0.3 * value[1:] + 0.7 * value[:1], atol=1e-6)
            torch.library.opcheck(anchor_blend, (key[1:], value[1:]),
                                  test_utils=("test_schema", "test_faketensor"))

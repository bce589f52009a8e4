"""GLC-Diffusion's VMCR with the paper's source of x̂0 (Algorithm 1, lines 21-23 of arXiv 2501.05484's supplement:
motion vectors of x̂0 of z_{t-1} predicted by the model at t-1, z_{t-1} <- z_{t-1} - omega * grad_{z_{t-1}} loss):
`sampler.vmcr_source=model` against a plain loop over windows, frames and frame pairs written out here, and its
checkpoint/resume bit for bit. Tiny random CogVideoX at 16x16 pixels on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from longgen.run.checkpoint import Checkpoint, Interrupts, StepHooks, load_checkpoint
from longgen.samplers.base import SamplerState, SamplingRun
from longgen.samplers.glc import GLCSampler, dilated_clips

from conftest import make_tiny

L = 21  # latent frames: 2 global dilated clips (d = 2) and 3-4 local windows of 13 at stride 4
MODEL = dict(num_steps=3, vmcr_source="model", noise_reinit=False, abam=False, vmcr_max_step=None, omega=1e-3,
             gamma0=0.2)  # a large global share, so the gamma of Eq. 9 at t-1 shows in the update


@pytest.fixture(scope="module")
def small():
    return make_tiny(prompts=("a cat", "a dog runs"), height=16, width=16)


def _run(backbone, gen_seed=7):
    noise = torch.randn((1, L, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: int(s >= 4),
                       generator=torch.Generator().manual_seed(gen_seed))


def _first_step(sampler, backbone):
    run = _run(backbone)
    sampler.begin(run)
    state = SamplerState(sampler.initial_state(run))
    sampler.step(run, state, 0)
    return run, state.tensors["x"]  # [L, C, H, W] z_{t-1} after VMCR


def _paper_loss(x0):
    """Eqs. 12-14 with the paper's weights (lambda_f 0.2, lambda_mse 0.001, lambda_phase 1), one frame pair at a time:
    cosine and squared L2 over a whole frame, amplitude/phase L1 of the orthonormal 2-D FFT, phase gap wrapped."""
    delta = [x0[i + 1] - x0[i] for i in range(x0.shape[0] - 1)]  # Eq. 12
    total = x0.sum() * 0
    for a, b in zip(delta[:-1], delta[1:]):
        va, vb = a.reshape(-1), b.reshape(-1)
        cos = (va * vb).sum() / (va.norm() * vb.norm()).clamp_min(1e-8)
        total = total + (1 - cos) + 0.001 * ((va - vb) ** 2).sum()  # Eq. 13
        fa, fb = torch.fft.fft2(a, norm="ortho"), torch.fft.fft2(b, norm="ortho")
        gap = torch.angle(fa) - torch.angle(fb)
        gap = torch.atan2(torch.sin(gap), torch.cos(gap))  # wrapped to [-pi, pi]
        total = total + 0.2 * ((fa.abs() - fb.abs()).abs().sum() + 1.0 * gap.abs().sum())  # Eq. 14
    return total


def test_model_source_step_is_the_papers_lines_21_to_23(small):
    """One whole step with vmcr_source=model equals: the step without VMCR (same windows: same generator), then
    x0 of z_{t-1} predicted at t-1 window by window (CFG 6, prompts per window), averaged per frame within each path,
    mixed with gamma(t-1) (Eq. 9), the motion loss, and one gradient step through the model."""
    _, with_vmcr = _first_step(GLCSampler(**MODEL), small)
    plain = GLCSampler(**{**MODEL, "vmcr": False})
    run, z = _first_step(plain, small)  # z_{t-1} before VMCR, [L, C, H, W]
    t_next = small.schedule(3).timesteps[1]
    starts = plain._trace[0]["local_starts"]
    paths = [[list(map(int, clip)) for clip in dilated_clips(L, 13)], [list(range(s, s + 13)) for s in starts]]
    zr = z.clone().requires_grad_(True)
    with torch.enable_grad():
        fused = []
        for windows in paths:
            total, count = [zr[0] * 0 for _ in range(L)], [0] * L
            for frames in windows:
                # a global clip spans the video and takes the prompt of the run's whole length; a local window its own
                prompt = run.prompt_for_window(0, L) if windows is paths[0] else run.prompt_for_window(frames[0], 13)
                clip = torch.stack([zr[f] for f in frames])[None]  # [1, 13, C, H, W]
                x0 = small.predict_grad(clip, t_next, [prompt], 6.0).x0[0]  # [13, C, H, W], guided
                for j, f in enumerate(frames):
                    total[f] = total[f] + x0[j]
                    count[f] += 1
            fused.append(torch.stack([total[f] / count[f] for f in range(L)]))
        gamma = 0.2 * math.exp(0.0005 * t_next)
        loss = _paper_loss(gamma * fused[0] + (1 - gamma) * fused[1])
        (grad,) = torch.autograd.grad(loss, zr)
    expected = z - 1e-3 * grad  # Eq. 15 / Algorithm 1 line 23
    assert not torch.allclose(expected, z, atol=1e-6)  # the update is visible at this step size
    change = (with_vmcr - z).norm()
    assert (with_vmcr - expected).norm() <= 1e-3 * change, ((with_vmcr - expected).norm(), change)


def test_model_source_resume_is_bit_identical(small, tmp_path):
    reference = GLCSampler(**MODEL).sample(_run(small))
    path, run = tmp_path / "checkpoint.safetensors", _run(small)
    hooks = StepHooks(path, lambda state, total: Checkpoint(state, total, run.generator.get_state(), {}, "s"),
                      Interrupts(), every=1)

    class Stop(Exception):
        pass

    def stop_after_one(state, total):
        hooks(state, total)
        if state.done == 1:
            raise Stop

    run.after_step = stop_after_one
    with pytest.raises(Stop):
        GLCSampler(**MODEL).sample(run)
    ckpt = load_checkpoint(path)
    fresh = _run(small)
    fresh.generator.set_state(ckpt.generator_state)
    assert torch.equal(GLCSampler(**MODEL).sample(fresh, ckpt.state), reference)


def test_model_gradients_recompute_each_block_and_equal_plain_autograd(small):
    """The VJPs of `vmcr_source=model` run with diffusers' gradient checkpointing (memory of one block, not of the
    whole window); recomputing the blocks in the backward pass gives plain autograd's gradient."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 13, *small.latent_shape), generator=g)  # [K, M, C, H, W]
    cotangent = torch.randn(x.shape, generator=g)
    got = small.window_vjp(x, 500, [0, 1], 6.0, cotangent)  # [K, M, C, H, W]
    assert small.pipe.transformer.gradient_checkpointing
    small.pipe.transformer.disable_gradient_checkpointing()
    plain = []
    for k in range(2):
        xk = x[k : k + 1].clone().requires_grad_(True)
        with torch.enable_grad():
            out = small._predict(xk, 500, [k], 6.0).x0  # every activation kept
            plain.append(torch.autograd.grad(out, xk, grad_outputs=cotangent[k : k + 1])[0][0])
    torch.testing.assert_close(got, torch.stack(plain), rtol=1e-5, atol=1e-7)

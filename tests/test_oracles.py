"""Samplers pinned to public oracles: diffusers' CogVideoXPipeline (one window) and per-window
CogVideoXDDIMScheduler.step outputs averaged per frame (Gen-L-Video), on the tiny random model in float32."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, DDIMScheduler

from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers import gen_l_video
from longgen.samplers.gen_l_video import GenLVideoSampler

from conftest import make_tiny


def _noise(length, shape, seed=0):
    return torch.randn((1, length, *shape), generator=torch.Generator().manual_seed(seed))


def _run(backbone, noise, ids):
    def prompt_for_window(start, size):
        return ids[min(len(ids) - 1, int((start + size / 2) * len(ids) / noise.shape[1]))]

    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=prompt_for_window,
                       generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("steps,guidance", [(50, 6.0), (7, 1.0)])
def test_direct_matches_diffusers_pipeline(steps, guidance):
    backbone = make_tiny(prompts=("a red fox in snow",))
    noise = _noise(backbone.window, backbone.latent_shape)
    ours = DirectSampler(num_steps=steps, guidance_scale=guidance).sample(_run(backbone, noise, [0]))

    pipe = backbone.pipe
    reference = pipe(
        prompt_embeds=backbone._embeds[0:1],
        negative_prompt_embeds=backbone._negative,
        num_frames=backbone.num_frames,
        height=backbone.height,
        width=backbone.width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise.clone(),
        output_type="latent",
    ).frames  # [1, F, C, H, W]
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    # the oracle is sensitive: a different seed is far away
    other = _noise(backbone.window, backbone.latent_shape, seed=1)
    assert (DirectSampler(num_steps=3, guidance_scale=guidance).sample(_run(backbone, other, [0])) - reference).abs().max() > 1e-2


def _oracle_gen_l_video(backbone, noise, starts, window_ids, steps, guidance):
    """Independent Gen-L-Video: per-window guided v from the transformer, per-window scheduler.step, average of the
    per-window x_{t-1} over the windows covering each frame (Python loops, diffusers' scheduler)."""
    sched = CogVideoXDDIMScheduler.from_config(backbone.pipe.scheduler.config)
    sched.set_timesteps(steps)
    transformer = backbone.pipe.transformer
    cond = backbone._embeds
    neg = backbone._negative
    m = backbone.window
    x = noise.clone()  # [1, L, C, H, W]
    for t in sched.timesteps:
        total = torch.zeros_like(x)
        count = torch.zeros(x.shape[1])
        for start, pid in zip(starts, window_ids):
            xw = x[:, start : start + m]
            with torch.no_grad():
                v_c = transformer(hidden_states=xw, encoder_hidden_states=cond[pid : pid + 1], timestep=t.expand(1), return_dict=False)[0]
                if guidance > 1:
                    v_u = transformer(hidden_states=xw, encoder_hidden_states=neg, timestep=t.expand(1), return_dict=False)[0]
                    v = v_u + guidance * (v_c - v_u)
                else:
                    v = v_c
            prev = sched.step(v, t, xw, return_dict=False)[0]
            total[:, start : start + m] += prev
            count[start : start + m] += 1
        assert (count > 0).all(), "oracle: a frame is not covered"
        x = total / count[None, :, None, None, None]
    return x


@pytest.mark.parametrize(
    "length,stride,expected_starts",
    [
        (13, 4, [0]),                 # one window
        (21, 4, [0, 4, 8]),           # L = M + S(N-1)
        (19, 4, [0, 4, 6]),           # last window end-aligned
        (24, 5, [0, 5, 10, 11]),      # odd stride, end-aligned tail
        (20, 13, [0, 7]),             # stride = window
    ],
)
def test_gen_l_video_matches_per_window_scheduler_average(length, stride, expected_starts):
    backbone = make_tiny(prompts=("a cat", "a dog runs"))
    sampler = GenLVideoSampler(num_steps=6, guidance_scale=6.0, stride=stride)
    plan = sampler.plan(length, backbone.window)
    assert list(plan.starts) == expected_starts
    assert min(plan.coverage()) >= 1
    noise = _noise(length, backbone.latent_shape, seed=3)
    run = _run(backbone, noise, [0, 1])
    ours = sampler.sample(run)
    ids = [run.prompt_for_window(s, backbone.window) for s in plan.starts]
    if len(plan.starts) > 1:
        assert len(set(ids)) == 2, "both local prompts must be used"
    reference = _oracle_gen_l_video(backbone, noise, plan.starts, ids, 6, 6.0)
    assert (ours - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("group", [1, 3])
def test_gen_l_video_in_window_groups_matches_the_oracle_and_holds_one_group(monkeypatch, group):
    """A step hands the model WINDOWS_PER_PREDICT windows at a time and sums their x̂0 into the frames as they come:
    the result still matches the per-window scheduler average, no `predict` gets more than one group, and with
    micro-batches of two rows (the full-size Wan backbones') the bytes equal those of one group of every window."""
    backbone = make_tiny(prompts=("a cat", "a dog runs"), micro_batch=2)
    sampler = GenLVideoSampler(num_steps=4, guidance_scale=6.0, stride=3)
    plan = sampler.plan(31, backbone.window)
    assert plan.count == 7  # more windows than a group of 1 or 3, and not a multiple of 3
    noise = _noise(31, backbone.latent_shape, seed=4)
    sizes = []
    predict = backbone.predict

    def counted(x_t, *args):
        sizes.append(x_t.shape[0])
        return predict(x_t, *args)

    monkeypatch.setattr(backbone, "predict", counted)
    monkeypatch.setattr(gen_l_video, "WINDOWS_PER_PREDICT", group)
    run = _run(backbone, noise, [0, 1])
    ours = sampler.sample(run)
    assert max(sizes) == group and sum(sizes) == plan.count * 4
    ids = [run.prompt_for_window(s, backbone.window) for s in plan.starts]
    assert len(set(ids)) == 2, "both local prompts must be used"
    assert (ours - _oracle_gen_l_video(backbone, noise, plan.starts, ids, 4, 6.0)).abs().max().item() <= 1e-5
    monkeypatch.setattr(gen_l_video, "WINDOWS_PER_PREDICT", plan.count)
    assert torch.equal(ours, sampler.sample(_run(backbone, noise, [0, 1])))


def test_gen_l_video_one_window_equals_direct():
    backbone = make_tiny()
    noise = _noise(backbone.window, backbone.latent_shape, seed=5)
    a = GenLVideoSampler(num_steps=5, stride=4).sample(_run(backbone, noise, [0]))
    b = DirectSampler(num_steps=5).sample(_run(backbone, noise, [0]))
    assert torch.equal(a, b) or (a - b).abs().max() <= 1e-6


def test_direct_with_eta_is_diffusers_ddim_with_the_runs_noise():
    """DDIM with η = 0.5 (Song et al. 2021, Eq. 12): DirectSampler against a loop of diffusers' DDIMScheduler.step on
    the tiny model's guided v, with the scheduler's ᾱ replaced by the loaded CogVideoX scheduler's (its SNR shift) and
    the variance noise the run draws: one standard normal of the latent's shape per step from the run's generator."""
    backbone = make_tiny(prompts=("a red fox in snow",))
    noise = _noise(backbone.window, backbone.latent_shape, seed=7)
    ours = DirectSampler(num_steps=3, guidance_scale=6.0, eta=0.5).sample(_run(backbone, noise, [0]))

    cog = CogVideoXDDIMScheduler.from_config(backbone.pipe.scheduler.config)
    cog.set_timesteps(3)
    sched = DDIMScheduler.from_config(backbone.pipe.scheduler.config, clip_sample=False)
    sched.set_timesteps(3)
    assert sched.timesteps.tolist() == cog.timesteps.tolist()
    sched.alphas_cumprod, sched.final_alpha_cumprod = cog.alphas_cumprod, cog.final_alpha_cumprod
    transformer, gen, x = backbone.pipe.transformer, torch.Generator().manual_seed(1), noise.clone()
    for t in sched.timesteps:
        with torch.no_grad():
            v_c, v_u = (transformer(hidden_states=x, encoder_hidden_states=emb, timestep=t.expand(1),
                                    return_dict=False)[0] for emb in (backbone._embeds[0:1], backbone._negative))
        z = torch.randn(tuple(x.shape), generator=gen, dtype=torch.float32)
        x = sched.step(v_u + 6.0 * (v_c - v_u), t, x, eta=0.5, variance_noise=z).prev_sample
    assert (ours - x).abs().max().item() <= 1e-5
    # the oracle is sensitive to η: the same run without the noise term is far away
    plain = DirectSampler(num_steps=3, guidance_scale=6.0).sample(_run(backbone, noise, [0]))
    assert (plain - x).abs().max().item() > 1e-2

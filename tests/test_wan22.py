"""Wan 2.2 behind the seam (longgen/backbones/wan22.py) on its tiny random variants, float32:

- `tiny-wan22-ti2v` (TI2V-5B's shape: patchified high-compression VAE, a timestep per token) and `tiny-wan22-a14b`
  (two experts switched at t = 0.875·T, guidance 4 high / 3 low): `direct` equals diffusers' `WanPipeline` built
  with the same components (`expand_timesteps`, `transformer_2`, `boundary_ratio`, `guidance_scale_2`), which
  exercises the switch (4 steps at shift 12: two high-noise steps, two low);
- the schedule's DDIM η = 0 step is `FlowMatchEulerDiscreteScheduler.step` at the A14B's shift;
- the switch inside every predict: t ≥ 875 takes the high-noise expert at the caller's scale, t < 875 the low-noise
  expert at guidance_scale_2, and per-frame timesteps across the boundary take each frame from its own expert;
- Gen-L-Video on the A14B equals a per-window oracle that switches experts itself;
- every sampler runs on each variant (ABAM, FreeLong, KV-sharing in both A14B experts); a resume is bit-identical;
  the streamed decode of the patchified VAE equals `AutoencoderKLWan.decode`; the full-size configs' facts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from longgen.build import build
from longgen.diffusion import ddim_step, flow_to_x0_eps
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.ditctrl import DiTCtrlSampler
from longgen.samplers.fifo import FIFOSampler
from longgen.samplers.freelong import FreeLongSampler
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import GLCSampler
from longgen.samplers.syncos import SynCoSSampler

from conftest import REPO
from test_checkpoint import checkpoint_after_two_steps

BOUNDARY = 875.0  # tiny-wan22-a14b: boundary_ratio 0.875 of T = 1000
SHIFTS = {"tiny-wan22-ti2v": 5.0, "tiny-wan22-a14b": 12.0}  # architecture.scheduler.flow_shift


def make(name: str):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml")
    backbone = build(cfg, "backbone", name)
    backbone.load()
    backbone.encode_prompts(["a red fox in snow", "a dog runs"], "")
    return backbone


@pytest.fixture(scope="module")
def ti2v():
    return make("tiny-wan22-ti2v")


@pytest.fixture(scope="module")
def a14b():
    return make("tiny-wan22-a14b")


def _noise(backbone, length, seed=0):
    return torch.randn((1, length, *backbone.latent_shape), generator=torch.Generator().manual_seed(seed))


def _run(backbone, noise, seed=1):
    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: int(s >= 3),
                       generator=torch.Generator().manual_seed(seed))


def _velocity(model, negative, xw, t, cond, guidance):
    """Guided velocity straight from one diffusers transformer for windows xw [b, F, C, H, W]: a scalar timestep
    per sample, the two branches as separate calls."""
    ts = torch.full((xw.shape[0],), float(t))
    hidden = xw.permute(0, 2, 1, 3, 4)  # [b, C, F, H, W]
    with torch.no_grad():
        v = model(hidden_states=hidden, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
        if guidance > 1:
            neg = negative.expand(xw.shape[0], -1, -1)
            v_u = model(hidden_states=hidden, timestep=ts, encoder_hidden_states=neg, return_dict=False)[0]
            v = v_u + guidance * (v - v_u)
    return v.permute(0, 2, 1, 3, 4)


def _expert(a14b, t):
    """(transformer, guidance scale) the pipeline takes at timestep t (pipeline_wan.py: t >= boundary → high)."""
    if t >= BOUNDARY:
        return a14b.pipe.transformer, 4.0
    return a14b.pipe.transformer_2, 3.0


# ------------------------------------------------------------------------------------------ direct = WanPipeline
@pytest.mark.parametrize("name", ["tiny-wan22-ti2v", "tiny-wan22-a14b"])
def test_direct_matches_wan_pipeline(ti2v, a14b, name):
    backbone = {"tiny-wan22-ti2v": ti2v, "tiny-wan22-a14b": a14b}[name]
    guidance = 5.0 if backbone.boundary_ratio is None else 4.0
    noise = _noise(backbone, backbone.window)
    calls = {0: 0, 1: 0}
    hooks = [m.register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, m in enumerate((backbone.pipe.transformer, backbone.pipe.transformer_2)) if m is not None]
    try:
        ours = DirectSampler(num_steps=4, guidance_scale=guidance).sample(_run(backbone, noise))
    finally:
        for h in hooks:
            h.remove()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=backbone.pipe.vae, transformer=backbone.pipe.transformer,
                       transformer_2=backbone.pipe.transformer_2, boundary_ratio=backbone.boundary_ratio,
                       expand_timesteps=backbone.expand_timesteps,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFTS[name]))
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt_embeds=backbone._embeds[0:1], negative_prompt_embeds=backbone._negative, height=backbone.height,
        width=backbone.width, num_frames=backbone.num_frames, num_inference_steps=4, guidance_scale=guidance,
        guidance_scale_2=None if backbone.boundary_ratio is None else 3.0,
        latents=noise.permute(0, 2, 1, 3, 4).clone(), output_type="latent",
    ).frames.permute(0, 2, 1, 3, 4)
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    if backbone.boundary_ratio is not None:  # t = 1000, 960 high; 857, 12 low (one call each)
        assert calls == {0: 2, 1: 2}
    else:
        assert calls == {0: 4, 1: 0}


def test_ti2v_per_token_timesteps_are_what_the_transformer_sees(ti2v):
    """expand_timesteps: the call passes [b, F·h'·w'] timesteps (each token at t), as the TI2V pipeline does."""
    seen = []
    hook = ti2v.pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep"].shape), with_kwargs=True)
    try:
        ti2v.predict(_noise(ti2v, 21), 700.0, [0], 1.0)
    finally:
        hook.remove()
    tokens = 21 * (ti2v.latent_shape[1] // 2) * (ti2v.latent_shape[2] // 2)
    assert seen == [torch.Size([1, tokens])]


# ------------------------------------------------------------------------------------------ the flow step
def test_ddim_eta0_step_is_the_euler_step_at_the_a14b_shift(a14b):
    sched = a14b.schedule(8)
    euler = FlowMatchEulerDiscreteScheduler(shift=12.0)
    euler.set_timesteps(8)
    assert list(sched.timesteps) == [float(t) for t in euler.timesteps]
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(euler.timesteps):
        x, v = 3 * torch.randn(1, 3, 4, 4, 4, generator=gen), torch.randn(1, 3, 4, 4, 4, generator=gen)
        ours = ddim_step(x, flow_to_x0_eps(x, v, sched.step(i).s)[0], sched.step(i))
        assert (ours - euler.step(v, t, x, return_dict=False)[0]).abs().max().item() <= 1e-5, f"step {i}"


# ------------------------------------------------------------------------------------------ the expert switch
def test_every_predict_takes_the_expert_of_its_timestep(a14b):
    x = _noise(a14b, 21, seed=2)
    cond = a14b._embeds[0:1]
    for t in (BOUNDARY, BOUNDARY - 0.5, 999.0, 300.0):
        model, scale = _expert(a14b, t)
        v = _velocity(model, a14b._negative, x, t, cond, scale)
        got = a14b.predict(x, t, [0], 4.0)
        assert (got.x0 - (x - t / 1000 * v)).abs().max().item() <= 1e-5, t
    # unguided callers stay unguided on both experts
    v = _velocity(a14b.pipe.transformer_2, a14b._negative, x, 300.0, cond, 1.0)
    assert (a14b.predict(x, 300.0, [0], 1.0).x0 - (x - 0.3 * v)).abs().max().item() <= 1e-5


def test_per_frame_timesteps_across_the_boundary_take_each_frame_from_its_expert(a14b):
    x = _noise(a14b, 21, seed=3)
    ts = torch.linspace(990.0, 700.0, 21)  # frames 0..8 high noise (≥ 875), 9..20 low
    got = a14b.predict(x, ts, [1], 4.0)
    high = ts >= BOUNDARY
    assert 0 < int(high.sum()) < 21
    for k, model, scale in ((True, a14b.pipe.transformer, 4.0), (False, a14b.pipe.transformer_2, 3.0)):
        # oracle: that expert over the whole window with each frame's own timestep spread over its tokens
        tokens = (a14b.latent_shape[1] // 2) * (a14b.latent_shape[2] // 2)
        per_token = ts.repeat_interleave(tokens)[None]  # [1, F·h'·w']
        hidden = x.permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            vc = model(hidden_states=hidden, timestep=per_token, encoder_hidden_states=a14b._embeds[1:2],
                       return_dict=False)[0]
            vu = model(hidden_states=hidden, timestep=per_token, encoder_hidden_states=a14b._negative,
                       return_dict=False)[0]
        v = (vu + scale * (vc - vu)).permute(0, 2, 1, 3, 4)
        x0 = x - (ts / 1000).reshape(1, -1, 1, 1, 1) * v
        frames = high if k else ~high
        assert (got.x0[:, frames] - x0[:, frames]).abs().max().item() <= 1e-5, k


# ------------------------------------------------------------------------------------------ Gen-L-Video oracle
def test_gen_l_video_on_a14b_matches_a_per_window_oracle(a14b):
    length, m, starts, steps = 27, a14b.window, [0, 6], 4
    noise = _noise(a14b, length, seed=4)
    run = _run(a14b, noise)
    ours = GenLVideoSampler(num_steps=steps, guidance_scale=4.0, stride=6).sample(run)
    schedulers = []
    for _ in starts:
        s = FlowMatchEulerDiscreteScheduler(shift=12.0)
        s.set_timesteps(steps)
        schedulers.append(s)
    x = noise.clone()
    for t in schedulers[0].timesteps:
        model, scale = _expert(a14b, float(t))
        total, count = torch.zeros_like(x), torch.zeros(length)
        for start, sched in zip(starts, schedulers):
            pid = run.prompt_for_window(start, m)
            xw = x[:, start : start + m]
            v = _velocity(model, a14b._negative, xw, t, a14b._embeds[pid : pid + 1], scale)
            total[:, start : start + m] += sched.step(v, t, xw, return_dict=False)[0]
            count[start : start + m] += 1
        x = total / count[None, :, None, None, None]
    assert (ours - x).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------ every sampler
SAMPLERS = {
    "direct": lambda: DirectSampler(num_steps=3),
    "gen-l-video": lambda: GenLVideoSampler(num_steps=3, stride=6),
    "syncos": lambda: SynCoSSampler(num_steps=3, stride=6, t_min=0, iters=1),
    "glc": lambda: GLCSampler(num_steps=3, stride=6, vmcr_source="affine"),
    "fifo": lambda: FIFOSampler(num_partitions=1),
    "freelong": lambda: FreeLongSampler(num_steps=3),
    "ditctrl": lambda: DiTCtrlSampler(num_steps=3, stride=6, kv_steps=(0, 3), kv_layers=(0, 2)),
}


@pytest.mark.parametrize("name", ["tiny-wan22-ti2v", "tiny-wan22-a14b"])
def test_every_sampler_runs(ti2v, a14b, name):
    """Every sampler on each variant, the A14B's processors (GLC's ABAM, FreeLong, DiTCtrl's KV-sharing) in both
    experts (tests/test_wan22_processors.py checks them against one-expert oracles)."""
    backbone = {"tiny-wan22-ti2v": ti2v, "tiny-wan22-a14b": a14b}[name]
    for sampler, make_sampler in SAMPLERS.items():
        length = 21 if sampler in ("direct", "freelong") else 27
        noise = _noise(backbone, length, seed=5)
        calls = [0, 0]
        hooks = [m.register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
                 for k, m in enumerate((backbone.pipe.transformer, backbone.pipe.transformer_2)) if m is not None]
        try:
            out = make_sampler().sample(_run(backbone, noise))
        finally:
            for h in hooks:
                h.remove()
        assert out.shape == noise.shape and torch.isfinite(out).all(), sampler
        assert (out - noise).abs().max() > 1e-3, sampler
        # 3 steps at shift 12: t = 1000, 960 (high noise), 857 (low); FIFO's queue spans both
        assert calls[0] > 0 and (calls[1] > 0) == (backbone.boundary_ratio is not None), (sampler, calls)


def test_fifo_resume_on_a14b_is_bit_identical(a14b, tmp_path):
    """FIFO on the two experts (its windows straddle the boundary), stopped after two steps, resumed from disk."""
    noise = _noise(a14b, 24, seed=6)
    reference = FIFOSampler(num_partitions=1).sample(_run(a14b, noise))
    ckpt = checkpoint_after_two_steps(FIFOSampler(num_partitions=1), _run(a14b, noise), tmp_path / "c.safetensors",
                                      "fifo")
    fresh = _run(a14b, noise)
    fresh.generator.set_state(ckpt.generator_state)
    assert torch.equal(FIFOSampler(num_partitions=1).sample(fresh, ckpt.state), reference)


# ------------------------------------------------------------------------------------------ decode
def test_stream_decode_of_the_patchified_vae_equals_its_decode(ti2v):
    vae = ti2v.pipe.vae
    assert vae.config.patch_size == 2 and vae.config.scale_factor_spatial == 16
    latents = 2 * torch.randn(1, 3, *ti2v.latent_shape, generator=torch.Generator().manual_seed(7))
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
    with torch.no_grad():
        pix = vae.decode(latents.permute(0, 2, 1, 3, 4) / (1.0 / std) + mean).sample[0]  # [3, F, H, W]
    whole = ((pix / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()
    streamed = list(ti2v.decode_stream(latents))
    assert [f.shape[0] for f in streamed] == [1, 4, 4] and streamed[0].shape[1:] == (32, 32, 3)
    assert (np.concatenate(streamed) == whole).all()
    # `longgen extend` encodes frames through the same VAE (patchified input): 9 frames → 3 latent frames
    assert ti2v.encode_frames(whole).shape == (1, 3, *ti2v.latent_shape)


# ------------------------------------------------------------------------------------------ configs
def _compose(*overrides):
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def test_full_size_configs_carry_the_model_facts():
    ti = _compose("backbone=wan2.2-ti2v-5b", "sampler=gen-l-video")
    five = build(ti.backbone, "backbone", "wan2.2-ti2v-5b")  # no weights are touched
    assert (five.window, five.latent_shape, five.fps, five.flow_shift) == (31, (48, 44, 80), 24, 5.0)
    assert five.expand_timesteps and five.boundary_ratio is None and ti.sampler.guidance_scale == 5.0
    assert ti.sampler.stride == 9
    big = _compose("backbone=wan2.2-t2v-a14b", "sampler=syncos")
    moe = build(big.backbone, "backbone", "wan2.2-t2v-a14b")
    assert (moe.window, moe.latent_shape, moe.fps, moe.flow_shift) == (21, (16, 90, 160), 16, 12.0)
    assert (moe.boundary_ratio, moe.guidance_scale_2, big.sampler.guidance_scale) == (0.875, 3.0, 4.0)
    assert big.sampler.t_min == 970


@pytest.mark.parametrize("override,needle", [
    ("backbone.boundary_ratio=1.5", "boundary_ratio"),
    # red-team: a word was "could not convert string to float", a negative low-noise scale ran
    ("backbone.boundary_ratio=abc", r"backbone.boundary_ratio='abc' must be in \(0, 1\)"),
    ("backbone.guidance_scale_2=abc", "backbone.guidance_scale_2='abc' must be a finite number between 0 and 100"),
    ("backbone.guidance_scale_2=-3", "backbone.guidance_scale_2=-3 must be a finite number between 0 and 100"),
    ("backbone.lora=[{path: LORA}]", "two experts"),
    ("backbone.height=720", "multiples of 32"),
    ("backbone.vae_tiling=true", "vae_tiling=false"),
])
def test_bad_wan22_options_fail_fast(override, needle, tmp_path):
    from safetensors.torch import save_file

    save_file({"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(1, 8)}, tmp_path / "style.safetensors")
    override = override.replace("LORA", str(tmp_path / "style.safetensors"))
    name = "wan2.2-t2v-a14b" if "boundary" in override or "lora" in override else "wan2.2-ti2v-5b"
    with pytest.raises(UsageError, match=needle) as err:
        build(_compose(f"backbone={name}", override).backbone, "backbone", name)
    assert "\n" not in str(err.value)


def test_a14b_folder_without_the_low_noise_expert_is_one_line(tmp_path):
    folder = tmp_path / "a14b"
    for name in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        (folder / name).mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    backbone = build(_compose("backbone=wan2.2-t2v-a14b", f"model_path={folder}").backbone, "backbone", "a14b")
    with pytest.raises(UsageError, match="no transformer_2/") as err:
        backbone.check_available()
    assert "\n" not in str(err.value)
    (folder / "transformer_2").mkdir()
    backbone.check_available()  # complete: found, nothing loaded


def test_a14b_experts_are_drawn_in_the_model_dtype_and_the_vae_ends_in_its_own(monkeypatch):
    """Both 14B experts drawn in float32 would need ~112 GB on the device before the cast (more than an H100): a
    bf16 A14B draws its experts in bf16 (the dtype seen before the cast), and the VAE still ends in float32."""
    import longgen.backbones.wan22 as wan22

    drawn = []
    real = wan22.cast_like_pretrained
    monkeypatch.setattr(wan22, "cast_like_pretrained",
                        lambda model, dtype: drawn.append(next(model.parameters()).dtype) or real(model, dtype))
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan22-a14b.yaml")
    cfg.dtype = "bfloat16"
    backbone = build(cfg, "backbone", "tiny-wan22-a14b")
    backbone.load()
    assert drawn[:2] == [torch.bfloat16, torch.bfloat16], drawn
    pipe = backbone.pipe
    assert pipe.transformer_2 is not None and pipe.transformer_2.proj_out.weight.dtype == torch.bfloat16
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert torch.get_default_dtype() == torch.float32  # restored for whatever runs next

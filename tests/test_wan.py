"""Wan 2.1 (rectified flow) behind the seam, on the tiny random Wan model (conf/backbone/tiny-wan.yaml), float32:

- the schedule is FlowMatchEulerDiscreteScheduler's at the configured shift, and a DDIM η = 0 step in (a, s) is
  its Euler step (`FlowMatchEulerDiscreteScheduler.step`);
- `direct` equals diffusers' `WanPipeline(..., output_type="latent")` with that scheduler;
- Gen-L-Video equals a per-window oracle written here (transformer called directly, one Euler scheduler per window,
  per-frame average of the windows' x_{t-1});
- SynCoS with stage 2 off is Gen-L-Video bit for bit; its flow residual is supplementary §A.2 Eq. 10 written out;
  stage 2 descends it;
- GLC runs (ABAM pinned to Eq. 10 applied at the stock processor's attention call, VMCR through the model), and
  with its modules off is Gen-L-Video;
- the streamed decode equals a whole `AutoencoderKLWan.decode` (plain and tiled) and really streams;
- per-frame timesteps; the configs' model-card defaults.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from longgen.backbones.cogvideox import CogVideoXBackbone
from longgen.build import build
from longgen.diffusion import ddim_step, flow_to_x0_eps
from longgen.errors import UsageError
from longgen.samplers import syncos
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import GLCSampler
from longgen.samplers.syncos import SynCoSSampler

from conftest import REPO

SHIFT = 3.0  # conf/backbone/tiny-wan.yaml: architecture.scheduler.flow_shift
L3 = 33  # 3 windows of 21 at stride 6


def make_tiny_wan(prompts=("a cat",), negative="", **overrides):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    backbone = build(cfg, "backbone", "tiny-wan")
    backbone.load()
    backbone.encode_prompts(list(prompts), negative)
    return backbone


@pytest.fixture(scope="module")
def wan():
    return make_tiny_wan(prompts=("a red fox in snow", "a dog runs"))


def _noise(length, shape, seed=0):
    return torch.randn((1, length, *shape), generator=torch.Generator().manual_seed(seed))


def _run(backbone, noise, ids=(0,), seed=1):
    ids = list(ids)

    def prompt_for_window(start, size):
        return ids[min(len(ids) - 1, int((start + size / 2) * len(ids) / noise.shape[1]))]

    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=prompt_for_window,
                       generator=torch.Generator().manual_seed(seed))


def _velocity(backbone, xw, t, cond, guidance):
    """Guided velocity straight from diffusers' transformer for windows xw [b, F, C, H, W] (Wan's own layout
    [b, C, F, H, W] at the call), the unconditional and conditional branches as two separate calls."""
    transformer = backbone.pipe.transformer
    ts = torch.full((xw.shape[0],), float(t))
    with torch.no_grad():
        hidden = xw.permute(0, 2, 1, 3, 4)
        v = transformer(hidden_states=hidden, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
        if guidance > 1:
            neg = backbone._negative.expand(xw.shape[0], -1, -1)
            v_u = transformer(hidden_states=hidden, timestep=ts, encoder_hidden_states=neg, return_dict=False)[0]
            v = v_u + guidance * (v - v_u)
    return v.permute(0, 2, 1, 3, 4)  # [b, F, C, H, W]


# ------------------------------------------------------------------------------------------ schedule and step
def test_schedule_is_flow_match_euler_at_the_shift(wan):
    sched = wan.schedule(50)
    ref = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    ref.set_timesteps(50)
    assert sched.path == "flow" and len(sched) == 50
    assert list(sched.timesteps) == [float(t) for t in ref.timesteps]
    for i in range(50):
        c = sched.step(i)
        assert c.a + c.s == pytest.approx(1.0, abs=1e-12) and c.a_prev + c.s_prev == pytest.approx(1.0, abs=1e-12)
        assert c.s == pytest.approx(float(ref.sigmas[i]), abs=1e-6)
        assert c.s_prev == pytest.approx(float(ref.sigmas[i + 1]), abs=1e-6)
    assert sched.step(0).s == 1.0 and sched.step(49).s_prev == 0.0
    # the shift is applied: an unshifted schedule is elsewhere in the middle
    plain = FlowMatchEulerDiscreteScheduler(shift=1.0)
    plain.set_timesteps(50)
    assert abs(float(plain.timesteps[25]) - sched.timesteps[25]) > 100


def test_ddim_eta0_step_is_the_euler_flow_step(wan):
    """x_prev = a_prev·x̂0 + s_prev·ε̂ with (x̂0, ε̂) from the velocity equals x + (σ_prev − σ)·v, step by step."""
    sched = wan.schedule(50)
    euler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    euler.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(euler.timesteps):
        c = sched.step(i)
        x = 3 * torch.randn(2, 5, 4, 4, 4, generator=gen)
        v = torch.randn(2, 5, 4, 4, 4, generator=gen)
        x0, _ = flow_to_x0_eps(x, v, c.s)
        ours = ddim_step(x, x0, c)
        reference = euler.step(v, t, x, return_dict=False)[0]
        assert (ours - reference).abs().max().item() <= 1e-5, f"step {i}"


# ------------------------------------------------------------------------------------------ direct = WanPipeline
@pytest.mark.parametrize("steps,guidance", [(10, 5.0), (4, 1.0)])
def test_direct_matches_wan_pipeline(wan, steps, guidance):
    noise = _noise(wan.window, wan.latent_shape)
    ours = DirectSampler(num_steps=steps, guidance_scale=guidance).sample(_run(wan, noise))  # [1, F, C, H, W]
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=wan.pipe.vae, transformer=wan.pipe.transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt_embeds=wan._embeds[0:1],
        negative_prompt_embeds=wan._negative,
        height=wan.height,
        width=wan.width,
        num_frames=wan.num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise.permute(0, 2, 1, 3, 4).clone(),  # Wan's layout [1, C, F, H, W]
        output_type="latent",
    ).frames.permute(0, 2, 1, 3, 4)
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    other = DirectSampler(num_steps=steps, guidance_scale=guidance).sample(_run(wan, _noise(21, wan.latent_shape, 1)))
    assert (other - reference).abs().max().item() > 1e-2


# ------------------------------------------------------------------------------------------ Gen-L-Video oracle
def _oracle_gen_l_video(backbone, noise, starts, window_ids, steps, guidance):
    """Independent Gen-L-Video on a flow model: per window the guided velocity from the transformer and one
    FlowMatchEulerDiscreteScheduler.step (a scheduler per window: it counts its own steps), then the per-frame
    average of the windows' x_{t-1} (Python loops)."""
    m = backbone.window
    schedulers = []
    for _ in starts:
        s = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
        s.set_timesteps(steps)
        schedulers.append(s)
    x = noise.clone()  # [1, L, C, H, W]
    for t in schedulers[0].timesteps:
        total = torch.zeros_like(x)
        count = torch.zeros(x.shape[1])
        for start, pid, sched in zip(starts, window_ids, schedulers):
            xw = x[:, start : start + m]
            v = _velocity(backbone, xw, t, backbone._embeds[pid : pid + 1], guidance)
            total[:, start : start + m] += sched.step(v, t, xw, return_dict=False)[0]
            count[start : start + m] += 1
        assert (count > 0).all(), "oracle: a frame is not covered"
        x = total / count[None, :, None, None, None]
    return x


@pytest.mark.parametrize(
    "length,stride,expected_starts",
    [
        (21, 6, [0]),             # one window
        (33, 6, [0, 6, 12]),      # L = M + S(N-1)
        (30, 6, [0, 6, 9]),       # last window end-aligned
    ],
)
def test_gen_l_video_matches_per_window_euler_oracle(wan, length, stride, expected_starts):
    sampler = GenLVideoSampler(num_steps=5, guidance_scale=5.0, stride=stride)
    plan = sampler.plan(length, wan.window)
    assert list(plan.starts) == expected_starts
    noise = _noise(length, wan.latent_shape, seed=3)
    run = _run(wan, noise, [0, 1])
    ours = sampler.sample(run)
    ids = [run.prompt_for_window(s, wan.window) for s in plan.starts]
    if len(ids) > 1:
        assert len(set(ids)) == 2, "both local prompts must be used"
    reference = _oracle_gen_l_video(wan, noise, plan.starts, ids, 5, 5.0)
    assert (ours - reference).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------ SynCoS on flow
@pytest.mark.parametrize("overrides", [dict(stage2=False), dict(iters=0, base_noise="ddim", t_min=0)])
def test_syncos_without_stage2_effect_is_gen_l_video_bit_for_bit(wan, overrides):
    noise = _noise(L3, wan.latent_shape, seed=4)
    reference = GenLVideoSampler(num_steps=4, guidance_scale=5.0, stride=6).sample(_run(wan, noise, [0, 1]))
    ours = SynCoSSampler(num_steps=4, guidance_scale=5.0, stride=6, **overrides).sample(_run(wan, noise, [0, 1]))
    assert torch.equal(ours, reference)
    active = SynCoSSampler(num_steps=4, guidance_scale=5.0, stride=6, t_min=500, iters=2)
    assert (active.sample(_run(wan, noise, [0, 1])) - reference).abs().max() > 1e-3


def test_syncos_flow_residual_is_supplementary_eq10(wan):
    """v residual on a flow model = v_Φ(y, t) − (ε − x0) (§A.2 Eq. 10), the model's velocity taken straight from
    the transformer; the eps, v and x0 residuals are (a/s), (1/s) and 1 times (x0 − x̂0) (syncos.py docstring)."""
    c = wan.schedule(10).step(3)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 21, *wan.latent_shape, generator=gen)
    eps = torch.randn(2, 21, *wan.latent_shape, generator=gen)
    y = c.a * x0 + c.s * eps
    pred = wan.predict(y, c.t, [0, 1], 5.0)
    v_model = _velocity(wan, y, c.t, wan._embeds[[0, 1]], 5.0)
    r_v = syncos.score_residual("v", pred, x0, eps, c.a, c.s, "flow")
    scale = r_v.abs().max().item()
    assert (r_v - (v_model - (eps - x0))).abs().max().item() <= 1e-5 * max(1.0, scale)
    r_x0 = syncos.score_residual("x0", pred, x0, eps, c.a, c.s, "flow")
    r_eps = syncos.score_residual("eps", pred, x0, eps, c.a, c.s, "flow")
    assert torch.allclose(r_v, r_x0 / c.s, atol=1e-4 * scale)
    assert torch.allclose(r_eps, r_x0 * c.a / c.s, atol=1e-4 * scale)
    # the VP velocity would be a different residual here
    assert (syncos.score_residual("v", pred, x0, eps, c.a, c.s, "vp") - r_v).abs().max() > 1e-2
    assert syncos.csd_weight("flow", c.a, c.s) == pytest.approx(c.s * c.s)


def test_syncos_stage2_gradient_is_the_flow_csd_formula(wan, monkeypatch):
    """The gradient stage 2 hands AdamW at its first iteration, against the formula written out: every window
    (B = N = 3, in the run generator's order) noised to the step's σ with the baseline noise, the flow residual
    v_Φ − (ε − x0) with v_Φ straight from the transformer, CSD's kernel mix, weight σ², count-averaged per frame."""
    from longgen.diffusion import fuse_windows

    sampler = SynCoSSampler(num_steps=10, guidance_scale=5.0, stride=6, iters=1, batch_windows=3)
    sched = wan.schedule(10)
    c = sched.step(2)
    plan = sampler.plan(L3, wan.window)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn((L3, *wan.latent_shape), generator=gen)
    eps = torch.randn((L3, *wan.latent_shape), generator=gen)
    grads = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads.append(self.param_groups[0]["params"][0].grad.clone())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    sampler.refine(_run(wan, _noise(L3, wan.latent_shape), seed=7), x0, eps, plan, [0, 1, 1], c, sched)
    pick = torch.randperm(3, generator=torch.Generator().manual_seed(7))  # the run generator's first draw
    starts = [plan.starts[i] for i in pick.tolist()]
    ids = [[0, 1, 1][i] for i in pick.tolist()]
    x0_w = torch.stack([x0[s : s + 21] for s in starts])  # [3, M, C, H, W]
    eps_w = torch.stack([eps[s : s + 21] for s in starts])
    y = (1 - c.s) * x0_w + c.s * eps_w
    residual = _velocity(wan, y, c.t, wan._embeds[ids], 5.0) - (eps_w - x0_w)
    expected = fuse_windows(c.s**2 * syncos.csd_mix(y, residual), starts, L3)
    assert len(grads) == 1
    assert (grads[0] - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_syncos_stage2_descends_on_flow(wan, monkeypatch):
    """A fixed batch (B = N = 3), constant lr: the mean flow residual norm goes down at every iteration; the same
    wiring with the gradient's sign flipped climbs."""
    sampler = SynCoSSampler(num_steps=10, guidance_scale=5.0, stride=6, iters=12, lr=0.1, lr_decay_rate=1.0,
                            batch_windows=3)
    sched = wan.schedule(10)
    plan = sampler.plan(L3, wan.window)
    eps = torch.randn((L3, *wan.latent_shape), generator=torch.Generator().manual_seed(2))
    x0 = torch.zeros(L3, *wan.latent_shape)
    run = _run(wan, _noise(L3, wan.latent_shape))
    out, trace = sampler.refine(run, x0, eps, plan, [0, 0, 1], sched.step(1), sched, trace=True)
    assert not torch.equal(out, x0)
    assert trace[-1] < 0.7 * trace[0] and (trace[1:] < trace[:-1]).all()
    real = syncos.csd_mix
    monkeypatch.setattr(syncos, "csd_mix", lambda x, r, kernel="rbf": -real(x, r, kernel))
    _, up = sampler.refine(run, x0, eps, plan, [0, 0, 1], sched.step(1), sched, trace=True)
    assert up[-1] > trace[0]


def test_syncos_default_t_min_on_wan(wan):
    """The Wan configs' t_min (950, the SNR of CogVideoX's 850) puts stage 2 at 7 of 50 steps."""
    t_min = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml").syncos_t_min  # read by conf/sampler/syncos.yaml
    info = SynCoSSampler(t_min=t_min).forward_plan(11, wan.schedule(50))
    assert len(info["stage2_timesteps"]) == 7 and min(info["stage2_timesteps"]) > 950


# ------------------------------------------------------------------------------------------ GLC on flow
def test_glc_runs_on_wan_and_reduces_to_gen_l_video(wan):
    noise = _noise(L3, wan.latent_shape, seed=6)
    off = dict(global_path=False, noise_reinit=False, vmcr=False, abam=False, random_shift=False)
    reference = GenLVideoSampler(num_steps=4, guidance_scale=5.0, stride=6).sample(_run(wan, noise, [0, 1]))
    ours = GLCSampler(num_steps=4, guidance_scale=5.0, stride=6, **off).sample(_run(wan, noise, [0, 1]))
    assert (ours - reference).abs().max().item() <= 1e-6
    full = GLCSampler(num_steps=4, guidance_scale=5.0, stride=6).sample(_run(wan, noise, [0, 1]))
    assert torch.isfinite(full).all() and (full - reference).abs().max() > 1e-3
    model = GLCSampler(num_steps=2, guidance_scale=5.0, stride=6, vmcr_source="model", abam=False)
    assert torch.isfinite(model.sample(_run(wan, noise, [0, 1]))).all()


def test_abam_on_wan_is_eq10_at_the_stock_attention_call(wan, monkeypatch):
    """Oracle: the stock Wan processors with Eq. 10 applied where they call attention (self-attention only: key
    length = query length), rows blended with row 0 (one group, no guidance)."""
    import diffusers.models.transformers.transformer_wan as tw

    x = torch.randn(3, 21, *wan.latent_shape, generator=torch.Generator().manual_seed(4))
    ids, t, lam = [0, 1, 0], 600.0, 0.3
    plain = wan.predict(x, t, ids, 1.0).x0
    before = dict(wan.pipe.transformer.attn_processors)
    with wan.anchor_attention(1.0):
        # equal up to rounding: the anchor runs in a call of its own (micro_batch.run_stacked), so the transformer
        # calls hold other batches than the plain predict's
        assert (wan.predict(x, t, ids, 1.0).x0 - plain).abs().max() <= 1e-5
    with wan.anchor_attention(lam):
        kinds = {name.rsplit(".", 2)[-2]: type(p).__name__ for name, p in wan.pipe.transformer.attn_processors.items()}
        assert kinds == {"attn1": "WanAnchorAttnProcessor", "attn2": "WanAttnProcessor"}
        ours = wan.predict(x, t, ids, 1.0).x0
    after = dict(wan.pipe.transformer.attn_processors)
    assert all(before[k] is after[k] for k in before) and "predict" not in vars(wan)

    real = tw.dispatch_attention_fn
    video_tokens = 21 * (wan.latent_shape[1] // 2) * (wan.latent_shape[2] // 2)
    assert video_tokens != wan._embeds.shape[1]  # self- and cross-attention are told apart by key length

    def blended(query, key, value, *args, **kwargs):
        if key.shape[1] == query.shape[1]:  # [b, N, heads, hd]
            key = lam * key + (1 - lam) * key[:1]
            value = lam * value + (1 - lam) * value[:1]
        return real(query, key, value, *args, **kwargs)

    monkeypatch.setattr(tw, "dispatch_attention_fn", blended)
    reference = wan.predict(x, t, ids, 1.0).x0
    assert (ours - reference).abs().max().item() <= 1e-5
    assert (ours - plain).abs().max() > 1e-3


def test_abam_on_wan_is_independent_of_micro_batch(wan):
    x = torch.randn(4, 21, *wan.latent_shape, generator=torch.Generator().manual_seed(8))
    outs = []
    try:
        for mb in (1, 3, 64):
            wan.micro_batch = mb
            with wan.anchor_attention(0.1, groups=[1, 3]):
                outs.append(wan.predict(x, 700.0, [0, 1, 1, 0], 5.0).x0)
    finally:
        wan.micro_batch = 64
    assert (outs[0] - outs[2]).abs().max() <= 2e-5 and (outs[1] - outs[2]).abs().max() <= 2e-5


# ------------------------------------------------------------------------------------------ per-frame timesteps
def test_per_frame_timesteps(wan):
    assert wan.per_frame_timesteps is True and CogVideoXBackbone.per_frame_timesteps is True  # both (test_fifo.py)
    x = torch.randn(2, 21, *wan.latent_shape, generator=torch.Generator().manual_seed(3))
    scalar = wan.predict(x, 700.0, [0, 1], 5.0)
    same = wan.predict(x, torch.full((21,), 700.0), [0, 1], 5.0)
    assert torch.equal(same.x0, scalar.x0) and torch.equal(same.eps, scalar.eps)
    ts = torch.linspace(950.0, 50.0, 21)
    varied = wan.predict(x, ts, [0, 1], 5.0)
    assert (varied.x0 - scalar.x0).abs().max() > 1e-2
    # each frame is converted with its own σ: x_t − x̂0 = σ_f·v with v = ε̂ − x̂0
    v = varied.eps - varied.x0
    sigma = ((x - varied.x0) * v).sum(dim=(0, 2, 3, 4)) / (v * v).sum(dim=(0, 2, 3, 4))  # [21]
    assert torch.allclose(sigma, ts / 1000, atol=1e-4)
    # oracle: the transformer called with a timestep per token, token (f, h, w) of the patch grid taking frame f's
    # (diffusers flattens the patch grid frame-major), unguided
    f, hp, wp = 21, wan.latent_shape[1] // 2, wan.latent_shape[2] // 2
    per_token = torch.tensor([[float(ts[i]) for i in range(f) for _ in range(hp * wp)]])  # [1, F·h'·w']
    with torch.no_grad():
        v = wan.pipe.transformer(hidden_states=x[:1].permute(0, 2, 1, 3, 4), timestep=per_token,
                                 encoder_hidden_states=wan._embeds[:1], return_dict=False)[0].permute(0, 2, 1, 3, 4)
    x0 = x[:1] - (ts / 1000).reshape(-1, 1, 1, 1) * v
    assert (wan.predict(x[:1], ts, [0], 1.0).x0 - x0).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------ streamed decode
def _whole_decode(vae, latents):
    """AutoencoderKLWan.decode of the whole latent, un-normalised as WanPipeline does (z / (1/std) + mean)."""
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
    z = latents.permute(0, 2, 1, 3, 4) / inv_std + mean  # [1, C, L, H, W]
    with torch.no_grad():
        pix = vae.decode(z).sample[0]  # [3, F, H, W]
    return ((pix / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("length", [1, 2, 7])
def test_stream_decode_equals_whole_decode_and_streams(wan, length):
    vae = wan.pipe.vae
    latents = 2 * torch.randn(1, length, *wan.latent_shape, generator=torch.Generator().manual_seed(length))
    calls = []
    hook = vae.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        stream = wan.decode_stream(latents)
        first = next(stream)
        # the causal first frame comes out while at most the next latent frame is being decoded (one group ahead)
        assert len(calls) == min(2, length) and first.shape[0] == 1
        chunks = [first, *stream]
    finally:
        hook.remove()
    assert [c.shape[0] for c in chunks] == [1] + [4] * (length - 1)
    ours = np.concatenate(chunks)
    assert ours.shape == (4 * (length - 1) + 1, wan.height, wan.width, 3) == (wan.frames_for(length), 32, 32, 3)
    assert np.array_equal(ours, _whole_decode(vae, latents))


def test_tiled_stream_decode_equals_tiled_whole_decode(wan):
    vae = wan.pipe.vae
    latents = 2 * torch.randn(1, 3, *wan.latent_shape, generator=torch.Generator().manual_seed(0))
    untiled = _whole_decode(vae, latents)
    # 2 x 2 tiles of 24 pixels every 16 (the last ones cut by the border), blended over 8 pixels
    vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=24, tile_sample_stride_height=16,
                      tile_sample_stride_width=16)
    try:
        reference = _whole_decode(vae, latents)
        ours = np.concatenate(list(wan.decode_stream(latents)))
    finally:
        vae.disable_tiling()
    assert np.array_equal(ours, reference)
    assert not np.array_equal(reference, untiled), "tiling was not exercised"


# ------------------------------------------------------------------------------------------ configs
def _compose(*overrides):
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def test_config_defaults_follow_the_backbone():
    wan_cfg = _compose("backbone=wan2.1-t2v-1.3b", "sampler=syncos")
    assert wan_cfg.sampler.guidance_scale == 5.0 and wan_cfg.sampler.t_min == 970 and wan_cfg.sampler.stride == 6
    assert wan_cfg.negative_prompt.startswith("Bright tones, overexposed") and "walking backwards" in wan_cfg.negative_prompt
    cog = _compose("backbone=cogvideox-2b", "sampler=syncos")
    assert (cog.sampler.guidance_scale, cog.sampler.t_min, cog.sampler.stride, cog.negative_prompt) == (6.0, 900, 4, "")
    assert _compose("backbone=wan2.1-t2v-1.3b", "sampler=glc", "backbone.guidance_scale=7").sampler.guidance_scale == 7
    assert _compose("backbone=wan2.1-t2v-1.3b", "sampler=direct", "sampler.guidance_scale=3").sampler.guidance_scale == 3
    assert _compose("backbone=wan2.1-t2v-1.3b", "model_path=/models/wan").backbone.model_path == "/models/wan"

    small = build(wan_cfg.backbone, "backbone", "wan2.1-t2v-1.3b")  # no weights are touched
    assert (small.window, small.latent_shape, small.fps, small.frames_for(21)) == (21, (16, 60, 104), 16, 81)
    big = build(_compose("backbone=wan2.1-t2v-14b").backbone, "backbone", "wan2.1-t2v-14b")
    assert (big.model_id, big.latent_shape, big.flow_shift) == ("Wan-AI/Wan2.1-T2V-14B-Diffusers", (16, 90, 160), 5.0)


@pytest.mark.parametrize(
    "override,needle",
    [("backbone.flow_shift=0", "flow_shift"), ("backbone.vae_dtype=int8", "vae_dtype"),
     pytest.param("backbone.attention=fa3", "fa3", marks=pytest.mark.skipif(
         any(importlib.util.find_spec(m) for m in ("flash_attn_interface", "fa3_fwd_interface")),
         reason="FlashAttention-3 is installed")),
     ("backbone.height=100", "multiples of 16"), ("backbone.num_frames=80", r"4·k\+1")],
)
def test_bad_wan_options_fail_fast(override, needle):
    with pytest.raises(UsageError, match=needle):
        build(_compose("backbone=wan2.1-t2v-1.3b", override).backbone, "backbone", "wan2.1-t2v-1.3b")

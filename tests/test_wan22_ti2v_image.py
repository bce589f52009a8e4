"""Wan 2.2 TI2V-5B's image mode (conf/backbone/tiny-wan22-ti2v.yaml, 32×32, float32): `direct` from a start image
equals diffusers' `WanImageToVideoPipeline` with `expand_timesteps` on the same components (the image latent in
latent frame 0, its tokens at timestep 0, the pipeline's final overwrite of that frame), from the prompt embeddings
on; a window without an image stays the text-to-video call; a run without any image is not refused (the model is
image-optional)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from omegaconf import OmegaConf
from PIL import Image

from longgen.build import build
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler

from conftest import REPO

SHIFT = 5.0  # tiny-wan22-ti2v.yaml: architecture.scheduler.flow_shift


@pytest.fixture(scope="module")
def ti2v():
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan22-ti2v.yaml")
    backbone = build(cfg, "backbone", "tiny-wan22-ti2v")
    backbone.load()
    backbone.encode_prompts(["a red fox in snow", "a dog runs"], "")
    return backbone


def _direct(backbone, noise, cid, steps=3):
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda start, size: cid,
                      generator=torch.Generator().manual_seed(1))
    return DirectSampler(num_steps=steps, guidance_scale=5.0).sample(run)  # [1, F, C, H, W]


def test_direct_with_an_image_equals_the_i2v_pipeline_with_expand_timesteps(ti2v):
    frame = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    noise = torch.randn((1, ti2v.window, *ti2v.latent_shape), generator=torch.Generator().manual_seed(0))
    plain = _direct(ti2v, noise, 0)  # before any image: the text-to-video run
    ti2v.encode_images([frame], 7)
    ours = _direct(ti2v, noise, ti2v.condition_id(0, 0))
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ti2v.pipe.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), image_processor=None,
                                   image_encoder=None, transformer=ti2v.pipe.transformer, expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(image=Image.fromarray(frame), prompt_embeds=ti2v._embeds[0:1],
                     negative_prompt_embeds=ti2v._negative, height=ti2v.height, width=ti2v.width,
                     num_frames=ti2v.num_frames, num_inference_steps=3, guidance_scale=5.0,
                     latents=noise.permute(0, 2, 1, 3, 4).clone(), output_type="latent").frames
    reference = reference.permute(0, 2, 1, 3, 4)  # [1, F, C, H, W]
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    assert torch.equal(ours[0, 0], ti2v._first_frames[0])  # the first latent frame is the image's latent
    assert (plain - reference).abs().max().item() > 1e-3  # the oracle sees the image
    assert torch.equal(_direct(ti2v, noise, 0), plain)  # a window without an image: the text-to-video call


@torch.no_grad()
def test_windows_with_and_without_an_image_in_one_predict_get_their_own(ti2v):
    ti2v.encode_images([(np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)], 7)
    ids = [1, ti2v.condition_id(0, 0)]
    x = torch.randn(2, 5, *ti2v.latent_shape, generator=torch.Generator().manual_seed(2))
    t = ti2v.schedule(4).step(1).t
    together = ti2v.predict(x, t, ids, 5.0)
    for row, cid in enumerate(ids):
        alone = ti2v.predict(x[row : row + 1], t, [cid], 5.0)
        assert (together.x0[row] - alone.x0[0]).abs().max().item() <= 1e-5, f"row {row}"
    before = x.clone()
    ti2v.predict(x, t, ids, 1.0)  # unguided: the model's input is not a copy made by the guidance stacking
    assert torch.equal(x, before), "predict wrote the image latent into the caller's x_t"
    s = t / 1000  # σ: the flow path x_t = (1 − σ)·x̂0 + σ·ε̂ holds on the image's frame too
    assert torch.allclose(together.x0[1, 0], ti2v._first_frames[0])
    assert torch.allclose((1 - s) * together.x0[1, 0] + s * together.eps[1, 0], x[1, 0], atol=1e-5)

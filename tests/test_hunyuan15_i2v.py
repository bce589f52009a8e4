"""HunyuanVideo 1.5 image-to-video (conf/backbone/tiny-hunyuan15-i2v.yaml: tiny random transformer, VAE and SigLIP,
hashed stand-in text encoders), 16×16, float32:

- `direct` from a start image equals diffusers' `HunyuanVideo15ImageToVideoPipeline` on the same components, from
  the prompt embeddings on (the oracle), and a window without an image equals `HunyuanVideo15Pipeline` (the
  text-to-video inputs on the same transformer);
- a transformer call whose rows mix windows with and without an image gives each row what it gets alone (the
  model's image/no-image switch is per call, so the backbone splits such calls);
- Gen-L-Video over two windows with a start image and an event's key image, through the CLI: the start line and
  the manifest name both images and their windows;
- one-line refusals: an image on the text-to-video HunyuanVideo 1.5, an I2V transformer whose SigLIP width does not
  match, a mixed call under anchor-style attention.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
from diffusers.guiders import ClassifierFreeGuidance
from hydra import compose, initialize_config_module
from PIL import Image

from longgen.build import build
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler

from cli_helpers import error_lines, run_cli
from test_hunyuan15 import stock_processors

SMALL = ["backbone.height=16", "backbone.width=16"]
PROMPTS = ("a red fox in snow", "a fox runs")
NEGATIVE = "blurry"
SHIFT = 5.0  # tiny-hunyuan15.yaml: architecture.scheduler.shift
KEYS = ("encoder_hidden_states", "encoder_attention_mask", "encoder_hidden_states_2", "encoder_attention_mask_2")


def _compose(*overrides: str):
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def _image(seed: int, size=(16, 16)) -> np.ndarray:
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)  # [H, W, 3]


@pytest.fixture(scope="module")
def hyi():
    cfg = _compose("backbone=tiny-hunyuan15-i2v", *SMALL)
    backbone = build(cfg.backbone, "backbone", "tiny-hunyuan15-i2v")
    backbone.load()
    backbone.encode_prompts(list(PROMPTS), NEGATIVE)
    return backbone


def _direct(backbone, noise, cid, steps=3, guidance=6.0):
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda start, size: cid,
                      generator=torch.Generator().manual_seed(1))
    return DirectSampler(num_steps=steps, guidance_scale=guidance).sample(run)  # [1, F, C, H, W]


def _embeddings(backbone, prompt: str) -> dict:
    """The pipelines' eight text keyword arguments: the stand-in encoders' tensors for `prompt` and the negative."""
    cond = dict(zip(KEYS, backbone._hashed_texts([prompt])))
    neg = dict(zip(KEYS, backbone._hashed_texts([NEGATIVE])))
    return dict(prompt_embeds=cond[KEYS[0]], prompt_embeds_mask=cond[KEYS[1]], prompt_embeds_2=cond[KEYS[2]],
                prompt_embeds_mask_2=cond[KEYS[3]], negative_prompt_embeds=neg[KEYS[0]],
                negative_prompt_embeds_mask=neg[KEYS[1]], negative_prompt_embeds_2=neg[KEYS[2]],
                negative_prompt_embeds_mask_2=neg[KEYS[3]])


def test_direct_equals_the_i2v_pipeline_and_without_image_the_t2v_pipeline(hyi):
    frame = _image(0)
    hyi.encode_images([frame], 7)
    noise = torch.randn((1, hyi.window, *hyi.latent_shape), generator=torch.Generator().manual_seed(0))
    ours = _direct(hyi, noise, hyi.condition_id(0, 0))
    parts = {k: v for k, v in hyi.pipe.components.items() if k not in ("scheduler", "guider")}
    common = dict(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
                  guider=ClassifierFreeGuidance(guidance_scale=6.0))
    pipe = HunyuanVideo15ImageToVideoPipeline(**parts, **common)
    pipe.target_size = 16  # the pipeline takes its frame size from the image: at 16 the only bucket is 16x16
    pipe.set_progress_bar_config(disable=True)
    with stock_processors(hyi.pipe.transformer):  # the pipeline as diffusers ships it: masked attention
        reference = pipe(image=Image.fromarray(frame), **_embeddings(hyi, PROMPTS[0]), num_frames=hyi.num_frames,
                         num_inference_steps=3, latents=noise.permute(0, 2, 1, 3, 4).clone(),
                         output_type="latent").frames.permute(0, 2, 1, 3, 4)  # [1, F, C, H, W]
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    # the oracle sees the image: another image is far away
    hyi.encode_images([_image(1)], 7)
    assert (_direct(hyi, noise, hyi.condition_id(0, 0)) - reference).abs().max().item() > 1e-3
    # a window without an image: the text-to-video pipeline on the same (image-to-video) transformer
    plain = _direct(hyi, noise, 1)
    t2v = HunyuanVideo15Pipeline(**{k: v for k, v in parts.items() if k not in ("image_encoder", "feature_extractor")},
                                 **common)
    t2v.set_progress_bar_config(disable=True)
    with stock_processors(hyi.pipe.transformer):
        no_image = t2v(**_embeddings(hyi, PROMPTS[1]), height=16, width=16, num_frames=hyi.num_frames,
                       num_inference_steps=3, latents=noise.permute(0, 2, 1, 3, 4).clone(),
                       output_type="latent").frames.permute(0, 2, 1, 3, 4)
    assert (plain - no_image).abs().max().item() <= 1e-5


class PlainLayout:
    """An attention layout (longgen/backbones/micro_batch.py reads it) with no anchor rows."""

    def phases(self, total: int):
        return [([], list(range(total)))]

    def running(self, rows):
        return contextlib.nullcontext()


@torch.no_grad()
def test_a_call_mixing_image_and_no_image_rows_gives_each_row_its_own(hyi):
    hyi.encode_images([_image(2)], 7)
    ids = [hyi.condition_id(1, 0), 0]
    x = torch.randn(2, 3, *hyi.latent_shape, generator=torch.Generator().manual_seed(4))
    t = hyi.schedule(4).step(1).t
    together = hyi.predict(x, t, ids, 6.0).x0  # one call of 4 rows: uncond/cond × (image, none)
    for row, cid in enumerate(ids):
        alone = hyi.predict(x[row : row + 1], t, [cid], 6.0).x0
        assert (together[row] - alone[0]).abs().max().item() <= 1e-5, f"row {row}"
    hyi._anchor_layout = PlainLayout()  # what anchor/cross-shot/KV-sharing attention installs for its predicts
    try:
        with pytest.raises(UsageError, match="set backbone.micro_batch=1") as err:
            hyi.predict(x, t, ids, 6.0)
        assert "\n" not in str(err.value)
    finally:
        hyi._anchor_layout = None


def test_refusals_are_one_line(tmp_path):
    from longgen.run.job import plan_job

    Image.fromarray(_image(3)).save(tmp_path / "start.png")
    cfg = _compose("backbone=tiny-hunyuan15", *SMALL, "prompt=a fox", f"image={tmp_path / 'start.png'}")
    with pytest.raises(UsageError) as err:
        plan_job(cfg, tmp_path / "run", {"backbone": "tiny-hunyuan15", "sampler": "syncos"})
    assert "needs an image-to-video backbone" in str(err.value) and "backbone=hunyuanvideo-1.5-i2v" in str(err.value)
    cfg = _compose("backbone=tiny-hunyuan15-i2v", *SMALL, "backbone.architecture.image_encoder.hidden_size=12")
    with pytest.raises(UsageError) as err:
        build(cfg.backbone, "backbone", "tiny-hunyuan15-i2v").load()
    assert "no SigLIP image encoder matching its transformer's image_embed_dim (8; encoder width 12)" in str(err.value)
    assert "\n" not in str(err.value)


def test_glc_abam_with_an_image_is_refused_at_plan_unless_one_window_a_call(tmp_path):
    """GLC's global-prompt windows have no image, so with ABAM every call would mix rows with and without one (run as
    two calls, which the anchor cannot follow): one line before any weights load, not at the first step of a started
    run; micro_batch=1 or abam=false plan."""
    from longgen.run.job import plan_job

    Image.fromarray(_image(3)).save(tmp_path / "start.png")
    base = ["backbone=tiny-hunyuan15-i2v", *SMALL, "prompt=a fox", f"image={tmp_path / 'start.png'}", "sampler=glc",
            "num_windows=1"]
    choices = {"backbone": "tiny-hunyuan15-i2v", "sampler": "glc"}
    with pytest.raises(UsageError) as err:
        plan_job(_compose(*base), tmp_path / "run", choices)
    assert str(err.value) == ("backbone=tiny-hunyuan15-i2v runs windows with and without a key image in separate "
                              "transformer calls, which GLC's ABAM cannot follow (its global-prompt windows have no "
                              "image): set backbone.micro_batch=1, or sampler.abam=false")
    for fix in ("backbone.micro_batch=1", "sampler.abam=false"):
        assert plan_job(_compose(*base, fix), tmp_path / "run", choices).images is not None


def test_ditctrl_kv_sharing_with_an_image_is_refused_at_plan_unless_one_window_a_call(tmp_path):
    """DiTCtrl pairs a window with an image and one without in a call: it was refused only at the first sharing
    step, after the weights had loaded; now at plan, as GLC's ABAM is. micro_batch=1 or kv_sharing=false plan."""
    from longgen.run.job import plan_job

    Image.fromarray(_image(3)).save(tmp_path / "start.png")
    base = ["backbone=tiny-hunyuan15-i2v", *SMALL, "prompt=a fox", f"image={tmp_path / 'start.png'}",
            "sampler=ditctrl", "sampler.kv_layers=[0,2]", "num_windows=2"]
    choices = {"backbone": "tiny-hunyuan15-i2v", "sampler": "ditctrl"}
    with pytest.raises(UsageError) as err:
        plan_job(_compose(*base), tmp_path / "run", choices)
    assert str(err.value) == ("backbone=tiny-hunyuan15-i2v runs windows with and without a key image in separate "
                              "transformer calls, which DiTCtrl's KV sharing cannot follow: set "
                              "backbone.micro_batch=1, or sampler.kv_sharing=false")
    for fix in ("backbone.micro_batch=1", "sampler.kv_sharing=false"):
        assert plan_job(_compose(*base, fix), tmp_path / "run", choices).images is not None


def test_gen_l_video_with_start_and_key_image_through_the_cli(tmp_path):
    for name, seed, size in (("start.png", 5, (40, 24)), ("key.png", 6, (16, 16))):
        Image.fromarray(_image(seed, size)).save(tmp_path / name)
    story = {"global": "a fox", "local": ["a fox sits", {"prompt": "a fox runs", "image": "key.png"}]}
    (tmp_path / "story.json").write_text(json.dumps(story))
    proc = run_cli("generate", "backbone=tiny-hunyuan15-i2v", *SMALL, f"image={tmp_path / 'start.png'}",
                   f"story={tmp_path / 'story.json'}", "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=2",
                   "save_latents=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0 and not error_lines(proc), proc.stderr[-2000:]
    assert "torchvision" not in proc.stderr  # transformers' note on SigLIP's PIL fallback (pil_fallback.py)
    said = " ".join(proc.stderr.split())
    assert "key images (image_fit=crop): image= start.png 40x24 → 16x16" in said, said[-2000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [(i["source"], i["window_start"]) for i in manifest["images"]] == [("image=", 0), ("event 2", 8)]
    assert manifest["backbone"]["image_conditioning"].startswith("VAE mode of the image at latent frame 0")
    assert (tmp_path / "run" / "latents.safetensors").exists()


QUIET_SCRIPT = """
from longgen.backbones.hunyuan15 import has_lora_loader
from longgen.backbones.image_conditioning import wan_i2v_pipeline
has_lora_loader()  # plan time of every HunyuanVideo 1.5 run with a LoRA: imports the I2V pipeline (SigLIP)
wan_i2v_pipeline()  # Wan 2.1 I2V's load and build (CLIP)
"""


def test_no_torchvision_note_from_the_image_to_video_pipelines():
    """Without torchvision, transformers says on stderr that the I2V pipelines' image processors fall back to their
    PIL backend (which longgen uses on purpose): that note is kept off stderr, in a fresh process (transformers says
    it once per process)."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: transformers has no fallback to announce")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", QUIET_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchvision" not in proc.stderr and "ImageProcessor" not in proc.stderr, proc.stderr


def test_a_backbone_that_runs_one_call_for_all_windows_is_not_refused_with_abam_or_kv_sharing():
    """The refusal is for backbones that split a call by image only (mutation audit: dropping that condition refused
    every backbone with micro_batch > 1 and ABAM or KV sharing)."""
    from types import SimpleNamespace

    from longgen.run.images import check_split_calls

    sharing = SimpleNamespace(abam=True, kv_sharing=True)
    check_split_calls(SimpleNamespace(image_calls_split=False, micro_batch=4), sharing, {"backbone": "tiny-wan"})
    with pytest.raises(UsageError, match="separate transformer calls"):
        check_split_calls(SimpleNamespace(image_calls_split=True, micro_batch=2), sharing, {"backbone": "x"})

"""GPU lane cases for HunyuanVideo 1.5 (issue 26; run by scripts/gpu_lane.sh with the rest of tests/gpu;
`LONGGEN_LANE_DRY=1` runs them on the CPU with tiny-hunyuan15):
- the full 8.3B transformer and the full VAE with random weights (`backbone=hunyuanvideo-1.5
  backbone.random_weights=true`, hashed stand-in text encoders) at 240×416 (a quarter of the 480p frame, to stay
  within the lane's 4 minutes), Gen-L-Video on 2 windows of 31 latent frames, 3 steps: an uninterrupted run, and
  SIGINT → resume → SIGKILL → resume gives the same latents byte for byte; the manifest records the family's facts;
- FIFO-Diffusion (needs a timestep per latent frame, which this transformer cannot take) and RIFLEx: one line each;
- the image-to-video model (`backbone=hunyuanvideo-1.5-i2v backbone.random_weights=true`: the 8.3B transformer, the
  VAE and a full-size SigLIP so400m, random) from a 640x360 start image, one window, `direct` with CFG, 2 steps at
  240×416: the VAE latent + mask and the 729 vision tokens on the real architecture; finite latents, the start line.
- the samplers whose attention processors stand in for the transformer's (tests/test_hunyuan15_attention.py):
  FreeLong, DiTCtrl sharing in both steps and the last 5 layers (unmasked, and mask-guided on the subject's Qwen
  tokens [1, 2]), and GLC with ABAM, on 2 windows' length, 2 steps:
  finite latents of that length, the stock processors in the manifest; a two-shot scene with cross-shot attention
  (Gen-L-Video, one window per shot, r = 0.5): finite latents of both takes.
"""

from __future__ import annotations

import json

import numpy as np

import pytest
import torch

from PIL import Image

from test_lane import DRY, PROMPT, cli, latents, ok, one_line, same_chain_latents, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

if DRY:
    HUNYUAN_MODEL = ["backbone=tiny-hunyuan15", "backbone.height=16", "backbone.width=16"]
else:
    HUNYUAN_MODEL = ["backbone=hunyuanvideo-1.5", "backbone.random_weights=true", "backbone.height=240",
                     "backbone.width=416"]
HUNYUAN = [*HUNYUAN_MODEL, "save_latents=true", PROMPT]
if DRY:
    HUNYUAN_I2V = ["backbone=tiny-hunyuan15-i2v", "backbone.height=16", "backbone.width=16"]
else:  # eager: one window of two steps does not pay for compiling 54 blocks
    HUNYUAN_I2V = ["backbone=hunyuanvideo-1.5-i2v", "backbone.random_weights=true", "backbone.height=240",
                   "backbone.width=416", "backbone.compile=false"]


def test_hunyuan_gen_l_video_resume_chain(tmp_path):
    command = ["generate", *HUNYUAN, "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=3"]
    seen = whole_and_chain(command, tmp_path)
    whole = same_chain_latents(tmp_path, "hunyuanvideo-1.5 gen-l-video", seen)
    assert whole.shape[0] == 31 + 8
    manifest = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    backbone = manifest["backbone"]
    assert backbone["window_latent_frames"] == 31 and manifest["frames"] == 4 * (31 + 8 - 1) + 1
    assert backbone["latent_shape"][0] == (4 if DRY else 32) and backbone["flow_shift"] == 5.0
    assert backbone["glyph_tokens"] == (8 if DRY else 256) and manifest["fps"] == 24


def test_hunyuan_fifo_and_riflex_are_refused_in_one_line(tmp_path):
    fifo = cli("generate", *HUNYUAN, "sampler=fifo", "num_windows=2", "sampler.num_partitions=1",
               f"hydra.run.dir={tmp_path / 'fifo'}", cwd=tmp_path)
    assert fifo.returncode != 0 and "a timestep per latent frame" in one_line(fifo.stderr)
    assert not (tmp_path / "fifo" / "latents.safetensors").exists()
    riflex = cli("generate", *HUNYUAN, "sampler=gen-l-video", "backbone.riflex=true",
                 f"hydra.run.dir={tmp_path / 'riflex'}", cwd=tmp_path)
    assert riflex.returncode != 0 and "backbone.riflex" in one_line(riflex.stderr)
    ok(cli("generate", *HUNYUAN, "--cfg", "job", cwd=tmp_path))  # the config itself composes


def test_hunyuan_i2v_start_image_one_window(tmp_path):
    pixels = (np.random.default_rng(0).random((360, 640, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "start.png")
    proc = ok(cli("generate", *HUNYUAN_I2V, "save_latents=true", PROMPT, f"image={tmp_path / 'start.png'}",
                  "sampler=direct", "num_windows=1", "sampler.num_steps=2", f"hydra.run.dir={tmp_path / 'run'}",
                  cwd=tmp_path))
    said = " ".join(proc.stderr.split())  # the log's lines, unwrapped
    assert "key images (image_fit=crop): image= start.png 640x360 →" in said, said[-2000:]
    out = latents(tmp_path / "run")
    assert out.shape[0] == 31 and torch.isfinite(out).all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["images"][0]["window_start"] == 0
    assert manifest["backbone"]["image_conditioning"].startswith("VAE mode of the image at latent frame 0")


@pytest.mark.parametrize("sampler", [
    ["sampler=freelong"],
    ["sampler=ditctrl", "sampler.kv_steps=[0,2]", "sampler.kv_layers=[-5,null]"],
    ["sampler=ditctrl", "sampler.kv_steps=[0,2]", "sampler.kv_layers=[-5,null]", "sampler.subject_tokens=[1,2]"],
    ["sampler=glc", "sampler.abam=true"],
], ids=["freelong", "ditctrl", "ditctrl-masked", "glc-abam"])
def test_hunyuan_attention_processor_samplers_run(tmp_path, sampler):
    run = tmp_path / sampler[0].split("=")[1]
    ok(cli("generate", *HUNYUAN, *sampler, "num_windows=2", "sampler.num_steps=2", f"hydra.run.dir={run}",
           cwd=tmp_path))
    out = latents(run)
    assert out.shape[0] == 31 + 8 and torch.isfinite(out).all()
    manifest = json.loads((run / "manifest.json").read_text())
    assert "HunyuanPrefixAttention" in manifest["backbone"]["attention_processors"]  # restored after sampling


def test_hunyuan_cross_shot_attention_runs(tmp_path):
    story = tmp_path / "scene.json"
    story.write_text(json.dumps({"shots": ["a fox in the snow", "[SHOT CUT] a red barn at night"]}))
    run = tmp_path / "shots"
    ok(cli("generate", *HUNYUAN_MODEL, "save_latents=true", f"story={story}", "sampler=gen-l-video",
           "sampler.num_steps=2", "shots.windows=[1,1]", "shots.cross_attention=0.5", "shots.reference=1",
           f"hydra.run.dir={run}", cwd=tmp_path))
    out = latents(run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert out.shape[0] == manifest["latent_length"] == 2 * 31 and torch.isfinite(out).all()


def test_hunyuan_valid_prefix_and_fa3_agree_with_the_stock_masked_attention(tmp_path):
    """`backbone.attention=auto` (valid-prefix: SDPA over each row's valid tokens, no mask) and `fa3` against
    `cudnn` (diffusers' processor, masked), one window of `direct`, 2 steps with CFG: the manifests name the
    processors, and the latents agree as closely as the other families' exact kernels do (bf16 all)."""
    base = ["generate", *HUNYUAN, "sampler=direct", "num_windows=1", "sampler.num_steps=2"]
    runs = {}
    for kernel in ("auto", "cudnn", "fa3"):
        proc = cli(*base, f"backbone.attention={kernel}", f"hydra.run.dir={tmp_path / kernel}", cwd=tmp_path)
        if DRY and kernel == "fa3":  # no Hopper GPU here: one line, nothing sampled
            assert proc.returncode != 0 and "backbone.attention=fa3" in one_line(proc.stderr)
            continue
        ok(proc)
        backbone = json.loads((tmp_path / kernel / "manifest.json").read_text())["backbone"]
        stock = "HunyuanVideo15AttnProcessor2_0" in backbone["attention_processors"]
        used = {"auto": "valid-prefix", "cudnn": "sdpa" if DRY else "cudnn"}.get(kernel, kernel)  # no SDPA sets off CUDA
        assert stock == (kernel == "cudnn") and backbone["attention_used"] == used, backbone
        runs[kernel] = latents(tmp_path / kernel)
    masked = runs["cudnn"]
    for kernel, ours in runs.items():
        assert torch.isfinite(ours).all() and ours.shape == masked.shape
        print(f"{kernel}: max |Δ| vs masked cudnn {(ours - masked).abs().max():.3g} of max {masked.abs().max():.3g}")
        assert (ours - masked).abs().max() < 0.05 * masked.abs().max(), kernel

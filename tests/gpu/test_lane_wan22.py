"""GPU lane cases for Wan 2.2 (issue 26; run by scripts/gpu_lane.sh with the rest of tests/gpu;
`LONGGEN_LANE_DRY=1` runs them on the CPU with the tiny variants). Full-size architectures, random weights, at
480×832 (the full default 704×1280 / 720×1280 would spend the lane's time in attention, not in what is tested):
- TI2V-5B (48-channel VAE, spatial 16, a timestep per token): Gen-L-Video over 2 windows of 31 latent frames,
  uninterrupted, and SIGINT → resume → SIGKILL → resume: the same latents byte for byte; the video decodes through
  the patchified Wan 2.2 VAE at the asked size;
- TI2V-5B in image mode from a 640x360 start image: `direct`, one window, 2 steps with CFG; finite latents and the
  start line;
- T2V-A14B (two 14B experts, ~28 GB each in bf16, both on the GPU): Gen-L-Video over 2 windows, 4 steps at shift 12
  (t = 1000, 960 on the high-noise expert, 857, 12 on the low-noise one), finite latents and the manifest's facts;
- T2V-A14B with sampler=glc (ABAM): refused in one line, nothing written;
- T2V-A14B on `gpus=2` (both experts on each GPU): the same bytes as on one (needs two GPUs; skipped elsewhere —
  checked on the CPU with torchrun's two gloo processes on tiny-wan22-a14b, 3 steps across the switch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_lane import DRY, PROMPT, cli, latents, ok, one_line, same_chain_latents, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

if DRY:
    TI2V = ["backbone=tiny-wan22-ti2v", "backbone.height=32", "backbone.width=32"]
    A14B = ["backbone=tiny-wan22-a14b", "backbone.height=16", "backbone.width=16"]
else:
    TI2V = ["backbone=wan2.2-ti2v-5b", "backbone.random_weights=true", "backbone.height=480", "backbone.width=832"]
    A14B = ["backbone=wan2.2-t2v-a14b", "backbone.random_weights=true", "backbone.height=480", "backbone.width=832"]


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_ti2v_5b_gen_l_video_resume_chain(tmp_path):
    command = ["generate", *TI2V, "save_latents=true", PROMPT, "sampler=gen-l-video", "num_windows=2",
               "sampler.num_steps=4"]
    seen = whole_and_chain(command, tmp_path)
    same_chain_latents(tmp_path, "wan2.2-ti2v-5b gen-l-video", seen)
    m = _manifest(tmp_path / "chain")
    assert m["backbone"]["expand_timesteps"] is True and m["backbone"]["latent_shape"][0] == (4 if DRY else 48)
    assert m["fps"] == 24 and m["latent_length"] == (21 + 6 if DRY else 31 + 9)
    assert (tmp_path / "chain" / "video.mp4").stat().st_size > 0


def test_a14b_gen_l_video_switches_experts(tmp_path):
    run = tmp_path / "run"
    ok(cli("generate", *A14B, "save_latents=true", PROMPT, "sampler=gen-l-video", "num_windows=2",
           "sampler.num_steps=4", f"hydra.run.dir={run}", cwd=tmp_path))
    out, m = latents(run), _manifest(run)
    assert out.shape[0] == 21 + 6 and torch.isfinite(out).all()
    assert (m["backbone"]["boundary_ratio"], m["backbone"]["guidance_scale_2"]) == (0.875, 3.0)
    assert m["sampler"]["guidance_scale"] == 4.0 and m["backbone"]["flow_shift"] == 12.0
    assert m["transformer_forwards"] == 4 * 2 * 2  # steps × windows × CFG rows, one expert per step


def test_a14b_refuses_abam_in_one_line(tmp_path):
    run = tmp_path / "run"
    proc = cli("generate", *A14B, PROMPT, "sampler=glc", "sampler.abam=true", "num_windows=2", "sampler.num_steps=2",
               f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert "ABAM" in line and "two experts" in line
    assert not (run / "latents.safetensors").exists() and not (run / "video.mp4").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="gpus=2 needs two GPUs on this machine")
def test_a14b_two_gpus_same_bytes(tmp_path):
    command = ["generate", *A14B, "save_latents=true", PROMPT, "sampler=gen-l-video", "num_windows=2",
               "sampler.num_steps=3"]
    ok(cli(*command, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path))
    ok(cli(*command, "gpus=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "two"))


def test_ti2v_5b_image_mode_one_window(tmp_path):
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((360, 640, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "start.png")
    run = tmp_path / "run"
    proc = ok(cli("generate", *TI2V, "save_latents=true", PROMPT, f"image={tmp_path / 'start.png'}", "sampler=direct",
                  "num_windows=1", "sampler.num_steps=2", f"hydra.run.dir={run}", cwd=tmp_path))
    said = " ".join(proc.stderr.split())  # the log's lines, unwrapped
    assert "key images (image_fit=crop): image= start.png 640x360 →" in said, said[-2000:]
    out, m = latents(run), _manifest(run)
    assert out.shape[0] == (21 if DRY else 31) and torch.isfinite(out).all()
    assert m["images"][0]["window_start"] == 0 and m["backbone"]["image_conditioning"].startswith("optional")

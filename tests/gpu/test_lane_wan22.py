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
- T2V-A14B with FreeLong, DiTCtrl (KV-sharing in every step) and GLC with ABAM, and a two-shot scene with
  cross-shot attention: the attention processors in both experts, 3 steps at shift 12 (t = 1000, 960 on the
  high-noise expert, 857 on the low-noise one); finite latents and the manifest's facts. Memory beside the experts'
  ~56 GB: ABAM keeps ≈ 27 GB of anchor keys/values per group at 480×832 (2 groups here), cross-shot attention
  ≈ 27 GB of reference tokens at share 0.5, DiTCtrl ≈ 3 GB per source window in its last 2 layers;
- T2V-A14B on `gpus=2` (both experts on each GPU): the same bytes as on one (needs two GPUs; skipped elsewhere —
  checked on the CPU in tests/test_distributed.py: tiny-wan22-a14b on the gpus=2 launcher's two gloo processes, 3
  steps across the switch, and FIFO's windows straddling it).
Every A14B case is marked `alone` (its two experts hold ~56 GB of the GPU: two such processes do not fit beside each
other even on an H200). On a GPU of less than 100 GiB (an H100's 80 GB), the cases whose processors keep full-frame
keys/values (ABAM, cross-shot attention) run at 240×416, a quarter of the tokens and of that memory (~7 GB); what
they check does not depend on the frame size.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from test_lane import DRY, PROMPT, cli, latents, ok, same_chain_latents, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]


def gpu_gib() -> float:
    """Total memory of GPU 0 in GiB, from nvidia-smi so that the collecting process holds no CUDA context."""
    try:
        said = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                              capture_output=True, text=True, timeout=30).stdout
        return float(said.split()[0]) / 1024  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return torch.cuda.get_device_properties(0).total_memory / 2**30


if DRY:
    TI2V = ["backbone=tiny-wan22-ti2v", "backbone.height=32", "backbone.width=32"]
    A14B = A14B_KV = ["backbone=tiny-wan22-a14b", "backbone.height=16", "backbone.width=16"]
else:
    TI2V = ["backbone=wan2.2-ti2v-5b", "backbone.random_weights=true", "backbone.height=480", "backbone.width=832"]
    A14B = ["backbone=wan2.2-t2v-a14b", "backbone.random_weights=true", "backbone.height=480", "backbone.width=832"]
    # cases that keep full-frame keys/values beside the ~56 GB of experts (ABAM: ~27 GB a group at 480×832)
    small = torch.cuda.is_available() and gpu_gib() < 100  # (without CUDA every case is skipped)
    A14B_KV = [*A14B[:2], "backbone.height=240", "backbone.width=416"] if small else A14B


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


@pytest.mark.alone
def test_a14b_gen_l_video_switches_experts(tmp_path):
    run = tmp_path / "run"
    ok(cli("generate", *A14B, "save_latents=true", PROMPT, "sampler=gen-l-video", "num_windows=2",
           "sampler.num_steps=4", f"hydra.run.dir={run}", cwd=tmp_path))
    out, m = latents(run), _manifest(run)
    assert out.shape[0] == 21 + 6 and torch.isfinite(out).all()
    assert (m["backbone"]["boundary_ratio"], m["backbone"]["guidance_scale_2"]) == (0.875, 3.0)
    assert m["sampler"]["guidance_scale"] == 4.0 and m["backbone"]["flow_shift"] == 12.0
    assert m["transformer_forwards"] == 4 * 2 * 2  # steps × windows × CFG rows, one expert per step


@pytest.mark.alone
@pytest.mark.parametrize("sampler", ["freelong", "ditctrl", "glc"])
def test_a14b_attention_processor_samplers_on_both_experts(sampler, tmp_path):
    extra = {"ditctrl": ["sampler.kv_steps=[0,3]", "sampler.kv_layers=[-2,null]"],  # the tiny model has 2 layers
             "glc": ["sampler.abam=true"]}.get(sampler, [])
    run = tmp_path / "run"
    model = A14B_KV if sampler == "glc" else A14B
    ok(cli("generate", *model, "save_latents=true", PROMPT, f"sampler={sampler}", *extra, "num_windows=2",
           "sampler.num_steps=3", f"hydra.run.dir={run}", cwd=tmp_path))
    out, m = latents(run), _manifest(run)
    assert out.shape[0] == 21 + 6 and torch.isfinite(out).all()
    assert m["sampler"]["name"] == sampler and m["backbone"]["boundary_ratio"] == 0.875
    if sampler == "freelong":
        assert m["transformer_forwards"] == 3 * 2  # one prediction of the whole video per step, two CFG rows
    if sampler == "glc":
        assert m["sampler"]["abam"] is True


@pytest.mark.alone
def test_a14b_multi_shot_scene_with_cross_shot_attention(tmp_path):
    story = tmp_path / "scene.json"
    story.write_text(json.dumps({
        "characters": {"1": "a tall woman in a green raincoat", "2": "an old fisherman"},
        "environment": "a rainy harbour at dusk",
        "story": "she waits for a ferry and meets an old friend",
        "shots": ["Wide shot: Character 1 stands at the pier.", "[SHOT CUT] Close-up: Character 2 lights a pipe."],
    }))
    run = tmp_path / "run"
    ok(cli("generate", *A14B_KV, "save_latents=true", f"story={story}", "sampler=gen-l-video", "sampler.num_steps=3",
           "shots.windows=[1,1]", "shots.cross_attention=0.5", f"hydra.run.dir={run}", cwd=tmp_path))
    out, m = latents(run), _manifest(run)
    assert out.shape[0] == 2 * 21 and torch.isfinite(out).all()
    assert m["sampler"]["takes"] == 2 and m["sampler"]["cross_attention"] == 0.5


@pytest.mark.alone
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

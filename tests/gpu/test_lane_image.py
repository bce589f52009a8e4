"""GPU lane cases for image conditioning (issue 25): the image-to-video backbones at full size with random weights,
through the installed CLI, as tests/gpu/test_lane.py runs its cases (helpers imported from there).

- CogVideoX-5B-I2V (720x480, its only size): a story of two events, each with a key image (a 640x360 start image
  cropped to the frame, a portrait key image), Gen-L-Video over 2 windows: an uninterrupted run, and a run stopped
  by SIGINT, resumed, killed with SIGKILL mid-sampling and resumed again — the same latents byte for byte; the
  manifest records both images (sizes, hashes, windows).
- Wan 2.1 I2V 14B at 480p: one window (direct, 2 steps, CFG) from a start image: the CLIP image encoder, the mask +
  VAE conditioning latent and the image cross-attention on the real architecture; finite latents and the start line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_lane import DRY, PROMPT, cli, latents, ok, same_chain_latents, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

if DRY:
    COG_I2V = ["backbone=tiny-i2v", "backbone.height=16", "backbone.width=16"]
    WAN_I2V = ["backbone=tiny-wan-i2v", "backbone.height=16", "backbone.width=16"]
else:  # eager: four process starts of the chain would each compile 42 (40) blocks; few forwards follow them
    COG_I2V = ["backbone=cogvideox-5b-i2v", "backbone.random_weights=true", "backbone.compile=false"]
    WAN_I2V = ["backbone=wan2.1-i2v-14b-480p", "backbone.random_weights=true", "backbone.compile=false"]


def _pictures(folder: Path) -> Path:
    """start.png (640x360, wider than the frame) and key.png (360x640, portrait), and a story that uses both."""
    rng = np.random.default_rng(0)
    for name, (w, h) in (("start.png", (640, 360)), ("key.png", (360, 640))):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / name)
    story = {"global": "a red fox in a snowy birch forest",
             "local": [{"prompt": "a red fox in a snowy birch forest sits still", "image": "start.png"},
                       {"prompt": "a red fox in a snowy birch forest leaps", "image": "key.png"}]}
    path = folder / "story.json"
    path.write_text(json.dumps(story))
    return path


def test_cogvideox_i2v_key_images_uninterrupted_equals_sigint_and_kill9_resumes(tmp_path):
    story = _pictures(tmp_path)
    command = ["generate", *COG_I2V, "save_latents=true", f"story={story}", "sampler=gen-l-video", "num_windows=2",
               "sampler.num_steps=5"]
    seen = whole_and_chain(command, tmp_path)
    same_chain_latents(tmp_path, "cogvideox-5b-i2v key images", seen)
    manifest = json.loads((tmp_path / "chain" / "manifest.json").read_text())
    images = manifest["images"]
    assert [(i["source"], i["original_size"], i["window_start"]) for i in images] == [
        ("event 1", [640, 360], 0), ("event 2", [360, 640], 4)]
    size = [manifest["width"], manifest["height"]]
    assert all(i["fitted_size"] == size for i in images)
    assert manifest["backbone"]["device"].startswith("cpu" if DRY else "cuda"), manifest["backbone"]


def test_wan_i2v_14b_start_image_one_window(tmp_path):
    _pictures(tmp_path)
    proc = ok(cli("generate", *WAN_I2V, "save_latents=true", PROMPT, f"image={tmp_path / 'start.png'}",
                  "image_fit=pad", "sampler=direct", "num_windows=1", "sampler.num_steps=2",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path))
    said = " ".join(proc.stderr.split())  # the log's lines, unwrapped
    assert "key images (image_fit=pad): image= start.png 640x360 →" in said, said[-2000:]
    assert torch.isfinite(latents(tmp_path / "run")).all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["images"][0]["fit"] == "pad" and manifest["images"][0]["window_start"] == 0

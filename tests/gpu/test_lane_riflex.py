"""GPU lane cases for issue 29's RIFLEx and GLC's paper VMCR source (run by scripts/gpu_lane.sh with the rest of
tests/gpu; `LONGGEN_LANE_DRY=1` runs them on the CPU with the tiny backbones):
- Wan 2.1 1.3B with `backbone.riflex=true`: windows of 41 latent frames (161 video frames) at stride 12 cover 53
  latent frames with 2 windows where the native 21-frame windows at stride 6 need 7; the manifest names the
  lowered component (k = 5 on Wan 2.1's 44 temporal RoPE channels; k = 1 on tiny-wan's 4);
- CogVideoX-2B (absolute positions) with `backbone.riflex=true`: one line, nothing run;
- GLC with `sampler.vmcr_source=model` (Algorithm 1 lines 21-23: backprop through the transformer) on CogVideoX-2B:
  uninterrupted, and SIGINT → resume → SIGKILL → resume gives the same latents byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_lane import COG, DRY, WAN, cli, latents, ok, one_line, same_chain_latents, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

LENGTH = 53  # latent frames: 41 + 12 (two RIFLEx windows), 21 + 6·5 + 2 (seven native windows, the last end-aligned)


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_wan_riflex_covers_the_length_with_a_third_of_the_windows(tmp_path):
    common = ["generate", *WAN, "sampler=gen-l-video", f"latent_frames={LENGTH}", "sampler.num_steps=2"]
    ok(cli(*common, "backbone.riflex=true", "sampler.stride=12", f"hydra.run.dir={tmp_path / 'riflex'}",
           cwd=tmp_path))
    ok(cli(*common, f"hydra.run.dir={tmp_path / 'native'}", cwd=tmp_path))
    longer, native = _manifest(tmp_path / "riflex"), _manifest(tmp_path / "native")
    assert (len(longer["windows"]), len(native["windows"])) == (2, 7)
    assert longer["backbone"]["window_latent_frames"] == 41 and native["backbone"]["window_latent_frames"] == 21
    record = longer["backbone"]["riflex"]
    assert (record["k"], record["window"], record["native_window"]) == ((1 if DRY else 5), 41, 21)
    assert record["theta_new"] < record["theta"] and "riflex" not in native["backbone"]
    out = latents(tmp_path / "riflex")
    assert out.shape[0] == LENGTH and torch.isfinite(out).all()


def test_cogvideox_2b_riflex_is_refused_in_one_line(tmp_path):
    proc = cli("generate", *COG, "sampler=gen-l-video", "num_windows=2", "backbone.riflex=true",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert "backbone.riflex" in line and "absolute positions" in line
    assert not (tmp_path / "run" / "latents.safetensors").exists()


@pytest.mark.alone  # the backward through the transformer holds a window's activations: not beside other cases
def test_glc_model_source_vmcr_resume_chain_on_cogvideox_2b(tmp_path):
    command = ["generate", *COG, "sampler=glc", "num_windows=2", "sampler.num_steps=4", "sampler.vmcr_source=model",
               "backbone.micro_batch=4"]
    seen = whole_and_chain(command, tmp_path)
    same_chain_latents(tmp_path, "glc vmcr_source=model", seen)
    sampler = _manifest(tmp_path / "whole")["sampler"]
    assert sampler.get("vmcr_source") == "model", sampler

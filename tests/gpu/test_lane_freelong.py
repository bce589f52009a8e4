"""GPU lane cases of `sampler=freelong` (FreeLong's spectral blend attention, longgen/samplers/freelong.py), run by
`scripts/gpu_lane.sh` with the rest of tests/gpu: full-size CogVideoX-2B and Wan 2.1 1.3B with random weights.

- resume chains (as test_lane.py's CHAINS): FreeLong++ with two local windows and η = 0.5 on CogVideoX-2B
  (L = 21: windows 13 and 17 and the global branch), FreeLong at its defaults on Wan 1.3B (L = 27, window 21):
  uninterrupted = SIGINT, resume, SIGKILL of the resume, resume again, byte for byte;
- a video of one window (num_windows=1) is direct sampling on the GPU kernels too (the local branch is the global
  attention; the compiled graphs differ, so up to rounding);
- a multi-band window as long as the video is one line, no traceback;
- `gpus=2` gives the bytes of one GPU (each guidance branch is its own unit; the attention holds no state across
  units), and a run stopped on two GPUs resumes on two to the same bytes (skipped with fewer than two GPUs).

LONGGEN_LANE_DRY=1 runs the same logic on the CPU with the tiny backbones (checks the lane's code, not the GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

from test_lane import (COG, WAN, cli, interrupted_chain, latents, ok, one_line, same_chain_latents,
                       whole_and_chain)

DRY = os.environ.get("LONGGEN_LANE_DRY") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

#: name → (backbone options, sampler options)
CHAINS = {
    "cog-freelong++": (COG, ["sampler=freelong", "num_windows=3", "sampler.num_steps=5", "sampler.multi_band=[17]",
                             "sampler.eta=0.5"]),
    "wan-freelong": (WAN, ["sampler=freelong", "num_windows=2", "sampler.num_steps=5"]),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_freelong_uninterrupted_equals_sigint_and_kill9_resumes(name, tmp_path):
    backbone, sampler = CHAINS[name]
    seen = whole_and_chain(["generate", *backbone, *sampler], tmp_path)
    same_chain_latents(tmp_path, name, seen)


def test_freelong_in_one_window_is_direct_sampling_and_a_too_long_band_is_one_line(tmp_path):
    runs = {}
    for sampler in ("direct", "freelong"):
        runs[sampler] = tmp_path / sampler
        ok(cli("generate", *COG, f"sampler={sampler}", "num_windows=1", "sampler.num_steps=3",
               f"hydra.run.dir={runs[sampler]}", cwd=tmp_path))
    direct, freelong = latents(runs["direct"]), latents(runs["freelong"])
    assert (freelong - direct).abs().max() <= 1e-2 * direct.abs().max(), (freelong - direct).abs().max()
    proc = cli("generate", *COG, "sampler=freelong", "num_windows=3", "sampler.num_steps=2",
               "sampler.multi_band=[21]", f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "multi_band window 21 is not shorter than the video's 21 latent frames" in one_line(proc.stderr)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="gpus=2 needs two GPUs on this machine")
def test_freelong_two_gpus_same_bytes_and_resumed_on_two(tmp_path):
    backbone, sampler = CHAINS["cog-freelong++"]
    command = ["generate", *backbone, *sampler, "backbone.micro_batch=1"]  # one unit per guidance branch
    ok(cli(*command, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path))
    ok(cli(*command, "gpus=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "two"))
    seen = interrupted_chain([*command, "gpus=2"], tmp_path / "chain", tmp_path)
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "chain")), seen

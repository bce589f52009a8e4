"""GPU lane cases of `sampler=ditctrl` (DiTCtrl: KV-sharing between adjacent prompt clips, latent blending) on
CogVideoX-2B and Wan 2.1 1.3B with random weights: an uninterrupted run against a run stopped by SIGINT, resumed,
killed with SIGKILL during that resume and resumed again (the chain of tests/gpu/test_lane.py), byte for byte; and
on a machine with two GPUs, `gpus=2` against one GPU.

Sharing runs in every step (kv_steps [0, 5)) in the paper's layers [25, 30) — both models have 30 — with the subject
mask on (subject_tokens), so the masked path, its replicated conditional rows and the stores cross the interruptions.
LONGGEN_LANE_DRY=1 runs the same logic on the CPU with the tiny backbones (2 layers: span [0, 2)).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_lane import COG, DRY, WAN, cli, latents, ok, same_chain_latents, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

LAYERS = "sampler.kv_layers=[0,2]" if DRY else "sampler.kv_layers=[25,30]"
DITCTRL = ["sampler=ditctrl", "sampler.num_steps=5", "sampler.kv_steps=[0,5]", LAYERS, "sampler.subject_tokens=[1,2]"]

#: the resume chains: name → (backbone options, sampler options)
CHAINS = {
    # three clips: the inner one is target of pair 0 and source of pair 1; micro-batches of 4 split the CFG rows
    "cog-ditctrl": (COG, [*DITCTRL, "num_windows=3", "backbone.micro_batch=4"]),
    "wan-ditctrl": (WAN, [*DITCTRL, "num_windows=2"]),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_ditctrl_uninterrupted_equals_sigint_and_kill9_resumes(name, tmp_path):
    backbone, sampler = CHAINS[name]
    seen = whole_and_chain(["generate", *backbone, *sampler], tmp_path)
    same_chain_latents(tmp_path, name, seen)
    manifest = json.loads((tmp_path / "chain" / "manifest.json").read_text())
    reference = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert manifest["resumed"]["after_step"] == seen["killed_after"]
    assert manifest["transformer_forwards"] == reference["transformer_forwards"]
    assert manifest["backbone"]["device"].startswith("cpu" if DRY else "cuda"), manifest["backbone"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="gpus=2 needs two GPUs on this machine")
def test_ditctrl_two_gpus_same_bytes(tmp_path):
    command = ["generate", *COG, *DITCTRL, "num_windows=3", "backbone.micro_batch=1"]
    ok(cli(*command, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path))
    ok(cli(*command, "gpus=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "two"))

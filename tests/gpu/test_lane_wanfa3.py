"""GPU lane case for `backbone.attention=fa3` on Wan (run by scripts/gpu_lane.sh with the rest of tests/gpu;
`LONGGEN_LANE_DRY=1` runs it on the CPU with tiny-wan): Wan 2.1 T2V 1.3B at full size with random weights,
Gen-L-Video over 2 windows, 3 steps, once with FlashAttention-3 (fa3-fwd through longgen's WanAttention processor)
and once with cuDNN attention: the manifest names fa3-fwd, and the latents agree as closely as CogVideoX's fa3 and
cuDNN runs do (tests/gpu/test_lane.py). On the CPU (dry) fa3 is refused in one line and leaves no latents.
"""

from __future__ import annotations

import json

import pytest
import torch

from test_lane import DRY, WAN, cli, latents, ok, one_line

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]


def test_wan_fa3_matches_cudnn_and_names_fa3_fwd(tmp_path):
    base = ["generate", *WAN, "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=3"]
    ok(cli(*base, "backbone.attention=cudnn", f"hydra.run.dir={tmp_path / 'cudnn'}", cwd=tmp_path))
    proc = cli(*base, "backbone.attention=fa3", f"hydra.run.dir={tmp_path / 'fa3'}", cwd=tmp_path)
    if DRY:  # no Hopper GPU (and no FlashAttention-3 package) here: one line, nothing sampled
        assert proc.returncode != 0 and "backbone.attention=fa3" in one_line(proc.stderr)
        assert not (tmp_path / "fa3" / "latents.safetensors").exists()
        return
    ok(proc)
    backbone = json.loads((tmp_path / "fa3" / "manifest.json").read_text())["backbone"]
    assert backbone["attention_used"] == "fa3" and "fa3-fwd" in backbone["attention_kernels"], backbone
    fa3, cudnn = latents(tmp_path / "fa3"), latents(tmp_path / "cudnn")
    assert torch.isfinite(fa3).all() and fa3.shape == cudnn.shape
    # the exact kernels agree closely (bf16 both; the bound of CogVideoX's fa3-vs-cuDNN lane case)
    assert (fa3 - cudnn).abs().max() < 0.05 * cudnn.abs().max()

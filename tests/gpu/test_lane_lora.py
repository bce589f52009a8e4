"""GPU lane cases for LoRA (issue 25, longgen/backbones/lora.py): CogVideoX-2B with random weights and a random
LoRA on every attention projection of every block, made here in diffusers' key format.
- compile on (`auto` on CUDA): generate, and the SIGINT → resume → SIGKILL → resume chain, give the same latents;
  the manifest names the file with its sha256 and scale, and the blocks were compiled with the LoRA fused in;
- with model CPU offload (the LoRA fused on the CPU before the offload hooks): the run finishes and records it;
- a LoRA made for another width: one line naming the file, no traceback;
- a scale per event (unfused PEFT layers, `set_adapters` per transformer call), compile on: a two-event story with
  the LoRA at 0.8 in event 1 and −0.4 in event 2; generate and the interrupted chain give the same latents, the
  manifest records each event's scales and the file's sha256, and the blocks were compiled;
- Wan 2.2 T2V-A14B with random weights: a LoRA file per expert (`experts: high` / `low`, the low-noise one through
  diffusers' `load_into_transformer_2`), fused into each; the run finishes finite, one expert per step, and the
  manifest names each file's experts and sha256.
With LONGGEN_LANE_DRY=1 the same logic runs on the CPU with the tiny backbone (compile off, no offload case).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from test_lane import COG, COG_MODEL, DRY, PROMPT, cli, latents, ok, one_line, same_chain_latents, whole_and_chain
from test_lane_wan22 import A14B

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
SAMPLER = ["sampler=gen-l-video", "num_windows=2", "sampler.num_steps=5"]


def write_lora(folder: Path, width: int, blocks: int, rank: int = 8, alpha: float = 8.0) -> Path:
    """A random LoRA on to_q/to_k/to_v/to_out.0 of `blocks` CogVideoX blocks of inner width `width`, small enough
    (B scaled by 1/√width) that the random-weight model stays finite; saved by diffusers with rank and alpha."""
    from diffusers import CogVideoXPipeline

    gen = torch.Generator().manual_seed(0)
    tensors, layers = {}, []
    for i in range(blocks):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            layer = f"transformer_blocks.{i}.attn1.{proj}"
            layers.append(layer)
            tensors[f"{layer}.lora_A.weight"] = torch.randn(rank, width, generator=gen) / width**0.5
            tensors[f"{layer}.lora_B.weight"] = torch.randn(width, rank, generator=gen) / width**0.5
    CogVideoXPipeline.save_lora_weights(folder, transformer_lora_layers=tensors, weight_name="style.safetensors",
                                        transformer_lora_adapter_metadata={"r": rank, "lora_alpha": alpha,
                                                                           "target_modules": layers})
    return folder / "style.safetensors"


def cog_geometry() -> tuple[int, int]:
    """(inner width, blocks) of the lane's CogVideoX: conf/backbone/tiny.yaml dry, cogvideox-2b.yaml on a GPU."""
    arch = OmegaConf.load(CONF / ("tiny.yaml" if DRY else "cogvideox-2b.yaml")).architecture.transformer
    return arch.num_attention_heads * arch.attention_head_dim, arch.num_layers


def lora_option(path: Path, scale: float = 0.8) -> str:
    return f"backbone.lora=[{{path:'{path}',scale:{scale}}}]"


def test_lora_compiled_generate_and_resume_chain_same_latents(tmp_path):
    path = write_lora(tmp_path, *cog_geometry())
    command = ["generate", *COG, *SAMPLER, lora_option(path)]
    same_chain_latents(tmp_path, "lora", whole_and_chain(command, tmp_path))
    backbone = json.loads((tmp_path / "whole" / "manifest.json").read_text())["backbone"]
    assert backbone["compiled"] is (not DRY)
    (recorded,) = backbone["lora"]
    assert recorded["scale"] == 0.8 and recorded["path"] == str(path)
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(DRY, reason="model CPU offload needs a CUDA device")
def test_lora_with_cpu_offload(tmp_path):
    path = write_lora(tmp_path, *cog_geometry())
    run = tmp_path / "run"
    ok(cli("generate", *COG, "sampler=direct", "num_windows=1", "sampler.num_steps=3", "backbone.cpu_offload=true",
           lora_option(path), f"hydra.run.dir={run}", cwd=tmp_path))
    backbone = json.loads((run / "manifest.json").read_text())["backbone"]
    assert backbone["cpu_offload"] is True and backbone["lora"][0]["sha256"]
    assert torch.isfinite(latents(run)).all()


def test_lora_for_another_width_is_one_line(tmp_path):
    width, blocks = cog_geometry()
    path = write_lora(tmp_path, width * 2, 1)
    proc = cli("generate", *COG, "sampler=direct", "num_windows=1", "sampler.num_steps=1", lora_option(path),
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_line(proc.stderr)
    assert proc.returncode != 0 and str(path) in line and "made for another model?" in line


def test_lora_scale_per_event_compiled_generate_and_resume_chain_same_latents(tmp_path):
    path = write_lora(tmp_path, *cog_geometry())
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global": "a red fox in a snowy birch forest",
                                 "local": ["a red fox in a snowy birch forest, walking",
                                           "a red fox in a snowy birch forest, sitting still"]}))
    option = f"backbone.lora=[{{path:'{path}',scale:1.0,events:[0.8,-0.4]}}]"
    command = ["generate", *COG_MODEL, "save_latents=true", f"story={story}", *SAMPLER, option]
    same_chain_latents(tmp_path, "lora-per-event", whole_and_chain(command, tmp_path))
    backbone = json.loads((tmp_path / "whole" / "manifest.json").read_text())["backbone"]
    assert backbone["compiled"] is (not DRY)
    (recorded,) = backbone["lora"]
    assert recorded["events"] == [0.8, -0.4] and recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone["lora_scales"]["events"] == [{"style": 0.8}, {"style": -0.4}]


def write_wan_lora(folder: Path, name: str, seed: int) -> Path:
    """A random rank-8 LoRA on the self-attention query and output of the first two blocks of the lane's A14B
    expert (conf/backbone/tiny-wan22-a14b.yaml dry, wan2.2-t2v-a14b.yaml on a GPU), B scaled by 1/√width."""
    from diffusers import WanPipeline

    arch = OmegaConf.load(CONF / ("tiny-wan22-a14b.yaml" if DRY else "wan2.2-t2v-a14b.yaml")).architecture.transformer
    width, rank = arch.num_attention_heads * arch.attention_head_dim, 8
    gen = torch.Generator().manual_seed(seed)
    tensors, layers = {}, []
    for i in range(2):
        for proj in ("to_q", "to_out.0"):
            layer = f"blocks.{i}.attn1.{proj}"
            layers.append(layer)
            tensors[f"{layer}.lora_A.weight"] = torch.randn(rank, width, generator=gen) / width**0.5
            tensors[f"{layer}.lora_B.weight"] = torch.randn(width, rank, generator=gen) / width**0.5
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=tensors, weight_name=name,
                                  transformer_lora_adapter_metadata={"r": rank, "lora_alpha": rank,
                                                                     "target_modules": layers})
    return folder / name


@pytest.mark.alone  # the two experts hold ~56 GB of the GPU
def test_lora_per_expert_on_wan22_a14b(tmp_path):
    high = write_wan_lora(tmp_path, "high_noise.safetensors", 1)
    low = write_wan_lora(tmp_path, "low_noise.safetensors", 2)
    run = tmp_path / "run"
    option = f"backbone.lora=[{{path:'{high}',experts:high,scale:0.8}},{{path:'{low}',experts:low,scale:0.8}}]"
    ok(cli("generate", *A14B, "save_latents=true", PROMPT, "sampler=gen-l-video", "num_windows=2",
           "sampler.num_steps=4", option, f"hydra.run.dir={run}", cwd=tmp_path))
    assert torch.isfinite(latents(run)).all()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["transformer_forwards"] == 4 * 2 * 2  # steps × windows × CFG rows, one expert per step
    recorded = manifest["backbone"]["lora"]
    assert [(r["name"], r["experts"]) for r in recorded] == [("high_noise", "high"), ("low_noise", "low")]
    assert [r["sha256"] for r in recorded] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (high, low)]

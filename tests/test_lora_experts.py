"""LoRA on Wan 2.2 A14B's two experts (issue 25; longgen/backbones/lora.py, `experts: high | low | both`), on
tiny-wan22-a14b: the high-noise expert (`transformer`) runs at t ≥ 875, the low-noise one (`transformer_2`) below.

Metamorphic: a LoRA into the low-noise expert only leaves every prediction at t ≥ boundary the base model's bytes
and changes those below; into the high-noise expert the other way round; into both, each side equals the one-expert
runs' changed side. The same holds with a scale per event (unfused adapters). The manifest names each item's
experts and hash; a missing or misplaced `experts` is one line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_lora import random_lora, save_diffusers

from longgen.build import build
from longgen.errors import UsageError

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"


def a14b(lora: list[dict] | None = None, name: str = "tiny-wan22-a14b"):
    """The tiny A14B (or `name`) at 16×16 and 9 frames (3 latent frames), loaded, one prompt encoded."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.height = cfg.width = 16
    cfg.num_frames = 9
    cfg.lora = lora
    backbone = build(cfg, "backbone", name)
    backbone.load()
    backbone.encode_prompts(["a cat"], "")
    return backbone


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Path:
    """A rank-2 LoRA on block 0's query and block 1's feed-forward output (inner width 16, ffn 32), diffusers'
    Wan key format."""
    from diffusers import WanPipeline

    tensors = random_lora({"blocks.0.attn1.to_q": (16, 16), "blocks.1.ffn.net.2": (16, 32)}, rank=2, seed=5)
    return save_diffusers(WanPipeline, tmp_path_factory.mktemp("wan22_lora"), "style.safetensors", tensors, 2, 2.0)


@pytest.fixture(scope="module")
def inputs():
    """x [2, 3, 4, 2, 2] and a timestep on each side of the boundary (875) of the 4-step schedule (shift 12)."""
    base = a14b()
    steps = base.schedule(4).timesteps
    high, low = steps[0], steps[-1]
    assert float(high) >= 875 > float(low)
    x = torch.randn(2, base.window, *base.latent_shape, generator=torch.Generator().manual_seed(0))
    return x, high, low, {which: base.predict(x, t, [0, 0], 4.0).x0 for which, t in (("high", high), ("low", low))}


def predictions(backbone, inputs, ids=(0, 0)) -> dict[str, torch.Tensor]:
    x, high, low, _ = inputs
    return {which: backbone.predict(x, t, list(ids), 4.0).x0 for which, t in (("high", high), ("low", low))}


def test_a_lora_changes_only_its_experts_timesteps(style, inputs):
    base = inputs[3]
    got = {experts: predictions(a14b([{"path": str(style), "scale": 0.9, "experts": experts}]), inputs)
           for experts in ("low", "high", "both")}
    assert torch.equal(got["low"]["high"], base["high"]) and not torch.allclose(got["low"]["low"], base["low"])
    assert torch.equal(got["high"]["low"], base["low"]) and not torch.allclose(got["high"]["high"], base["high"])
    torch.testing.assert_close(got["both"]["high"], got["high"]["high"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["both"]["low"], got["low"]["low"], rtol=1e-6, atol=1e-6)


def test_per_event_scales_on_the_low_noise_expert(style, inputs):
    """Unfused adapters in the low-noise expert only, events at (0.9, 0): above the boundary both windows are the
    base model's (to float tolerance: each event's rows run in a call of their own); below it event 0's window is
    the fused low-expert model's and event 1's the base's."""
    base = inputs[3]
    backbone = a14b([{"path": str(style), "scale": 0.3, "events": [0.9, 0.0], "experts": "low"}])
    got = predictions(backbone, inputs, [backbone.event_id(0, 0), backbone.event_id(0, 1)])
    fused = predictions(a14b([{"path": str(style), "scale": 0.9, "experts": "low"}]), inputs)
    torch.testing.assert_close(got["high"], base["high"], rtol=1e-5, atol=1e-5)  # calls of one event's rows each
    torch.testing.assert_close(got["low"][0], fused["low"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["low"][1], base["low"][1], rtol=1e-4, atol=1e-4)
    (recorded,) = backbone.describe()["lora"]
    assert recorded["experts"] == "low" and recorded["sha256"] == hashlib.sha256(style.read_bytes()).hexdigest()


@pytest.mark.parametrize("entry, name, message", [
    ({}, "tiny-wan22-a14b", ("backbone.lora[0]: this model has two experts: say which this LoRA is for with "
                             "experts: high (high-noise file), low (low-noise file) or both")),
    ({"experts": "middle"}, "tiny-wan22-a14b", "backbone.lora[0].experts='middle': use high (the high-noise expert"),
    ({"experts": ["low"]}, "tiny-wan22-a14b", "backbone.lora[0].experts=['low']: use high"),
    ({"experts": "low"}, "tiny-wan", "backbone.lora[0].experts=low: this model has one transformer: drop experts"),
    ({"experts": "both"}, "tiny-wan22-ti2v", "backbone.lora[0].experts=both: this model has one transformer"),
])
def test_experts_missing_or_misplaced_is_one_line(style, entry, name, message):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.lora = [{"path": str(style), **entry}]
    with pytest.raises(UsageError) as err:
        build(cfg, "backbone", name)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)

"""ABAM, cross-shot attention, FreeLong and DiTCtrl's KV-sharing on Wan 2.2 A14B's two experts (wan22.py's
`_attention_models`; the layouts keep what they store per layer per expert, attention.CallInFlight.model), on
tiny-wan22-a14b in float32:

- oracle: under each processor, a predict at t ≥ 875 (the boundary) equals the same predict on a one-expert
  backbone whose transformer is a copy of the high-noise expert, and at t < 875 a copy of the low-noise expert at
  guidance 3 (the A14B's guidance_scale_2); per-frame timesteps across the boundary take each frame from its own
  expert's oracle, the capture of cross-shot attention and KV-sharing straddling too, so each expert reads only the
  keys/values its own layers kept. The oracles differ from plain attention, so a processor missing from an expert
  shows;
- a sharing expert that captured nothing is an error, not another expert's keys/values; KV-sharing on experts of
  different depths is one line (`sampler.kv_layers` names one span);
- both experts have their own processors back after each block, also when it raises;
- the CLI runs freelong, ditctrl, glc (ABAM) and a multi-shot story with cross-shot attention on tiny-wan22-a14b, in
  one multirun process (interpreter start-up dominates a CLI test).
"""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
from omegaconf import OmegaConf

from cli_helpers import run_cli
from conftest import REPO
from longgen.build import build

BOUNDARY = 875.0
SCALES = (4.0, 3.0)  # guidance of the high-noise expert (the caller's), of the low-noise one (guidance_scale_2)
PROMPTS = ["a red fox runs in the snow", "a dog runs on the beach"]


def _backbone(**changes):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan22-a14b.yaml")
    for key, value in changes.items():
        cfg[key] = value
    backbone = build(cfg, "backbone", "tiny-wan22-a14b")
    backbone.load()
    backbone.encode_prompts(PROMPTS, "")
    return backbone


@pytest.fixture(scope="module")
def models():
    """(the two-expert backbone, a one-expert backbone, copies of the two experts for the latter)."""
    two = _backbone()
    one = _backbone(boundary_ratio=None, guidance_scale_2=None)
    return two, one, [copy.deepcopy(two.pipe.transformer), copy.deepcopy(two.pipe.transformer_2)]


def _x(frames: int, windows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn((windows, frames, 4, 4, 4), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- scenarios
# each: (backbone, timestep(s), guidance scale, processor on) → the x̂0 of its last predict, [B, M, C, H, W]
def freelong(b, t, scale, on=True):
    with b.spectral_attention(27, [9], 0.25, 0.25) if on else contextlib.nullcontext():
        return b.predict(_x(27), t, [0], scale).x0


def abam(b, t, scale, on=True):
    with b.anchor_attention(0.5, groups=[1, 2]) if on else contextlib.nullcontext():
        return b.predict(_x(21, windows=3, seed=1), t, [0, 1, 1], scale).x0


def shots(b, t, scale, on=True):
    ref, x = _x(21, seed=2), _x(21, windows=2, seed=3)
    if not on:
        return b.predict(x, t, [1, 1], scale).x0
    with b.shot_attention(0.5, guided=True) as layout:
        with layout.capturing():
            b.predict(ref, t, [0], scale)
        with layout.sharing():
            return b.predict(x, t, [1, 1], scale).x0


def kv(b, t, scale, on=True):
    src, tgt = _x(21, seed=4), _x(21, seed=5)
    if not on:
        return b.predict(tgt, t, [1], scale).x0
    with b.kv_sharing((0, 2), [1, 2], 0.3) as layout:  # masked: the map processors go into attn2 as well
        with layout.capturing():
            b.predict(src, t, [0], scale)
        with layout.sharing([0]):
            return b.predict(tgt, t, [1], scale).x0


SCENARIOS = {"freelong": (freelong, 27), "abam": (abam, 21), "shots": (shots, 21), "kv": (kv, 21)}


def _oracle(models, scenario, t):
    """Each expert's result on the one-expert backbone, and (the per-frame pick of) the two."""
    two, one, experts = models
    outs = []
    for k, expert in enumerate(experts):
        one.pipe.transformer = expert
        outs.append(scenario(one, t, SCALES[k]))
    high = (torch.as_tensor(t, dtype=torch.float32) >= BOUNDARY).reshape(1, -1, 1, 1, 1)  # [1, 1 or M, 1, 1, 1]
    return torch.where(high, outs[0], outs[1]), outs


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_expert_runs_the_processor_as_a_one_expert_model(models, name):
    two = models[0]
    scenario, frames = SCENARIOS[name]
    for t in (960.0, 500.0):  # the high-noise expert, the low-noise one
        want, _ = _oracle(models, scenario, t)
        got = scenario(two, t, SCALES[0])
        assert (got - want).abs().max().item() <= 1e-5, (name, t)
        # the processor acts in this expert: the result is not plain attention's
        assert (got - scenario(two, t, SCALES[0], on=False)).abs().max().item() > 1e-3, (name, t)
    # per-frame timesteps across the boundary (FIFO's queue): both experts in one predict, captures included
    ts = torch.linspace(990.0, 700.0, frames)
    want, outs = _oracle(models, scenario, ts)
    assert (outs[0] - outs[1]).abs().max().item() > 1e-3
    got = scenario(two, ts, SCALES[0])
    assert (got - want).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("name", ["shots", "kv"])
def test_sharing_on_an_expert_that_captured_nothing_is_an_error(models, name):
    two = models[0]
    ts = torch.linspace(990.0, 700.0, 21)
    block = two.shot_attention(0.5, guided=True) if name == "shots" else two.kv_sharing((0, 2), [], 0.3)
    with pytest.raises(RuntimeError, match="another transformer captured"):
        with block as layout:
            with layout.capturing():
                two.predict(_x(21), 960.0, [0], 4.0)  # the high-noise expert only
            with layout.sharing() if name == "shots" else layout.sharing([0]):
                two.predict(_x(21, seed=1), ts, [1], 4.0)  # both experts


def test_kv_sharing_refuses_experts_of_different_depths_in_one_line(models):
    """`sampler.kv_layers` names one span of layers: experts with different layer counts are one line."""
    from diffusers import WanTransformer3DModel

    from longgen.backbones.kv_sharing import kv_shared, wan_kv
    from longgen.errors import UsageError

    high = models[0].pipe.transformer
    shallow = WanTransformer3DModel(**{**high.config, "num_layers": 1})
    with pytest.raises(UsageError, match=r"\[1, 2\] attention layers") as err:
        with kv_shared([high, shallow], (0, 1), [], 0.3, wan_kv()["processor"], wan_kv()["layers"]):
            pass
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------- restoring
BLOCKS = {
    "abam": lambda b: b.anchor_attention(0.5),
    "shots": lambda b: b.shot_attention(0.5, guided=True),
    "freelong": lambda b: b.spectral_attention(27, [9], 0.25, 0.25),
    "kv": lambda b: b.kv_sharing((0, 2), [1], 0.3),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_both_experts_get_their_own_processors_back(models, name):
    two = models[0]
    experts = two._attention_models()
    assert len(experts) == 2
    own = [dict(m.attn_processors) for m in experts]

    def ids(processors):
        return [{n: id(p) for n, p in m.items()} for m in processors]

    with BLOCKS[name](two):
        for model, before in zip(experts, own):  # installed in both experts' self-attention layers
            now = model.attn_processors
            assert all(now[n] is not p for n, p in before.items() if n.endswith(".attn1.processor")), name
    assert ids(m.attn_processors for m in experts) == ids(own), name
    with pytest.raises(ValueError, match="inside the block"):
        with BLOCKS[name](two):
            raise ValueError("inside the block")
    assert ids(m.attn_processors for m in experts) == ids(own), name


# ---------------------------------------------------------------------------------------------------- the CLI
STORY = {"global": "a quiet winter forest", "local": ["a red fox runs in the snow",
                                                     "the fox stops at a frozen river"]}
SCENE = {"characters": {"1": "a tall woman in a green raincoat"}, "environment": "a rainy harbour at dusk",
         "story": "she waits for a ferry",
         "shots": ["<1> waits at the pier", "[SHOT CUT] <1> looks at the sea"]}
CASES = {"freelong": "freelong", "ditctrl": "ditctrl", "glc": "glc", "shots": "gen-l-video"}  # case → sampler


def test_cli_runs_every_processor_sampler_on_the_two_experts(tmp_path):
    (tmp_path / "story.json").write_text(json.dumps(STORY))
    (tmp_path / "scene.json").write_text(json.dumps(SCENE))
    cases = tmp_path / "configs" / "case"
    cases.mkdir(parents=True)
    for name, sampler in CASES.items():  # `+case=NAME`: an appended config that picks the sampler and the story
        body = {"defaults": [{"override /sampler": sampler}]}
        if name == "freelong":  # one video-long window: one prompt
            body["prompt"] = STORY["local"][0]
        else:
            body["story"] = str(tmp_path / ("scene.json" if name == "shots" else "story.json"))
        if name == "shots":
            body["shots"] = {"cross_attention": 0.5}  # num_windows=2: one window per shot
        if name == "ditctrl":
            body["sampler"] = {"kv_steps": [0, 3], "kv_layers": [0, 2]}
        if name == "glc":
            body["sampler"] = {"abam": True}
        (cases / f"{name}.yaml").write_text("# @package _global_\n" + json.dumps(body))
    sweep = tmp_path / "sweep"
    proc = run_cli("generate", "-m", "--config-dir", str(tmp_path / "configs"), "backbone=tiny-wan22-a14b",
                   "backbone.height=16", "backbone.width=16", "backbone.num_frames=21", "backbone.stride=2",
                   "+case=" + ",".join(CASES),
                   "num_windows=2", "sampler.num_steps=3", "save_latents=true", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/manifest.json"))]
    assert len(runs) == len(CASES)
    by_name = {}
    for m in runs:
        by_name["shots" if m["sampler"].get("takes") else m["sampler"]["name"]] = m
    assert sorted(by_name) == sorted(CASES)
    for name, m in by_name.items():
        assert m["backbone"]["boundary_ratio"] == 0.875, name
        assert m["transformer_forwards"] > 0, name
    assert by_name["glc"]["sampler"]["abam"] is True
    assert by_name["shots"]["sampler"]["cross_attention"] == 0.5

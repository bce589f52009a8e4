"""RIFLEx (arXiv 2502.15894; longgen/backbones/riflex.py): the lowered frequency against the paper's formulas written
out here, the rotary tables of tiny Wan and a tiny RoPE CogVideoX against diffusers' unmodified tables (only the
intrinsic component may differ), riflex=false leaving the model's bytes alone, the doubled window halving the
windows a sampler needs, and one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from longgen.backbones import riflex
from longgen.build import build
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler

from conftest import REPO, tiny_config

SMALL = {"height": 16, "width": 16}


def _wan(**overrides):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    for key, value in {**SMALL, **overrides}.items():
        OmegaConf.update(cfg, key, value, merge=False)
    backbone = build(cfg, "backbone", "tiny-wan")
    backbone.load()
    backbone.encode_prompts(["a fox"], "")
    return backbone


@pytest.fixture(scope="module")
def wan_riflex():
    return _wan(riflex=True)


def _by_hand(dim: int, base: float, native: int) -> tuple[int, float, float]:
    """(k, θ_k, θ_k') from the paper's Eqs. 4, 7, 8 as a plain loop (N = 2·M, L' = 2·(M − 1) + 1, margin 0.9)."""
    best, k = None, None
    for j in range(1, dim // 2 + 1):
        theta_j = 1.0 / base ** (2 * (j - 1) / dim)  # Eq. 4's frequency of pair j
        gap = abs(2 * math.pi / theta_j - 2 * native)  # Eq. 7 with N = 2M
        if best is None or gap < best:
            best, k = gap, j
    theta = 1.0 / base ** (2 * (k - 1) / dim)
    extended = 2 * (native - 1) + 1
    return k, theta, min(theta, 0.9 * 2 * math.pi / extended)


@pytest.mark.parametrize("dim,base,native,published_k", [
    (16, 10000.0, 13, 2),  # CogVideoX-5B: head 64 -> 16 temporal channels; the authors' k = 2 (N_k = 20)
    (16, 256.0, 33, 4),  # HunyuanVideo: the authors' k = 4 (N_k = 50)
    (44, 10000.0, 21, None),  # Wan 2.1: head 128 -> 44 temporal channels; no published k
    (4, 10000.0, 21, None),  # tiny-wan
])
def test_plan_follows_the_formulas_written_out(dim, base, native, published_k):
    k, theta, theta_new = _by_hand(dim, base, native)
    p = riflex.plan(0, dim, base, native)
    assert (p.k, p.window, p.chosen) == (k, 2 * native - 1, "Eq. 7")
    assert p.theta == pytest.approx(theta, rel=1e-12) and p.theta_new == pytest.approx(theta_new, rel=1e-12)
    if published_k is not None:
        assert p.k == published_k
    assert p.theta_new < p.theta  # lowered: one period of the component now spans more than the new window
    assert 2 * math.pi / p.theta_new > p.window
    chosen = riflex.plan(1, dim, base, native)  # an explicit K
    assert (chosen.k, chosen.chosen) == (1, "backbone.riflex")


def _wan_rope_case(head_dim: int | None, loaded):
    """(rope module as the backbone uses it, diffusers' unmodified module, plan): tiny-wan as loaded with
    riflex=true, or a bare diffusers rotary module of Wan 2.1's head size patched the way load() patches it."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    if head_dim is None:
        rope = loaded.pipe.transformer.rope
        return rope, WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len), loaded.riflex_plan
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024)
    p = riflex.plan(0, rope.t_dim, 10000.0, 21)
    riflex.patch_wan_rope(rope, p)
    return rope, WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024), p


@pytest.mark.parametrize("head_dim", [None, 128])  # tiny-wan's 8 (k = 1 of 2), Wan 2.1's 128 (k = 5 of 22)
def test_tiny_wan_table_differs_from_diffusers_only_in_the_intrinsic_component(wan_riflex, head_dim):
    rope, plain, p = _wan_rope_case(head_dim, wan_riflex)
    k, _, theta_new = _by_hand(rope.t_dim, 10000.0, 21)
    assert (p.k, p.window, wan_riflex.window, wan_riflex.native_window) == (k, 41, 41, 21)
    cols = [2 * (k - 1), 2 * (k - 1) + 1]  # the component's interleaved (cos, sin) pair of columns
    others = [c for c in range(rope.freqs_cos.shape[1]) if c not in cols]
    for mine, theirs in ((rope.freqs_cos, plain.freqs_cos), (rope.freqs_sin, plain.freqs_sin)):
        assert torch.equal(mine[:, others], theirs[:, others])
        assert not torch.allclose(mine[:, cols], theirs[:, cols])
    pos = torch.arange(rope.max_seq_len, dtype=torch.float64)
    for c in cols:
        assert torch.allclose(rope.freqs_cos[:, c].double(), torch.cos(pos * theta_new), atol=1e-6)
        assert torch.allclose(rope.freqs_sin[:, c].double(), torch.sin(pos * theta_new), atol=1e-6)
    # what a window's forward reads: position p of a 41-frame window is row p of the table
    cos, _ = rope(torch.zeros(1, 4, 41, 2, 2))  # [1, 41·1·1, 1, D]
    assert torch.equal(cos[0, :, 0, : rope.t_dim], rope.freqs_cos[:41, : rope.t_dim])
    info = wan_riflex.describe()["riflex"]  # the manifest's record
    assert (info["k"], info["window"]) == (wan_riflex.riflex_plan.k, 41)


def test_riflex_false_leaves_the_model_bytes_alone():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    off = _wan(riflex=False)
    rope = off.pipe.transformer.rope
    plain = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    assert torch.equal(rope.freqs_cos, plain.freqs_cos) and torch.equal(rope.freqs_sin, plain.freqs_sin)
    assert (off.window, off.riflex_plan) == (21, None) and "riflex" not in off.describe()
    x = torch.randn(1, 21, *off.latent_shape, generator=torch.Generator().manual_seed(0))
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    del cfg["riflex"]  # a config from before the option existed
    for key, value in SMALL.items():
        cfg[key] = value
    old = build(cfg, "backbone", "tiny-wan")
    old.load()
    old.encode_prompts(["a fox"], "")
    assert torch.equal(off.predict(x, 500.0, [0], 5.0).x0, old.predict(x, 500.0, [0], 5.0).x0)


def test_tiny_rope_cogvideox_table_differs_only_in_the_intrinsic_component():
    overrides = {"architecture.transformer.use_rotary_positional_embeddings": True,
                 "architecture.transformer.attention_head_dim": 16, **SMALL}
    plain = build(tiny_config(**overrides), "backbone", "tiny")
    plain.load()
    rope = build(tiny_config(riflex=True, **overrides), "backbone", "tiny")
    rope.load()
    assert rope.window == 25 and rope.riflex_plan.k == _by_hand(4, 10000.0, 13)[0]
    k, theta_new = rope.riflex_plan.k, rope.riflex_plan.theta_new
    cos, sin = rope._rope(25)  # [25·h·w, 16]
    cos0, sin0 = plain.pipe._prepare_rotary_positional_embeddings(16, 16, 25, plain.device)  # diffusers' table
    cols = [2 * (k - 1), 2 * (k - 1) + 1]
    others = [c for c in range(cos.shape[1]) if c not in cols]
    assert torch.equal(cos[:, others], cos0[:, others]) and torch.equal(sin[:, others], sin0[:, others])
    per_frame = cos.shape[0] // 25
    frame = torch.arange(cos.shape[0], dtype=torch.float64) // per_frame
    assert torch.allclose(cos[:, cols[0]].double(), torch.cos(frame * theta_new), atol=1e-6)
    assert torch.allclose(sin[:, cols[1]].double(), torch.sin(frame * theta_new), atol=1e-6)
    assert torch.equal(plain._rope(25)[0], cos0) and torch.equal(plain._rope(25)[1], sin0)  # riflex=false: untouched


def test_doubled_window_halves_the_windows_for_the_same_length(wan_riflex):
    """tiny-wan: 53 latent frames take 7 windows of 21 at stride 6 (the last end-aligned), 2 windows of 41 at stride 12."""
    length = 53
    plain = GenLVideoSampler(num_steps=1, guidance_scale=1.0, stride=6).plan(length, 21)
    sampler = GenLVideoSampler(num_steps=1, guidance_scale=1.0, stride=12)
    assert sampler.plan(length, wan_riflex.window).count <= plain.count // 2
    noise = torch.randn((1, length, *wan_riflex.latent_shape), generator=torch.Generator().manual_seed(0))
    run = SamplingRun(denoiser=wan_riflex, noise=noise, prompt_for_window=lambda s, n: 0,
                      generator=torch.Generator().manual_seed(1))
    wan_riflex.forward_count = 0
    out = sampler.sample(run)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert wan_riflex.forward_count == sampler.plan(length, 41).count  # one forward per 41-frame window


@pytest.mark.parametrize("value", ["yes", 0, -2, 2.5])
def test_bad_riflex_values_are_one_line(value):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    cfg.riflex = value
    with pytest.raises(UsageError, match="backbone.riflex") as err:
        build(cfg, "backbone", "tiny-wan")
    assert "\n" not in str(err.value)


def test_component_out_of_range_and_absolute_positions_refused():
    with pytest.raises(UsageError, match=r"backbone.riflex=9: .* 2 components") as err:
        _wan(riflex=9)
    assert "\n" not in str(err.value)
    for name in ("tiny", "cogvideox-2b"):  # CogVideoX-2B's kind: absolute positions, refused before loading
        cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml")
        cfg.riflex, cfg.model_path = True, None  # (model_path is the top-level key's interpolation in cogvideox-2b)
        with pytest.raises(UsageError, match="absolute positions") as err:
            build(cfg, "backbone", name)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("backbone, windows", [("wan2.1-t2v-1.3b", (11, 4)), ("cogvideox-5b", (10, 4))])
def test_length_factor_counts_native_clips_and_the_default_stride_doubles(backbone, windows):
    """The shipped configs, planned as `generate` plans them: length_factor=4 is the same video length with or
    without RIFLEx (it counts the model's own clips; the nearest point of each stride grid), and the doubled default
    stride halves the windows or better (Wan: L = 21 + 6·10 = 81 → 41 + 12·3 = 77; CogVideoX-5B: 13 + 4·9 = 49 →
    25 + 8·3 = 49)."""
    from hydra import compose, initialize_config_module

    from longgen.run.job import build_parts, planned_length

    counts = []
    for flag in ("false", "true"):
        with initialize_config_module("longgen.conf", version_base="1.3"):
            cfg = compose("generate", overrides=[f"backbone={backbone}", "backbone.random_weights=true",
                                                 f"backbone.riflex={flag}", "sampler=gen-l-video",
                                                 "length_factor=4", "prompt=a fox"])
        parts = build_parts(cfg, {"backbone": backbone, "sampler": "gen-l-video"})
        length = planned_length(cfg, parts)
        counts.append((length, parts.sampler.plan(length, parts.backbone.window).count))
    assert tuple(c for _, c in counts) == windows, counts

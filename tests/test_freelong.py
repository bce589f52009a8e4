"""FreeLong's spectral blend attention (longgen/backbones/spectral_attention.py) and sampler
(longgen/samplers/freelong.py), pinned to written-out oracles:

- the blend against a plain discrete Fourier transform, one frequency at a time, with each branch's band weight
  written from its definition (W_1 = 1 − P_1, W_k = P_{k−1} − P_k, W_global = P_K);
- the attention op against softmax(q·kᵀ/√d)·v with the local mask built key by key, then the blend oracle;
- one CogVideoX joint attention layer and one Wan self-attention layer (with RoPE) against the layer written out
  around those oracles, and, with a window holding the whole video, against the stock diffusers processors;
- reduction: a video that fits the local window is direct sampling; a shorter window changes the video;
- checkpoint/resume bit for bit; units of work run out of order (as ranks of `gpus=N` run them) give the same bytes;
- refusals are one UsageError line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from longgen.backbones.spectral_attention import (
    CogVideoXSpectralProcessor,
    SpectralPlan,
    WanSpectralProcessor,
    spectral_attention,
    spectral_blend,
)
from longgen.build import build
from longgen.denoiser import Denoiser
from longgen.errors import UsageError
from longgen.parallel.units import Units
from longgen.run.checkpoint import load_checkpoint
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.freelong import FreeLongSampler

from conftest import REPO
from test_checkpoint import checkpoint_after_two_steps


# ---------------------------------------------------------------------------------------------------- oracles
def bin_frequency(k: int, n: int) -> float:
    """Frequency of DFT bin k of n, normalised so that ±1 is Nyquist (bins past n/2 are negative)."""
    return 2.0 * (k if k < (n + 1) // 2 else k - n) / n


def band_weights(nu: tuple[float, float, float], windows, temporal_cutoff, spatial_cutoff) -> list[float]:
    """The weight of each branch (local windows ascending, then global) at one frequency, from its definition."""
    lowpass = []
    for w in windows:
        c = temporal_cutoff * windows[0] / w
        d2 = (nu[0] / c) ** 2 + (0.0 if spatial_cutoff is None else (nu[1] / spatial_cutoff) ** 2
                                 + (nu[2] / spatial_cutoff) ** 2)
        lowpass.append(math.exp(-0.5 * d2))
    weights = [1.0 - lowpass[0]]
    weights += [lowpass[k - 1] - lowpass[k] for k in range(1, len(windows))]
    return weights + [lowpass[-1]]


def blend_by_dft_loop(branches: list[np.ndarray], windows, temporal_cutoff, spatial_cutoff) -> np.ndarray:
    """Σ_k ℱ⁻¹(W_k·ℱ(x_k)) with ℱ the 3-D DFT written out frequency by frequency. branches: [F, h, w, D] each."""
    frames, height, width, _ = branches[0].shape
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    out = np.zeros(branches[0].shape, dtype=complex)
    for kt in range(frames):
        for ky in range(height):
            for kx in range(width):
                wave = np.exp(2j * np.pi * (kt * t / frames + ky * y / height + kx * x / width))[..., None]
                nu = (bin_frequency(kt, frames), bin_frequency(ky, height), bin_frequency(kx, width))
                weights = band_weights(nu, windows, temporal_cutoff, spatial_cutoff)
                coeff = sum(w * (b * wave.conj()).sum(axis=(0, 1, 2)) for w, b in zip(weights, branches))  # [D]
                out += coeff * wave / (frames * height * width)
    assert np.abs(out.imag).max() < 1e-9
    return out.real


def window_of(frame: int, frames: int, window: int) -> range:
    """The local window of a query frame: `window` frames centred on it, moved inside the video at its ends."""
    w = min(window, frames)
    lo = frame - window // 2
    if lo < 0:
        lo = 0
    if lo + w > frames:
        lo = frames - w
    return range(lo, lo + w)


def masked_attention(q, k, v, text: int, frame_tokens: int, window: int | None) -> np.ndarray:
    """softmax(q·kᵀ/√d)·v query by query, the keys allowed one by one (window None: all). q, k, v: [b, heads, n, hd]
    float64 → [b, heads, n, hd]."""
    n = q.shape[2]
    frames = (n - text) // frame_tokens
    out = np.zeros(q.shape)
    for i in range(n):
        allowed = []
        for j in range(n):
            if window is None or i < text or j < text:
                allowed.append(j)
            elif (j - text) // frame_tokens in window_of((i - text) // frame_tokens, frames, window):
                allowed.append(j)
        scores = np.einsum("bhd,bhjd->bhj", q[:, :, i], k[:, :, allowed]) / math.sqrt(q.shape[3])
        p = np.exp(scores - scores.max(axis=2, keepdims=True))
        p /= p.sum(axis=2, keepdims=True)
        out[:, :, i] = np.einsum("bhj,bhjd->bhd", p, v[:, :, allowed])
    return out


def freelong_by_hand(q, k, v, text, height, width, windows, temporal_cutoff, spatial_cutoff) -> np.ndarray:
    """The op written out: text rows global; video rows the DFT-loop blend of the masked attentions."""
    b, heads, n, hd = q.shape
    frames = (n - text) // (height * width)
    branches = [masked_attention(q, k, v, text, height * width, w) for w in windows]
    glob = masked_attention(q, k, v, text, height * width, None)

    def grid(x):  # [b, heads, text + N, hd] → [F, h, w, b·heads·hd]
        video = x[:, :, text:].reshape(b, heads, frames, height, width, hd)
        return video.transpose(2, 3, 4, 0, 1, 5).reshape(frames, height, width, -1)

    blended = blend_by_dft_loop([grid(x) for x in [*branches, glob]], windows, temporal_cutoff, spatial_cutoff)
    video = blended.reshape(frames, height, width, b, heads, hd).transpose(3, 4, 0, 1, 2, 5).reshape(b, heads, -1, hd)
    return np.concatenate([glob[:, :, :text], video], axis=2)


# ---------------------------------------------------------------------------------------------------- the maths
@pytest.mark.parametrize("shape, windows, spatial", [
    ((5, 3, 4, 2), (2,), 0.25),  # odd frames, even width (a Nyquist bin)
    ((6, 2, 3, 3), (2, 3, 5), 0.4),  # FreeLong++: three local windows and the global branch
    ((7, 1, 2, 2), (3,), None),  # temporal bands only
])
def test_blend_matches_a_per_frequency_dft_loop(shape, windows, spatial):
    gen = torch.Generator().manual_seed(0)
    branches = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(len(windows) + 1)]
    cutoffs = [0.3 * windows[0] / w for w in windows]
    got = spectral_blend([b[None] for b in branches], cutoffs, spatial)[0]  # a leading batch dimension
    want = blend_by_dft_loop([b.numpy() for b in branches], windows, 0.3, spatial)
    assert np.abs(got.numpy() - want).max() < 1e-5
    assert spectral_blend(branches[:1] * (len(windows) + 1), cutoffs, spatial) is branches[0]  # equal branches


@pytest.mark.parametrize("text, height, width, windows", [(0, 1, 2, (3,)), (3, 2, 1, (2, 4)), (2, 1, 1, (6,)),
                                                       (1, 1, 2, (3, 8))])  # a band past the video: global
def test_attention_op_matches_written_out_masked_attention(text, height, width, windows):
    gen = torch.Generator().manual_seed(1)
    frames = 6
    q, k, v = (torch.randn(2, 2, text + frames * height * width, 4, generator=gen) for _ in range(3))
    got = spectral_attention(q, k, v, text, height, width, list(windows), 0.35, 0.5, "sdpa")
    want = freelong_by_hand(*(x.double().numpy() for x in (q, k, v)), text, height, width, windows, 0.35, 0.5)
    assert np.abs(got.double().numpy() - want).max() < 1e-5
    if windows[0] < frames:  # the blend is not the global attention alone (the oracle could see a no-op)
        assert np.abs(want - masked_attention(*(x.double().numpy() for x in (q, k, v)), text, 1, None)).max() > 1e-3


def test_attention_op_output_has_the_layout_its_shape_function_promises():
    """Inductor asserts on the GPU that a custom op's output strides are those of its fake: contiguous, also for
    the transposed [b, heads, N, hd] views the processors pass."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 7, 2, 4, generator=gen).transpose(1, 2) for _ in range(3))  # [1, heads, 7, hd] views
    for windows in ([1], [7]):  # a blend, and a window of the whole video (the global attention as it came)
        real = spectral_attention(q, k, v, 0, 1, 1, windows, 0.25, 0.25, "sdpa")
        with FakeTensorMode() as mode:
            fake = spectral_attention(*(mode.from_tensor(x) for x in (q, k, v)), 0, 1, 1, windows, 0.25, 0.25, "sdpa")
        assert real.shape == fake.shape and real.stride() == fake.stride()


# ---------------------------------------------------------------------------------------------------- one layer
@pytest.fixture
def cog(tiny):
    """The tiny CogVideoX of the session (tests/conftest.py): 4×4 tokens per latent frame, 16 text tokens."""
    return tiny


@pytest.fixture(scope="module")
def wan():
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    cfg.height, cfg.width = 32, 32
    backbone = build(cfg, "backbone", "tiny-wan")
    backbone.load()
    backbone.encode_prompts(["a cat"], "")
    return backbone


def test_cogvideox_layer_matches_the_layer_written_out(cog):
    attn = cog.pipe.transformer.transformer_blocks[0].attn1
    gen = torch.Generator().manual_seed(2)
    frames, text = 5, 16
    video = torch.randn(1, frames * 4, attn.to_q.in_features, generator=gen)
    words = torch.randn(1, text, attn.to_q.in_features, generator=gen)
    plan = SpectralPlan((2,), 0.3, 0.25, 2, 2, text=text)
    with torch.no_grad():
        got_video, got_text = CogVideoXSpectralProcessor(plan)(attn, video, words)
        tokens = torch.cat([words, video], dim=1)  # [1, text + N, D]
        heads = lambda x: x.unflatten(2, (attn.heads, -1)).transpose(1, 2)  # noqa: E731  [1, heads, n, hd]
        q, k, v = attn.norm_q(heads(attn.to_q(tokens))), attn.norm_k(heads(attn.to_k(tokens))), heads(attn.to_v(tokens))
        mixed = freelong_by_hand(*(x.double().numpy() for x in (q, k, v)), text, 2, 2, (2,), 0.3, 0.25)
        mixed = torch.from_numpy(mixed).float().transpose(1, 2).flatten(2)  # [1, text + N, D]
        want = attn.to_out[0](mixed)
        assert (got_video - want[:, text:]).abs().max() < 1e-5 and (got_text - want[:, :text]).abs().max() < 1e-5
        # a window holding the whole video: the stock processor's layer
        whole = CogVideoXSpectralProcessor(SpectralPlan((frames,), 0.3, 0.25, 2, 2, text=text))(attn, video, words)
        stock = type(attn.processor)()(attn, video, words)
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(whole, stock))


def test_wan_layer_with_rope_matches_the_layer_written_out(wan):
    from diffusers.models.embeddings import apply_rotary_emb

    transformer = wan.pipe.transformer
    attn = transformer.blocks[0].attn1
    gen = torch.Generator().manual_seed(3)
    frames = 5
    rope = transformer.rope(torch.zeros(1, 4, frames, 4, 4))  # cos, sin: [1, F·2·2, 1, hd]
    hidden = torch.randn(1, frames * 4, attn.to_q.in_features, generator=gen)
    with torch.no_grad():
        got = WanSpectralProcessor(SpectralPlan((3,), 0.3, None, 2, 2))(attn, hidden, rotary_emb=rope)
        split = lambda x: x.unflatten(2, (attn.heads, -1))  # noqa: E731  [1, N, heads, hd]
        cos, sin = (table[0, :, 0] for table in rope)
        turn = lambda x: apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)  # noqa: E731
        q, k = turn(split(attn.norm_q(attn.to_q(hidden)))), turn(split(attn.norm_k(attn.to_k(hidden))))
        v = split(attn.to_v(hidden))
        mixed = freelong_by_hand(*(x.transpose(1, 2).double().numpy() for x in (q, k, v)), 0, 2, 2, (3,), 0.3, None)
        want = attn.to_out[0](torch.from_numpy(mixed).float().transpose(1, 2).flatten(2))
        assert (got - want).abs().max() < 1e-5
        whole = WanSpectralProcessor(SpectralPlan((frames,), 0.3, None, 2, 2))(attn, hidden, rotary_emb=rope)
        stock = type(attn.processor)()(attn, hidden, rotary_emb=rope)
    assert (whole - stock).abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------------- sampling
def _run(backbone, length: int, prompt: int = 0) -> SamplingRun:
    noise = torch.randn((1, length, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: prompt,
                       generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", ["cog", "wan"])
def test_a_video_in_one_window_is_direct_sampling_and_a_shorter_window_is_not(family, request):
    backbone = request.getfixturevalue(family)
    length = backbone.window  # num_windows=1: the local window holds the whole video
    direct = DirectSampler(num_steps=2, guidance_scale=5.0).sample(_run(backbone, length))
    freelong = FreeLongSampler(num_steps=2, guidance_scale=5.0).sample(_run(backbone, length))
    assert (freelong - direct).abs().max() <= 1e-5
    shorter = FreeLongSampler(num_steps=2, guidance_scale=5.0, window=3).sample(_run(backbone, length))
    assert (shorter - direct).abs().max() > 1e-4
    assert type(backbone.pipe.transformer.attn_processors.popitem()[1]).__name__.endswith("Processor2_0") or \
        family == "wan"  # the stock processors are back after sampling


def test_sampling_is_direct_sampling_through_the_layer_of_its_options(cog):
    """FreeLong(++) sampling is direct sampling with every attention layer replaced by the spectral blend layer of the
    sampler's options (that layer is pinned to its written-out form above): local window 3, a FreeLong++ band of 5,
    d_t = 0.3 and d_s = 0.5 (cutoffs that differ, so that neither can stand in for the other), 4×4 tokens a frame
    and CogVideoX's 16 text tokens."""
    length = cog.window
    ours = FreeLongSampler(num_steps=1, guidance_scale=5.0, window=3, multi_band=(5,), temporal_cutoff=0.3,
                           spatial_cutoff=0.5).sample(_run(cog, length))
    model = cog.pipe.transformer
    stock = dict(model.attn_processors)
    model.set_attn_processor(CogVideoXSpectralProcessor(SpectralPlan((3, 5), 0.3, 0.5, 4, 4, text=16)))
    try:
        want = DirectSampler(num_steps=1, guidance_scale=5.0).sample(_run(cog, length))
    finally:
        model.set_attn_processor(stock)
    assert (ours - want).abs().max() <= 1e-5


def test_resume_from_a_checkpoint_is_bit_identical(cog, tmp_path):
    make = lambda: FreeLongSampler(num_steps=4, eta=0.5, window=5, multi_band=(9,))  # noqa: E731  FreeLong++, noise
    reference = make().sample(_run(cog, 17))
    ckpt = checkpoint_after_two_steps(make(), _run(cog, 17), tmp_path / "checkpoint.safetensors", "freelong")
    fresh = _run(cog, 17)
    fresh.generator.set_state(ckpt.generator_state)
    assert torch.equal(make().sample(fresh, ckpt.state), reference)
    assert not torch.equal(make().sample(_run(cog, 17), load_checkpoint(tmp_path / "checkpoint.safetensors").state),
                           reference)  # the generator's state matters (η > 0): the comparison can fail


class _Reversed(Units):
    """Units of work run last first, each on its own, as the ranks of `gpus=N` run theirs (a unit's result must not
    depend on what ran before it in the same process)."""

    def map(self, fn, sizes, kind="predict", wait=True):
        return [fn(k) for k in reversed(range(len(sizes)))][::-1]


def test_units_run_out_of_order_give_the_same_bytes(cog):
    cog.micro_batch = 1  # unconditional and conditional rows: two units
    try:
        plain = FreeLongSampler(num_steps=2, window=5).sample(_run(cog, 17))
        cog.units = _Reversed()
        assert torch.equal(FreeLongSampler(num_steps=2, window=5).sample(_run(cog, 17)), plain)
    finally:
        cog.micro_batch, cog.units = 64, Units()


def test_compiled_blocks_keep_one_graph_across_layers_and_steps():
    """Compiled blocks with FreeLong installed anew at every step: the op is opaque and one processor object serves
    every layer and step, so Dynamo traces once per call shape (the first block's input has other strides: 2
    graphs) and never again, and the result is the eager one."""
    from torch._dynamo.testing import CompileCounter

    from conftest import make_tiny

    den = make_tiny(prompts=("a cat",), height=16, width=32, **{"architecture.transformer.num_layers": 3})
    counter = CompileCounter()
    torch._dynamo.reset()
    try:
        for block in den._blocks():
            block.compile(backend=counter, dynamic=False)
        x = torch.randn(1, 9, *den.latent_shape, generator=torch.Generator().manual_seed(0))
        compiled = []
        for _ in range(2):  # two steps: the context installs the processors again
            with den.spectral_attention(9, (3, 5), 0.25, 0.25):
                compiled.append(den.predict(x, 500, [0], 6.0).x0)
        assert counter.frame_count <= 2, counter.frame_count
        for block in den._blocks():
            block._compiled_call_impl = None
        with den.spectral_attention(9, (3, 5), 0.25, 0.25):
            eager = den.predict(x, 500, [0], 6.0).x0
        assert all((c - eager).abs().max() <= 1e-5 for c in compiled)
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("options, match", [
    ({"multi_band": [9, 5]}, r"sampler.multi_band=\[9, 5\] must be strictly increasing"),
    ({"multi_band": [4]}, r"must hold windows longer than sampler.window=5"),
    ({"multi_band": "26"}, r"must be a list of whole window lengths"),
    ({"temporal_cutoff": 0}, r"sampler.temporal_cutoff=0 must be a finite number > 0"),
])
def test_bad_options_are_one_line(options, match):
    with pytest.raises(UsageError, match=match):
        FreeLongSampler(window=5, **options)


def test_refusals_where_it_cannot_run(cog, wan):
    with pytest.raises(UsageError, match=r"multi_band window 17 is not shorter than the video's 17"):
        FreeLongSampler(num_steps=1, window=5, multi_band=[17]).begin(_run(cog, 17))
    with pytest.raises(UsageError, match=r"multi_band=\[13\] must hold windows longer than the local window 13"):
        FreeLongSampler(num_steps=1, multi_band=[13]).begin(_run(cog, 17))
    with pytest.raises(UsageError, match="RoPE table covers 1024: ask for at most 1024 latent frames"):
        with wan.spectral_attention(1025, (21,), 0.25, 0.25):
            pass
    with cog.anchor_attention(0.5), pytest.raises(UsageError, match="cannot run together with cross-shot attention or ABAM: set shots.cross_attention=0"):
        with cog.spectral_attention(17, (5,), 0.25, 0.25):
            pass

    class Plain(Denoiser):
        def schedule(self, num_steps):
            return None

        def predict(self, x_t, t, prompt_ids, guidance_scale):
            return None

    with pytest.raises(UsageError, match="the Plain backbone has no spectral blend attention"):
        Plain().spectral_attention(17, (5,), 0.25, 0.25)


def test_shipped_config_builds_the_sampler():
    cfg = OmegaConf.load(Path(REPO) / "conf" / "sampler" / "freelong.yaml")
    cfg.guidance_scale, cfg.stride = 6.0, 4  # interpolated from the backbone at compose time
    sampler = build(cfg, "sampler", "freelong")
    assert isinstance(sampler, FreeLongSampler) and sampler.windows(13) == (13,)
    assert (sampler.temporal_cutoff, sampler.spatial_cutoff) == (0.25, 0.25)  # the public code's d_t, d_s


def test_a_story_of_several_events_is_refused_for_the_one_prompt_it_shows(tmp_path):
    """Found by a red-team pass: with num_windows=4 the refusal said the video had "only 1 window(s)". Direct and
    FreeLong show one prompt over the whole video whatever its length: the line says so and names the fix, for a
    story (a scenario too, before it is split) and for a multi-shot take of several shots (no cut between them)."""
    import longgen

    story = tmp_path / "story.json"
    story.write_text('{"global": "a fox", "local": ["a fox sleeps", "a fox runs", "a fox eats"]}')
    tiny = ("backbone=tiny", "backbone.height=16", "backbone.width=16")
    with pytest.raises(UsageError) as err:
        longgen.generate(*tiny, sampler="freelong", story=story, num_windows=4, run_dir=tmp_path / "a")
    line = str(err.value)
    assert line.startswith("sampler=freelong denoises the whole video as one window under one prompt") and \
        "a story of 3 local prompts cannot show each of them; use a windowed sampler (e.g. sampler=syncos" in line
    assert "window(s)" not in line and "\n" not in line
    with pytest.raises(UsageError, match="sampler=direct denoises .*: a story of 3 local prompts cannot show each"):
        longgen.generate(*tiny, sampler="direct", scenario=tmp_path / "unread.txt", num_prompts=3,  # never read
                         run_dir=tmp_path / "b")
    shots = tmp_path / "shots.json"
    shots.write_text('{"characters": {"1": "a man"}, "shots": ["Character 1 waves.", "[SHOT CUT] Character 1 sits.", '
                     '"Character 1 runs."]}')
    with pytest.raises(UsageError, match="sampler=direct denoises .*: shots 2–3 have no cut between them, so they "
                                         "share one take that would show only one of them; start each shot with"):
        longgen.generate(*tiny, sampler="direct", story=shots, run_dir=tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shots.json", "story.json"]


def test_several_events_global_shows_the_storys_global_prompt_as_a_one_prompt_run_would(tmp_path):
    """sampler.several_events=global (set by the comparison's direct-4x and freelong-4x) runs a one-prompt sampler on
    a story of several events under the story's global prompt. Oracle: the same seed with prompt=<the global prompt>
    gives the same latents; story.json still holds the story as given; the manifest records the option. In extend
    the same option is taken, and the samplers whose attention mixes a call's rows are refused under the per-frame
    context in one line (they once failed after the run directory was written)."""
    import longgen
    from safetensors.torch import load_file

    story = tmp_path / "story.json"
    story.write_text('{"global": "a fox in snow", "local": ["a fox in snow sleeps", "a fox in snow runs", '
                     '"a fox in snow eats"]}')
    tiny = ("backbone=tiny", "backbone.height=16", "backbone.width=16", "sampler.num_steps=2")
    shown = longgen.generate(*tiny, "sampler.several_events=global", sampler="direct", story=story,
                             run_dir=tmp_path / "story")
    alone = longgen.generate(*tiny, sampler="direct", prompt="a fox in snow", run_dir=tmp_path / "prompt")
    a, b = (load_file(str(r.run_dir / "latents.safetensors"))["latents"] for r in (shown, alone))
    assert torch.equal(a, b)
    assert json.loads((shown.run_dir / "story.json").read_text())["local"][1] == "a fox in snow runs"
    assert shown.manifest["sampler"]["several_events"] == "global"
    assert "the story's global prompt, not its 3 local prompts" in (shown.run_dir / "generate.log").read_text()
    video = alone.run_dir / "video.mp4"
    with pytest.raises(UsageError, match=r"^sampler=direct denoises .* or sampler.several_events=global"):
        longgen.extend(video, *tiny, sampler="direct", story=story, num_windows=4, run_dir=tmp_path / "e1")
    for sampler, shared in (("freelong", "FreeLong's spectral blend attention"),
                            ("ditctrl", "DiTCtrl's KV sharing")):
        with pytest.raises(UsageError, match=rf"^context=auto \(per-frame on .*\) splits model calls by noise level, "
                                             rf"which {shared}.* cannot run across: pass context=replace$"):
            longgen.extend(video, *tiny, "sampler.kv_layers=[0,null]" if sampler == "ditctrl" else "sampler.window=5",
                           sampler=sampler, prompt="a fox", run_dir=tmp_path / f"x-{sampler}")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("e1", "x-"))]

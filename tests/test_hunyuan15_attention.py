"""The attention processors of longgen's samplers on HunyuanVideo 1.5's joint attention (video tokens first, then
text tokens under a padding mask; longgen/backbones/attention.py `hunyuan_qkv`, `valid_text_first`), on the tiny
random model (conf/backbone/tiny-hunyuan15.yaml), pinned to written-out oracles:

- FreeLong (spectral_attention.py `HunyuanSpectralProcessor`): one layer, two rows whose valid text tokens differ
  (one not a prefix), against the layer written out — projections, norms and RoPE by hand, the attention query by
  query over the keys an explicit mask allows (valid text keys, the video keys of the local window; a padded text
  query none), the blend by a per-frequency DFT loop (tests/test_freelong.py); with a window holding the whole
  video, the stock diffusers processor's layer; sampling a video that fits one window is direct sampling, a shorter
  window is not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from longgen.backbones.spectral_attention import HunyuanSpectralProcessor, SpectralPlan
from longgen.build import build
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.freelong import FreeLongSampler

from conftest import REPO
from test_freelong import blend_by_dft_loop, window_of

PROMPTS = ("a red fox in snow", 'a sign that says "OPEN" in the rain')
FRAMES, ROWS, COLS = 5, 2, 2  # one layer's video: 5 frames of 2×2 tokens
#: the text tokens' padding mask of two rows: 4 valid, and 2 valid that are not a prefix
TEXT_MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0]], dtype=torch.bool)


@pytest.fixture(scope="module")
def hy():
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-hunyuan15.yaml")
    cfg.height = cfg.width = 16
    backbone = build(cfg, "backbone", "tiny-hunyuan15")
    backbone.load()
    backbone.encode_prompts(list(PROMPTS), "blurry")
    return backbone


@pytest.fixture(scope="module")
def layer(hy):
    """The first joint attention layer, its inputs (two rows), RoPE table and the q, k, v written out by hand:
    [b, N + S, heads, hd] each, video first."""
    transformer = hy.pipe.transformer
    attn = transformer.transformer_blocks[0].attn
    gen = torch.Generator().manual_seed(5)
    dim = attn.to_q.in_features
    video = torch.randn(2, FRAMES * ROWS * COLS, dim, generator=gen)
    text = torch.randn(2, TEXT_MASK.shape[1], dim, generator=gen)
    rope = transformer.rope(torch.zeros(1, 1, FRAMES, ROWS, COLS))  # cos, sin: [N, hd]
    cos, sin = rope
    with torch.no_grad():
        def rotate(x):  # interleaved pairs (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin), [b, N, heads, hd]
            pairs = x.unflatten(-1, (-1, 2))
            turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
            return x * cos[None, :, None] + turned * sin[None, :, None]

        split = lambda x: x.unflatten(2, (attn.heads, -1))  # noqa: E731  [b, n, heads, hd]
        q = torch.cat([rotate(attn.norm_q(split(attn.to_q(video)))), attn.norm_added_q(split(attn.add_q_proj(text)))], 1)
        k = torch.cat([rotate(attn.norm_k(split(attn.to_k(video)))), attn.norm_added_k(split(attn.add_k_proj(text)))], 1)
        v = torch.cat([split(attn.to_v(video)), split(attn.add_v_proj(text))], 1)
    return attn, video, text, rope, (q, k, v)


# ---------------------------------------------------------------------------------------------------- oracles
def hunyuan_attention(q, k, v, text_mask, frame_tokens: int, window: int | None) -> np.ndarray:
    """HunyuanVideo 1.5's masked joint attention query by query, the keys allowed one by one: a padded text query
    none (output 0), any other the valid text keys and the video keys of its local window (window None: all; a text
    query sees every video key). q, k, v: [b, heads, N + S, hd] float64, video first; text_mask [b, S] → same."""
    b, heads, n, hd = q.shape
    n_video = n - text_mask.shape[1]
    frames = n_video // frame_tokens
    out = np.zeros(q.shape)
    for r in range(b):
        for i in range(n):
            if i >= n_video and not text_mask[r, i - n_video]:
                continue  # a padded text query: every key masked
            allowed = []
            for j in range(n):
                if j >= n_video:
                    if text_mask[r, j - n_video]:
                        allowed.append(j)
                elif window is None or i >= n_video or j // frame_tokens in window_of(i // frame_tokens, frames, window):
                    allowed.append(j)
            scores = np.einsum("hd,hjd->hj", q[r, :, i], k[r][:, allowed]) / math.sqrt(hd)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[r, :, i] = np.einsum("hj,hjd->hd", p, v[r][:, allowed])
    return out


def hunyuan_freelong_by_hand(q, k, v, text_mask, windows, temporal_cutoff, spatial_cutoff) -> np.ndarray:
    """FreeLong on the masked joint attention, written out: text rows global; video rows the DFT-loop blend of the
    masked local and global attentions, row by row. q, k, v: [b, heads, N + S, hd] float64 → same."""
    b, heads, n, hd = q.shape
    n_video = FRAMES * ROWS * COLS
    glob = hunyuan_attention(q, k, v, text_mask, ROWS * COLS, None)
    branches = [hunyuan_attention(q, k, v, text_mask, ROWS * COLS, w) for w in windows]
    out = glob.copy()
    for r in range(b):
        def grid(x):  # [b, heads, N + S, hd] → row r's video [F, h, w, heads·hd]
            return x[r, :, :n_video].reshape(heads, FRAMES, ROWS, COLS, hd).transpose(1, 2, 3, 0, 4).reshape(
                FRAMES, ROWS, COLS, -1)

        blended = blend_by_dft_loop([grid(x) for x in [*branches, glob]], windows, temporal_cutoff, spatial_cutoff)
        out[r, :, :n_video] = blended.reshape(FRAMES, ROWS, COLS, heads, hd).transpose(3, 0, 1, 2, 4).reshape(
            heads, n_video, hd)
    return out


def layer_out(attn, mixed: np.ndarray, n_text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The written-out attention [b, heads, N + S, hd] through the layer's two output projections."""
    out = torch.from_numpy(mixed).float().transpose(1, 2).flatten(2)  # [b, N + S, D]
    return attn.to_out[0](out[:, :-n_text]), attn.to_add_out(out[:, -n_text:])


def close(got, want, tol: float) -> bool:
    return all((a - b).abs().max().item() < tol for a, b in zip(got, want))


# ---------------------------------------------------------------------------------------------------- FreeLong
def test_freelong_layer_matches_the_layer_written_out_and_the_stock_layer_in_one_window(layer):
    attn, video, text, rope, qkv = layer
    plan = SpectralPlan((2,), 0.3, 0.25, ROWS, COLS)
    with torch.no_grad():
        got = HunyuanSpectralProcessor(plan)(attn, video, text, TEXT_MASK, rope)
        hand = [x.transpose(1, 2).double().numpy() for x in qkv]  # [b, heads, N + S, hd]
        mixed = hunyuan_freelong_by_hand(*hand, TEXT_MASK.numpy(), (2,), 0.3, 0.25)
        assert close(got, layer_out(attn, mixed, text.shape[1]), 1e-5)
        plain = layer_out(attn, hunyuan_attention(*hand, TEXT_MASK.numpy(), ROWS * COLS, None), text.shape[1])
        assert not close(got, plain, 1e-3)  # the blend changed the video (the oracle could see a no-op)
        whole = HunyuanSpectralProcessor(SpectralPlan((FRAMES,), 0.3, 0.25, ROWS, COLS))(attn, video, text,
                                                                                         TEXT_MASK, rope)
        stock = type(attn.processor)()(attn, video, text, TEXT_MASK, rope)
    assert close(whole, stock, 1e-6) and close(stock, plain, 1e-5)


def _run(backbone, length: int, prompt: int = 1) -> SamplingRun:
    noise = torch.randn((1, length, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: prompt,
                       generator=torch.Generator().manual_seed(7))


def test_freelong_in_one_window_is_direct_sampling_and_a_shorter_window_is_not(hy):
    length = hy.window  # the local window holds the whole video
    direct = DirectSampler(num_steps=2, guidance_scale=6.0).sample(_run(hy, length))
    freelong = FreeLongSampler(num_steps=2, guidance_scale=6.0).sample(_run(hy, length))
    assert (freelong - direct).abs().max() <= 1e-5
    shorter = FreeLongSampler(num_steps=2, guidance_scale=6.0, window=9).sample(_run(hy, length))
    assert (shorter - direct).abs().max() > 1e-4
    assert {type(p).__name__ for p in hy.pipe.transformer.attn_processors.values()} == {
        "AttnProcessor2_0", "HunyuanVideo15AttnProcessor2_0"}  # the stock processors are back

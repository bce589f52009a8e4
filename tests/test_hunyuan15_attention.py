"""The attention processors of longgen's samplers on HunyuanVideo 1.5's joint attention (video tokens first, then
text tokens under a padding mask; longgen/backbones/attention.py `hunyuan_qkv`), on the tiny
random model (conf/backbone/tiny-hunyuan15.yaml), pinned to written-out oracles:

- FreeLong (spectral_attention.py `HunyuanSpectralProcessor`): one layer, two rows whose valid text tokens differ
  (one not a prefix), against the layer written out — projections, norms and RoPE by hand, the attention query by
  query over the keys an explicit mask allows (valid text keys, the video keys of the local window; a padded text
  query none), the blend by a per-frequency DFT loop (tests/test_freelong.py); with a window holding the whole
  video, the stock diffusers processor's layer; sampling a video that fits one window is direct sampling, a shorter
  window is not.
- DiTCtrl (kv_sharing.py `HunyuanKVProcessor`): every joint attention call of a capture and a share recorded; the
  layer outside the span is the target's own masked attention written out, the sharing layer the target's queries
  against the source's keys/values of the same guidance branch under the *source's* text mask (its padded text
  keys masked, the target's padded text queries 0); a clip sharing with itself is its plain prediction, with the
  other's keys it is not; one clip is direct sampling; resume after step 2 is bit-identical; mask-guided sharing:
  each conditional row's subject mask against the map written out at the subject's text positions a walk over
  that row's own ByT5 and Qwen tokens finds (two rows whose valid lengths differ), the sharing layer against
  the masked attention written out; a subject past a prompt's tokens is one line.
- ABAM (anchor_attention.py `HunyuanAnchorProcessor`): Eq. 10 at the stock processor's attention call (the video
  keys/values — the first N tokens — of every row blended with row 0's, the text keys/values each row's own), on a
  predict whose rows' valid text differs; λ = 1 is plain attention; the anchor row is untouched (GLC with ABAM runs:
  tests/test_hunyuan15.py).
- cross-shot attention (shot_attention.py `HunyuanShotProcessor`): a capture of a reference window, then a shot's
  rows; each of its layers against attention written out over its own video keys, the reference's kept video
  tokens (⌈r·N⌉ at ⌊j·N/n⌋, keys after RoPE) of its own guidance branch and its valid text keys; with the layout
  off, the stock processors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0
from omegaconf import OmegaConf

from longgen.backbones.spectral_attention import HunyuanSpectralProcessor, SpectralPlan
from longgen.build import build
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.ditctrl import DiTCtrlSampler
from longgen.samplers.freelong import FreeLongSampler

from conftest import REPO
from test_checkpoint import checkpoint_after_two_steps
from test_ditctrl import SUBJECT, loop_mask
from test_freelong import blend_by_dft_loop, window_of
from test_hunyuan15 import stock_processors

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
    return attn, video, text, rope, hand_qkv(attn, video, text, rope)


@torch.no_grad()
def hand_qkv(attn, video, text, rope) -> tuple[np.ndarray, ...]:
    """q, k, v of a joint attention layer written out: [b, N + S, heads, hd] float64 numpy, heads moved to dim 1
    → [b, heads, N + S, hd]. Video: projection, per-head RMS norm, RoPE on interleaved pairs; text: the added
    projections and norms."""
    cos, sin = rope  # [N, hd]

    def rotate(x):  # (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin) per pair, [b, N, heads, hd]
        pairs = x.unflatten(-1, (-1, 2))
        turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * cos[None, :, None] + turned * sin[None, :, None]

    split = lambda x: x.unflatten(2, (attn.heads, -1))  # noqa: E731  [b, n, heads, hd]
    q = torch.cat([rotate(attn.norm_q(split(attn.to_q(video)))), attn.norm_added_q(split(attn.add_q_proj(text)))], 1)
    k = torch.cat([rotate(attn.norm_k(split(attn.to_k(video)))), attn.norm_added_k(split(attn.add_k_proj(text)))], 1)
    v = torch.cat([split(attn.to_v(video)), split(attn.add_v_proj(text))], 1)
    return tuple(x.transpose(1, 2).double().numpy() for x in (q, k, v))


# ---------------------------------------------------------------------------------------------------- oracles
def hunyuan_attention(q, k, v, text_mask, frame_tokens: int, window: int | None, key_mask=None) -> np.ndarray:
    """HunyuanVideo 1.5's masked joint attention query by query, the keys allowed one by one: a padded text query
    none (output 0), any other the valid text keys and the video keys of its local window (window None: all; a text
    query sees every video key). q, k, v: [b, heads, N + S, hd] float64, video first; text_mask [b, S] the queries'
    valid text, key_mask [b, S] the keys' (default: text_mask) → same."""
    key_mask = text_mask if key_mask is None else key_mask
    b, heads, n, hd = q.shape
    n_video = n - text_mask.shape[1]
    frames = n_video // frame_tokens
    out = np.zeros(q.shape)
    for r in range(b):
        allowed = np.zeros((n, n), dtype=bool)  # [query, key]
        allowed[:, n_video:] = key_mask[r]  # the valid text keys
        allowed[n_video:, :n_video] = True  # a text query: every video key
        for i in range(n_video):  # a video query: the video keys of the frames of its window
            frames_seen = range(frames) if window is None else window_of(i // frame_tokens, frames, window)
            for f in frames_seen:
                allowed[i, f * frame_tokens : (f + 1) * frame_tokens] = True
        allowed[n_video:][~text_mask[r]] = False  # a padded text query: none
        for i in np.nonzero(allowed.any(axis=1))[0]:
            keys = np.nonzero(allowed[i])[0]
            scores = np.einsum("hd,hjd->hj", q[r, :, i], k[r][:, keys]) / math.sqrt(hd)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[r, :, i] = np.einsum("hj,hjd->hd", p, v[r][:, keys])
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
        hand = qkv  # [b, heads, N + S, hd]
        mixed = hunyuan_freelong_by_hand(*hand, TEXT_MASK.numpy(), (2,), 0.3, 0.25)
        assert close(got, layer_out(attn, mixed, text.shape[1]), 1e-5)
        plain = layer_out(attn, hunyuan_attention(*hand, TEXT_MASK.numpy(), ROWS * COLS, None), text.shape[1])
        assert not close(got, plain, 1e-3)  # the blend changed the video (the oracle could see a no-op)
        whole = HunyuanSpectralProcessor(SpectralPlan((FRAMES,), 0.3, 0.25, ROWS, COLS))(attn, video, text,
                                                                                         TEXT_MASK, rope)
        stock = HunyuanVideo15AttnProcessor2_0()(attn, video, text, TEXT_MASK, rope)
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
        "AttnProcessor2_0", "HunyuanPrefixAttention"}  # the processors installed at load are back


# ---------------------------------------------------------------------------------------------------- DiTCtrl
def _record(transformer) -> tuple[list, list]:
    """Every joint attention call from now on: (layer, inputs by name, (video out, text out))."""
    calls, handles = [], []
    for layer, block in enumerate(transformer.transformer_blocks):
        def hook(module, args, kwargs, out, layer=layer):
            calls.append((layer, dict(kwargs), out))
        handles.append(block.attn.register_forward_hook(hook, with_kwargs=True))
    return calls, handles


def _written_out(attn, target: dict, source: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output for the target's queries against the source's keys/values and text mask, written out."""
    q, _, _ = hand_qkv(attn, target["hidden_states"], target["encoder_hidden_states"], target["image_rotary_emb"])
    _, k, v = hand_qkv(attn, source["hidden_states"], source["encoder_hidden_states"], source["image_rotary_emb"])
    own, theirs = (kw["attention_mask"].bool().numpy() for kw in (target, source))
    mixed = hunyuan_attention(q, k, v, own, 1, None, key_mask=theirs)  # 1 token per frame at 16×16
    return layer_out(attn, mixed, own.shape[1])


@torch.no_grad()
def test_ditctrl_sharing_layer_is_the_target_against_the_sources_keys_under_its_text_mask(hy):
    """Layer 1 shares (span [1, 2)), layer 0 does not; each predict is one call of rows [unconditional,
    conditional]: capture (prompt 0) then share (prompt 1, whose valid text differs: a quoted glyph text)."""
    g = torch.Generator().manual_seed(3)
    x_src, x_tgt = (torch.randn(1, hy.window, *hy.latent_shape, generator=g) for _ in range(2))
    t = hy.schedule(4).step(1).t
    blocks = hy.pipe.transformer.transformer_blocks
    calls, handles = _record(hy.pipe.transformer)
    try:
        with hy.kv_sharing((1, 2), (), 0.3) as kv:
            with kv.capturing():
                hy.predict(x_src, t, [0], 6.0)
            with kv.sharing([0]):
                hy.predict(x_tgt, t, [1], 6.0)
    finally:
        for h in handles:
            h.remove()
    assert [layer for layer, _, _ in calls] == [0, 1, 0, 1]
    (_, _, _), (_, source, _), (_, plain, plain_out), (_, target, shared_out) = calls
    assert close(plain_out, _written_out(blocks[0].attn, plain, plain), 1e-5)  # its own keys
    assert close(shared_out, _written_out(blocks[1].attn, target, source), 1e-5)  # the source's
    own = _written_out(blocks[1].attn, target, target)
    assert not close(shared_out, own, 1e-3)  # sharing changed the layer (the oracle could see a no-op)
    masks = [kw["attention_mask"].bool() for kw in (source, target)]
    assert not torch.equal(masks[0][1], masks[1][1]) and not torch.equal(masks[1][0], masks[1][1])
    assert all(type(p).__name__ != "HunyuanKVProcessor" for p in hy.pipe.transformer.attn_processors.values())


@torch.no_grad()
def test_ditctrl_clip_sharing_with_itself_is_its_plain_prediction(hy):
    x = torch.randn(2, hy.window, *hy.latent_shape, generator=torch.Generator().manual_seed(4))
    t = hy.schedule(4).step(1).t
    plain = hy.predict(x, t, [0, 1], 5.0).x0
    with hy.kv_sharing((0, 2), (), 0.3) as kv:
        with kv.capturing():
            captured = hy.predict(x, t, [0, 1], 5.0).x0
        with kv.sharing([0, 1]):
            shared = hy.predict(x, t, [0, 1], 5.0).x0
        with kv.sharing([1, 0]):  # each window with the other's keys (and text mask)
            swapped = hy.predict(x, t, [0, 1], 5.0).x0
    assert (captured - plain).abs().max() <= 1e-5 and (shared - plain).abs().max() <= 1e-5
    assert (swapped - plain).abs().max() > 1e-3


def test_ditctrl_one_clip_is_direct_sampling_and_a_subject_past_the_prompt_is_one_line(hy):
    direct = DirectSampler(num_steps=2, guidance_scale=6.0).sample(_run(hy, hy.window))
    ditctrl = DiTCtrlSampler(num_steps=2, guidance_scale=6.0, stride=8, kv_steps=(0, 2), kv_layers=(0, 2))
    assert torch.equal(ditctrl.sample(_run(hy, hy.window)), direct)
    masked = DiTCtrlSampler(num_steps=2, stride=8, kv_steps=(0, 2), kv_layers=(0, 2), subject_tokens=(1, 40))
    with pytest.raises(UsageError, match=r"sampler.subject_tokens=\[1, 40\] points past the \d+ text tokens of a "
                                         r"prompt \(HunyuanVideo 1.5's Qwen tokens\): use token positions below"):
        masked.sample(_run(hy, hy.window + 8))  # prompt 1 has 10 Qwen tokens here


def packed_positions(qwen_mask: torch.Tensor, byt5_mask: torch.Tensor, subject) -> list[int]:
    """Where a row's subject Qwen tokens sit among its text tokens, walked in diffusers' packing order: (the 729
    image tokens of text-to-video are all padding, packed after the valid tokens) the row's valid ByT5 tokens,
    then its valid Qwen tokens."""
    position, out = 0, []
    for valid in byt5_mask.bool().tolist():
        position += int(valid)
    for j, valid in enumerate(qwen_mask.bool().tolist()):
        if valid:
            if j in subject:
                out.append(position)
            position += 1
    return out


def subject_share_by_hand(q, k, text_mask, positions) -> list[float]:
    """Per video query: the mean over heads of its softmax over the keys it sees (every video key, the row's valid
    text keys) summed at the text `positions`. q, k: [1, heads, N + S, hd] float64, video first; text_mask [S]."""
    n_video = q.shape[2] - len(text_mask)
    keys = list(range(n_video)) + [n_video + j for j in range(len(text_mask)) if text_mask[j]]
    out = []
    for i in range(n_video):
        total = 0.0
        for h in range(q.shape[1]):
            scores = np.array([q[0, h, i] @ k[0, h, j] for j in keys]) / math.sqrt(q.shape[-1])
            p = np.exp(scores - scores.max())
            p /= p.sum()
            total += sum(p[keys.index(n_video + position)] for position in positions)
        out.append(total / q.shape[1])
    return out


def masked_sharing_by_hand(q, k, v, own_text, source_text, source_mask, target_mask, positions) -> np.ndarray:
    """DiTCtrl's mask-guided sharing query by query: a target query (q [1, heads, N + S, hd], video first) is
    foreground where its target mask says (a text query: where it is one of the subject positions) and attends to
    the source's (k, v) valid text keys and its video keys of the same side of the source mask; a padded text query
    gives 0."""
    n_video = len(source_mask)
    out = np.zeros(q.shape)
    for i in range(q.shape[2]):
        if i >= n_video and not own_text[i - n_video]:
            continue
        foreground = target_mask[i] if i < n_video else (i - n_video) in positions
        keys = [j for j in range(n_video) if source_mask[j] == foreground]
        keys += [n_video + j for j in range(len(source_text)) if source_text[j]]
        for h in range(q.shape[1]):
            scores = np.array([q[0, h, i] @ k[0, h, j] for j in keys]) / math.sqrt(q.shape[-1])
            p = np.exp(scores - scores.max())
            out[0, h, i] = (p / p.sum()) @ v[0, h, keys]
    return out


@torch.no_grad()
def test_ditctrl_subject_mask_at_each_rows_own_text_positions_and_the_masked_sharing_layer(hy):
    """Span [1, 2), subject Qwen tokens (1, 2), 4 video tokens a frame: capture prompt 0 (no glyph text) in one
    call of rows [unconditional, conditional], then share prompt 1 (5 ByT5 glyph tokens, more Qwen tokens), its
    conditional row first. Both conditional rows' layer-1 masks against the map written out at the positions a
    walk over the row's own tokens finds; the target's layer 1 against the masked sharing written out."""
    g = torch.Generator().manual_seed(6)
    x_src, x_tgt = (torch.randn(1, hy.window, hy.latent_shape[0], 2, 2, generator=g) for _ in range(2))
    t = hy.schedule(4).step(1).t
    blocks = hy.pipe.transformer.transformer_blocks
    calls, handles = _record(hy.pipe.transformer)
    inputs = []  # the transformer's keyword arguments per call
    handles.append(hy.pipe.transformer.register_forward_pre_hook(lambda m, a, kw: inputs.append(kw),
                                                                 with_kwargs=True))
    try:
        with hy.kv_sharing((1, 2), SUBJECT, 0.3) as kv:
            with kv.capturing():
                hy.predict(x_src, t, [0], 6.0)
            with kv.sharing([0]):
                hy.predict(x_tgt, t, [1], 6.0)
                masks = kv._source_mask[(0, 1, 0)], kv._target_mask[(0, 1, 0)]  # (model, layer, window)
    finally:
        for h in handles:
            h.remove()
    assert [layer for layer, _, _ in calls] == [0, 1] * 3
    rows = {"source": (inputs[0], calls[:2], 1), "target": (inputs[1], calls[2:4], 0)}  # (call, layers, row)
    valid = {name: [int(kw[m][row].sum()) for m in ("encoder_attention_mask", "encoder_attention_mask_2")]
             for name, (kw, _, row) in rows.items()}
    assert valid["source"][0] != valid["target"][0] and valid["source"][1] != valid["target"][1]  # Qwen, ByT5
    positions, text, qkv = {}, {}, {}
    for (name, (kw, layers, row)), got in zip(rows.items(), masks):
        positions[name] = packed_positions(kw["encoder_attention_mask"][row], kw["encoder_attention_mask_2"][row],
                                           SUBJECT)
        shares = []
        for layer, args, _ in layers:
            text[name] = args["attention_mask"][row].bool().numpy()
            qkv[name] = hand_qkv(blocks[layer].attn, args["hidden_states"][row : row + 1],
                                 args["encoder_hidden_states"][row : row + 1], args["image_rotary_emb"])
            shares.append(subject_share_by_hand(*qkv[name][:2], text[name], positions[name]))
        want = loop_mask(list(np.mean(shares, axis=0)), hy.window, 0.3)
        assert got.tolist() == want and 0 < sum(want) < len(want)  # a mask with both sides in use
    mixed = masked_sharing_by_hand(qkv["target"][0], *qkv["source"][1:], text["target"], text["source"], *masks,
                                   positions["target"])
    want = layer_out(blocks[1].attn, mixed, len(text["target"]))
    assert close(calls[3][2], want, 1e-5)


def test_ditctrl_resume_after_step_two_is_bit_identical(hy, tmp_path):
    make = lambda: DiTCtrlSampler(num_steps=4, guidance_scale=6.0, stride=8, kv_steps=(1, 3), kv_layers=(-1, None))  # noqa: E731
    length = hy.window + 8
    reference = make().sample(_run(hy, length))
    ckpt = checkpoint_after_two_steps(make(), _run(hy, length), tmp_path / "ckpt.safetensors", "ditctrl")
    fresh = _run(hy, length)
    fresh.generator.set_state(ckpt.generator_state)
    assert ckpt.state.done == 2 and torch.equal(make().sample(fresh, ckpt.state), reference)


# ---------------------------------------------------------------------------------------------------- ABAM
def test_abam_is_eq10_on_the_video_keys_at_the_stock_attention_call(hy, monkeypatch):
    """Oracle: the stock processors with Eq. 10 applied where they call attention, rows blended with row 0 (one
    group, no guidance); rows 0 and 1 have different prompts, so different text masks and text keys."""
    import diffusers.models.transformers.transformer_hunyuan_video15 as th

    x = torch.randn(3, hy.window, *hy.latent_shape, generator=torch.Generator().manual_seed(4))
    ids, t, lam = [0, 1, 0], 600.0, 0.3
    plain = hy.predict(x, t, ids, 1.0).x0
    before = dict(hy.pipe.transformer.attn_processors)
    with hy.anchor_attention(1.0):
        assert (hy.predict(x, t, ids, 1.0).x0 - plain).abs().max() <= 1e-5
    with hy.anchor_attention(lam):
        kinds = {type(p).__name__ for p in hy.pipe.transformer.attn_processors.values()}
        ours = hy.predict(x, t, ids, 1.0).x0
    assert kinds == {"HunyuanAnchorProcessor", "AttnProcessor2_0"}  # the text refiner keeps its own
    after = dict(hy.pipe.transformer.attn_processors)
    assert all(before[k] is after[k] for k in before) and "predict" not in vars(hy)

    real, n_video = th.dispatch_attention_fn, hy.window  # 1 token per latent frame at 16×16

    def blended(query, key, value, *args, **kwargs):  # [b, N + S, heads, hd], video first
        key, value = key.clone(), value.clone()
        key[:, :n_video] = lam * key[:, :n_video] + (1 - lam) * key[:1, :n_video]
        value[:, :n_video] = lam * value[:, :n_video] + (1 - lam) * value[:1, :n_video]
        return real(query, key, value, *args, **kwargs)

    monkeypatch.setattr(th, "dispatch_attention_fn", blended)
    with stock_processors(hy.pipe.transformer):  # diffusers' processor, whose attention call is patched
        reference = hy.predict(x, t, ids, 1.0).x0
    assert (ours - reference).abs().max().item() <= 1e-5
    assert (ours[0] - plain[0]).abs().max() <= 1e-5 and (ours - plain).abs().max() > 1e-3



# ---------------------------------------------------------------------------------------------------- cross-shot
def shot_by_hand(q, k, v, text_mask, ref_k, ref_v) -> np.ndarray:
    """Per row and query: softmax over the row's video keys, the reference keys and its valid text keys, written
    out; a padded text query 0. q, k, v: [b, heads, N + S, hd] float64 (video first); ref_k, ref_v: [b, heads, n, hd];
    text_mask [b, S] → [b, heads, N + S, hd]."""
    b, heads, n, hd = q.shape
    n_video = n - text_mask.shape[1]
    out = np.zeros(q.shape)
    for r in range(b):
        valid_text = [n_video + j for j in range(text_mask.shape[1]) if text_mask[r, j]]
        keys = np.concatenate([k[r, :, :n_video], ref_k[r], k[r][:, valid_text]], axis=1)  # [heads, m, hd]
        values = np.concatenate([v[r, :, :n_video], ref_v[r], v[r][:, valid_text]], axis=1)
        for i in list(range(n_video)) + valid_text:
            scores = np.einsum("hd,hjd->hj", q[r, :, i], keys) / math.sqrt(hd)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[r, :, i] = np.einsum("hj,hjd->hd", p, values)
    return out


@torch.no_grad()
def test_cross_shot_layers_attend_to_their_branchs_reference_tokens_too(hy):
    share = 0.5
    g = torch.Generator().manual_seed(6)
    x_ref, x_shot = (torch.randn(1, hy.window, *hy.latent_shape, generator=g) for _ in range(2))
    t = hy.schedule(4).step(1).t
    plain = hy.predict(x_shot, t, [1], 6.0).x0
    blocks = hy.pipe.transformer.transformer_blocks
    calls, handles = _record(hy.pipe.transformer)
    try:
        with hy.shot_attention(share, guided=True) as layout:
            with layout.capturing():
                hy.predict(x_ref, t, [0], 6.0)
            with layout.sharing():
                shared = hy.predict(x_shot, t, [1], 6.0).x0
            off = hy.predict(x_shot, t, [1], 6.0).x0
    finally:
        for h in handles:
            h.remove()
    assert [layer for layer, _, _ in calls] == [0, 1] * 3  # capture, share, off: one call of rows [u, c] each
    assert torch.equal(off, plain) and (shared - plain).abs().max() > 1e-3
    n_video = hy.window  # 1 token per latent frame at 16×16
    kept = [j * n_video // math.ceil(share * n_video) for j in range(math.ceil(share * n_video))]
    for layer in (0, 1):
        reference, shot, got = calls[layer][1], calls[2 + layer][1], calls[2 + layer][2]
        attn = blocks[layer].attn
        _, ref_k, ref_v = hand_qkv(attn, reference["hidden_states"], reference["encoder_hidden_states"],
                                   reference["image_rotary_emb"])
        q, k, v = hand_qkv(attn, shot["hidden_states"], shot["encoder_hidden_states"], shot["image_rotary_emb"])
        mask = shot["attention_mask"].bool().numpy()
        mixed = shot_by_hand(q, k, v, mask, ref_k[:, :, kept], ref_v[:, :, kept])  # row r: branch r's reference
        assert close(got, layer_out(attn, mixed, mask.shape[1]), 1e-5), layer
    assert {type(p).__name__ for p in hy.pipe.transformer.attn_processors.values()} == {
        "AttnProcessor2_0", "HunyuanPrefixAttention"}

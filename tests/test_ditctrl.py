"""DiTCtrl (longgen/samplers/ditctrl.py, longgen/backbones/kv_sharing.py) against written-out oracles.

- the subject map and mask against a per-token loop (softmax by hand, per-frame min-max, threshold);
- one layer's masked KV-shared attention against softmax written out per query over the key set it may see;
- the same inside the tiny CogVideoX: every attention call of a capture and a share recorded, the sharing layer's
  output rebuilt from the recorded inputs (target queries, source keys/values of the same guidance branch, masks
  from the conditional rows' maps of the layers so far), the layer outside the span plain;
- latent blending: the triangle weights and the blend against a per-frame loop, and a whole step without sharing
  against a hand-written loop over the clips;
- unmasked sharing of a clip with itself is its plain prediction (RoPE on CogVideoX-5B-like and Wan models);
- one clip is direct sampling, bit for bit; checkpoint/resume bit for bit; the bytes do not depend on the
  micro-batch nor on how units are spread over (emulated) ranks — the property gpus=N rests on;
- compiled blocks keep a few graphs across steps and match eager;
- bad options are one line (the generic rules that generate applies before any weights load).
"""

from __future__ import annotations

import math

import pytest
import torch

from longgen.backbones.kv_sharing import shared_attention, subject_mask, subject_share
from longgen.diffusion import ddim_step, gather_windows
from longgen.errors import UsageError
from longgen.parallel.units import Units
from longgen.samplers.base import SamplerState, SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.ditctrl import DiTCtrlSampler, blend, blend_weights

from conftest import make_tiny
from test_checkpoint import checkpoint_after_two_steps
from test_wan import make_tiny_wan

SUBJECT = (1, 2)


# ---------------------------------------------------------------------------------------------------- loops
def loop_share(q: torch.Tensor, k: torch.Tensor, subject) -> list[float]:
    """Per video query: the mean over heads of Σ_{j ∈ subject} exp(s_j) / Σ_j exp(s_j), s = q·k/√d. q: [heads, n, d],
    k: [heads, n_k, d]."""
    heads, n, d = q.shape
    out = []
    for i in range(n):
        total = 0.0
        for h in range(heads):
            e = torch.exp(k[h] @ q[h, i] / math.sqrt(d) - (k[h] @ q[h, i] / math.sqrt(d)).max()).double()  # [n_k]
            total += float(sum(e[j] for j in subject) / e.sum())
        out.append(total / heads)
    return out


def loop_mask(share: list[float], frames: int, threshold: float) -> list[bool]:
    per = len(share) // frames
    out = []
    for f in range(frames):
        row = share[f * per : (f + 1) * per]
        lo, hi = min(row), max(row)
        out += [(a - lo) / (hi - lo + 1e-6) >= threshold for a in row]
    return out


def loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed) -> torch.Tensor:
    """softmax over the allowed keys of each query, written out. q, k, v: [heads, n, d]; allowed(i) → key indices."""
    out = torch.zeros_like(q)
    for h in range(q.shape[0]):
        for i in range(q.shape[1]):
            keys = allowed(i)
            s = k[h, keys] @ q[h, i] / math.sqrt(q.shape[-1])  # [|keys|]
            e = torch.exp(s - s.max())
            out[h, i] = (e[:, None] * v[h, keys]).sum(0) / e.sum()
    return out


def masked_keys(n_text: int, source: list[bool], target: list[bool], subject):
    """The keys query i may see: text keys, and the source's foreground (a foreground query) or background."""
    def allowed(i: int) -> list[int]:
        fg = (i in subject) if i < n_text else target[i - n_text]
        video = [n_text + j for j, m in enumerate(source) if m == fg]
        keys = list(range(n_text)) + video
        return keys or list(range(n_text + len(source)))
    return allowed


# ---------------------------------------------------------------------------------------------------- pure maths
def test_subject_map_and_mask_against_a_per_token_loop():
    g = torch.Generator().manual_seed(0)
    heads, n_text, frames, per, d = 2, 5, 3, 4, 8
    q = torch.randn(1, heads, frames * per, d, generator=g)
    k = torch.randn(1, heads, n_text + frames * per, d, generator=g)
    share = subject_share(q, k, SUBJECT)  # [1, N]
    expected = loop_share(q[0], k[0], SUBJECT)
    assert torch.allclose(share[0], torch.tensor(expected), atol=1e-6)
    for threshold in (0.0, 0.3, 0.7):
        assert subject_mask(share[0], frames, threshold).tolist() == loop_mask(share[0].tolist(), frames, threshold)


def test_masked_shared_attention_against_written_out_softmax():
    g = torch.Generator().manual_seed(1)
    b, heads, n_text, n, d = 2, 2, 4, 6, 8
    q, k, v = (torch.randn(b, heads, n_text + n, d, generator=g) for _ in range(3))
    source = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    target = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = shared_attention(q, k, v, n_text, source, target, SUBJECT)
    for r in range(b):
        allowed = masked_keys(n_text, source[r].tolist(), target[r].tolist(), SUBJECT)
        assert torch.allclose(out[r], loop_attention(q[r], k[r], v[r], allowed), atol=1e-5)
    # unmasked: every source key
    plain = shared_attention(q, k, v, n_text)
    assert torch.allclose(plain[0], loop_attention(q[0], k[0], v[0], lambda i: list(range(n_text + n))), atol=1e-5)
    # no text keys (Wan's self-attention) and a mask without background: the background part sees every key
    all_fg = torch.ones(b, n_text + n, dtype=torch.bool)
    wan = shared_attention(q, k, v, 0, all_fg, target.repeat(1, 2)[:, : n_text + n])
    allowed = masked_keys(0, all_fg[0].tolist(), target.repeat(1, 2)[0, : n_text + n].tolist(), ())
    assert torch.allclose(wan[0], loop_attention(q[0], k[0], v[0], allowed), atol=1e-5)


def test_blend_weights_and_blend_against_the_formula():
    for m in (1, 4, 13):
        expected = [min((2 * j + 1) / m, 2 - (2 * j + 1) / m) for j in range(m)]
        assert torch.allclose(blend_weights(m), torch.tensor(expected))
    g = torch.Generator().manual_seed(2)
    starts, m, length = [0, 2, 2, 5], 4, 9
    values = torch.randn(len(starts), m, 1, 1, 1, generator=g)
    w = blend_weights(m)
    out = blend(values, starts, length, w)
    for f in range(length):
        num = sum(float(w[f - s]) * float(values[c, f - s]) for c, s in enumerate(starts) if 0 <= f - s < m)
        den = sum(float(w[f - s]) for s in starts if 0 <= f - s < m)
        assert math.isclose(float(out[f]), num / den, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def tiny():
    """32×32 pixels: 4 tokens per latent frame (the mask is per frame); one row per transformer call."""
    return make_tiny(prompts=("a cat walks", "a dog runs"), height=32, width=32, micro_batch=1)


def _record(transformer):
    calls, handles = [], []
    for layer, block in enumerate(transformer.transformer_blocks):
        def hook(module, args, kwargs, out, layer=layer):
            calls.append((layer, kwargs["hidden_states"][0], kwargs["encoder_hidden_states"][0], out[0][0], out[1][0]))
        handles.append(block.attn1.register_forward_hook(hook, with_kwargs=True))
    return calls, handles


def _qkv(attn, text, video):
    tokens = torch.cat([text, video])  # [T + N, D]
    heads = lambda x: x.reshape(x.shape[0], attn.heads, -1).transpose(0, 1)  # noqa: E731 [heads, T + N, hd]
    q, k, v = heads(attn.to_q(tokens)), heads(attn.to_k(tokens)), heads(attn.to_v(tokens))
    return attn.norm_q(q), attn.norm_k(k), v


@torch.no_grad()
@pytest.mark.parametrize("subject", [(), SUBJECT])
def test_sharing_layer_is_written_out_attention_with_the_sources_keys(tiny, subject):
    """Layer 1 shares (span [1, 2)), layer 0 does not; calls are one row each (micro_batch 1): capture [u, c], share
    [u, c] (unmasked) or [c, u] (masked: the conditional row first, its mask kept for the unconditional one)."""
    g = torch.Generator().manual_seed(3)
    x_src, x_tgt = (torch.randn(1, tiny.window, *tiny.latent_shape, generator=g) for _ in range(2))
    t = tiny.schedule(4).step(1).t
    blocks = tiny.pipe.transformer.transformer_blocks
    calls, handles = _record(tiny.pipe.transformer)
    try:
        with tiny.kv_sharing((1, 2), subject, 0.3) as kv:
            with kv.capturing():
                tiny.predict(x_src, t, [0], 6.0)
            with kv.sharing([0]):
                tiny.predict(x_tgt, t, [1], 6.0)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 8
    src = {"u": calls[0:2], "c": calls[2:4]}
    tgt = {"u": calls[4:6], "c": calls[6:8]} if not subject else {"c": calls[4:6], "u": calls[6:8]}
    frames, n_text = tiny.window, calls[0][2].shape[0]

    def mask(rows) -> list[bool]:  # the conditional row's map averaged over layers 0 and 1
        maps = []
        for layer, video, text, _, _ in rows:
            q, k, _ = _qkv(blocks[layer].attn1, text, video)
            maps.append(loop_share(q[:, n_text:], k, subject))
        return loop_mask([sum(a) / len(maps) for a in zip(*maps)], frames, 0.3)

    for branch in ("u", "c"):
        (_, v0, t0, out_v0, out_t0), (_, v1, t1, out_v1, out_t1) = tgt[branch]
        attn0, attn1 = blocks[0].attn1, blocks[1].attn1
        q, k, v = _qkv(attn0, t0, v0)  # layer 0: the target's own keys, plain
        every = list(range(k.shape[1]))
        plain = attn0.to_out[0](loop_attention(q, k, v, lambda i, keys=every: keys).transpose(0, 1).flatten(1))
        assert torch.allclose(plain, torch.cat([out_t0, out_v0]), atol=1e-5)
        q, _, _ = _qkv(attn1, t1, v1)  # layer 1: the target's queries, the source's keys of this branch
        _, k_s, v_s = _qkv(attn1, src[branch][1][2], src[branch][1][1])
        if subject:
            allowed = masked_keys(n_text, mask(src["c"]), mask(tgt["c"]), subject)
        else:
            every = list(range(k_s.shape[1]))
            allowed = lambda i, keys=every: keys  # noqa: E731
        shared = attn1.to_out[0](loop_attention(q, k_s, v_s, allowed).transpose(0, 1).flatten(1))
        assert torch.allclose(shared, torch.cat([out_t1, out_v1]), atol=1e-5), branch
    if subject:  # the mask is not trivial here (both key sets in use)
        m = mask(src["c"])
        assert any(m) and not all(m)
    assert dict(tiny.pipe.transformer.attn_processors).keys() and all(
        type(p).__name__ != "CogVideoXKVProcessor" for p in tiny.pipe.transformer.attn_processors.values())


# ---------------------------------------------------------------------------------------------------- the sampler
def _run(den, length, seed=0):
    noise = torch.randn((1, length, *den.latent_shape), generator=torch.Generator().manual_seed(seed))
    return SamplingRun(denoiser=den, noise=noise, prompt_for_window=lambda s, m: int(s >= 4),
                       generator=torch.Generator().manual_seed(7))


def _ditctrl(**kw):
    return DiTCtrlSampler(**{"num_steps": 3, "stride": 4, "kv_steps": (0, 3), "kv_layers": (0, 2), **kw})


def test_one_clip_is_direct_sampling(tiny):
    direct = DirectSampler(num_steps=3).sample(_run(tiny, tiny.window))
    assert torch.equal(_ditctrl(subject_tokens=SUBJECT).sample(_run(tiny, tiny.window)), direct)


@pytest.mark.parametrize("steps, eta", [(1, 0.0), (2, 0.5)])  # (a one-step schedule ends clean: no DDIM noise)
def test_step_without_sharing_is_the_weighted_clip_loop(tiny, steps, eta):
    length, starts = 21, [0, 4, 8]
    run = _run(tiny, length)
    sampler = _ditctrl(num_steps=steps, kv_sharing=False, eta=eta)
    sampler.begin(run)
    state = SamplerState({"x": run.noise[0].clone()})
    sampler.step(run, state, 0)
    out = state.tensors["x"][None]
    x = run.noise[0]
    c = tiny.schedule(steps).step(0)
    pred = tiny.predict(gather_windows(x, starts, 13), c.t, [0, 1, 1], 6.0).x0  # [3, 13, C, H, W]
    w, uses = blend_weights(13), [1, 2, 1]  # the inner clip belongs to two pairs
    num, den = torch.zeros_like(x), torch.zeros(length, 1, 1, 1)
    for clip, s in enumerate(starts):
        num[s : s + 13] += uses[clip] * w[:, None, None, None] * pred[clip]
        den[s : s + 13] += uses[clip] * w[:, None, None, None]
    # with η > 0 the DDIM noise is one normal draw of the latent from the run's generator (seed 7), after the model
    noise = torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(7)) if eta else None
    assert torch.allclose(out[0], ddim_step(x, num / den, c, eta, noise), atol=1e-6)
    if not eta:  # and sharing changes the result (the test can fail)
        assert not torch.allclose(_ditctrl(num_steps=1).sample(_run(tiny, length))[0], out[0], atol=1e-4)


@pytest.mark.parametrize("guidance", [6.0, 1.0])
def test_sharing_step_is_the_loop_over_pairs(tiny, guidance):
    """A KV-sharing step against the public code's loop over adjacent pairs (§3.2–3.3): pair k alone predicts clip k
    plainly and clip k + 1 with clip k's keys/values, and each estimate is blended, with the triangle weights, at
    the frames of the clip it belongs to. With and without classifier-free guidance (one branch, conditional)."""
    length, starts, ids = 21, [0, 4, 8], [0, 1, 1]
    run = _run(tiny, length)
    out = _ditctrl(num_steps=1, guidance_scale=guidance).sample(run)
    x = run.noise[0]
    c = tiny.schedule(1).step(0)
    clips, w = gather_windows(x, starts, 13), blend_weights(13)[:, None, None, None]  # [3, 13, C, H, W], [13, 1, 1, 1]
    num, den = torch.zeros_like(x), torch.zeros(length, 1, 1, 1)
    for k in range(len(starts) - 1):
        with tiny.kv_sharing((0, 2), (), 0.3) as kv:
            with kv.capturing():
                source = tiny.predict(clips[k : k + 1], c.t, [ids[k]], guidance).x0[0]  # [13, C, H, W]
            with kv.sharing([0]):
                target = tiny.predict(clips[k + 1 : k + 2], c.t, [ids[k + 1]], guidance).x0[0]
        for clip, pred in ((k, source), (k + 1, target)):
            num[starts[clip] : starts[clip] + 13] += w * pred
            den[starts[clip] : starts[clip] + 13] += w
    assert torch.allclose(out[0], ddim_step(x, num / den, c), atol=1e-6)


def test_sharing_steps_are_the_half_open_span(tiny):
    sampler = _ditctrl(num_steps=5, kv_steps=(2, 4))
    sampler.begin(_run(tiny, 17))
    assert [sampler.shares_at(i) for i in range(5)] == [False, False, True, True, False]
    sampler.begin(_run(tiny, tiny.window))  # one clip: no pair to share
    assert not any(sampler.shares_at(i) for i in range(5))


def test_resume_from_a_checkpoint_is_bit_identical(tiny, tmp_path):
    make = lambda: _ditctrl(num_steps=4, kv_steps=(1, 3), subject_tokens=SUBJECT, eta=0.5)  # noqa: E731
    reference = make().sample(_run(tiny, 21))
    ckpt = checkpoint_after_two_steps(make(), _run(tiny, 21), tmp_path / "c.safetensors", "ditctrl")
    fresh = _run(tiny, 21)
    fresh.generator.set_state(ckpt.generator_state)
    assert torch.equal(make().sample(fresh, ckpt.state), reference)


class RankMajor(Units):
    """Two emulated ranks in one process: rank 0's units (k even) run first, then rank 1's; replicated calls run
    twice (once per rank). A unit that leans on state another rank's unit left behind computes otherwise."""

    size = 2

    def map(self, fn, sizes, kind="predict", wait=True):
        order = [k for r in range(self.size) for k in range(len(sizes)) if k % self.size == r]
        out = {k: fn(k) for k in order}
        return [out[k] for k in range(len(sizes))]

    def replicated(self, fn):
        fn()
        return fn()


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_bytes_do_not_depend_on_micro_batch_nor_on_ranks(tiny, family):
    den = tiny if family == "cogvideox" else make_tiny_wan(prompts=("a cat walks", "a dog runs"), height=32,
                                                          width=32, micro_batch=1)
    length = den.window + 2 * 4
    make = lambda: _ditctrl(num_steps=2, subject_tokens=SUBJECT, guidance_scale=5.0)  # noqa: E731
    den.forward_count, sampler = 0, make()
    one_row = sampler.sample(_run(den, length))
    assert den.forward_count == sum(sampler.forwards_per_step(2)) == 2 * 2 * (2 * 2)  # 3 clips, 2 pairs, CFG
    units, micro = den.units, den.micro_batch
    try:
        den.units = RankMajor()
        spread = make().sample(_run(den, length))
        den.units, den.micro_batch = units, 64
        whole = make().sample(_run(den, length))
    finally:
        den.units, den.micro_batch = units, micro
    assert torch.equal(spread, one_row)  # same calls, other order and replication: the same bytes
    assert torch.allclose(whole, one_row, atol=1e-5)  # other calls: batched kernels round otherwise
    unmasked = _ditctrl(num_steps=2, guidance_scale=5.0).sample(_run(den, length))
    assert not torch.equal(unmasked, one_row)  # the mask matters


@pytest.mark.parametrize("override, match", [
    ({"kv_steps": (5, 2)}, "sampler.kv_steps=\\[5, 2\\] must have a <= b"),
    ({"kv_layers": [1]}, "sampler.kv_layers=\\[1\\] must be a span"),
    ({"subject_tokens": (1, 1)}, "names a token twice"),
    ({"mask_threshold": 1.5}, "sampler.mask_threshold=1.5 must be a finite number between 0 and 1"),
])
def test_bad_options_are_one_line(override, match):
    with pytest.raises(UsageError, match=match):
        _ditctrl(**override)


def test_layers_beyond_the_model_and_tokens_beyond_the_text_are_one_line(tiny):
    with pytest.raises(UsageError, match=r"kv_layers=\[25, 30\] must be a non-empty span within the 2 attention"):
        _ditctrl(kv_layers=(25, 30)).sample(_run(tiny, 17))
    with pytest.raises(UsageError, match="subject_tokens=\\[40\\] points past the 16 text tokens"):
        _ditctrl(subject_tokens=(40,)).sample(_run(tiny, 17))



@torch.no_grad()
@pytest.mark.parametrize("family", ["cogvideox-rope", "wan"])
def test_a_clip_sharing_with_itself_is_its_plain_prediction(family):
    """Unmasked sharing with the source = the target (same latents, prompt and timestep) attends with its own keys:
    the installed processors (RoPE included: CogVideoX-5B's on the video tokens, Wan's interleaved pairs) reproduce
    the model's own attention."""
    if family == "wan":
        den = make_tiny_wan(prompts=("a cat walks",), height=32, width=32)
    else:
        den = make_tiny(prompts=("a cat walks",), height=32, width=32, **{
            "architecture.transformer.use_rotary_positional_embeddings": True,
            "architecture.transformer.attention_head_dim": 16})
    x = torch.randn(2, den.window, *den.latent_shape, generator=torch.Generator().manual_seed(4))
    t = den.schedule(4).step(1).t
    plain = den.predict(x, t, [0, 0], 5.0).x0
    with den.kv_sharing((0, 2), (), 0.3) as kv:
        with kv.capturing():
            captured = den.predict(x, t, [0, 0], 5.0).x0
        with kv.sharing([0, 1]):
            shared = den.predict(x, t, [0, 0], 5.0).x0
        with kv.sharing([1, 0]):  # each window with the other's keys: no longer its own prediction
            swapped = den.predict(x, t, [0, 0], 5.0).x0
    assert torch.allclose(captured, plain, atol=1e-5) and torch.allclose(shared, plain, atol=1e-5)
    assert not torch.allclose(swapped, plain, atol=1e-3)


def test_compiled_blocks_keep_their_graphs_across_sharing_steps():
    """Compiled blocks (CUDA's default) through capture, share and plain steps, the KV context entered anew at every
    sharing step: the processors' attention is an opaque op that reads the layout at run time, so the graphs stay
    few whatever the number of blocks and steps; the result is the eager one."""
    from torch._dynamo.testing import CompileCounter

    den = make_tiny(prompts=("a cat walks", "a dog runs"), height=32, width=32,
                    **{"architecture.transformer.num_layers": 3})
    counter = CompileCounter()
    make = lambda: _ditctrl(num_steps=3, kv_steps=(0, 2), kv_layers=(1, 3))  # noqa: E731
    torch._dynamo.reset()
    try:
        for block in den._blocks():
            block.compile(backend=counter, dynamic=False)
        compiled = make().sample(_run(den, 21))
        graphs = counter.frame_count
        for block in den._blocks():
            block._compiled_call_impl = None
        eager = make().sample(_run(den, 21))
    finally:
        torch._dynamo.reset()
    # stock processors (6 rows) and KV ones (4 rows), each twice for the first block's other input strides: 4 graphs
    # for 3 blocks, 2 sharing steps and a plain one (the layout's Python state read inside the traced processor
    # would break and re-specialise the graphs per layer and mode)
    assert graphs <= 4, graphs
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_layer_spans_count_from_the_end_as_python_slices_do():
    from longgen.backbones.kv_sharing import model_span

    for span in [(25, 30), (-5, None), (-5, -1), (0, None), (-40, None), (3, -2), (29, None)]:
        want = range(30)[slice(*span)]
        assert model_span(span, 30) == (want.start, want.stop), span
    assert model_span((-5, None), 2) == (0, 2)  # the last five of a 2-layer model: both
    for bad in [(25, 31), (5, 5), (-1, -3), (30, None)]:
        with pytest.raises(UsageError, match="must be a non-empty span within the 30 attention layers"):
            model_span(bad, 30)


def _planned(tmp_path, *overrides: str):
    """build_parts of a `generate` config (no weights load): where a refusal at plan time comes from."""
    from hydra import compose, initialize_config_module

    from longgen.run.job import build_parts

    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["sampler=ditctrl", "prompt=a fox", *overrides])
    return build_parts(cfg, {"sampler": "ditctrl"})


def test_layers_beyond_the_model_are_refused_when_the_run_is_planned(tmp_path):
    """The default [25, 30] on the 2-layer tiny models, and a span past a local model's transformer/config.json,
    are one line before any weights load; a span that fits (or KV-sharing off) plans."""
    for backbone in ("tiny", "tiny-wan"):
        with pytest.raises(UsageError, match=r"kv_layers=\[25, 30\] must be a non-empty span within the 2 attention"):
            _planned(tmp_path, f"backbone={backbone}")
    assert _planned(tmp_path, "backbone=tiny-wan", "sampler.kv_layers=[0,2]").sampler.kv_layers == (0, 2)
    assert _planned(tmp_path, "backbone=tiny", "sampler.kv_sharing=false").sampler.kv_layers == (25, 30)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"num_layers": 30}')
    local = ["backbone=cogvideox-2b", f"backbone.model_path={tmp_path}"]
    assert _planned(tmp_path, *local).sampler.kv_layers == (25, 30)
    with pytest.raises(UsageError, match=r"kv_layers=\[28, 32\] must be a non-empty span within the 30 attention"):
        _planned(tmp_path, *local, "sampler.kv_layers=[28,32]")
    # depth unknown before loading (a broken config, a malformed hub id): left to check_available, load, sampling
    (tmp_path / "transformer" / "config.json").write_text("{not json")
    assert _planned(tmp_path, *local, "sampler.kv_layers=[28,32]").sampler.kv_layers == (28, 32)
    assert _planned(tmp_path, "backbone=cogvideox-2b", "backbone.model_id='bad id//x'").sampler.kv_layers == (25, 30)


@pytest.mark.parametrize("kv_sharing, subject, warned", [(False, (1,), True), (False, (), False), (True, (1,), False)])
def test_subject_tokens_without_kv_sharing_are_said_once_at_start(caplog, kv_sharing, subject, warned):
    """The subject mask only guides KV-sharing: with sampler.kv_sharing=false (a sweep's ablation) subject tokens are
    accepted and said, once at start, to do nothing."""
    from types import SimpleNamespace

    den = SimpleNamespace(window=13, schedule=lambda n: list(range(n)))
    run = SamplingRun(den, torch.zeros(1, 17, 1, 1, 1), lambda start, size: 0, torch.Generator())
    sampler = DiTCtrlSampler(num_steps=3, stride=4, kv_sharing=kv_sharing, kv_steps=(0, 3), kv_layers=(0, 2),
                             subject_tokens=subject)
    with caplog.at_level("WARNING", logger="longgen.samplers.ditctrl"):
        sampler.begin(run)
    said = [r.getMessage() for r in caplog.records if "does nothing with sampler.kv_sharing=false" in r.getMessage()]
    assert said == (["sampler.subject_tokens=[1] does nothing with sampler.kv_sharing=false (the subject mask only "
                     "guides KV-sharing): drop it, or pass sampler.kv_sharing=true"] if warned else []), said


@pytest.mark.parametrize("num_steps, kv_steps, warned", [(2, (2, 25), True), (3, (2, 25), False), (50, (50, 60), True)])
def test_kv_steps_outside_the_runs_steps_are_said_once_at_start(caplog, num_steps, kv_steps, warned):
    """DiTCtrl at fewer steps than its kv_steps start (the default [2, 25) at num_steps=2) shares no keys at all:
    the run says so when it starts rather than quietly running clips and blending only."""
    from types import SimpleNamespace

    den = SimpleNamespace(window=13, schedule=lambda n: list(range(n)))  # begin reads the window and len(schedule)
    run = SamplingRun(den, torch.zeros(1, 17, 1, 1, 1), lambda start, size: 0, torch.Generator())  # two clips
    sampler = DiTCtrlSampler(num_steps=num_steps, stride=4, kv_steps=kv_steps, kv_layers=(0, 2))
    with caplog.at_level("WARNING", logger="longgen.samplers.ditctrl"):
        assert sampler.begin(run) == num_steps
    said = [r.getMessage() for r in caplog.records if "no KV-sharing happens" in r.getMessage()]
    assert len(said) == warned, said

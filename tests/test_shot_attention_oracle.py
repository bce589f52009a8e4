"""Cross-shot attention through the whole multi-shot sampler (longgen/run/shots.py with
longgen/backbones/shot_attention.py), against attention written out row by row.

A scene of two takes (a cut between its two shots), two windows each, Gen-L-Video for 2 steps with guidance on the
tiny CogVideoX (16×16: one token per latent frame), shots.cross_attention = 0.5, the reference the *second* shot,
and the backbone's micro-batch 3, so that the 4 CFG-stacked rows [u0, u1, c0, c1] of a predict go through the
transformer as [u0, u1, c0] and [c1] (a row's guidance branch is not its position within a call). Every attention
layer call of the run is recorded (its inputs and outputs), and every row is identified by its input: which take,
which window (by content, against the takes' x_t recorded before each step) and which branch (its text embedding is
the negative prompt's or not). The oracle, per step i, layer l and row:

- the reference tokens: the reference take's *first* window of x_t before step i, through the stock transformer at
  step i's timestep, once per branch (the negative prompt / the reference shot's prompt); at layer l the keys and
  values of its video tokens (q/k norms as the layer has them), the ⌈r·N⌉ kept ones at positions ⌊j·N/n⌋;
- a row of the other take: softmax(q·kᵀ/√d)·v per head over its own text and video tokens plus the reference tokens
  *of its own branch*, then the output projection; a row of the reference take (its own step, and the capture):
  the same without reference tokens (plain attention).
"""

from __future__ import annotations

import math

import torch

from longgen.samplers.base import SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.run.shots import ShotOptions, ShotsSampler, plan_shots
from longgen.story import Story

from conftest import make_tiny

SHARE = 0.5
SCENE = Story.from_dict({"shots": ["a fox in the snow", "[SHOT CUT] a red barn at night"]})


def kept_positions(tokens: int, share: float) -> list[int]:
    n = max(1, math.ceil(share * tokens))
    return [j * tokens // n for j in range(n)]


def heads_of(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[n, D] → [heads, n, hd]."""
    return x.reshape(x.shape[0], heads, -1).transpose(0, 1)


def qkv(attn, text: torch.Tensor, video: torch.Tensor):
    """One row's queries, keys and values of its [text; video] tokens, [heads, T + N, hd] each."""
    tokens = torch.cat([text, video])  # [T + N, D]
    q, k, v = (heads_of(f(tokens), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def attend_row(attn, text, video, ref_k=None, ref_v=None):
    """The layer's output for one row, (video [N, D], text [T, D]): every head attends over its own tokens and the
    reference's, written out; then the output projection."""
    q, k, v = qkv(attn, text, video)
    if ref_k is not None:
        k, v = torch.cat([k, ref_k], 1), torch.cat([v, ref_v], 1)  # [heads, T + N + n, hd]
    outs = []
    for h in range(q.shape[0]):
        scores = q[h] @ k[h].T / math.sqrt(q.shape[-1])  # [T + N, T + N (+ n)]
        outs.append(torch.softmax(scores, dim=-1) @ v[h])  # [T + N, hd]
    out = attn.to_out[0](torch.cat(outs, dim=-1))  # [T + N, D]
    return out[text.shape[0] :], out[: text.shape[0]]


def test_rows_see_the_current_steps_first_reference_window_of_their_own_branch():
    tiny = make_tiny(prompts=("a fox in the snow", "a red barn at night"), height=16, width=16, num_frames=17,
                     stride=2, micro_batch=3)  # windows of 5 latent frames
    m, steps = tiny.window, 2
    sampler = GenLVideoSampler(num_steps=steps, stride=2, guidance_scale=6.0)
    options = ShotOptions(windows=(2, 2), cross_attention=SHARE, reference=2)
    plan = plan_shots(SCENE, options, m, 2, 9, 0, sampler.plan, tiny.frames_for)
    assert [t.length for t in plan.takes] == [7, 7]
    ref_take = plan.takes[1].index
    shots = ShotsSampler(sampler, plan, options)
    ids = [0, 1]  # encoded prompt of shot 0 and shot 1
    run = SamplingRun(tiny, torch.zeros(1, plan.length, *tiny.latent_shape),
                      lambda start, size: ids[plan.shot_at(start + size / 2)], torch.Generator().manual_seed(3),
                      prompt_ids={"global": 0})

    # ---- record: each take's x_t before every step, every transformer call and its attention layers
    before: dict[int, dict[int, torch.Tensor]] = {}
    step = shots.step

    def recording_step(r, state, i):
        before[i] = {t.index: state.tensors[f"take{t.index}.x"].clone() for t in plan.takes}  # [L_k, C, H, W]
        return step(r, state, i)

    shots.step = recording_step
    calls: list[dict] = []
    model = tiny.pipe.transformer
    layers = [block.attn1 for block in model.transformer_blocks]

    def on_call(module, args, kwargs):
        calls.append({"x": kwargs["hidden_states"].clone(), "emb": kwargs["encoder_hidden_states"].clone(),
                      "t": kwargs["timestep"].clone(), "layers": []})

    def on_layer(module, args, kwargs, output):
        calls[-1]["layers"].append((kwargs["hidden_states"].clone(), kwargs["encoder_hidden_states"].clone(),
                                    output[0].clone(), output[1].clone()))

    hooks = [model.register_forward_pre_hook(on_call, with_kwargs=True)]
    hooks += [layer.register_forward_hook(on_layer, with_kwargs=True) for layer in layers]
    try:
        shots.sample(run)
    finally:
        for hook in hooks:
            hook.remove()

    # per step: the capture (2 rows, one call), then each take's 4 rows in calls of 3 and 1
    assert [c["x"].shape[0] for c in calls] == [2, 3, 1, 3, 1] * steps

    # ---- the oracle's reference tokens: the reference take's first window at each step, stock attention
    timesteps = [float(t) for t in tiny.schedule(steps).timesteps]
    negative, cond = tiny._negative[0], tiny._embeds[ids[1]]  # the reference shot's prompt: shot 1
    reference: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (step, branch, layer) → K, V
    for i, t in enumerate(timesteps):
        window = before[i][ref_take][:m][None].expand(2, -1, -1, -1, -1)  # [2, M, C, H, W]
        seen: list = []
        grab = [layer.register_forward_hook(
            lambda mod, a, kw, out: seen.append((kw["hidden_states"], kw["encoder_hidden_states"])), with_kwargs=True)
            for layer in layers]
        try:
            with torch.no_grad():
                model(hidden_states=window, encoder_hidden_states=torch.stack([negative, cond]),
                      timestep=torch.full((2,), t), image_rotary_emb=tiny._rope(m), return_dict=False)
        finally:
            for hook in grab:
                hook.remove()
        for l, (video, text) in enumerate(seen):
            for branch in (0, 1):
                _, k, v = qkv(layers[l], text[branch], video[branch])
                keep = [text.shape[1] + p for p in kept_positions(video.shape[1], SHARE)]
                reference[(i, branch, l)] = (k[:, keep], v[:, keep])  # [heads, n, hd]

    # ---- every recorded row against the oracle
    checked = {"shared": 0, "plain": 0, "branches": set()}
    with torch.no_grad():
        for call in calls:
            i = min(range(steps), key=lambda j: abs(timesteps[j] - float(call["t"][0])))
            assert float(call["t"][0]) == timesteps[i]
            for row in range(call["x"].shape[0]):
                where = [(k, s) for k, x in before[i].items() for s in range(x.shape[0] - m + 1)
                         if torch.equal(call["x"][row], x[s : s + m])]
                assert len(where) == 1, "a transformer row that is no window of any take's x_t at this step"
                take, _ = where[0]
                branch = 0 if torch.equal(call["emb"][row], negative) else 1
                for l, (video, text, got_video, got_text) in enumerate(call["layers"]):
                    ref_kv = reference[(i, branch, l)] if take != ref_take else (None, None)
                    want_video, want_text = attend_row(layers[l], text[row], video[row], *ref_kv)
                    torch.testing.assert_close(got_video[row], want_video, atol=2e-5, rtol=1e-5)
                    torch.testing.assert_close(got_text[row], want_text, atol=2e-5, rtol=1e-5)
                checked["shared" if take != ref_take else "plain"] += 1
                checked["branches"].add((take, branch))
    # both takes, both branches, both steps were seen; the reference tokens change what a row sees
    assert checked["shared"] == 2 * 2 * steps and checked["plain"] == (2 + 2 * 2) * steps
    assert checked["branches"] == {(0, 0), (0, 1), (1, 0), (1, 1)}
    video, text, _, _ = calls[-1]["layers"][0]
    alone, _ = attend_row(layers[0], text[0], video[0])
    assert not torch.allclose(alone, attend_row(layers[0], text[0], video[0], *reference[(steps - 1, 0, 0)])[0],
                              atol=1e-3)

"""`longgen extend` at its default history level t_c = 100 (conf/extend.yaml; LCT §3.2.3 conditions on history noised
to t_c), context=per-frame (auto on both tiny backbones), against oracles written out here:

- the history's noising: every frame of a model input that holds the history holds z_h noised to t_c with the
  history's own slice of x_T, a·z_h + s·ε_h, with (a, s) = (√ᾱ[t_c], √(1 − ᾱ[t_c])) from the loaded scheduler's
  ᾱ table on CogVideoX (variance preserving) and (1 − t_c/T, t_c/T) on Wan (rectified flow), the same at every
  step, and the model is told t_c for exactly those frames and the step's t for the others; the output's history
  latents are z_h;
- the prompts' time origin: the story's local prompts lie over the new part only, so a window gets the prompt of the
  segment (equal shares of the L − h new latent frames) that holds its centre counted from the join, s + M/2 − h
  (windows centred in the history take the first prompt); the manifest places each window in extended.mp4's
  latent frames, where the join is the input's k-th latent frame.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from safetensors.torch import load_file

from longgen.run.extend import HistorySampler
from longgen.commands.extend import run_extend
from longgen.samplers.base import SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler

from conftest import make_tiny
from test_extend import compose_extend, make_video

T = 1000.0
T_C = 100.0  # conf/extend.yaml's default


def strided_starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, length - window + 1, stride))
    return starts if starts[-1] == length - window else starts + [length - window]


def leading_known(levels: list[float], t_c: float) -> int:
    """How many leading frames of a window are labelled t_c (the window at start s holds h − s history frames)."""
    k = 0
    while k < len(levels) and levels[k] == t_c:
        k += 1
    return k


def check_history_inputs(calls, known: torch.Tensor, t_c: float, step_ts: set[float], expected_k: set[int]):
    """Every model input row: its first k frames (k labelled t_c) are the last k history frames at level t_c, the
    others are labelled the step's t; rows holding history appear for every window start below h."""
    h = known.shape[0]
    seen_k = set()
    for x, t in calls:  # x [B, M, C, H, W]; t a float or [B, M] / [M]
        rows = t.reshape(-1, x.shape[1]).expand(x.shape[0], -1) if isinstance(t, torch.Tensor) else None
        for b in range(x.shape[0]):
            levels = [float(t)] * x.shape[1] if rows is None else rows[b].tolist()
            k = leading_known(levels, t_c)
            assert set(levels[k:]) <= step_ts and len(set(levels[k:])) <= 1, levels
            if k:
                seen_k.add(k)
                torch.testing.assert_close(x[b, :k].double(), known[h - k :], atol=1e-5, rtol=0)
    assert seen_k == expected_k


def test_per_frame_history_at_t_c_on_cogvideox_is_sqrt_alpha_bar_noised():
    tiny = make_tiny(prompts=("a", "b"), height=16, width=16, num_frames=17)  # windows of 5 latent frames
    h, length, steps, stride = 3, 9, 2, 2
    g = torch.Generator().manual_seed(1)
    history = torch.randn((h, *tiny.latent_shape), generator=g)
    noise = torch.randn((1, length, *tiny.latent_shape), generator=g)
    acp = float(tiny.pipe.scheduler.alphas_cumprod[int(T_C)])
    a, s = math.sqrt(acp), math.sqrt(1.0 - acp)
    known = a * history.double() + s * noise[0, :h].double()  # [h, C, H, W]
    calls, after = [], []
    plain = tiny.predict

    def spy(x_t, t, prompt_ids, guidance_scale):
        calls.append((x_t.clone(), t.clone() if isinstance(t, torch.Tensor) else float(t)))
        return plain(x_t, t, prompt_ids, guidance_scale)

    tiny.predict = spy
    try:
        sampler = HistorySampler(GenLVideoSampler(num_steps=steps, stride=stride), h, "per-frame", T_C)
        sampler.history = history
        run = SamplingRun(tiny, noise.clone(), lambda st, m: 0, torch.Generator().manual_seed(2))
        run.after_step = lambda state, total: after.append(state.tensors["x"][:h].double().clone())
        out = sampler.sample(run)
    finally:
        del tiny.predict
    step_ts = {float(t) for t in tiny.schedule(steps).timesteps}
    starts = strided_starts(length, tiny.window, stride)  # 0, 2, 4
    check_history_inputs(calls, known, T_C, step_ts, {h - st for st in starts if st < h})
    assert len(after) == steps and all(torch.allclose(x, known, atol=1e-6, rtol=0) for x in after)
    assert torch.equal(out[0, :h], history)


def test_extend_defaults_on_wan_noise_the_history_to_t_c_and_time_prompts_from_the_join(tmp_path, monkeypatch):
    """The real command path (config, seed, VAE encode) on tiny Wan: windows of 6 latent frames at stride 2, the
    default history h = 6 − 2 = 4, num_windows=5 → L = 14 latent frames, 10 new; three local prompts."""
    from longgen.backbones.wan import WanBackbone

    from test_wan import make_tiny_wan

    source = make_video(tmp_path / "in.mp4", 21, (32, 32), 16)
    story = {"global": "a pattern", "local": ["a pattern drifts left", "a pattern turns", "a pattern fades out"]}
    (tmp_path / "story.json").write_text(json.dumps(story))
    calls = []
    plain = WanBackbone.predict

    def spy(self, x_t, t, prompt_ids, guidance_scale):
        texts = [self._prompts[i] for i in prompt_ids]
        calls.append((x_t.clone(), t.clone() if isinstance(t, torch.Tensor) else float(t), texts))
        return plain(self, x_t, t, prompt_ids, guidance_scale)

    monkeypatch.setattr(WanBackbone, "predict", spy)
    out = tmp_path / "run"
    cfg, choices = compose_extend(["backbone=tiny-wan", "backbone.num_frames=21", "backbone.stride=2",
                                   f"video={tmp_path / 'in.mp4'}", f"story={tmp_path / 'story.json'}",
                                   "sampler=gen-l-video", "sampler.num_steps=2", "num_windows=5", "seed=3",
                                   "save_latents=true"])
    assert cfg.t_c == T_C and cfg.get("history") is None and cfg.context == "auto"
    manifest = run_extend(cfg, out, choices)
    m, stride, h, length, seed = 6, 2, 4, 14, 3
    assert manifest["history"]["t_c"] == T_C and manifest["history"]["context"] == "per-frame"
    assert manifest["sampled_latent_length"] == length
    # the oracle's history: the VAE encoding of the last 4·(h − 1) + 1 frames, noised to t_c with x_T[:h]
    wan = make_tiny_wan()
    z_h = wan.encode_frames(source[-(4 * (h - 1) + 1) :])[0].double()  # [h, C, H, W]
    x_T = torch.randn((1, length, *wan.latent_shape), generator=torch.Generator().manual_seed(seed))[0].double()
    known = (1.0 - T_C / T) * z_h + (T_C / T) * x_T[:h]  # [h, C, H, W]
    starts = strided_starts(length, m, stride)  # 0, 2, 4, 6, 8
    step_ts = {float(t) for t in wan.schedule(2).timesteps}
    check_history_inputs([(x, t) for x, t, _ in calls], known, T_C, step_ts, {h - st for st in starts if st < h})
    # each window's local prompt: its centre counted from the join over the 10 new frames, in thirds
    new = length - h
    expected = {}
    for st in starts:
        position = max(0.0, st + m / 2 - h)
        expected[st] = story["local"][min(int(position * 3 // new), 2)]
    assert [expected[st] for st in starts] == [story["local"][i] for i in (0, 0, 0, 1, 2)]
    # first step: x_t = [known | x_T[h:]]; find every window of it among the model's rows, and the prompt it got
    first = max(step_ts)
    x_start = torch.cat([known, x_T[h:]])  # [L, C, H, W]
    got = {}
    for x, t, texts in calls:
        if isinstance(t, torch.Tensor):
            levels = t.reshape(-1, m).expand(x.shape[0], -1)  # [B, M]
        else:
            levels = torch.full((x.shape[0], m), t)
        for b in range(x.shape[0]):
            if first not in levels[b].tolist():
                continue
            match = [st for st in starts if torch.allclose(x[b].double(), x_start[st : st + m], atol=1e-5, rtol=0)]
            assert len(match) == 1, "a first-step window that is no window of [history at t_c | x_T]"
            got[match[0]] = texts[b]
    assert got == expected
    assert [w["local_prompt"] for w in manifest["sampling_windows"]] == [0, 0, 0, 1, 2]
    # extended.mp4 as latent frames (what `longgen eval RUN_DIR` scores): the input's 21 frames are k = 6 latent
    # frames, the join at latent frame k, so sampled latent frame f ≥ h sits at f − h + k
    k = (21 - 1) // 4 + 1
    assert manifest["latent_length"] == k + new and manifest["windows"][0] == {"start": 0, "end": k, "segment": "input"}
    assert manifest["windows"][1:] == [{"start": max(k, st - h + k), "end": st + m - h + k,
                                        "local_prompt": story["local"].index(expected[st])} for st in starts]
    # the output's history latents are the encoded input's exactly
    latents = load_file(out / "latents.safetensors")["latents"]
    assert latents.shape[0] == length and torch.equal(latents[:h].double(), z_h)
    assert np.isfinite(latents.numpy()).all()

"""FIFO-Diffusion and what it needs: per-frame timesteps on CogVideoX, the FIFO queue, FreeNoise initial noise.

Oracles: a hand-written forward of the tiny CogVideoX transformer with the per-frame adaLN modulation written out
from the formula (attention mixes frames, so "frame f = a whole clip at t_f" cannot be split exactly; the forward
is the honest oracle); a plain-loop FIFO queue written from the paper (§3.1–3.3) that tracks every frame's level
and video position itself; a denoiser that predicts x̂0 = 0, which turns each frame into a known multiple of its
own noise, so every frame's path through the levels can be read off the model's inputs; FreeNoise's formula
written out as index arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longgen.denoiser import Denoiser, Prediction
from longgen.diffusion import NoiseSchedule
from longgen.errors import UsageError
from longgen.noise import FreeNoise, GaussianNoise, reschedule_order
from longgen.samplers.base import SamplingRun
from longgen.samplers.fifo import FIFOSampler

from conftest import make_tiny


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run thousands of tiny tensor ops: on a busy 2-core machine, handing each to a second intra-op thread
    costs 10x more than the op (measured: 1.2 s vs 14 s for one queue oracle)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small():
    """Tiny CogVideoX at 16×16 pixels: one transformer token per latent frame (fast queues)."""
    return make_tiny(prompts=("a cat", "a dog runs", "a bird flies"), height=16, width=16)


# ------------------------------------------------------------------------------------------ per-frame timesteps
def test_per_frame_at_one_t_is_the_models_own_call_bit_for_bit(tiny):
    x = torch.randn(3, 13, *tiny.latent_shape, generator=torch.Generator().manual_seed(1))
    for guidance in (1.0, 6.0):
        ref = tiny.predict(x, 979, [0, 1, 2], guidance)
        for t in (torch.full((13,), 979), torch.full((3, 13), 979.0)):
            got = tiny.predict(x, t, [0, 1, 2], guidance)
            assert torch.equal(got.x0, ref.x0) and torch.equal(got.eps, ref.eps)
    # the diffusers modules are back after a per-frame call
    block = tiny.pipe.transformer.transformer_blocks[0]
    assert type(block.norm1).__name__ == "CogVideoXLayerNormZero"
    assert type(tiny.pipe.transformer.norm_out).__name__ == "AdaLayerNorm"
    assert not tiny.pipe.transformer.time_embedding._forward_hooks


def _time_embedding(tr, t: torch.Tensor) -> torch.Tensor:
    """e(t) [b, D] for timesteps t [b]: sinusoid, then the embedding MLP."""
    return tr.time_embedding(tr.time_proj(t))


def _per_frame_forward(tr, x: torch.Tensor, emb: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The CogVideoX transformer with adaLN-Zero modulation written out per frame: tokens of frame f get
    LayerNorm(h)·(1 + γ_f) + β_f and residual gate α_f from e(t_f); text tokens from e(mean t). x [b, F, C, H, W],
    ts [b, F] → v [b, F, C, H, W]."""
    b, frames, c, h, w = x.shape
    p = tr.config.patch_size
    frame_e = [_time_embedding(tr, ts[:, f]) for f in range(frames)]
    text_e = _time_embedding(tr, ts.double().mean(1).float())
    tokens = tr.patch_embed(emb, x)  # [b, S + F·P, dim]
    s = emb.shape[1]
    text, video = tokens[:, :s], tokens[:, s:]
    per = video.shape[1] // frames

    def modulate(norm, video, text):
        out_v, gate_v = torch.empty_like(video), torch.empty_like(video)
        for f in range(frames):
            shift, scale, gate, _, _, _ = norm.linear(F.silu(frame_e[f])).chunk(6, dim=1)
            rows = slice(f * per, (f + 1) * per)
            out_v[:, rows] = norm.norm(video[:, rows]) * (1 + scale[:, None]) + shift[:, None]
            gate_v[:, rows] = gate[:, None]
        _, _, _, shift, scale, gate = norm.linear(F.silu(text_e)).chunk(6, dim=1)
        return out_v, norm.norm(text) * (1 + scale[:, None]) + shift[:, None], gate_v, gate[:, None]

    for block in tr.transformer_blocks:
        nv, nt, gv, gt = modulate(block.norm1, video, text)
        av, at = block.attn1(hidden_states=nv, encoder_hidden_states=nt)
        video, text = video + gv * av, text + gt * at
        nv, nt, gv, gt = modulate(block.norm2, video, text)
        ff = block.ff(torch.cat([nt, nv], dim=1))
        video, text = video + gv * ff[:, s:], text + gt * ff[:, :s]
    video = tr.norm_final(video)
    out = torch.empty_like(video)
    for f in range(frames):
        shift, scale = tr.norm_out.linear(F.silu(frame_e[f])).chunk(2, dim=1)
        rows = slice(f * per, (f + 1) * per)
        out[:, rows] = tr.norm_out.norm(video[:, rows]) * (1 + scale[:, None]) + shift[:, None]
    out = tr.proj_out(out)  # [b, F·h'·w', C·p·p]
    out = out.reshape(b, frames, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # [b, F, C, h', p, w', p]
    return out.reshape(b, frames, c, h, w)


def test_per_frame_equals_a_handwritten_per_frame_forward(tiny):
    x = torch.randn(2, 13, *tiny.latent_shape, generator=torch.Generator().manual_seed(2))
    ts = torch.tensor([[999.0 - 40 * f for f in range(13)], [500.0] * 6 + [520.0] * 7])  # [2, 13]
    acp = tiny.pipe.scheduler.alphas_cumprod.double()
    a = acp[ts.long()].sqrt().float()[:, :, None, None, None]  # [2, 13, 1, 1, 1]
    s = (1 - acp[ts.long()]).sqrt().float()[:, :, None, None, None]
    tr = tiny.pipe.transformer
    with torch.no_grad():
        cond = _per_frame_forward(tr, x, tiny._embeds[[0, 1]], ts)
        uncond = _per_frame_forward(tr, x, tiny._negative.expand(2, -1, -1), ts)
    for guidance, v in ((1.0, cond), (6.0, uncond + 6.0 * (cond - uncond))):
        got = tiny.predict(x, ts, [0, 1], guidance)
        assert (got.x0 - (a * x - s * v)).abs().max().item() < 1e-5  # x̂0 = a_f·x − s_f·v per frame
        assert (got.eps - (a * v + s * x)).abs().max().item() < 1e-5
    # the timesteps matter, frame by frame (not one timestep for the window)
    plain = tiny.predict(x, 500, [0, 1], 1.0)
    assert (tiny.predict(x, ts, [0, 1], 1.0).x0[1] - plain.x0[1]).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", ["cogvideox", "wan"])
def test_a_timestep_row_per_window_equals_each_windows_own_call(small, backbone):
    if backbone == "wan":
        from test_wan import make_tiny_wan

        den = make_tiny_wan(prompts=("a cat", "a dog"))
        ts = torch.stack([torch.linspace(950.0, 50.0, 21), torch.linspace(600.0, 400.0, 21)])
    else:
        den = small
        ts = torch.stack([torch.linspace(999.0, 19.0, 13).round(), torch.full((13,), 400.0)])
    x = torch.randn(2, den.window, *den.latent_shape, generator=torch.Generator().manual_seed(3))
    both = den.predict(x, ts, [0, 1], 5.0)
    for row in range(2):
        alone = den.predict(x[row : row + 1], ts[row], [row], 5.0)
        assert (both.x0[row] - alone.x0[0]).abs().max().item() < 1e-5
    assert (both.x0[0] - both.x0[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="per-frame timesteps of shape"):
        den.predict(x, ts[:, :5], [0, 1], 5.0)


def test_backbones_without_per_frame_timesteps_refuse_in_one_line(small, monkeypatch):
    monkeypatch.setattr(small, "per_frame_timesteps", False)
    x = torch.zeros(1, 13, *small.latent_shape)
    with pytest.raises(UsageError, match="one timestep per window, not one per frame"):
        small.predict(x, torch.full((13,), 500.0), [0], 1.0)
    run = SamplingRun(denoiser=small, noise=torch.zeros(1, 13, *small.latent_shape), prompt_for_window=lambda s, m: 0,
                      generator=torch.Generator())
    with pytest.raises(UsageError, match="sampler=fifo needs a timestep per latent frame") as err:
        FIFOSampler().sample(run)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ FIFO: the paper's loop
def fifo_oracle(den, noise, generator, partitions, lookahead, guidance, prompt_for_window, eta=0.0):
    """FIFO-Diffusion as a plain loop over frames (paper §3.1 diagonal denoising, §3.2 n partitions, §3.3 lookahead),
    each frame carrying its own level k (1 = one step from clean … S = pure noise) and video position. With η > 0
    every DDIM step adds σ·z (Song et al. 2021, Eq. 16): z one standard normal of the clip per base-clip step, and per
    queue iteration one of the S queue frames (row p for queue position p, the head 0), drawn before its tail frame."""
    m = den.window
    levels = partitions * m
    length = noise.shape[1]
    sched = den.schedule(levels)  # step i of the descending schedule is level S − i

    def coeffs(k):  # (a, s) at level k and (a, s) of the level below
        i = levels - k
        return sched.a[i], sched.s[i], sched.a_prev[i], sched.s_prev[i]

    def ddim(x, x0, k, z=None):
        a, s, a_prev, s_prev = coeffs(k)
        ab, abp = a * a, a_prev * a_prev
        sigma = eta * math.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp)) if eta else 0.0
        out = a_prev * x0 + math.sqrt(s_prev * s_prev - sigma * sigma) * (x - a * x0) / s
        return out + sigma * z if eta else out

    # the base clip: S plain DDIM steps of one window from the run's first M noise frames
    clip = noise[0, :m]
    for k in range(levels, 0, -1):
        x0 = den.predict(clip[None], sched.timesteps[levels - k], [prompt_for_window(0, m)], guidance).x0[0]
        z = torch.randn((1, *clip.shape), generator=generator)[0] if eta else None
        clip = ddim(clip, x0, k, z)
    # the queue: position p at level p + 1 holds clip frame max(0, p − (S − M)), noised; lookahead frames before it
    head = m // 2 if lookahead else 0
    fresh = torch.randn((head + levels, *noise.shape[2:]), generator=generator)
    discarded = levels - m
    frames = []
    for j in range(head):
        a, s, _, _ = coeffs(1)
        frames.append({"x": a * clip[0] + s * fresh[j], "k": 1, "video": j - head - discarded, "context": True})
    for p in range(levels):
        a, s, _, _ = coeffs(p + 1)
        frames.append({"x": a * clip[max(0, p - discarded)] + s * fresh[head + p], "k": p + 1,
                       "video": p - discarded, "context": False})
    update = m - head
    out = []
    for it in range(length + discarded):
        if lookahead:  # windows every u frames, each updating its last u frames; the last one end-aligned
            windows, w = [], 0
            while head + w * update < len(frames):
                start = min(w * update, len(frames) - m)
                windows.append((start, range(head + w * update, min(head + (w + 1) * update, len(frames)))))
                w += 1
        else:  # n partitions of M frames, each updating all of its frames
            windows = [(b * m, range(b * m, (b + 1) * m)) for b in range(partitions)]
        z = torch.randn((levels, *noise.shape[2:]), generator=generator) if eta else [None] * levels
        new_x = {}
        for start, updates in windows:
            window = frames[start : start + m]
            t = torch.tensor([float(sched.timesteps[levels - f["k"]]) for f in window])
            first = min(max(window[0]["video"], 0), length - m)
            x = torch.stack([f["x"] for f in window])[None]
            x0 = den.predict(x, t, [prompt_for_window(first, m)], guidance).x0[0]
            for q in updates:
                assert not frames[q]["context"] and q not in new_x  # each queue frame updated once per iteration
                new_x[q] = ddim(frames[q]["x"], x0[q - start], frames[q]["k"], z[q - head])
        assert sorted(new_x) == list(range(head, head + levels))
        for q, x in new_x.items():
            frames[q]["x"], frames[q]["k"] = x, frames[q]["k"] - 1
        dequeued = frames[head]  # level 0: clean
        assert dequeued["k"] == 0
        if dequeued["video"] >= 0:
            assert dequeued["video"] == len(out)
            out.append(dequeued["x"])
        if it == length + discarded - 1:
            break
        dequeued["context"] = True  # with lookahead it stays as context (given level 1), else it leaves
        dequeued["k"] = 1
        frames.pop(0)
        video = frames[-1]["video"] + 1
        tail = noise[0, video] if video < length else torch.randn(tuple(noise.shape[2:]), generator=generator)
        frames.append({"x": tail, "k": levels, "video": video, "context": False})
        assert [f["k"] for f in frames[head:]] == list(range(1, levels + 1))  # no level skipped or doubled
    return torch.stack(out)[None]  # [1, L, C, H, W]


def _fifo_run(den, length, seed=0):
    noise = torch.randn((1, length, *den.latent_shape), generator=torch.Generator().manual_seed(seed))
    return SamplingRun(denoiser=den, noise=noise, prompt_for_window=lambda s, m: min(2, int((s + m / 2) // 7)),
                       generator=torch.Generator().manual_seed(seed + 100))


@pytest.mark.parametrize("length, partitions, lookahead, eta",
                         [(13, 2, True, 0.0), (19, 1, True, 0.0), (17, 2, False, 0.0), (14, 1, True, 0.5)])
def test_fifo_equals_the_papers_queue_loop(small, length, partitions, lookahead, eta):
    run = _fifo_run(small, length)
    sampler = FIFOSampler(num_partitions=partitions, lookahead=lookahead, guidance_scale=6.0, eta=eta)
    got = sampler.sample(run)
    ref_run = _fifo_run(small, length)
    ref = fifo_oracle(small, ref_run.noise, ref_run.generator, partitions, lookahead, 6.0, ref_run.prompt_for_window,
                      eta)
    assert got.shape == (1, length, *small.latent_shape)
    assert (got - ref).abs().max().item() < 1e-5, (got - ref).abs().max()
    # both drew the same numbers from the generator, in the same order
    assert torch.equal(run.generator.get_state(), ref_run.generator.get_state())
    assert sampler.iterations == length + partitions * 13 - 13
    if partitions == 1 and not eta:  # deterministic per seed; another seed gives another video (the cheapest case)
        again = FIFOSampler(num_partitions=partitions, lookahead=lookahead).sample(_fifo_run(small, length))
        assert torch.equal(again, got)
        other = FIFOSampler(num_partitions=partitions, lookahead=lookahead).sample(_fifo_run(small, length, seed=1))
        assert (other - got).abs().max() > 1e-2


class ZeroDenoiser(Denoiser):
    """Predicts x̂0 = 0 (so ε̂ = x/s): a DDIM step maps x to (s_prev/s)·x, and a frame at sampling step i is s_i
    times the noise it entered with (clean frames are 0). Records every frame the model sees with its timestep."""

    per_frame_timesteps = True

    def __init__(self, window: int, channels: int = 32) -> None:
        self.window = window
        self.latent_shape = (channels, 1, 1)
        self.device = torch.device("cpu")
        self.calls: list[list[tuple[torch.Tensor, float]]] = []
        self.acp = torch.linspace(0.9999, 0.0, 1000, dtype=torch.float64)  # ᾱ(999) = 0: the tail is pure noise

    def schedule(self, num_steps: int) -> NoiseSchedule:
        ts = tuple(999 - round(i * 1000 / num_steps) for i in range(num_steps))
        prev = tuple(float(self.acp[t]) for t in ts[1:]) + (1.0,)  # the next timestep; clean after the last
        return NoiseSchedule.vp(self.acp, ts, prev)

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        if isinstance(t, torch.Tensor):
            ts = t.expand(x_t.shape[0], -1) if t.dim() == 1 else t  # [B, M]
            self.calls.append([(x_t[w, j].flatten(), float(ts[w, j]))
                               for w in range(x_t.shape[0]) for j in range(x_t.shape[1])])
            s = (1 - self.acp[ts.long()]).sqrt().float()[:, :, None, None, None]  # [B, M, 1, 1, 1]
        else:
            s = math.sqrt(1 - float(self.acp[int(t)]))
        return Prediction(x0=torch.zeros_like(x_t), eps=x_t / s)


@pytest.mark.parametrize("window, partitions, lookahead, length", [(5, 3, True, 9), (4, 2, True, 7), (5, 2, False, 8)])
def test_the_queue_never_skips_a_noise_level(window, partitions, lookahead, length):
    """Every frame the model sees is identified by its direction (x̂0 = 0 keeps it); its timesteps over the
    iterations must walk the schedule one step at a time, and its size must be s_i × its noise at every step."""
    den = ZeroDenoiser(window)
    sampler = FIFOSampler(num_partitions=partitions, lookahead=lookahead, guidance_scale=1.0)
    sampler.sample(_fifo_run(den, length))
    sched = den.schedule(partitions * window)
    step_of = {float(t): i for i, t in enumerate(sched.timesteps)}
    last = len(sched) - 1
    assert len(den.calls) == sampler.iterations  # one batched predict per queue iteration
    frames: list[dict] = []  # direction, steps (one per iteration seen), inputs (x, step)
    for call in den.calls:
        seen: dict[int, set[int]] = {}
        for x, t in call:
            if x.norm() < 1e-6:
                continue  # clean frames (lookahead context after the head) are zeros
            u = x / x.norm()
            n = next((n for n, f in enumerate(frames) if float(f["dir"] @ u) > 1 - 1e-5), None)
            if n is None:
                n = len(frames)
                frames.append({"dir": u, "steps": [], "inputs": []})
            seen.setdefault(n, set()).add(step_of[t])
            frames[n]["inputs"].append((x, step_of[t]))
        for n, steps in seen.items():
            assert len(steps) == 1, "a frame was given two timesteps in one iteration"
            frames[n]["steps"].append(steps.pop())
    context = [n for n, f in enumerate(frames) if len(f["steps"]) > 1 and set(f["steps"]) == {last}]
    assert len(context) <= (window // 2 if lookahead else 0)  # the initial lookahead frames: never updated
    for n, f in enumerate(frames):
        if n in context:
            continue
        assert f["steps"] == list(range(f["steps"][0], f["steps"][0] + len(f["steps"]))), f["steps"]
        eps = f["inputs"][0][0] / sched.s[f["inputs"][0][1]]  # its own noise, and s_i × it at every step
        for x, i in f["inputs"]:
            assert torch.allclose(x, sched.s[i] * eps, atol=1e-5)
    through = [f for f in frames if f["steps"][0] == 0 and f["steps"][-1] == last]
    assert len(through) >= length - window  # frames that entered as pure noise went through every level


class GaussianDataDenoiser(ZeroDenoiser):
    """The exact denoiser for data x0 ~ N(0, v·I): E[x0 | x_t] = a·v / (a²·v + s²) · x_t, frame by frame. Frames do
    not interact, so under diagonal denoising every frame must follow its own plain DDIM trajectory."""

    var = 0.3

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        if isinstance(t, torch.Tensor):
            ts = (t.expand(x_t.shape[0], -1) if t.dim() == 1 else t).long()  # [B, M]
            acp = self.acp[ts].float()[:, :, None, None, None]  # [B, M, 1, 1, 1]
        else:
            acp = torch.tensor(float(self.acp[int(t)]))
        a, s2 = acp.sqrt(), 1 - acp
        x0 = a * self.var / (acp * self.var + s2) * x_t
        return Prediction(x0=x0, eps=(x_t - a * x0) / s2.sqrt())


@pytest.mark.parametrize("lookahead", [True, False])
def test_frames_that_enter_the_tail_follow_their_own_ddim_trajectory(lookahead):
    den = GaussianDataDenoiser(window=5, channels=8)
    run = _fifo_run(den, 14)
    out = FIFOSampler(num_partitions=3, lookahead=lookahead, guidance_scale=1.0).sample(run)
    sched = den.schedule(15)
    for v in range(5, 14):  # frames past the base clip start as the run's x_T frame v at the tail
        x = run.noise[0, v]
        for i in range(len(sched)):  # plain DDIM, η = 0, over every level
            c = sched.step(i)
            x0 = den.predict(x[None, None], c.t, [0], 1.0).x0[0, 0]
            x = c.a_prev * x0 + c.s_prev * (x - c.a * x0) / c.s
        assert torch.allclose(out[0, v], x, atol=1e-6), v
    assert out[0, 5:].std() < 0.9 * run.noise[0, 5:].std()  # denoised towards the data scale (std √0.3)


def test_fifo_describes_its_cost(small):
    sampler = FIFOSampler(num_partitions=4)
    total = sampler.begin(_fifo_run(small, 49))
    info = sampler.describe()
    # 4x CogVideoX geometry: S = 52 steps, 8 windows per iteration, 88 iterations, 7 base-clip steps
    assert (info["num_steps"], info["windows_per_iteration"], info["iterations"], info["base_steps"]) == (52, 8, 88, 7)
    assert total == 95 and info["forwards_per_iteration"] == 16 and info["lookahead_frames"] == 6


# ------------------------------------------------------------------------------------------ FreeNoise
def _freenoise_reference(length: int, window: int, stride: int, perms: list[list[int]]) -> list[int]:
    """The rescheduled source of every frame from FreeNoise's rule, written out: frame v < window is itself; frame
    window + j·stride + i (i < stride) is the source of frame j·stride + perms[j][i]."""
    src = {v: v for v in range(min(window, length))}
    for j, perm in enumerate(perms):
        for i in range(stride):
            v = window + j * stride + i
            if v < length:
                src[v] = src[j * stride + perm[i]]
    return [src[v] for v in range(length)]


@pytest.mark.parametrize("length, window, stride", [(49, 13, 4), (30, 13, 4), (81, 21, 6), (13, 13, 4)])
def test_freenoise_repeats_the_first_window_as_the_formula_says(length, window, stride):
    gen = torch.Generator().manual_seed(5)
    noise = FreeNoise(stride=stride).draw((1, length, 2, 3, 3), gen, window)
    # replay the draws: the Gaussian frames, then one permutation of `stride` per block
    replay = torch.Generator().manual_seed(5)
    iid = torch.randn((1, length, 2, 3, 3), generator=replay)
    perms = [torch.randperm(stride, generator=replay).tolist() for _ in range(window, length, stride)]
    src = _freenoise_reference(length, window, stride, perms)
    for v in range(length):
        assert torch.equal(noise[0, v], iid[0, src[v]])
    assert torch.equal(gen.get_state(), replay.get_state())
    # every window of the stride grid holds each of the first window's noise frames exactly once
    for start in range(0, length - window + 1, stride):
        assert sorted(src[start : start + window]) == list(range(window))
    if length > window:  # shuffled, not a plain repeat (these seeds)
        assert any(src[v] != src[v - window] for v in range(window, length))


def test_freenoise_frames_are_standard_normal():
    noise = FreeNoise(stride=4).draw((1, 49, 16, 30, 45), torch.Generator().manual_seed(0), 13)
    per_frame = noise[0].flatten(1)  # [L, C·H·W]
    assert (per_frame.mean(1).abs() < 0.02).all()  # 21600 samples per frame: std of the mean 0.0068
    assert ((per_frame.var(1) - 1).abs() < 0.04).all()  # std of the variance ≈ 0.0096
    assert torch.equal(GaussianNoise().draw((1, 5, 2, 2, 2), torch.Generator().manual_seed(3), 13),
                       torch.randn((1, 5, 2, 2, 2), generator=torch.Generator().manual_seed(3)))


def test_freenoise_order_edge_cases_and_checks():
    assert reschedule_order(5, 13, 4, torch.Generator()) == [0, 1, 2, 3, 4]  # shorter than a window: untouched
    with pytest.raises(UsageError, match="noise.stride=14 is longer than the noise window"):
        FreeNoise(stride=14).check(13)
    with pytest.raises(UsageError, match="noise.stride"):
        FreeNoise(stride=0)


def test_the_noise_choice_is_checked_early_and_decides_resumes(tmp_path):
    from hydra import compose, initialize_config_module

    from longgen.run.checkpoint import Checkpoint, result_config
    from longgen.run.stages import initial_noise
    from longgen.run.job import plan_job
    from longgen.samplers.base import SamplerState

    with initialize_config_module("longgen.conf", version_base="1.3"):
        plain = compose("generate", overrides=["backbone=tiny", "prompt=a cat", "num_windows=3"])
        free = compose("generate", overrides=["backbone=tiny", "prompt=a cat", "num_windows=3", "noise=freenoise"])
        bad = compose("generate", overrides=["backbone=tiny", "prompt=a cat", "noise=freenoise", "noise.stride=14"])
    # the checkpoint's result-determining config holds the noise choice: a resume with another one is refused
    a, b = result_config(plain), result_config(free)
    assert a["noise"]["_target_"] == "longgen.noise.GaussianNoise" and b["noise"]["stride"] == 4
    ckpt = Checkpoint(SamplerState({"x": torch.zeros(1)}), 1, torch.zeros(1, dtype=torch.uint8), a, "s")
    with pytest.raises(UsageError, match=r"noise\._target_"):
        ckpt.check_matches(b, "s", tmp_path / "checkpoint.safetensors")
    # plan stage: a stride longer than the window is one line before any weights load
    with pytest.raises(UsageError, match="noise.stride=14"):
        plan_job(bad, tmp_path, {"noise": "freenoise"})
    # generate's x_T: gaussian is the seed's plain draw, freenoise its rescheduling
    job = plan_job(free, tmp_path, {"noise": "freenoise"})
    noise, _ = initial_noise(job)
    iid = torch.randn((1, 21, *job.backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise[:, :13], iid[:, :13]) and not torch.equal(noise, iid)
    job.noise = GaussianNoise()
    assert torch.equal(initial_noise(job)[0], iid)

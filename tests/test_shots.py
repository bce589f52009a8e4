"""Multi-shot scenes (longgen/run/shots.py) and cross-shot attention (longgen/backbones/shot_attention.py).

- the plan: takes between cuts partition the latent, every sampler's windows stay inside their take, the shot map's
  latent and video ranges partition the video (frames_for per take);
- shot prompts: "Character ID" replaced by the description, environment and story appended;
- cuts are scene changes: with a stand-in model whose estimate never changes within a window, the latents and the
  decoded frames jump at the cuts and nowhere else as much;
- cross-shot attention off ≡ every take sampled alone by the plain sampler from its own seed, bit for bit (GLC,
  whose shifts, re-initialisation and ABAM draw from the generator); on: the reference take is unchanged, the others
  change and depend on the reference shot; the attention of one layer equals softmax attention over the
  concatenated own + reference tokens written out here (CogVideoX joint attention, Wan self-attention with RoPE);
- through the CLI: the manifest's shot map matches the video's frames; bad shot options are one line.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from longgen.denoiser import Denoiser, Prediction
from longgen.diffusion import eps_from_x0
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import GLCSampler
from longgen.samplers.syncos import SynCoSSampler
from longgen.run.shots import ShotOptions, ShotsSampler, decode_takes, plan_shots, shot_prompts
from longgen.story import Story

from cli_helpers import error_lines, run_cli
from conftest import make_tiny

SCENE = {
    "characters": {"1": "a tall woman in a green raincoat", "2": "an old fisherman"},
    "environment": "a rainy harbour at dusk",
    "story": "she waits for a ferry",
    "shots": ["Wide shot: Character 1 stands at the pier.", "[SHOT CUT] Character 2 lights a pipe.",
              "Character 2 smiles at Character 1.", "[SHOT CUT] Close-up: Character 1 waves."],
}
#: one transformer token per latent frame and windows of 5 latent frames at stride 2: runs and decodes stay cheap
SMALL = {"height": 16, "width": 16, "num_frames": 17, "stride": 2}
CLI_SMALL = [f"backbone.{k}={v}" for k, v in SMALL.items()]


@pytest.fixture(scope="module")
def tiny16():
    return make_tiny(prompts=("shot a", "shot b", "shot c", "shot d"), **SMALL)


def _plan(story, options, sampler, frames_for=lambda n: 4 * (n - 1) + 1, length=49, seed=0, window=13):
    return plan_shots(story, options, window, sampler.stride, length, seed, sampler.plan, frames_for)


def _small(story, options, sampler, backbone, seed=0):
    """A plan on the small tiny backbone (windows of 5)."""
    return _plan(story, options, sampler, backbone.frames_for, length=9, seed=seed, window=backbone.window)


# ---------------------------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("sampler", [DirectSampler(), GenLVideoSampler(), SynCoSSampler(), GLCSampler()],
                         ids=["direct", "gen-l-video", "syncos", "glc"])
@pytest.mark.parametrize("options", [ShotOptions(), ShotOptions(windows=(1, 2, 1, 3)), ShotOptions(windows=2)],
                         ids=["durations", "windows-list", "windows-all"])
def test_windows_stay_inside_their_take_and_the_shot_map_partitions_the_video(sampler, options):
    direct = isinstance(sampler, DirectSampler)  # one window per take: a take can show only one shot
    shots = [*SCENE["shots"][:2], "[SHOT CUT] " + SCENE["shots"][2], SCENE["shots"][3]] if direct else SCENE["shots"]
    story = Story.from_dict({**SCENE, "shots": shots, "durations": [1, 2, 1, 1]})
    plan = _plan(story, options, sampler)
    takes = [(0,), (1,), (2,), (3,)] if direct else [(0,), (1, 2), (3,)]
    assert [t.shots for t in plan.takes] == takes  # a take per cut
    edges = [0]
    for take in plan.takes:
        assert take.start == edges[-1] and (take.length - 13) % 4 == 0  # on the window grid: decodable alone
        edges.append(take.end)
        for w in [w for w in plan.window_map() if w["take"] == take.index]:
            assert take.start <= w["start"] < w["end"] <= take.end  # no window spans a cut
            assert w["local_prompt"] in take.shots
    assert edges[-1] == plan.length
    if isinstance(options.windows, tuple) and not direct:  # shots of n_1 + n_2 windows: M + S·(n − 1) frames
        assert [t.length for t in plan.takes] == [13, 13 + 4 * 2, 13 + 4 * 2]
    shots = plan.shot_map()
    assert [s["shot"] for s in shots] == [1, 2, 3, 4] and [s["cut"] for s in shots] == [False, True, direct, True]
    latent = [r for s in shots for r in s["latent_frames"]]
    video = [r for s in shots for r in s["video_frames"]]
    assert latent[0] == 0 and latent[-1] == plan.length and all(a == b for a, b in zip(latent[1:-1:2], latent[2::2]))
    assert video[0] == 0 and video[-1] == plan.frames and all(a == b for a, b in zip(video[1:-1:2], video[2::2]))
    assert plan.frames == sum(4 * (t.length - 1) + 1 for t in plan.takes)  # each take decodes on its own
    assert plan.takes[0].seed == 0 and len({t.seed for t in plan.takes}) == len(takes)  # independent noise per take


def test_durations_share_the_length_and_shots_without_a_window_are_refused():
    story = Story.from_dict({**SCENE, "durations": [1, 2, 1, 1]})
    plan = _plan(story, ShotOptions(), GenLVideoSampler(), length=61)
    assert [t.length for t in plan.takes] == [13, 37, 13]  # 61 · (1, 3, 1) / 5 → nearest lengths on the grid
    with pytest.raises(UsageError, match=r"shot\(s\) 2 get no window"):  # direct: one window for shots 2 and 3
        _plan(story, ShotOptions(windows=1), DirectSampler())


def test_shot_prompts_substitute_characters_and_carry_the_scene():
    story = Story.from_dict(SCENE)
    prompts = shot_prompts(story)
    assert prompts[0] == ("Wide shot: a tall woman in a green raincoat stands at the pier. A rainy harbour at dusk. "
                          "She waits for a ferry.")
    assert prompts[2].startswith("An old fisherman smiles at a tall woman in a green raincoat.")
    assert not any("Character" in p for p in prompts)
    assert shot_prompts(story, scene=False)[3] == "Close-up: a tall woman in a green raincoat waves."


# ---------------------------------------------------------------------------------------------------- cuts
class _Smooth(Denoiser):
    """A stand-in model whose clean estimate of a window is the window's mean frame at every frame: within a window
    nothing changes, so any change in its videos comes from where the windows are."""

    def __init__(self, backbone, steps):
        self.backbone, self.window, self.latent_shape = backbone, backbone.window, backbone.latent_shape
        self.device = backbone.device
        self._sched = backbone.schedule(steps)

    def schedule(self, num_steps):
        return self.backbone.schedule(num_steps)

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        x0 = x_t.mean(dim=1, keepdim=True).expand_as(x_t).contiguous()  # [B, M, C, H, W]
        a, s = self._sched.coeffs(t)
        return Prediction(x0, eps_from_x0(x_t, x0, a, s))


def test_cuts_are_the_scene_changes_of_latents_and_frames(tiny16):
    story = Story.from_dict(SCENE)
    inner = GenLVideoSampler(num_steps=4, stride=2)
    plan = _small(story, ShotOptions(windows=2), inner, tiny16)
    den = _Smooth(tiny16, 4)
    run = SamplingRun(den, torch.zeros(1, plan.length, *den.latent_shape), lambda s, m: 0, torch.Generator())
    z = ShotsSampler(inner, plan, ShotOptions(windows=2)).sample(run)  # [1, L, C, H, W]
    moves = (z[0, 1:] - z[0, :-1]).abs().flatten(1).mean(1)  # transition b−1 → b at index b−1
    cuts = [t.start for t in plan.takes[1:]]
    inside = [m for b, m in enumerate(moves.tolist(), 1) if b not in cuts]
    assert min(moves[b - 1] for b in cuts) > 3 * max(inside)
    frames = np.concatenate(list(decode_takes(tiny16, z, plan))).astype(np.float64)  # [T, H, W, 3]
    assert len(frames) == plan.frames
    jumps = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))  # pair (p, p+1) at index p
    cut_pairs = [plan.video_offset(t) - 1 for t in plan.takes[1:]]
    assert sorted(np.argsort(jumps)[-len(cut_pairs):].tolist()) == cut_pairs  # the largest changes are the cuts
    assert jumps[cut_pairs].min() > 2 * np.delete(jumps, cut_pairs).max()  # (the VAE's first blocks move too)


# ---------------------------------------------------------------------------------------------------- joint sampling
def _alone(backbone, sampler, take, prompt_id):
    """A take sampled as a video of its own by the plain sampler, the way generate draws noise from a seed."""
    gen = torch.Generator().manual_seed(take.seed)
    noise = torch.randn((1, take.length, *backbone.latent_shape), generator=gen)
    run = SamplingRun(backbone, noise, lambda s, m: prompt_id, gen, prompt_ids={"global": prompt_id})
    return sampler.sample(run)


def _scene_run(backbone, plan, ids):
    def prompt_for_window(start, size):
        return ids[plan.shot_at(start + size / 2)]

    return SamplingRun(backbone, torch.zeros(1, plan.length, *backbone.latent_shape), prompt_for_window,
                       torch.Generator().manual_seed(123), prompt_ids={"global": ids[0]})


TWO = Story.from_dict({"shots": ["a fox", "[SHOT CUT] a fox again"]})


def test_cross_attention_off_is_every_take_alone_bit_for_bit(tiny16):
    make = lambda: GLCSampler(num_steps=3, stride=2, vmcr_source="affine")  # noqa: E731  shifts, re-init, ABAM
    opts = ShotOptions(windows=(3, 1))
    plan = _small(TWO, opts, make(), tiny16, seed=5)
    z = ShotsSampler(make(), plan, opts).sample(_scene_run(tiny16, plan, [0, 1]))
    for take, pid in zip(plan.takes, [0, 1]):
        assert torch.equal(z[:, take.start : take.end], _alone(tiny16, make(), take, pid))


def test_cross_attention_on_changes_the_other_takes_from_the_reference(tiny16):
    make = lambda: GenLVideoSampler(num_steps=3, stride=2)  # noqa: E731
    on = ShotOptions(windows=(1, 2), cross_attention=0.5, reference=1)
    plan = _small(TWO, on, make(), tiny16)
    ref, other = plan.takes
    z = ShotsSampler(make(), plan, on).sample(_scene_run(tiny16, plan, [0, 1]))
    assert torch.equal(z[:, : ref.end], _alone(tiny16, make(), ref, 0))  # the reference is sampled as alone
    alone = _alone(tiny16, make(), other, 1)
    assert not torch.equal(z[:, other.start :], alone)  # the other take sees the reference
    # it depends on the reference shot: another reference prompt changes the other take, the same one does not
    z2 = ShotsSampler(make(), plan, on).sample(_scene_run(tiny16, plan, [2, 1]))
    assert not torch.equal(z2[:, other.start :], z[:, other.start :])
    assert torch.equal(ShotsSampler(make(), plan, on).sample(_scene_run(tiny16, plan, [0, 1])), z)
    # the share of reference tokens is a strength: the change from "alone" grows with it
    full = ShotOptions(windows=(1, 2), cross_attention=1.0, reference=1)
    z_full = ShotsSampler(make(), plan, full).sample(_scene_run(tiny16, plan, [0, 1]))
    weak = ShotOptions(windows=(1, 2), cross_attention=0.05, reference=1)
    z_weak = ShotsSampler(make(), plan, weak).sample(_scene_run(tiny16, plan, [0, 1]))
    change = lambda x: float((x[:, other.start :] - alone).abs().mean())  # noqa: E731
    assert 0 < change(z_weak) < change(z_full)


def test_glc_abam_and_cross_attention_together_are_refused():
    opts = ShotOptions(windows=1, cross_attention=0.5)
    plan = _plan(TWO, opts, GLCSampler())
    with pytest.raises(UsageError, match="sampler.abam=false"):
        ShotsSampler(GLCSampler(), plan, opts)



def test_fifo_takes_of_different_lengths_are_one_line_when_the_run_is_planned(tmp_path):
    """FIFO's step count is its video's length (one queue iteration per latent frame) and all takes step through
    one loop: takes of different lengths are refused when the run is planned (they once crashed after the weights
    loaded with a traceback, leaving generate.log and story.json); equal takes plan."""
    from longgen.samplers.fifo import FIFOSampler

    uneven = _plan(TWO, ShotOptions(windows=(1, 2)), FIFOSampler())
    with pytest.raises(UsageError, match=r"sampler=fifo .*\(13, 17 latent frames\).*shots.windows"):
        ShotsSampler(FIFOSampler(), uneven, ShotOptions(windows=(1, 2)))
    ShotsSampler(FIFOSampler(), _plan(TWO, ShotOptions(windows=2), FIFOSampler()), ShotOptions(windows=2))
    story = tmp_path / "scene.json"
    story.write_text(json.dumps(SCENE))
    with pytest.raises(UsageError, match="sampler=fifo"):
        _plan_job([f"story={story}", "sampler=fifo", "num_windows=6"], tmp_path / "run")


@pytest.mark.parametrize("name", ["freelong", "ditctrl"])
def test_attention_sharing_samplers_with_cross_shot_attention_are_refused_when_planned(name):
    """FreeLong's spectral blend and DiTCtrl's KV sharing install attention layers of their own, which cross-shot
    attention cannot run inside: they were refused only at the first step, after the weights had loaded."""
    from longgen.samplers.ditctrl import DiTCtrlSampler
    from longgen.samplers.freelong import FreeLongSampler

    inner = {"freelong": FreeLongSampler, "ditctrl": DiTCtrlSampler}[name]()
    opts = ShotOptions(windows=2, cross_attention=0.5)
    with pytest.raises(UsageError, match=r"^shots.cross_attention and .* both replace the attention layers"):
        ShotsSampler(inner, _plan(TWO, opts, inner), opts)
    alone = ShotOptions(windows=2)
    ShotsSampler(inner, _plan(TWO, alone, inner), alone)  # without cross-shot attention they plan
    one = Story.from_dict({"shots": ["a fox"]})  # one take: no other take to attend to, nothing to refuse
    ShotsSampler(inner, _plan(one, opts, inner), opts)

def test_fifo_with_cross_shot_attention_is_one_line_when_the_run_is_planned():
    """Cross-shot attention captures the reference window at each DDIM step's t; FIFO's steps are queue iterations
    with every frame at its own level: together they crashed (TypeError from the scheduler, on every backbone)
    after generate.log and story.json were written. Without cross-shot attention equal takes still plan."""
    from longgen.samplers.fifo import FIFOSampler

    opts = ShotOptions(windows=2, cross_attention=0.5)
    with pytest.raises(UsageError, match=r"^sampler=fifo runs one queue iteration .*shots.cross_attention=0"):
        ShotsSampler(FIFOSampler(), _plan(TWO, opts, FIFOSampler()), opts)

# ---------------------------------------------------------------------------------------------------- one layer
def _kept(tokens, share):
    n = max(1, math.ceil(share * tokens))
    return [j * tokens // n for j in range(n)]


def _softmax_attention(q, k, v):
    """[b, heads, n, d] queries against [b, heads, m, d] keys → [b, heads, n, d], written out."""
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_cogvideox_layer_attends_to_own_and_reference_tokens(tiny16, share):
    """Guided: rows [unconditional, conditional] each attend to their own branch's reference tokens."""
    from longgen.backbones.shot_attention import ShotLayout, cogvideox_shot

    attn = tiny16.pipe.transformer.transformer_blocks[0].attn1
    g = torch.Generator().manual_seed(0)
    d, n_text, n_video = attn.to_q.in_features, 5, 12
    text, video = torch.randn(2, n_text, d, generator=g), torch.randn(2, n_video, d, generator=g)  # rows: branches
    ref_text, ref_video = torch.randn(2, n_text, d, generator=g), torch.randn(2, n_video, d, generator=g)
    layout = ShotLayout(share, guided=True)
    proc = cogvideox_shot()(layout, 0, attn.processor)
    with torch.no_grad():
        layout.phases(2)
        with layout.capturing():
            for row in (1, 0):  # one call per row, in any order
                with layout.running([row]):
                    proc(attn, ref_video[row : row + 1], ref_text[row : row + 1])
        with layout.sharing(), layout.running([0, 1]):
            got_video, got_text = proc(attn, video, text)

        def heads(x):  # [b, n, D] → [b, heads, n, hd]
            return x.reshape(x.shape[0], x.shape[1], attn.heads, -1).transpose(1, 2)

        def qkv(tokens):
            q, k, v = heads(attn.to_q(tokens)), heads(attn.to_k(tokens)), heads(attn.to_v(tokens))
            return attn.norm_q(q), attn.norm_k(k), v

        q, k, v = qkv(torch.cat([text, video], 1))
        _, k_ref, v_ref = qkv(torch.cat([ref_text, ref_video], 1))  # row b: branch b's reference
        keep = [n_text + i for i in _kept(n_video, share)]  # reference video tokens only
        out = _softmax_attention(q, torch.cat([k, k_ref[:, :, keep]], 2), torch.cat([v, v_ref[:, :, keep]], 2))
        out = attn.to_out[0](out.transpose(1, 2).reshape(2, n_text + n_video, -1))
    torch.testing.assert_close(got_video, out[:, n_text:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_text, out[:, :n_text], atol=1e-5, rtol=1e-5)


def test_wan_layer_attends_to_own_and_reference_tokens_with_their_rope():
    from test_wan import make_tiny_wan

    from longgen.backbones.shot_attention import ShotLayout, WanShotAttnProcessor

    wan = make_tiny_wan()
    model = wan.pipe.transformer
    attn = model.blocks[0].attn1
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 3, 4, 4, generator=g)  # [b, C, F, H, W]: 3·2·2 = 12 tokens
    cos, sin = model.rope(latents)  # the model's own tables, [1, N, 1, hd]
    d = attn.to_q.in_features
    own, ref = torch.randn(1, 12, d, generator=g), torch.randn(1, 12, d, generator=g)
    layout = ShotLayout(0.5, guided=False)
    proc = WanShotAttnProcessor(layout, 0, attn.processor)
    with torch.no_grad():
        layout.phases(1)
        with layout.capturing(), layout.running([0]):
            proc(attn, ref, rotary_emb=(cos, sin))
        with layout.sharing(), layout.running([0]):
            got = proc(attn, own, rotary_emb=(cos, sin))

        def rotate(x):  # [1, N, heads, hd]: pairs (2i, 2i+1) rotated by the angle in cos/sin[..., 2i]
            c, s = cos[..., 0::2], sin[..., 0::2]
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)

        def qkv(tokens):
            split = lambda t: t.unflatten(2, (attn.heads, -1))  # noqa: E731
            q = rotate(split(attn.norm_q(attn.to_q(tokens))))
            k = rotate(split(attn.norm_k(attn.to_k(tokens))))
            return q, k, split(attn.to_v(tokens))

        q, k, v = qkv(own)
        _, k_ref, v_ref = qkv(ref)
        keep = _kept(12, 0.5)
        k_all = torch.cat([k, k_ref[:, keep]], 1).transpose(1, 2)  # [1, heads, 12 + 6, hd]
        v_all = torch.cat([v, v_ref[:, keep]], 1).transpose(1, 2)
        out = _softmax_attention(q.transpose(1, 2), k_all, v_all).transpose(1, 2).flatten(2)
        out = attn.to_out[0](out)
    torch.testing.assert_close(got, out, atol=1e-5, rtol=1e-5)
    # off: the layer is the stock one
    with torch.no_grad():
        layout.phases(1)
        torch.testing.assert_close(proc(attn, own, rotary_emb=(cos, sin)),
                                   attn.processor(attn, own, None, None, (cos, sin)), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------- the CLI
def test_generate_writes_a_shot_map_that_matches_the_video(tmp_path, tiny16):
    story = tmp_path / "scene.json"
    story.write_text(json.dumps(SCENE))
    out = tmp_path / "run"
    proc = run_cli("generate", "backbone=tiny", *CLI_SMALL, "sampler=gen-l-video", "sampler.num_steps=2", f"story={story}", "shots.windows=[1,1,2,1]", "shots.cross_attention=0.5",
                   "shots.reference=4", "save_latents=true", "writer.crf=0", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    from longgen.eval.inputs import read_video

    frames, _ = read_video(out / "video.mp4")
    assert len(frames) == manifest["frames"] == manifest["takes"][-1]["video_frames"][1]
    assert [s["take"] for s in manifest["shots"]] == [0, 1, 1, 2] and manifest["sampler"]["reference_shot"] == 4
    assert json.loads((out / "story.json").read_text())["shots"][1] == {"prompt": "Character 2 lights a pipe.",
                                                                       "cut": True}
    from safetensors.torch import load_file

    z = load_file(out / "latents.safetensors")["latents"]  # [L, C, H, W]
    assert z.shape[0] == manifest["latent_length"]
    decoded = [np.concatenate(list(tiny16.decode_stream(z[None, slice(*t["latent_frames"])]))).astype(float)
               for t in manifest["takes"]]  # each take decoded alone
    for i, take in enumerate(manifest["takes"]):  # its video range holds exactly that
        f0, f1 = take["video_frames"]
        assert len(decoded[i]) == f1 - f0
        error = [np.abs(frames[f0 : f0 + min(f1 - f0, len(d))].astype(float) - d[: f1 - f0]).mean() for d in decoded]
        assert error[i] < 8.0  # codec tolerance: noise-like 16×16 colour through yuv420p (crf 0)
        assert all(e > 2 * error[i] for j, e in enumerate(error) if j != i)  # and no other take's frames


def _plan_job(overrides, tmp_path):
    from longgen.run.job import plan_job

    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["backbone=tiny", *overrides], return_hydra_config=True)
    return plan_job(cfg, tmp_path, dict(cfg.hydra.runtime.choices))


def test_bad_shot_options_are_one_line(tmp_path):
    story = tmp_path / "scene.json"
    story.write_text(json.dumps(SCENE))
    cases = [
        ([f"story={story}", "shots.windows=[1,2]"], "shots.windows has 2 values but the story has 4 shots"),
        ([f"story={story}", "shots.reference=9"], "shots.reference=9 but the story has 4 shots"),
        ([f"story={story}", "shots.windows=1", "num_windows=3"], "drop num_windows"),
        ([f"story={story}", "sampler=glc", "shots.cross_attention=0.5"], "sampler.abam=false"),
        ([f"story={story}", "shots.cross_attention=1.5"], "shots.cross_attention=1.5 must be a finite number"),
        (["prompt=a cat", "shots.cross_attention=0.5"], "apply to multi-shot stories"),
    ]
    for overrides, message in cases:
        with pytest.raises(UsageError, match=message):
            _plan_job(overrides, tmp_path)
    proc = run_cli("generate", "backbone=tiny", f"story={story}", "shots.windows=[1,2]", f"hydra.run.dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1 and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------- splitters
HARBOUR = ("A tall woman in a green raincoat waits at a rainy harbour at dusk. She looks at the sea. "
           "Then she waves at the ferry.")


def test_offline_splitter_writes_shots_naming_the_subject_as_a_character(tmp_path):
    from longgen.splitters.offline import OfflineSplitter

    story = OfflineSplitter().split_shots(HARBOUR, 3)
    assert story.multi_shot and story.characters == {"1": "a tall woman in a green raincoat"}
    assert [s.cut for s in story.shots] == [False, True, True]
    assert all(s.prompt.startswith("Character 1 ") for s in story.shots)
    assert shot_prompts(story)[2] == "A tall woman in a green raincoat waves at the ferry. At a rainy harbour at dusk."
    # generate splits a scenario into shots with multi_shot=true
    scenario = tmp_path / "harbour.txt"
    scenario.write_text(HARBOUR)
    job = _plan_job([f"scenario={scenario}", "num_prompts=2", "multi_shot=true", "splitter=offline",
                     "sampler=gen-l-video"], tmp_path)
    assert job.shots is not None and len(job.given_story.shots) == 2


def test_llm_splitter_asks_for_shots_and_reads_them(monkeypatch, tmp_path):
    from llm_server import ScriptedLLM

    from longgen.splitters.llm import LLMSplitter

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    two = json.dumps({"characters": [{"id": "1", "description": "a tall woman"}], "environment": "a harbour",
                      "story": "she waits", "shots": ["Wide shot: Character 1 waits.", "[SHOT CUT] Character 1 waves."]})
    three = json.dumps({"characters": {"1": "a tall woman"}, "environment": "a harbour", "story": "she waits",
                        "shots": ["Wide shot: Character 1 waits.", "Character 1 looks at the sea.",
                                  "[SHOT CUT] Close-up: Character 1 waves."]})
    with ScriptedLLM([("answer", two), ("answer", three)]) as server:
        splitter = LLMSplitter(model="m", base_url=server.url, timeout=5.0, max_retries=0, backoff=0.0, cache=False)
        story = splitter.split_shots(HARBOUR, 3)
    first, retry = server.requests
    assert "Character ID" in first["messages"][0]["content"] and "exactly 3" in first["messages"][0]["content"]
    assert first["response_format"]["json_schema"]["name"] == "multi_shot_scene"
    assert '"shots" must hold exactly 3' in retry["messages"][-1]["content"]  # the problem fed back once
    assert story.characters == {"1": "a tall woman"} and [s.cut for s in story.shots] == [False, False, True]
    assert story.source["form"] == "multi-shot" and story.source["template"] == "template_multi_shot.txt"
    assert not splitter._shots  # the events form is back afterwards


def test_cross_attention_keeps_one_compiled_graph_for_all_blocks():
    """Compiled blocks with cross-shot attention: one graph per mode and call shape, shared by every block (one
    processor object for all layers, the keys/values through the opaque `shot_kv` op, which counts the layers). A
    processor per layer closing over its index makes Dynamo compile each block apart, up to its recompile limit."""
    from torch._dynamo.testing import CompileCounter

    den = make_tiny(prompts=("a cat", "a dog runs"), **{"architecture.transformer.num_layers": 6})
    counter = CompileCounter()
    torch._dynamo.reset()
    x = torch.randn(2, den.window, *den.latent_shape, generator=torch.Generator().manual_seed(0))

    def scene():
        with den.shot_attention(0.5, guided=True) as layout:
            with layout.capturing():
                den.predict(x[:1], 500, [0], 6.0)
            with layout.sharing():
                return den.predict(x, 500, [1, 1], 6.0).x0

    try:
        for block in den._blocks():
            block.compile(backend=counter, dynamic=False)
        compiled = scene()
        # capture (its own call per row: 1 row) and share (one call of 4 rows), and the first block's input has
        # other strides than the later blocks': a handful of graphs whatever the number of blocks
        assert counter.frame_count <= 4, counter.frame_count
        for block in den._blocks():
            block._compiled_call_impl = None  # back to eager for the reference
        eager = scene()
        assert (compiled - eager).abs().max() <= 1e-5
    finally:
        torch._dynamo.reset()


def test_shot_kv_op_agrees_with_its_shape_function():
    """The op's outputs have the shapes and layouts its fake function promises the compiler, for CogVideoX's strided
    [b, heads, N, hd] views: copies laid out as the inputs while capturing, N + n tokens while sharing, with the
    branch's kept reference tokens appended and layers counted per transformer call."""
    from longgen.backbones.shot_attention import ShotLayout, shot_kv

    gen = torch.Generator().manual_seed(0)
    key = torch.randn(2, 6, 3, 4, generator=gen).transpose(1, 2)  # [b, heads, N=6, hd], not contiguous
    value = torch.randn(2, 6, 3, 4, generator=gen).transpose(1, 2)
    layout = ShotLayout(0.5, guided=True)
    layout.phases(2)
    with layout.capturing():
        for row in (0, 1):
            with layout.running([row]):
                for layer in range(3):  # each layer keeps a different reference
                    k0, v0 = shot_kv(key[row : row + 1] + layer, value[row : row + 1] - layer, 2, 0)
                    assert torch.equal(k0, key[row : row + 1] + layer) and k0.stride() == key[row : row + 1].stride()
    keep = _kept(6, 0.5)  # 3 tokens
    with layout.sharing(), layout.running([0, 1]):
        for layer in range(3):
            k, v = shot_kv(key, value, 2, len(keep))
            assert k.shape == (2, 3, 6 + 3, 4) and k.is_contiguous()
            for row in (0, 1):  # each row gets its own branch's reference of this layer
                assert torch.equal(k[row, :, 6:], key[row, :, keep] + layer)
                assert torch.equal(v[row, :, 6:], value[row, :, keep] - layer)
                assert torch.equal(k[row, :, :6], key[row])
    with layout.sharing(), layout.running([0, 1]):
        torch.library.opcheck(shot_kv, (key, value, 2, len(keep)), test_utils=("test_schema", "test_faketensor"))

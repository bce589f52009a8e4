"""SynCoS (arXiv 2503.08605) pinned to public oracles and metamorphic properties, on the tiny random CogVideoX:

- the CSD kernel mixing against the published formula written out here with Python loops (float64);
- Gen-L-Video (itself pinned to diffusers' scheduler in test_oracles.py) whenever stage 2 changes nothing;
- diffusers' CogVideoXPipeline for one window;
- an independent loop for the `fresh` baseline noise with no optimisation;
- the optimiser really descends the score residual (and a flipped gradient does not);
- seeds, guards, forward counts, the CLI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from longgen.errors import UsageError
from longgen.samplers import syncos
from longgen.samplers.base import SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.syncos import SynCoSSampler, csd_mix, rbf_gamma
from longgen.story import Story

from conftest import REPO, make_tiny

L3 = 21  # 3 windows of 13 at stride 4


@pytest.fixture(scope="module")
def tiny2():
    return make_tiny(prompts=("a cat", "a dog runs"))


def _noise(length, shape, seed=0):
    return torch.randn((1, length, *shape), generator=torch.Generator().manual_seed(seed))


def _run(backbone, noise, seed=1):
    length = noise.shape[1]

    def prompt_for_window(start, size):
        return 0 if start + size / 2 < length / 2 else 1

    return SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=prompt_for_window,
                       generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ kernel oracle
def _published_csd(x, r):
    """CSD's mixing written from the formula (methods.md), loops over windows, float64:
    d2_ij = ||x_i - x_j||^2, gamma = log(B+1) / median(d2) (lower median of all B*B entries, zero diagonal
    included), K_ij = exp(-gamma d2_ij), g_i = (sum_j K_ji r_j + sum_j 2 gamma K_ij (x_j - x_i)) / B."""
    b = len(x)
    xs = [xi.reshape(-1).double() for xi in x]
    rs = [ri.reshape(-1).double() for ri in r]
    d2 = [[float(((xs[i] - xs[j]) ** 2).sum()) for j in range(b)] for i in range(b)]
    flat = sorted(v for row in d2 for v in row)
    med = flat[(len(flat) - 1) // 2]
    gamma = math.log(b + 1) / med
    k = [[math.exp(-gamma * d2[i][j]) for j in range(b)] for i in range(b)]
    out = []
    for i in range(b):
        g = torch.zeros_like(xs[i])
        for j in range(b):
            g += k[j][i] * rs[j]
            g += 2 * gamma * k[i][j] * (xs[j] - xs[i])
        out.append((g / b).reshape(x[i].shape))
    return torch.stack(out), gamma


@pytest.mark.parametrize("b", [3, 4, 5, 6])
def test_csd_mix_matches_published_formula(b):
    gen = torch.Generator().manual_seed(b)
    # windows at distances comparable to the bandwidth so every kernel entry and the repulsion matter
    x = torch.randn((b, 3, 2, 4, 4), generator=gen, dtype=torch.float64) * 0.3
    r = torch.randn((b, 3, 2, 4, 4), generator=gen, dtype=torch.float64)
    expected, gamma = _published_csd(x, r)
    d2 = torch.cdist(x.reshape(b, -1)[None], x.reshape(b, -1)[None])[0] ** 2
    assert abs(float(rbf_gamma(d2)) - gamma) <= 1e-9 * gamma
    got = csd_mix(x, r, "rbf")
    assert got.shape == r.shape
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    # both terms matter: dropping the repulsion or the mixing is far from the formula
    assert (got - csd_mix(x, torch.zeros_like(r), "rbf") - r / b).abs().max() > 1e-3
    assert (csd_mix(x, torch.zeros_like(r), "rbf")).abs().max() > 1e-3


def test_csd_repulsion_pushes_windows_apart():
    # three windows on a line at -1, 0, 1 with zero residual: a descent step x - lr*g must spread them
    u = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u / u.norm()
    x = torch.stack([-u, torch.zeros_like(u), u])
    g = csd_mix(x, torch.zeros_like(x), "rbf")
    assert float((g[0] * u).sum()) > 0 and float((g[2] * u).sum()) < 0  # outer windows pushed outwards
    assert abs(float((g[1] * u).sum())) < 1e-12  # the middle one is balanced
    step = x - 0.1 * g
    assert (step[2] - step[0]).norm() > (x[2] - x[0]).norm()


def test_csd_kernel_guards():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 5), generator=gen, dtype=torch.float64)
    r = torch.randn((2, 5), generator=gen, dtype=torch.float64)
    d2 = torch.cdist(x[None], x[None])[0] ** 2
    # the unguarded formula is NaN at B=2: the lower median of [0, 0, d, d] is 0
    med = d2.reshape(-1).median()
    assert float(med) == 0.0
    assert torch.isnan(torch.exp(-(math.log(3) / med) * d2)).any()
    gamma = float(rbf_gamma(d2))
    assert math.isclose(gamma, math.log(3) / float(d2[0, 1]), rel_tol=1e-12)  # off-diagonal median
    g = csd_mix(x, r, "rbf")
    assert torch.isfinite(g).all()
    k = math.exp(-gamma * float(d2[0, 1]))
    assert torch.allclose(g[0], (r[0] + k * r[1] + 2 * gamma * k * (x[1] - x[0])) / 2)
    # B = 1: the residual itself
    assert torch.equal(csd_mix(x[:1], r[:1], "rbf"), r[:1])
    # coincident windows: gamma = 0, K = 1 everywhere, no repulsion -> the mean residual for every window
    same = x[:1].expand(3, -1)
    r3 = torch.randn((3, 5), generator=gen, dtype=torch.float64)
    g3 = csd_mix(same, r3, "rbf")
    assert torch.allclose(g3, r3.mean(0, keepdim=True).expand(3, -1))
    # kernel=none: independent windows
    assert torch.equal(csd_mix(x, r, "none"), r / 2)


# ------------------------------------------------------------------------------------------ metamorphic
@pytest.mark.parametrize(
    "overrides",
    [
        dict(iters=0, base_noise="ddim", t_min=0),       # stage 2 at every step, but no iteration
        dict(t_min=999, base_noise="ddim"),
        dict(t_min=999, base_noise="fresh"),             # never active: no baseline noise is drawn
        dict(stage2=False, base_noise="ddim"),
        dict(stage2=False, base_noise="fresh"),
        dict(stage2=False, eta=0.5),                     # eta > 0 draws the same noise as Gen-L-Video
    ],
)
def test_equals_gen_l_video_when_stage2_changes_nothing(tiny2, overrides):
    noise = _noise(L3, tiny2.latent_shape, seed=3)
    eta = overrides.get("eta", 0.0)
    reference = GenLVideoSampler(num_steps=4, eta=eta).sample(_run(tiny2, noise))
    ours = SynCoSSampler(num_steps=4, **overrides).sample(_run(tiny2, noise))
    assert torch.equal(ours, reference)


def test_fresh_baseline_noise_without_iterations(tiny2):
    """With base_noise=fresh and iters=0, a step with t > t_min is x_{t-1} = a_prev * fused_x0(x_t) + s_prev * e,
    e the next standard-normal draw of the whole latent from the run generator; steps with t <= t_min are plain
    DDIM. Independent loop: per-window predictions, Python averaging, the scheduler's alphas."""
    steps, t_min = 5, 700
    noise = _noise(L3, tiny2.latent_shape, seed=4)
    ours = SynCoSSampler(num_steps=steps, iters=0, t_min=t_min, base_noise="fresh").sample(_run(tiny2, noise, seed=9))

    sched = tiny2.pipe.scheduler
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(9)
    run = _run(tiny2, noise)
    starts, m = [0, 4, 8], tiny2.window
    x = noise[0].double()
    for t in [int(v) for v in sched.timesteps]:
        total = torch.zeros_like(x)
        count = torch.zeros(L3, dtype=torch.float64)
        for start in starts:
            pred = tiny2.predict(x[None, start : start + m].float(), t, [run.prompt_for_window(start, m)], 6.0)
            total[start : start + m] += pred.x0[0].double()
            count[start : start + m] += 1
        x0 = total / count[:, None, None, None]
        a, s = math.sqrt(acp[t]), math.sqrt(1 - acp[t])
        prev = t - 1000 // steps
        abp = float(acp[prev]) if prev >= 0 else 1.0
        if t > t_min:
            e = torch.randn(tuple(x.shape), generator=gen, dtype=torch.float32).double()
        else:
            e = (x - a * x0) / s
        x = math.sqrt(abp) * x0 + math.sqrt(1 - abp) * e
    assert (ours[0].double() - x).abs().max() <= 1e-4
    # and this is not Gen-L-Video
    assert (GenLVideoSampler(num_steps=steps).sample(_run(tiny2, noise)) - ours).abs().max() > 1e-2


def test_one_window_stage2_off_matches_diffusers_pipeline():
    backbone = make_tiny(prompts=("a red fox in snow",))
    noise = _noise(backbone.window, backbone.latent_shape, seed=2)
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: 0,
                      generator=torch.Generator().manual_seed(0))
    ours = SynCoSSampler(num_steps=10, stage2=False).sample(run)
    reference = backbone.pipe(
        prompt_embeds=backbone._embeds[0:1],
        negative_prompt_embeds=backbone._negative,
        num_frames=backbone.num_frames,
        height=backbone.height,
        width=backbone.width,
        num_inference_steps=10,
        guidance_scale=6.0,
        latents=noise.clone(),
        output_type="latent",
    ).frames  # [1, F, C, H, W]
    assert (ours - reference).abs().max().item() <= 1e-5
    # stage 2 active on the same window moves the result away from the pipeline
    run.generator.manual_seed(0)
    active = SynCoSSampler(num_steps=10, iters=3).sample(run)
    assert (active - reference).abs().max().item() > 1e-3


# ------------------------------------------------------------------------------------------ stage 2 is real
def _refine_setup(backbone, **kw):
    sampler = SynCoSSampler(num_steps=10, **kw)
    sched = backbone.schedule(10)
    plan = sampler.plan(L3, backbone.window)
    run = _run(backbone, _noise(L3, backbone.latent_shape))
    eps = torch.randn((L3, *backbone.latent_shape), generator=torch.Generator().manual_seed(2))
    x0 = torch.zeros(L3, *backbone.latent_shape)
    return sampler, sched, plan, run, eps, x0


@pytest.mark.parametrize("residual", ["v", "x0", "eps"])
def test_stage2_descends_the_residual(tiny2, residual, monkeypatch):
    # a fixed batch (B = N = 3 windows), lr constant: the mean residual norm must go down
    sampler, sched, plan, run, eps, x0 = _refine_setup(tiny2, iters=12, lr=0.05, lr_decay_rate=1.0, residual=residual,
                                                          batch_windows=3)
    out, trace = sampler.refine(run, x0, eps, plan, [0, 0, 1], sched.step(1), sched, trace=True)
    assert trace.shape == (12,)
    assert not torch.equal(out, x0)
    assert trace[-1] < 0.7 * trace[0]
    assert (trace[1:] < trace[:-1]).all()
    # negative control: the same wiring with the gradient's sign flipped climbs instead
    real = syncos.csd_mix
    monkeypatch.setattr(syncos, "csd_mix", lambda x, r, kernel="rbf": -real(x, r, kernel))
    run.generator.manual_seed(1)
    _, up = sampler.refine(run, x0, eps, plan, [0, 0, 1], sched.step(1), sched, trace=True)
    assert up[-1] > trace[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stage2_changes_x0_and_stays_finite_in_half_precision(dtype):
    backbone = make_tiny(prompts=("a cat", "a dog runs"), dtype=dtype)
    sampler, sched, plan, run, eps, _ = _refine_setup(backbone, iters=3)
    x0 = _noise(L3, backbone.latent_shape, seed=5)[0]
    out, trace = sampler.refine(run, x0, eps, plan, [0, 0, 1], sched.step(0), sched, trace=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(trace).all()
    assert (out - x0).abs().max() > 0.1


# ------------------------------------------------------------------------------------------ seeds
def test_determinism_and_seeded_minibatches(tiny2):
    noise = _noise(L3, tiny2.latent_shape, seed=6)
    kw = dict(num_steps=3, t_min=500, iters=3, batch_windows=2)
    torch.manual_seed(123)
    global_state = torch.random.get_rng_state()
    a = SynCoSSampler(**kw).sample(_run(tiny2, noise, seed=1))
    assert torch.equal(torch.random.get_rng_state(), global_state), "the global RNG must not be used"
    b = SynCoSSampler(**kw).sample(_run(tiny2, noise, seed=1))
    assert torch.equal(a, b)
    assert (SynCoSSampler(**kw).sample(_run(tiny2, noise, seed=2)) - a).abs().max() > 1e-3
    # with ddim baseline noise the only randomness is the minibatch choice: it must follow the run generator
    kd = dict(kw, base_noise="ddim")
    c = SynCoSSampler(**kd).sample(_run(tiny2, noise, seed=1))
    assert torch.equal(c, SynCoSSampler(**kd).sample(_run(tiny2, noise, seed=1)))
    assert (SynCoSSampler(**kd).sample(_run(tiny2, noise, seed=3)) - c).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------ guards
def test_batch_larger_than_window_count_is_clamped(tiny2):
    noise = _noise(L3, tiny2.latent_shape, seed=7)
    big = SynCoSSampler(num_steps=3, t_min=500, iters=2, batch_windows=10)
    out = big.sample(_run(tiny2, noise))
    assert big.describe()["batch_windows_used"] == 3
    assert torch.equal(out, SynCoSSampler(num_steps=3, t_min=500, iters=2, batch_windows=3).sample(_run(tiny2, noise)))


def test_batch_of_two_is_finite(tiny2):
    out = SynCoSSampler(num_steps=3, t_min=0, iters=2, batch_windows=2).sample(_run(tiny2, _noise(L3, tiny2.latent_shape)))
    assert torch.isfinite(out).all()


def test_eps_residual_is_zero_at_t999_and_skipped(tiny2):
    # the pitfall itself: at t = 999 (alpha_bar = 0) the eps residual of the real backbone is exactly 0
    sched = tiny2.schedule(4)
    c = sched.step(0)
    assert c.t == 999 and c.a == 0.0
    eps = _noise(13, tiny2.latent_shape, seed=8)
    x0 = _noise(13, tiny2.latent_shape, seed=9)
    y = c.a * x0 + c.s * eps
    pred = tiny2.predict(y, c.t, [0], 6.0)
    assert torch.equal(syncos.score_residual("eps", pred, x0, eps, c.a, c.s), torch.zeros_like(eps))
    assert syncos.score_residual("v", pred, x0, eps, c.a, c.s).abs().max() > 0.1
    # the sampler skips the iterations there (no forwards) and says so
    sampler = SynCoSSampler(num_steps=4, t_min=500, iters=2, residual="eps")
    tiny2.forward_count = 0
    sampler.sample(_run(tiny2, _noise(L3, tiny2.latent_shape)))
    info = sampler.describe()
    assert info["stage2_iterations_skipped_at"] == [999]
    assert info["stage2_timesteps"] == [749]
    assert tiny2.forward_count == 4 * 3 * 2 + 1 * 2 * 2 * 2  # stage 1 + one active step x 2 iters x B=2 x CFG


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(stage3=False), "not a defined variant"),
        (dict(stage1=False), "not a defined variant"),
        (dict(stage1=False, stage2=False, stage3=False), "not a defined variant"),
        (dict(stage1=False, stage3=False, base_noise="ddim"), "base_noise=ddim"),
        (dict(residual="score"), "residual"),
        (dict(kernel="gauss"), "kernel"),
        (dict(base_noise="zeros"), "base_noise"),
        (dict(iters=-1), "iters"),
        (dict(batch_windows=0), "batch_windows"),
        (dict(lr=0), "lr"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(lr_decay_rate=1.5), "lr_decay_rate"),
        (dict(t_min=1200), "t_min"),
        (dict(random_t_range=[500, 100]), "random_t_range"),
        (dict(stage2="yes"), "stage2"),
    ],
)
def test_bad_options_fail_fast(kw, needle):
    with pytest.raises(UsageError, match=needle):
        SynCoSSampler(**kw)


# ------------------------------------------------------------------------------------------ ablations and counts
def test_ablation_switches_run_and_matter(tiny2):
    noise = _noise(L3, tiny2.latent_shape, seed=10)
    kw = dict(num_steps=3, t_min=500, iters=2)
    base = SynCoSSampler(**kw).sample(_run(tiny2, noise))
    for extra in (dict(grounded_timestep=False), dict(fixed_noise=False), dict(kernel="none"), dict(residual="x0"),
                  dict(base_noise="ddim")):
        out = SynCoSSampler(**kw, **extra).sample(_run(tiny2, noise))
        assert torch.isfinite(out).all()
        assert (out - base).abs().max() > 1e-6, extra
    # stage 2 alone (Table 3 row 2): x0' from x_T, refined at every step, returned without reversion
    only2 = SynCoSSampler(num_steps=3, iters=2, stage1=False, stage3=False)
    tiny2.forward_count = 0
    out = only2.sample(_run(tiny2, noise))
    assert torch.isfinite(out).all() and (out - noise).abs().max() > 0.1
    assert tiny2.forward_count == 3 * 2 * 2 * 2 == only2.describe()["forwards_expected"]  # steps x iters x B x CFG


def test_forward_counts_one_call_per_iteration(tiny2):
    # 4 steps (999, 749, 499, 249), t_min 900: stage 2 at t=999 only; N=3 windows, B=2, iters=2, CFG x2
    sampler = SynCoSSampler(num_steps=4, t_min=900, iters=2, batch_windows=2)
    tiny2.forward_count = tiny2.call_count = 0
    sampler.sample(_run(tiny2, _noise(L3, tiny2.latent_shape)))
    assert tiny2.forward_count == 4 * 3 * 2 + 2 * 2 * 2 == sampler.describe()["forwards_expected"]
    assert tiny2.call_count == 4 + 2  # one batched call per stage-1 step and per stage-2 iteration


def test_stage2_alone_starts_from_the_initial_noise(tiny2):
    # Table 3 row 2 (stage 2 only): x0' is initialised from x_T, so without iterations it is returned unchanged
    noise = _noise(L3, tiny2.latent_shape)
    out = SynCoSSampler(num_steps=2, stage1=False, stage3=False, iters=0).sample(_run(tiny2, noise))
    assert torch.equal(out, noise)


def test_forward_counts_without_guidance_are_one_per_window(tiny2):
    # guidance_scale=1: no unconditional branch, so one forward per window sample; 2 steps (999, 499), stage 2 at
    # t=999 only: 2 steps × 3 windows + 1 iteration × 2 windows
    sampler = SynCoSSampler(num_steps=2, t_min=900, iters=1, batch_windows=2, guidance_scale=1.0)
    tiny2.forward_count = 0
    sampler.sample(_run(tiny2, _noise(L3, tiny2.latent_shape)))
    assert tiny2.forward_count == 2 * 3 + 1 * 2 == sampler.describe()["forwards_expected"]
    assert sampler.forwards_per_step(2) == [3 + 2, 3]


def test_forward_plan_cogvideox_2b_4x(tiny2):
    # 4x CogVideoX-2B: N=10 windows (L=49, stride 4), 50 trailing steps 999..19, CFG; defaults t_min=900, B=2,
    # iters=20, chosen to cost what the paper timed (Table 4: SynCoS 29 min / Gen-L-Video 21 min = 1.38x)
    sched = tiny2.schedule(50)
    assert sched.timesteps[:9] == (999, 979, 959, 939, 919, 899, 879, 859, 839)
    info = SynCoSSampler().forward_plan(10, sched)
    assert info["stage1_forwards_per_step"] == 10 * 2
    assert info["stage2_forwards_per_active_step"] == 20 * 2 * 2
    assert info["stage2_timesteps"] == [999, 979, 959, 939, 919]
    gen_l_video = 50 * 10 * 2
    assert info["forwards_expected"] == gen_l_video + 5 * 80 == 1400
    assert abs(info["forwards_expected"] / gen_l_video - 29 / 21) < 0.03
    # the YAML ships the same defaults as the constructor
    cfg = OmegaConf.load(REPO / "conf" / "sampler" / "syncos.yaml")
    assert (cfg.t_min, cfg.iters, cfg.batch_windows) == (900, 20, 2)


# ------------------------------------------------------------------------------------------ structured prompt off
def test_story_without_global():
    g = "A small robot in a neon city at night, cinematic."
    story = Story(g, [f"{g} The robot walks.", f"{g}, looking up at a car", "A cat sleeps."])
    out, changed = story.without_global()
    assert out.local_prompts == ["The robot walks.", "looking up at a car", "A cat sleeps."]
    assert changed == 2 and out.global_prompt == g
    single, n = Story.single("a cat").without_global()
    assert single.local_prompts == ["a cat"] and n == 0


def test_story_locals_missing_global():
    g = "A small robot in a neon city at night."
    story = Story(g, [f"{g} The robot walks.", "a small  ROBOT in a neon city at night, it waves", "The robot sits."])
    assert story.locals_missing_global() == [2]  # case, spacing and the final full stop do not matter
    assert story.missing_global_warning().startswith("local prompt 3 of 3 does not contain the global prompt")
    several = Story(g, ["The robot walks.", "The robot sits."])
    assert several.locals_missing_global() == [0, 1]
    assert "local prompts 1, 2 of 2 do not" in several.missing_global_warning()
    single = Story.single("a cat")
    assert single.locals_missing_global() == [] and single.missing_global_warning() is None
    assert Story("", ["a cat", "a dog"]).locals_missing_global() == []  # no global prompt: nothing to check
    # the ablation's output is exempt by construction: generate checks only when use_global_prompt=true
    stripped, _ = Story(g, [f"{g} The robot walks."]).without_global()
    assert stripped.locals_missing_global() == [0]


# ------------------------------------------------------------------------------------------ CLI
def _longgen(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", "import sys; from longgen.cli import main; sys.exit(main())", "generate", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_syncos_writes_video_and_sweeps_a_switch(tmp_path):
    # one process, two jobs (decoding dominates the time): the default sampler, num_windows=5, a swept switch and
    # the structured-prompt ablation
    story = tmp_path / "story.json"
    g = "A small robot in a neon city at night."
    story.write_text(json.dumps({"global": g, "local": [f"{g} The robot walks.", f"{g} The robot waves."]}))
    res = _longgen(["-m", "backbone=tiny", "num_windows=5", f"story={story}", "sampler.num_steps=3",
                    "sampler.iters=2", "sampler.stage2=true,false", "use_global_prompt=false",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    mans = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/manifest.json"))]
    assert [m["sampler"]["stage2"] for m in mans] == [True, False]
    length = 13 + 4 * 4
    for m, d in zip(mans, sorted((tmp_path / "sweep").glob("*/"))):
        assert m["sampler"]["name"] == "syncos"  # the default sampler
        assert m["latent_length"] == length and m["frames"] == 4 * (length - 1) + 1
        assert (d / "video.mp4").stat().st_size > 0
        assert m["global_prompt_removed_from"] == 2 and m["use_global_prompt"] is False
        assert m["local_prompts_used"] == ["The robot walks.", "The robot waves."]  # story.json keeps the story as given
        assert m["transformer_forwards"] == m["sampler"]["forwards_expected"]
    # steps 999, 666, 332: stage 1 on 5 windows x CFG each step; stage 2 (t > 900) at 999 only, 2 iters x B=2 x CFG
    assert mans[0]["transformer_forwards"] == 3 * 10 + 1 * 2 * 2 * 2
    assert mans[1]["transformer_forwards"] == 3 * 10

"""Honest progress (issue 25): the ETA weighs steps by the transformer forwards each sampler plans for them, it
starts from the checkpoint's step after a resume, and off a terminal plain lines come at the set interval.

A fake clock moves a fixed time per planned forward, so every number below is written out."""

from __future__ import annotations

import logging

import pytest
import torch

from longgen.denoiser import Denoiser, Prediction
from longgen.diffusion import NoiseSchedule
from longgen.progress import StepProgress, weighted_eta
from longgen.samplers.base import SamplingRun
from longgen.samplers.syncos import SynCoSSampler

SECONDS_PER_FORWARD = 0.5
TIMESTEPS = (999, 899, 799, 699, 599, 499, 399, 299, 199, 99)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PlanDenoiser(Denoiser):
    """Window 13, one-pixel latents, a VP schedule over TIMESTEPS."""

    window = 13
    latent_shape = (1, 1, 1)
    device = torch.device("cpu")

    def schedule(self, num_steps: int) -> NoiseSchedule:
        acp = torch.linspace(0.9999, 0.01, 1000, dtype=torch.float64)  # [1000] ᾱ, all inside (0, 1)
        steps = TIMESTEPS[:num_steps]
        return NoiseSchedule.vp(acp, steps, tuple(float(acp[t - 100]) if t >= 100 else 1.0 for t in steps))

    def predict(self, x_t, t, prompt_ids, guidance_scale) -> Prediction:
        raise AssertionError("planning calls no model")


def test_syncos_eta_after_k_steps_is_the_forward_weighted_formula():
    """SynCoS over 21 latent frames = 3 windows of 13 (stride 4), 10 steps, stage 2 above t_min=700 (3 steps); the
    clock moves 0.5 s per planned forward, so elapsed = 0.5 s · forwards done. (Stage 2's optimiser is not run
    here: its first step imports torch's compiler, seconds of a test budget; tests/test_syncos.py counts the
    forwards a real run spends against `forward_plan`, whose numbers `forwards_per_step` shares.)"""
    clock = Clock()
    sampler = SynCoSSampler(num_steps=10, t_min=700, iters=5, batch_windows=2, guidance_scale=6.0)
    run = SamplingRun(denoiser=PlanDenoiser(), noise=torch.zeros(1, 21, 1, 1, 1),
                      prompt_for_window=lambda start, size: 0, generator=torch.Generator().manual_seed(0))
    total = sampler.begin(run)
    work = sampler.forwards_per_step(total)
    stage1 = 3 * 2  # 3 windows × 2 guidance branches, every step
    stage2 = 5 * 2 * 2  # 5 iterations × 2 windows × 2 branches, at t = 999, 899, 799 (> t_min)
    assert work == [stage1 + stage2] * 3 + [stage1] * 7  # 26, 26, 26, 6, ...: 4x the work up front
    assert sum(work) == sampler.forward_plan(3, run.denoiser.schedule(10))["forwards_expected"]
    etas = {}
    with StepProgress(clock=clock) as progress:
        progress.weigh("denoise", work)
        progress("denoise", 0, total)
        for step in range(1, total + 1):
            clock.now += SECONDS_PER_FORWARD * work[step - 1]
            progress("denoise", step, total)
            etas[step] = progress.eta("denoise", step)
    # after k steps: elapsed · (forwards left) / (forwards done)
    assert etas[1] == pytest.approx((0.5 * 26) * (2 * 26 + 7 * 6) / 26)  # 47 s; counting steps would say 117 s
    assert etas[4] == pytest.approx((0.5 * (3 * 26 + 6)) * (6 * 6) / (3 * 26 + 6))  # 18 s
    assert etas[10] == 0.0


def test_eta_after_a_resume_counts_from_the_checkpoint_step():
    weights = [86, 86, 86, 6, 6, 6, 6, 6, 6, 6]
    clock = Clock()
    with StepProgress(clock=clock) as progress:
        progress.weigh("denoise", weights)
        clock.now = 1000.0  # the earlier process's time is not this one's
        progress("denoise", 4, 10)  # resumed after step 4
        assert progress.eta("denoise", 4) is None
        clock.now += 3.0  # step 5: 6 forwards
        progress("denoise", 5, 10)
        assert progress.eta("denoise", 5) == pytest.approx(3.0 * (5 * 6) / 6)
    assert weighted_eta(weights, 0, 3, 129.0) == pytest.approx(129.0 * 42 / 258)


def test_plain_lines_off_a_terminal_at_the_interval(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="longgen")

    def lines(**interval) -> list[str]:
        caplog.clear()
        clock.now = 0.0
        with StepProgress(clock=clock, **interval) as progress:
            assert progress.mode == "lines"  # pytest's stderr is no terminal
            progress.label("denoise", "denoise · 3 windows")
            progress("denoise", 0, 10)
            for step in range(1, 11):
                clock.now += 10.0
                progress("denoise", step, 10)
        return [r.getMessage() for r in caplog.records]

    by_time = lines(seconds=30)
    assert [m.split(":")[1].split(",")[0].strip() for m in by_time] == ["3/10", "6/10", "9/10", "10/10"]
    assert by_time[0] == "denoise · 3 windows: 3/10, 0:30 elapsed, ETA 1:10"
    by_steps = lines(every=4, seconds=None)
    assert [m.split(":")[1].split(",")[0].strip() for m in by_steps] == ["4/10", "8/10", "10/10"]


def test_lines_inside_a_long_step_count_its_issued_forwards(caplog):
    """A ten-minute plan's step is 796 forwards (398 windows × 2 branches, 455 s on an H200): without lines inside
    it the log said nothing for 7.6 minutes and the first ETA came after a whole step. `within` gets each
    transformer call's forwards; a line comes every `seconds` with the share of the work and an ETA that counts
    the forwards issued so far (0.5 s per forward on this clock), and the next step starts from nothing."""
    clock = Clock()
    caplog.set_level(logging.INFO, logger="longgen")
    weights = [796.0] * 3
    with StepProgress(clock=clock, seconds=60) as progress:
        progress.label("denoise", "denoise · 398 windows")
        progress.weigh("denoise", weights)
        progress.within("denoise", 2)  # before the phase starts: nothing
        progress("denoise", 0, 3)
        for _ in range(398):  # step 1: calls of 2 forwards
            clock.now += SECONDS_PER_FORWARD * 2
            progress.within("denoise", 2)
        progress("denoise", 1, 3)
        clock.now += SECONDS_PER_FORWARD * 300
        progress.within("denoise", 300)
        assert progress.eta("denoise", 1) == pytest.approx((398 + 150) * (2 * 796 - 300) / (796 + 300))
        progress.within("denoise", 10_000)  # never past the step's planned work
        assert progress.eta("denoise", 1) == pytest.approx((398 + 150) * 796 / 1592)
    messages = [r.getMessage() for r in caplog.records]
    # a line every 60 s inside step 1 (120 forwards each); none when step 1 ends, 38 s after the last; one when step 2
    # has issued 300 forwards, 188 s after the last
    assert messages[0] == "denoise · 398 windows: 0/3 (5.0% of the work), 1:00 elapsed, ETA 18:54"  # 60·2268/120
    assert len(messages) == 7 and messages[5].startswith("denoise · 398 windows: 0/3 (30.2% of the work), 6:00")
    assert messages[6] == "denoise · 398 windows: 1/3 (45.9% of the work), 9:08 elapsed, ETA 10:46"  # 548·1292/1096


def test_a_run_tells_its_progress_each_transformer_call():
    """The backbone reports every transformer call's forwards to `on_forward` while a step runs (what the run's
    progress listens to); nothing is called without a listener."""
    from conftest import make_tiny
    from longgen.samplers.gen_l_video import GenLVideoSampler

    backbone = make_tiny(micro_batch=2)
    seen = []
    backbone.on_forward = seen.append
    try:
        noise = torch.randn(1, 17, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
        run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda start, size: 0,
                          generator=torch.Generator().manual_seed(1))
        sampler = GenLVideoSampler(num_steps=2, stride=4)
        sampler.sample(run)
    finally:
        backbone.on_forward = None
    windows = sampler.plan(17, backbone.window).count
    assert seen == [2] * (windows * 2 * 2 // 2)  # 2 steps × windows × 2 branches, in calls of 2 samples

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

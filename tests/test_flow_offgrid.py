"""The rectified-flow schedule (Wan) on and off its sampling grid, against the flow formula written out here.

Wan is trained on x_t = (1 − σ)·x0 + σ·ε with the model told the timestep t = σ·T (T = 1000). Its sampling grid
comes from FlowMatchEulerDiscreteScheduler at the model's shift s: N values u_i evenly spaced from 1 down to the
scheduler's smallest training σ, σ_min = s·(1/T) / (1 + (s − 1)/T), each shifted, σ_i = s·u_i / (1 + (s − 1)·u_i),
t_i = σ_i·T, and σ = 0 after the last step. A model timestep off that grid (extend's t_c, SynCoS' t_min and its
random t, FIFO's per-frame levels) is a point of the same path: σ = t/T exactly — not the nearest grid point, and
not shifted again (the shift lives in where the grid's timesteps are, not in how a timestep maps to σ).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from longgen.build import build
from longgen.samplers.base import SamplingRun
from longgen.samplers.fifo import FIFOSampler
from longgen.samplers.syncos import SynCoSSampler

from conftest import REPO

T = 1000.0


def make_wan(**overrides):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    backbone = build(cfg, "backbone", "tiny-wan")
    backbone.load()
    backbone.encode_prompts(["a red fox in snow"], "")
    return backbone


@pytest.fixture(scope="module")
def wan():
    return make_wan(num_frames=21)  # windows of 6 latent frames: FIFO's queue stays short


def shifted(u: float, shift: float) -> float:
    return shift * u / (1.0 + (shift - 1.0) * u)


def grid_sigmas(steps: int, shift: float) -> list[float]:
    """σ_0 … σ_{N−1} of the sampling grid, then the final 0 (module docstring)."""
    sigma_min = shifted(1.0 / T, shift)
    us = [1.0 + i * (sigma_min - 1.0) / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    return [shifted(u, shift) for u in us] + [0.0]


@pytest.mark.parametrize("shift, steps", [(3.0, 4), (3.0, 7), (5.0, 5)])
def test_sampling_grid_is_the_shifted_flow_formula(shift, steps):
    wan = make_wan(num_frames=21, flow_shift=None if shift == 3.0 else shift)  # 3.0: the scheduler section's
    sched = wan.schedule(steps)
    sigmas = grid_sigmas(steps, shift)
    assert sched.path == "flow" and len(sched) == steps
    for i in range(steps):
        assert sched.timesteps[i] == pytest.approx(sigmas[i] * T, abs=1e-3)
        assert (sched.a[i], sched.s[i]) == pytest.approx((1 - sigmas[i], sigmas[i]), abs=1e-6)
        assert (sched.a_prev[i], sched.s_prev[i]) == pytest.approx((1 - sigmas[i + 1], sigmas[i + 1]), abs=1e-6)
    # a grid timestep and its coefficients are the same point of the path
    for i in range(steps):
        assert sched.coeffs(sched.timesteps[i]) == pytest.approx((sched.a[i], sched.s[i]), abs=1e-12)


@pytest.mark.parametrize("t", [137.0, 100.0, 512.5, 950.0, 3.0, 999.0, 0.0])
def test_coefficients_off_the_grid_are_sigma_t_over_T(wan, t):
    sched = wan.schedule(4)
    a, s = sched.coeffs(t)
    assert (a, s) == pytest.approx((1.0 - t / T, t / T), abs=1e-12)
    # what the bug class would give instead, and that it is elsewhere for these t
    nearest = min(range(4), key=lambda i: abs(sched.timesteps[i] - t))
    if 50.0 < t < 990.0:
        assert abs(sched.s[nearest] - t / T) > 1e-2  # the nearest grid point
        assert abs(shifted(t / T, 3.0) - t / T) > 1e-2  # shifted once more


def test_predict_at_an_off_grid_timestep_converts_with_sigma_t_over_T(wan):
    """x̂0 = x_t − (t/T)·v and ε̂ = x_t + (1 − t/T)·v, v the transformer called at that very timestep (unguided)."""
    x = torch.randn(1, wan.window, *wan.latent_shape, generator=torch.Generator().manual_seed(4))
    t = 437.0
    with torch.no_grad():
        v = wan.pipe.transformer(hidden_states=x.permute(0, 2, 1, 3, 4), timestep=torch.tensor([t]),
                                 encoder_hidden_states=wan._embeds[:1], return_dict=False)[0].permute(0, 2, 1, 3, 4)
    pred = wan.predict(x, t, [0], 1.0)
    torch.testing.assert_close(pred.x0, x - (t / T) * v, atol=1e-5, rtol=0)
    torch.testing.assert_close(pred.eps, x + (1 - t / T) * v, atol=1e-5, rtol=0)


def test_syncos_t_min_is_compared_with_the_shifted_grid(wan):
    """Stage 2 runs at the grid timesteps above t_min: with shift 3 and 4 steps the grid is 1000, 858, 602, 9, so
    t_min = 800 leaves two stage-2 steps (an unshifted grid, 1000, 668, 335, 3, would leave one)."""
    sigmas = grid_sigmas(4, 3.0)
    expected = [sigma * T for sigma in sigmas[:4] if sigma * T > 800]
    assert len(expected) == 2
    syncos = SynCoSSampler(num_steps=4, t_min=800, stride=2, residual="v")
    plan = syncos.forward_plan(3, wan.schedule(4))
    assert plan["stage2_timesteps"] == pytest.approx(expected, abs=1e-3)


def test_fifo_tells_every_frame_a_level_of_the_shifted_grid(wan, monkeypatch):
    """FIFO on Wan (one partition of 6 levels, no lookahead): every timestep a frame is given, in the base clip's
    steps and in the queue's per-frame rows, is one of the 6 grid timesteps, each level is used, and the queue's
    rows hold the levels in order from the head (cleanest) to the tail (noisiest)."""
    sigmas = grid_sigmas(6, 3.0)
    levels = [sigma * T for sigma in sigmas[:6]]
    seen: list = []
    plain = type(wan).predict

    def spy(self, x_t, t, prompt_ids, guidance_scale):
        seen.append(t.tolist() if isinstance(t, torch.Tensor) else [[float(t)] * x_t.shape[1]])
        return plain(self, x_t, t, prompt_ids, guidance_scale)

    monkeypatch.setattr(type(wan), "predict", spy)
    noise = torch.randn(1, 8, *wan.latent_shape, generator=torch.Generator().manual_seed(0))
    run = SamplingRun(wan, noise, lambda s, m: 0, torch.Generator().manual_seed(1))
    FIFOSampler(num_partitions=1, lookahead=False, guidance_scale=1.0, stride=2).sample(run)
    used = {round(v, 3) for rows in seen for row in rows for v in row}
    assert used == {round(v, 3) for v in levels}
    queue_rows = [row for rows in seen for row in rows if len(set(row)) > 1]
    assert queue_rows and all(row == pytest.approx(levels[::-1], abs=1e-3) for row in queue_rows)

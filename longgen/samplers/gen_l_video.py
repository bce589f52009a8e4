"""Gen-L-Video temporal co-denoising (Wang et al. 2023, "Gen-L-Video", §3.2), the first stage of SynCoS
(SynCoS supplementary Fig. 18).

Per step t: slice the latent into windows of M frames every `stride` frames (the last one end-aligned, so no tail
frame is dropped), predict x̂0 for every window with classifier-free guidance and the local prompt of the story
segment holding the window centre, average the x̂0 of all windows covering each frame, then take one DDIM step from
x_t with the fused x̂0. The windows go to the model in groups (WINDOWS_PER_PREDICT) so that memory does not grow with
the number of windows. With η = 0 and one shared t this equals averaging the per-window DDIM steps, because the
update is affine in x̂0 (diffusion.ddim_step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longgen.denoiser import Denoiser
from longgen.diffusion import StepCoeffs, add_windows, ddim_step, frame_mean, gather_windows
from longgen.options import option
from longgen.samplers.base import (
    ETA,
    GUIDANCE,
    NUM_STEPS,
    STRIDE,
    Sampler,
    SamplerState,
    SamplingRun,
    guidance_branches,
)
from longgen.windows import WindowPlan


#: windows per `predict` call of a fused step. A call holds its windows several times over (the batch, its CFG copy,
#: the transformer's output in bf16 and in float32, the x̂0 and ε̂ it returns), ~20 MB allocated per window for Wan
#: 2.1 at 480×832, so handing the model every window at once made sampling memory grow with the plan's length (GPU
#: held: 25.4 GB for ten minutes' 398 windows against 11.1 GB for one minute's 38); groups of this size keep it at
#: the latent-sized state plus one group (the ten-minute step then held 13.6 GB; benchmarks/README.md). Each frame's
#: sum takes its windows in the same order for any group size (`add_windows`), and with a `micro_batch` that divides
#: a group's 2 × 16 CFG rows (every full-size backbone's: 1 or 2) the transformer runs calls of the same size as for
#: one group of all windows, so the grouping changes peak memory, not the bytes (tests/test_oracles.py).
WINDOWS_PER_PREDICT = 16


def fused_x0(
    den: Denoiser, x: torch.Tensor, plan: WindowPlan, prompt_ids: list[int], c: StepCoeffs, guidance_scale: float
) -> torch.Tensor:
    """Temporal co-denoising of one step: x [L, C, H, W] at t → per-frame average of the windows' x̂0 [L, C, H, W],
    the windows predicted WINDOWS_PER_PREDICT at a time and summed into the frames as they come."""
    total = torch.zeros_like(x)  # [L, C, H, W] Σ x̂0 over the windows covering each frame
    count = torch.zeros(plan.length, dtype=x.dtype, device=x.device)  # [L]
    for a in range(0, plan.count, WINDOWS_PER_PREDICT):
        starts = plan.starts[a : a + WINDOWS_PER_PREDICT]  # this group's windows
        windows = gather_windows(x, starts, plan.window)  # [G, M, C, H, W]
        pred = den.predict(windows, c.t, prompt_ids[a : a + WINDOWS_PER_PREDICT], guidance_scale)  # x0: [G, M, C, H, W]
        add_windows(total, count, pred.x0, starts)
    return frame_mean(total, count)  # [L, C, H, W]; a frame no window covers stays 0


@dataclass(eq=False)
class GenLVideoSampler(Sampler):
    """The options (conf/sampler/gen-l-video.yaml), each with its accepted values."""

    num_steps: int = option(50, NUM_STEPS)
    guidance_scale: float = option(6.0, GUIDANCE)
    stride: int = option(4, STRIDE)
    eta: float = option(0.0, ETA)

    def begin(self, run: SamplingRun) -> int:
        self._plan = self.plan(run.length, run.denoiser.window)
        self._ids = [run.prompt_for_window(s, self._plan.window) for s in self._plan.starts]
        self._sched = run.denoiser.schedule(self.num_steps)
        return len(self._sched)

    def forwards_per_step(self, total: int) -> list[int]:
        return [self._plan.count * guidance_branches(self.guidance_scale)] * total  # every window, every step

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        x = state.tensors["x"]  # [L, C, H, W] x_t
        c = self._sched.step(i)
        x0 = fused_x0(run.denoiser, x, self._plan, self._ids, c, self.guidance_scale)  # [L, C, H, W]
        noise = run.randn(tuple(x.shape)) if self.eta > 0 else None
        state.tensors["x"] = ddim_step(x, x0, c, self.eta, noise)  # [L, C, H, W] x_{t−1}
        state.estimate = x0

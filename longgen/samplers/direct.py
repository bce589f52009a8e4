"""Direct sampling: the whole latent as one window, plain DDIM (Song et al. 2021, Eq. 12, η = 0 by default).

At the native length (num_windows=1) this is exactly the backbone's own pipeline and serves as the reference the
other samplers are pinned to (tests compare it with diffusers' `CogVideoXPipeline`). At longer lengths it is the
"Direct" baseline of GLC-Diffusion §5: the model is asked for more frames than it was trained on.

One prompt: the whole latent is one window, so there are no windows to route a story's events to. A story of
several events is refused at plan time (`single_prompt_reason`), unless `several_events=global` asks for the
story's global prompt over the whole video (how the methods comparison runs this one-prompt baseline on a story);
a multi-shot story runs each take as its own video, so it needs a cut before every shot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from longgen.diffusion import ddim_step
from longgen.options import OneOf, option
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


@dataclass(eq=False)
class DirectSampler(Sampler):
    """The options (conf/sampler/direct.yaml), each with its accepted values."""

    num_steps: int = option(50, NUM_STEPS)
    guidance_scale: float = option(6.0, GUIDANCE)
    eta: float = option(0.0, ETA)
    stride: int = option(4, STRIDE)  # only sets the video length for num_windows=N
    #: a story of several events: refuse it, or show the story's global prompt over the whole video
    several_events: str = option("refuse", OneOf(("refuse", "global"), "global: the story's global prompt"))
    single_prompt_reason: ClassVar[str | None] = ("denoises the whole video as one window under one prompt, so it "
                                                  "cannot route events to windows")

    def plan(self, length: int, window: int) -> WindowPlan:
        return WindowPlan(length, length, (0,))

    def begin(self, run: SamplingRun) -> int:
        self._prompt = run.prompt_for_window(0, run.length)
        self._sched = run.denoiser.schedule(self.num_steps)
        return len(self._sched)

    def forwards_per_step(self, total: int) -> list[int]:
        return [guidance_branches(self.guidance_scale)] * total  # the whole latent as one sample per branch

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        x = state.tensors["x"][None]  # [1, L, C, H, W] x_t
        c = self._sched.step(i)
        pred = run.denoiser.predict(x, c.t, [self._prompt], self.guidance_scale)  # x0: [1, L, C, H, W]
        noise = run.randn(tuple(x.shape)) if self.eta > 0 else None
        state.tensors["x"] = ddim_step(x, pred.x0, c, self.eta, noise)[0]  # [L, C, H, W] x_{t−1}
        state.estimate = pred.x0[0]

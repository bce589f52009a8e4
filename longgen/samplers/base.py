"""What every sampler receives (`SamplingRun`), what it carries between steps (`SamplerState`), and the interface
it implements (`Sampler`).

A sampler is written as stages that `Sampler.sample` drives: `begin` (plan the run: windows, schedule, prompt
ids — no random draws), `initial_state` (the tensors before step 0, e.g. x_T; may draw from the run's generator),
`step` (one denoising step), `finish` (the clean latents). The loop lives here, once, so that checkpoints,
previews and interrupts are callbacks of the sample stage (`SamplingRun.after_step`) rather than branches inside
each sampler, and a run can continue from a saved `SamplerState` plus the generator's saved state and give the
same bytes as an uninterrupted run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from longgen.denoiser import Denoiser
from longgen.options import Number, Whole, check_fields
from longgen.windows import WindowPlan, strided_plan


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


def _no_weights(phase: str, work: list[float] | None) -> None:
    return None


@dataclass
class SamplerState:
    """Everything a sampler carries from one denoising step to the next, besides the run's generator.

    `tensors` is what a checkpoint saves (e.g. {"x": x_t [L, C, H, W]}); `estimate` is the latest clean estimate
    x̂0 [L, C, H, W] for previews (not saved); `done` counts finished steps."""

    tensors: dict[str, torch.Tensor]
    done: int = 0
    estimate: torch.Tensor | None = None

    def placed_on(self, device: torch.device) -> "SamplerState":
        """This state with its floating-point tensors on `device` (dtype kept), as a resumed run needs them: a
        checkpoint is read on the CPU. Integer tensors (saved generator states, uint8) stay on the CPU, where
        `torch.Generator.set_state` wants them."""
        tensors = {k: v.to(device) if v.is_floating_point() else v for k, v in self.tensors.items()}
        return SamplerState(tensors, self.done, self.estimate)


def _no_callback(state: SamplerState, total: int) -> None:
    return None


@dataclass
class SamplingRun:
    """One video to sample.

    `noise` is the initial latent x_T, [1, L, C, H, W] float32 on the denoiser's device, drawn on the CPU from the
    seed. `prompt_for_window(start, length)` gives the encoded-prompt id of a window by the story segment that holds
    its centre. `generator` is a seeded CPU generator for every random choice a sampler makes (minibatches, shifts,
    fresh noise), so a seed gives the same video on any device. `after_step(state, total)` runs after every step
    (checkpoints, previews, interrupts); it may raise to stop the run. `progress(phase, done, total)` is told the
    step reached (also once before the first step, so a resumed run's pace starts at its checkpoint's step) and
    `weigh(phase, work)` the planned transformer forwards of every step, for an ETA weighted by work.
    """

    denoiser: Denoiser
    noise: torch.Tensor  # [1, L, C, H, W]
    prompt_for_window: Callable[[int, int], int]
    generator: torch.Generator
    progress: Callable[[str, int, int], None] = _no_progress
    #: encoded-prompt ids by role, for samplers that need more than the per-window local prompt
    prompt_ids: dict[str, int] = field(default_factory=dict)
    after_step: Callable[[SamplerState, int], None] = _no_callback
    weigh: Callable[[str, list[float] | None], None] = _no_weights

    @property
    def length(self) -> int:
        return self.noise.shape[1]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise drawn on the CPU from the run's generator, then moved to the device (float32)."""
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).to(self.noise.device)


class Sampler(ABC):
    """A long-video sampler. Constructed from its YAML before any weights load, so bad keywords fail fast.

    A sampler declares its options as dataclass fields with their rules (see DirectSampler); adding one touches
    its module and its YAML only."""

    #: the stride (latent frames) of the sampler's window grid; also sets the video length for num_windows=N
    stride: int
    num_steps: int
    guidance_scale: float
    #: whether windows of a fixed start exist for key images to condition (longgen/run/images.py); a sampler
    #: without them says why in `window_images_reason`
    window_images: ClassVar[bool] = True
    #: why the sampler shows one prompt over the whole video, for a sampler that does not route a story's events to
    #: windows (a story of several events is then refused in one line, longgen/run/job.py); None: it routes them
    single_prompt_reason: ClassVar[str | None] = None

    def calls_share_attention(self) -> str | None:
        """The attention layer this sampler installs that mixes the rows of one model call (FreeLong's spectral
        blend over the whole video, DiTCtrl's KV sharing between windows), or None. Such a layer needs every row in
        one call, so it cannot run where calls are split by noise level (`longgen extend`'s per-frame context)."""
        return None

    def plan(self, length: int, window: int) -> WindowPlan:
        """The sampler's window grid over a latent of `length` frames (recorded in the manifest)."""
        return strided_plan(length, window, self.stride)

    def __post_init__(self) -> None:
        """A sampler declared as a dataclass of its options (`option(default, rule)` fields, longgen.options) is
        checked here, when Hydra constructs it from its YAML before any weights load: each option against its
        rule, then `check_options`."""
        check_fields(self, "sampler")
        self.check_options()

    def check_options(self) -> None:
        """Checks that involve several options (each option's own range is declared with its field)."""

    def check_denoiser(self, den: Denoiser) -> None:
        """Refuse, in one line, a backbone this sampler cannot run on: called when the run is planned, before any
        weights load (and again when sampling starts, for direct callers). Every backbone by default."""

    def check_prompts(self, prompts: list[str], den: Denoiser) -> None:
        """Refuse, in one line, local prompts (as the text encoder sees them) this sampler cannot use on backbone
        `den`: called when the run is planned, and again once the tokenizer is loaded, before the first step.
        Every prompt by default."""

    def check_length(self, length: int, den: Denoiser) -> None:
        """Refuse, in one line, a video (or multi-shot take) of `length` latent frames that this sampler cannot run
        on backbone `den` (weights not loaded): called when the run is planned, before any run directory or weights
        (`begin` checks again, for direct callers). Every length by default."""

    def sample(self, run: SamplingRun, resume: SamplerState | None = None) -> torch.Tensor:
        """Denoise run.noise to clean latents [1, L, C, H, W] float32; continue from `resume` when given (its
        tensors and step count, with run.generator already restored to the state saved with it)."""
        total = self.begin(run)
        run.weigh("denoise", self.forwards_per_step(total))
        state = resume.placed_on(run.noise.device) if resume is not None else SamplerState(self.initial_state(run))
        run.progress("denoise", state.done, total)
        for i in range(state.done, total):
            self.step(run, state, i)
            state.done = i + 1
            run.progress("denoise", state.done, total)
            run.after_step(state, total)
        return self.finish(state)

    @abstractmethod
    def begin(self, run: SamplingRun) -> int:
        """Plan the run (windows, schedule, prompt ids; checks and log lines) without drawing random numbers;
        return the number of steps."""

    def forwards_per_step(self, total: int) -> list[float] | None:
        """The transformer forwards (one per window sample and guidance branch, as `Denoiser.forward_count` counts
        them) each of the `total` steps will spend, from the plan `begin` made (called after it; draws nothing).
        The progress ETA weighs steps by them. None: not known, every step weighs the same."""
        return None

    def initial_state(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        """The tensors before the first step: x_T [L, C, H, W] by default."""
        return {"x": run.noise[0]}

    @abstractmethod
    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        """Denoising step i: update state.tensors (and state.estimate) in place of the previous ones."""

    def finish(self, state: SamplerState) -> torch.Tensor:
        """The clean latents [1, L, C, H, W] after the last step."""
        return state.tensors["x"][None]

    def describe(self) -> dict:
        """Hyperparameters for the manifest."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


#: most sampling steps: one per training timestep of the schedules in use (1000 on CogVideoX and Wan)
MAX_STEPS = 1000
#: rules of the options most samplers share (longgen.options; a sampler declares each option with its rule)
NUM_STEPS = Whole(1, MAX_STEPS)
GUIDANCE = Number(0, 100)
STRIDE = Whole(1)
ETA = Number(0, 1)


def guidance_branches(guidance_scale: float) -> int:
    """Forwards per window sample: two with classifier-free guidance (scale > 1), else one."""
    return 2 if guidance_scale > 1.0 else 1

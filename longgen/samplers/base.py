"""What every sampler receives (`SamplingRun`) and the interface it implements (`Sampler`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch

from longgen.denoiser import Denoiser
from longgen.windows import WindowPlan, strided_plan


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


@dataclass
class SamplingRun:
    """One video to sample.

    `noise` is the initial latent x_T, [1, L, C, H, W] float32 on the denoiser's device, drawn on the CPU from the
    seed. `prompt_for_window(start, length)` gives the encoded-prompt id of a window by the story segment that holds
    its centre. `generator` is a seeded CPU generator for every random choice a sampler makes (minibatches, shifts,
    fresh noise), so a seed gives the same video on any device.
    """

    denoiser: Denoiser
    noise: torch.Tensor  # [1, L, C, H, W]
    prompt_for_window: Callable[[int, int], int]
    generator: torch.Generator
    progress: Callable[[str, int, int], None] = _no_progress
    #: encoded-prompt ids by role, for samplers that need more than the per-window local prompt
    prompt_ids: dict[str, int] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.noise.shape[1]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise drawn on the CPU from the run's generator, then moved to the device (float32)."""
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).to(self.noise.device)


class Sampler(ABC):
    """A long-video sampler. Constructed from its YAML before any weights load, so bad keywords fail fast."""

    #: the stride (latent frames) of the sampler's window grid; also sets the video length for num_windows=N
    stride: int
    num_steps: int
    guidance_scale: float

    def plan(self, length: int, window: int) -> WindowPlan:
        """The sampler's window grid over a latent of `length` frames (recorded in the manifest)."""
        return strided_plan(length, window, self.stride)

    @abstractmethod
    def sample(self, run: SamplingRun) -> torch.Tensor:
        """Denoise run.noise to clean latents [1, L, C, H, W] float32."""

    def describe(self) -> dict:
        """Hyperparameters for the manifest."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def check_common(num_steps: int, guidance_scale: float, stride: int | None = None, eta: float = 0.0) -> None:
    """Range checks shared by the samplers' constructors (clear errors before any weights load)."""
    from longgen.errors import UsageError

    if int(num_steps) != num_steps or num_steps < 1:
        raise UsageError(f"sampler.num_steps={num_steps} must be a whole number >= 1")
    if guidance_scale < 0:
        raise UsageError(f"sampler.guidance_scale={guidance_scale} must be >= 0 (<= 1 turns guidance off)")
    if stride is not None and (int(stride) != stride or stride < 1):
        raise UsageError(f"sampler.stride={stride} must be a whole number >= 1 (latent frames)")
    if not 0.0 <= eta <= 1.0:
        raise UsageError(f"sampler.eta={eta} must be in [0, 1]")

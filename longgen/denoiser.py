"""The seam between backbones and samplers (DESIGN.md).

A sampler sees only a `Denoiser`: the native window length, the latent frame shape, the noise schedule as
tensors, and `predict`, which returns the clean-latent estimate x̂0 and the implied noise ε̂ for a batch of windows
at one timestep with classifier-free guidance applied. Everything model-specific (v-prediction, SNR shift, RoPE,
dtype, offload, attention processors, micro-batching) stays behind it; samplers never import diffusers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch

from longgen.diffusion import NoiseSchedule


@dataclass
class Prediction:
    """Guided model output for a batch of windows, float32."""

    x0: torch.Tensor  # [B, M, C, H, W]
    eps: torch.Tensor  # [B, M, C, H, W]


class Denoiser(ABC):
    """What a sampler may ask of a backbone."""

    #: native window length in latent frames (M)
    window: int
    #: latent frame shape (C, H, W)
    latent_shape: tuple[int, int, int]
    device: torch.device

    #: number of transformer forward passes (one per sample, CFG branches counted separately) since the last reset
    forward_count: int = 0
    #: number of batched transformer calls since the last reset
    call_count: int = 0

    @abstractmethod
    def schedule(self, num_steps: int) -> NoiseSchedule:
        """Sampling timesteps and ᾱ for `num_steps` steps, from the loaded scheduler."""

    @abstractmethod
    def predict(
        self,
        x_t: torch.Tensor,
        t: int,
        prompt_ids: Sequence[int],
        guidance_scale: float,
    ) -> Prediction:
        """x̂0 and ε̂ for windows x_t [B, M, C, H, W] (float32) at timestep t, window b conditioned on the encoded
        prompt `prompt_ids[b]` and guided against the negative prompt with `guidance_scale` (≤ 1: no guidance)."""

"""The initial noise x_T every sampler starts from (config group `noise`): i.i.d. Gaussian, or FreeNoise's
rescheduled noise.

FreeNoise (Qiu, Xia, Zhang, Shan, Hou, Liu & Zeng 2024, "FreeNoise: Tuning-Free Longer Video Diffusion via Noise
Rescheduling", ICLR 2024, arXiv 2310.15169, §3 "Noise rescheduling"): a model trained on clips of f frames drifts
when each window of a longer video sees unrelated noise. FreeNoise draws i.i.d. noise for the first f frames only
and builds every later frame from it: the frames are filled in blocks of S (the window stride), block
[f + jS, f + (j + 1)S) taking the noise of frames [jS, jS + S) in a random order (a local shuffle):

    ε_{f + jS + i} = ε_{jS + π_j(i)},   i = 0..S − 1,   π_j a uniform random permutation of 0..S − 1,

applied in order of j, so frames past 2f copy frames that are copies themselves: frame v ≥ f repeats a frame of
the first window, v − f frames earlier up to the shuffle within its block. Every frame is a standard normal frame
(marginals unchanged: unit variance per frame), and with windows every S frames each window holds the first
window's f noise frames, permuted. A last block shorter than S takes the first frames of its shuffled source block.

In latent frames: f is the backbone's window (`window: null`, 13 on CogVideoX, 21 on Wan) and S its window stride
(`stride: ${backbone.stride}`, 4 on CogVideoX-2B, 6 on Wan): the paper's VideoCrafter setting is the model's whole
clip (16 frames) and the stride of its window fusion (4), and longgen's windowed samplers fuse windows every
`backbone.stride` latent frames. `sampler=gen-l-video noise=freenoise` is the FreeNoise baseline (FreeNoise's
window fusion is Gen-L-Video's per-frame average with distance weights; longgen averages uniformly).

Everything is drawn on the CPU from the seed's generator (the Gaussian draw first, then the permutations), so a
seed gives the same x_T on any device; `gaussian` draws exactly what longgen always drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longgen.errors import UsageError
from longgen.options import Whole, check_fields, option


class GaussianNoise:
    """x_T ~ N(0, I), i.i.d. over every element (the default)."""

    def check(self, window: int) -> None:
        """UsageError for settings that cannot work with this backbone's window (none here)."""

    def draw(self, shape: tuple[int, ...], generator: torch.Generator, window: int) -> torch.Tensor:
        """Float32 noise of `shape` [1, L, C, H, W] on the CPU."""
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def describe(self) -> dict:
        return {"kind": "gaussian",
                "drawn": "float32 [1, L, C, H, W] on the CPU with torch.Generator().manual_seed(seed)"}


@dataclass(eq=False)
class FreeNoise(GaussianNoise):
    """FreeNoise noise rescheduling: the first `window` frames i.i.d., later frames locally shuffled repeats. The
    options (conf/noise/freenoise.yaml) are declared with their accepted values (longgen.options)."""

    window: int | None = option(None, Whole(1, note="latent frames", null="the backbone's window"))
    stride: int = option(4, Whole(1, note="latent frames"))

    def __post_init__(self) -> None:
        check_fields(self, "noise")

    def _window(self, window: int) -> int:
        return self.window if self.window is not None else window

    def check(self, window: int) -> None:
        if self.stride > self._window(window):
            raise UsageError(f"noise.stride={self.stride} is longer than the noise window ({self._window(window)} "
                             f"latent frames): FreeNoise shuffles blocks of at most one window")

    def draw(self, shape: tuple[int, ...], generator: torch.Generator, window: int) -> torch.Tensor:
        noise = super().draw(shape, generator, window)  # [1, L, C, H, W]
        order = reschedule_order(shape[1], self._window(window), self.stride, generator)
        return noise[:, order]  # [1, L, C, H, W]

    def describe(self) -> dict:
        return {"kind": "freenoise", "window": self.window or "backbone window", "stride": self.stride,
                "drawn": "float32 [1, L, C, H, W] on the CPU from the seed, then the permutations from the same "
                         "generator (FreeNoise noise rescheduling)"}


def reschedule_order(length: int, window: int, stride: int, generator: torch.Generator) -> list[int]:
    """Source frame of every frame (FreeNoise rescheduling, formula in the module docstring): frames < window are
    their own source; block [window + jS, window + (j + 1)S) takes the sources of frames [jS, jS + S), shuffled.
    Returns a list of `length` indices into the i.i.d. draw, all < window."""
    order = list(range(min(length, window)))
    for start in range(window, length, stride):
        source = order[start - window : start - window + stride]  # the block one window earlier
        perm = torch.randperm(len(source), generator=generator).tolist()
        order.extend(source[p] for p in perm[: length - start])
    return order

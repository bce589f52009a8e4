"""Pure step maths shared by every sampler: parameterisations, the DDIM update, window gather and fusion.

Notation (DDIM, Song et al. 2021, Eq. 12; SynCoS supplementary Eq. 4): x_t = a_t·x0 + s_t·ε with
a_t = √ᾱ_t and s_t = √(1 − ᾱ_t) for a variance-preserving model. A rectified-flow model fits the same form with
a_t = 1 − t, s_t = t, so a sampler written against (a_t, s_t, x̂0, ε̂) runs on either.

All functions here are side-effect free and take/return tensors; shapes are given per argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepCoeffs:
    """Coefficients of one sampling step t → t_prev."""

    t: int
    a: float  # signal scale at t (√ᾱ_t)
    s: float  # noise scale at t (√(1 − ᾱ_t))
    a_prev: float
    s_prev: float


@dataclass(frozen=True)
class NoiseSchedule:
    """The backbone's noise schedule, as read from its loaded scheduler (never re-derived).

    `alphas_cumprod[t]` is ᾱ_t for every training timestep; `timesteps[i]` is the i-th sampling timestep
    (descending) and `alphas_cumprod_prev[i]` the ᾱ that step i moves to (the scheduler's own rule, including its
    final value after the last step).
    """

    alphas_cumprod: torch.Tensor  # [T_train] float64
    timesteps: tuple[int, ...]
    alphas_cumprod_prev: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.timesteps)

    def coeffs(self, t: int) -> tuple[float, float]:
        """(a_t, s_t) at any training timestep t."""
        ab = float(self.alphas_cumprod[int(t)])
        return math.sqrt(ab), math.sqrt(max(0.0, 1.0 - ab))

    def step(self, i: int) -> StepCoeffs:
        t = self.timesteps[i]
        a, s = self.coeffs(t)
        abp = self.alphas_cumprod_prev[i]
        return StepCoeffs(t=t, a=a, s=s, a_prev=math.sqrt(abp), s_prev=math.sqrt(max(0.0, 1.0 - abp)))


def v_to_x0_eps(x_t: torch.Tensor, v: torch.Tensor, a: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v-prediction (Salimans & Ho 2022) to (x̂0, ε̂): x̂0 = a·x_t − s·v, ε̂ = a·v + s·x_t. Any shape."""
    return a * x_t - s * v, a * v + s * x_t


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """The noise implied by a clean estimate: ε̂ = (x_t − a·x̂0) / s (s > 0 at every sampling step). Any shape."""
    return (x_t - a * x0) / s


def add_noise(x0: torch.Tensor, eps: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """Forward process x_t = a·x0 + s·ε (SynCoS supplementary Eq. 4). Any shape."""
    return a * x0 + s * eps


def ddim_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    c: StepCoeffs,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, Eq. 12) from x_t and a clean estimate x̂0 to x_{t_prev}. Any shape.

    With η = 0: x_prev = a_prev·x̂0 + s_prev·ε̂ with ε̂ = (x_t − a·x̂0)/s, which is affine in x̂0 for fixed x_t: the
    average of per-window steps equals the step of the averaged x̂0 (the Gen-L-Video / SynCoS stage-1 fusion).
    With η > 0 (variance-preserving schedules only) a fraction of fresh `noise` is injected:
    σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev).
    """
    return ddim_from_eps(x0, eps_from_x0(x_t, x0, c.a, c.s), c, eta, noise)


def ddim_from_eps(
    x0: torch.Tensor,
    eps: torch.Tensor,
    c: StepCoeffs,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DDIM update (Song et al. 2021, Eq. 12) written from a clean estimate x̂0 and a noise ε, both given:
    x_prev = a_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε + σ·noise. `ddim_step` is this with ε implied by x_t; SynCoS
    stage 3 (supplementary §E) uses it with the baseline noise. Any shape."""
    if eta == 0.0:
        return c.a_prev * x0 + c.s_prev * eps
    if noise is None:
        raise ValueError("a DDIM update with eta > 0 needs `noise`")
    ab, abp = c.a * c.a, c.a_prev * c.a_prev
    sigma = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(max(0.0, 1 - ab / abp))
    direction = math.sqrt(max(0.0, 1 - abp - sigma * sigma))
    return c.a_prev * x0 + direction * eps + sigma * noise


def window_index(starts: torch.Tensor | list[int], window: int, device: torch.device | None = None) -> torch.Tensor:
    """Latent-frame index of every (window, position) pair, flattened: [N·M] int64."""
    starts_t = torch.as_tensor(starts, dtype=torch.long, device=device)  # [N]
    return (starts_t[:, None] + torch.arange(window, device=starts_t.device)[None, :]).reshape(-1)  # [N·M]


def _window_frames(starts: torch.Tensor | list[int], window: int, device: torch.device) -> torch.Tensor:
    """Frame index of each window position: [N, M] int64 (contiguous windows as a special case of frame lists)."""
    return window_index(starts, window, device).reshape(-1, window)  # [N, M]


def gather_windows(video: torch.Tensor, starts: torch.Tensor | list[int], window: int) -> torch.Tensor:
    """Slice windows out of a video. video: [L, C, H, W] → [N, M, C, H, W]."""
    return gather_frames(video, _window_frames(starts, window, video.device))


def scatter_windows(
    values: torch.Tensor, starts: torch.Tensor | list[int], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum window values into frames. values: [N, M, C, H, W] → (sum [L, C, H, W], count [L] float)."""
    return scatter_frames(values, _window_frames(starts, values.shape[1], values.device), length)


def fuse_windows(
    values: torch.Tensor,
    starts: torch.Tensor | list[int],
    length: int,
    fallback: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-frame average over the windows that cover each frame (Gen-L-Video; SynCoS Fig. 18; GLC Eq. 3 with
    uniform weights). values: [N, M, C, H, W] → [L, C, H, W]. Frames no window covers take `fallback` [L, C, H, W]
    (zeros when None)."""
    return fuse_frames(values, _window_frames(starts, values.shape[1], values.device), length, fallback)


def gather_frames(video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Clips made of arbitrary frames (e.g. dilated, GLC-Diffusion Eq. 4): clip n, position j is frame index[n, j].
    video: [L, C, H, W], index: [N, M] int64 → [N, M, C, H, W]."""
    n, m = index.shape
    flat = index.reshape(-1).to(video.device)  # [N·M]
    return video.index_select(0, flat).reshape(n, m, *video.shape[1:])  # [N, M, C, H, W]


def scatter_frames(
    values: torch.Tensor, index: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of `gather_frames`: sum clip values back into their frames.
    values: [N, M, C, H, W], index: [N, M] → (sum [L, C, H, W], count [L] float)."""
    n, m = index.shape
    flat = index.reshape(-1).to(values.device)  # [N·M]
    total = torch.zeros((length, *values.shape[2:]), dtype=values.dtype, device=values.device)  # [L, C, H, W]
    total.index_add_(0, flat, values.reshape(n * m, *values.shape[2:]))
    count = torch.zeros(length, dtype=values.dtype, device=values.device)  # [L]
    count.index_add_(0, flat, torch.ones(n * m, dtype=values.dtype, device=values.device))
    return total, count


def fuse_frames(
    values: torch.Tensor, index: torch.Tensor, length: int, fallback: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-frame average over every clip position that maps to the frame (GLC Eq. 3 with uniform weights, for clips
    given by explicit frame indices). values: [N, M, C, H, W], index: [N, M] → [L, C, H, W]. Frames no clip covers
    take `fallback` [L, C, H, W] (zeros when None). With index = window_index(starts, M).reshape(N, M) this is
    `fuse_windows`."""
    total, count = scatter_frames(values, index, length)
    shape = (length,) + (1,) * (values.dim() - 2)
    fused = total / count.clamp(min=1).reshape(shape)  # [L, C, H, W]
    if fallback is not None:
        fused = torch.where(count.reshape(shape) > 0, fused, fallback)
    return fused

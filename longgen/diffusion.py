"""Pure step maths shared by every sampler: parameterisations, the DDIM update, window gather and fusion.

Notation (DDIM, Song et al. 2021, Eq. 12; SynCoS supplementary Eq. 4): x_t = a_t·x0 + s_t·ε. Two families of
paths fit this form, and a sampler written against (a_t, s_t, x̂0, ε̂) runs on either:
- variance preserving (CogVideoX): a_t = √ᾱ_t, s_t = √(1 − ᾱ_t), ᾱ read from the backbone's scheduler;
- rectified flow (Wan; SynCoS supplementary Eq. 7): a_t = 1 − σ_t, s_t = σ_t with σ_t = t / T the (shifted) noise
  level of model timestep t.
The DDIM update with η = 0, x_prev = a_prev·x̂0 + s_prev·ε̂, is then the exact DDIM step on a VP model and the
Euler step x_prev = x_t + (σ_prev − σ_t)·v of the flow ODE on a flow model (ε̂ − x̂0 = v).

All functions here are side-effect free and take/return tensors; shapes are given per argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: the path families NoiseSchedule knows
PATHS = ("vp", "flow")


@dataclass(frozen=True)
class StepCoeffs:
    """Coefficients of one sampling step t → t_prev."""

    t: float  # model timestep (an int on VP backbones; σ·T on flow backbones)
    a: float  # signal scale at t
    s: float  # noise scale at t
    a_prev: float
    s_prev: float


@dataclass(frozen=True)
class NoiseSchedule:
    """The backbone's noise schedule as read from its loaded scheduler (never re-derived), in (a, s) form.

    `timesteps[i]` is the model timestep of sampling step i (descending); `a[i], s[i]` the path coefficients there
    and `a_prev[i], s_prev[i]` those step i moves to (the scheduler's own rule, including its final value after the
    last step). `path` says how a model timestep maps to (a, s) away from the sampling grid (`coeffs`, used e.g. by
    SynCoS with a random timestep) and which velocity the model family is trained on (`velocity`). Build one with
    `NoiseSchedule.vp` or `NoiseSchedule.flow`.
    """

    path: str
    timesteps: tuple[float, ...]
    a: tuple[float, ...]
    s: tuple[float, ...]
    a_prev: tuple[float, ...]
    s_prev: tuple[float, ...]
    #: VP only: ᾱ_t at every training timestep, [T_train] float64
    alphas_cumprod: torch.Tensor | None = None
    #: flow only: T in σ = t / T
    num_train_timesteps: int = 1000

    @classmethod
    def vp(
        cls, alphas_cumprod: torch.Tensor, timesteps: tuple[int, ...], alphas_cumprod_prev: tuple[float, ...]
    ) -> "NoiseSchedule":
        """A variance-preserving schedule from ᾱ at every training timestep [T_train], the sampling timesteps and the
        ᾱ each step moves to: a = √ᾱ, s = √(1 − ᾱ)."""
        acp = alphas_cumprod.to(torch.float64)
        pairs = [_vp_coeffs(float(acp[int(t)])) for t in timesteps]
        prev = [_vp_coeffs(float(ab)) for ab in alphas_cumprod_prev]
        return cls(
            path="vp", timesteps=tuple(int(t) for t in timesteps),
            a=tuple(p[0] for p in pairs), s=tuple(p[1] for p in pairs),
            a_prev=tuple(p[0] for p in prev), s_prev=tuple(p[1] for p in prev),
            alphas_cumprod=acp,
        )

    @classmethod
    def flow(cls, timesteps: tuple[float, ...], final_sigma: float, num_train_timesteps: int) -> "NoiseSchedule":
        """A rectified-flow schedule from the scheduler's sampling timesteps t_i = σ_i·T (shift already applied by
        the scheduler) and the σ after the last step: a = 1 − σ, s = σ; step i moves to σ_{i+1}."""
        sigmas = [float(t) / num_train_timesteps for t in timesteps] + [float(final_sigma)]
        return cls(
            path="flow", timesteps=tuple(float(t) for t in timesteps),
            a=tuple(1.0 - x for x in sigmas[:-1]), s=tuple(sigmas[:-1]),
            a_prev=tuple(1.0 - x for x in sigmas[1:]), s_prev=tuple(sigmas[1:]),
            num_train_timesteps=int(num_train_timesteps),
        )

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"unknown path family {self.path!r}; expected one of {PATHS}")
        n = len(self.timesteps)
        if not all(len(v) == n for v in (self.a, self.s, self.a_prev, self.s_prev)):
            raise ValueError("a, s, a_prev and s_prev need one value per sampling timestep")
        if self.path == "vp" and self.alphas_cumprod is None:
            raise ValueError("a VP schedule needs alphas_cumprod")

    def __len__(self) -> int:
        return len(self.timesteps)

    def coeffs(self, t: float) -> tuple[float, float]:
        """(a_t, s_t) at any model timestep t (VP: a training timestep; flow: t in [0, T])."""
        if self.path == "vp":
            return _vp_coeffs(float(self.alphas_cumprod[int(t)]))
        sigma = float(t) / self.num_train_timesteps
        return 1.0 - sigma, sigma

    def step(self, i: int) -> StepCoeffs:
        return StepCoeffs(t=self.timesteps[i], a=self.a[i], s=self.s[i], a_prev=self.a_prev[i], s_prev=self.s_prev[i])

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, a: float, s: float) -> torch.Tensor:
        """The velocity this model family is trained to predict at a point a·x0 + s·ε of its path
        (`path_velocity`). Any shape."""
        return path_velocity(self.path, x0, eps, a, s)


def path_velocity(path: str, x0: torch.Tensor, eps: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """The velocity a model family is trained on, for the point x = a·x0 + s·ε of its path. Any shape.
    VP (Salimans & Ho 2022): v = a·ε − s·x0; rectified flow (SynCoS supplementary Eq. 9): v = ε − x0. Both are the
    derivative of the path in the family's own time variable (the angle with a = cos φ, resp. σ)."""
    if path == "vp":
        return a * eps - s * x0
    if path == "flow":
        return eps - x0
    raise ValueError(f"unknown path family {path!r}; expected one of {PATHS}")


def _vp_coeffs(alpha_bar: float) -> tuple[float, float]:
    return math.sqrt(alpha_bar), math.sqrt(max(0.0, 1.0 - alpha_bar))


def v_to_x0_eps(x_t: torch.Tensor, v: torch.Tensor, a: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v-prediction (Salimans & Ho 2022) to (x̂0, ε̂): x̂0 = a·x_t − s·v, ε̂ = a·v + s·x_t. Any shape."""
    return a * x_t - s * v, a * v + s * x_t


def flow_to_x0_eps(x_t: torch.Tensor, v: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow velocity v = ε − x0 (rectified flow, SynCoS supplementary Eqs. 7 and 9) to (x̂0, ε̂) on the path
    x_t = (1 − σ)·x0 + σ·ε: x̂0 = x_t − σ·v, ε̂ = x_t + (1 − σ)·v. Any shape; `sigma` a float or a tensor that
    broadcasts against x_t (e.g. one σ per frame, [M, 1, 1, 1])."""
    return x_t - sigma * v, x_t + (1.0 - sigma) * v


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
    With η > 0 a fraction of fresh `noise` is injected with σ = η·`ancestral_std(c)`
    (= η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) on a VP schedule).
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
    x_prev = a_prev·x̂0 + √(s_prev² − σ²)·ε + σ·noise. `ddim_step` is this with ε implied by x_t; SynCoS
    stage 3 (supplementary §E) uses it with the baseline noise. Any shape."""
    if eta == 0.0:
        return c.a_prev * x0 + c.s_prev * eps
    if noise is None:
        raise ValueError("a DDIM update with eta > 0 needs `noise`")
    sigma = eta * ancestral_std(c)
    direction = math.sqrt(max(0.0, c.s_prev * c.s_prev - sigma * sigma))
    return c.a_prev * x0 + direction * eps + sigma * noise


def ancestral_std(c: StepCoeffs) -> float:
    """Standard deviation of the posterior q(x_prev | x_t, x0) of the path x = a·x0 + s·ε (the η = 1 DDIM noise):
    (s_prev/s)·√(s² − (a/a_prev)²·s_prev²), the variance of q(z_s | z_t, x) in Kingma et al. 2021 ("Variational
    Diffusion Models", §3) with α = a, σ = s. On a VP path
    (a² + s² = 1) this is Song et al.'s √((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)."""
    if c.s == 0.0 or c.a_prev == 0.0:
        return 0.0
    ratio = c.a / c.a_prev
    return (c.s_prev / c.s) * math.sqrt(max(0.0, c.s * c.s - ratio * ratio * c.s_prev * c.s_prev))


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


def add_windows(total: torch.Tensor, count: torch.Tensor, values: torch.Tensor, starts: torch.Tensor | list[int]) -> None:
    """`scatter_windows` into running sums, in place (`add_frames`). values: [N, M, C, H, W] → total [L, C, H, W],
    count [L]."""
    add_frames(total, count, values, _window_frames(starts, values.shape[1], values.device))


def fuse_windows(values: torch.Tensor, starts: torch.Tensor | list[int], length: int) -> torch.Tensor:
    """Per-frame average over the windows that cover each frame (Gen-L-Video; SynCoS Fig. 18; GLC Eq. 3 with
    uniform weights). values: [N, M, C, H, W] → [L, C, H, W]; frames no window covers are 0."""
    return fuse_frames(values, _window_frames(starts, values.shape[1], values.device), length)


def gather_frames(video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Clips made of arbitrary frames (e.g. dilated, GLC-Diffusion Eq. 4): clip n, position j is frame index[n, j].
    video: [L, C, H, W], index: [N, M] int64 → [N, M, C, H, W]."""
    n, m = index.shape
    flat = index.reshape(-1).to(video.device)  # [N·M]
    return video.index_select(0, flat).reshape(n, m, *video.shape[1:])  # [N, M, C, H, W]


def distinct_runs(flat: list[int]) -> list[tuple[int, int]]:
    """Split positions 0..n−1 into consecutive runs [start, end) in which no frame index repeats."""
    runs, start, seen = [], 0, set()
    for p, frame in enumerate(flat):
        if frame in seen:
            runs.append((start, p))
            start, seen = p, set()
        seen.add(frame)
    runs.append((start, len(flat)))
    return runs


def scatter_frames(
    values: torch.Tensor, index: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of `gather_frames`: sum clip values back into their frames.
    values: [N, M, C, H, W], index: [N, M] → (sum [L, C, H, W], count [L] float).

    Deterministic on every device: each frame sums its contributions in clip-position order. A CUDA index_add_ adds
    positions that share a frame with atomics in whatever order the threads arrive (different bits from run to run
    and between processes), so the positions are added in consecutive runs with no repeated frame (one index_add_
    each, about one per window); on a CPU this is the same arithmetic as a single index_add_."""
    total = torch.zeros((length, *values.shape[2:]), dtype=values.dtype, device=values.device)  # [L, C, H, W]
    count = torch.zeros(length, dtype=values.dtype, device=values.device)  # [L]
    add_frames(total, count, values, index)
    return total, count


def add_frames(total: torch.Tensor, count: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
    """`scatter_frames` into running sums, in place: total [L, C, H, W] += the clip values [N, M, C, H, W] of the
    frames in index [N, M], count [L] += how many positions each frame got. Summing the clips of a video a group at a
    time, in clip order, gives the bytes one `scatter_frames` of all of them gives: each frame's contributions are
    added in the same order either way (a group boundary only splits a run of distinct frames)."""
    n, m = index.shape
    flat = index.reshape(-1)  # [N·M]
    runs = distinct_runs(flat.tolist())
    flat = flat.to(values.device)
    src = values.reshape(n * m, *values.shape[2:])  # [N·M, C, H, W]
    ones = torch.ones(n * m, dtype=count.dtype, device=values.device)  # [N·M]
    for a, b in runs:
        total.index_add_(0, flat[a:b], src[a:b])
        count.index_add_(0, flat[a:b], ones[a:b])


def fuse_frames(values: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """Per-frame average over every clip position that maps to the frame (GLC Eq. 3 with uniform weights, for clips
    given by explicit frame indices). values: [N, M, C, H, W], index: [N, M] → [L, C, H, W]; frames no clip covers
    are 0. With index = window_index(starts, M).reshape(N, M) this is `fuse_windows`."""
    return frame_mean(*scatter_frames(values, index, length))  # [L, C, H, W]


def frame_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per-frame sums divided by their counts: total [L, C, H, W], count [L] → [L, C, H, W]; a frame counted 0
    times stays 0."""
    return total / count.clamp(min=1).reshape((-1,) + (1,) * (total.dim() - 1))

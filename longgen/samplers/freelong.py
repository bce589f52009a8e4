"""FreeLong: the whole video as one sequence, with SpectralBlend attention (Lu, Liang, Zhu & Yang, "FreeLong:
Training-Free Long Video Generation with SpectralBlend Temporal Attention", NeurIPS 2024, arXiv 2407.19918), and
the multi-band variant of FreeLong++ (Lu & Yang 2025, arXiv 2507.00162). GLC-Diffusion (arXiv 2501.05484) compares
against it in its Table 1 on CogVideoX at 3× and 6× length; it gives no FreeLong settings of its own, and describes it
as single-trajectory denoising of the whole video (its §4.2–4.3).

The paper's observation: a short-video model asked for a long video in one pass keeps the video's
low-frequency content (layout, identity) but distorts its high frequencies — spatial detail is lost, temporal
flicker grows — because its attention now spreads over many more frames than it was trained on. SpectralBlend
attention runs two branches in each attention layer and mixes them in the frequency domain:

  X_global = Attention(Q, K, V)            over the tokens of all L latent frames,
  X_local  = Attention(Q, K, V; M_w)       each query frame restricted to a window of w frames around it,
  X        = ℱ⁻¹( ℱ(X_global)·P + ℱ(X_local)·(1 − P) ),

ℱ the 3-D FFT over (frame, token row, token column) and P a spatio-temporal Gaussian low-pass filter (the public
code's cutoffs d_t = d_s = 0.25 of the Nyquist frequency). FreeLong++ ("Multi-band SpectralFusion") uses several
local windows w_1 < … < w_K plus the global branch, each contributing one frequency band, from the highest (the
shortest window) to the lowest (global). The exact masks, filters and band weights are in
longgen/backbones/spectral_attention.py, which the backbone installs for the duration of each step
(`Denoiser.spectral_attention`); this module only chooses them.

The sampler is direct sampling (longgen/samplers/direct.py: one prediction of the whole latent per step, DDIM with
η = 0 by default, Song et al. 2021 Eq. 12) with the attention replaced. Hence the reduction the tests pin: when the
video fits one local window (w ≥ L, e.g. num_windows=1 with w = M) the local branch is the global attention and
FreeLong is direct sampling. Each step costs one guided prediction of the whole video — per layer the global
attention over all frames plus a local attention and one FFT blend per window — against Gen-L-Video's N windows of M
frames.

Choices (conf/sampler/freelong.yaml): `window` (w, default the backbone's native window M, as the paper uses the
model's training length — 16 frames for its UNet models), `multi_band` (FreeLong++'s further windows, each longer
than the previous; empty: FreeLong), `temporal_cutoff` (d_t) and `spatial_cutoff` (d_s; null: temporal bands only).
FreeLong++'s SpecMix noise initialisation is not part of this sampler (longgen's `noise=` group chooses x_T).
One prompt, as direct sampling: the video is one sequence and CogVideoX's joint attention (Wan's cross-attention
too) shares one text across all its frames, so there are no windows to route a story's events to; a story of
several events is refused at plan time, naming a windowed sampler (DirectSampler.single_prompt_reason).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from longgen.denoiser import Denoiser
from longgen.errors import UsageError
from longgen.options import Number, Whole, option
from longgen.samplers.base import SamplerState, SamplingRun
from longgen.samplers.direct import DirectSampler

log = logging.getLogger(__name__)


def window_list(name: str, value: Any) -> tuple[int, ...]:
    """Rule of `multi_band`: a list of whole window lengths (latent frames) >= 1, strictly increasing."""
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1
                            for v in items):
        raise UsageError(f"{name}={value!r} must be a list of whole window lengths in latent frames, e.g. [26, 39] "
                         f"([] for FreeLong's single local window)")
    items = [int(v) for v in items]
    if any(b <= a for a, b in zip(items, items[1:])):
        raise UsageError(f"{name}={items} must be strictly increasing (shortest window first)")
    return tuple(items)


@dataclass(eq=False)
class FreeLongSampler(DirectSampler):
    """The options (conf/sampler/freelong.yaml), each with its accepted values; DirectSampler's as well."""

    window: int | None = option(None, Whole(1, null="the backbone's native window M"))
    multi_band: tuple[int, ...] = option((), window_list)
    temporal_cutoff: float = option(0.25, Number(0, above=True, note="1 = the Nyquist frequency; public code: 0.25"))
    spatial_cutoff: float | None = option(0.25, Number(0, above=True, null="temporal bands only"))

    def calls_share_attention(self) -> str | None:
        return "FreeLong's spectral blend attention"

    def check_options(self) -> None:
        if self.window is not None and self.multi_band and self.multi_band[0] <= self.window:
            raise UsageError(f"sampler.multi_band={list(self.multi_band)} must hold windows longer than "
                             f"sampler.window={self.window}")

    def windows(self, native: int) -> tuple[int, ...]:
        """The local windows, shortest first: w (default the backbone's window M), then FreeLong++'s."""
        return (self.window or native, *self.multi_band)

    def check_length(self, length: int, den: Denoiser) -> None:
        self.checked_windows(length, den.window)  # when the run is planned: a bad band stops before any run directory
        den.check_sequence(length)  # the whole video is one sequence: the model's positions must cover it

    def checked_windows(self, length: int, native: int) -> tuple[int, ...]:
        """The local windows (`windows`), refused in one line where a FreeLong++ band is not longer than the local
        window or not shorter than the video (it would be the global branch)."""
        windows = self.windows(native)
        if len(windows) > 1 and windows[1] <= windows[0]:
            raise UsageError(f"sampler.multi_band={list(self.multi_band)} must hold windows longer than the local "
                             f"window {windows[0]} (the backbone's window; or set sampler.window)")
        if len(windows) > 1 and windows[-1] >= length:
            raise UsageError(f"sampler.multi_band window {windows[-1]} is not shorter than the video's {length} "
                             f"latent frames (it would be the global branch): use shorter windows or a longer video")
        return windows

    def begin(self, run: SamplingRun) -> int:
        steps = super().begin(run)
        windows = self.checked_windows(run.length, run.denoiser.window)
        if windows[0] >= run.length:
            log.info("the video's %d latent frames fit the local window of %d: FreeLong is direct sampling here",
                     run.length, windows[0])
        self._windows = windows
        return steps

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        with run.denoiser.spectral_attention(run.length, self._windows, self.temporal_cutoff, self.spatial_cutoff):
            super().step(run, state, i)  # one guided prediction of the whole latent [1, L, C, H, W], then DDIM

    def describe(self) -> dict:
        info = super().describe()
        info["multi_band"] = list(self.multi_band)
        return info

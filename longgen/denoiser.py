"""The seam between backbones and samplers (DESIGN.md).

A sampler sees only a `Denoiser`: the native window length, the latent frame shape, the noise schedule in the form
x_t = a_t·x0 + s_t·ε (variance-preserving or rectified flow, `diffusion.NoiseSchedule`), and `predict`, which
returns the clean-latent estimate x̂0 and the implied noise ε̂ for a batch of windows at one timestep with
classifier-free guidance applied. Everything model-specific (v- or flow prediction, SNR or timestep shift, RoPE,
latent layout, dtype, offload, attention processors, micro-batching) stays behind it; samplers never import
diffusers. A backbone states what else it can do (`per_frame_timesteps`, `anchor_attention`, `shot_attention`,
`spectral_attention`, `kv_sharing`, `predict_grad`);
samplers that need a capability ask for it and fail with one line where it is missing.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Protocol, Sequence

import torch

from longgen.diffusion import NoiseSchedule
from longgen.errors import UsageError
from longgen.parallel.units import Units


class ShotSharing(Protocol):
    """What a multi-shot sampler holds while cross-shot attention is on (a backbone's implementation:
    longgen/backbones/shot_attention.py): two contexts for the `predict` calls made inside them."""

    def capturing(self) -> ContextManager[None]:
        """The calls inside keep the reference shot's attention keys and values."""

    def sharing(self) -> ContextManager[None]:
        """Every layer of the calls inside also attends to the kept keys and values."""


class KVSharing(Protocol):
    """What DiTCtrl holds while KV-sharing is on (a backbone's implementation: longgen/backbones/kv_sharing.py): two
    contexts for the `predict` calls made inside them."""

    def capturing(self) -> ContextManager[None]:
        """The calls inside run plain attention and keep window b's keys/values (and subject mask) as source b."""

    def sharing(self, sources: Sequence[int]) -> ContextManager[None]:
        """In the chosen layers, window b of the calls inside attends with the keys/values of source `sources[b]`."""


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
    #: told the samples (forwards) of each transformer call as it is issued, where set (the run's progress, so
    #: that a step of hundreds of windows shows how far it is); None: nobody listens
    on_forward: Callable[[int], None] | None = None
    #: whether `predict` accepts one timestep per latent frame (t a tensor of M timesteps, or [B, M]: one row per
    #: window); the CogVideoX and Wan backbones do (FIFO-Diffusion needs it)
    per_frame_timesteps: bool = False
    #: where the units of work (transformer calls of micro-batch size, windows, VAE tiles) run: this process, or
    #: spread over a process group (longgen/parallel/units.py); set per job by generate
    units: Units = Units()

    @abstractmethod
    def schedule(self, num_steps: int) -> NoiseSchedule:
        """Sampling timesteps and their (a, s) coefficients for `num_steps` steps, from the loaded scheduler."""

    @abstractmethod
    def predict(
        self,
        x_t: torch.Tensor,
        t: float,
        prompt_ids: Sequence[int],
        guidance_scale: float,
    ) -> Prediction:
        """x̂0 and ε̂ for windows x_t [B, M, C, H, W] (float32) at model timestep t (a value of the schedule's
        `timesteps`, or any timestep its `coeffs` accepts), window b conditioned on the encoded prompt
        `prompt_ids[b]` and guided against the negative prompt with `guidance_scale` (≤ 1: no guidance). Where
        `per_frame_timesteps` is true, t may also be a tensor of timesteps per latent frame: [M] (the same for every
        window) or [B, M] (window b's frames take row b); x̂0 and ε̂ of each frame then use its own timestep's
        coefficients. A backbone without the capability raises UsageError for a tensor t."""

    def anchor_attention(self, strength: float, groups: Sequence[int] | None = None) -> ContextManager[None]:
        """A context in which every `predict` uses anchor-based attention (GLC-Diffusion Eq. 10): in each attention
        layer, each window's video keys/values become λ·own + (1 − λ)·anchor's, λ = `strength`. The batch of a
        `predict` is split into consecutive `groups` of windows (None: one group); the first window of each group
        is its anchor, per guidance branch. Backbones that cannot do this raise UsageError."""
        raise UsageError(
            f"the {type(self).__name__} backbone has no anchor-based attention: turn it off (sampler.abam=false)"
        )

    def shot_attention(self, share: float, guided: bool) -> ContextManager[ShotSharing]:
        """A context for multi-shot sampling (longgen/run/shots.py) with cross-shot attention: it yields a layout whose
        `capturing()` makes the `predict` calls inside keep the reference shot's attention keys/values, and whose
        `sharing()` makes every layer of the `predict` calls inside also attend to a share `share` of them
        (longgen/backbones/shot_attention.py); elsewhere `predict` is unchanged. `guided`: whether the predicts use
        classifier-free guidance (each branch keeps its own reference). Backbones that cannot do this raise
        UsageError."""
        raise UsageError(
            f"the {type(self).__name__} backbone has no cross-shot attention: turn it off (shots.cross_attention=0)"
        )

    def spectral_attention(self, frames: int, windows: Sequence[int], temporal_cutoff: float,
                           spatial_cutoff: float | None) -> ContextManager[None]:
        """A context in which every `predict` of windows of `frames` latent frames (a whole video) uses FreeLong's
        spectral blend attention (longgen/backbones/spectral_attention.py): in each attention layer the global
        attention over all frames and local attentions restricted to `windows` frames around each query frame
        (ascending; more than one: FreeLong++'s bands) are blended in the 3-D frequency domain, low frequencies from
        the global branch, through Gaussian low-pass filters of normalised cutoffs `temporal_cutoff` and
        `spatial_cutoff` (None: temporal only). Backbones that cannot do this raise UsageError."""
        raise UsageError(
            f"the {type(self).__name__} backbone has no spectral blend attention (FreeLong): use another sampler"
        )

    def kv_sharing(self, layers: Sequence[int], subject: Sequence[int], threshold: float) -> ContextManager[KVSharing]:
        """A context for DiTCtrl's mask-guided KV-sharing (longgen/backbones/kv_sharing.py): it yields a layout whose
        `capturing()` keeps the source windows' keys/values and whose `sharing(sources)` makes the attention layers in
        the half-open span `layers` attend with them; `subject` (text token positions; empty: no mask) and `threshold`
        make the mask from the text-video attention map. Backbones that cannot do this raise UsageError."""
        raise UsageError(f"the {type(self).__name__} backbone has no KV-sharing: use another sampler than ditctrl")

    def check_sequence(self, frames: int) -> None:
        """Refuse in one line, before any weights load, one sequence of `frames` latent frames (a whole video in one
        transformer call, as FreeLong runs it) beyond the positions the model can encode, where that is known
        then; `spectral_attention` checks it again in any case. Nothing by default."""

    def check_kv_layers(self, layers: Sequence[int | None]) -> None:
        """Refuse in one line, before any weights load, a `kv_sharing` span `layers` beyond the model's attention
        layers, where their number is known then; `kv_sharing` checks it again in any case. Nothing by default."""

    def predict_grad(
        self,
        x_t: torch.Tensor,
        t: float,
        prompt_ids: Sequence[int],
        guidance_scale: float,
    ) -> Prediction:
        """Like `predict`, but differentiable with respect to x_t (autograd through the model). Backbones that
        cannot do this raise UsageError."""
        raise UsageError(
            f"the {type(self).__name__} backbone cannot backpropagate through its model: use a sampler option that "
            f"does not need model gradients (e.g. sampler.vmcr_source=tweedie)"
        )

    def window_vjp(
        self,
        x_t: torch.Tensor,
        t: int,
        prompt_ids: Sequence[int],
        guidance_scale: float,
        cotangent: torch.Tensor,
    ) -> torch.Tensor:
        """Vector-Jacobian products of the guided x̂0, one window at a time (so memory stays that of one window):
        for each window k, ∂⟨x̂0(x_t[k]), cotangent[k]⟩ / ∂x_t[k]. x_t, cotangent: [K, M, C, H, W] → [K, M, C, H, W].
        Each window is a unit of work (`units`); its forward and backward run in one process."""

        def one(k: int) -> torch.Tensor:
            xk = x_t[k : k + 1].detach().requires_grad_(True)  # [1, M, C, H, W]
            with self.units.alone(), torch.enable_grad(), exact_backward(xk.device):
                out = self.predict_grad(xk, t, [prompt_ids[k]], guidance_scale).x0  # [1, M, C, H, W]
                (grad,) = torch.autograd.grad(out, xk, grad_outputs=cotangent[k : k + 1])
            return grad[0]  # [M, C, H, W]

        rows = 2 if guidance_scale > 1.0 else 1
        return torch.stack(self.units.map(one, [rows] * x_t.shape[0], kind="vjp"))  # [K, M, C, H, W]


@contextlib.contextmanager
def exact_backward(device: torch.device) -> Iterator[None]:
    """On CUDA, torch's deterministic algorithms for the block (a differentiable forward and its backward), so a
    gradient through the model has the same bytes in every process: FlashAttention-2's backward otherwise sums
    query gradients with atomic adds in whatever order its thread blocks finish. cuBLAS asks for a fixed workspace
    in this mode (CUBLAS_WORKSPACE_CONFIG, set here unless the user set it). Off CUDA every kernel used is
    deterministic already; the caller's setting is restored on exit."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)

"""FreeLong's spectral blend attention for the CogVideoX, Wan and HunyuanVideo 1.5 transformers: FreeLong (Lu,
Liang, Zhu & Yang, "FreeLong: Training-Free Long Video Generation with SpectralBlend Temporal Attention", NeurIPS
2024, arXiv 2407.19918, its SpectralBlend temporal attention) and the multi-band form of FreeLong++ (Lu & Yang 2025,
arXiv 2507.00162, "Multi-band SpectralFusion"). The sampler that uses it is longgen/samplers/freelong.py; its
module docstring states the method.

In every attention layer of a transformer call over a whole video (F latent frames of h×w tokens, frames outermost
in the token order, as the families lay out their patch tokens), with q, k, v the layer's projected (normed,
rotated) queries, keys and values:

- global branch:  X_g = softmax(q·kᵀ/√d)·v over every token (CogVideoX: the text tokens and all video tokens of
  its joint attention; Wan: all video tokens of its self-attention; HunyuanVideo 1.5: the valid text tokens and
  all video tokens of its joint attention, which puts the text after the video and masks the padded text:
  `masked_spectral_attention` runs the op row by row on [valid text; video]);
- local branch for a window of w frames:  X_w = softmax(q·kᵀ/√d + M_w)·v, where M_w is 0 where the key is a text
  token or a video token of a frame in the query frame's window, −∞ elsewhere. The window of query frame i is the
  w frames starting at s_i = min(max(i − ⌊w/2⌋, 0), F − w): centred on i, shifted inwards at the ends of the video
  so it always holds w frames (the authors' public code builds its "adjusted" local mask the same way for odd w;
  for an even w their centred window holds w + 1 frames, ours holds w). A w ≥ F is the global branch.
- blend (SpectralBlend): with ℱ the 3-D discrete Fourier transform over (frame, token row,
  token column) of each channel and P a low-pass filter on that grid,
      X = ℱ⁻¹( ℱ(X_g)·P + ℱ(X_w)·(1 − P) ),
  the global branch's low spatio-temporal frequencies and the local branch's high ones. P is the Gaussian of the
  public code: P(ν) = exp(−½·((ν_t/d_t)² + (ν_h/d_s)² + (ν_w/d_s)²)), ν the bin frequencies normalised so that
  ±1 is the Nyquist frequency of each axis (its defaults d_t = d_s = 0.25). We evaluate P at the exact frequencies
  of the FFT bins (2·fftfreq); the public code's grid, built after an fftshift as 2k/n − 1, sits half a bin off
  zero for odd n, so its filter is slightly asymmetric there. `spatial_cutoff=None` drops the spatial terms
  (temporal bands only).
- FreeLong++'s multi-band form: local branches for windows w_1 < … < w_K, then the global branch. Each branch
  contributes one band, from high to low frequencies: with low-pass filters P_1 ≥ … ≥ P_K of temporal cutoffs
  c_k = d_t·w_1/w_k (a window k times longer is trusted for frequencies k times lower; ours — the FreeLong++
  text we could read, its abstract and project page, states the band order from local to global, not the cutoffs), the weights are W_1 = 1 − P_1,
  W_k = P_{k−1} − P_k, W_global = P_K. They are ≥ 0 and sum to 1 at every frequency; K = 1 is FreeLong.
  Computed as X = X_1 + ℱ⁻¹( Σ_k P_k·ℱ(X_{k+1} − X_k) ) (X_{K+1} = X_g): one forward FFT per band boundary and one
  inverse, as real FFTs (P is real and even, so the result is real).

The blend is applied to the attention output before the output projection: the projection is linear per token
and its bias is a constant over tokens (zero frequency only), where the weights sum to 1, so blending before or
after it is the same. The text tokens' outputs (CogVideoX) are the global branch's: FreeLong changes the video
features only. Positions: every branch sees the tokens' positions in the whole video (CogVideoX-2B's absolute
sin-cos table, which diffusers recomputes for a longer video; 3-D RoPE on CogVideoX-5B and Wan), so a local
window's relative positions are those of a native-length clip.

Compilation and processes: the attention, both branches and the blend are the custom op
`longgen::spectral_attention` (opaque to torch.compile, one processor object per configuration, so the compiled
blocks keep one graph). The op is a function of one sample's q, k, v only — no state across rows, layers or
calls — so a `predict` cut into micro-batches on any number of processes gives the same bytes.

Cost per layer and sample: the global attention over all F frames plus the local ones (F·h·w queries against
w·h·w keys each), the real FFTs of K differences and one inverse over [F, h, w, channels] in float32.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from longgen.backbones.attention import (JointAttention, heads_last, hunyuan_out, hunyuan_qkv, kernel_func,
                                        processors_installed, valid_text_first, wan_self_qkv)


# ---------------------------------------------------------------------------------------------------- the maths
def window_starts(frames: int, window: int) -> list[int]:
    """First frame of each query frame's local window of `window` frames (clipped to F): [F] ints,
    s_i = min(max(i − ⌊w/2⌋, 0), F − w)."""
    w = min(window, frames)
    return [min(max(i - window // 2, 0), frames - w) for i in range(frames)]


def band_cutoffs(windows: Sequence[int], temporal_cutoff: float) -> list[float]:
    """Temporal cutoff of the low-pass filter above each local branch: c_k = d_t·w_1/w_k (module docstring)."""
    return [temporal_cutoff * windows[0] / w for w in windows]


@functools.cache
def _lowpass_cached(frames: int, height: int, width: int, temporal_cutoff: float, spatial_cutoff: float | None,
                    device: str) -> torch.Tensor:
    nu_t = 2.0 * torch.fft.fftfreq(frames, dtype=torch.float64)  # [F], ±1 = Nyquist
    d2 = (nu_t / temporal_cutoff).pow(2)[:, None, None]  # [F, 1, 1]
    if spatial_cutoff is not None:
        nu_h = 2.0 * torch.fft.fftfreq(height, dtype=torch.float64)  # [h]
        nu_w = 2.0 * torch.fft.rfftfreq(width, dtype=torch.float64)  # [w//2 + 1]
        d2 = d2 + (nu_h / spatial_cutoff).pow(2)[None, :, None] + (nu_w / spatial_cutoff).pow(2)[None, None, :]
    filt = torch.exp(-0.5 * d2).expand(frames, height, width // 2 + 1)  # [F, h, w//2 + 1]
    return filt.to(device=device, dtype=torch.float32).contiguous()


def lowpass(frames: int, height: int, width: int, temporal_cutoff: float, spatial_cutoff: float | None,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """The Gaussian low-pass P on the half spectrum of a real FFT over (F, h, w): [F, h, w//2 + 1] float32."""
    return _lowpass_cached(frames, height, width, float(temporal_cutoff),
                           None if spatial_cutoff is None else float(spatial_cutoff), str(device))


def spectral_blend(branches: Sequence[torch.Tensor], cutoffs: Sequence[float],
                   spatial_cutoff: float | None) -> torch.Tensor:
    """Σ_k W_k ⊛ X_k of the module docstring. branches: K + 1 tensors [..., F, h, w, D] (the local windows in
    ascending order, then the global branch); cutoffs: the K temporal cutoffs c_k → [..., F, h, w, D] in the
    branches' dtype (computed in float32). Boundaries between two identical branch tensors add nothing and are
    skipped."""
    if len(branches) != len(cutoffs) + 1:
        raise ValueError(f"{len(branches)} branches need {len(branches) - 1} cutoffs, not {len(cutoffs)}")
    first = branches[0]
    frames, height, width = first.shape[-4:-1]
    grid = (-4, -3, -2)
    spectrum = None
    for k, cutoff in enumerate(cutoffs):
        if branches[k + 1] is branches[k]:
            continue
        diff = branches[k + 1].float() - branches[k].float()  # [..., F, h, w, D]
        filt = lowpass(frames, height, width, cutoff, spatial_cutoff, first.device)[..., None]  # [F, h, w//2+1, 1]
        band = torch.fft.rfftn(diff, dim=grid) * filt  # [..., F, h, w//2 + 1, D] complex
        spectrum = band if spectrum is None else spectrum + band
    if spectrum is None:
        return first
    return (first.float() + torch.fft.irfftn(spectrum, s=(frames, height, width), dim=grid)).to(first.dtype)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int, frame_tokens: int, window: int,
                    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The local branch for the video queries. q, k, v: [b, heads, text + F·T, hd] (text tokens first, then F frames
    of T tokens) → [b, heads, F·T, hd]. Query frames whose windows start at the same frame share one `attend` call
    against the text keys and the keys of their window's frames."""
    frames = (q.shape[2] - text) // frame_tokens
    w = min(window, frames)
    outs = []
    groups = itertools.groupby(enumerate(window_starts(frames, window)), key=lambda pair: pair[1])
    for start, members in groups:
        rows = [i for i, _ in members]  # consecutive query frames
        lo, hi = text + rows[0] * frame_tokens, text + (rows[-1] + 1) * frame_tokens
        keys = slice(text + start * frame_tokens, text + (start + w) * frame_tokens)
        k_win = torch.cat([k[:, :, :text], k[:, :, keys]], dim=2)  # [b, heads, text + w·T, hd]
        v_win = torch.cat([v[:, :, :text], v[:, :, keys]], dim=2)
        outs.append(attend(q[:, :, lo:hi], k_win, v_win))  # [b, heads, rows·T, hd]
    return torch.cat(outs, dim=2)  # [b, heads, F·T, hd]


@functools.cache
def _attend(kernel: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    return kernel_func(kernel)


@torch.library.custom_op("longgen::spectral_attention", mutates_args=())
def spectral_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int, height: int, width: int,
                       windows: list[int], temporal_cutoff: float, spatial_cutoff: float | None,
                       kernel: str) -> torch.Tensor:
    """FreeLong(++) attention of one layer. q, k, v: [b, heads, text + F·h·w, hd] (text tokens first, then the video
    tokens frame by frame, row by row) → [b, heads, text + F·h·w, hd]: the text rows and, blended with the local
    branches of `windows` (ascending, latent frames), the video rows of the global attention."""
    attend = _attend(kernel)
    frame_tokens = height * width
    frames = (q.shape[2] - text) // frame_tokens
    if frames * frame_tokens + text != q.shape[2]:
        raise RuntimeError(f"spectral attention: {q.shape[2] - text} video tokens are not whole frames of "
                           f"{height}×{width}")
    out = attend(q, k, v)  # [b, heads, text + N, hd] the global branch
    if windows[0] >= frames:  # every local window holds the whole video: the local branches are the global one
        return out.contiguous()  # the layout the shape function promises, whatever the kernel returned
    b, heads, _, hd = q.shape
    grid = (b, heads, frames, height, width, hd)
    glob = out[:, :, text:].reshape(grid)  # [b, heads, F, h, w, hd]
    branches = [local_attention(q, k, v, text, frame_tokens, w, attend).reshape(grid) if w < frames else glob
                for w in windows]  # [b, heads, F, h, w, hd] each; a window of the whole video is the global branch
    blended = spectral_blend([*branches, glob], band_cutoffs(windows, temporal_cutoff), spatial_cutoff)
    return torch.cat([out[:, :, :text], blended.reshape(b, heads, -1, hd)], dim=2)  # [b, heads, text + N, hd]


@spectral_attention.register_fake
def _spectral_attention_shape(q, k, v, text, height, width, windows, temporal_cutoff, spatial_cutoff, kernel):
    return q.new_empty(q.shape)  # contiguous, as the op returns it (q may be a transposed view)


# ---------------------------------------------------------------------------------------------------- processors
@dataclass(frozen=True)
class SpectralPlan:
    """One configuration of the blend for a transformer: local windows (latent frames, ascending), the cutoffs,
    the token grid of a frame (rows × columns) and the number of text tokens in front of the video tokens."""

    windows: tuple[int, ...]
    temporal_cutoff: float
    spatial_cutoff: float | None
    height: int
    width: int
    text: int = 0
    kernel: str = "sdpa"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[b, heads, text + N, hd] → [b, heads, text + N, hd] through the op."""
        return spectral_attention(q, k, v, self.text, self.height, self.width, list(self.windows),
                                  self.temporal_cutoff, self.spatial_cutoff, self.kernel)


# derived from diffusers models/attention_processor.py (CogVideoXAttnProcessor2_0), version 0.42
class CogVideoXSpectralProcessor(JointAttention):
    """CogVideoX's joint text-video attention (longgen's JointAttention: projections, q/k norms, RoPE on the video
    tokens, output projection) with the spectral blend attention in place of the attention kernel call."""

    def __init__(self, plan: SpectralPlan) -> None:
        super().__init__(plan.kernel)
        self.plan = plan
        self.attend = plan.attend


# derived from diffusers models/transformers/transformer_wan.py (WanAttnProcessor), version 0.42
class WanSpectralProcessor:
    """A Wan self-attention layer (video tokens only) with the spectral blend attention: diffusers'
    WanAttnProcessor for a text-to-video model (projections, RMS norms of q and k across heads, interleaved-pair
    RoPE, output projection) with the op in place of the attention call. The op computes with the plan's kernel
    (FlashAttention-3 from fa3-fwd under `backbone.attention=fa3`, else torch SDPA), so diffusers' `_flash_3`
    backend, where that is what `fa3` set on the layer, does not apply inside FreeLong."""

    def __init__(self, plan: SpectralPlan) -> None:
        self.plan = plan

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q, k, v = wan_self_qkv("WanSpectralProcessor", attn, hidden_states, encoder_hidden_states, attention_mask,
                               rotary_emb)  # [b, N, heads, hd] each
        out = heads_last(self.plan.attend, q, k, v)  # [b, N, D]
        return attn.to_out[1](attn.to_out[0](out))


@torch.library.custom_op("longgen::masked_spectral_attention", mutates_args=())
def masked_spectral_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_mask: torch.Tensor,
                              height: int, width: int, windows: list[int], temporal_cutoff: float,
                              spatial_cutoff: float | None, kernel: str) -> torch.Tensor:
    """`spectral_attention` for HunyuanVideo 1.5's masked joint attention. q, k, v: [b, heads, N + S, hd] (the
    video tokens first, then S text tokens); text_mask: [b, S] true on the valid ones → [b, heads, N + S, hd]: per
    row the op over its valid text tokens and the video tokens (attention.valid_text_first), padded text rows 0."""
    def attend(qi: torch.Tensor, ki: torch.Tensor, vi: torch.Tensor, text: int) -> torch.Tensor:
        return spectral_attention(qi, ki, vi, text, height, width, windows, temporal_cutoff, spatial_cutoff, kernel)

    return valid_text_first(attend, q, k, v, text_mask)


@masked_spectral_attention.register_fake
def _masked_spectral_attention_shape(q, k, v, text_mask, height, width, windows, temporal_cutoff, spatial_cutoff,
                                     kernel):
    return q.new_empty(q.shape)


# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
class HunyuanSpectralProcessor:
    """A HunyuanVideo 1.5 joint attention layer (video tokens, then text tokens under the padding mask) with the
    spectral blend attention: diffusers' processor (projections, per-head RMS norms, RoPE on the video tokens, the
    two output projections) with `masked_spectral_attention` in place of the masked attention call. The text
    tokens' outputs are the global branch's, as on CogVideoX."""

    def __init__(self, plan: SpectralPlan) -> None:
        self.plan = plan

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan
        q, k, v = hunyuan_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)  # [b, N + S, heads, hd]

        def attend(qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:  # [b, heads, N + S, hd]
            return masked_spectral_attention(qh, kh, vh, attention_mask.bool(), plan.height, plan.width,
                                             list(plan.windows), plan.temporal_cutoff, plan.spatial_cutoff,
                                             plan.kernel)

        out = heads_last(attend, q, k, v)  # [b, N + S, D]
        return hunyuan_out(attn, out, encoder_hidden_states.shape[1])  # video [b, N, D], text [b, S, D]


@functools.cache
def shared_processor(kind: type, plan: SpectralPlan):
    """One processor object per (family, configuration), the same object every time the blend is installed (so a
    compiled block sees the same processor at every step)."""
    return kind(plan)


@contextlib.contextmanager
def spectral_installed(transformer, processor, layers: Callable[[str], bool] | None = None) -> Iterator[None]:
    """Install `processor` on the attention layers of a diffusers transformer (or of each of a list of them: Wan 2.2
    A14B's experts) whose processor name `layers` accepts (all when None) for the duration of the block; the original
    processors come back on exit."""
    with processors_installed(transformer, processor.plan, lambda plan, layer, replaces: processor, layers):
        yield

"""RIFLEx: a longer window from a 3-D-RoPE video transformer by lowering one temporal frequency (Zhao et al. 2025,
"RIFLEx: A Free Lunch for Length Extrapolation in Video Diffusion Transformers", ICML 2025, arXiv 2502.15894).

The temporal part of a rotary embedding rotates channel pair j by p·θ_j at latent frame p, θ_j = b^{−2(j−1)/d}
(b the RoPE base, 10000 on CogVideoX and Wan; d the temporal share of the head dimension), so component j repeats
every N_j = 2π/θ_j frames (the paper's Eq. 4). The paper finds that one "intrinsic" component, the one whose period
is nearest the frame where an extrapolated video first repeats (Eq. 7: k = argmin_j |N_j − N|), decides whether a
longer video loops, and lowers only that frequency so a single period spans the whole extrapolated length
(Eq. 8: θ_k' ≤ 2π/(s·L), s the extrapolation factor, L the training length). Every other component, and every
spatial component, is left as it is. Facts taken from the authors' release (thu-ml/RIFLEx): the new frequency is
0.9·2π/L' with L' the extrapolated length in latent frames (10 % of margin against repetition in the last frames);
k = 2 (N_k = 20) on CogVideoX-5B, k = 4 (N_k = 50) on HunyuanVideo, the k being found with N = 26 and N = 66
latent frames, i.e. twice the training length (13 and 33) of each model.

longgen's reading (`backbone.riflex`):
- `true`: the window becomes s = 2 times the native clip (L' = 2·(M − 1) + 1 latent frames: 13 → 25 on CogVideoX,
  97 video frames as in the authors' CogVideoX run; 21 → 41 on Wan 2.1), and k is Eq. 7 with N = 2·M, the
  authors' own choice of N for both models they publish (it reproduces their k = 2 and k = 4). No k for Wan is
  published; this rule gives k = 5 (N_5 = 33.5) on Wan 2.1. An integer `backbone.riflex=K` takes component K
  (1-based, as the paper counts) instead.
- The frequency is only ever lowered: θ_k' = min(θ_k, 0.9·2π/L'). (The authors modify it when L' > N_k; between
  0.9·L' and L' their formula would raise θ_k slightly, which this keeps from happening.)
- Models whose positions are absolute (CogVideoX-2B) have no rotary table to change: refused in one line.

The table is patched where each family builds it: CogVideoX's per-window (cos, sin) table from its pipeline
(`patch_rows`), Wan's precomputed per-position buffers of its rotary module (`patch_wan_rope`). Both lay the
temporal frequencies first, each as two adjacent (interleaved) columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from longgen.errors import UsageError

#: the extrapolation factor s of a RIFLEx window (the paper's training-free setting: 2×)
FACTOR = 2
#: the authors' margin: one period of the lowered component spans L'/0.9 frames
MARGIN = 0.9


def parse_riflex(value) -> int | None:
    """`backbone.riflex` → None (off), 0 (on, k found by Eq. 7) or K ≥ 1 (component K, 1-based)."""
    if value is False or value is None:
        return None
    if value is True:
        return 0
    if isinstance(value, int) and value >= 1:
        return value
    raise UsageError(f"backbone.riflex={value!r}: use false, true (intrinsic component found by RIFLEx Eq. 7) or a "
                     f"component number K >= 1")


def check_component(choice: int | None, dim: int | None) -> None:
    """Refuse, when the run is planned, a component `backbone.riflex=K` beyond a temporal RoPE of `dim` channels
    (`plan` refuses it again at load); nothing to check for true/false or an unknown `dim`."""
    if choice and dim is not None and choice > dim // 2:
        raise UsageError(f"backbone.riflex={choice}: this model's temporal RoPE has {dim // 2} components "
                         f"(use 1..{dim // 2} or true)")


def wan_temporal_dim(head_dim: int) -> int:
    """The temporal share of a Wan head's rotary channels: what remains after the two spatial shares of
    2·⌊d/6⌋ each (diffusers' WanRotaryPosEmbed, its `t_dim`)."""
    return head_dim - 4 * (head_dim // 6)


def extended_window(window: int) -> int:
    """Latent frames of a RIFLEx window: s·(M − 1) + 1 (video frames c·s·(M − 1) + 1)."""
    return FACTOR * (window - 1) + 1


def temporal_frequencies(dim: int, base: float) -> torch.Tensor:
    """θ_j = base^{−2(j−1)/dim} for j = 1 … dim/2 (RoPE over `dim` temporal channels), float64 [dim/2]."""
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def intrinsic_component(freqs: torch.Tensor, native_window: int) -> int:
    """Eq. 7 with the first repetition frame N = s·M (see the module docstring): the 1-based k whose period
    N_j = 2π/θ_j is nearest N. freqs: [d/2] float64."""
    periods = 2 * math.pi / freqs  # [d/2]
    return int(torch.argmin((periods - FACTOR * native_window).abs())) + 1


@dataclass(frozen=True)
class RiflexPlan:
    """What RIFLEx changes in one model: component k (1-based) of the temporal RoPE, θ_k → theta_new."""

    k: int
    theta: float  # θ_k of the model
    theta_new: float  # min(θ_k, 0.9·2π/L')
    native_window: int  # M, latent frames
    window: int  # L', latent frames
    chosen: str  # "Eq. 7" or "backbone.riflex"

    def describe(self) -> dict:
        return {"k": self.k, "chosen_by": self.chosen, "period_frames": 2 * math.pi / self.theta,
                "theta": self.theta, "theta_new": self.theta_new, "period_new_frames": 2 * math.pi / self.theta_new,
                "native_window": self.native_window, "window": self.window, "factor": FACTOR, "margin": MARGIN,
                "paper": "Zhao et al. 2025, arXiv 2502.15894, Eqs. 4, 7, 8"}


def plan(choice: int, dim: int, base: float, native_window: int) -> RiflexPlan:
    """The change for a temporal RoPE of `dim` channels and base `base`; `choice` as parse_riflex returns it."""
    check_component(choice, dim)
    freqs = temporal_frequencies(dim, base)  # [dim/2]
    k = choice or intrinsic_component(freqs, native_window)
    window = extended_window(native_window)
    theta = float(freqs[k - 1])
    return RiflexPlan(k, theta, min(theta, MARGIN * 2 * math.pi / window), native_window, window,
                      "backbone.riflex" if choice else "Eq. 7")


def patch_columns(cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, column: int, theta: float) -> None:
    """Overwrite, in place, the two interleaved columns `column`, `column + 1` of rotary tables cos/sin [P, D] with
    cos/sin(p·θ) of each row's temporal position p (`positions` [P]); the other columns stay untouched."""
    angle = positions.to(torch.float64) * theta  # [P]
    for table, values in ((cos, angle.cos()), (sin, angle.sin())):
        table[:, column : column + 2] = values.to(table.device, table.dtype)[:, None]


def patch_rows(cos: torch.Tensor, sin: torch.Tensor, tokens_per_frame: int, rp: RiflexPlan) -> tuple:
    """A CogVideoX rotary table (cos, sin) [F·h·w, D], rows frame-major, temporal columns first → a patched copy."""
    cos, sin = cos.clone(), sin.clone()
    positions = torch.arange(cos.shape[0], device=cos.device) // tokens_per_frame  # [F·h·w] latent frame of a row
    patch_columns(cos, sin, positions, 2 * (rp.k - 1), rp.theta_new)
    return cos, sin


def patch_wan_rope(rope: torch.nn.Module, rp: RiflexPlan) -> None:
    """Wan's rotary module keeps (cos, sin) of every position [max_seq_len, D] with the temporal columns first;
    rewrite the intrinsic component's columns in place (the table is read per window at each forward)."""
    positions = torch.arange(rope.freqs_cos.shape[0], device=rope.freqs_cos.device)  # [max_seq_len]
    patch_columns(rope.freqs_cos, rope.freqs_sin, positions, 2 * (rp.k - 1), rp.theta_new)

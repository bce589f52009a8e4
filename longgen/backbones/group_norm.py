"""Group normalisation for video VAEs whose statistics are computed by many GPU blocks.

Group normalisation (Wu & He 2018, eq. 1–3) normalises each group of C/G channels of a sample by the mean and
variance over the group's channels and all positions, then applies a per-channel affine map:

    μ_ng = mean over (c ∈ g, t, h, w) of x,   σ²_ng = mean of (x − μ_ng)²,
    y = (x − μ_ng) / √(σ²_ng + ε) · γ_c + β_c.

Why longgen has its own: a VAE decode normalises tensors such as [1, 128, 8, 480, 720] (354 M elements in 32
groups). torch's CUDA group-norm kernel gives each (sample, group) pair one thread block for its statistics, so a
batch of one runs the reduction on 32 blocks of a 132-SM H100: on CogVideoX's decoder that kernel alone took 4.5 s
of a 14.4 s decode (scripts/decode_probe.py --profile). Here the two moments are ordinary tensor reductions, which
torch splits over as many blocks as the reduction needs, and the affine map is one elementwise pass:

- half-precision input (the VAE on a GPU): the moments Σx and Σx² accumulate in float32 straight from the input
  (no float copy of x), and σ² = E[x²] − μ² (clamped at 0). In float32 this loses about (μ/σ)²·1e-7 of σ² to
  cancellation, which stays below the fp16 input's own rounding (about (μ/σ)·5e-4 of σ) unless |μ| exceeds ~500 σ;
  float32/64 input: μ first, then σ² from the centred values (one more pass, no cancellation);
- the normalisation and γ, β are applied by `batch_norm` in inference mode with per-channel float32 statistics
  (each channel gets its group's μ, σ²): one read and one write of x, arithmetic in float32, one rounding to the
  output dtype, the memory layout of the input kept (channels-last included).

`ParallelGroupNorm` is an `nn.GroupNorm` (same parameters, same state dict) with this forward; `parallel_group_norms`
swaps it in for every `nn.GroupNorm` of a module tree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (CogVideoXResnetBlock3D, CogVideoXSpatialNorm3D, CogVideoXEncoder3D), version 0.42
# (the maths is torch's nn.GroupNorm; these VAE blocks hold plain nn.GroupNorm, which it replaces)
class ParallelGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` whose per-group moments are split-block reductions (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, C, *spatial]
        n, c = x.shape[:2]
        g = self.num_groups
        grouped = x.unflatten(1, (g, c // g))  # [N, G, C/G, *spatial], a view in any memory layout
        dims = tuple(range(2, grouped.dim()))
        count = grouped[0, 0].numel()
        if x.dtype in (torch.float16, torch.bfloat16):
            # one pass: Σx and Σx² accumulated in float32 (see the module docstring for the cancellation bound)
            mean = grouped.sum(dim=dims, dtype=torch.float32) / count  # [N, G]
            mean_sq = torch.linalg.vector_norm(grouped, 2, dim=dims, dtype=torch.float32).square() / count  # [N, G]
            var = (mean_sq - mean.square()).clamp_min(0)  # [N, G]
        else:
            # float32/64: two passes, the variance from the centred values (no cancellation)
            mean = grouped.sum(dim=dims) / count  # [N, G]
            centred = grouped - mean.view(n, g, *([1] * len(dims)))
            var = torch.linalg.vector_norm(centred, 2, dim=dims).square() / count  # [N, G]
        per_channel = c // g
        mean_c = mean.repeat_interleave(per_channel, dim=1).reshape(n * c)  # [N·C]
        var_c = var.repeat_interleave(per_channel, dim=1).reshape(n * c)  # [N·C]
        weight = self.weight.to(mean.dtype).repeat(n) if self.affine else None  # [N·C], float32 or float64
        bias = self.bias.to(mean.dtype).repeat(n) if self.affine else None
        # batch_norm's channel axis is dim 1: fold the samples into it ([N, C, ...] → [1, N·C, ...], a view)
        y = F.batch_norm(x.reshape(1, n * c, *x.shape[2:]), mean_c, var_c, weight, bias, False, 0.0, self.eps)
        return y.reshape(x.shape)  # a view unless N > 1 in channels-last layout


# derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (CogVideoXResnetBlock3D, CogVideoXSpatialNorm3D, CogVideoXEncoder3D), version 0.42
def parallel_group_norms(root: nn.Module) -> int:
    """Replace every `nn.GroupNorm` under `root` by a `ParallelGroupNorm` sharing its parameters; returns how many."""
    swaps = []
    for parent in root.modules():
        for name, child in parent.named_children():
            if type(child) is nn.GroupNorm:
                swaps.append((parent, name, child))
    for parent, name, old in swaps:
        new = ParallelGroupNorm(old.num_groups, old.num_channels, old.eps, old.affine)
        new.weight, new.bias = old.weight, old.bias  # the same Parameter objects (offload hooks, state dict)
        new.train(old.training)
        setattr(parent, name, new)
    return len(swaps)

"""Initial noise of GLC-Diffusion (Ma et al. 2025, arXiv 2501.05484): noise re-initialisation, §3.3, Eq. 11 and
Algorithm 1 lines 4–6.

1. Local noise shuffle (the FreeNoise idea the paper builds on): one window's worth of Gaussian noise (the "local
   noise unit" ε, [M, C, H, W]) is repeated along time until it covers the L latent frames; every repeat after the
   first has its frames permuted within consecutive groups of `group` frames. Each element stays N(0, 1); frames
   that are M apart share noise up to a local reordering, which ties distant parts of the video together.
2. Frequency fusion (Eq. 11): with a spatio-temporal low-pass filter H on the 3D FFT over (frames, height, width),
   z′ = IFFT3D(FFT3D(z)·H + FFT3D(η)·(1 − H)), i.e. the low frequencies of the shuffled noise z and the high
   frequencies of fresh global Gaussian noise η.
3. Variance correction (our addition, switchable): Eq. 11 keeps unit variance only for an ideal (0/1) filter and
   temporally white z. A smooth filter loses variance where 0 < H < 1 (H² + (1 − H)² < 1), and the shuffled z is
   correlated along time, so its low-pass part has a frame-dependent variance. The sampler starts DDIM at a timestep
   where x_T must be N(0, I) (ᾱ = 0 on CogVideoX), so each frame is divided by its exact standard deviation under
   this sampling process — computed from the filter's kernel and the shuffle map, not estimated from the sample.

Filter (the paper does not specify it): normalised frequency radius
r = √((2·f_t / c_t)² + (2·f_h / c_s)² + (2·f_w / c_s)²) with f in cycles per frame / per latent pixel (|f| ≤ ½), so
a cutoff c = 1 reaches the Nyquist frequency. `ideal`: H = [r ≤ 1]; `gaussian`: H = exp(−r²/2);
`butterworth` of order n: H = 1 / (1 + r^{2n}). Defaults in conf/sampler/glc.yaml follow FreeInit (Wu et al. 2023):
butterworth, n = 4, c_s = c_t = 0.25.
"""

from __future__ import annotations

import math

import torch

from longgen.errors import UsageError

FILTERS = ("ideal", "gaussian", "butterworth")


def check_filter(kind: str, spatial_cutoff: float, temporal_cutoff: float, order: int) -> None:
    if kind not in FILTERS:
        raise UsageError(f"sampler.filter={kind!r} is not a filter: use one of {', '.join(FILTERS)}")
    for name, value in (("spatial_cutoff", spatial_cutoff), ("temporal_cutoff", temporal_cutoff)):
        if not value > 0:
            raise UsageError(f"sampler.{name}={value} must be > 0 (1 = the Nyquist frequency)")
    if int(order) != order or order < 1:
        raise UsageError(f"sampler.filter_order={order} must be a whole number >= 1")


def shuffle_map(length: int, unit: int, group: int, generator: torch.Generator) -> torch.Tensor:
    """Which unit frame each of the `length` frames takes: [length] int64 in [0, unit). The first `unit` frames are
    0..unit−1 in order; each later repeat is permuted within consecutive groups of `group` frames."""
    if group < 1:
        raise UsageError(f"sampler.shuffle_group={group} must be >= 1")
    parts = [torch.arange(unit)]  # [M]
    for _ in range(1, math.ceil(length / unit)):
        order = torch.arange(unit)  # [M]
        for lo in range(0, unit, group):
            hi = min(unit, lo + group)
            order[lo:hi] = order[lo:hi][torch.randperm(hi - lo, generator=generator)]
        parts.append(order)
    return torch.cat(parts)[:length]  # [L]


def local_noise_shuffle(unit_noise: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Repeat a noise unit [M, C, H, W] along time by the frame map `source` [L] → [L, C, H, W]."""
    return unit_noise.index_select(0, source.to(unit_noise.device))  # [L, C, H, W]


def lowpass_filter(
    frames: int, height: int, width: int, kind: str, spatial_cutoff: float, temporal_cutoff: float, order: int = 4
) -> torch.Tensor:
    """H on the unshifted 3D FFT grid (torch.fft.fftfreq order): [frames, height, width] float64 in [0, 1]."""
    check_filter(kind, spatial_cutoff, temporal_cutoff, order)
    ft = torch.fft.fftfreq(frames, dtype=torch.float64)  # [F] cycles per frame
    fh = torch.fft.fftfreq(height, dtype=torch.float64)  # [H]
    fw = torch.fft.fftfreq(width, dtype=torch.float64)  # [W]
    r2 = (
        (2 * ft / temporal_cutoff)[:, None, None] ** 2
        + (2 * fh / spatial_cutoff)[None, :, None] ** 2
        + (2 * fw / spatial_cutoff)[None, None, :] ** 2
    )  # [F, H, W]
    if kind == "ideal":
        return (r2 <= 1.0).to(torch.float64)
    if kind == "gaussian":
        return torch.exp(-r2 / 2)
    return 1.0 / (1.0 + r2 ** int(order))


def frequency_fusion(z: torch.Tensor, eta: torch.Tensor, lowpass: torch.Tensor) -> torch.Tensor:
    """Eq. 11: low frequencies of z, high frequencies of η. z, eta: [L, C, H, W]; lowpass: [L, H, W] → [L, C, H, W]
    (same dtype as z; the transform runs in float64)."""
    dims = (0, 2, 3)  # frames, height, width; channels are independent
    h = lowpass[:, None].to(z.device)  # [L, 1, H, W]
    spec = torch.fft.fftn(z.double(), dim=dims) * h + torch.fft.fftn(eta.double(), dim=dims) * (1 - h)
    return torch.fft.ifftn(spec, dim=dims).real.to(z.dtype)  # [L, C, H, W]


def fusion_std(source: torch.Tensor, unit: int, lowpass: torch.Tensor) -> torch.Tensor:
    """Exact standard deviation of every element of frame t of `frequency_fusion(shuffled ε, η, H)` for ε, η i.i.d.
    N(0, 1): [L] float64 (it depends on the frame only; space is circular and white).

    Low-pass part: with k = IFFT3D(H) (a real kernel, H being even), frame t is Σ_t′ k(t − t′) ∗ ε[source(t′)], so
    its variance is Σ_m Σ_Δx (Σ_{t′: source(t′) = m} k(t − t′, Δx))². High-pass part: Σ |IFFT3D(1 − H)|² (Parseval).
    """
    length = lowpass.shape[0]
    kernel = torch.fft.ifftn(lowpass).real  # [L, H, W]
    per_unit = torch.zeros((length, unit, *lowpass.shape[1:]), dtype=torch.float64)  # [L, M, H, W]
    for t_src in range(length):
        # column t of the roll is k(t − t_src)
        per_unit[:, int(source[t_src])] += torch.roll(kernel, shifts=t_src, dims=0)
    low = per_unit.pow(2).sum(dim=(1, 2, 3))  # [L]
    high = torch.fft.ifftn(1 - lowpass).real.pow(2).sum()  # scalar
    return (low + high).sqrt()


def reinit_noise(
    unit_noise: torch.Tensor,
    global_noise: torch.Tensor,
    generator: torch.Generator,
    group: int,
    kind: str,
    spatial_cutoff: float,
    temporal_cutoff: float,
    order: int = 4,
    renormalize: bool = True,
) -> torch.Tensor:
    """Noise re-initialisation (Algorithm 1 lines 4–6). unit_noise ε: [M, C, H, W]; global_noise η: [L, C, H, W];
    the shuffle permutations come from `generator` → z′_T [L, C, H, W]."""
    length, unit = global_noise.shape[0], unit_noise.shape[0]
    source = shuffle_map(length, unit, group, generator)  # [L]
    z = local_noise_shuffle(unit_noise, source)  # [L, C, H, W]
    h = lowpass_filter(length, global_noise.shape[2], global_noise.shape[3], kind, spatial_cutoff, temporal_cutoff, order)
    out = frequency_fusion(z, global_noise, h)  # [L, C, H, W]
    if renormalize:
        std = fusion_std(source, unit, h).to(out.device, out.dtype)  # [L]
        out = out / std[:, None, None, None]  # [L, C, H, W]
    return out

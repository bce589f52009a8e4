"""GLC-Diffusion: global-local collaborative denoising for long videos (Ma et al. 2025, "Tuning-Free Long Video
Generation via Global-Local Collaborative Diffusion", arXiv 2501.05484). Equations are the paper's numbering.

Per DDIM step t → t_prev (Eq. 1, η = 0; Algorithm 1):
1. Global path (Eqs. 4–5, "global dilated sampling"): G clips of M frames, clip i = frames s_i + d·j (j < M) of a
   padded latent. d = ⌈L / M⌉ by default, so the d interleaved clips s_i = 0..d−1 together span the whole video and
   cover every frame; the latent is padded (reflect by default, split between both ends) to d·M frames and a padded
   position reads the frame it mirrors/replicates/wraps to (`padding`). Clips are built as explicit frame-index
   lists, so a padded position is simply another view of a real frame: fusing (Eq. 3) scatters its estimate back onto
   that frame, which is the least-squares solution of Eq. 8 for this gather. A user-given d with d·M < L stacks
   further blocks of d clips, so coverage never depends on d.
2. Local path (Eqs. 6–7, "local random shifting"): windows of M frames on the sampler's stride grid, the whole grid
   shifted by one offset r ∈ [0, stride) drawn each step from the run's seeded generator, plus windows pinned at 0 and
   L − M so no frame is ever uncovered. r = 0 (or `random_shift: false`) is exactly the Gen-L-Video grid.
3. Both paths' windows go through ONE `Denoiser.predict` per step (global clips first, then local windows; the
   backbone stacks the CFG branches and micro-batches). Each path is fused per frame with Eq. 3 (uniform weights W),
   and the paths are combined with Eq. 9, γ = γ0·e^{β·t} (t the model timestep of this step, 999 … 0). We combine
   the fused x̂0 of the two paths, x̂0 = γ·x̂0_global + (1 − γ)·x̂0_local, and take one DDIM step: the η = 0 DDIM
   update is affine in x̂0 for a fixed x_t with weights summing to one, so this equals γ·(global DDIM step) +
   (1 − γ)·(local DDIM step), the paper's combination of the denoised latents. (Eq. 8's √γ / √(1−γ) weighted least
   squares would normalise per frame slightly differently; we follow the closed form the paper states, Eq. 9.)
4. ABAM (Eq. 10), optional: the predict of step 3 runs inside `Denoiser.anchor_attention(λ, groups=[G, N_local])`,
   so each path's first clip is that path's anchor (per CFG branch, independent of micro-batching; see
   longgen/backbones/anchor_attention.py). λ follows Eq. 10 as written: it weights the clip's own keys/values, so the
   anchor's share is 1 − λ (the paper's λ = 0.1 → 90 % anchor). The paper's §7 prose describes λ the other way round
   (larger λ, more anchor); under that reading its 0.1 is our `abam_lambda: 0.9`. `describe()` records
   `abam_anchor_weight` = 1 − λ and the convention.
5. VMCR (Eqs. 12–15, Algorithm 1 lines 20–23), optional: motion vectors δ_i = x̂0[i+1] − x̂0[i] of the clean
   estimate belonging to z_{t−1}; loss ℓ = ℓ_pixel + λ_f·ℓ_freq; z_{t−1} ← z_{t−1} − ω·∇_{z_{t−1}} ℓ. The paper leaves
   open where x̂0 of z_{t−1} comes from, and with it the size of ∇_z ℓ = (∂x̂0/∂z)ᵀ ∇_{x̂0} ℓ:
   - `vmcr_source: tweedie` (default): x̂0(z) = x̂0 + a_prev·(z − z_{t−1}), this step's combined x̂0 moved with slope
     a_prev. By Tweedie's formula ∂E[x0|z]/∂z = (a/s²)·Cov[x0|z]; for unit-variance Gaussian latents Cov[x0|z] = s²·I,
     so the slope is exactly a_prev at every t. No model call.
   - `vmcr_source: affine`: this step's noise estimate ε̂ held fixed, x̂0(z) = (z − s_prev·ε̂)/a_prev, slope 1/a_prev
     (192 at CogVideoX's first step). It treats the model as blind to z, which is only right near t = 0.
   - `vmcr_source: model` (Algorithm 1 lines 21–23 as written; conf/experiment/glc-paper-4x.yaml): re-predicts
     x̂0 of z_{t−1} at the next timestep t−1 through both paths (this step's windows, Eq. 3 per path, Eq. 9 with
     γ(t−1), guidance as in every predict) and backpropagates through the transformer window by window
     (vector-Jacobian products, so memory stays that of one window); one extra predict of every window plus one
     differentiable forward and backward per window and CFG branch per step, all through the seam's batched calls
     and units of work (`Denoiser.window_vjp`), so `gpus=N` gives the same bytes and no generator draw is added
     (resume stays exact). Where it reads the paper rather than copies it: the windows are this step's (the paper
     does not say; new shifts would draw from the generator), ABAM is off in the re-prediction (an anchor couples
     every window to the first, so a window's Jacobian would no longer be its own), and at the last step there is
     no next timestep and the Tweedie slope is used (on CogVideoX's schedule a_prev = 1 there, where every source is
     the identity x̂0 = z_0). Pinned to a plain loop of those lines in tests/test_glc_vmcr.py.
   Size of one update at the paper's ω = 2e-5 (scripts/vmcr_update.py, tiny CogVideoX, L = 49, 50 steps; a random
   network, so only the ratio means much): ‖Δz‖/‖z‖ tweedie 2.0e-7 / model 1.7e-5 at t = 999, 1.1e-6 / 1.5e-5 at
   899, 2.7e-6 / 1.8e-5 at 799, 9.4e-6 / 2.1e-5 at 499, 1.6e-5 / 1.5e-5 at 99: the model source moves z up to 85×
   more at high noise, where the paper says VMCR matters, and the two agree near t = 0.
   Measured with scripts/vmcr_scale.py (L = 49, 50 steps; ratios of gradient norms to the model source):
   - exact posterior mean of white unit Gaussian latents: the model's gain along ∇_{x̂0}ℓ is a_prev; tweedie/model
     1.02–1.25 from t = 899 down, affine/model 824 at t = 899 falling to 1.08 at t = 39;
   - frame-correlated Gaussian latents (AR(1), ρ = 0.9): tweedie/model 2.5–16, affine/model 3900 → 2.7
     (at t = 999 both Gaussian denoisers return x̂0 = 0, a static video with nothing to align);
   - the untrained tiny CogVideoX: gain 0.37–0.97 at every t (a random network, not a denoiser); tweedie/model
     0.011 at t = 999, 0.08 at 899, 0.35–1.05 from 799 down; affine/model 414, 55, then 15 → 0.7.
   So the Tweedie slope is the free estimate that stays within a factor ~16 of a denoiser's Jacobian at every t,
   where the affine one is off by up to 4000.
   Size of one step: with the defaults VMCR changes z by ‖Δz‖/‖z‖ ≈ 1e-6–2e-5 on the tiny model, with rare spikes
   (3e-4 measured) where a spatial frequency of the motion is near zero: the phase term's gradient grows like
   1/|ℱ(δ)|. `vmcr_max_step` (ours, default 1e-3) is a trust region that caps ‖Δz‖ at that fraction of ‖z‖ in any
   case; it does not act with the defaults in the tests (tests/test_glc.py). VMCR runs at the steps whose
   timestep t lies in [vmcr_t_min, vmcr_t_max] (all steps by default: the paper applies it at every step),
   `vmcr_iters` gradient steps each (Algorithm 1: one). Term scales at the default weights are in
   conf/sampler/glc.yaml (the phase term is ~75 % of ℓ on unit noise).
   Loss details we chose: cos and the squared L2 norm are over a whole flattened frame δ_i; the sums run over all
   consecutive pairs (δ_i, δ_{i+1}); ℱ is the orthonormal 2D FFT over (height, width) per channel; the phase
   difference is wrapped to [−π, π].

Noise re-initialisation (Eq. 11) replaces x_T before the loop: longgen/samplers/glc_noise.py.

Switches (paper Table 2 ablations): global_path, local_path (at least one), noise_reinit, vmcr, abam, random_shift.
With global_path, noise_reinit, vmcr, abam and random_shift all off this sampler is Gen-L-Video on the same windows.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from longgen.denoiser import Denoiser
from longgen.diffusion import (
    StepCoeffs,
    ddim_step,
    fuse_frames,
    gather_frames,
    scatter_frames,
    window_index,
)
from longgen.errors import UsageError
from longgen.options import Number, OneOf, Whole, flag, option
from longgen.samplers.base import GUIDANCE, NUM_STEPS, STRIDE, Sampler, SamplerState, SamplingRun, guidance_branches
from longgen.samplers.glc_noise import FILTERS, reinit_noise

log = logging.getLogger(__name__)

PADDINGS = ("reflect", "replicate", "circular")
VMCR_SOURCES = ("tweedie", "affine", "model")
#: the options only VMCR reads (nothing else uses them when sampler.vmcr=false)
VMCR_OPTIONS = ("vmcr_source", "lambda_f", "lambda_mse", "lambda_phase", "omega", "vmcr_iters", "vmcr_t_min",
                "vmcr_t_max", "vmcr_max_step")


# ---------------------------------------------------------------------------------------------------- GLCD pieces
def gamma_at(t: float, gamma0: float, beta: float) -> float:
    """Annealing coefficient of Eq. 9 / §7: γ = γ0·e^{β·t}."""
    return gamma0 * math.exp(beta * t)


def default_dilation(length: int, window: int) -> int:
    """Smallest d with d·M ≥ L: the d interleaved dilated clips then cover the whole video."""
    return max(1, math.ceil(length / window))


def padded_source(position: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Frame read by each position of a latent padded on both sides (positions may be < 0 or ≥ L). [n] → [n]."""
    if mode == "replicate":
        return position.clamp(0, length - 1)
    if mode == "circular":
        return position.remainder(length)
    if mode == "reflect":  # mirror about the end frames without repeating them: -1 → 1, L → L−2
        if length == 1:
            return torch.zeros_like(position)
        period = 2 * (length - 1)
        q = position.remainder(period)
        return torch.where(q >= length, period - q, q)
    raise UsageError(f"sampler.padding={mode!r} is not a padding mode: use one of {', '.join(PADDINGS)}")


def dilated_clips(length: int, window: int, dilation: int | None = None, padding: str = "reflect") -> torch.Tensor:
    """Global dilated sampling (Eq. 4): frame indices of the global clips, [G, M] int64 into the unpadded latent.

    Blocks of d·M padded positions hold d clips each (clip i of a block: positions i + d·j); enough blocks are
    stacked to reach L, and the padding (padded length − L positions) is split between both ends."""
    d = default_dilation(length, window) if dilation is None else int(dilation)
    span = d * window  # padded positions per block of d interleaved clips
    blocks = math.ceil(length / span)
    left = (blocks * span - length) // 2  # padding before frame 0
    j = torch.arange(window)  # [M]
    clips = [b * span + i + d * j - left for b in range(blocks) for i in range(d)]  # G × [M] padded positions
    return padded_source(torch.stack(clips), length, padding)  # [G, M]


def shifted_starts(length: int, window: int, stride: int, offset: int) -> tuple[int, ...]:
    """Local random shifting (Eq. 6): the stride grid moved by `offset`, plus windows at 0 and L − M."""
    last = length - window
    return tuple(sorted({0, last, *range(offset, last + 1, stride)}))


def starts_index(starts: tuple[int, ...], window: int) -> torch.Tensor:
    """Contiguous windows as frame-index lists: [N, M] int64."""
    return window_index(list(starts), window).reshape(len(starts), window)  # [N, M]


def combine_paths(x0_global: torch.Tensor | None, x0_local: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """Eq. 9 on the fused clean estimates of the two paths (either may be switched off). [L, C, H, W] each."""
    if x0_global is None:
        return x0_local
    if x0_local is None:
        return x0_global
    return gamma * x0_global + (1.0 - gamma) * x0_local


# ---------------------------------------------------------------------------------------------------- VMCR pieces
def motion_terms(x0: torch.Tensor, lambda_f: float, lambda_mse: float, lambda_phase: float) -> dict[str, torch.Tensor]:
    """The weighted terms of ℓ_motion (Eqs. 12–14) of a clean video x0 [L, C, H, W]: {"cos", "mse", "amplitude",
    "phase"} → scalars whose sum is ℓ_motion = ℓ_pixel + λ_f·ℓ_freq (cos + mse = ℓ_pixel; the other two are
    λ_f·ℓ_amplitude and λ_f·λ_phase·ℓ_phase)."""
    if x0.shape[0] < 3:
        zero = x0.sum() * 0.0  # fewer than two motion vectors: nothing to align
        return {"cos": zero, "mse": zero, "amplitude": zero, "phase": zero}
    delta = x0[1:] - x0[:-1]  # [L−1, C, H, W] motion vectors δ_i (Eq. 12)
    cur, nxt = delta[:-1], delta[1:]  # [L−2, C, H, W] the pairs (δ_i, δ_{i+1})
    cur_flat, nxt_flat = cur.flatten(1), nxt.flatten(1)  # [L−2, C·H·W]
    cos = F.cosine_similarity(cur_flat, nxt_flat, dim=1)  # [L−2]
    spec_cur = torch.fft.fft2(cur, norm="ortho")  # [L−2, C, H, W] complex, over (H, W)
    spec_nxt = torch.fft.fft2(nxt, norm="ortho")  # [L−2, C, H, W] complex
    dphi = torch.angle(spec_cur) - torch.angle(spec_nxt)  # [L−2, C, H, W]
    dphi = dphi - 2 * math.pi * torch.round(dphi / (2 * math.pi))  # wrapped to [−π, π]
    return {
        "cos": (1.0 - cos).sum(),  # Eq. 13, first part
        "mse": lambda_mse * (cur_flat - nxt_flat).pow(2).sum(),  # Eq. 13, second part
        "amplitude": lambda_f * (spec_cur.abs() - spec_nxt.abs()).abs().sum(),  # Eq. 14
        "phase": lambda_f * lambda_phase * dphi.abs().sum(),  # Eq. 14
    }


def motion_loss(x0: torch.Tensor, lambda_f: float, lambda_mse: float, lambda_phase: float) -> torch.Tensor:
    """ℓ_motion = ℓ_pixel + λ_f·ℓ_freq (Eqs. 12–14) of a clean video x0 [L, C, H, W] → scalar."""
    return sum(motion_terms(x0, lambda_f, lambda_mse, lambda_phase).values())


@dataclass(frozen=True)
class MotionWeights:
    lambda_f: float = 0.2
    lambda_mse: float = 0.001
    lambda_phase: float = 1.0

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return motion_loss(x0, self.lambda_f, self.lambda_mse, self.lambda_phase)


def vmcr_slope(source: str, a_prev: float) -> float:
    """∂x̂0/∂z_{t−1} assumed by a fixed-slope VMCR source (a multiple of the identity).

    tweedie: a_prev, the exact Jacobian of the posterior mean E[x0 | z] = a·z for unit-variance Gaussian data
    (Tweedie: ∂E[x0|z]/∂z = (a/s²)·Cov[x0|z], and Cov[x0|z] = s²·I there since a² + s² = 1);
    affine: 1/a_prev, the map x̂0 = (z − s_prev·ε̂)/a_prev with this step's ε̂ held fixed."""
    if source == "affine":
        return 1.0 / a_prev
    return a_prev


def vmcr_linear_grad(
    z: torch.Tensor, z_ref: torch.Tensor, x0_ref: torch.Tensor, slope: float, weights: MotionWeights
) -> tuple[torch.Tensor, float]:
    """(∇_z ℓ_motion(x̂0(z)), ℓ) for the linearised clean estimate x̂0(z) = x0_ref + slope·(z − z_ref), i.e.
    slope·∇ℓ at x̂0(z). z, z_ref, x0_ref: [L, C, H, W]. With z_ref = a_prev·x0_ref + s_prev·ε̂ and slope 1/a_prev
    this is the affine map (z − s_prev·ε̂)/a_prev."""
    zv = z.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = weights.loss(x0_ref.detach() + slope * (zv - z_ref.detach()))
        (grad,) = torch.autograd.grad(loss, zv)
    return grad, float(loss.detach())


def vmcr_update(z: torch.Tensor, grad: torch.Tensor, omega: float) -> torch.Tensor:
    """Eq. 15: z ← z − ω·∇_z ℓ_motion."""
    return z - omega * grad


def cap_change(z: torch.Tensor, z_ref: torch.Tensor, max_step: float | None) -> tuple[torch.Tensor, float, bool]:
    """Limit VMCR's total change of one step to ‖z − z_ref‖ ≤ max_step·‖z_ref‖ (a trust region; None: no limit).
    Returns (z, ‖z − z_ref‖/‖z_ref‖ after the limit, whether it limited). [L, C, H, W] each."""
    change = z - z_ref  # [L, C, H, W]
    size, ref = float(change.norm()), float(z_ref.norm())
    if max_step is None or size <= max_step * ref:
        return z, size / max(ref, 1e-30), False
    return z_ref + change * (max_step * ref / size), max_step, True


# ---------------------------------------------------------------------------------------------------- sampler
@dataclass
class _StepWindows:
    """The windows of one step: global clips first, then local windows."""

    global_index: torch.Tensor | None  # [G, M] frame indices
    local_index: torch.Tensor | None  # [N, M]
    prompt_ids: list[int]  # [G + N]
    local_starts: tuple[int, ...]

    @property
    def groups(self) -> list[int]:
        return [int(i.shape[0]) for i in (self.global_index, self.local_index) if i is not None]

    @property
    def index(self) -> torch.Tensor:
        return torch.cat([i for i in (self.global_index, self.local_index) if i is not None])  # [G + N, M]


@dataclass(eq=False)
class GLCSampler(Sampler):
    """The options (conf/sampler/glc.yaml, which says where each default comes from), each with its accepted
    values."""

    num_steps: int = option(50, NUM_STEPS)
    guidance_scale: float = option(6.0, GUIDANCE)
    stride: int = option(4, STRIDE)
    # GLCD (Eqs. 4-9) and the paths' switches
    global_path: bool = option(True, flag)
    local_path: bool = option(True, flag)
    random_shift: bool = option(True, flag)
    gamma0: float = option(0.005, Number(0))
    beta: float = option(0.0005, Number())
    dilation: int | None = option(None, Whole(1, null="⌈L/M⌉"))
    padding: str = option("reflect", OneOf(PADDINGS))
    # noise re-initialisation (Eq. 11; longgen/samplers/glc_noise.py)
    noise_reinit: bool = option(True, flag)
    shuffle_group: int = option(4, Whole(1, note="latent frames"))
    filter: str = option("butterworth", OneOf(FILTERS))
    filter_order: int = option(4, Whole(1))
    spatial_cutoff: float = option(0.25, Number(0, above=True, note="1 = the Nyquist frequency"))
    temporal_cutoff: float = option(0.25, Number(0, above=True, note="1 = the Nyquist frequency"))
    renormalize_noise: bool = option(True, flag)
    # VMCR (Eqs. 12-15)
    vmcr: bool = option(True, flag)
    vmcr_source: str = option("tweedie", OneOf(VMCR_SOURCES, "tweedie or affine: no model gradient; model: backprop"))
    lambda_f: float = option(0.2, Number(0))
    lambda_mse: float = option(0.001, Number(0))
    lambda_phase: float = option(1.0, Number(0))
    omega: float = option(2e-5, Number(0))
    vmcr_iters: int = option(1, Whole(1))
    vmcr_t_min: int = option(0, Whole(note="a timestep"))  # a window past [0, 1000] holds no step: VMCR never runs
    vmcr_t_max: int = option(1000, Whole(note="a timestep"))
    vmcr_max_step: float | None = option(1e-3, Number(0, above=True, null="no limit"))
    # ABAM (Eq. 10)
    abam: bool = option(True, flag)
    abam_lambda: float = option(0.1, Number(0, 1, note="1 = plain attention"))

    def __post_init__(self) -> None:
        super().__post_init__()
        #: per-step record of the last sample() (timestep, γ, local starts, VMCR loss): for tests and diagnostics
        self._trace: list[dict] = []

    def check_options(self) -> None:
        if not (self.global_path or self.local_path):
            raise UsageError("sampler.global_path and sampler.local_path are both false: keep at least one path on")
        if self.vmcr_t_min > self.vmcr_t_max:
            raise UsageError(f"sampler.vmcr_t_min={self.vmcr_t_min} is above sampler.vmcr_t_max={self.vmcr_t_max}")

    # ------------------------------------------------------------------ setup
    def initial_noise(self, run: SamplingRun) -> torch.Tensor:
        """x_T [L, C, H, W]: the run's seeded noise, or its noise re-initialisation (Eq. 11) computed on the CPU.
        The seeded noise is the global noise η; the local unit ε and the shuffles come from run.generator."""
        x = run.noise[0]  # [L, C, H, W]
        if not self.noise_reinit:
            return x
        m = run.denoiser.window
        unit = torch.randn((m, *x.shape[1:]), generator=run.generator, dtype=torch.float32)  # [M, C, H, W]
        z = reinit_noise(
            unit, x.detach().to("cpu", torch.float32), run.generator, self.shuffle_group, self.filter,
            self.spatial_cutoff, self.temporal_cutoff, self.filter_order, self.renormalize_noise,
        )  # [L, C, H, W]
        return z.to(x.device)

    def _global(self, run: SamplingRun) -> tuple[torch.Tensor | None, list[int]]:
        if not self.global_path:
            return None, []
        index = dilated_clips(run.length, run.denoiser.window, self.dilation, self.padding)  # [G, M]
        # every global clip spans the whole video: the story's global prompt when the run has one, else the prompt
        # of the segment at the middle of the video
        pid = run.prompt_ids.get("global", run.prompt_for_window(0, run.length))
        return index, [pid] * index.shape[0]

    def _windows(self, run: SamplingRun, global_index, global_ids) -> _StepWindows:
        m = run.denoiser.window
        if not self.local_path:
            return _StepWindows(global_index, None, list(global_ids), ())
        offset = 0
        if self.random_shift:
            offset = int(torch.randint(0, self.stride, (1,), generator=run.generator))
        starts = shifted_starts(run.length, m, self.stride, offset)
        ids = list(global_ids) + [run.prompt_for_window(s, m) for s in starts]
        return _StepWindows(global_index, starts_index(starts, m), ids, starts)

    # ------------------------------------------------------------------ one step's clean estimate
    def _combined_x0(
        self, den: Denoiser, x: torch.Tensor, win: _StepWindows, t: int, gamma: float, abam: bool
    ) -> torch.Tensor:
        """Both paths through one predict, each fused with Eq. 3, combined with Eq. 9. x: [L, C, H, W] → [L, C, H, W]."""
        length = x.shape[0]
        clips = gather_frames(x, win.index.to(x.device))  # [G + N, M, C, H, W]
        ctx = den.anchor_attention(self.abam_lambda, groups=win.groups) if abam else contextlib.nullcontext()
        with ctx:
            pred = den.predict(clips, t, win.prompt_ids, self.guidance_scale)  # x0: [G + N, M, C, H, W]
        g = 0 if win.global_index is None else win.global_index.shape[0]
        x0_global = fuse_frames(pred.x0[:g], win.global_index, length) if g else None  # [L, C, H, W]
        x0_local = fuse_frames(pred.x0[g:], win.local_index, length) if win.local_index is not None else None
        return combine_paths(x0_global, x0_local, gamma)  # [L, C, H, W]

    def _clip_weights(self, win: _StepWindows, length: int, gamma: float) -> torch.Tensor:
        """d x̂0[frame] / d x̂0_clip[k, j] of the combined estimate: [G + N, M] (Eq. 3 averages, Eq. 9 mix)."""
        parts = []
        for index, share in ((win.global_index, gamma), (win.local_index, 1.0 - gamma)):
            if index is None:
                continue
            if win.global_index is None or win.local_index is None:
                share = 1.0
            count = torch.bincount(index.reshape(-1), minlength=length).double()  # [L]
            parts.append(share / count[index])  # [n, M]
        return torch.cat(parts)  # [G + N, M]

    def _vmcr_model_grad(
        self, den: Denoiser, z: torch.Tensor, win: _StepWindows, t_next: int, weights: MotionWeights
    ) -> tuple[torch.Tensor, float]:
        """(∇_z ℓ_motion(x̂0(z)), ℓ) with x̂0(z) the model's combined clean estimate of z = z_{t−1} at t_next,
        by per-window vector-Jacobian products through the transformer. z: [L, C, H, W]."""
        length = z.shape[0]
        gamma = gamma_at(t_next, self.gamma0, self.beta)
        with torch.no_grad():
            x0 = self._combined_x0(den, z, win, t_next, gamma, abam=False)  # [L, C, H, W]
        x0v = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = weights.loss(x0v)
            (g_x0,) = torch.autograd.grad(loss, x0v)  # [L, C, H, W]
        index = win.index.to(z.device)  # [K, M]
        w = self._clip_weights(win, length, gamma).to(z.device, z.dtype)  # [K, M]
        g_clips = gather_frames(g_x0, index) * w[:, :, None, None, None]  # [K, M, C, H, W] dℓ/dx̂0_clip
        clips = gather_frames(z.detach(), index)  # [K, M, C, H, W]
        g_z = den.window_vjp(clips, t_next, win.prompt_ids, self.guidance_scale, g_clips)  # [K, M, C, H, W]
        grad = torch.zeros_like(z)  # [L, C, H, W]
        for k in range(index.shape[0]):
            grad += scatter_frames(g_z[k : k + 1], index[k : k + 1], length)[0]  # [L, C, H, W]
        return grad, float(loss.detach())

    def _vmcr(
        self, den: Denoiser, z: torch.Tensor, x0: torch.Tensor, c: StepCoeffs, win: _StepWindows, t_next: int | None
    ) -> tuple[torch.Tensor, dict]:
        """VMCR on z = z_{t−1} [L, C, H, W] whose clean estimate is this step's x0 [L, C, H, W] → (z, trace entries)."""
        weights = MotionWeights(self.lambda_f, self.lambda_mse, self.lambda_phase)
        # the model source needs the next timestep; after the last step the Tweedie slope stands in for it
        source = self.vmcr_source if (self.vmcr_source != "model" or t_next is not None) else "tweedie"
        z_ref, first = z, None
        for _ in range(self.vmcr_iters):
            if source == "model":
                grad, loss = self._vmcr_model_grad(den, z, win, t_next, weights)
            else:
                grad, loss = vmcr_linear_grad(z, z_ref, x0, vmcr_slope(source, c.a_prev), weights)
            first = loss if first is None else first
            z = vmcr_update(z, grad, self.omega)  # [L, C, H, W]
        z, change, limited = cap_change(z, z_ref, self.vmcr_max_step)
        return z, {"vmcr_loss": first, "vmcr_change": change, "vmcr_limited": limited}

    # ------------------------------------------------------------------ sampling
    def check(self, den: Denoiser, timesteps: tuple[int, ...]) -> None:
        """Checks that need the loaded backbone; they run before the first model call."""
        if self.global_path and self.local_path:
            worst = max(gamma_at(t, self.gamma0, self.beta) for t in timesteps)
            if worst > 1.0:
                raise UsageError(
                    f"sampler.gamma0·e^(sampler.beta·t) reaches {worst:.3g} > 1 at the sampled timesteps: "
                    f"lower gamma0 or beta"
                )
        if self.abam:
            with den.anchor_attention(self.abam_lambda):  # raises UsageError when the backbone has none
                pass

    def unused_vmcr_options(self) -> list[str]:
        """The VMCR options set away from their defaults while `vmcr` is off, where they change nothing
        (`override=value` each; e.g. the paper experiment's vmcr_source=model under a sampler.vmcr=false ablation)."""
        if self.vmcr:
            return []
        defaults = {f.name: f.default for f in fields(self)}
        return [f"sampler.{name}={getattr(self, name)}" for name in VMCR_OPTIONS
                if getattr(self, name) != defaults[name]]

    def begin(self, run: SamplingRun) -> int:
        if unused := self.unused_vmcr_options():
            log.warning("%s does nothing with sampler.vmcr=false (VMCR is off): drop it, or pass sampler.vmcr=true",
                        " ".join(unused))
        self._sched = run.denoiser.schedule(self.num_steps)
        self.check(run.denoiser, self._sched.timesteps)
        self._trace = []
        self._global_index, self._global_ids = self._global(run)
        self._length, self._window = run.length, run.denoiser.window
        return len(self._sched)

    def forwards_per_step(self, total: int) -> list[float]:
        """G global clips and the local windows (their mean count over the random shifts, which are drawn per
        step) through one predict; with vmcr_source=model, at the VMCR steps that have a next timestep, per
        iteration another predict of every window and one differentiable forward per window whose backward pass
        is counted as two forwards."""
        cfg = guidance_branches(self.guidance_scale)
        clips = 0 if self._global_index is None else int(self._global_index.shape[0])
        if self.local_path:
            offsets = range(self.stride) if self.random_shift else range(1)
            clips += sum(len(shifted_starts(self._length, self._window, self.stride, r)) for r in offsets) / len(offsets)
        per_step = []
        for i in range(total):
            t = self._sched.step(i).t
            model_vmcr = (self.vmcr and self.vmcr_source == "model" and self.vmcr_t_min <= t <= self.vmcr_t_max
                          and i + 1 < len(self._sched))
            # each model-VMCR iteration: a predict of every window, then a forward (1) and backward (2) per window
            per_step.append(clips * cfg * (1 + 4 * self.vmcr_iters * model_vmcr))
        return per_step

    def initial_state(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        return {"x": self.initial_noise(run)}  # [L, C, H, W]

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        den, sched = run.denoiser, self._sched
        x = state.tensors["x"]  # [L, C, H, W] x_t
        c = sched.step(i)
        win = self._windows(run, self._global_index, self._global_ids)
        gamma = gamma_at(c.t, self.gamma0, self.beta)
        x0 = self._combined_x0(den, x, win, c.t, gamma, self.abam)  # [L, C, H, W]
        z = ddim_step(x, x0, c)  # [L, C, H, W] z_{t−1}
        vmcr = {"vmcr_loss": None, "vmcr_change": 0.0, "vmcr_limited": False}
        if self.vmcr and self.vmcr_t_min <= c.t <= self.vmcr_t_max:
            t_next = sched.timesteps[i + 1] if i + 1 < len(sched) else None
            z, vmcr = self._vmcr(den, z, x0, c, win, t_next)
            if vmcr["vmcr_limited"] and not any(r["vmcr_limited"] for r in self._trace):
                log.warning("VMCR's change to z at t=%d was limited to sampler.vmcr_max_step=%g of |z| "
                            "(later limits are counted in the manifest)", c.t, self.vmcr_max_step)
        self._trace.append({
            "t": c.t,
            "gamma": gamma if (self.global_path and self.local_path) else None,
            "local_starts": win.local_starts,
            "windows": int(win.index.shape[0]),
            **vmcr,
        })
        state.tensors["x"] = z
        state.estimate = x0

    def describe(self) -> dict:
        info = super().describe()
        # Eq. 10 as written: λ weights the clip's own K/V, so the anchor's share is 1 − λ (λ = 0.1 → 90 % anchor).
        # The paper's §7 text reads the other way (a higher λ = more anchor); λ = 0.9 here is that reading.
        info["abam_anchor_weight"] = 1.0 - self.abam_lambda
        info["abam_convention"] = "Eq. 10: K = lambda*K_own + (1-lambda)*K_anchor (same for V)"
        if self._trace:
            info["vmcr_steps_limited"] = sum(1 for r in self._trace if r["vmcr_limited"])
            info["vmcr_max_change"] = max(r["vmcr_change"] for r in self._trace)
        return info

"""SynCoS: Synchronized Coupled Sampling (Kim et al. 2025, "Tuning-Free Multi-Event Long Video Generation via
Synchronized Coupled Sampling", arXiv 2503.08605). Specification: the paper's §3 and its supplementary material
(§A.1 Eqs. 4–6 for SDS/CSD, §B for hyperparameters, §C Table 3 for the stage ablation, §E pseudo-code Figs. 18–19).

Every denoising step t of a DDIM schedule (η = 0 in the paper) runs three coupled stages over overlapping windows
of M latent frames placed every `stride` frames (the last window end-aligned, so every frame is covered):

1. Temporal co-denoising (Fig. 18): x̂0 of every window with classifier-free guidance, averaged per frame
   → x0'. This is Gen-L-Video's fusion, reused from `gen_l_video.fused_x0`.
2. CSD-based refinement (Fig. 19), only while t > `t_min`: x0' is a free tensor optimised with AdamW and a StepLR
   schedule for `iters` iterations. A baseline noise ε_base for the whole latent is fixed for the step
   ("fixed baseline noise") and the noise level is the step's own t ("grounded timestep"). Each iteration picks a
   random minibatch of B windows, noises them as y_i = a_t·x0'[win i] + s_t·ε_base[win i] (Eq. 4), asks the model
   for (x̂0, ε̂) in ONE batched call (B windows × both CFG branches), forms each window's score residual r_i,
   mixes the residuals across the minibatch with CSD's RBF kernel and its repulsion term (SVGD; `csd_mix`),
   averages the per-window gradients per frame over the windows of the minibatch covering it, and hands the
   result to the optimiser as the gradient of x0' (`backward(gradient=…)`): no backpropagation through the
   model, as in SDS (Eq. 6 with the network Jacobian dropped).
3. Reversion: x_{t−1} = a_prev·x0' + s_prev·ε_base (the DDIM update written with the baseline noise).

Open choices (shared/reference/methods.md), each a config key; defaults are justified in conf/sampler/syncos.yaml:
- `base_noise`: `fresh` draws ε_base from the run's generator once per step (Fig. 19's `randn_like`); `ddim` uses
  stage 1's implied DDIM noise (x_t − a_t·x0')/s_t, so that the sampler is exactly Gen-L-Video's η = 0 DDIM
  whenever stage 2 changes nothing. At steps where stage 2 does not run, stage 3 always uses the DDIM noise
  (plain DDIM, as the paper does below t_min), whatever `base_noise` says.
- `residual`: with y = a·x0' + s·ε_base and the model's (x̂0, ε̂) satisfying y = a·x̂0 + s·ε̂, a·(x0' − x̂0) =
  s·(ε̂ − ε_base). The three parameterisations are all positive multiples of (x0' − x̂0):
    eps: r = ε̂ − ε_base                               = (a/s)·(x0' − x̂0)   (identically 0 where a = 0)
    v:   r = v(x̂0, ε̂) − v(x0', ε_base)                = (1/s)·(x0' − x̂0)
    x0:  r = x0' − x̂0                                  = 1·(x0' − x̂0)
  where v is the velocity the backbone is trained on (`diffusion.path_velocity`): a·ε − s·x0 on a VP model
  (CogVideoX; the factor uses a² + s² = 1) and ε − x0 on a rectified-flow model (Wan; the factor uses a + s = 1).
  On a flow model the v residual is exactly the flow score-distillation residual of supplementary §A.2, Eq. 10,
  v_Φ(x_t, t) − (ε − x). With a grounded timestep (one t per step) the kinds differ only by a constant factor,
  which AdamW almost cancels; what differs is the weight of the residual against the kernel's repulsion term, and
  the exact zero of `eps` at a = 0 (t = 999 on CogVideoX's zero-terminal-SNR schedule, σ = 1 at the first step of a
  flow schedule). That step is guarded: with residual=eps, stage 2 skips its iterations where a_t = 0 (they would
  apply the repulsion alone, an update driven purely by noise).
- the timestep rule on a flow model is the same as on a VP one: grounded, stage 2 noises x0' to the step's own σ_t
  and calls the model at its own t = σ_t·T (the point of the sampling path stage 1 just evaluated; §A.2 keeps the
  SDS form and only swaps the residual); not grounded, t is uniform in `random_t_range` on the model's timestep
  axis, i.e. σ = t/T uniform without the sampling shift, the usual rectified-flow training/SDS draw.
- the CSD weight w(t) = s_t² (`csd_weight`: 1 − ᾱ_t as in CSD on a VP model; σ_t² on a flow model, so that
  w·r_v = s_t·(x0' − x̂0) on both families); B (`batch_windows`).

CSD kernel mixing (`csd_mix`; the public CSD formula in methods.md): X the B noisy windows flattened,
d²_ij = ‖x_i − x_j‖², γ = log(B + 1)/median(d²) with the (lower) median over all B² entries including the zero
diagonal, K_ij = exp(−γ·d²_ij), and window i receives g_i = w(t)·(Σ_j K_ji·r_j + Σ_j 2γ·K_ij·(x_j − x_i))/B. The
second sum is SVGD's repulsion: a descent step x_i − lr·g_i moves x_i away from the other windows. Guards: when
the median is 0 (B = 2, where half the entries are the zero diagonal, or coincident windows) the bandwidth falls
back to the median of the off-diagonal entries; when those are 0 too (B = 1, or all windows equal) γ = 0, i.e.
K ≡ 1 and no repulsion. B larger than the number of windows is clamped to it (logged and in the manifest).

Ablations (paper Table 2, Table 3, Fig. 10) are switches: `stage1`/`stage2`/`stage3`, `grounded_timestep=false`
(a random t per iteration from `random_t_range`, as plain CSD), `fixed_noise=false` (fresh noise per iteration),
`t_min`, `stride`; "structured prompt off" is the top-level `use_global_prompt=false` (generate.py). Table 3 has
three stage variants and they are the ones accepted here (stage1/stage2/stage3):
- true/true/true: SynCoS;
- true/false/true: stage 1 + DDIM reversion = Gen-L-Video (Table 3 row 1);
- false/true/false: "temporal co-denoising with CSD" alone (Table 3 row 2): there is no x_t to co-denoise and
  nothing to revert to, so x0' is a persistent tensor, initialised from the run's initial noise x_T, refined by
  stage 2 at every step of the schedule (t_min does not apply: stage 2 is then the only denoiser) with the step's
  grounded t and a fresh baseline noise, and returned after the last step.
Other combinations leave a stage's input undefined (stage 3 without stage 1 reverts a latent nobody reads; stage 1
without stage 3 has no next x_t) and are rejected with a message naming the three variants.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from longgen.denoiser import Denoiser, Prediction
from longgen.diffusion import (
    NoiseSchedule,
    StepCoeffs,
    add_noise,
    ddim_from_eps,
    eps_from_x0,
    fuse_windows,
    gather_windows,
    path_velocity,
)
from longgen.errors import UsageError
from longgen.options import Number, OneOf, Whole, flag, option
from longgen.samplers.base import (
    ETA,
    GUIDANCE,
    NUM_STEPS,
    STRIDE,
    Sampler,
    SamplerState,
    SamplingRun,
    guidance_branches,
)
from longgen.samplers.gen_l_video import fused_x0
from longgen.windows import WindowPlan

log = logging.getLogger(__name__)

RESIDUALS = ("eps", "v", "x0")
KERNELS = ("rbf", "none")
BASE_NOISES = ("fresh", "ddim")
#: (stage1, stage2, stage3) → what the combination is (paper Table 3)
VARIANTS = {
    (True, True, True): "syncos",
    (True, False, True): "stage 1 + 3 only = gen-l-video (Table 3 row 1)",
    (False, True, False): "stage 2 only = co-denoising with CSD (Table 3 row 2)",
}


# ---------------------------------------------------------------------------------------------------- pure maths
def rbf_gamma(d2: torch.Tensor) -> torch.Tensor:
    """CSD's median-trick bandwidth γ = log(B + 1) / median(d²). d2: [B, B] squared distances with a zero diagonal
    → [] (0-dim tensor on d2's device; no host sync).

    The median is the lower median (torch.median) over all B² entries, zero diagonal included. It is 0 for B = 2
    (two of the four entries are the diagonal) and for coincident windows, where the formula would divide by zero
    (NaN kernel): then the off-diagonal median is used, and when that is 0 as well, γ = 0 (K ≡ 1, no repulsion)."""
    b = d2.shape[0]
    if b < 2:
        return d2.new_zeros(())
    flat = d2.reshape(-1)  # [B²]
    med = flat.median()  # []
    # the off-diagonal entries without boolean indexing (which would sync with the device): after dropping entry
    # 0, every row of the [B−1, B+1] view ends with a diagonal entry
    off = flat[1:].reshape(b - 1, b + 1)[:, :-1].reshape(-1).median()  # [] over the B(B−1) off-diagonal entries
    h = torch.where(med > 0, med, off)  # []
    tiny = torch.finfo(d2.dtype).tiny
    return torch.where(h > 0, math.log(b + 1) / h.clamp_min(tiny), torch.zeros_like(h))  # []


def csd_mix(x: torch.Tensor, r: torch.Tensor, kernel: str = "rbf") -> torch.Tensor:
    """Mix per-window score residuals across a minibatch with the CSD/SVGD kernel (without the weight w(t)).

    x: [B, ...] the noisy windows the model saw; r: [B, ...] their residuals (descent directions) → [B, ...] with
    g_i = (Σ_j K_ji·r_j + Σ_j 2γ·K_ij·(x_j − x_i)) / B, K_ij = exp(−γ·‖x_i − x_j‖²), γ from `rbf_gamma`.
    kernel="none" replaces K by the identity and drops the repulsion: g_i = r_i / B (independent windows, SDS)."""
    b = x.shape[0]
    if kernel == "none":
        return r / b
    xf = x.reshape(b, -1)  # [B, D]
    rf = r.reshape(b, -1)  # [B, D]
    # direct differences (no Gram-matrix cancellation); the diagonal is exactly 0
    d2 = torch.cdist(xf[None], xf[None], compute_mode="donot_use_mm_for_euclid_dist")[0].square()  # [B, B]
    gamma = rbf_gamma(d2)  # []
    k = torch.exp(-gamma * d2)  # [B, B], symmetric
    attract = k.transpose(0, 1) @ rf  # [B, D]: row i = Σ_j K_ji r_j
    repel = 2.0 * gamma * (k @ xf - k.sum(dim=1, keepdim=True) * xf)  # [B, D]: row i = Σ_j 2γ K_ij (x_j − x_i)
    return ((attract + repel) / b).reshape(r.shape)  # [B, ...]


def score_residual(
    kind: str, pred: Prediction, x0: torch.Tensor, eps: torch.Tensor, a: float, s: float, path: str = "vp"
) -> torch.Tensor:
    """Score-distillation residual of windows noised as y = a·x0 + s·eps, from the model's guided (x̂0, ε̂).
    All tensors [B, M, C, H, W]; `path` the schedule's family ("vp" or "flow"), which fixes the velocity of the v
    residual. Each kind is a positive multiple of (x0 − x̂0) (module docstring), so a descent step on x0 moves it
    towards the model's x̂0."""
    if kind == "eps":
        return pred.eps - eps
    if kind == "v":
        return path_velocity(path, pred.x0, pred.eps, a, s) - path_velocity(path, x0, eps, a, s)
    return x0 - pred.x0


def csd_weight(path: str, a: float, s: float) -> float:
    """CSD's time weight w(t): 1 − ᾱ_t = 1 − a² on a VP path (as in CSD/DreamFusion), s² = σ² on a flow path."""
    return 1.0 - a * a if path == "vp" else s * s


# ---------------------------------------------------------------------------------------------------- sampler
def timestep_range(name: str, value: object) -> tuple[int, int]:
    """Rule of `random_t_range`: [low, high], whole timesteps with 0 <= low <= high <= 999 (longgen.options)."""
    rt = list(value) if isinstance(value, (list, tuple)) else None
    if rt is None or len(rt) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v
                                         for v in rt) or not 0 <= rt[0] <= rt[1] <= 999:
        raise UsageError(f"{name}={value!r} must be [low, high] whole timesteps, 0 <= low <= high <= 999")
    return int(rt[0]), int(rt[1])


@dataclass(eq=False)
class SynCoSSampler(Sampler):
    """The options (conf/sampler/syncos.yaml, which says why each default), each with its accepted values."""

    num_steps: int = option(50, NUM_STEPS)
    guidance_scale: float = option(6.0, GUIDANCE)
    stride: int = option(4, STRIDE)
    eta: float = option(0.0, ETA)
    t_min: int = option(900, Whole(0, 1000, note="a timestep; paper: 800-900"))
    iters: int = option(20, Whole(0, note="paper: 20-50"))
    batch_windows: int = option(2, Whole(1))
    lr: float = option(0.5, Number(0, above=True, note="paper: 0.5-1"))
    weight_decay: float = option(0.0, Number(0))
    lr_decay_iters: int = option(5, Whole(1))
    lr_decay_rate: float = option(0.5, Number(0, 1, above=True, note="1 keeps the lr constant"))
    residual: str = option("v", OneOf(RESIDUALS))
    kernel: str = option("rbf", OneOf(KERNELS))
    base_noise: str = option("fresh", OneOf(BASE_NOISES))
    stage1: bool = option(True, flag)
    stage2: bool = option(True, flag)
    stage3: bool = option(True, flag)
    grounded_timestep: bool = option(True, flag)
    fixed_noise: bool = option(True, flag)
    random_t_range: tuple[int, int] = option((20, 980), timestep_range)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.variant = VARIANTS[(self.stage1, self.stage2, self.stage3)]
        self._run_info: dict = {}

    def check_options(self) -> None:
        variant = (self.stage1, self.stage2, self.stage3)
        if variant not in VARIANTS:
            raise UsageError(
                f"sampler.stage1/stage2/stage3={'/'.join(str(v).lower() for v in variant)} is not a defined variant: "
                "use true/true/true (SynCoS), true/false/true (Gen-L-Video, paper Table 3 row 1) or "
                "false/true/false (stage 2 only, Table 3 row 2)"
            )
        if self.base_noise == "ddim" and not self.stage1:
            raise UsageError(
                "sampler.base_noise=ddim takes the noise implied by stage 1, which is off (stage1=false): "
                "use sampler.base_noise=fresh"
            )

    # ------------------------------------------------------------------ schedule of the stages
    def stage2_at(self, t: int) -> bool:
        """Whether stage 2 runs at timestep t (always when stage 1 is off: it is then the only denoiser)."""
        return self.stage2 and (not self.stage1 or t > self.t_min)

    def _skips_iterations(self, c: StepCoeffs) -> bool:
        """ε-space residual guard: at a_t = 0 (ᾱ_t = 0, or σ_t = 1) it is identically 0 (methods.md pitfall)."""
        return self.residual == "eps" and self.grounded_timestep and c.a == 0.0

    def _stage_forwards(self, windows: int) -> tuple[int, int]:
        """Transformer forwards (one per sample and CFG branch) of stage 1 at every step and of stage 2 at a step
        where it runs its iterations: N·branches and iters·min(B, N)·branches."""
        cfg = guidance_branches(self.guidance_scale)
        return (windows * cfg if self.stage1 else 0), self.iters * min(self.batch_windows, windows) * cfg

    def _refines_at(self, c: StepCoeffs) -> bool:
        """Whether stage 2 runs its iterations at step c (it runs, and the ε-residual guard does not skip them)."""
        return self.stage2_at(c.t) and not self._skips_iterations(c)

    def forwards_per_step(self, total: int) -> list[int]:
        """Stage 1's forwards at every step plus stage 2's at the steps above t_min (~5x the others by default)."""
        s1, s2 = self._stage_forwards(self._plan.count)
        return [s1 + (s2 if self._refines_at(self._sched.step(i)) else 0) for i in range(total)]

    def forward_plan(self, windows: int, sched: NoiseSchedule) -> dict:
        """Transformer forwards (one per sample and CFG branch) this configuration spends, per step and in total."""
        batch = min(self.batch_windows, windows)
        s1, s2 = self._stage_forwards(windows)
        steps2 = [c.t for c in map(sched.step, range(len(sched))) if self._refines_at(c)]
        return {
            "windows": windows,
            "batch_windows_used": batch,
            "stage1_forwards_per_step": s1,
            "stage2_forwards_per_active_step": s2,
            "stage2_steps": len(steps2),
            "stage2_timesteps": steps2,
            "forwards_expected": s1 * len(sched) + s2 * len(steps2),
        }

    # ------------------------------------------------------------------ sampling
    def begin(self, run: SamplingRun) -> int:
        den = run.denoiser
        self._plan = plan = self.plan(run.length, den.window)
        self._ids = [run.prompt_for_window(s, plan.window) for s in plan.starts]
        self._sched = sched = den.schedule(self.num_steps)
        info = self.forward_plan(plan.count, sched)
        if self.stage2 and self.batch_windows > plan.count:
            log.info("sampler.batch_windows=%d is more than the %d windows: every stage-2 iteration uses all %d",
                     self.batch_windows, plan.count, plan.count)
        if self.stage2 and not self.stage1 and self.t_min > 0:
            log.info("stage 1 is off: stage 2 runs at every step and sampler.t_min=%d does not apply", self.t_min)
        skipped = [c.t for c in map(sched.step, range(len(sched))) if self.stage2_at(c.t) and self._skips_iterations(c)]
        if skipped:
            log.warning("residual=eps is identically 0 where ᾱ_t = 0: stage 2 skips its iterations at t=%s "
                        "(residual=v or x0 avoids this)", ",".join(map(str, skipped)))
        info["stage2_iterations_skipped_at"] = skipped
        log.info("%s: %d windows, stage 1 %d forwards/step, stage 2 %d forwards at each of %d steps; %d expected",
                 self.variant, plan.count, info["stage1_forwards_per_step"], info["stage2_forwards_per_active_step"],
                 info["stage2_steps"], info["forwards_expected"])
        self._run_info = info
        return len(sched)

    def initial_state(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        x = run.noise[0]  # [L, C, H, W] x_T
        if self.stage1:
            return {"x": x}  # x0' is recomputed by stage 1 at every step
        return {"x0": x.clone()}  # stage 2 alone: x0' is persistent and starts from x_T

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        c = self._sched.step(i)
        x = state.tensors.get("x")  # [L, C, H, W] x_t (stage 1 + 3), None for stage 2 alone
        x0 = state.tensors.get("x0")  # [L, C, H, W] persistent x0' (stage 2 alone)
        eps_base = None
        if self.stage1:
            x0 = fused_x0(run.denoiser, x, self._plan, self._ids, c, self.guidance_scale)  # [L, C, H, W]
            eps_base = eps_from_x0(x, x0, c.a, c.s)  # [L, C, H, W] the DDIM noise estimate
        if self.stage2_at(c.t):
            if self.base_noise == "fresh":
                eps_base = run.randn(tuple(x0.shape))  # [L, C, H, W] fixed for this step
            if not self._skips_iterations(c):
                x0, _ = self.refine(run, x0, eps_base, self._plan, self._ids, c, self._sched)  # [L, C, H, W]
        if self.stage3:
            noise = run.randn(tuple(x.shape)) if self.eta > 0 else None
            state.tensors["x"] = ddim_from_eps(x0, eps_base, c, self.eta, noise)  # [L, C, H, W] x_{t−1}
        else:
            state.tensors["x0"] = x0
        state.estimate = x0

    def finish(self, state: SamplerState) -> torch.Tensor:
        return state.tensors["x" if self.stage3 else "x0"][None]  # [1, L, C, H, W]

    def refine(
        self,
        run: SamplingRun,
        x0: torch.Tensor,
        eps_base: torch.Tensor,
        plan: WindowPlan,
        ids: Sequence[int],
        c: StepCoeffs,
        sched: NoiseSchedule,
        trace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 2 at step c (Fig. 19): optimise x0 [L, C, H, W] with baseline noise eps_base [L, C, H, W].

        Returns the refined x0' [L, C, H, W] (detached) and, when `trace`, the mean L2 norm of the minibatch
        residuals at each iteration, [iters] (a device tensor, collected without host syncs)."""
        if self.iters == 0:
            return x0, None
        den: Denoiser = run.denoiser
        n = plan.count
        batch = min(self.batch_windows, n)
        starts = torch.as_tensor(plan.starts, dtype=torch.long, device=x0.device)  # [N]
        window_ids = torch.as_tensor(list(ids), dtype=torch.long)  # [N] on the CPU
        param = x0.detach().clone().requires_grad_(True)  # [L, C, H, W] the leaf AdamW optimises
        opt = torch.optim.AdamW([param], lr=self.lr, weight_decay=self.weight_decay)
        lr_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_decay_iters, gamma=self.lr_decay_rate)
        lo, hi = self.random_t_range
        norms: list[torch.Tensor] = []
        with torch.enable_grad():
            for _ in range(self.iters):
                pick = torch.randperm(n, generator=run.generator)[:batch]  # [B] window numbers, CPU
                sel = starts[pick.to(starts.device)]  # [B] their start frames
                if self.grounded_timestep:
                    t, a, s = c.t, c.a, c.s
                else:
                    t = int(torch.randint(lo, hi + 1, (1,), generator=run.generator))
                    a, s = sched.coeffs(t)
                noise = eps_base if self.fixed_noise else run.randn(tuple(x0.shape))  # [L, C, H, W]
                x0_win = gather_windows(param.detach(), sel, plan.window)  # [B, M, C, H, W]
                eps_win = gather_windows(noise, sel, plan.window)  # [B, M, C, H, W]
                y = add_noise(x0_win, eps_win, a, s)  # [B, M, C, H, W]
                # one batched call: B windows × both CFG branches (the backbone micro-batches)
                pred = den.predict(y, t, window_ids[pick].tolist(), self.guidance_scale)  # [B, M, C, H, W]
                r = score_residual(self.residual, pred, x0_win, eps_win, a, s, sched.path)  # [B, M, C, H, W]
                g = csd_weight(sched.path, a, s) * csd_mix(y, r, self.kernel)  # [B, M, C, H, W]
                grad = fuse_windows(g, sel, plan.length)  # [L, C, H, W] count-averaged; uncovered frames 0
                opt.zero_grad(set_to_none=True)
                param.backward(gradient=grad)
                opt.step()
                lr_sched.step()
                if trace:
                    norms.append(r.reshape(batch, -1).norm(dim=1).mean())  # []
        return param.detach(), (torch.stack(norms) if trace else None)

    def describe(self) -> dict:
        info = super().describe()
        info["random_t_range"] = list(self.random_t_range)
        info.update(self._run_info)
        return info

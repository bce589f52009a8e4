"""How large is GLC-Diffusion's VMCR step (arXiv 2501.05484, Eqs. 12–15) for each way of getting ∂x̂0/∂z?

Walks a GLC trajectory (VMCR off, so every source sees the same latents) and at chosen steps compares the gradient
of ℓ_motion with respect to z_{t−1} from
  - `model`:   the exact vector-Jacobian product through the denoiser (longgen.samplers.glc, vmcr_source=model),
  - `tweedie`: slope a_prev (the Jacobian of E[x0|z] for unit-variance Gaussian data),
  - `affine`:  slope 1/a_prev (this step's ε̂ held fixed),
and prints, per step: the model's gain ‖Jᵀu‖/‖u‖ along u = ∇_{x̂0}ℓ (what a fixed slope stands in for), the norm
ratios of the fixed-slope gradients to the model-source gradient, the cosine between the x̂0-gradient and the
model-source gradient, and the relative change ‖Δz‖/‖z‖ of one VMCR step at ω without the trust-region limit.
Then the weighted loss terms (cos, mse, amplitude, phase) and their gradient norms on unit Gaussian latents.

Denoisers: `tiny` (the random-weight CogVideoX of conf/backbone/tiny.yaml: an untrained network) or `gaussian`
(the exact posterior mean for unit-variance Gaussian latents whose frames are AR(1)-correlated with `--rho`:
x̂0 = a·Σ(a²Σ + s²I)⁻¹·z per window, Σ_ij = ρ^|i−j| over frames — a stand-in for a well-trained model whose
Jacobian is known in closed form; ρ = 0 makes Tweedie's slope exact).

    python scripts/vmcr_scale.py                                   # tiny model, 4× length (L = 49), 50 steps
    python scripts/vmcr_scale.py --denoiser gaussian --rho 0.9
    python scripts/vmcr_scale.py --terms-shape 49,16,60,90         # loss terms on a CogVideoX-2B-sized latent
    python scripts/vmcr_scale.py --json out.json                   # also write the numbers
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf

from longgen.build import build
from longgen.denoiser import Denoiser, Prediction
from longgen.diffusion import ddim_step
from longgen.samplers.base import SamplerState, SamplingRun
from longgen.samplers.glc import GLCSampler, MotionWeights, gamma_at, motion_terms, vmcr_slope

REPO = Path(__file__).resolve().parents[1]


class GaussianDenoiser(Denoiser):
    """Bayes-optimal denoiser for x0 ~ N(0, Σ ⊗ I): frames AR(1)-correlated (ρ), unit variance, guidance ignored."""

    def __init__(self, like: Denoiser, rho: float) -> None:
        self.window, self.latent_shape, self.device = like.window, like.latent_shape, torch.device("cpu")
        self._like = like
        idx = torch.arange(self.window, dtype=torch.float64)
        self._sigma = rho ** (idx[:, None] - idx[None, :]).abs()  # [M, M]

    def schedule(self, num_steps: int):
        return self._like.schedule(num_steps)

    def _predict(self, x_t: torch.Tensor, t: int) -> Prediction:
        acp = float(self._like.schedule(1).alphas_cumprod[int(t)])
        a, s = math.sqrt(acp), math.sqrt(1.0 - acp)
        eye = torch.eye(self.window, dtype=torch.float64)
        gain = (a * self._sigma @ torch.linalg.inv(a * a * self._sigma + s * s * eye)).to(x_t.dtype)  # [M, M]
        x0 = torch.einsum("ij,bjchw->bichw", gain, x_t)  # [B, M, C, H, W]
        return Prediction(x0=x0, eps=(x_t - a * x0) / s)

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        with torch.no_grad():
            return self._predict(x_t, t)

    def predict_grad(self, x_t, t, prompt_ids, guidance_scale):
        with torch.enable_grad():
            return self._predict(x_t, t)


class _Dot:
    """A 'loss' ⟨x0, u⟩ whose gradient through the model is Jᵀu (reuses the sampler's per-window VJP)."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0 * self.u).sum()


def tiny_backbone(prompts: Sequence[str]):
    backbone = build(OmegaConf.load(REPO / "conf" / "backbone" / "tiny.yaml"), "backbone", "tiny")
    backbone.load()
    backbone.encode_prompts(list(prompts), "")
    return backbone


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return _ratio(float((u * v).sum()), float(u.norm() * v.norm()))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def gradient_table(
    den: Denoiser, length: int, steps: int, every: int, omega: float, abam: bool, seed: int
) -> list[dict]:
    noise = torch.randn((1, length, *den.latent_shape), generator=torch.Generator().manual_seed(seed))
    run = SamplingRun(denoiser=den, noise=noise, generator=torch.Generator().manual_seed(seed + 1),
                      prompt_for_window=lambda s, m: 0 if s + m / 2 < length / 2 else 1, prompt_ids={"global": 2})
    sampler = GLCSampler(num_steps=steps, vmcr=False, abam=abam, omega=omega)
    weights = MotionWeights()
    sampler.begin(run)
    state = SamplerState(sampler.initial_state(run))
    rows = []
    for i in range(steps - 1):  # the model source needs a next timestep
        x, c = state.tensors["x"], sampler._sched.step(i)
        win = sampler._windows(run, sampler._global_index, sampler._global_ids)
        x0 = sampler._combined_x0(den, x, win, c.t, gamma_at(c.t, sampler.gamma0, sampler.beta), abam)
        z = ddim_step(x, x0, c)  # [L, C, H, W]
        state.tensors["x"] = z
        if i % every and i != steps - 2:
            continue
        t_next = sampler._sched.timesteps[i + 1]
        x0v = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            (g_x0,) = torch.autograd.grad(weights.loss(x0v), x0v)  # ∇_{x̂0} ℓ at this step's x̂0
        g_model, _ = sampler._vmcr_model_grad(den, z, win, t_next, weights)
        jtu, _ = sampler._vmcr_model_grad(den, z, win, t_next, _Dot(g_x0))  # Jᵀu along u = ∇_{x̂0} ℓ
        g_tw = vmcr_slope("tweedie", c.a_prev) * g_x0
        g_af = vmcr_slope("affine", c.a_prev) * g_x0
        zn = float(z.norm())
        rows.append({
            "t": c.t, "t_next": t_next, "a_prev": c.a_prev,
            "model_gain": _ratio(float(jtu.norm()), float(g_x0.norm())),
            "affine_over_model": _ratio(float(g_af.norm()), float(g_model.norm())),
            "tweedie_over_model": _ratio(float(g_tw.norm()), float(g_model.norm())),
            "cos_x0grad_model": _cos(g_x0, g_model),
            "dz_rel_model": omega * float(g_model.norm()) / zn,
            "dz_rel_tweedie": omega * float(g_tw.norm()) / zn,
            "dz_rel_affine": omega * float(g_af.norm()) / zn,
            "dz_over_signal_affine": _ratio(omega * float(g_af.norm()), c.a_prev * float(x0.norm())),
        })
    return rows


def term_table(shape: Sequence[int], seed: int) -> dict:
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    w = MotionWeights()
    with torch.enable_grad():
        terms = motion_terms(x, w.lambda_f, w.lambda_mse, w.lambda_phase)
        total = sum(terms.values())
        out = {"shape": list(shape), "total": float(total.detach()), "x_norm": float(x.detach().norm())}
        for name, value in terms.items():
            (g,) = torch.autograd.grad(value, x, retain_graph=True)
            out[name] = {"value": float(value.detach()), "share": float(value.detach() / total.detach()),
                         "grad_norm": float(g.norm()), "grad_rms": float(g.pow(2).mean().sqrt()),
                         "grad_max": float(g.abs().max())}
        (g,) = torch.autograd.grad(total, x)
    out["grad_norm"] = float(g.norm())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", choices=("tiny", "gaussian"), default="tiny")
    ap.add_argument("--rho", type=float, default=0.0, help="AR(1) frame correlation of the gaussian denoiser's data")
    ap.add_argument("--length", type=int, default=49, help="latent frames (49 = 4x CogVideoX-2B)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--every", type=int, default=5, help="measure every n-th step (and the last one with a next t)")
    ap.add_argument("--omega", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--terms-shape", default="", help="e.g. 49,16,60,90: loss terms on a unit latent of this shape")
    ap.add_argument("--json", default="", help="write the numbers to this file")
    args = ap.parse_args()

    t0 = time.perf_counter()
    result: dict = {"args": vars(args)}
    backbone = tiny_backbone(("a cat walks", "a cat jumps", "a cat"))
    den: Denoiser = backbone if args.denoiser == "tiny" else GaussianDenoiser(backbone, args.rho)
    rows = gradient_table(den, args.length, args.steps, args.every, args.omega, abam=args.denoiser == "tiny",
                          seed=args.seed)
    result["steps"] = rows
    rho = f" (rho={args.rho})" if args.denoiser == "gaussian" else ""
    print(f"VMCR gradient scale, {args.denoiser} denoiser{rho}, L={args.length}, {args.steps} steps, "
          f"omega={args.omega:g}")
    print(f"{'t':>4} {'a_prev':>7} {'1/a_prev':>8} {'gain':>7} {'aff/mod':>8} {'tw/mod':>7} {'cos':>6} "
          f"{'dz/z model':>10} {'tweedie':>9} {'affine':>9} {'aff dz/sig':>10}")
    for r in rows:
        print(f"{r['t']:4d} {r['a_prev']:7.4f} {1 / r['a_prev']:8.2f} {r['model_gain']:7.3f} "
              f"{r['affine_over_model']:8.2f} {r['tweedie_over_model']:7.3f} {r['cos_x0grad_model']:6.3f} "
              f"{r['dz_rel_model']:10.2e} {r['dz_rel_tweedie']:9.2e} {r['dz_rel_affine']:9.2e} "
              f"{r['dz_over_signal_affine']:10.2e}")
    shapes = [(args.length, *backbone.latent_shape)]
    if args.terms_shape:
        shapes.append(tuple(int(v) for v in args.terms_shape.split(",")))
    result["terms"] = []
    for shape in shapes:
        terms = term_table(shape, args.seed)
        result["terms"].append(terms)
        print(f"loss terms on unit noise {list(shape)} (|x| {terms['x_norm']:.4g}): total {terms['total']:.4g}, "
              f"|grad| {terms['grad_norm']:.4g}")
        for name in ("cos", "mse", "amplitude", "phase"):
            v = terms[name]
            print(f"  {name:9s} {v['value']:12.4g} ({100 * v['share']:5.1f} %)  |grad| {v['grad_norm']:10.4g}  "
                  f"rms {v['grad_rms']:.3g}  max {v['grad_max']:.3g}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""How far does one VMCR update of GLC-Diffusion (arXiv 2501.05484, Eq. 15 / Algorithm 1 line 23) move z_{t−1}, with
x̂0 of z_{t−1} taken from the model at t−1 (`vmcr_source=model`, the paper's Algorithm 1 lines 21–23) or from the
Tweedie slope a_prev (`tweedie`, longgen's default)?

Walks one GLC trajectory on the chosen backbone (GLC's defaults with VMCR off, so both sources see the same
latents) and at the steps whose timestep is in --timesteps applies one VMCR update of each source to the same
z_{t−1} without the trust region (vmcr_max_step=null), printing ‖Δz‖/‖z‖, max|Δz|, the share of elements whose
change is below half a float16 step of z there (the update an fp16 model input would not see), and the time taken.

    python scripts/vmcr_update.py                                   # tiny CogVideoX, L = 49 (4×), 50 steps
    python scripts/vmcr_update.py --timesteps 999,899,499,99 --omega 2e-5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from longgen.build import build
from longgen.diffusion import ddim_step
from longgen.samplers.base import SamplerState, SamplingRun
from longgen.samplers.glc import GLCSampler, gamma_at

REPO = Path(__file__).resolve().parents[1]


def below_half_fp16_step(z: torch.Tensor, dz: torch.Tensor) -> float:
    """Share of elements whose |Δz| is under half the float16 spacing at |z| (a change fp16 rounds away)."""
    zh = z.to(torch.float16)
    spacing = (torch.nextafter(zh.abs(), torch.full_like(zh, float("inf"))) - zh.abs()).float()  # [L, C, H, W]
    return float((dz.abs() < spacing / 2).float().mean())


def measure(args: argparse.Namespace) -> list[dict]:
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{args.backbone}.yaml")
    backbone = build(cfg, "backbone", args.backbone)
    backbone.load()
    backbone.encode_prompts(["a red fox runs through fresh snow"], "")
    noise = torch.randn((1, args.length, *backbone.latent_shape), generator=torch.Generator().manual_seed(args.seed))
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: 0,
                      generator=torch.Generator().manual_seed(args.seed + 1))
    walker = GLCSampler(num_steps=args.steps, stride=int(cfg.stride), vmcr=False)
    sources = {name: GLCSampler(num_steps=args.steps, stride=int(cfg.stride), vmcr_source=name, omega=args.omega,
                                vmcr_max_step=None) for name in ("tweedie", "model")}
    wanted = {int(t) for t in args.timesteps.split(",")}
    walker.begin(run)
    state = SamplerState(walker.initial_state(run))
    sched, rows = walker._sched, []
    for i in range(len(sched)):
        c = sched.step(i)
        x = state.tensors["x"]  # [L, C, H, W] x_t
        win = walker._windows(run, walker._global_index, walker._global_ids)
        x0 = walker._combined_x0(backbone, x, win, c.t, gamma_at(c.t, walker.gamma0, walker.beta), walker.abam)
        z = ddim_step(x, x0, c)  # [L, C, H, W] z_{t−1} before VMCR
        if c.t in wanted and i + 1 < len(sched):
            row = {"t": c.t, "t_next": sched.timesteps[i + 1]}
            for name, sampler in sources.items():
                start = time.perf_counter()
                moved, _ = sampler._vmcr(backbone, z, x0, c, win, sched.timesteps[i + 1])
                dz = moved - z  # [L, C, H, W]
                row[name] = {"rel_change": float(dz.norm() / z.norm()), "max_abs_change": float(dz.abs().max()),
                             "below_half_fp16_step": below_half_fp16_step(z, dz),
                             "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"t={c.t:4d}  " + "  ".join(
                f"{n}: |dz|/|z| {row[n]['rel_change']:.2e}, {100 * row[n]['below_half_fp16_step']:.1f} % below "
                f"half an fp16 step, {row[n]['seconds']:.2f} s" for n in sources), flush=True)
        state.tensors["x"] = z
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny", help="a conf/backbone name with random weights (default tiny)")
    parser.add_argument("--length", type=int, default=49, help="latent frames (49 = 4× CogVideoX)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timesteps", default="999,899,799,499,99", help="steps to measure, by timestep")
    parser.add_argument("--omega", type=float, default=2e-5, help="VMCR step (the paper's 2e-5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = measure(args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

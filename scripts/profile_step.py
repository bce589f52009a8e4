"""Profile where a denoising step's GPU time goes (issue 13: time outside the transformer, avoidable work).

Builds the backbone exactly as scripts/bench.py does (full-size, random weights, the shipped config plus
`--override`s), warms it up (compile), then records with torch.profiler:
1. one guided predict of `--batch` windows (the transformer alone), and
2. `--steps` whole sampler steps of the workload (fusion, scheduler maths, optimiser, host syncs included);
3. a live preview (`preview_every`): the time to write preview.jpg, against the step time.
For each it prints the CUDA kernel time grouped into classes (attention kernel, matmuls, normalisation/elementwise,
copies and casts, other) and the 25 largest kernels, plus the wall time, so the share of the step that is not
transformer compute — and what it is — can be read off. Writes the tables to `--out` (a text file).

    python scripts/profile_step.py --workload W1 --out $OUT/profile-W1.txt
    python scripts/profile_step.py --backbone tiny --workload W1 --steps 1 --out /tmp/p.txt   (CPU: operator times)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PROMPTS, WORKLOADS, SliceDone, compose_workload, sync, workload_length  # noqa: E402

from longgen.build import build  # noqa: E402
from longgen.run.preview import Preview  # noqa: E402
from longgen.samplers.base import SamplingRun  # noqa: E402

#: kernel-name patterns → class (first match wins)
CLASSES = [
    ("attention", r"flash|fmha|attention|cudnn.*sdpa|sm90.*fwd"),
    ("matmul", r"gemm|cutlass|matmul|addmm|aten::mm|bmm|sm90_xmma|nvjet|cublas"),
    ("copy / cast", r"copy|cast|convert|to_copy|cat|memcpy|memset"),
    ("norm / elementwise (fused)", r"triton|layer_norm|norm|elementwise|vectorized|reduce|softmax|add|mul"),
]


def kernel_class(name: str) -> str:
    low = name.lower()
    for label, pattern in CLASSES:
        if re.search(pattern, low):
            return label
    return "other"


def table(prof, wall_s: float, title: str) -> str:
    from torch.autograd import DeviceType

    device_attr = "self_device_time_total" if hasattr(prof.key_averages()[0], "self_device_time_total") else "self_cuda_time_total"
    # GPU kernels only: not the CPU ops that launched them (their device time would count twice) and not the
    # profiler's own "Command Buffer Full" waits
    events = [e for e in prof.key_averages() if getattr(e, "device_type", None) == DeviceType.CUDA
              and getattr(e, device_attr, 0) > 0 and "Command Buffer" not in e.key]
    cpu_only = not events
    if cpu_only:  # CPU run: operator self times instead of kernels
        device_attr = "self_cpu_time_total"
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(getattr(e, device_attr) for e in events) / 1e6
    classes: dict[str, float] = defaultdict(float)
    for e in events:
        classes[kernel_class(e.key)] += getattr(e, device_attr) / 1e6
    lines = [f"## {title}", f"wall {wall_s:.3f} s; {'CPU operator' if cpu_only else 'GPU kernel'} time {total:.3f} s "
             f"({100 * total / wall_s:.1f} % of wall)", "", "| class | s | share |", "|---|---|---|"]
    for label, secs in sorted(classes.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {secs:.3f} | {100 * secs / max(total, 1e-12):.1f} % |")
    lines += ["", "| kernel | calls | s | share |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -getattr(e, device_attr))[:25]:
        secs = getattr(e, device_attr) / 1e6
        lines.append(f"| {e.key[:110]} | {e.count} | {secs:.4f} | {100 * secs / max(total, 1e-12):.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=[w for w in WORKLOADS if w != "scaling"], default="W1")
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--batch", type=int, default=2, help="windows in the profiled predict (CFG doubles the samples)")
    ap.add_argument("--steps", type=int, default=2, help="sampler steps profiled after two warm-up steps")
    ap.add_argument("--override", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg, overrides = compose_workload(args.workload, args.backbone, args.override)
    sampler_name = cfg.hydra.runtime.choices.sampler
    backbone = build(cfg.backbone, "backbone", args.backbone)
    sampler = build(cfg.sampler, "sampler", sampler_name)
    backbone.load()
    backbone.encode_prompts(PROMPTS)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if backbone.device.type == "cuda" else [])
    report = [f"# profile: {' '.join(overrides)}", f"device: {torch.cuda.get_device_name(backbone.device) if backbone.device.type == 'cuda' else 'cpu'}", ""]

    # 1. the transformer alone: one guided predict
    x = torch.randn(args.batch, backbone.window, *backbone.latent_shape, device=backbone.device)
    for _ in range(2):
        backbone.predict(x, 999, [0] * args.batch, 6.0)  # warm-up and compile
    sync(backbone.device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        backbone.predict(x, 999, [0] * args.batch, 6.0)
        sync(backbone.device)
        wall = time.perf_counter() - t0
    report.append(table(prof, wall, f"one guided predict of {args.batch} windows ({2 * args.batch} samples)"))

    # 2. whole sampler steps: two warm-up steps, then `steps` profiled
    length = workload_length(cfg, backbone, sampler)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((1, length, *backbone.latent_shape), generator=gen).to(backbone.device)
    prof_box: dict = {}
    done = {"n": 0}
    warm = 2

    def progress(phase: str, step: int, total: int) -> None:
        if phase != "denoise" or step == 0:
            return
        done["n"] = step
        if step == warm:
            sync(backbone.device)
            prof_box["prof"] = profile(activities=activities)
            prof_box["prof"].__enter__()
            prof_box["t0"] = time.perf_counter()
        if step == warm + args.steps:
            sync(backbone.device)
            prof_box["wall"] = time.perf_counter() - prof_box["t0"]
            prof_box["prof"].__exit__(None, None, None)
            raise SliceDone

    run = SamplingRun(denoiser=backbone, noise=noise, generator=gen, progress=progress,
                      prompt_for_window=lambda start, size: min(len(PROMPTS) - 1, start * len(PROMPTS) // length))
    try:
        sampler.sample(run)
    except SliceDone:
        pass
    report.append(table(prof_box["prof"], prof_box["wall"], f"{args.steps} {args.workload} steps ({sampler_name}, "
                        f"{length} latent frames) after {warm} warm-up steps"))

    # 3. a live preview (generate's preview_every): decode and write preview.jpg of a full-length x̂0
    plan = sampler.plan(length, backbone.window)
    estimate = torch.randn((length, *backbone.latent_shape), generator=gen).to(backbone.device)
    step_wall = prof_box["wall"] / args.steps
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (0.5, 1.0):
            preview = Preview(backbone, plan, Path(tmp), every=1, scale=scale)
            preview.write(estimate)  # warm-up
            sync(backbone.device)
            t0 = time.perf_counter()
            for _ in range(3):
                preview.write(estimate)
            sync(backbone.device)
            secs = (time.perf_counter() - t0) / 3
            report.append(f"preview_scale={scale}: {secs:.3f} s per preview.jpg ({plan.count} windows) = "
                          f"{100 * secs / step_wall:.1f} % of a {step_wall:.2f} s step")
    Path(args.out).write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()

"""Multi-GPU benchmark: the same workload on 1 and on N GPUs of one host, same process layout, latents compared.

For each GPU count the script starts that many worker processes with longgen's launcher (`parallel.launcher.launch`, the
code path of `longgen generate gpus=N`; one worker for 1 GPU, so both sides run in the same kind of process). Each
worker builds the job with generate's own stages (plan → encode), samples a measured slice of `--steps` denoising
steps of the full 50-step schedule, hashes the sampler state after the slice, decodes it (timed, frames hashed), and
rank 0 writes its part: step times, the per-rank unit statistics and the unit layout of every step. The rest of the
schedule is projected from the measured steps as in scripts/bench.py (`project`: median per kind of step).

Projection to other GPU counts, from measured per-unit costs: on 1 GPU every step's time is split into model time
(its units' samples × the measured seconds per sample) and the rest (fusion, optimiser, scheduler maths). On G GPUs
a step's model time is, for each `map` of the step, the largest load of any rank when unit k goes to rank k mod G
(`rank_load`), plus the per-map exchange cost measured on the N-GPU run (its step time minus the same prediction
without exchange); the rest is unchanged. The VAE decode is projected the same way over its tiles; the H.264
encode stays on rank 0.

Workloads (full-size CogVideoX-2B with random weights, composed by scripts/bench.py from conf/experiment/): W1
gen-l-video 4× (10 windows, gen-l-video-4x), W2 syncos 4× (syncos-4x: the backbone's t_min, 900 on CogVideoX),
iters 20, B 3; `sweep`: the same short sweep run as N one-GPU jobs side by side (Hydra's
joblib launcher, backbone.device=free) and as one job after another on all N GPUs (gpus=N).

    python scripts/bench_multigpu.py --workload W1 --gpus 1 2 --steps 4
    python scripts/bench_multigpu.py --workload W2 --gpus 1 2 --steps 6
    python scripts/bench_multigpu.py --workload sweep --gpus 2
    python scripts/bench_multigpu.py --backbone tiny --workload W1 --gpus 1 2 --steps 2 --no-markdown   (CPU, gloo)

Parts are written to --out (default benchmarks/results/) as <workload>-<n>gpu.json, so the GPU counts may also be
measured by separate commands; every run combines the parts present into <workload>-multigpu.json and appends one
Markdown row per N > 1 to benchmarks/README.md (`--combine-only` does just that, e.g. after fetching the parts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import PROMPTS, SliceDone, compose_workload, project, sync  # noqa: E402

PROJECT_TO = (1, 2, 4, 8)


# ---------------------------------------------------------------------------------------------------- projections
def rank_load(sizes: list[int], gpus: int) -> int:
    """Samples on the busiest rank when unit k of a map goes to rank k mod gpus."""
    loads = [0] * gpus
    for k, n in enumerate(sizes):
        loads[k % gpus] += n
    return max(loads)


def parse_plans(plans: dict[str, int], kind: str) -> list[tuple[list[int], int]]:
    """[(unit sizes, occurrences)] of one kind from a {"predict 1,1,1": 3, …} table."""
    out = []
    for key, count in plans.items():
        k, _, sizes = key.partition(" ")
        if k == kind:
            out.append(([int(s) for s in sizes.split(",") if s], count))
    return out


def predicted_step(step: dict, per_sample: float, gpus: int, exchange: float) -> float:
    """A measured 1-GPU step's time on `gpus` GPUs (module docstring)."""
    maps = parse_plans(step["plans"], "predict") + parse_plans(step["plans"], "vjp")
    model_g = sum(rank_load(sizes, gpus) * n for sizes, n in maps) * per_sample
    rest = max(step["seconds"] - step["busy_s"], 0.0)  # fusion, optimiser, scheduler maths: on every rank
    return rest + model_g + (exchange * sum(n for _, n in maps) if gpus > 1 else 0.0)


def projections(one: dict, many: dict | None, sampler_info: dict) -> dict:
    """Projected sampling, decode and end-to-end seconds for PROJECT_TO GPU counts from the 1-GPU part (and the
    exchange cost per map measured on the N-GPU part)."""
    stats = one["ranks"][0]["by_kind"]
    later = one["steps"][1:] or one["steps"]  # the first step holds compilation warm-up
    per_sample = sum(s["busy_s"] for s in later) / max(sum(s["samples"] for s in later), 1)
    exchange = 0.0
    if many is not None:
        n = many["world_size"]
        predicted = sum(predicted_step(s, per_sample, n, 0.0) for s in one["steps"][1:])
        measured = sum(s["seconds"] for s in many["steps"][1:])
        maps = sum(c for s in one["steps"][1:] for _, c in parse_plans(s["plans"], "predict"))
        exchange = max(measured - predicted, 0.0) / max(maps, 1)
    decode = stats.get("decode", {"busy_s": 0.0, "samples": 1})
    per_tile = decode["busy_s"] / max(decode["samples"], 1)
    tiles = parse_plans(one["decode_plans"], "decode")
    decode_rest = max(one["decode_s"] - sum(sum(s) * c for s, c in tiles) * per_tile, 0.0)
    out = {"seconds_per_sample": per_sample, "exchange_s_per_map": exchange, "seconds_per_tile": per_tile}
    for gpus in PROJECT_TO:
        records = [{**s, "seconds": predicted_step(s, per_sample, gpus, exchange)} for s in one["steps"]]
        total, _ = project(records, _SamplerLike(sampler_info), _Sched(one["timesteps"]), len(one["timesteps"]))
        dec = decode_rest + sum(rank_load(s, gpus) * c for s, c in tiles) * per_tile
        out[f"{gpus}"] = {"sampling_s": total, "decode_s": dec, "end_to_end_s": total + dec}
    return out


class _SamplerLike:
    def __init__(self, info: dict) -> None:
        self.t_min = info.get("t_min")
        self.stage2 = info.get("stage2", True)


class _Sched:
    def __init__(self, timesteps: list[int]) -> None:
        self.timesteps = timesteps

    def __len__(self) -> int:
        return len(self.timesteps)


# ---------------------------------------------------------------------------------------------------- worker
def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def worker(args) -> None:
    """One rank of an N-GPU (or 1-GPU) measurement; rank 0 writes the part."""
    from longgen.parallel import units
    from longgen.run.job import plan_job
    from longgen.run.stages import encode, initial_noise
    from longgen.samplers.base import SamplingRun
    from longgen.story import Story

    units.attach()
    world = units.current()
    logging.getLogger("longgen").setLevel(logging.ERROR)  # the plan's notes would print once per rank
    cfg, overrides = compose_workload(args.workload, args.backbone,
                                      [f"backbone.micro_batch={args.micro_batch}", *args.override])
    choices = dict(cfg.hydra.runtime.choices)
    story = Story.from_dict({"global": "", "local": PROMPTS})
    with tempfile.TemporaryDirectory() as tmp:
        job = plan_job(cfg, Path(tmp), choices, story=story)
        world.adopt(job)
        t0 = time.perf_counter()
        prompts = encode(job)
        build_s = time.perf_counter() - t0
        backbone, sampler = job.backbone, job.sampler
        forward_probe = probe(backbone, world) if world.size == 1 and args.probe else None
        world.stats = type(world.stats)()  # the slice's statistics only

        noise, gen = initial_noise(job)
        sched = backbone.schedule(sampler.num_steps)
        steps: list[dict] = []
        marks = {"t": 0.0, "fw": 0, "plans": Counter(), "busy": 0.0, "samples": 0}
        final: dict = {}

        def after_step(state, total):
            sync(backbone.device)
            now = time.perf_counter()
            plans = Counter(world.stats.plans)
            kinds = [world.stats.by_kind.get(k, {}) for k in ("predict", "vjp")]
            busy, samples = sum(k.get("busy_s", 0.0) for k in kinds), sum(k.get("samples", 0) for k in kinds)
            steps.append({"step": state.done - 1, "t": sched.timesteps[state.done - 1],
                          "seconds": now - marks["t"], "forwards": backbone.forward_count - marks["fw"],
                          "busy_s": busy - marks["busy"], "samples": samples - marks["samples"],
                          "plans": {f"{k} {','.join(map(str, s))}": n for (k, s), n in (plans - marks["plans"]).items()}})
            marks.update(t=now, fw=backbone.forward_count, plans=plans, busy=busy, samples=samples)
            if state.done >= args.steps:
                final["tensors"] = {k: v.clone() for k, v in state.tensors.items()}
                raise SliceDone

        run = SamplingRun(denoiser=backbone, noise=noise.to(backbone.device),
                          prompt_for_window=lambda s, m: prompts.ids[job.local_index(s, m)], generator=gen,
                          prompt_ids=prompts.roles, after_step=after_step)
        backbone.forward_count = backbone.call_count = 0
        sync(backbone.device)
        marks["t"] = time.perf_counter()
        try:
            sampler.sample(run)
        except SliceDone:
            pass
        state = final["tensors"]
        latents = state.get("x", state.get("x0"))[None]  # [1, L, C, H, W]: the state after the slice

        decode_before = Counter(world.stats.plans)
        sync(backbone.device)
        t0 = time.perf_counter()
        frames = []
        if world.writes:
            info = job.writer.write(_hashing(backbone.decode_stream(latents), frames), tmp, backbone.fps)
        else:
            for _ in backbone.decode_stream(latents):
                pass
            info = {}
        sync(backbone.device)
        decode_s = time.perf_counter() - t0
        timings = {"build_s": build_s, "decode_s": decode_s, "sample_slice_s": sum(s["seconds"] for s in steps)}
        if not world.writes:
            world.report(timings)
            return
        summary = world.summary(timings)
        part = {
            "workload": args.workload,
            "world_size": world.size,
            "device": torch.cuda.get_device_name(backbone.device) if backbone.device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "overrides": overrides,
            "micro_batch": args.micro_batch,
            "windows": job.plan.count,
            "latent_length": job.length,
            "timesteps": list(sched.timesteps),
            "steps": steps,
            "steps_measured": len(steps),
            "latents_sha256": digest([state[k] for k in sorted(state)]),
            "frames_sha256": hashlib.sha256(b"".join(frames)).hexdigest(),
            "frames": info.get("frames"),
            "decode_s": decode_s,
            "decode_plans": {f"{k} {','.join(map(str, s))}": n
                             for (k, s), n in (Counter(world.stats.plans) - decode_before).items()},
            "build_s": build_s,
            "forward_probe": forward_probe,
            "ranks": summary["ranks"],
            "sampler": sampler.describe(),
            "peak_gpu_gb": torch.cuda.max_memory_allocated(backbone.device) / 2**30
            if backbone.device.type == "cuda" else None,
        }
        total, formula = project(steps, sampler, sched, len(sched))
        part["sampling_s"], part["sampling_formula"] = total, formula
        part["end_to_end_s"] = total + decode_s
        Path(args.part).write_text(json.dumps(part, indent=2, default=str) + "\n")
        print(f"rank 0 of {world.size}: sampling {total / 60:.2f} min projected ({formula}), decode {decode_s:.1f} s, "
              f"latents {part['latents_sha256'][:16]}", flush=True)


def _hashing(frames_iter, sink: list):
    for frames in frames_iter:
        sink.append(frames.tobytes())
        yield frames


def probe(backbone, world) -> dict:
    """Seconds per sample of a guided predict of 2 windows at micro_batch 1 and 4 (median of 3, after 2 warm-ups)."""
    out = {}
    x = torch.randn(2, backbone.window, *backbone.latent_shape, device=backbone.device)
    keep = backbone.micro_batch
    try:
        for mb in (1, 4):
            backbone.micro_batch = mb
            times = []
            for i in range(5):
                sync(backbone.device)
                t0 = time.perf_counter()
                backbone.predict(x, 979, [0, 0], 6.0)
                sync(backbone.device)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            out[f"micro_batch_{mb}"] = sorted(times)[1] / 4
    finally:
        backbone.micro_batch = keep
    return out


# ---------------------------------------------------------------------------------------------------- sweep
def sweep(args, out_dir: Path) -> dict:
    """The same short sweep as N one-GPU jobs side by side, and one job after another on all N GPUs."""
    n = max(args.gpus)
    seeds = ",".join(str(s) for s in range(2 * n))
    job = [f"backbone={args.backbone}", "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=10",
           f"backbone.micro_batch={args.micro_batch}", "save_latents=true", "prompt=a corgi trots through snow",
           f"seed={seeds}"]
    if args.backbone not in ("tiny", "tiny-wan"):
        job.append("backbone.random_weights=true")
    cpu = not torch.cuda.is_available()
    base = Path(tempfile.mkdtemp(prefix="longgen-sweep-"))
    side = [sys.executable, "-m", "longgen.cli", "generate", "-m", *job, "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={n}", f"backbone.device={'cpu' if cpu else 'free'}",
            f"hydra.sweep.dir={base}/side"]
    if cpu:  # the CPU check of this script: torchrun with gloo instead of gpus=N
        together = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m",
                    "longgen.cli", "generate", "-m", *job, f"hydra.sweep.dir={base}/together"]
    else:
        together = [sys.executable, "-m", "longgen.cli", "generate", "-m", *job, f"gpus={n}",
                    f"hydra.sweep.dir={base}/together"]
    result = {"workload": "sweep", "jobs": 2 * n, "gpus": n, "job": job, "dir": str(base)}
    for name, cmd in (("side_by_side", side), ("all_gpus_each", together)):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        result[f"{name}_s"] = time.perf_counter() - t0
        result[f"{name}_command"] = " ".join(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    from safetensors.torch import load_file

    same = []
    for seed in range(2 * n):
        a = sorted((base / "side").glob(f"{seed}_*/latents.safetensors"))
        b = sorted((base / "together").glob(f"{seed}_*/latents.safetensors"))
        same.append(bool(a and b and torch.equal(load_file(a[0])["latents"], load_file(b[0])["latents"])))
    result["latents_equal"] = all(same)
    result["device"] = "cpu" if cpu else torch.cuda.get_device_name(0)
    (out_dir / "sweep-multigpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("command")}), flush=True)
    return result


# ---------------------------------------------------------------------------------------------------- main
def combine(args, out_dir: Path) -> dict:
    parts = {}
    for path in sorted(out_dir.glob(f"{args.workload}-*gpu.json")):
        if not re.fullmatch(rf"{re.escape(args.workload)}-\d+gpu", path.stem):  # not the combined or a variant's file
            continue
        part = json.loads(path.read_text())
        if part.get("workload") == args.workload:
            parts[part["world_size"]] = part
    if 1 not in parts:
        raise SystemExit(f"no 1-GPU part in {out_dir}: run with --gpus 1 first")
    one = parts[1]
    result = {"workload": args.workload, "device": one["device"], "parts": {}}
    for n, part in sorted(parts.items()):
        result["parts"][n] = {
            "sampling_s": part["sampling_s"],
            "decode_s": part["decode_s"],
            "end_to_end_s": part["end_to_end_s"],
            "speedup_sampling": one["sampling_s"] / part["sampling_s"],
            "speedup_end_to_end": one["end_to_end_s"] / part["end_to_end_s"],
            "latents_equal_to_1gpu": part["latents_sha256"] == one["latents_sha256"],
            "frames_equal_to_1gpu": part["frames_sha256"] == one["frames_sha256"],
            "steps_measured": part["steps_measured"],
        }
    many = max(parts.items())[1] if len(parts) > 1 else None
    result["projection"] = projections(one, many, one["sampler"])
    (out_dir / f"{args.workload}-multigpu.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def append_markdown(result: dict, command: str, path: Path) -> None:
    if not path.exists():
        path.write_text("# Benchmarks\n\n")
    rows = []
    proj = result["projection"]
    for n, part in sorted(result["parts"].items(), key=lambda kv: int(kv[0])):
        if int(n) == 1:
            continue
        rows.append(
            f"| {result['workload']} multi-GPU | {result['device']} | 1 → {n} | {part['steps_measured']} | "
            f"{result['parts'][1]['sampling_s'] / 60:.2f} → {part['sampling_s'] / 60:.2f} | "
            f"{result['parts'][1]['decode_s']:.1f} → {part['decode_s']:.1f} | "
            f"{result['parts'][1]['end_to_end_s'] / 60:.2f} → {part['end_to_end_s'] / 60:.2f} | "
            f"{part['speedup_end_to_end']:.2f}× | {'yes' if part['latents_equal_to_1gpu'] else 'NO'} / "
            f"{'yes' if part['frames_equal_to_1gpu'] else 'NO'} | {proj['8']['end_to_end_s'] / 60:.2f} | `{command}` |"
        )
    with path.open("a") as f:
        f.write("\n".join(rows) + ("\n" if rows else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["W1", "W2", "sweep"], default="W1")
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to measure (processes)")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps measured (the rest of 50 projected)")
    ap.add_argument("--micro-batch", type=int, default=1,
                    help="samples per transformer call = the unit of work (1: finest split, balanced on any count)")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    ap.add_argument("--no-probe", dest="probe", action="store_false", help="skip the micro-batch 1 vs 4 timing")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--no-markdown", action="store_true")
    ap.add_argument("--combine-only", action="store_true",
                    help="measure nothing: combine the parts already in --out (e.g. fetched from the GPU machine)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]])
    if args.workload == "sweep":
        result = sweep(args, out_dir)
        if not args.no_markdown:
            with (REPO / "benchmarks" / "README.md").open("a") as f:
                f.write(f"| sweep of {result['jobs']} jobs (10 steps, 2 windows) | {result['device']} | "
                        f"{result['gpus']} | 10 | – | – | side by side {result['side_by_side_s'] / 60:.2f}, each on "
                        f"all GPUs {result['all_gpus_each_s'] / 60:.2f} | "
                        f"{result['all_gpus_each_s'] / result['side_by_side_s']:.2f}× (side by side) | "
                        f"{'yes' if result['latents_equal'] else 'NO'} | – | `{command}` |\n")
        return
    from longgen.parallel.launcher import launch

    for n in [] if args.combine_only else args.gpus:
        part = out_dir / f"{args.workload}-{n}gpu.json"
        cmd = [sys.executable, __file__, "--worker", "--part", str(part), "--workload", args.workload,
               "--backbone", args.backbone, "--steps", str(args.steps), "--micro-batch", str(args.micro_batch),
               *(["--no-probe"] if not args.probe else []), "--override", *args.override]
        code = launch(cmd, n)
        if code != 0:
            raise SystemExit(f"the {n}-process run failed (exit {code})")
    result = combine(args, out_dir)
    print(json.dumps({k: v for k, v in result.items() if k != "projection"}, indent=1))
    print("projected end to end (min):", {g: round(v["end_to_end_s"] / 60, 2)
                                           for g, v in result["projection"].items() if g.isdigit()})
    if not args.no_markdown:
        append_markdown(result, command, REPO / "benchmarks" / "README.md")


if __name__ == "__main__":
    main()

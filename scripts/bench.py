"""Benchmark longgen's samplers on full-size models with random weights (no download) or on a tiny backbone.

Builds the backbone from the shipped config with `random_weights=true` (compute does not depend on weight values),
then measures, in one process:
- the bf16 matmul ceiling of the GPU (8192³ products, CUDA events, median of 10 after 3 warm-ups);
- one transformer forward of a window (per-sample time, TFLOP/s and its ratio to the ceiling);
- text encoding, the sampler's denoising steps (all of them, or a measured slice of `--steps` steps with the rest
  projected from the measured per-kind step times), the streaming decode to mp4, and peak GPU memory.

FLOPs of one transformer forward (multiply + add = 2), n layers, width d:
- CogVideoX, joint attention over T = text + video tokens, P parameters:
    2·P·T  (every weight used once per token)  +  4·n·T²·d  (QKᵀ and A·V);
- Wan, self-attention over the N video tokens and cross-attention to the T text tokens: every weight matrix is
  counted against the tokens it multiplies (video N, text T: the text projection and the cross-attention K/V, time
  embedding: one row per sample):
    2·(P_video·N + P_text·T + P_time)  +  4·n·N²·d  +  4·n·N·T·d
  (Wan 2.2 TI2V-5B embeds a timestep per token: its time embedding counts N rows; T2V-A14B: one expert's forward);
- HunyuanVideo 1.5, joint attention over N video + T text tokens, T = 729 vision + S2 ByT5 + S1 Qwen rows (the
  padding included: the kernels compute it), a token refiner of r layers over the S1 Qwen rows first:
    2·Σ(weight matrix · the rows it multiplies)  +  4·n·(N + T)²·d  +  4·r·S1²·d.
  Every formula equals torch's FlopCounterMode on the tiny variants (tests/test_bench.py).

Writes a JSON file and appends a Markdown row to benchmarks/README.md with the exact command and the GPU name.
The same script runs on a CPU with `--backbone tiny` (CI runs it there; no timing is asserted).

Each workload is an experiment of the `experiment/` config group (conf/experiment/NAME.yaml, mapped in WORKLOADS):
the config is composed exactly as `longgen generate +experiment=NAME backbone=…` composes it, so the command line
runs what the benchmark times. The length is the experiment's `length_factor`, resolved per backbone as generate
resolves it (4x: 10 windows on CogVideoX, 11 on Wan).

    python scripts/bench.py --workload W1 --steps 0             # W1 end to end
    python scripts/bench.py --workload W2 --steps 6             # SynCoS, 6 measured steps, rest projected
    python scripts/bench.py --workload scaling --windows 4 10 28 --steps 2
    python scripts/bench.py --backbone tiny --workload W1 --steps 2 --no-markdown
    python scripts/bench.py --backbone wan2.1-t2v-1.3b --workload W1 --steps 3   # Wan 2.1 1.3B, random weights
    python scripts/bench.py --workload W4 --steps 5    # FIFO 4x: base clip + 5 queue iterations measured, rest projected
    python scripts/bench.py --workload W5 --steps 6          # Gen-L-Video + FreeNoise noise 4x (the FreeNoise baseline)

`--deadline T` (time.time() seconds) measures no step that would end after T (a step is expected to last as long
as the last one measured; before the first, 2 × windows × the measured seconds per forward). A Gen-L-Video workload
(W1, W5, scaling) whose first step would not fit is projected from the forward instead: steps × windows × 2 CFG
branches × seconds per forward (a Gen-L-Video step is exactly that many forwards; the measured CogVideoX-2B and
Wan 2.1 steps were within 1 % of it). scripts/bench_families.sh runs W1 this way on HunyuanVideo 1.5 and Wan 2.2,
whose 50-step runs (and the A14B's single step) do not fit one device command.

FIFO (W4) counts its steps differently from the other samplers: first the base clip's S = n·M DDIM steps in groups of
K (the windows of one queue iteration), then L + S − M queue iterations of K windows each. `--steps N` runs the
whole base clip and N queue iterations; the projection adds the measured base clip, the first (measured) iteration
(it includes the compile of the per-frame path) and the median of the other measured iterations for the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from longgen.build import build
from longgen.samplers import gen_l_video
from longgen.samplers.base import SamplingRun
from longgen.windows import latent_length

REPO = Path(__file__).resolve().parents[1]

#: benchmark workload → its experiment, conf/experiment/NAME.yaml (sampler, its knobs, noise and length);
#: `scaling` is W1's Gen-L-Video at the window counts of --windows
WORKLOADS = {
    "W1": "gen-l-video-4x",
    "W2": "syncos-4x",
    "W3": "glc-3x",
    "W4": "fifo-4x",  # FIFO-Diffusion, n = 4 partitions, lookahead (SynCoS Table 4: 21 min)
    "W5": "freenoise-4x",  # the FreeNoise baseline: Gen-L-Video with FreeNoise's initial noise
    "scaling": "gen-l-video-4x",
}
PROMPTS = [
    "A corgi in a red scarf on a snowy village street at dusk, warm window light, cinematic. The corgi trots forward.",
    "A corgi in a red scarf on a snowy village street at dusk, warm window light, cinematic. The corgi sniffs a lamp post.",
    "A corgi in a red scarf on a snowy village street at dusk, warm window light, cinematic. The corgi leaps into a drift.",
]


def compose_workload(workload: str, backbone: str, extra: list[str] | tuple[str, ...] = ()
                     ) -> tuple[DictConfig, list[str]]:
    """generate's config for `workload` on `backbone` and the overrides it was composed from: the workload's
    experiment, the backbone (full-size ones with random weights: no download), then `extra`, as
    `longgen generate +experiment=NAME backbone=NAME ...` composes them."""
    overrides = [f"+experiment={WORKLOADS[workload]}", f"backbone={backbone}", *extra]
    if not backbone.startswith("tiny"):
        overrides.append("backbone.random_weights=true")
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("generate", overrides=overrides, return_hydra_config=True), overrides


def workload_length(cfg: DictConfig, backbone, sampler) -> int:
    """Latent frames of the composed config's video (num_windows / length_factor / latent_frames), resolved as
    generate's plan resolves them for this backbone and sampler."""
    return latent_length(backbone.window, sampler.stride, backbone.temporal_compression, num_windows=cfg.num_windows,
                         length_factor=cfg.length_factor, latent_frames=cfg.latent_frames)


class SliceDone(Exception):
    """Raised by the progress callback to end a measured slice of steps."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device) -> float | None:
    """bf16 TFLOP/s of 8192³ products on random data (median of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


def forward_flops(backbone, frames: int) -> float:
    """FLOPs of one transformer forward of one window (formulas in the module docstring)."""
    transformer = backbone.pipe.transformer
    if type(transformer).__name__.startswith("Wan"):
        return wan_forward_flops(transformer, frames, backbone.latent_shape, backbone.max_text_tokens,
                                 per_token_time=getattr(backbone, "expand_timesteps", False))
    if type(transformer).__name__.startswith("HunyuanVideo15"):
        # longgen's valid-prefix kernels attend over the valid text tokens only (longgen/backbones/prefix_attention.py:
        # those of prompt 0, the one timed; the packed table's last column is its mask); diffusers' masked processor
        # computes every pair
        prefix = backbone.attention_choice.used in ("valid-prefix", "fa3")
        return hunyuan15_forward_flops(transformer, frames, backbone.latent_shape, backbone.max_text_tokens,
                                       backbone.glyph_tokens,
                                       valid_text=int(backbone._embeds[0, :, -1].sum()) if prefix else None)
    cfg = transformer.config
    params = sum(p.numel() for p in transformer.parameters())
    c, h, w = backbone.latent_shape
    tokens = cfg.max_text_seq_length + frames * (h // cfg.patch_size) * (w // cfg.patch_size)
    width = cfg.num_attention_heads * cfg.attention_head_dim
    return 2 * params * tokens + 4 * cfg.num_layers * tokens**2 * width


def wan_forward_flops(transformer, frames: int, latent_shape, text_tokens: int, per_token_time: bool = False
                      ) -> float:
    """Wan: weight matrices (parameters with ≥ 2 dims) times the rows they multiply, plus both attentions; the time
    embedding runs once per sample, or once per video token with `per_token_time` (Wan 2.2 TI2V's
    expand_timesteps)."""
    cfg = transformer.config
    _, h, w = latent_shape
    _, ph, pw = cfg.patch_size
    video = frames * (h // ph) * (w // pw)
    width = cfg.num_attention_heads * cfg.attention_head_dim
    flops = 0
    for name, p in transformer.named_parameters():
        if p.dim() < 2 or "scale_shift_table" in name:
            continue  # biases, norm weights and modulation tables are not matrix products
        if "condition_embedder.text_embedder" in name or ".attn2.to_k" in name or ".attn2.to_v" in name:
            rows = text_tokens
        elif "condition_embedder.time" in name:
            rows = video if per_token_time else 1
        else:
            rows = video
        flops += 2 * p.numel() * rows
    return flops + 4 * cfg.num_layers * video * video * width + 4 * cfg.num_layers * video * text_tokens * width


def hunyuan15_forward_flops(transformer, frames: int, latent_shape, qwen_tokens: int, glyph_tokens: int,
                            valid_text: int | None = None) -> float:
    """HunyuanVideo 1.5: every linear/conv weight times the rows it multiplies, plus the joint attention of the
    blocks and the self-attention of the Qwen token refiner. Rows by module: the modulation and time linears (any
    `norm*` or `time*` module) 1 per sample; the ByT5 projection S2; the vision projection 729; the refiner and its
    input projection S1; in the blocks the text stream (add_*_proj, to_add_out, ff_context) the T text rows and the
    rest (and the patch embedding, proj_out) the N video rows. The joint attention covers N + T tokens, or
    N + `valid_text` where only the valid text tokens are attended (the valid-prefix kernels)."""
    from longgen.backbones.hunyuan15 import VISION_TOKENS

    cfg = transformer.config
    _, h, w = latent_shape
    video = frames // cfg.patch_size_t * (h // cfg.patch_size) * (w // cfg.patch_size)
    text = VISION_TOKENS + glyph_tokens + qwen_tokens
    width = cfg.num_attention_heads * cfg.attention_head_dim

    def rows(name: str) -> int:
        parts = name.split(".")
        if any(p.startswith(("norm", "time")) for p in parts):
            return 1
        if parts[0] == "context_embedder_2":
            return glyph_tokens
        if parts[0] == "image_embedder":
            return VISION_TOKENS
        if parts[0] == "context_embedder":
            return qwen_tokens
        if any(p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context") for p in parts):
            return text
        return video

    flops = sum(2 * m.weight.numel() * rows(name) for name, m in transformer.named_modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d)))
    refiner_layers = len(transformer.context_embedder.token_refiner.refiner_blocks)
    joint = video + (text if valid_text is None else valid_text)
    return flops + 4 * cfg.num_layers * joint**2 * width + 4 * refiner_layers * qwen_tokens**2 * width


def time_forward(backbone, batch: int, repeats: int, warmups: int = 2) -> float:
    """Seconds per sample of a guided predict on `batch` windows (2·batch samples), median of `repeats` after
    `warmups` untimed predicts (the first compiles, if on)."""
    x = torch.randn(batch, backbone.window, *backbone.latent_shape, device=backbone.device)
    for _ in range(warmups):
        backbone.predict(x, 999, [0] * batch, 6.0)
    times = []
    for _ in range(repeats):
        sync(backbone.device)
        t0 = time.perf_counter()
        backbone.predict(x, 979, [0] * batch, 6.0)
        sync(backbone.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (2 * batch)


def run_sampler(backbone, sampler, length: int, seed: int, steps: int, noise_option=None,
                deadline: float | None = None):
    """Run the sampler; stop after `steps` denoising steps (0 = all; FIFO: the base clip and `steps` queue
    iterations), or earlier where another step as long as the last would end after `deadline` (time.time()
    seconds; at least one step runs). Returns (latents or None, per-step records, the sampler's total number of
    steps)."""
    records: list[dict] = []
    state = {"t0": None, "fw": 0, "total": 0}
    sched = backbone.schedule(sampler.num_steps) if sampler.num_steps else None  # FIFO: known after begin

    def progress(phase: str, done: int, total: int) -> None:
        if phase != "denoise" or done == state.get("done", 0):
            return  # another phase, or no step finished since the last report (the sampler's report of its start)
        state["done"] = done
        sync(backbone.device)
        now = time.perf_counter()
        records.append({
            "step": done - 1,
            "t": sched.timesteps[done - 1] if sched is not None and done <= len(sched) else None,
            "seconds": now - state["t0"],
            "forwards": backbone.forward_count - state["fw"],
        })
        state["t0"], state["fw"], state["total"] = now, backbone.forward_count, total
        if steps and done >= steps + (getattr(sampler, "base_steps", None) or 0):
            raise SliceDone
        if deadline is not None and done > (getattr(sampler, "base_steps", None) or 0) \
                and time.time() + records[-1]["seconds"] > deadline:
            raise SliceDone

    gen = torch.Generator().manual_seed(seed)
    shape = (1, length, *backbone.latent_shape)
    if noise_option is not None:
        noise = noise_option.draw(shape, gen, backbone.window)
    else:
        noise = torch.randn(shape, generator=gen)
    ids = backbone.encode_prompts(PROMPTS)
    run = SamplingRun(
        denoiser=backbone,
        noise=noise.to(backbone.device),
        prompt_for_window=lambda s, m: ids[min(len(ids) - 1, int((s + m / 2) * len(ids) / length))],
        generator=gen,
        progress=progress,
    )
    sync(backbone.device)
    state["t0"], state["fw"] = time.perf_counter(), backbone.forward_count
    try:
        latents = sampler.sample(run)
    except SliceDone:
        latents = None
    return latents, records, state["total"]


def project(records: list[dict], sampler, sched, total_steps: int) -> tuple[float, str]:
    """Total sampling seconds over all steps from measured steps grouped by their forward count (a step of a kind
    that was not measured is counted at the slowest measured kind, and the formula says so)."""
    by_kind: dict[int, list[float]] = {}
    for r in records:
        by_kind.setdefault(r["forwards"], []).append(r["seconds"])
    if len(records) == total_steps:
        return sum(r["seconds"] for r in records), "measured: all steps"
    base = getattr(sampler, "base_steps", None)
    if base:  # FIFO: the base clip (measured whole), then queue iterations of equal cost
        queue = records[base:]
        per_iter = statistics.median(r["seconds"] for r in queue[1:] or queue)
        measured = sum(r["seconds"] for r in records[: base + 1])
        rest = sampler.iterations - 1
        return measured + rest * per_iter, (
            f"base clip ({base} steps) + first queue iteration, measured: {measured:.1f} s; + {rest} iterations × "
            f"{per_iter:.2f} s (median of measured iterations 2..{len(queue)}); {sampler.iterations} iterations of "
            f"{sampler.windows_per_iteration} windows in all")
    medians = {k: statistics.median(v) for k, v in by_kind.items()}
    # which steps are of which kind: SynCoS runs stage 2 while t > t_min
    t_min = getattr(sampler, "t_min", None)
    if t_min is not None and getattr(sampler, "stage2", True) and len(medians) > 1:
        heavy, light = max(medians), min(medians)
        n_heavy = sum(1 for t in sched.timesteps if t > t_min)
        total = n_heavy * medians[heavy] + (total_steps - n_heavy) * medians[light]
        return total, (f"{n_heavy} steps with stage 2 × {medians[heavy]:.2f} s + {total_steps - n_heavy} steps × "
                       f"{medians[light]:.2f} s (medians of the measured steps)")
    per_step = statistics.median(r["seconds"] for r in records[1:] or records)
    which = f"median of measured steps 2..{len(records)}" if len(records) > 1 else "the one measured step"
    return per_step * total_steps, f"{total_steps} steps × {per_step:.2f} s ({which})"


def project_from_forward(sampler_name: str, total_steps: int, windows: int, per_sample: float
                         ) -> tuple[float | None, str]:
    """Sampling seconds when no step could be measured (`--deadline`): a Gen-L-Video step is one guided forward
    pair per window, so total = steps × windows × 2 × seconds per forward (on CogVideoX-2B and Wan 2.1 the measured
    steps were within 1 % of it, benchmarks/README.md); other samplers' steps have other counts: not projected."""
    if sampler_name != "gen-l-video":
        return None, "not measured: one step would end after --deadline"
    return total_steps * windows * 2 * per_sample, (
        f"projected from the forward (no step fit before --deadline): {total_steps} steps × {windows} windows × 2 "
        f"CFG branches × {per_sample:.3f} s per forward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="W1")
    ap.add_argument("--backbone", default="cogvideox-2b")
    ap.add_argument("--steps", type=int, default=0, help="denoising steps to run (0 = all; the rest is projected)")
    ap.add_argument("--windows", type=int, nargs="*", default=[4, 10, 28], help="window counts for --workload scaling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--forward-batch", type=int, default=4, help="windows in the single-forward timing")
    ap.add_argument("--forward-warmups", type=int, default=2, help="untimed predicts before the forward timing")
    ap.add_argument("--forward-repeats", type=int, default=3, help="timed predicts (the median is reported)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="time.time() seconds: measure no step that would end after it (Gen-L-Video workloads with "
                         "no step measured: sampling projected from the forward, see the docstring)")
    ap.add_argument("--forward-only", action="store_true",
                    help="only the one-window forward timing and its peak memory (large models: no sampler run)")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides (backbone.attention=cudnn …)")
    ap.add_argument("--windows-per-predict", type=int, default=None,
                    help="windows per predict call of a fused Gen-L-Video/SynCoS step (default: the sampler's "
                         "WINDOWS_PER_PREDICT; 0: every window in one call, the layout before wave 3 session 12)")
    ap.add_argument("--json", default=None, help="write results here (default: benchmarks/results/<workload>.json)")
    ap.add_argument("--no-markdown", action="store_true", help="do not append a row to benchmarks/README.md")
    args = ap.parse_args()

    if args.windows_per_predict is not None:
        gen_l_video.WINDOWS_PER_PREDICT = args.windows_per_predict or 1 << 30
    cfg, overrides = compose_workload(args.workload, args.backbone, args.override)
    sampler_name = cfg.hydra.runtime.choices.sampler
    backbone = build(cfg.backbone, "backbone", args.backbone)
    sampler = build(cfg.sampler, "sampler", sampler_name)
    writer = build(cfg.writer, "writer", "mp4")

    device = torch.device(cfg.backbone.device if cfg.backbone.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    result: dict = {
        "workload": args.workload,
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]),
        "overrides": overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "windows_per_predict": gen_l_video.WINDOWS_PER_PREDICT,
    }
    result["matmul_tflops"] = matmul_ceiling(device)

    t0 = time.perf_counter()
    backbone.load()
    sync(backbone.device)
    result["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    backbone.encode_prompts(PROMPTS)
    sync(backbone.device)
    result["encode_text_s"] = time.perf_counter() - t0
    result["text_encoder"] = "hashed stand-in (random weights: no T5)" if backbone.random_weights else "T5"

    per_sample = time_forward(backbone, args.forward_batch, repeats=args.forward_repeats, warmups=args.forward_warmups)
    flops = forward_flops(backbone, backbone.window)
    result["forward_s_per_sample"] = per_sample
    result["forward_tflop"] = flops / 1e12
    result["forward_tflops"] = flops / per_sample / 1e12
    if result["matmul_tflops"]:
        result["ratio_to_matmul"] = result["forward_tflops"] / result["matmul_tflops"]
    result["forward_peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(json.dumps({k: result[k] for k in ("forward_s_per_sample", "forward_tflop", "forward_tflops",
                                             "forward_peak_gpu_gb")}), flush=True)
    out = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"{args.workload}-{args.backbone}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result["backbone"] = backbone.describe()
    result["runs"] = []
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")  # the forward row, should the run not finish

    runs = []
    if args.forward_only:
        lengths = []
    elif args.workload == "scaling":
        lengths = [(n, latent_length(backbone.window, sampler.stride, backbone.temporal_compression, num_windows=n))
                   for n in args.windows]
    else:
        lengths = [(None, workload_length(cfg, backbone, sampler))]
    sched = backbone.schedule(sampler.num_steps) if sampler.num_steps else None  # FIFO: its own schedule
    noise_option = build(cfg.noise, "noise", "noise")
    for n_windows, length in lengths:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        backbone.forward_count = 0
        windows = sampler.plan(length, backbone.window).count
        first_step = 2 * windows * per_sample  # a Gen-L-Video step: every window, both CFG branches
        if args.deadline is not None and time.time() + first_step > args.deadline:
            latents, records, total_steps = None, [], sampler.num_steps
            total, formula = project_from_forward(sampler_name, total_steps, windows, per_sample)
        else:
            latents, records, total_steps = run_sampler(backbone, sampler, length, args.seed, args.steps,
                                                        noise_option, args.deadline)
            total, formula = project(records, sampler, sched, total_steps)
        entry = {
            "windows": windows if n_windows is None else n_windows,
            "latent_length": length,
            "frames": backbone.frames_for(length),
            "steps_measured": len(records),
            "steps_total": total_steps,
            "step_seconds": [round(r["seconds"], 3) for r in records],
            "step_forwards": [r["forwards"] for r in records],
            "sampling_s": total,
            "sampling_formula": formula,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        if latents is not None:  # every step ran: the sampled bytes, to compare between runs
            entry["latent_sha256"] = hashlib.sha256(latents.float().cpu().contiguous().numpy().tobytes()).hexdigest()
        if not args.no_decode and n_windows in (None, args.windows[0]):
            if latents is None:  # a slice: decode cost does not depend on values
                latents = torch.randn((1, length, *backbone.latent_shape), device=backbone.device)
            with tempfile.TemporaryDirectory() as tmp:
                sync(backbone.device)
                t0 = time.perf_counter()
                info = writer.write(backbone.decode_stream(latents), tmp, backbone.fps)
                sync(backbone.device)
                entry["decode_s"] = time.perf_counter() - t0
                entry["decoded_frames"] = info["frames"]
            entry["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        entry["end_to_end_s"] = None if total is None else result["encode_text_s"] + total + entry.get("decode_s", 0.0)
        runs.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k not in ("step_seconds", "step_forwards")}), flush=True)
        out.write_text(json.dumps({**result, "runs": runs}, indent=2, default=str) + "\n")
    result["runs"] = runs
    result["backbone"] = backbone.describe()
    result["sampler"] = {"name": sampler_name, **sampler.describe()}
    result["noise"] = noise_option.describe()

    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if not args.no_markdown:
        append_markdown(result, REPO / "benchmarks" / "README.md")
    print(f"wrote {out}")


def append_markdown(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\n")
    ratio = result.get("ratio_to_matmul")
    rows = []
    if not result["runs"]:  # --forward-only: one row with the forward time and its peak memory
        rows.append(
            f"| forward ({result['backbone']['backbone']}) | {result['device']} | 1 | "
            f"{result['backbone']['window_latent_frames']} | – | – | – | – | {result['forward_s_per_sample']:.3f} | "
            f"{result['forward_tflops']:.0f} | {(result['matmul_tflops'] or float('nan')):.0f} | "
            f"{(ratio or float('nan')):.2f} | {(result['forward_peak_gpu_gb'] or float('nan')):.1f} | "
            f"`{result['command']}` |"
        )
    for r in result["runs"]:
        rows.append(
            f"| {result['workload']} | {result['device']} | {r['windows']} | {r['latent_length']} | "
            f"{r['steps_measured']} | {(r['sampling_s'] or float('nan')) / 60:.2f} | "
            f"{r.get('decode_s', float('nan')):.1f} | {(r['end_to_end_s'] or float('nan')) / 60:.2f} | "
            f"{result['forward_s_per_sample']:.3f} | {result['forward_tflops']:.0f} | "
            f"{(result['matmul_tflops'] or float('nan')):.0f} | {(ratio or float('nan')):.2f} | "
            f"{(r['peak_gpu_gb'] or float('nan')):.1f} | `{result['command']}` |"
        )
    with path.open("a") as f:
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()

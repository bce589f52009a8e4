"""`longgen generate`: story → backbone → sampler → streaming mp4, in Hydra's run directory.

Order of work, so that bad input fails in a second and finished work is never lost:
1. build sampler, backbone and writer objects from their config groups (keyword and range checks, no weights);
2. resolve the video length and window plan, read and validate the story;
3. check that the weights exist (one-line error naming the model and how to pass a local path), then load;
4. encode each unique prompt once, draw the initial noise on the CPU from the seed, sample;
5. save the latents (when asked, or as a rescue copy if decoding fails), stream-decode to the mp4, then write
   story.json and manifest.json.
"""

from __future__ import annotations

import gc
import json
import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longgen import __version__
from longgen.build import build
from longgen.errors import UsageError, user_errors  # noqa: F401  (user_errors: also used by split_prompt)
from longgen.progress import StepProgress
from longgen.samplers.base import SamplingRun
from longgen.story import Story, check_text_limit
from longgen.windows import latent_length

log = logging.getLogger("longgen")


def resolve_story(cfg: DictConfig, choices: dict[str, Any] | None = None) -> Story:
    given = [k for k in ("prompt", "story", "scenario") if cfg.get(k) not in (None, "")]
    if len(given) > 1:
        raise UsageError(f"give only one of prompt=…, story=… or scenario=… (got {' and '.join(given)})")
    if not given:
        raise UsageError('nothing to generate: pass prompt="…", story=path/to/story.json or scenario=path/to/scenario.txt num_prompts=N')
    if cfg.get("num_prompts") is not None and given[0] != "scenario":
        raise UsageError("num_prompts=… is the number of local prompts to split a scenario=… into; drop it or pass scenario=")
    if given[0] == "prompt":
        return Story.single(str(cfg.prompt))
    if given[0] == "scenario":
        from longgen.splitters.scenario import split_scenario_file

        return split_scenario_file(cfg.splitter, (choices or {}).get("splitter"), str(cfg.scenario), cfg.num_prompts)
    story = Story.load(str(cfg.story))
    if story.multi_shot:
        raise UsageError(
            f"{cfg.story} is a multi-shot (LCT) story with {story.num_events} shots; generate cannot sample "
            f"multi-shot stories yet: give a story with `global` and `local` prompts"
        )
    return story


def check_prompt_lengths(story: Story, backbone: Any, negative_prompt: str) -> None:
    """Every prompt the text encoder will see against the backbone's token limit (see story.check_text_limit)."""
    prompts = [(f"local prompt {i}", p) for i, p in enumerate(story.local_prompts, 1)]
    prompts.append(("negative_prompt", negative_prompt))
    strict = not getattr(backbone, "random_weights", False)
    for warning in check_text_limit(prompts, backbone.count_tokens, backbone.max_text_tokens, backbone.label, strict):
        log.warning(warning)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "longgen": __version__}
    for name in ("torch", "diffusers", "transformers", "hydra-core", "imageio-ffmpeg"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def save_latents(latents: torch.Tensor, path: Path) -> None:
    """Final latents [F, C, H, W] under key `latents`, written atomically."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({"latents": latents[0].detach().to("cpu", torch.float32).contiguous()}, str(tmp))
    tmp.replace(path)


def run_generate(cfg: DictConfig, out_dir: Path, choices: dict[str, Any]) -> dict:
    """Generate one video into `out_dir`; return the manifest."""
    timings: dict[str, float] = {}
    sampler = build(cfg.sampler, "sampler", choices.get("sampler"))
    backbone = build(cfg.backbone, "backbone", choices.get("backbone"))
    writer = build(cfg.writer, "writer", choices.get("writer"))

    length = latent_length(
        backbone.window,
        sampler.stride,
        backbone.temporal_compression,
        num_windows=cfg.num_windows,
        length_factor=cfg.length_factor,
        latent_frames=cfg.latent_frames,
    )
    backbone.check_length(length)
    plan = sampler.plan(length, backbone.window)
    story = resolve_story(cfg, choices)
    if cfg.get("scenario"):
        story.save(out_dir / "story.json")  # keep the split even if generation fails later
    use_global = cfg.get("use_global_prompt", True)
    if not isinstance(use_global, bool):
        raise UsageError(f"use_global_prompt={use_global!r} must be true or false")
    stripped = 0
    if not use_global:  # SynCoS Table 2 ablation "w/o structured prompt", for every sampler
        story, stripped = story.without_global()
        log.info("use_global_prompt=false: global description removed from %d of %d local prompt(s)",
                 stripped, len(story.local_prompts))
    counted_exactly = backbone.count_tokens(story.local_prompts[0])[1]
    check_prompt_lengths(story, backbone, cfg.negative_prompt or "")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise UsageError(f"seed={cfg.seed} must be a non-negative whole number")

    def local_index(start: int, size: int) -> int:
        return story.prompt_index_at(start + size / 2, length)

    window_map = [{"start": s, "end": s + plan.window, "local_prompt": local_index(s, plan.window)} for s in plan.starts]
    log.info(
        "%s on %s: %d latent frames (%d video frames), %d windows of %d, stride %d, %d local prompt(s)",
        choices.get("sampler"), backbone.label, length, backbone.frames_for(length), plan.count, plan.window,
        sampler.stride, len(story.local_prompts),
    )

    backbone.check_available()
    t0 = time.perf_counter()
    backbone.load()
    timings["load_s"] = time.perf_counter() - t0
    try:
        if not counted_exactly:  # the tokenizer is loaded now: count exactly before any sampling
            check_prompt_lengths(story, backbone, cfg.negative_prompt or "")
        t0 = time.perf_counter()
        # local prompts first (ids 0..P-1 by first appearance), then the global prompt for samplers that use it
        # (GLC's global path); each unique prompt is encoded once
        glob = story.global_prompt.strip()
        all_ids = backbone.encode_prompts(story.local_prompts + ([glob] if glob else []), cfg.negative_prompt or "")
        ids = all_ids[: len(story.local_prompts)]
        role_ids = {"global": all_ids[-1]} if glob else {}
        timings["encode_text_s"] = time.perf_counter() - t0

        gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
        noise = torch.randn((1, length, *backbone.latent_shape), generator=gen, dtype=torch.float32)  # [1, L, C, H, W]
        backbone.forward_count = backbone.call_count = 0
        with StepProgress() as progress:
            run = SamplingRun(
                denoiser=backbone,
                noise=noise.to(backbone.device),
                prompt_for_window=lambda start, size: ids[local_index(start, size)],
                generator=gen,
                progress=progress,
                prompt_ids=role_ids,
            )
            t0 = time.perf_counter()
            latents = sampler.sample(run)  # [1, L, C, H, W]
            if latents.device.type == "cuda":
                torch.cuda.synchronize(latents.device)
            timings["sample_s"] = time.perf_counter() - t0
            forwards, calls = backbone.forward_count, backbone.call_count
            if not torch.isfinite(latents).all():
                log.warning("the sampled latents contain NaN/inf values; the video will be corrupt")

            latent_path = out_dir / "latents.safetensors"
            if cfg.save_latents:
                save_latents(latents, latent_path)
            t0 = time.perf_counter()
            total = backbone.frames_for(length)
            try:
                video = writer.write(backbone.decode_stream(latents), out_dir, backbone.fps, total, progress)
            except BaseException:
                if not latent_path.exists():
                    save_latents(latents, latent_path)
                log.error("decoding failed; the sampled latents are kept in %s", latent_path)
                raise
            timings["decode_s"] = time.perf_counter() - t0

        if video["frames"] != total:
            log.warning("wrote %d frames, expected %d", video["frames"], total)
        story.save(out_dir / "story.json")
        peak = torch.cuda.max_memory_allocated(backbone.device) if backbone.device.type == "cuda" else None
        manifest = {
            "longgen": __version__,
            "command": " ".join(sys.argv),
            "seed": int(cfg.seed),
            "sampler": {"name": choices.get("sampler"), **sampler.describe()},
            "backbone": {"name": choices.get("backbone"), **backbone.describe()},
            "latent_length": length,
            "window": plan.window,
            "stride": sampler.stride,
            "windows": window_map,
            "local_prompts": len(story.local_prompts),
            "use_global_prompt": use_global,
            "global_prompt_removed_from": stripped,
            "frames": video["frames"],
            "fps": video["fps"],
            "width": video["width"],
            "height": video["height"],
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "transformer_forwards": forwards,
            "transformer_calls": calls,
            "peak_gpu_memory_bytes": peak,
            "noise": "float32 [1, L, C, H, W] drawn on the CPU with torch.Generator().manual_seed(seed)",
            "versions": package_versions(),
            "outputs": {
                "video": Path(video["path"]).name,
                "story": "story.json",
                "config": ".hydra/config.yaml",
                "latents": latent_path.name if latent_path.exists() else None,
            },
        }
        tmp = out_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(out_dir / "manifest.json")
        log.info("wrote %s (%d frames at %d fps) in %.1f s", video["path"], video["frames"], video["fps"], sum(timings.values()))
        return manifest
    finally:
        backbone.release()
        gc.collect()


@hydra.main(version_base="1.3", config_path="pkg://longgen.conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    with user_errors():
        run_generate(cfg, Path(hc.runtime.output_dir), dict(hc.runtime.choices))
        if cfg.get("eval"):  # `eval=true`: all logic lives in longgen/eval/
            from longgen.eval.evaluate import evaluate_run_dir

            evaluate_run_dir(hc.runtime.output_dir)

"""`longgen generate`: story → backbone → sampler → streaming mp4, in Hydra's run directory.

The flow is five named stages, shared by `generate`, `resume` (longgen/resume.py) and `decode`:

1. `plan_job`   — build sampler, backbone and writer from their config groups, check every option and number,
                  resolve the length, window plan and story (a multi-shot story: its takes and shots, the sampler
                  run on every take, longgen/shots.py), probe the writer, check that the weights exist (one
                  line naming the model and `model_path=`; nothing loaded, nothing written; a bad
                  input fails here in about a second and leaves no run directory behind);
2. `encode`     — load the weights (their presence was checked in stage 1), count prompt tokens exactly,
                  encode each unique prompt once;
3. `sample`     — draw x_T on the CPU from the seed and run the sampler; after every step the hooks write
                  `checkpoint.safetensors` (every `checkpoint_every` steps / `checkpoint_seconds`, and after the
                  last step), `preview.jpg` (every `preview_every` steps) and honour Ctrl-C/SIGTERM;
4. `decode`     — stream-decode into the mp4 (written under a temporary name, renamed when verified; the takes of
                  a multi-shot story each on their own, so cuts are hard);
5. `record`     — story.json, manifest.json, optional latents.safetensors; the checkpoint is then removed.

Before stage 2 the run directory is claimed (`rundir.RunDirectory`: a lock, refusal of another run's results
unless overwrite=true) and `.hydra/` is written by us, after those checks, so a refused run never touches an
existing run's config (Hydra's own copy is switched off with hydra.output_subdir=null).

On several processes (`gpus=N`, torchrun; longgen/distributed.py) this process is rank 0: it alone claims and
writes the run directory, and hands each job to the other ranks, which run stages 1–5 with `job.world.writes`
false (no hooks, the decode only computes their share of the tiles, nothing recorded).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from longgen import __version__
from longgen.build import build
from longgen.checkpoint import Checkpoint, Interrupts, StepHooks, digest, result_config
from longgen.distributed import PeerFailed, Units, current
from longgen.errors import Interrupted, RunFailure, UsageError, out_of_memory, out_of_memory_as, user_errors
from longgen.noise import GaussianNoise
from longgen.options import check_latent_budget, flag, number, whole
from longgen.preview import Preview
from longgen.progress import StepProgress
from longgen.rundir import CHECKPOINT, LATENTS, RunDirectory, made_by_this_command, write_json, write_text
from longgen.samplers.base import Sampler, SamplingRun
from longgen.shots import ShotPlan, check_single_shot_options, decode_takes, plan_scene
from longgen.story import Story, check_text_limit, without_cut_markers
from longgen.sweep import recorded_job
from longgen.windows import WindowPlan, latent_length

log = logging.getLogger("longgen")

#: most windows a video may have (a 1-minute CogVideoX video has 28; this bound keeps plans and manifests sane)
MAX_WINDOWS = 10_000


# ---------------------------------------------------------------------------------------------------- stage 1: plan
@dataclass
class Job:
    """Everything decided before any weights load."""

    cfg: DictConfig
    choices: dict[str, Any]
    out_dir: Path
    sampler: Sampler
    backbone: Any
    writer: Any
    length: int
    plan: WindowPlan
    given_story: Story  # as the user gave it (or the splitter wrote it): story.json
    story: Story  # as the windows use it (without the global description when use_global_prompt=false)
    use_global: bool
    stripped: int
    timings: dict[str, float] = field(default_factory=dict)
    world: Units = field(default_factory=Units)  # this process's share of the work (distributed.py)
    noise: Any = field(default_factory=GaussianNoise)  # the initial-noise option (noise/ group, longgen/noise.py)
    shots: ShotPlan | None = None  # multi-shot story: takes, shots and their frames (longgen/shots.py)

    def local_index(self, start: int, size: int) -> int:
        if self.shots is not None:  # the shot (one local prompt each) whose segment holds the window's centre
            return self.shots.shot_at(start + size / 2)
        return self.story.prompt_index_at(start + size / 2, self.length)

    def window_map(self) -> list[dict]:
        if self.shots is not None:
            return self.shots.window_map()
        return [{"start": s, "end": s + self.plan.window, "local_prompt": self.local_index(s, self.plan.window)}
                for s in self.plan.starts]

    @property
    def frames(self) -> int:
        """Video frames: the latent decoded at once, or each take of a multi-shot story on its own."""
        return self.shots.frames if self.shots is not None else self.backbone.frames_for(self.length)

    def decode_stream(self, latents: torch.Tensor):
        """uint8 frame chunks [f, H, W, 3] of latents [1, L, C, H, W], cut at every take of a multi-shot story."""
        if self.shots is not None:
            return decode_takes(self.backbone, latents, self.shots)
        return self.backbone.decode_stream(latents)

    def story_hash(self) -> str:
        return digest(self.story.to_dict())

    def inputs(self) -> dict:
        """Files the run reads besides the story, recorded in every checkpoint (extend: its input video)."""
        return {}


def check_top_level(cfg: DictConfig) -> None:
    """Numbers and switches of conf/generate.yaml, as the command line delivers them."""
    whole("seed", cfg.seed, 0, 2**63 - 1)
    if cfg.get("num_windows") is not None:
        whole("num_windows", cfg.num_windows, 1, MAX_WINDOWS)
    if cfg.get("length_factor") is not None:
        number("length_factor", cfg.length_factor, 1.0, float(MAX_WINDOWS))
    if cfg.get("latent_frames") is not None:
        whole("latent_frames", cfg.latent_frames, 1, MAX_WINDOWS * 100)
    if cfg.get("num_prompts") is not None:
        whole("num_prompts", cfg.num_prompts, 1, 1000)
    for name in ("save_latents", "use_global_prompt", "overwrite"):
        flag(name, cfg.get(name, False))
    whole("checkpoint_every", cfg.checkpoint_every, 0)
    if cfg.get("checkpoint_seconds") is not None:
        number("checkpoint_seconds", cfg.checkpoint_seconds, 0.0, lo_open=True)
    whole("preview_every", cfg.preview_every, 0)
    number("preview_scale", cfg.preview_scale, 0.0, 1.0, lo_open=True)
    if cfg.get("gpus", 1) != "all":
        whole("gpus", cfg.get("gpus", 1), 1, 4096)


def resolve_story(cfg: DictConfig, choices: dict[str, Any] | None = None, split: bool = True) -> Story | None:
    """The story from prompt=, story= or scenario= (split by the configured splitter; with split=False only checked
    for readability and None returned, so that validating a sweep asks no LLM)."""
    given = [k for k in ("prompt", "prompt_file", "story", "scenario") if cfg.get(k) not in (None, "")]
    if len(given) > 1:
        raise UsageError(f"give only one of prompt=…, prompt_file=…, story=… or scenario=… (got {' and '.join(given)})")
    if not given:
        raise UsageError('nothing to generate: pass prompt="…", prompt_file=prompt.txt, story=path/to/story.json or scenario=path/to/scenario.txt num_prompts=N')
    if cfg.get("num_prompts") is not None and given[0] != "scenario":
        raise UsageError("num_prompts=… is the number of local prompts to split a scenario=… into; drop it or pass scenario=")
    if cfg.get("multi_shot") and given[0] != "scenario":
        raise UsageError("multi_shot=true asks the splitter to write shots from a scenario=…; a story file says itself "
                         "whether it has shots: drop multi_shot=true")
    if given[0] == "prompt":
        return Story.single(str(cfg.prompt))
    if given[0] == "prompt_file":
        return Story.from_prompt_file(cfg.prompt_file)
    if given[0] == "scenario":
        if not split:
            path = Path(str(cfg.scenario)).expanduser()
            if not path.is_file():
                raise UsageError(f"scenario={cfg.scenario}: no such file")
            return None
        from longgen.splitters.scenario import split_scenario_file

        return split_scenario_file(cfg.splitter, (choices or {}).get("splitter"), str(cfg.scenario), cfg.num_prompts,
                                   shots=bool(cfg.get("multi_shot", False)))
    return Story.load(str(cfg.story))


def check_prompt_lengths(story: Story, backbone: Any, negative_prompt: str) -> None:
    """Every prompt the text encoder will see against the backbone's token limit (see story.check_text_limit)."""
    prompts = [(f"local prompt {i}", without_cut_markers(p)) for i, p in enumerate(story.local_prompts, 1)]
    prompts.append(("negative_prompt", negative_prompt))
    strict = not getattr(backbone, "random_weights", False)
    for warning in check_text_limit(prompts, backbone.count_tokens, backbone.max_text_tokens, backbone.label, strict):
        log.warning(warning)


def plan_job(cfg: DictConfig, out_dir: Path, choices: dict[str, Any], story: Story | None = None,
             split: bool = True) -> Job | None:
    """Stage 1. `story` given (resume): use it instead of the config's prompt/story/scenario. With split=False
    (sweep validation) a scenario is not split and None is returned after every other check."""
    check_top_level(cfg)
    sampler = build(cfg.sampler, "sampler", choices.get("sampler"))
    backbone = build(cfg.backbone, "backbone", choices.get("backbone"))
    writer = build(cfg.writer, "writer", choices.get("writer"))
    # runs made before the noise group existed have none in their saved config: they used Gaussian noise
    noise = build(cfg.noise, "noise", choices.get("noise")) if cfg.get("noise") is not None else GaussianNoise()
    noise.check(backbone.window)
    length = latent_length(
        backbone.window,
        sampler.stride,
        backbone.temporal_compression,
        num_windows=cfg.num_windows,
        length_factor=cfg.length_factor,
        latent_frames=cfg.latent_frames,
    )
    check_latent_budget(length, backbone.latent_shape, backbone.label)
    backbone.check_length(length)
    plan = sampler.plan(length, backbone.window)
    writer.check()
    if story is None:
        story = resolve_story(cfg, choices, split)
        if story is None:
            backbone.check_available()
            return None
    use_global = cfg.get("use_global_prompt", True)
    used, stripped, shots = story, 0, None
    if story.multi_shot:  # LCT scene: takes between cuts, one prompt per shot (longgen/shots.py)
        shots, sampler, used = plan_scene(story, cfg, sampler, backbone, length, noise)
        length, plan = shots.length, shots.window_plan()
        check_latent_budget(length, backbone.latent_shape, backbone.label)
    else:
        check_single_shot_options(cfg)
        story.check_events_fit(plan, lambda n: sampler.plan(backbone.window + sampler.stride * (n - 1), backbone.window))
        if not use_global:  # SynCoS Table 2 ablation "w/o structured prompt", for every sampler
            used, stripped = story.without_global()
            log.info("use_global_prompt=false: global description removed from %d of %d local prompt(s)",
                     stripped, len(used.local_prompts))
        elif warning := story.missing_global_warning():  # local prompts without the global description
            log.warning(warning)
    check_prompt_lengths(used, backbone, cfg.negative_prompt or "")
    backbone.check_available()  # missing weights: one line naming the model and model_path=, before any work
    return Job(cfg, dict(choices), Path(out_dir), sampler, backbone, writer, length, plan, story, used, use_global,
               stripped, noise=noise, shots=shots)


# ---------------------------------------------------------------------------------------------------- stage 2: encode
@dataclass
class Prompts:
    ids: list[int]  # encoded id of each local prompt
    roles: dict[str, int]  # e.g. {"global": id} for samplers that use the global prompt


def encode(job: Job) -> Prompts:
    backbone = job.backbone
    t0 = time.perf_counter()
    with out_of_memory_as(f"out of GPU memory while loading {backbone.label} (nothing was sampled yet): free GPU "
                          f"memory held by other processes, or add backbone.cpu_offload=true"):
        backbone.load()
    job.timings["load_s"] = time.perf_counter() - t0
    check_prompt_lengths(job.story, backbone, job.cfg.negative_prompt or "")  # exact now that the tokenizer is here
    t0 = time.perf_counter()
    # local prompts first (ids 0..P-1 by first appearance), then the global prompt for samplers that use it
    # (GLC's global path); each unique prompt is encoded once
    glob = job.story.global_prompt.strip()
    texts = [without_cut_markers(p) for p in job.story.local_prompts + ([glob] if glob else [])]
    all_ids = backbone.encode_prompts(texts, job.cfg.negative_prompt or "")
    job.timings["encode_text_s"] = time.perf_counter() - t0
    return Prompts(all_ids[: len(job.story.local_prompts)], {"global": all_ids[-1]} if glob else {})


# ---------------------------------------------------------------------------------------------------- stage 3: sample
def initial_noise(job: Job) -> tuple[torch.Tensor, torch.Generator]:
    """x_T float32 [1, L, C, H, W] drawn on the CPU from the seed by the noise option, and the generator the sampler
    continues."""
    gen = torch.Generator(device="cpu").manual_seed(int(job.cfg.seed))
    noise = job.noise.draw((1, job.length, *job.backbone.latent_shape), gen, job.backbone.window)
    return noise, gen


def resume_command(job: Job) -> str:
    return f"longgen resume {shlex.quote(str(job.out_dir))}"


def kept_checkpoint(job: Job, hooks: StepHooks) -> str:
    """Where a failed sample stage's finished steps are, and how to continue them."""
    if hooks.saved_at is None:
        return "no checkpoint was written yet"
    return f"the checkpoint after step {hooks.saved_at} is kept in {hooks.path}; continue with: {resume_command(job)}"


def sample(job: Job, prompts: Prompts, interrupts: Interrupts, progress: StepProgress,
           resume: Checkpoint | None = None) -> torch.Tensor:
    """Stage 3: clean latents [1, L, C, H, W] float32; continues from `resume` when given."""
    backbone, cfg = job.backbone, job.cfg
    noise, gen = initial_noise(job)
    counters = dict(resume.counters) if resume is not None else {"forwards": 0, "calls": 0, "sample_s": 0.0}
    backbone.forward_count = backbone.call_count = 0
    started = time.perf_counter()

    def snapshot(state, total: int) -> Checkpoint:
        return Checkpoint(state, total, gen.get_state(), result_config(cfg), job.story_hash(), {
            "forwards": counters["forwards"] + backbone.forward_count,
            "calls": counters["calls"] + backbone.call_count,
            "sample_s": counters["sample_s"] + time.perf_counter() - started,
        }, inputs=job.inputs())

    preview = Preview(backbone, job.plan, job.out_dir, int(cfg.preview_every), float(cfg.preview_scale))
    hooks = StepHooks(job.out_dir / CHECKPOINT, snapshot, interrupts, int(cfg.checkpoint_every),
                      cfg.get("checkpoint_seconds"), job.world.solo(preview) if preview.every > 0 else None,
                      resume_command(job))
    run = SamplingRun(
        denoiser=backbone,
        noise=noise.to(backbone.device),
        prompt_for_window=lambda start, size: prompts.ids[job.local_index(start, size)],
        generator=gen,
        progress=progress,
        prompt_ids=prompts.roles,
        after_step=hooks if job.world.writes else (lambda state, total: None),  # only rank 0 writes
    )
    state = None
    if resume is not None:
        gen.set_state(resume.generator_state)
        state = resume.state
        log.info("resuming after step %d of %d", state.done, resume.total)
    progress.label("denoise", f"denoise · {job.plan.count} windows")
    interrupts.sampling = True
    no_room = (lambda: f"out of GPU memory while sampling (the model's activations for backbone.micro_batch="
               f"{job.cfg.backbone.get('micro_batch')} samples per call did not fit next to what else holds the GPU); "
               f"{kept_checkpoint(job, hooks)}; free GPU memory (backbone.cpu_offload=true also helps) and resume, or "
               f"start anew with a smaller backbone.micro_batch")
    try:
        with out_of_memory_as(no_room):
            latents = job.sampler.sample(run, state)  # [1, L, C, H, W]
    except PeerFailed as exc:
        raise PeerFailed(f"{exc}; {kept_checkpoint(job, hooks)}") from None
    finally:
        interrupts.sampling = False
    if latents.device.type == "cuda":
        torch.cuda.synchronize(latents.device)
    job.timings["sample_s"] = counters["sample_s"] + time.perf_counter() - started
    job.timings["forwards"] = counters["forwards"] + backbone.forward_count
    job.timings["calls"] = counters["calls"] + backbone.call_count
    if not torch.isfinite(latents).all():  # never written as a video (the hooks never save such a state either)
        raise RunFailure(f"the sampled latents hold NaN/inf values; no video is written; {hooks.kept()}")
    if interrupts.requested:
        raise Interrupted(f"stopped by {interrupts.requested} after sampling finished; the latents are in "
                          f"{hooks.path}; write the video with: {resume_command(job)}")
    return latents


# ---------------------------------------------------------------------------------------------------- stage 4: decode
def save_latents(latents: torch.Tensor, path: Path) -> None:
    """Final latents [F, C, H, W] under key `latents`, written atomically and verified (checkpoint.write_verified:
    their sha256 in the metadata; OSError when the write fails)."""
    from longgen.checkpoint import write_verified

    write_verified(path, {"latents": latents[0].detach().to("cpu", torch.float32).contiguous()}, {})


def decode(job: Job, latents: torch.Tensor, progress: StepProgress, resume_hint: str) -> dict:
    """Stage 4: the video file. On failure the sampled latents stay on disk (the final checkpoint, or
    latents.safetensors when checkpoints are off) and the error line says how to finish."""
    out = job.out_dir
    t0 = time.perf_counter()
    total = job.frames
    if not job.world.writes:  # another rank writes the video; this one decodes its share of the tiles
        for _ in job.decode_stream(latents):
            pass
        job.timings["decode_s"] = time.perf_counter() - t0
        return {}
    try:
        video = job.writer.write(job.decode_stream(latents), out, job.backbone.fps, total, progress)
    except (Exception, KeyboardInterrupt) as exc:
        kept = keep_latents(latents, out)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted while writing the video; {kept}; finish with: {resume_hint}") from None
        if out_of_memory(exc):
            reason = "out of GPU memory while decoding (try backbone.vae_tiling=true or backbone.cpu_offload=true)"
        raise RunFailure(f"writing the video failed: {reason}; {kept}; finish with: {resume_hint}") from exc
    job.timings["decode_s"] = time.perf_counter() - t0
    if video["frames"] != total:
        log.warning("wrote %d frames, expected %d", video["frames"], total)
    return video


def keep_latents(latents: torch.Tensor, out: Path) -> str:
    """Make sure the sampled latents are on disk after a failed decode; say where."""
    if (out / CHECKPOINT).is_file():
        return f"the sampled latents are kept in {out / CHECKPOINT}"
    try:
        save_latents(latents, out / LATENTS)
        return f"the sampled latents are kept in {out / LATENTS}"
    except Exception as exc:  # e.g. the disk is full as well
        return f"the sampled latents could not be saved either ({exc})"


# ---------------------------------------------------------------------------------------------------- stage 5: record
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "longgen": __version__}
    for name in ("torch", "diffusers", "transformers", "hydra-core", "imageio-ffmpeg"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def manifest_head(job) -> dict:
    """What every manifest opens with (generate and extend): version, command, seed, sampler and backbone."""
    return {
        "longgen": __version__,
        "command": " ".join(sys.argv),
        "seed": int(job.cfg.seed),
        "sampler": {"name": job.choices.get("sampler"), **job.sampler.describe()},
        "backbone": {"name": job.choices.get("backbone"), **job.backbone.describe()},
    }


def video_facts(video: dict, timings: dict) -> dict:
    """The written video's geometry and the run's stage timings, for the manifest."""
    return {
        "frames": video["frames"],
        "fps": video["fps"],
        "width": video["width"],
        "height": video["height"],
        "timings": {k: round(v, 3) for k, v in timings.items() if k.endswith("_s")},
        "transformer_forwards": int(timings.get("forwards", 0)),
    }


def record(job: Job, latents: torch.Tensor, video: dict, extra: dict | None = None) -> dict:
    """Stage 5: latents (if asked), story, manifest; then the checkpoint is no longer needed."""
    out, backbone, cfg, timings = job.out_dir, job.backbone, job.cfg, job.timings
    if not job.world.writes:
        job.world.report(timings)  # rank 0 puts this rank's timings into the manifest
        return {}
    processes = job.world.summary(timings)  # world size, devices, per-rank timings
    latent_path = out / LATENTS
    if cfg.save_latents:
        save_latents(latents, latent_path)
    write_text(out / "story.json", job.given_story.to_json())
    peak = torch.cuda.max_memory_allocated(backbone.device) if backbone.device.type == "cuda" else None
    manifest = {
        **manifest_head(job),
        "latent_length": job.length,
        "window": job.plan.window,
        "stride": job.sampler.stride,
        "windows": job.window_map(),
        "local_prompts": len(job.story.local_prompts),
        "use_global_prompt": job.use_global,
        "global_prompt_removed_from": job.stripped,
        **({"local_prompts_used": job.story.local_prompts} if job.stripped else {}),
        **({"shots": job.shots.shot_map(), "takes": job.shots.take_map()} if job.shots is not None else {}),
        **video_facts(video, timings),
        "transformer_calls": int(timings.get("calls", 0)),
        "peak_gpu_memory_bytes": peak,
        "noise": {"name": job.choices.get("noise", "gaussian"), **job.noise.describe()},
        "checkpoint_every": int(cfg.checkpoint_every),
        "distributed": processes,
        "versions": package_versions(),
        "outputs": {
            "video": Path(video["path"]).name,
            "story": "story.json",
            "config": ".hydra/config.yaml",
            "latents": latent_path.name if latent_path.exists() else None,
            "preview": "preview.jpg" if (out / "preview.jpg").exists() else None,
        },
        **(extra or {}),
    }
    write_json(out / "manifest.json", manifest)
    (out / CHECKPOINT).unlink(missing_ok=True)
    log.info("wrote %s (%d frames at %d fps) in %.1f s", video["path"], video["frames"], video["fps"],
             sum(v for k, v in timings.items() if k.endswith("_s")))
    return manifest


@contextlib.contextmanager
def recording(job: Job, latents: torch.Tensor, video: dict):
    """Stage 5's writes (latents, story, manifest): a failed one (e.g. a full disk) is one line naming the written
    video and where the sampled latents are kept, and the command that finishes the run."""
    try:
        yield
    except OSError as exc:
        raise RunFailure(f"writing the run's record failed ({exc.strerror or exc}): free some space; the video is written to "
                         f"{video['path']}; {keep_latents(latents, job.out_dir)}; finish with: {resume_command(job)}"
                         ) from None


def validate_sweep(args: list[str]) -> str | None:
    """Before a multirun starts: compose every job of the sweep and run its plan stage (no weights, no LLM), so
    one invalid value stops the sweep before any job runs instead of killing valid jobs mid-way. Returns an
    error line naming the first bad job, else None."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        return str(exc).strip().splitlines()[0]
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    quiet = logging.getLogger("longgen")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the jobs log their plans when they run
    try:
        with initialize_config_module("longgen.conf", version_base="1.3"):
            for number_, job in enumerate(jobs):
                try:
                    cfg = compose("generate", overrides=job, return_hydra_config=True)
                    choices = dict(cfg.hydra.runtime.choices)
                    plan_job(cfg, Path("."), choices, split=False)
                except UsageError as exc:
                    return f"sweep job {number_} ({' '.join(job)}): {exc}; no job was started"
                except Exception as exc:  # e.g. Hydra's own composition errors
                    return f"sweep job {number_} ({' '.join(job)}): {str(exc).strip().splitlines()[0]}; no job was started"
    finally:
        quiet.setLevel(level)
    return None


# ---------------------------------------------------------------------------------------------------- the commands
def execute(job: Job, resume: Checkpoint | None = None, extra: dict | None = None) -> dict:
    """Stages 2–5 on a claimed run directory."""
    writes = job.world.writes
    try:
        # only rank 0 draws progress and handles Ctrl-C/SIGTERM (the others follow its decision)
        with (Interrupts() if writes else contextlib.nullcontext(Interrupts())) as interrupts, \
                StepProgress(None if writes else False) as progress:
            progress.label("encode", "load + encode text")
            progress("encode", 0, 1)
            prompts = encode(job)
            progress("encode", 1, 1)
            latents = sample(job, prompts, interrupts, progress, resume)
            video = decode(job, latents, progress, resume_command(job))
        with recording(job, latents, video):
            return record(job, latents, video, extra)
    finally:
        job.backbone.release()
        gc.collect()


def write_run_config(out_dir: Path, cfg: DictConfig, hc: Any | None) -> None:
    """.hydra/config.yaml (+ hydra.yaml, overrides.yaml), as Hydra writes them, once the directory is ours."""
    target = out_dir / ".hydra"
    target.mkdir(exist_ok=True)
    write_text(target / "config.yaml", OmegaConf.to_yaml(cfg))
    if hc is not None:
        write_text(target / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})))
        overrides = OmegaConf.to_container(hc.overrides.task, resolve=False)  # a prompt's `\${` keeps its escape
        write_text(target / "overrides.yaml", OmegaConf.to_yaml(overrides))


def discard_if_unused(out_dir: Path) -> None:
    """After an input error caught before any work: remove the run directory Hydra made for this command, if it
    holds nothing but this run's log (and its parent date folder, if this command made it and it is empty then).
    A directory that existed before the command (a user's folder given as hydra.run.dir=, `.`) is never removed."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out_dir:
            handler.close()
    if not made_by_this_command(out_dir):
        return
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return
    if all(e.is_file() and e.suffix == ".log" for e in entries):
        shutil.rmtree(out_dir, ignore_errors=True)
        parent = out_dir.parent
        while made_by_this_command(parent):  # every level Hydra made (outputs/DATE, new/folders/…), if empty
            try:
                parent.rmdir()  # only succeeds when empty
            except OSError:
                break
            parent = parent.parent


def run_generate(cfg: DictConfig, out_dir: Path, choices: dict[str, Any], hc: Any | None = None) -> dict:
    """Generate one video into `out_dir`; return the manifest."""
    world = current()
    try:
        job = plan_job(cfg, out_dir, choices)
        world.adopt(job)
    except UsageError:
        discard_if_unused(out_dir)
        raise
    rundir = RunDirectory(out_dir).claim()
    try:
        rundir.check_fresh(job.writer.filename, bool(cfg.get("overwrite", False)))
        write_run_config(out_dir, cfg, hc)
        write_text(out_dir / "story.json", job.given_story.to_json())  # before any heavy work: a split is never lost
        log.info(
            "%s on %s: %d latent frames (%d video frames), %d windows of %d, stride %d, %d %s",
            choices.get("sampler"), job.backbone.label, job.length, job.frames, job.plan.count, job.plan.window,
            job.sampler.stride, len(job.story.local_prompts),
            f"shot(s) in {len(job.shots.takes)} take(s)" if job.shots is not None else "local prompt(s)",
        )
        with world.job(job_message(job)):
            return execute(job)
    finally:
        rundir.release()


def job_message(job: Job, resume: Checkpoint | None = None) -> dict:
    """What the other ranks need to run this job (distributed.run_follower_job): everything resolved here."""
    return {
        "cfg": OmegaConf.to_container(job.cfg, resolve=True),
        "choices": dict(job.choices),
        "out_dir": str(job.out_dir),
        "story": job.given_story.to_dict(),
        "resume": resume,
    }


@hydra.main(version_base="1.3", config_path="pkg://longgen.conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    # in a sweep (-m), a failed job is recorded and the next one runs (longgen/sweep.py)
    job = recorded_job(hc) if hc.mode == RunMode.MULTIRUN else contextlib.nullcontext()
    with user_errors(), job:
        run_generate(cfg, Path(hc.runtime.output_dir), dict(hc.runtime.choices), hc)
        if cfg.get("eval"):  # `eval=true`: all logic lives in longgen/eval/
            from longgen.eval.evaluate import evaluate_run_dir

            evaluate_run_dir(hc.runtime.output_dir)

"""Stages 2–5 of a run and their composition (`execute`).

The flow is five named stages (stage 1 in longgen/run/job.py), shared by the commands `generate`, `resume`,
`extend` and `decode` (longgen/commands/):

1. `plan_job`   — build sampler, backbone and writer from their config groups, check every option and number,
                  resolve the length, window plan and story (a multi-shot story: its takes and shots, the sampler
                  run on every take, longgen/run/shots.py), probe the writer, check that the weights exist (one
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

On several processes (`gpus=N`, torchrun; longgen/parallel/) this process is rank 0: it alone claims and
writes the run directory, and hands each job to the other ranks, which run stages 1–5 with `job.world.writes`
false (no hooks, the decode only computes their share of the tiles, nothing recorded).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from longgen import __version__
from longgen.errors import Interrupted, RunFailure, out_of_memory, out_of_memory_as
from longgen.parallel.units import PeerFailed
from longgen.backbones.face import SAMPLING_DEFAULTS
from longgen.progress import LINE_SECONDS, StepProgress
from longgen.run.checkpoint import Checkpoint, Interrupts, StepHooks, checkpoint_step, result_config
from longgen.run.job import Job, check_prompt_lengths
from longgen.run.preview import Preview
from longgen.rundir import CHECKPOINT, LATENTS, write_json, write_text
from longgen.samplers.base import SamplingRun
from longgen.story import without_cut_markers

log = logging.getLogger("longgen")


# ---------------------------------------------------------------------------------------------------- stage 2: encode
@dataclass
class Prompts:
    ids: list[int]  # encoded id of each local prompt
    roles: dict[str, int]  # e.g. {"global": id} for samplers that use the global prompt
    keyed: dict[int, int] = field(default_factory=dict)  # window start → condition id with its key image

    def window_id(self, job: Job, start: int, size: int) -> int:
        """The condition id of a window: its key image's (longgen/run/images.py), else its local prompt's."""
        if size == job.plan.window and start in self.keyed:
            return self.keyed[start]
        return self.ids[job.local_index(start, size)]


def encode(job: Job) -> Prompts:
    backbone = job.backbone
    t0 = time.perf_counter()
    # a resumed run's checkpoint is still there: the line names it (not "nothing was sampled", seen on a GPU)
    with out_of_memory_as(lambda: f"out of GPU memory while loading {backbone.label}: free GPU memory held by other "
                                  f"processes, or add backbone.cpu_offload=true; {kept_on_disk(job)}"):
        backbone.load()
    job.timings["load_s"] = time.perf_counter() - t0
    # exact now that the tokenizer is here: a refusal comes before any step (run_generate then removes the start);
    # a warning would repeat the plan's (a random-weight model's stand-in count is the same at both)
    check_prompt_lengths(job.story, backbone, job.cfg.negative_prompt or "", job.sampler, warn=False)
    t0 = time.perf_counter()
    # local prompts first (ids 0..P-1 by first appearance), then the global prompt for samplers that use it
    # (GLC's global path); each unique prompt is encoded once
    glob = job.story.global_prompt.strip()
    texts = [without_cut_markers(p) for p in job.story.local_prompts + ([glob] if glob else [])]
    all_ids = backbone.encode_prompts(texts, job.cfg.negative_prompt or "")
    job.timings["encode_text_s"] = time.perf_counter() - t0
    ids = all_ids[: len(job.story.local_prompts)]
    keyed = {}
    # key images: encoded once, each paired with its window's prompt; an image-to-video model given none (extend
    # without event images) still sets up its no-image conditioning (Wan 2.2 TI2V's text mode needs none)
    if job.images is not None or (backbone.image_conditioning and not backbone.image_optional):
        t0 = time.perf_counter()
        images = job.images.images if job.images is not None else []
        backbone.encode_images([image.frame for image in images], int(job.cfg.seed))
        keyed = {image.start: backbone.condition_id(ids[job.local_index(image.start, job.plan.window)], k)
                 for k, image in enumerate(images)}
        job.timings["encode_images_s"] = time.perf_counter() - t0
    # a LoRA scale per event: each window's id also names its event (the backbone's event_id; else unchanged)
    keyed = {start: backbone.event_id(cid, job.local_index(start, job.plan.window)) for start, cid in keyed.items()}
    ids = [backbone.event_id(cid, event) for event, cid in enumerate(ids)]
    return Prompts(ids, {"global": all_ids[-1]} if glob else {}, keyed)


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
    if hooks.saved_at is None:  # none written by this process: a resumed run's own checkpoint may still be there
        return kept_on_disk(job)
    return f"the checkpoint after step {hooks.saved_at} is kept in {hooks.path}; continue with: {resume_command(job)}"


def kept_on_disk(job: Job) -> str:
    """The run directory's checkpoint and how to continue it; without one, that `longgen resume` starts the run at
    its first step (its config and story are saved)."""
    path = job.out_dir / CHECKPOINT
    step = checkpoint_step(path) if path.is_file() else None
    if step is None:
        return f"no step was checkpointed yet; start it again at its first step with: {resume_command(job)}"
    return f"the checkpoint after step {step} is kept in {path}; continue with: {resume_command(job)}"


@contextlib.contextmanager
def stopped_before_sampling(job: Job):
    """Ctrl-C while the model loads and encodes (minutes for a large model): one line naming how to continue."""
    try:
        yield
    except KeyboardInterrupt as exc:
        name = exc.args[0] if exc.args else "SIGINT"
        raise Interrupted(f"stopped by {name} before sampling; {kept_on_disk(job)}") from None


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
        }, inputs=job.inputs(), identity=job.latent_identity())

    def weigh(phase: str, work: list[float] | None) -> None:
        """The sampler's planned forwards per step: to the progress ETA, and their sum (the denoise plan, whole
        run) to the manifest beside the counted forwards."""
        if phase == "denoise" and work is not None:
            job.timings["forwards_planned"] = float(sum(work))
        progress.weigh(phase, work)

    preview = Preview(backbone, job.plan, job.out_dir, int(cfg.preview_every), float(cfg.preview_scale))
    hooks = StepHooks(job.out_dir / CHECKPOINT, snapshot, interrupts, int(cfg.checkpoint_every),
                      cfg.get("checkpoint_seconds"), job.world.solo(preview) if preview.every > 0 else None,
                      resume_command(job))
    run = SamplingRun(
        denoiser=backbone,
        noise=noise.to(backbone.device),
        prompt_for_window=lambda start, size: prompts.window_id(job, start, size),
        generator=gen,
        progress=progress,
        weigh=weigh,
        prompt_ids=prompts.roles,
        after_step=hooks if job.world.writes else (lambda state, total: None),  # only rank 0 writes
    )
    state = None
    if resume is not None:
        gen.set_state(resume.generator_state)
        state = resume.state
        log.info("resuming after step %d of %d", state.done, resume.total)
    progress.label("denoise", f"denoise · {job.plan.count} windows")
    if job.world.writes:  # progress inside a step; rank 0 issues about 1/size of the calls when they are spread
        backbone.on_forward = lambda samples: progress.within("denoise", samples * job.world.size)
    try:
        latents = denoise(job, run, state, hooks, interrupts)  # [1, L, C, H, W]
    finally:
        backbone.on_forward = None
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


def denoise(job: Job, run: SamplingRun, state, hooks: StepHooks, interrupts: Interrupts) -> torch.Tensor:
    """The sampler's run [1, L, C, H, W], with SIGINT/SIGTERM marked as arriving mid-sampling; out of GPU memory and a
    failed peer process each end in one line naming the checkpoint that is kept."""
    interrupts.sampling = True
    no_room = (lambda: f"out of GPU memory while sampling (the model's activations for backbone.micro_batch="
               f"{job.cfg.backbone.get('micro_batch')} samples per call did not fit next to what else holds the GPU); "
               f"{kept_checkpoint(job, hooks)}; free GPU memory (backbone.cpu_offload=true also helps) and resume, or "
               f"start anew with a smaller backbone.micro_batch")
    try:
        with out_of_memory_as(no_room):
            return job.sampler.sample(run, state)  # [1, L, C, H, W]
    except PeerFailed as exc:
        if interrupts.requested:  # a scheduler stops every rank (srun torchrun): the others went first
            raise Interrupted(f"stopped by {interrupts.requested}, which ended the other processes before this step "
                              f"did ({exc}); {kept_checkpoint(job, hooks)}") from None
        raise PeerFailed(f"{exc}; {kept_checkpoint(job, hooks)}") from None
    except KeyboardInterrupt as exc:  # a second Ctrl-C: out at once, mid-step; the last checkpoint stays
        name = exc.args[0] if exc.args else "SIGINT"
        raise Interrupted(f"stopped by {name} again, in the middle of a step; {kept_checkpoint(job, hooks)}"
                          ) from None
    finally:
        interrupts.sampling = False


# ---------------------------------------------------------------------------------------------------- stage 4: decode
def save_latents(latents: torch.Tensor, path: Path, identity: dict[str, str]) -> None:
    """Final latents [F, C, H, W] under key `latents`, written atomically and verified (checkpoint.write_verified:
    their sha256 in the metadata; OSError when the write fails), with the backbone and latent space that made them
    in the metadata (`identity`: Job.latent_identity)."""
    from longgen.run.checkpoint import write_verified

    tensors = {"latents": latents[0].detach().to("cpu", torch.float32).contiguous()}
    write_verified(path, tensors, {"format": "longgen-latents-1", **identity})


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
        kept = keep_latents(job, latents)
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


def keep_latents(job: Job, latents: torch.Tensor) -> str:
    """Make sure the sampled latents are on disk after a failed decode; say where."""
    out = job.out_dir
    if (out / CHECKPOINT).is_file():
        return f"the sampled latents are kept in {out / CHECKPOINT}"
    try:
        save_latents(latents, out / LATENTS, job.latent_identity())
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


def model_defaults(job) -> dict:
    """The sampling defaults the backbone's config names for the other groups (`SAMPLING_DEFAULTS`: stride,
    guidance_scale, negative_prompt, syncos_t_min where given), resolved; the run's own values are the sampler's."""
    node = job.cfg.backbone
    return {key: node[key] for key in SAMPLING_DEFAULTS if key in node}


def manifest_head(job) -> dict:
    """What every manifest opens with (generate and extend): version, command, seed, sampler, backbone, noise."""
    return {
        "longgen": __version__,
        "command": " ".join(sys.argv),
        "seed": int(job.cfg.seed),
        "sampler": {"name": job.choices.get("sampler"), **job.sampler.describe()},
        "backbone": {"name": job.choices.get("backbone"), **job.backbone.describe(),
                     "model_defaults": model_defaults(job)},
        "noise": {"name": job.choices.get("noise", "gaussian"), **job.noise.describe()},
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
        # the sampler's plan (Sampler.forwards_per_step) in forward-equivalents: a backward pass counts 2, a random
        # window grid its mean count; absent when the sampler plans none
        **({"transformer_forwards_planned": round(timings["forwards_planned"], 3)}
           if "forwards_planned" in timings else {}),
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
        save_latents(latents, latent_path, job.latent_identity())
    write_text(out / "story.json", job.given_story.to_json())
    peak = torch.cuda.max_memory_allocated(backbone.device) if backbone.device.type == "cuda" else None
    manifest = {
        **manifest_head(job),
        "latent_length": job.length,
        "window": job.plan.window,
        "stride": job.sampler.stride,
        "windows": job.window_map(),
        **({"events": job.event_table()} if job.events is not None else {}),
        "local_prompts": len(job.story.local_prompts),
        "use_global_prompt": job.use_global,
        "global_prompt_removed_from": job.stripped,
        **({"local_prompts_used": job.story.local_prompts} if job.stripped else {}),
        **({"shots": job.shots.shot_map(), "takes": job.shots.take_map()} if job.shots is not None else {}),
        **({"images": job.images.describe()} if job.images is not None else {}),
        **video_facts(video, timings),
        "transformer_calls": int(timings.get("calls", 0)),
        "peak_gpu_memory_bytes": peak,
        "peak_host_memory_bytes": peak_host_memory(),
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
                         f"{video['path']}; {keep_latents(job, latents)}; finish with: {resume_command(job)}"
                         ) from None


# ---------------------------------------------------------------------------------------------------- the commands
def progress_shown(cfg, writes: bool = True) -> StepProgress:
    """The run's progress display: a bar on a terminal, else log lines every `progress_every` steps /
    `progress_seconds` seconds (a run saved before these options existed gets their defaults); nothing on ranks
    that do not write."""
    return StepProgress(None if writes else False, every=int(cfg.get("progress_every") or 0),
                        seconds=cfg.get("progress_seconds", LINE_SECONDS))


def execute(job: Job, resume: Checkpoint | None = None, extra: dict | None = None) -> dict:
    """Stages 2–5 on a claimed run directory."""
    writes = job.world.writes
    try:
        # only rank 0 draws progress and handles Ctrl-C/SIGTERM (the others follow its decision)
        with (Interrupts() if writes else contextlib.nullcontext(Interrupts())) as interrupts, \
                progress_shown(job.cfg, writes) as progress:
            progress.label("encode", "load + encode text")
            progress("encode", 0, 1)
            with stopped_before_sampling(job):
                prompts = encode(job)
            progress("encode", 1, 1)
            latents = sample(job, prompts, interrupts, progress, resume)
            video = decode(job, latents, progress, resume_command(job))
        with recording(job, latents, video):
            return record(job, latents, video, extra)
    finally:
        release(job)


def release(job) -> None:
    """Free the model's memory at the end of a run. A further Ctrl-C meanwhile (the impatient second press after
    the run stopped at a step) must not replace the line already on its way out, which names the checkpoint."""
    try:
        job.backbone.release()
        gc.collect()
    except KeyboardInterrupt:
        log.warning("Ctrl-C again while the model's memory was released: ignored, the run has stopped already")


def peak_host_memory() -> int | None:
    """This process's peak resident memory so far (sampling, decode and the mp4 included), in bytes; None where the
    platform does not report it."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return int(kib) * (1 if sys.platform == "darwin" else 1024)  # macOS reports bytes

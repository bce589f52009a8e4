"""`longgen resume RUN_DIR [KEY=VALUE ...]`: continue an interrupted run from its checkpoint (a `longgen generate`
run, or a `longgen extend` run, which re-reads its input video and continues through longgen/run/extend.py).

The run is rebuilt from the directory's own `.hydra/config.yaml` and `story.json` through the same stages as
`generate` (plan → encode → sample → decode → record); the sampler continues after the checkpoint's step with the
saved tensors and generator state, so the video is bit-identical to an uninterrupted run on the same machine and
software. Only options that cannot change the sampled latents may be overridden (checkpoint.HARMLESS: writer
options, the device, offload, tiling, where the weights are, where an extend run's input video lies); anything else
is refused with one line, and a checkpoint whose recorded config or story differs from the directory's is refused
too, as is an extend run whose input video no longer has the sha256 its checkpoint recorded.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from omegaconf import OmegaConf

from longgen.backbones.lora import check_unchanged
from longgen.errors import UsageError, user_errors
from longgen.overrides import path_first
from longgen.parallel.units import current
from longgen.run.checkpoint import HARMLESS, load_checkpoint, result_config
from longgen.run.job import job_message, plan_job
from longgen.run.latent_space import check_latent_space
from longgen.run.stages import execute
from longgen.rundir import (
    CHECKPOINT,
    LATENTS,
    RunDirectory,
    apply_overrides,
    holds_finished_run,
    load_run_config,
    own_run_log,
    setup_logging,
    write_text,
)
from longgen.story import Story

log = logging.getLogger("longgen")

USAGE = """usage: longgen resume RUN_DIR [KEY=VALUE ...]

Continue an interrupted `longgen generate` run from RUN_DIR/checkpoint.safetensors (written every
checkpoint_every steps and on Ctrl-C/SIGTERM). The result is bit-identical to an uninterrupted run, also on
another number of GPUs (gpus=N; default: the run's own setting).
Options that do not change the result may be given: {allowed}.
Also finishes a run whose sampling completed but whose video was not written (e.g. a decode that ran out of memory),
and starts a run stopped before its first checkpoint (Ctrl-C while the model loaded) at its first step.
"""


def run_resume(run_dir: Path, overrides: list[str]) -> dict:
    cfg, choices = load_run_config(run_dir)
    extend = cfg.get("video") is not None  # a `longgen extend` run (longgen/run/extend.py)
    applied = apply_overrides(cfg, overrides, HARMLESS, "resume")
    if not extend and cfg.get("video") is not None:  # it would be resumed as an extend run (a traceback)
        raise UsageError(f"video= gives a `longgen extend` run its moved input video; {run_dir} is a "
                         f"`longgen generate` run, which reads no video: drop video=")
    check_resumable(run_dir)  # before the lock: a refused resume leaves the directory as it was
    rundir = RunDirectory(run_dir).claim()
    try:
        check_resumable(run_dir)  # again under the lock: the run may have finished meanwhile
        path = run_dir / CHECKPOINT
        ckpt = load_checkpoint(path) if path.is_file() else None  # None: stopped before its first checkpoint
        if extend:
            from longgen.run.extend import check_input_video, execute_extend, plan_extend

            if ckpt is not None and "video" in ckpt.inputs:  # older checkpoints recorded no hash
                check_input_video(cfg.video, ckpt.inputs["video"])
            cfg.video = str(Path(str(cfg.video)).expanduser().resolve())  # saved absolute when given again
            job = plan_extend(cfg, run_dir, choices, story=Story.load(run_dir / "story.json"))
        else:
            job = plan_job(cfg, run_dir, choices, story=Story.load(run_dir / "story.json"))
        world = current()
        world.adopt(job)
        if ckpt is not None:
            check_checkpoint(ckpt, job, cfg, choices, run_dir, extend)
        own_run_log(run_dir)
        if applied:
            write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        with_ = f" with {' '.join(applied)}" if applied else ""
        if ckpt is None:  # Ctrl-C while the model loaded, or during the first step: nothing was sampled yet
            log.info("resuming %s: it stopped before its first checkpoint, so it starts at the first step%s",
                     run_dir, with_)
        else:
            log.info("resuming %s after step %d of %d%s", run_dir, ckpt.state.done, ckpt.total, with_)
        extra = {"resumed": {"after_step": ckpt.state.done if ckpt is not None else 0, "overrides": applied}}
        if extend:
            return execute_extend(job, resume=ckpt, extra=extra)
        with world.job(job_message(job, resume=ckpt)):  # the other ranks (gpus=N, torchrun) resume it too
            return execute(job, resume=ckpt, extra=extra)
    finally:
        rundir.release()


def check_checkpoint(ckpt, job, cfg, choices, run_dir: Path, extend: bool) -> None:
    """The checkpoint belongs to this run as its directory now describes it: the backbone's latent space, config,
    story, the windows' events (extend), key images and LoRA files unchanged; one line otherwise."""
    path = run_dir / CHECKPOINT
    check_latent_space(ckpt.identity, cfg.backbone, choices.get("backbone"), path,
                       "it is not this run's checkpoint: put the run's own checkpoint back, or start a new run")
    ckpt.check_matches(result_config(cfg), job.story_hash(), path)
    if extend:  # the windows' events the checkpointed steps had
        from longgen.run.extend import check_event_plan

        check_event_plan(ckpt.inputs, job, path)
    if ckpt.inputs.get("images", []) != job.inputs().get("images", []):
        raise UsageError(f"a key image of {run_dir} changed since its checkpoint (sha256 differs): put the "
                         f"original image back, or start a new run")
    check_unchanged(ckpt.inputs.get("loras", []), getattr(job.backbone, "loras", ()))  # older: none recorded


def check_resumable(run_dir: Path) -> None:
    """One line for a directory with nothing to resume: a finished run, one without its story.json, or one whose
    sampled latents wait for `longgen decode`. A run without a checkpoint and without results (stopped while the
    model loaded or during its first step) is resumable: it starts at the first step."""
    if holds_finished_run(run_dir):
        raise UsageError(f"{run_dir} holds a finished run (manifest.json, no checkpoint): nothing to resume")
    if not (run_dir / "story.json").is_file():
        raise UsageError(f"{run_dir} has no story.json: the run directory is incomplete, start a new run")
    if not (run_dir / CHECKPOINT).is_file() and (run_dir / LATENTS).is_file():
        raise UsageError(f"{run_dir} holds its sampled latents ({LATENTS}) but no checkpoint: write the video with "
                         f"`longgen decode {shlex.quote(str(run_dir))}`")


def log_name(run_dir: Path) -> str:
    """The log a resume appends to: the run's own, extend.log for a `longgen extend` run (not a second log)."""
    return "extend" if (Path(run_dir) / "extend.log").is_file() else "generate"


def main(argv: list[str] | None = None) -> None:
    run_dir, overrides = path_first(argv, USAGE.format(allowed=", ".join(HARMLESS)))
    with user_errors():
        if run_dir.is_dir():
            setup_logging(run_dir, log_name(run_dir))
        run_resume(run_dir, overrides)
        evaluate_if_asked(run_dir)


def evaluate_if_asked(run_dir: Path) -> None:
    """A `generate eval=true` run's eval.json, written after its video as generate writes it (a sweep job that a
    scheduler requeued ends as `longgen resume`: without it the sweep's report left that job out)."""
    cfg, _ = load_run_config(run_dir)
    if cfg.get("eval") and cfg.get("video") is None and current().writes:
        from longgen.eval.evaluate import evaluate_run_dir

        evaluate_run_dir(run_dir)

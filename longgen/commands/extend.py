"""`longgen extend VIDEO.mp4 …`: continue a video from its last frames (the stages: longgen/run/extend.py).

A thin command: plan the extend job, claim the run directory (refusing another run's results unless
overwrite=true), record the input video's absolute path so `longgen resume` works from any directory, write the
config and story, and run the stages. It runs in one process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longgen.backbones.lora import pin_local_paths, summary
from longgen.errors import UsageError, user_errors
from longgen.parallel.units import current
from longgen.run.extend import CONTINUATION, EXTENDED, execute_extend, plan_extend
from longgen.run.job import discard_if_unused, discard_unfinished_start, write_run_config
from longgen.rundir import RunDirectory, own_run_log, write_text

log = logging.getLogger("longgen")


def check_fresh(rundir: RunDirectory, overwrite: bool) -> None:
    """As generate: a directory holding another run's results (or an unfinished run) is refused."""
    rundir.check_fresh(EXTENDED, overwrite)
    if (rundir.path / CONTINUATION).exists():
        if not overwrite:
            raise UsageError(f"{rundir.path} already holds a finished run ({CONTINUATION}): pick another directory "
                             f"or pass overwrite=true to replace it")
        (rundir.path / CONTINUATION).unlink()


def run_extend(cfg: DictConfig, out_dir: Path, choices: dict[str, Any], hc: Any | None = None) -> dict:
    try:
        if not cfg.get("overwrite", False) and Path(out_dir).is_dir():  # before the model loads (minutes at 14B)
            check_fresh(RunDirectory(out_dir), overwrite=False)
        job = plan_extend(cfg, out_dir, choices)
    except (UsageError, KeyboardInterrupt):  # also Ctrl-C while the model loads: no run began
        discard_if_unused(out_dir)
        raise
    if current().size > 1:
        raise UsageError("longgen extend runs in one process: start it without torchrun / gpus=N")
    rundir = RunDirectory(out_dir).claim()
    try:
        check_fresh(rundir, bool(cfg.get("overwrite", False)))
        own_run_log(out_dir)
        cfg.video = str(job.source.path)  # absolute: `longgen resume` works from any working directory
        pin_local_paths(cfg.backbone.get("lora"), getattr(job.backbone, "loras", ()))  # resume from any directory
        write_run_config(out_dir, cfg, hc)
        write_text(out_dir / "story.json", job.given_story.to_json())
        src = job.source
        log.info("%s: %dx%d at %g fps, %d frames as extend takes it%s", src.path, src.width, src.height, src.fps,
                 src.frames, f" ({src.describe_fit()})" if src.describe_fit() else "")
        log.info("%s on %s: %d history + %d new latent frames (%d new video frames), %d windows, context %s%s; "
                 "seed %d; run directory %s",
                 choices.get("sampler"), job.backbone.label, job.history, job.new_frames,
                 job.backbone.temporal_compression * job.new_frames, job.plan.count, job.context,
                 f" at t_c={int(cfg.t_c)}" if job.context == "per-frame" else "", int(cfg.seed), out_dir)
        if job.images is not None:  # right under the start line, as generate says it (run/images.py)
            log.info(job.images.summary(str(cfg.get("image_fit", "crop"))))
        if loras := getattr(job.backbone, "loras", None):
            log.info(summary(loras))
        return execute_extend(job)
    except UsageError:  # found after the start (the loaded model refuses a LoRA): nothing of this run stays
        discard_unfinished_start(out_dir, EXTENDED)
        raise
    finally:
        rundir.release()


@hydra.main(version_base="1.3", config_path="pkg://longgen.conf", config_name="extend")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    with user_errors():
        run_extend(cfg, Path(hc.runtime.output_dir), dict(hc.runtime.choices), hc)

"""`longgen generate`: story → backbone → sampler → streaming mp4, in Hydra's run directory.

A thin command over the stage library (longgen/run/): plan the job (run/job.py), claim the run directory, write the
run's config and story, then run stages 2–5 (run/stages.py). Under `-m` every job's plan is checked before the
first job starts (`validate_sweep`), and a failed job is recorded while the sweep goes on (run/sweep.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from longgen.backbones.diffusers_base import resolve_device
from longgen.backbones.lora import pin_local_paths, summary
from longgen.errors import UsageError, user_errors
from longgen.parallel.pool import check_a_gpu_is_visible
from longgen.parallel.units import current
from longgen.run.job import discard_if_unused, discard_unfinished_start, job_message, plan_job, write_run_config
from longgen.run.preemption import check_job_resources
from longgen.run.stages import execute
from longgen.run.sweep import check_job_dirs, composed_subdir, recorded_job, refuse_second_sweep
from longgen.rundir import RunDirectory, own_run_log, write_text
from longgen.writer import encoder_checks_shared, mp4_name

log = logging.getLogger("longgen")


def validate_sweep(args: list[str]) -> str | None:
    """Before a multirun starts: compose every job of the sweep and run its plan stage (no weights, no LLM), so
    one invalid value stops the sweep before any job runs instead of killing valid jobs mid-way. Returns an
    error line naming the first bad job, else None."""
    from hydra import compose

    from longgen.config_search import compose_setup, overrides_only, shared_config_loads

    try:
        refuse_second_sweep(overrides_only(args))
    except UsageError as exc:
        return f"{exc}; no job was started"
    overrides = [a for a in overrides_only(args) if "=" in a and not a.lstrip("+~").startswith("hydra")]
    # the launcher's choice and keys: a scheduler's job is checked against the GPUs it is given; the job directories
    launcher = [a for a in overrides_only(args)
                if a.lstrip("+~").startswith(("hydra/launcher=", "hydra.launcher.", "hydra.sweep."))]
    try:
        jobs = listed_jobs(args, overrides)
    except UsageError as exc:
        return str(exc)
    quiet = logging.getLogger("longgen")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the jobs log their plans when they run
    subdirs: list[str] = []
    try:
        context, primary, search_path = compose_setup(args, "generate")  # --config-dir, --config-path as the run
        with context, shared_config_loads(), encoder_checks_shared():  # files and encoders the jobs share: once
            for number_, job in enumerate(jobs):
                try:
                    cfg = compose(primary, overrides=job + launcher + search_path, return_hydra_config=True)
                    subdirs.append(composed_subdir(cfg, number_))
                    choices = dict(cfg.hydra.runtime.choices)
                    plan_job(cfg, Path("."), choices, split=False)
                    check_job_resources(cfg)  # a scheduler's job: its gpus=N against the GPUs it is given
                    device = str(cfg.backbone.get("device"))
                    if "Slurm" not in str(cfg.hydra.launcher.get("_target_")):  # jobs run here: each would fail alike
                        if device == "free":
                            check_a_gpu_is_visible()
                        elif device.startswith("cuda"):  # cuda, cuda:N: that GPU must be on this machine
                            resolve_device(device)
                except UsageError as exc:
                    return f"sweep job {number_} ({' '.join(job)}): {exc}; no job was started"
                except Exception as exc:  # e.g. Hydra's own composition errors
                    line = (missing_option(primary, job + launcher + search_path, exc)
                            or str(exc).strip().splitlines()[0])
                    return f"sweep job {number_} ({' '.join(job)}): {line}; no job was started"
            written = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] if jobs else ""
            check_job_dirs(subdirs, str(written))
    except UsageError as exc:
        return f"{exc}; no job was started"
    finally:
        quiet.setLevel(level)
    return None


def listed_jobs(args: list[str], overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper lists them from the sweep's `overrides` (of the command line
    `args`); UsageError where it cannot list them (Hydra raised a traceback) or lists none (it ran no job, exit 0)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:  # glob() lists a group's choices on the command line's search path, as Hydra's sweeper does
        parsed = OverridesParser.create(config_loader=GroupChoices(args)).parse_overrides(overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except UsageError:
        raise
    except Exception as exc:  # range(0,3,0), interval() (a sampling sweeper's), …
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"the sweep's values cannot be listed ({reason}): give a list (a,b,c), "
                         f"range(start,stop[,step]) or, for a config group, glob(pattern)") from None
    if not jobs:
        empty = next(o.input_line for o in parsed if o.is_sweep_override() and not list(o.sweep_string_iterator()))
        raise UsageError(f"{empty} gives no value, so the sweep would run no job: give at least one (e.g. "
                         f"seed=range(0,3))")
    return jobs


class GroupChoices:
    """What Hydra's glob() sweep asks of a config loader: a group's choices, here those on the command line's search
    path (--config-dir included)."""

    def __init__(self, args: list[str]) -> None:
        from longgen.config_search import ConfigSearch

        self.search = ConfigSearch.of(args, "generate")

    def get_group_options(self, group: str, results_filter: Any = None) -> list[str]:
        return self.search.options(group)


def missing_option(primary: str, overrides: list[str], exc: Exception) -> str | None:
    """For Hydra's "Could not override 'GROUP.KEY'" in a sweep job whose GROUP choice came from elsewhere (an
    experiment file: `+experiment=fifo-4x sampler.num_steps=4`), the line the single-run check writes: the chosen
    config has no such option, and its options. None for any other error."""
    from hydra import compose

    match = re.match(r"Could not override '([\w-]+)\.([\w-]+)'", str(exc).strip())
    if match is None:
        return None
    group, key = match.groups()
    try:
        cfg = compose(primary, overrides=[o for o in overrides if o.split("=")[0] != f"{group}.{key}"],
                      return_hydra_config=True)
    except Exception:
        return None
    choice, node = cfg.hydra.runtime.choices.get(group), cfg.get(group)
    if choice is None or not isinstance(node, DictConfig):
        return None
    options = ", ".join(sorted(k for k in node.keys() if k != "_target_"))
    return f"{group}={choice} has no option {key!r}; its options are: {options}"


def run_generate(cfg: DictConfig, out_dir: Path, choices: dict[str, Any], hc: Any | None = None) -> dict:
    """Generate one video into `out_dir`; return the manifest."""
    world = current()
    try:
        if not cfg.get("overwrite", False) and Path(out_dir).is_dir():  # before the model loads (minutes at 14B)
            name = mp4_name("writer.filename", cfg.writer.get("filename") or "video.mp4")  # `..` is no run's video
            RunDirectory(out_dir).check_fresh(name, overwrite=False)
        job = plan_job(cfg, out_dir, choices)
        world.adopt(job)
    except (UsageError, KeyboardInterrupt):  # also Ctrl-C while the model loads: no run began
        discard_if_unused(out_dir)
        raise
    rundir = RunDirectory(out_dir).claim()
    try:
        rundir.check_fresh(job.writer.filename, bool(cfg.get("overwrite", False)))
        own_run_log(out_dir)
        pin_local_paths(cfg.backbone.get("lora"), getattr(job.backbone, "loras", ()))  # resume from any directory
        write_run_config(out_dir, cfg, hc)
        write_text(out_dir / "story.json", job.given_story.to_json())  # before any heavy work: a split is never lost
        log.info(
            "%s on %s: %d latent frames (%d video frames), %d windows of %d, stride %d, %d %s; seed %d; run "
            "directory %s",
            choices.get("sampler"), job.backbone.label, job.length, job.frames, job.plan.count, job.plan.window,
            job.sampler.stride, len(job.story.local_prompts),
            f"shot(s) in {len(job.shots.takes)} take(s)" if job.shots is not None else "local prompt(s)",
            int(cfg.seed), out_dir,
        )
        if job.images is not None:  # right under the start line: what each key image became (run/images.py)
            log.info(job.images.summary(str(cfg.image_fit)))
        if loras := getattr(job.backbone, "loras", None):
            log.info(summary(loras))
        with world.job(job_message(job)):
            return execute(job)
    except UsageError:  # found after the start (the loaded model refuses a LoRA): nothing of this run stays
        discard_unfinished_start(out_dir, job.writer.filename)
        raise
    finally:
        rundir.release()


@hydra.main(version_base="1.3", config_path="pkg://longgen.conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    # in a sweep (-m), a failed job is recorded and the next one runs (longgen/run/sweep.py)
    job = recorded_job(hc) if hc.mode == RunMode.MULTIRUN else contextlib.nullcontext()
    with user_errors(), job:
        run_generate(cfg, Path(hc.runtime.output_dir), dict(hc.runtime.choices), hc)
        if cfg.get("eval"):  # `eval=true`: all logic lives in longgen/eval/
            from longgen.eval.evaluate import evaluate_run_dir

            evaluate_run_dir(hc.runtime.output_dir)

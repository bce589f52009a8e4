"""A rank > 0 of a `gpus=N` run: it receives each job rank 0 planned (resolved config, story, run directory,
checkpoint when resuming) and runs the same stages on its share of the work, writing nothing. The process group
(longgen/parallel/units.py) calls `run_published_job` for every message it receives.
"""

from __future__ import annotations

import logging
from pathlib import Path

from longgen.parallel.units import Group

log = logging.getLogger("longgen")


def run_published_job(message: dict, group: Group) -> None:
    """A rank > 0 runs one published job with the stages of `generate`, writing nothing."""
    from omegaconf import OmegaConf

    from longgen.run.job import plan_job
    from longgen.run.stages import execute
    from longgen.story import Story

    cfg = OmegaConf.create(message["cfg"])
    story = Story.from_dict(message["story"])
    job = plan_job(cfg, Path(message["out_dir"]), dict(message["choices"]), story=story)
    group.adopt(job)
    execute(job, resume=message.get("resume"))

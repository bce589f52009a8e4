"""The pre-sweep check (`validate_sweep`) reads each config file once and runs the encoder check once per distinct
ffmpeg command line for all jobs (longgen/config_search.py `shared_config_loads`, longgen/writer.py
`encoder_checks_shared`); every job must still be composed and checked as if alone."""

from __future__ import annotations

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from longgen.commands.generate import validate_sweep
from longgen.config_search import shared_config_loads

BASE = ["backbone=tiny", "prompt=a cat", "num_windows=2", "sampler.num_steps=2"]
JOBS = [["sampler=direct", "sampler.num_steps=3", "seed=1"], ["sampler=gen-l-video"], ["backbone=tiny-wan"],
        ["sampler=direct"], ["sampler=gen-l-video", "writer.crf=30"]]


def _composed(jobs: list[list[str]]) -> list[dict]:
    return [OmegaConf.to_container(compose("generate", overrides=BASE + job, return_hydra_config=True)) for job in jobs]


def test_jobs_composed_with_shared_loads_equal_jobs_composed_alone():
    with initialize_config_module("longgen.conf", version_base="1.3"):
        alone = _composed(JOBS)
        with shared_config_loads():
            shared = _composed(JOBS)
    assert shared == alone and shared[0]["sampler"]["num_steps"] == 3 and shared[3]["sampler"]["num_steps"] == 2


def test_a_config_path_is_read_again_on_another_search_path(tmp_path):
    for name, steps in (("a", 3), ("b", 5)):
        (tmp_path / name / "sampler").mkdir(parents=True)
        (tmp_path / name / "sampler" / "mine.yaml").write_text(f"defaults:\n  - direct\n  - _self_\nnum_steps: {steps}\n")
    with initialize_config_module("longgen.conf", version_base="1.3"), shared_config_loads():
        found = [compose("generate", overrides=[*BASE[:3], f"hydra.searchpath=['file://{tmp_path / d}']", "sampler=mine"],
                         return_hydra_config=True).sampler.num_steps for d in ("a", "b")]
    assert found == [3, 5]


def test_one_bad_job_among_good_ones_is_named_and_stops_the_sweep():
    problem = validate_sweep(["-m", *BASE, "sampler.guidance_scale=6,6,nan,6"])
    assert problem.startswith("sweep job 2 (") and "guidance_scale=nan" in problem and "no job was started" in problem


def test_each_encoder_setting_is_checked_though_earlier_jobs_passed():
    problem = validate_sweep(["-m", *BASE, "writer.preset=medium,fast,bogus", "seed=0,1"])
    assert problem.startswith("sweep job 4 (") and "writer.preset=bogus" in problem
    problem = validate_sweep(["-m", *BASE, "writer.codec=libx264,nope"])
    assert problem.startswith("sweep job 1 (") and "writer.codec=nope" in problem

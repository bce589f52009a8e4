"""Shared fixtures: the tiny random CogVideoX backbone built from conf/backbone/tiny.yaml (no downloads).

Every test process and every process a test starts computes with one intra-op thread: the suite runs several
processes at once (pytest-xdist workers, CLI subprocesses, torchrun ranks), and each one taking a thread per core
over-subscribes a small machine several times over (a 2-core machine took 30+ min instead of a few). The variables
are set here, before torch is imported, and inherited by every child started with os.environ.
"""

from __future__ import annotations

import os

from cli_helpers import ONE_THREAD

os.environ.update(ONE_THREAD)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from longgen.build import build  # noqa: E402

torch.set_num_threads(1)  # in case something imported torch before the variables were set
REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def make_tiny(prompts=("a cat",), negative="", **overrides):
    """A loaded tiny backbone with `prompts` encoded (ids 0..P-1 in order of first appearance)."""
    backbone = build(tiny_config(**overrides), "backbone", "tiny")
    backbone.load()
    backbone.encode_prompts(list(prompts), negative)
    return backbone


@pytest.fixture(scope="session")
def tiny():
    return make_tiny(prompts=("a cat", "a dog runs", "a bird flies"))


@pytest.fixture
def cpu_generator():
    return torch.Generator().manual_seed(0)


#: the test files that take longest on 2 cores (pytest --durations), longest first. pytest-xdist's `--dist loadfile`
#: hands files to the workers in collection order, so a long file collected last runs alone at the end while the
#: other worker idles; collecting these first (the longest-processing-time-first rule) shortens the suite's tail.
LONGEST_FILES = ("test_distributed.py", "test_checkpoint.py", "test_integrity.py", "test_no_data_loss.py",
                 "test_cli.py", "test_compare.py", "test_sweep_rerun_text.py", "test_wan_cli.py",
                 "test_local_model.py", "test_config_search.py",
                 "test_wheel.py", "test_split_prompt_cli.py", "test_eval_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture
def own_logging():
    """Hydra's job logging, configured by a run of `main` in this process, taken off again (as the Python API
    does after a call): its log-file handler would follow later tests into a removed run directory."""
    from longgen.api import caller_logging

    with caller_logging():
        yield

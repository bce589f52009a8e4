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

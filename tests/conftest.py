"""Shared fixtures: the tiny random CogVideoX backbone built from conf/backbone/tiny.yaml (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from longgen.build import build

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

"""An installed, non-editable wheel finds its configs from outside the repository (package data)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next((root / "dist").glob("longgen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "longgen/conf/generate.yaml" in names and "longgen/conf/backbone/tiny.yaml" in names
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    return target


def _run(target, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "longgen.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_installed_wheel_resolves_config_outside_checkout(installed, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import longgen.conf, longgen; print(longgen.__file__)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(installed)), "the test must import the installed wheel"
    proc = _run(installed, tmp_path, "generate", "--cfg", "job", "backbone=tiny")
    assert proc.returncode == 0, proc.stderr
    assert "tiny-random-cogvideox" in proc.stdout and "_target_: longgen.samplers" in proc.stdout


def test_installed_wheel_generates(installed, tmp_path):
    proc = _run(installed, tmp_path, "generate", "backbone=tiny", "sampler.num_steps=1", "num_windows=1",
                "prompt=a cat", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "video.mp4").exists()


def test_installed_wheel_ships_the_experiments(installed, tmp_path):
    """conf/experiment/ is package data too: `+experiment=NAME` composes from outside the checkout."""
    proc = _run(installed, tmp_path, "generate", "+experiment=syncos-4x", "backbone=tiny", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "SynCoSSampler" in proc.stdout and "batch_windows: 3" in proc.stdout and "length_factor: 4" in proc.stdout

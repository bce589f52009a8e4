"""The package's layers (README "Architecture"; contracts in pyproject.toml's [tool.importlinter]) hold: the CLI
dispatches to commands, commands never import each other and compose the stage library (longgen/run/), which uses
the parts (backbones, samplers, eval, splitters), which use the seam, which uses the parallel layer; foundation
modules import no layer; no import cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("planted", [
    ("longgen/samplers/direct.py", "from longgen.backbones import cogvideox  # noqa: F401\n"),  # sampler → backbone
    ("longgen/parallel/units.py", "from longgen.run import job  # noqa: F401\n"),  # parallel → run (the old circle)
    ("longgen/commands/resume.py", "from longgen.commands import generate  # noqa: F401\n"),  # command → command
])
def test_a_planted_upward_import_breaks_a_contract(planted, tmp_path):
    # a copy of the package with one more import: the contracts must reject it
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "longgen", copy / "longgen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    path, line = planted
    target = copy / path
    text = target.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    target.write_text(head + sep + line + rest)
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe], cwd=copy, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "BROKEN" in proc.stdout

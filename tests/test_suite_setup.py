"""What a fresh install and a small machine need from the suite itself.

Every third-party module that longgen/ or tests/ imports is declared in pyproject.toml: a fresh install (a new
virtual environment, the README's set-up) has only what pyproject declares, and a module that happens to be on the
developer's machine (scipy once was) passes locally and fails for every new user. The scan reads every import
statement, lazy ones inside functions included, and maps each top-level module to the distributions that provide it.

Every test process and every process a test starts computes with one intra-op thread (tests/conftest.py says why).
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli_helpers

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("longgen", "tests")
# modules of optional extras that need hardware the suite never has: not installed here, so mapped by hand
NOT_INSTALLABLE_HERE = {"fa3_fwd_interface": "fa3-fwd"}


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: dict) -> set[str]:
    """The names in [project] dependencies and every optional-dependencies extra, without versions or markers."""
    project = pyproject["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group(0)) for r in requirements}


def imported_modules(root: Path) -> dict[str, str]:
    """Top-level module name -> first 'file:line' that imports it, for absolute imports in root's .py files."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def third_party(modules: dict[str, str]) -> dict[str, str]:
    """Drop the standard library, longgen itself and the test helpers that tests/ imports by file name."""
    local = {"longgen"} | {p.stem for p in (REPO / "tests").rglob("*.py")}
    return {m: where for m, where in modules.items() if m not in sys.stdlib_module_names and m not in local}


def undeclared(modules: dict[str, str], declared: set[str]) -> list[str]:
    """'module (file:line)' for each module that no declared distribution provides."""
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(modules.items()):
        # not installed here: guess the distribution is named like the module (a fresh install has them all)
        dists = {normalize(d) for d in providers.get(module, [module])}
        if module in NOT_INSTALLABLE_HERE:
            dists.add(NOT_INSTALLABLE_HERE[module])
        if not dists & declared:
            missing.append(f"{module} ({where}; provided by {sorted(dists)})")
    return missing


def test_every_import_in_longgen_and_tests_is_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    modules = {}
    for folder in SCANNED:
        modules.update(third_party(imported_modules(REPO / folder)))
    assert {"torch", "scipy", "tokenizers", "cv2", "PIL", "yaml"} <= modules.keys()  # the scan sees lazy imports too
    assert undeclared(modules, declared_distributions(pyproject)) == []


def test_an_undeclared_import_is_reported_with_where_it_is():
    modules = {"scipy": "tests/test_eval_metrics.py:215", "numpy": "longgen/eval/drift.py:19"}
    missing = undeclared(modules, declared={"numpy"})
    assert len(missing) == 1 and missing[0].startswith("scipy (tests/test_eval_metrics.py:215; provided by ['scipy'])")


def test_tests_and_the_processes_they_start_compute_with_one_thread():
    assert torch.get_num_threads() == 1
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           env=os.environ, capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "1", child.stderr


def test_run_cli_gives_its_child_one_thread_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    seen = {}
    monkeypatch.setattr(cli_helpers.subprocess, "run", lambda argv, **kwargs: seen.update(kwargs["env"]))
    cli_helpers.run_cli("--help")
    assert seen["OMP_NUM_THREADS"] == "1" and seen["MKL_NUM_THREADS"] == "1"


def test_gpu_lane_without_its_wheels_says_so_in_one_line(tmp_path):
    """README check: `bash scripts/gpu_lane.sh` before scripts/gpu_wheels.sh (no .whl/) ended in pip's two-line
    error about a file named '*.whl'. The scripts run from a copy whose checkout has no .whl/, so nothing installs
    (the install is scripts/gpu_site.sh's, shared by the device scripts)."""
    (tmp_path / "scripts").mkdir()
    for name in ("gpu_lane.sh", "gpu_site.sh"):
        (tmp_path / "scripts" / name).write_text((Path(__file__).resolve().parents[1] / "scripts" / name).read_text())
    script = tmp_path / "scripts" / "gpu_lane.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path / "out")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"gpu_lane.sh: no wheels in {tmp_path}/.whl/: run scripts/gpu_wheels.sh on a machine with pip access first"]

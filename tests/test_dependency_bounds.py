"""The diffusers version longgen runs on is one the GPU lane has passed on.

longgen/backbones/ re-implements or adapts diffusers blocks (attention processors, adaLN modulation, VAE decode
loops) and calls some of its private methods, so a new diffusers minor can change results or break without any
API deprecation. pyproject.toml therefore bounds diffusers above by the tested minor, and every adapted block
carries a marker `# derived from diffusers <file> (<names>), version <minor>`. These tests make a machine that
resolved an untested diffusers fail loudly, and keep the markers pointing at code that exists.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli below Python 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BACKBONES = REPO / "longgen" / "backbones"
MARKER = re.compile(r"#\s*derived from diffusers (\S+\.py) \(([^)]+)\), version (\d+\.\d+)\s*$")
RAISE_HINT = ("run the GPU lane (scripts/gpu_lane.sh) on that diffusers and review every block marked "
              "'# derived from diffusers' in longgen/backbones/ before raising the bound in pyproject.toml")


def diffusers_requirement() -> Requirement:
    """The diffusers entry of pyproject.toml's [project] dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(dep) for dep in project["dependencies"] if Requirement(dep).name == "diffusers"]
    assert len(found) == 1, f"pyproject.toml lists diffusers {len(found)} times in [project] dependencies"
    return found[0]


def bound_minor(requirement: Requirement) -> Version:
    """The highest minor the upper bound admits: `<0.43` → 0.42."""
    uppers = [Version(spec.version) for spec in requirement.specifier if spec.operator == "<"]
    assert len(uppers) == 1, (f"pyproject's {requirement} needs exactly one upper bound `<X.Y` (the minor after the "
                              f"one the GPU lane passed on): longgen adapts diffusers internals")
    upper = uppers[0]
    assert upper.micro == 0 and upper.minor > 0, f"the upper bound <{upper} must be the next minor, e.g. <0.43"
    return Version(f"{upper.major}.{upper.minor - 1}")


def markers() -> list[tuple[str, int, str, list[str], str]]:
    """(backbone module, line, diffusers file, names, version) of every marker in longgen/backbones/."""
    out = []
    for path in sorted(BACKBONES.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "derived from diffusers" in line:
                match = MARKER.search(line)
                assert match, f"{path.name}:{number}: malformed marker (expected `# derived from diffusers " \
                              f"<file.py> (<Name>, ...), version X.Y`): {line.strip()}"
                file, names, version = match.groups()
                out.append((path.name, number, file, [n.strip() for n in names.split(",")], version))
    return out


def defined_names(source: str) -> set[str]:
    """Top-level classes and functions of a module, and `Class.method` for their methods."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


def test_installed_diffusers_is_within_the_tested_range():
    requirement = diffusers_requirement()
    installed = Version(importlib.metadata.version("diffusers"))
    assert installed in requirement.specifier, (
        f"diffusers {installed} is installed but pyproject.toml admits {requirement.specifier} (the versions "
        f"longgen was tested on): {RAISE_HINT}"
    )


def test_the_upper_bound_is_the_minor_the_markers_name():
    """Raising the bound without revisiting the adapted blocks fails here: every marker names the tested minor."""
    minor = bound_minor(diffusers_requirement())
    found = markers()
    assert found, "no '# derived from diffusers' markers found in longgen/backbones/"
    stale = [f"{module}:{line} says {version}" for module, line, _, _, version in found if Version(version) != minor]
    assert not stale, (f"pyproject.toml bounds diffusers at <{minor.major}.{minor.minor + 1} (tested {minor}) but "
                       f"these markers name another version: {', '.join(stale)}; {RAISE_HINT}, then update them")


def test_every_marker_names_a_file_and_definitions_of_the_installed_diffusers():
    import diffusers

    installed = Version(importlib.metadata.version("diffusers"))
    minor = bound_minor(diffusers_requirement())
    if (installed.major, installed.minor) != (minor.major, minor.minor):
        pytest.skip(f"the markers describe diffusers {minor}; {installed} is installed")
    root = Path(diffusers.__file__).parent
    missing = []
    for module, line, file, names, _ in markers():
        source = root / file
        if not source.is_file():
            missing.append(f"{module}:{line}: no {file} in diffusers {installed}")
            continue
        defined = defined_names(source.read_text())
        missing += [f"{module}:{line}: no {name} in diffusers {file}" for name in names if name not in defined]
    assert not missing, "; ".join(missing)

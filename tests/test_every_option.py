"""Every shipped option of every config group composes, builds and plans.

The groups are read from the shipped `conf/` directory (every folder holding YAML files, Hydra's own `hydra/…`
groups included), never listed here, so a new group or option is covered the day it is added. For each option:

- it composes into the `generate` config with Hydra's compose API (`group=option`, or `+group=option` for a group
  that `generate` does not select by default);
- every `_target_` in it imports, and the constructor takes every key the file gives (so a misspelled key fails
  here, not on a user's machine);
- the generate command's planning step runs on it: `longgen.build.build` of sampler, backbone, noise and writer
  with their range checks, the length, the window plan, the story and the check that the weights are there. Options
  of other groups are planned on the tiny backbone at 16×16 pixels; full-size backbones are planned as shipped,
  their `model_path` pointed at an empty stand-in of a diffusers folder (the files the weights check looks for), so
  nothing is downloaded, built or loaded. Nothing is sampled.

A last test reads the README and the `--help` texts: every `group.key` they document is a key of a shipped option.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

import longgen.conf
from longgen.backbones.diffusers_base import MODEL_FILES, SUBFOLDERS
from longgen.build import build
from longgen.run.job import plan_job  # stage 1 of every run: what generate checks before anything loads

CONF = Path(longgen.conf.__file__).resolve().parent  # what initialize_config_module("longgen.conf") reads
REPO = Path(__file__).resolve().parents[1]
#: the small model every option that is not itself a backbone is planned on
TINY = ["backbone=tiny", "backbone.height=16", "backbone.width=16"]
STORY = ["prompt=a cat walks", "num_windows=2"]
#: what an option needs to fit the tiny model (refused when the run is planned otherwise): DiTCtrl's default layers
#: are CogVideoX-2B's 25-30, the tiny transformer has 2
FITS_TINY = {("sampler", "ditctrl"): ["sampler.kv_layers=[-1,null]"]}
#: keys of a config node that name code: Hydra's `_target_`, and logging.config's `()` factories and `class`es
CODE_KEYS = ("_target_", "()", "class")


def discovered_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML file in a folder under conf/, e.g. ("sampler", "syncos"), ("hydra/help",
    "generate")."""
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group != ".":  # conf/*.yaml are the commands' primary configs, not options of a group
            found.append((group, path.stem))
    return found


OPTIONS = discovered_options()


def compose_generate(overrides: list[str]) -> DictConfig:
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("generate", overrides=overrides, return_hydra_config=True)


@functools.cache
def default_choices() -> dict:
    """The groups `generate` selects by default and its choice for each."""
    return dict(compose_generate(STORY).hydra.runtime.choices)


def selection(group: str, option: str, defaults: dict) -> str:
    return f"{group}={option}" if group in defaults else f"+{group}={option}"


def code_nodes(node, path: str = ""):
    """(dotted path, dict node) of every mapping under `node` that names code (see CODE_KEYS)."""
    if isinstance(node, dict):
        if any(key in node for key in CODE_KEYS):
            yield path, node
        for key, value in node.items():
            yield from code_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from code_nodes(value, f"{path}[{i}]")


def check_named_code(label: str, resolved: dict) -> None:
    """Every named target imports; a `_target_`'s constructor accepts every key given next to it (or its class
    holds the key for the other groups, `config_only`: longgen/build.py leaves it out of the call)."""
    for path, node in code_nodes(resolved):
        for key in CODE_KEYS:
            if key not in node:
                continue
            try:
                target = get_object(node[key])
            except Exception as exc:
                pytest.fail(f"{label}: {path}.{key}={node[key]!r} does not import: {str(exc).splitlines()[0]}")
            if key != "_target_":
                continue
            params = inspect.signature(target).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                continue
            held = getattr(target, "config_only", ())  # keys for the other groups, which build() does not pass
            refused = [k for k in node if not str(k).startswith("_") and k not in params and k not in held]
            assert not refused, (f"{label}: {node[key]}'s constructor takes no {', '.join(map(repr, refused))} "
                                 f"(it takes {', '.join(params)})")


def resolved_node(cfg: DictConfig, group: str, out_dir: Path) -> dict | None:
    """The group's node of the composed config, interpolations resolved (the run directory set where Hydra sets it
    at run time); None for a package-global option (it merges into the root instead of a node of its own)."""
    if OmegaConf.is_missing(cfg.hydra.runtime, "output_dir"):
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = str(out_dir)
    node = OmegaConf.select(cfg, group.replace("/", "."))
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def test_options_are_discovered_from_conf():
    """Discovery sees every group whose default `generate` takes from conf/ (a wrong folder or pattern would leave
    the test below nothing to check)."""
    shipped = {group for group, choice in default_choices().items()
               if choice is not None and (CONF / group / f"{choice}.yaml").is_file()}
    assert {"backbone", "sampler"} <= shipped <= {group for group, _ in OPTIONS}, sorted(shipped)


@pytest.fixture
def stand_in_weights(tmp_path) -> Path:
    """An empty folder laid out as a diffusers model (what `check_available` looks for); nothing in it loads."""
    folder = tmp_path / "weights"
    for name in (*SUBFOLDERS, "transformer_2"):  # transformer_2: Wan 2.2 A14B's low-noise expert
        (folder / name).mkdir(parents=True)
    for name in MODEL_FILES:
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_builds_and_plans(group, option, tmp_path, stand_in_weights):
    label = f"conf/{group}/{option}.yaml"
    tiny = [] if group == "backbone" else [o for o in TINY if o.split("=")[0] != group]
    story = STORY if group != "experiment" else STORY[:1]  # an experiment sets the length itself
    if group == "backbone" and re.search(r"(^|-)i2v", option):  # an image-to-video model needs its start image (not TI2V)
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "start.png")
        story = [*story, f"image={tmp_path / 'start.png'}"]
    overrides = [selection(group, option, default_choices()), *tiny, *story, *FITS_TINY.get((group, option), []),
                 f"backbone.model_path={stand_in_weights}"]
    cfg = compose_generate(overrides)
    assert cfg.hydra.runtime.choices.get(group) == option, f"{label}: not selected by the compose"
    out_dir = tmp_path / "run"
    node = resolved_node(cfg, group, out_dir)
    if isinstance(node, dict):
        check_named_code(label, node)
    if group.startswith("hydra/"):
        return  # Hydra's own settings (help text, logging): composed, resolved and their code imported
    if isinstance(node, dict) and "_target_" in node:
        build(OmegaConf.select(cfg, group.replace("/", ".")), group, option)  # its constructor's own checks, on their own
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    job = plan_job(cfg, out_dir, choices)
    assert job is not None and job.plan.starts and job.length >= job.plan.window, f"{label}: planned nothing"
    assert not out_dir.exists(), f"{label}: planning wrote into the run directory"


def documented_options() -> set[tuple[str, str]]:
    """(group, key) of every `group.key` named in the README and the shipped --help texts (file names such as
    noise.py and keys shown as refused, `+splitter.api_key`, excepted)."""
    groups = sorted({group for group, _ in OPTIONS if "/" not in group}, key=len, reverse=True)
    pattern = re.compile(rf"(?<![\w+/.-])({'|'.join(map(re.escape, groups))})\.(?!py\b)([a-z_][a-z0-9_]*)")
    texts = [REPO / "README.md", *sorted((CONF / "hydra" / "help").glob("*.yaml"))]
    return {m.groups() for path in texts for m in pattern.finditer(path.read_text())}


def test_every_documented_option_exists():
    documented = documented_options()
    assert ("backbone", "micro_batch") in documented  # the scan finds what the README names
    keys: dict[str, set[str]] = {}
    for group, option in OPTIONS:
        keys.setdefault(group, set()).update(map(str, OmegaConf.load(CONF / group / f"{option}.yaml").keys()))
    missing = sorted(f"{group}.{key}" for group, key in documented if key not in keys.get(group, set()))
    assert not missing, f"the README or a --help text documents options that no shipped file has: {', '.join(missing)}"

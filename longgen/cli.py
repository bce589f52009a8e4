"""`longgen COMMAND [hydra overrides]`: dispatch a subcommand to its `@hydra.main` function.

The command word is removed from argv so that Hydra sees only its own flags and overrides; `-m`, `--cfg job`,
`--help` and `hydra.run.dir=…` keep working after the command. Config group choices (`backbone=…`, `sampler=…`,
`writer=…`) are checked against the shipped configs first so a typo gives one clear line.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from importlib import resources

from longgen import __version__

#: command → (module with a `main`, its primary Hydra config or None for commands that take a path first and
#: read their config from it, one-line description)
COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "generate": ("longgen.generate", "generate", "sample a long video from a prompt or story into Hydra's run directory"),
    "split-prompt": ("longgen.split_prompt", "split_prompt", "split a scenario into a global prompt and N local prompts (story.json)"),
    "resume": ("longgen.resume", None, "continue an interrupted run from its checkpoint (bit-identical result)"),
    "decode": ("longgen.decode", None, "write the video again from a run's saved latents (no sampling)"),
}
#: command → config key that its first plain argument (no '=', not a flag) fills
POSITIONAL = {"split-prompt": "scenario"}
#: Hydra flags followed by a value, which is not a positional argument
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun", "--info", "-i"}
_INFO_WORDS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
GROUPS = ("backbone", "sampler", "writer", "splitter")

USAGE = """usage: longgen COMMAND [OVERRIDES] [HYDRA FLAGS]

Tuning-free multi-event long video generation.

commands:
{commands}

examples:
  longgen generate sampler=syncos backbone=cogvideox-2b story=story.json length_factor=4
  longgen generate backbone=tiny sampler=gen-l-video num_windows=4 prompt="a cat"
  longgen split-prompt prompts/storytelling_paper_boat.txt num_prompts=4
  longgen generate -m backbone=tiny sampler=syncos,gen-l-video,glc seed=0,1 prompt="a cat"
  longgen resume outputs/2026-11-22/10-31-07-123456
  longgen generate gpus=2 sampler=syncos story=story.json      (one process per GPU, same video as on one)
  longgen decode outputs/2026-11-22/10-31-07-123456 writer.crf=10 writer.filename=video_hq.mp4
  longgen generate --cfg job
  longgen generate --help          (options of one command)
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, _, desc) in COMMANDS.items())
    return USAGE.format(commands=lines)


def group_options(group: str) -> list[str]:
    folder = resources.files("longgen.conf") / group
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _yaml_keys(path) -> set[str]:
    """Top-level keys of a config file, including those it inherits through its defaults list."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    keys = {k for k in data if k != "defaults"}
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and "/" not in entry and "override" not in entry:
            parent = path.parent / f"{entry}.yaml"
            if parent.is_file():
                keys |= _yaml_keys(parent)
    return keys


def _primary_defaults(config: str) -> tuple[set[str], dict[str, str]]:
    """(top-level keys, default choice per group) of a primary config."""
    import yaml

    path = resources.files("longgen.conf") / f"{config}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    choices = {}
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, dict):
            (group, choice), = entry.items()
            if not group.startswith("override"):
                choices[group] = choice
    return {k for k in data if k != "defaults"} | set(choices), choices


def check_option_keys(config: str, args: list[str]) -> str | None:
    """An error line for `key=value` / `group.key=value` overrides naming an option that does not exist.
    (`+key=value` adds a key on purpose and is left to Hydra.)"""
    top, choices = _primary_defaults(config)
    for arg in args:
        key, sep, value = arg.partition("=")
        if key in GROUPS and sep:
            choices[key] = value.split(",")[0].strip()
    for arg in args:
        key, sep, _ = arg.partition("=")
        if not sep or key.startswith(("+", "~", "hydra.", "hydra/", "-")) or key == "hydra":
            continue
        head, _, rest = key.partition(".")
        if head not in top:
            return f"unknown option {key!r}; options of `longgen {config.replace('_', '-')}`: {', '.join(sorted(top))}"
        if head in GROUPS and rest and head in choices:
            path = resources.files("longgen.conf") / head / f"{choices[head]}.yaml"
            if path.is_file():
                allowed = _yaml_keys(path) - {"_target_"}
                sub = rest.split(".")[0]
                if sub not in allowed:
                    return f"{head}={choices[head]} has no option {sub!r}; its options are: {', '.join(sorted(allowed))}"
    return None


def check_group_choices(args: list[str]) -> str | None:
    """An error line for `group=choice` overrides naming a config that does not exist, else None."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS:
            continue
        options = group_options(key)
        sweep = value
        for prefix in ("choice(", "glob("):
            if sweep.startswith(prefix) and sweep.endswith(")"):
                sweep = sweep[len(prefix) : -1]
        if value.startswith("glob("):
            continue
        for choice in (c.strip().strip("'\"") for c in sweep.split(",")):
            if choice and choice not in options:
                return f"unknown {key} {choice!r}; choose one of: {', '.join(options)}"
    return None


def check_output_dir(args: list[str]) -> str | None:
    """An error line when the run (or sweep) directory cannot be created: Hydra would fail with a traceback."""
    from longgen.errors import UsageError
    from longgen.rundir import check_writable_dir

    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.partition("=")[2] for a in args if a.partition("=")[0] == key]
    path = given[-1] if given else ("multirun" if multirun else "outputs")
    if "${" in path:
        return None  # an interpolation: only Hydra can resolve it
    try:
        check_writable_dir(Path(path), key)
    except UsageError as exc:
        return str(exc)
    return None


def fill_positional(command: str, args: list[str]) -> list[str]:
    """`longgen split-prompt story.txt n=4` → `scenario=story.txt n=4`: the first plain argument becomes KEY=VALUE."""
    key = POSITIONAL.get(command)
    if key is None:
        return list(args)
    out, done = list(args), False
    i = 0
    while i < len(out):
        arg = out[i]
        if arg in _VALUE_FLAGS:
            takes_value = arg not in ("--info", "-i") or (i + 1 < len(out) and out[i + 1] in _INFO_WORDS)
            i += 2 if takes_value else 1
            continue
        if not done and not arg.startswith("-") and "=" not in arg:
            out[i], done = f"{key}={arg}", True
        i += 1
    return out


def several_processes(command: str, rest: list[str]) -> int | None:
    """`gpus=N`: run the command as N processes (their exit status is returned). Under torchrun (or as one of
    those N): join the process group; ranks > 0 follow rank 0's jobs and return their status here, rank 0 goes on
    (None). Alone: None."""
    from longgen import distributed
    from longgen.errors import RunFailure, UsageError

    try:
        code = distributed.launch_if_asked(command, rest)
        if code is not None:
            return code
        group = distributed.attach()
    except (UsageError, RunFailure) as exc:
        print(f"longgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if group is not None and group.rank != 0:
        return group.follow()
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"longgen {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"longgen: error: unknown command {command!r}; commands: {', '.join(COMMANDS)} (see longgen --help)", file=sys.stderr)
        return 2
    module_name, config, _ = COMMANDS[command]
    if command in ("generate", "resume"):
        code = several_processes(command, rest)
        if code is not None:
            return code
    if config is None:  # resume / decode: a path, then options checked by the command itself
        importlib.import_module(module_name).main(rest)
        return 0
    rest = fill_positional(command, rest)
    problem = check_group_choices(rest) or check_option_keys(config, rest) or check_output_dir(rest)
    if problem:
        print(f"longgen: error: {problem}", file=sys.stderr)
        return 2
    if command == "generate" and ("-m" in rest or "--multirun" in rest):
        from longgen.generate import validate_sweep

        problem = validate_sweep(rest)
        if problem:
            print(f"longgen: error: {problem}", file=sys.stderr)
            return 2
    module = importlib.import_module(module_name)
    sys.argv = [f"longgen {command}", *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

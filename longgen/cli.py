"""`longgen COMMAND [hydra overrides]`: dispatch a subcommand to its `@hydra.main` function.

The command word is removed from argv so that Hydra sees only its own flags and overrides; `-m`, `--cfg job`,
`--help` and `hydra.run.dir=…` keep working after the command. Before Hydra starts (and saves the overrides in
`.hydra/`): a key typed on the command line is refused without being saved (longgen.redact), config group
choices (`backbone=…`, `sampler=…`, `writer=…`) are checked against the shipped configs so a typo gives one clear
line, and free-text values (`prompt=a cat, then a dog`, `prompt=cat's`) are quoted for Hydra's override grammar
(`quote_free_text`).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from importlib import resources
from pathlib import Path

from longgen import __version__
from longgen.redact import check_command_line
from longgen.rundir import note_existing_dirs

#: command → (module with a `main`, its primary Hydra config or None for commands that take a path first and
#: read their config from it, one-line description)
COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "generate": ("longgen.generate", "generate", "sample a long video from a prompt or story into Hydra's run directory"),
    "split-prompt": ("longgen.split_prompt", "split_prompt", "split a scenario into a global prompt and N local prompts (story.json)"),
    "resume": ("longgen.resume", None, "continue an interrupted run from its checkpoint (bit-identical result)"),
    "decode": ("longgen.decode", None, "write the video again from a run's saved latents (no sampling)"),
    "extend": ("longgen.extend", "extend", "continue a video (any mp4) from its last frames: extended.mp4 + continuation.mp4"),
    "eval": ("longgen.eval.command", "eval", "measure run directories, multirun directories or mp4 files; report for several"),
}
#: command → config key that its first plain argument (no '=', not a flag) fills
POSITIONAL = {"split-prompt": "scenario", "extend": "video"}
#: command → list-valued config key that all its plain arguments fill (`longgen eval a b` → `paths=['a','b']`)
POSITIONAL_LIST = {"eval": "paths"}
#: Hydra flags followed by a value, which is not a positional argument
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun", "--info", "-i"}
_INFO_WORDS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
#: options whose value is free text or a path: a comma or quote in them is part of the text (see quote_free_text)
FREE_TEXT = {"prompt", "negative_prompt", "prompt_file", "story", "scenario", "out", "model_path", "video",
             "backbone.model_path", "splitter.template", "hydra.run.dir", "hydra.sweep.dir"}
#: free text that is only ever text: `${…}` in it is kept as typed, never an OmegaConf interpolation (it could
#: pull an environment value such as an API key into story.json, the saved config and the checkpoints)
TEXT_ONLY = {"prompt", "negative_prompt"}
#: set by `longgen generate --rerun-failed` for the re-run it starts: the overrides are a job's, already quoted
AS_RECORDED_ENV = "LONGGEN_OVERRIDES_AS_RECORDED"
_MULTIRUN_FLAGS = {"-m", "--multirun"}

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
  longgen eval multirun/2025-01-01/12-00-00
  longgen extend outputs/2026-11-22/10-31-07-123456/video.mp4 prompt="the fox runs on" num_windows=3
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


def config_groups() -> tuple[str, ...]:
    """The config groups: the folders of the shipped conf/ (hydra/ holds Hydra's own settings, not a group)."""
    root = resources.files("longgen.conf")
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")))


GROUPS = config_groups()


def _selected_groups(group: str, choice: str) -> dict[str, str]:
    """Group choices that a config added with `+group=choice` selects (`override /sampler: fifo` in its defaults
    list, as an experiment file does)."""
    import yaml

    path = resources.files("longgen.conf") / group / f"{choice}.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    picked = {}
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, dict):
            (key, value), = entry.items()
            picked[key.removeprefix("override").strip().lstrip("/")] = value
    return picked


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
    command = f"longgen {config.replace('_', '-')}"
    for arg in args:  # a group added with +group=choice (+experiment=syncos-4x) may select other groups' options
        key, sep, value = arg.partition("=")
        added = key.lstrip("+")
        if sep and key.startswith("+") and added in GROUPS and added not in choices:
            picked = _selected_groups(added, value.split(",")[0].strip())
            if missing := sorted(set(picked) - set(choices)):
                return f"{added} {value!r} selects {missing[0]}=…, which `{command}` does not have"
            choices.update(picked)
    for arg in args:
        key, sep, value = arg.partition("=")
        if key in GROUPS and sep:
            choices[key] = value.split(",")[0].strip()
    for arg in args:
        key, sep, _ = arg.partition("=")
        if sep and key.startswith("+") and not key.startswith("++") and key.lstrip("+") not in GROUPS:
            typo = _typo_of(key.lstrip("+").partition(".")[0], top)
            if typo:
                return (f"unknown option {key!r}: did you mean {typo}=…? (+KEY adds a new key; "
                        f"options of `longgen {config.replace('_', '-')}`: {', '.join(sorted(top))})")
        if not sep or key.startswith(("+", "~", "hydra.", "hydra/", "-")) or key == "hydra":
            continue
        head, _, rest = key.partition(".")
        if head in GROUPS and head not in top:
            return f"`{command}` selects no {head} by default: add one with +{arg}"
        if head not in top:
            return f"unknown option {key!r}; options of `longgen {config.replace('_', '-')}`: {', '.join(sorted(top))}"
        if head in GROUPS and rest and head in choices:
            path = resources.files("longgen.conf") / head / f"{choices[head]}.yaml"
            if path.is_file():
                allowed = _yaml_keys(path) - {"_target_"}
                sub = rest.split(".")[0]
                if sub not in allowed:
                    return f"{head}={choices[head]} has no option {sub!r}; its options are: {', '.join(sorted(allowed))}"
        nested = _primary_nodes(config).get(head)
        if nested is not None and rest and rest.split(".")[0] not in nested:
            return f"{head} has no option {rest.split('.')[0]!r}; its options are: {', '.join(sorted(nested))}"
    return None


def _typo_of(name: str, known: set[str]) -> str | None:
    """The known option `name` is a near-miss of (`seeed` → `seed`), or None (a deliberately new key)."""
    import difflib

    if name in known:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def _primary_nodes(config: str) -> dict[str, dict]:
    """Top-level keys of a primary config whose value is a mapping of options (e.g. eval's `settings`)."""
    import yaml

    data = yaml.safe_load((resources.files("longgen.conf") / f"{config}.yaml").read_text()) or {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and k not in ("defaults", "hydra")}


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
    from longgen.rundir import check_writable_dir, refuse_sweep_links

    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.partition("=")[2] for a in args if a.partition("=")[0] == key]
    path = given[-1] if given else ("multirun" if multirun else "outputs")
    if "${" in path:
        return None  # an interpolation: only Hydra can resolve it
    try:
        check_writable_dir(Path(path), key)
        if multirun:
            refuse_sweep_links(Path(path))
    except UsageError as exc:
        return str(exc)
    return None


def fill_positional_list(key: str, args: list[str]) -> list[str]:
    """`longgen eval a b x=1` → `x=1 paths=['a','b']`: every plain argument goes into one list-valued key."""
    out, values, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_FLAGS:
            takes_value = arg not in ("--info", "-i") or (i + 1 < len(args) and args[i + 1] in _INFO_WORDS)
            out.extend(args[i: i + (2 if takes_value else 1)])
            i += 2 if takes_value else 1
            continue
        if not arg.startswith("-") and "=" not in arg:
            values.append(arg)
        else:
            out.append(arg)
        i += 1
    if values:
        out.append(f"{key}=[{','.join(hydra_quote(v) for v in values)}]")
    return out


def fill_positional(command: str, args: list[str]) -> list[str]:
    """`longgen split-prompt story.txt n=4` → `scenario=story.txt n=4`: the first plain argument becomes KEY=VALUE."""
    if command in POSITIONAL_LIST:
        return fill_positional_list(POSITIONAL_LIST[command], args)
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


def _parsed(arg: str):
    """Hydra's reading of one override, or None where its grammar rejects it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(arg)
    except HydraException:
        return None


def _no_interpolation(text: str) -> str:
    """`text` as an OmegaConf string value that resolves to `text`: `${` would start an interpolation, so it is
    escaped as `\\${` (a run of k backslashes before it becomes 2k + 1)."""
    return re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", text)


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra override value that resolves to exactly `text`. Hydra's grammar: inside
    quotes, `\\'` is a quote and backslashes are literal except a run of them right before a quote (or the closing
    quote), which must be doubled."""
    out, i = [], 0
    text = _no_interpolation(text)
    while i < len(text):
        j = i
        while j < len(text) and text[j] == "\\":
            j += 1
        run = j - i
        if run and (j == len(text) or text[j] == "'"):
            out.append("\\" * (2 * run))
        else:
            out.append("\\" * run)
        if j < len(text):
            out.append("\\'" if text[j] == "'" else text[j])
        i = j + 1
    return "'" + "".join(out) + "'"


def quote_free_text(args: list[str]) -> list[str]:
    """Quote the value of free-text options (FREE_TEXT) that Hydra would not read as the text typed.

    `prompt=a cat, then a dog` would be a sweep over two prompts (an error without -m) and `prompt=cat's` an
    unterminated quote; both become `prompt='…'` holding the text as typed. Values Hydra reads as one string
    (including ones quoted or escaped by the user, and `null`) are left alone. With `-m`, a value Hydra reads as a
    sweep is left a sweep: in multirun mode commas separate sweep values unless quoted.
    """
    multirun = any(a in _MULTIRUN_FLAGS or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") not in FREE_TEXT:
            out.append(arg)
            continue
        parsed = _parsed(arg)
        if parsed is not None and not (key.lstrip("+~") in TEXT_ONLY and "${" in value):
            read = parsed.value()
            if read is None or isinstance(read, str) or (multirun and parsed.is_sweep_override()):
                out.append(arg)
                continue
        quoted = f"{key}={hydra_quote(value)}"
        check = _parsed(quoted)
        # keep the user's text if quoting cannot represent it (Hydra then names the problem itself)
        out.append(quoted if check is not None and check.value() == _no_interpolation(value) else arg)
    return out


def join_processes(command: str) -> int | None:
    """Under torchrun, or as one of the processes `gpus=N` started: join the process group. Ranks > 0 follow rank
    0's jobs and return their exit status here (they never run Hydra); rank 0 and a process alone go on (None)."""
    from longgen import distributed
    from longgen.errors import RunFailure

    try:
        group = distributed.attach()
    except RunFailure as exc:
        print(f"longgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if group is not None and group.rank != 0:
        return group.follow()
    return None


def start_processes(command: str, rest: list[str]) -> int | None:
    """`gpus=N` (N > 1): run this command as N processes, one per GPU, and return their exit status; None when
    this process runs it itself (gpus=1, or already one of several)."""
    from longgen import distributed
    from longgen.errors import UsageError

    try:
        return distributed.launch_if_asked(command, rest)
    except UsageError as exc:
        print(f"longgen: error: {exc}", file=sys.stderr)
        return exc.exit_code


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
        code = join_processes(command)
        if code is not None:
            return code
    if config is None:  # resume / decode: a path, then options checked by the command itself
        if command == "resume":
            code = start_processes(command, rest)
            if code is not None:
                return code
        importlib.import_module(module_name).main(rest)
        return 0
    if command == "generate" and rest[:1] == ["--rerun-failed"]:
        from longgen.errors import user_errors
        from longgen.sweep import rerun_failed

        if len(rest) != 2:
            print("longgen: error: usage: longgen generate --rerun-failed SWEEP_DIR", file=sys.stderr)
            return 2
        with user_errors():
            return rerun_failed(Path(rest[1]).expanduser())
    rest = fill_positional(command, rest)
    problem = (check_command_line(rest) or check_group_choices(rest) or check_option_keys(config, rest)
               or check_output_dir(rest))
    if problem:
        print(f"longgen: error: {problem}", file=sys.stderr)
        return 2
    if os.environ.pop(AS_RECORDED_ENV, None) != "1":  # --rerun-failed passes a job's overrides as Hydra got them
        rest = quote_free_text(rest)
    note_existing_dirs(rest)  # before Hydra makes directories: clean-up never removes one that existed
    if command == "generate" and ("-m" in rest or "--multirun" in rest):
        from longgen.generate import validate_sweep

        problem = validate_sweep(rest)
        if problem:
            print(f"longgen: error: {problem}", file=sys.stderr)
            return 2
    if command == "generate":  # after the checks: a bad option never starts N processes
        code = start_processes(command, rest)
        if code is not None:
            return code
    module = importlib.import_module(module_name)
    sys.argv = [f"longgen {command}", *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

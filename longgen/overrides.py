"""The command line before Hydra sees it: checks and quoting of `KEY=VALUE` overrides.

Before Hydra starts (and saves the overrides in `.hydra/`): a key typed on the command line is refused without
being saved (longgen.redact), config group choices (`backbone=…`, `sampler=…`, `writer=…`) are checked against the
configs on the command line's search path (the shipped conf/, plus `--config-dir`, `--config-path`,
`hydra.searchpath`: longgen/config_search.py) so a typo gives one clear line, option keys are checked against the
same configs (with a suggestion for a likely typo), the output directory is checked, positional arguments fill their keys, and free-text values
(`prompt=a cat, then a dog`, `prompt=cat's`) are quoted for Hydra's override grammar (`quote_free_text`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from longgen.config_search import ConfigSearch, overrides_only, takes_value

#: command → config key that its first plain argument (no '=', not a flag) fills
POSITIONAL = {"split-prompt": "scenario", "extend": "video"}
#: command → list-valued config key that all its plain arguments fill (`longgen eval a b` → `paths=['a','b']`)
POSITIONAL_LIST = {"eval": "paths"}
#: options whose value is free text or a path: a comma or quote in them is part of the text (see quote_free_text)
FREE_TEXT = {"prompt", "negative_prompt", "prompt_file", "story", "scenario", "out", "model_path", "video", "image",
             "backbone.model_path", "splitter.template", "splitter.shot_template", "hydra.run.dir", "hydra.sweep.dir"}
#: free text that is only ever text: `${…}` in it is kept as typed, never an OmegaConf interpolation (it could
#: pull an environment value such as an API key into story.json, the saved config and the checkpoints)
TEXT_ONLY = {"prompt", "negative_prompt"}
#: set by `longgen generate --rerun-failed` for the re-run it starts: the overrides are a job's, already quoted
AS_RECORDED_ENV = "LONGGEN_OVERRIDES_AS_RECORDED"
_MULTIRUN_FLAGS = {"-m", "--multirun"}
#: Hydra's mode flags (it runs exactly one mode) → their long spelling
_MODE_FLAGS = {"-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info",
               "--info": "--info", "-r": "--run", "--run": "--run"}


def group_options(group: str, search: ConfigSearch | None = None) -> list[str]:
    """The choices of a config group on `search` (by default the shipped conf/ alone)."""
    return (search or ConfigSearch.of([], "generate")).options(group)


def _defaults_choices(data: dict, overrides: bool) -> dict[str, str]:
    """Group → choice named in a config's defaults list: its own `group: choice` entries, and with `overrides` also
    its `override /group: choice` entries (an experiment file's way of selecting other groups)."""
    picked = {}
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, dict):
            (key, value), = entry.items()
            if key.startswith("override") and not overrides:
                continue
            picked[key.removeprefix("override").strip().lstrip("/")] = value
    return picked


def _selected_groups(search: ConfigSearch, group: str, choice: str) -> dict[str, str]:
    """Group choices that a config added with `+group=choice` selects (`override /sampler: fifo` in its defaults
    list, as an experiment file does)."""
    return _defaults_choices(search.load(f"{group}/{choice}.yaml"), overrides=True)


def _yaml_keys(search: ConfigSearch, group: str, choice: str) -> set[str]:
    """Top-level keys of a group's config file, including those it inherits through its defaults list."""
    data = search.load(f"{group}/{choice}.yaml")
    keys = {k for k in data if k != "defaults"}
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and "/" not in entry and "override" not in entry:
            if entry != choice and search.find(f"{group}/{entry}.yaml") is not None:
                keys |= _yaml_keys(search, group, entry)
    return keys


def _primary_defaults(search: ConfigSearch) -> tuple[set[str], dict[str, str]]:
    """(top-level keys, default choice per group) of the primary config."""
    data = search.load(f"{search.primary}.yaml")
    choices = _defaults_choices(data, overrides=False)
    return {k for k in data if k != "defaults"} | set(choices), choices


def _added_groups(search: ConfigSearch, groups: tuple[str, ...], choices: dict[str, str], args: list[str],
                  command: str) -> str | None:
    """Update `choices` with what each `+group=choice` (+experiment=syncos-4x) selects; an error line when it
    selects a group the command does not have."""
    for arg in args:
        key, sep, value = arg.partition("=")
        added = key.lstrip("+")
        if sep and key.startswith("+") and added in groups and added not in choices:
            picked = _selected_groups(search, added, value.split(",")[0].strip())
            if missing := sorted(set(picked) - set(choices)):
                return f"{added} {value!r} selects {missing[0]}=…, which `{command}` does not have"
            choices.update(picked)
    return None


def check_option_keys(config: str, args: list[str]) -> str | None:
    """An error line for `key=value` / `group.key=value` overrides naming an option that does not exist.
    (`+key=value` adds a key on purpose and is left to Hydra.) The configs are read from the command line's
    search path (longgen/config_search.py: --config-dir, --config-path, hydra.searchpath)."""
    search = ConfigSearch.of(args, config)
    args = overrides_only(args)
    groups = search.groups()
    top, choices = _primary_defaults(search)
    command = f"longgen {config.replace('_', '-')}"
    if problem := _added_groups(search, groups, choices, args, command):
        return problem
    for arg in args:
        key, sep, value = arg.partition("=")
        if key in groups and sep:
            choices[key] = value.split(",")[0].strip()
    for group, choice in choices.items():  # each chosen file (an experiment's too): one line where it is not YAML
        search.load(f"{group}/{choice}.yaml")
    for arg in args:
        if problem := _option_problem(search, groups, top, choices, arg, command):
            return problem
    return _launcher_problem(args)


def _launcher_problem(args: list[str]) -> str | None:
    """`hydra.launcher.KEY=…` with Hydra's basic launcher, which has no options (Hydra: five lines, "Key 'n_jobs'
    not in 'BasicLauncherConf'"; under -m one line that did not say what to change)."""
    if any(a.partition("=")[0].lstrip("+") == "hydra/launcher" for a in args):
        return None
    for arg in args:
        key = arg.partition("=")[0]
        if key.lstrip("+~").startswith("hydra.launcher."):
            return (f"{arg} sets an option of a sweep launcher, and the default one (one job after another) has "
                    f"none: pick the launcher with -m hydra/launcher=joblib (or submitit_local, submitit_slurm)")
    return None


def _removed_or_added_again(groups: tuple[str, ...], top: set[str], choices: dict[str, str], arg: str,
                            existing: set[str] | None, command: str) -> str | None:
    """`~KEY` (Hydra deletes the option; the run then failed with a traceback where it reads it) and `+KEY=…` for an
    option that exists (Hydra: "Could not append to config" in four lines): one line each. `existing`: the options
    of KEY's group or nested node, where KEY is dotted."""
    key, sep, value = arg.partition("=")
    name = key.lstrip("+~")
    head, _, rest = name.partition(".")
    if key.startswith("~") and head in top:
        return f"{key} would remove {name}, which longgen reads: give it a value instead ({name}=VALUE)"
    if key.startswith("~"):
        return f"unknown option {name!r}; options of `{command}`: {', '.join(sorted(top))}"
    if not key.startswith("+") or key.startswith("++") or not sep or head not in top:
        return None
    if not rest and head in groups and head in choices:
        return f"{head} is a group with a default choice: write {head}={value} (without +, which adds a group)"
    if (not rest and head not in groups) or (rest and existing is not None and rest.split(".")[0] in existing):
        return f"{name} is already an option: write {name}={value} (+KEY adds a key that does not exist yet)"
    return None


def _option_problem(search: ConfigSearch, groups: tuple[str, ...], top: set[str], choices: dict[str, str],
                    arg: str, command: str) -> str | None:
    """The error line for one override naming an option that does not exist, else None."""
    key, sep, _ = arg.partition("=")
    if key.startswith(("~", "+")) and not key.lstrip("+~").startswith(("hydra.", "hydra/")) and key != "~hydra":
        head, _, rest = key.lstrip("+~").partition(".")
        existing = (_yaml_keys(search, head, choices[head])
                    if head in groups and rest and head in choices and search.find(f"{head}/{choices[head]}.yaml")
                    else _primary_nodes(search).get(head))
        if problem := _removed_or_added_again(groups, top, choices, arg, existing and set(existing), command):
            return problem
    if sep and key.startswith("+") and not key.startswith("++") and key.lstrip("+") not in groups:
        typo = _typo_of(key.lstrip("+").partition(".")[0], top)
        if typo:
            return (f"unknown option {key!r}: did you mean {typo}=…? (+KEY adds a new key; "
                    f"options of `{command}`: {', '.join(sorted(top))})")
    if not sep or key.startswith(("+", "~", "hydra.", "hydra/", "-")) or key == "hydra":
        return None
    head, _, rest = key.partition(".")
    if head in groups and head not in top:
        return f"`{command}` selects no {head} by default: add one with +{arg}"
    if head not in top:
        return f"unknown option {key!r}; options of `{command}`: {', '.join(sorted(top))}"
    sub = rest.split(".")[0]
    if head in groups and rest and head in choices and search.find(f"{head}/{choices[head]}.yaml") is not None:
        allowed = _yaml_keys(search, head, choices[head]) - {"_target_"}
        if sub not in allowed:
            return f"{head}={choices[head]} has no option {sub!r}; its options are: {', '.join(sorted(allowed))}"
    nested = _primary_nodes(search).get(head)
    if nested is not None and rest and sub not in nested:
        return f"{head} has no option {sub!r}; its options are: {', '.join(sorted(nested))}"
    if nested is None and rest and head not in groups:  # Hydra: "Could not override" and four more lines
        return f"{head} is one value, not a group of options: write {head}=VALUE, not {key}=…"
    return None


def _typo_of(name: str, known: set[str]) -> str | None:
    """The known option `name` is a near-miss of (`seeed` → `seed`), or None (a deliberately new key)."""
    import difflib

    if name in known:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def _primary_nodes(search: ConfigSearch) -> dict[str, dict]:
    """Top-level keys of the primary config whose value is a mapping of options (e.g. eval's `settings`)."""
    data = search.load(f"{search.primary}.yaml")
    return {k: v for k, v in data.items() if isinstance(v, dict) and k not in ("defaults", "hydra")}


def check_group_choices(args: list[str], config: str = "generate") -> str | None:
    """An error line for `group=choice` overrides naming a config that does not exist on the command line's search
    path, else None; UsageError for a chosen file that is not YAML. Where part of the search path cannot be read
    here, an unknown choice is left to Hydra."""
    search = ConfigSearch.of(args, config)
    groups = search.groups()
    for arg in overrides_only(args):
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in groups or value.startswith("glob("):
            continue
        options = search.options(key)
        sweep = value
        if sweep.startswith("choice(") and sweep.endswith(")"):
            sweep = sweep[len("choice(") : -1]
        for choice in (c.strip().strip("'\"") for c in sweep.split(",")):
            if choice and choice not in options and not search.unseen:
                return f"unknown {key} {choice!r}; choose one of: {', '.join(options)}"
            if choice in options:  # a file of the user's that is not YAML: one line naming it (UsageError)
                search.load(f"{key}/{choice}.yaml")
    return None


def unquoted(value: str) -> str:
    """A value without the one pair of quotes around all of it that Hydra strips (`'~/runs'` → `~/runs`)."""
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def expand_home(args: list[str]) -> list[str]:
    """`hydra.run.dir=~/runs/x` (a shell that leaves `~` after `=` alone, zsh, a quoted value, a script) with `~`
    expanded: Hydra takes it literally and made a folder named `~` in the working directory (which a later
    `rm -rf ~` would read as the home directory)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = unquoted(value)
        if sep and key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and bare.startswith("~"):
            arg = f"{key}={os.path.expanduser(bare)}"
        out.append(arg)
    return out


def check_output_dir(args: list[str]) -> str | None:
    """An error line when the run (or sweep) directory cannot be created: Hydra would fail with a traceback."""
    from longgen.errors import UsageError
    from longgen.rundir import check_writable_dir, refuse_run_links, refuse_sweep_links

    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.partition("=")[2] for a in overrides_only(args) if a.partition("=")[0] == key and "=" in a]
    path = given[-1] if given else ("multirun" if multirun else "outputs")
    if given and path.strip().strip("'\"").strip() == "":  # Hydra takes it as the working directory
        return (f"{key}= is empty (an unset shell variable?): give a directory, or {key}=. for the working directory "
                f"itself")
    if "${" in path:
        return None  # an interpolation: only Hydra can resolve it
    try:
        check_writable_dir(Path(path), key)
        if multirun:
            refuse_sweep_links(Path(path))
        else:  # split-prompt and eval let Hydra write .hydra/ and the log: a planted link must stop them first
            refuse_run_links(Path(path))
    except UsageError as exc:
        return str(exc)
    return None


def path_first(argv: list[str] | None, usage: str) -> tuple[Path, list[str]]:
    """`longgen COMMAND PATH [KEY=VALUE ...]` (resume, decode: commands that read their config from PATH): the path
    and the overrides. Prints `usage` and exits on -h/--help (status 0); without arguments, one error line naming
    the path to give (status 2), as the other commands say what is missing."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0)
    if not args:
        form = usage.splitlines()[0].removeprefix("usage: ")
        command = " ".join(form.split()[:2])
        print(f"longgen: error: give the path first: {form} (see {command} --help)", file=sys.stderr)
        sys.exit(2)
    return Path(args[0]).expanduser(), args[1:]


def fill_positional_list(key: str, args: list[str]) -> list[str]:
    """`longgen eval a b x=1` → `x=1 paths=['a','b']`: every plain argument goes into one list-valued key."""
    out, values, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):  # Hydra's flags, with their value where they take one
            width = 2 if takes_value(args, i) else 1
            out.extend(args[i: i + width])
            i += width
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
        if arg.startswith("-"):  # Hydra's flags, with their value where they take one
            i += 2 if takes_value(out, i) else 1
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


def mixed_modes(args: list[str]) -> str | None:
    """One line where the arguments ask Hydra for two modes at once (e.g. -m with --cfg job), which Hydra refuses
    with a traceback; else None."""
    modes = list(dict.fromkeys(_MODE_FLAGS[a] for a in args if a in _MODE_FLAGS))
    if len(modes) < 2:
        return None
    return (f"{' and '.join(modes)} cannot be combined (Hydra runs one mode at a time): keep one of them (e.g. drop "
            f"-m to print one job's config with --cfg job)")


def not_utf8(args: list[str]) -> str | None:
    """One line for the first argument that is not UTF-8 text as Python decoded it, else None. Python decodes the
    command line in the locale's encoding, keeping bytes it cannot decode as surrogates (which no UTF-8 file can
    hold): bytes of another encoding (a terminal in Latin-1, GBK or Shift-JIS), or UTF-8 under a locale that is not
    UTF-8 (ASCII, ISO-8859-1), where Python cannot name such files either."""
    for arg in args:
        try:
            arg.encode("utf-8")
            continue
        except UnicodeEncodeError:
            raw = os.fsencode(arg)
        try:
            shown = raw.decode("utf-8")
        except UnicodeDecodeError:
            return (f"{raw.decode('utf-8', 'backslashreplace')} is not UTF-8 text (the terminal sent another "
                    f"encoding): set it to UTF-8 (e.g. LANG=C.UTF-8), put the text in a UTF-8 file (prompt_file=, "
                    f"story=, scenario=), or rename the file to a UTF-8 name")
        return (f"{shown.encode('ascii', 'backslashreplace').decode()}: this shell's locale reads the command line "
                f"as {sys.getfilesystemencoding()}, not UTF-8: run with PYTHONUTF8=1 (or LANG=C.UTF-8)")
    return None


def unreadable_override(args: list[str]) -> str | None:
    """The first KEY=VALUE argument Hydra's override grammar cannot read (an unclosed bracket, a stray brace), as one
    line naming it with Hydra's reason and what to check; None when every one reads. Hydra's flags and their values
    (-m, --cfg job, -sc install=bash) are not overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from longgen.redact import scrub

    for arg in overrides_only(args):
        if "=" not in arg and not arg.startswith("~"):  # Hydra's error for a bare word is four lines
            return scrub(f"{arg!r} is not an override: write KEY=VALUE, e.g. prompt='{arg}' or story={arg}")
        if "=" not in arg:  # a `~key` deletion: Hydra names a bad one itself
            continue
        try:
            OverridesParser.create().parse_override(arg)
        except HydraException as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in lines if not line.startswith(("See ", "Error parsing override"))),
                          "not an override")
            return scrub(f"{arg}: Hydra cannot read this override ({reason}): check its brackets, braces and quotes "
                         f"(quote a value holding spaces, commas or brackets: key='...')")
    return None


def sweep_without_multirun(args: list[str]) -> str | None:
    """One line for an override that lists several values (`seed=0,1`, `range(0,3)`) in a run of one job, where
    Hydra prints a five-line "Ambiguous value" hint and exits 1, or that picks a launcher, which Hydra ignores
    without -m (`hydra/launcher=submitit_slurm` ran the video on the login node); None with -m."""
    from longgen.redact import scrub

    if "-m" in args or "--multirun" in args:
        return None
    for arg in overrides_only(args):
        if arg.partition("=")[0].lstrip("+") == "hydra/launcher":  # Hydra ignores a launcher without -m
            return (f"{arg} launches the jobs of a sweep: add -m (without it the run starts here, in this process, "
                    f"not as a scheduled job)")
        parsed = _parsed(arg) if "=" in arg else None  # None where the grammar rejects it: unreadable_override names it
        if parsed is not None and parsed.is_sweep_override():
            return scrub(f"{arg} gives several values: add -m to run one job per value (a sweep), or give one value "
                         f"(a list is written key=[a,b], text holding commas key='a,b')")
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


def quoted_sweep(key: str, value: str) -> str | None:
    """In multirun mode, `value` (free text Hydra's grammar cannot read unquoted: `café,thé`, `a cat!,a dog?`) as the
    sweep its commas make, each value quoted, as Hydra reads `a cat,a dog`; None where the user quoted a value or
    escaped a comma (`\\,`: text), or a value is empty."""
    values = [v.strip() for v in value.split(",")]
    if len(values) < 2 or any(not v or v[0] in "'\"" for v in values) or "${" in value or "\\," in value:
        return None
    swept = f"{key}={','.join(hydra_quote(v) for v in values)}"
    check = _parsed(swept)
    read = check.value() if check is not None and check.is_sweep_override() else None
    return swept if read is not None and [getattr(v, "text", v) for v in read.list] == values else None


def quote_free_text(args: list[str]) -> list[str]:
    """Quote the value of free-text options (FREE_TEXT) that Hydra would not read as the text typed.

    `prompt=a cat, then a dog` would be a sweep over two prompts (an error without -m) and `prompt=cat's` an
    unterminated quote; both become `prompt='…'` holding the text as typed. Values Hydra reads as one string
    (including ones quoted or escaped by the user, and `null`) are left alone. With `-m`, a value Hydra reads as a
    sweep is left a sweep: in multirun mode commas separate sweep values unless quoted, also between values
    Hydra would not read unquoted (`-m prompt=café,thé` is two prompts, as `-m prompt=cafe,the` is).
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
        if multirun and parsed is None and (swept := quoted_sweep(key, value)):
            out.append(swept)
            continue
        quoted = f"{key}={hydra_quote(value)}"
        check = _parsed(quoted)
        # keep the user's text if quoting cannot represent it (Hydra then names the problem itself)
        out.append(quoted if check is not None and check.value() == _no_interpolation(value) else arg)
    return out


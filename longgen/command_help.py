"""`longgen COMMAND --help`: one short page per command, read from the configs Hydra would read.

The page is the command's help template (conf/hydra/help/COMMAND.yaml: header, usage, examples, footer) with two
parts filled in from the config files themselves, so that they never drift from what the command accepts:
`$APP_CONFIG_GROUPS`, the groups of the primary config's defaults list with their choices and the one in use
(overrides on the command line taken into account; `--config-dir` / `--config-path` directories included), and
`$OPTIONS`, the primary config's options with their defaults and the explanations written as comments next to them
in the YAML (its `# ...` section lines become headings). The full resolved configuration is `--cfg job`; Hydra's own
flags are `--hydra-help`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from longgen.config_search import ConfigSearch, overrides_only
from longgen.overrides import _defaults_choices

#: a `key: value  # comment` line of a config file, at any indentation
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
#: widest `key=default` column before the explanations
_NAME_WIDTH = 26


@dataclass
class Option:
    """One documented option: its dotted name, its default as written, and its comment lines."""

    name: str
    default: str
    notes: list[str] = field(default_factory=list)


def _split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` → (value, comment); a `#` inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1] == " "):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def documented_options(text: str) -> list[Option | str]:
    """The options of a primary config file in order, with section headings (str) from its top-level comment
    lines: every key outside `defaults` and `hydra` (a mapping's keys as `parent.key`), the comment on its line
    and the comment lines that continue it (none for an option without a comment)."""
    items: list[Option | str] = []
    parent, started, last = "", False, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if line.startswith("#"):  # a top-level comment: the file's title before the options, else a heading
                if started:
                    items.append(stripped.lstrip("# ").rstrip())
                last = None
            elif last is not None:  # an indented comment continues the last option's explanation
                last.notes.append(stripped.lstrip("# ").rstrip())
            continue
        m = _KEY.match(line)
        if m is None:
            continue  # list entries, blank lines
        key, indent = m["key"], len(m["indent"])
        value, comment = _split_comment(m["rest"])
        if indent == 0:
            parent = ""
            if key in ("defaults", "hydra"):
                started, last = key == "defaults" or started, None
                parent = key  # their keys are Hydra's, not options
                continue
            started = True
            if not value:  # a mapping of options
                parent = key
                if comment:
                    items.append(f"{key}.*: {comment}")
                last = None
                continue
        elif parent in ("", "defaults", "hydra") or indent > 2:
            continue
        last = Option(f"{parent}.{key}" if indent else key, value, [comment] if comment else [])
        items.append(last)
    return items


def _shown_default(value: str) -> str:
    """`=0`, `=cpu`: a default worth showing (not null, not an interpolation, not an empty list)."""
    if value in ("null", "", "[]", "{}") or "${" in value:
        return ""
    return f"={value}"


def options_text(items: list[Option | str]) -> str:
    """The option lines of the page: `  name=default   explanation`, continuation lines under the explanation;
    options written without a comment share one line, `  a, b=1, c`."""
    lines: list[str] = []
    bare: list[str] = []
    for item in [*items, ""]:
        if isinstance(item, Option) and not item.notes:
            bare.append(f"{item.name}{_shown_default(item.default)}")
            continue
        if bare:
            lines.append(f"  {', '.join(bare)}")
            bare = []
        if isinstance(item, str):
            if item:
                lines.append(f" {item}")
            continue
        name = f"{item.name}{_shown_default(item.default)}"
        if len(name) > _NAME_WIDTH:
            lines.append(f"  {name}")
            name = ""
        lines.append(f"  {name:<{_NAME_WIDTH}} {item.notes[0]}")
        lines.extend(f"  {'':<{_NAME_WIDTH}} {note}" for note in item.notes[1:])
    return "\n".join(lines)


def groups_text(search: ConfigSearch, args: list[str], template: str) -> str:
    """`  sampler: direct, fifo, … (in use: syncos)` for every group of the primary config's defaults list, and
    `  +experiment: …` for a group the template names as `+GROUP=` (added to a run rather than chosen)."""
    data = search.load(f"{search.primary}.yaml")
    chosen = {g: c for g, c in _defaults_choices(data, overrides=False).items() if not g.startswith("hydra")}
    for arg in overrides_only(args):
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in chosen:
            chosen[key.lstrip("+")] = value
    lines = [f"  {group}: {', '.join(search.options(group))} (in use: {choice})" for group, choice in chosen.items()]
    lines += [f"  +{group}: {', '.join(search.options(group))}" for group in search.groups()
              if group not in chosen and f"+{group}=" in template]
    return "\n".join(lines)


def help_page(config: str, args: list[str]) -> str:
    """The `--help` page of the command whose primary config is `config`, for its command line `args`."""
    search = ConfigSearch.of(args, config)
    primary = search.find(f"{search.primary}.yaml")
    text = primary.read_text(encoding="utf-8") if primary is not None else ""
    help_name = _defaults_choices(search.load(f"{search.primary}.yaml"), overrides=True).get("hydra/help", config)
    page = search.load(f"hydra/help/{help_name}.yaml")
    template = str(page.get("template", "$APP_CONFIG_GROUPS\n\n$OPTIONS"))
    for part in ("header", "footer"):
        template = template.replace(f"${{hydra.help.{part}}}", str(page.get(part, "")))  # `$$` stays escaped
    return string.Template(template).safe_substitute(
        APP_CONFIG_GROUPS=groups_text(search, args, template),
        OPTIONS=options_text(documented_options(text)),
    ).rstrip()

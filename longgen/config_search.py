"""The config directories Hydra will search for one command line, read before Hydra starts.

longgen checks `group=choice` and `key=value` overrides against the configs before Hydra runs (longgen/overrides.py),
so it must see what Hydra will see. Hydra's order (hydra/_internal/utils.py, config_loader_impl.py in 1.3): the
primary config's directory (the shipped `pkg://longgen.conf`, or `--config-path/-cp DIR`), then `--config-dir/-cd
DIR`, then the entries of `hydra.searchpath` (the command line's override, else the primary config's own); for
each config file the first directory holding it wins. A directory that cannot be read here (a package that does
not import, a structured-config source) is recorded as unseen: a choice missing from the readable ones is then left
to Hydra, which may find it there.

Hydra's own flags and their values are not overrides: `overrides_only` drops them (`-cd DIR`, `--config-name=x`,
`-sc install=bash`), so no check reads `install=bash` as an option.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from importlib.abc import Traversable

#: where longgen's own config groups live (pyproject maps conf/ to the package longgen.conf)
SHIPPED = "pkg://longgen.conf"
#: Hydra's flags followed by a value, by every spelling; the value is not an override
VALUE_FLAGS = {"--cfg": "cfg", "-c": "cfg", "--package": "package", "-p": "package",
               "--config-path": "config_path", "-cp": "config_path", "--config-name": "config_name",
               "-cn": "config_name", "--config-dir": "config_dir", "-cd": "config_dir",
               "--experimental-rerun": "experimental_rerun", "--info": "info", "-i": "info"}
#: `--info` takes a value only when one of these follows
INFO_WORDS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
#: Hydra's shell completion: a flag, then a `install=SHELL` / `uninstall=SHELL` / `query=SHELL` word
COMPLETION_FLAGS = {"-sc", "--shell-completion"}
COMPLETION_WORDS = ("install=", "uninstall=", "query=")


def takes_value(args: list[str], i: int) -> bool:
    """Whether the flag args[i] consumes args[i + 1]."""
    arg = args[i]
    if i + 1 >= len(args):
        return False
    if arg in ("--info", "-i"):
        return args[i + 1] in INFO_WORDS
    if arg in COMPLETION_FLAGS:
        return args[i + 1].startswith(COMPLETION_WORDS)
    return arg in VALUE_FLAGS


def flags_first(args: list[str]) -> list[str]:
    """The command line with Hydra's flags (and their values) before the overrides, in their own orders: Hydra's
    argparse reads the overrides as one run, so `generate backbone=tiny -m seed=0,1` printed its usage page and
    'unrecognized arguments: seed=0,1'."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        width = (2 if takes_value(args, i) else 1) if args[i].startswith("-") else 0
        if width:
            flags += args[i: i + width]
            i += width
        else:
            overrides.append(args[i])
            i += 1
    return flags + overrides


def split_flags(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the overrides, {flag's long name without dashes and with underscores: its value}) of a command line.
    `--config-dir=DIR` and `-cd DIR` are the same flag; a flag without a value maps to ''."""
    overrides, flags, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if arg.startswith("-") and eq and name in VALUE_FLAGS:
            flags[VALUE_FLAGS[name]] = inline
            i += 1
        elif arg in VALUE_FLAGS or arg in COMPLETION_FLAGS:
            key = VALUE_FLAGS.get(arg, "shell_completion")
            takes = takes_value(args, i)
            flags[key] = args[i + 1] if takes else ""
            i += 2 if takes else 1
        else:
            if arg.startswith("-"):
                flags[arg.lstrip("-").replace("-", "_")] = ""
            else:
                overrides.append(arg)
            i += 1
    return overrides, flags


def overrides_only(args: list[str]) -> list[str]:
    """The `key=value` / `group=choice` overrides of a command line, without Hydra's flags and their values."""
    return split_flags(args)[0]


def _entry_root(entry: str) -> Traversable | None:
    """The directory a search-path entry names (`pkg://module`, `file://dir` or a plain directory), or None where
    it cannot be read here."""
    scheme, sep, rest = entry.partition("://")
    if not sep:
        scheme, rest = "file", entry
    if scheme == "pkg":
        try:
            root = resources.files(rest.replace("/", ".").strip("."))
        except (ImportError, TypeError, ValueError):
            return None
        return root if root.is_dir() else None
    if scheme == "file":
        path = Path(rest).expanduser()
        return path if path.is_dir() else None
    return None


def _yaml(node: Traversable) -> dict:
    """The mapping a config file holds; UsageError naming the file where it is not YAML (a user's own file)."""
    import yaml

    from longgen.errors import UsageError

    try:
        data = yaml.safe_load(node.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{node} is not valid YAML{where}: {str(getattr(exc, 'problem', exc)).splitlines()[0]}") from None
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class ConfigSearch:
    """The readable config directories of one command line in Hydra's order, the primary config's name, and the
    search-path entries that could not be read here."""

    roots: tuple[Traversable, ...]
    primary: str
    unseen: tuple[str, ...] = ()

    @classmethod
    def of(cls, args: list[str], config: str) -> ConfigSearch:
        """The search path of `longgen COMMAND args` whose primary config is `config` (generate, extend, ...)."""
        overrides, flags = split_flags(args)
        primary = flags.get("config_name") or config
        entries = [flags["config_path"] if flags.get("config_path") else SHIPPED]
        if flags.get("config_dir"):
            entries.append(os.path.abspath(flags["config_dir"]))
        listed = _searchpath_override(overrides)
        if listed is None:
            hydra_node = cls._build(entries, primary).load(f"{primary}.yaml").get("hydra")
            listed = hydra_node.get("searchpath") if isinstance(hydra_node, dict) else None
        return cls._build(entries + list(listed or []), primary)

    @classmethod
    def _build(cls, entries: list, primary: str) -> ConfigSearch:
        roots, unseen = [], []
        for entry in entries:
            root = _entry_root(str(entry))
            if root is not None:
                roots.append(root)
            else:
                unseen.append(str(entry))
        return cls(tuple(roots), primary, tuple(unseen))

    def find(self, relative: str) -> Traversable | None:
        """The file Hydra would read for `relative` (e.g. 'backbone/tiny.yaml'), or None where no readable
        directory has it."""
        for root in self.roots:
            node = root.joinpath(*relative.split("/"))
            if node.is_file():
                return node
        return None

    def load(self, relative: str) -> dict:
        """The mapping a config file holds ({} where it is missing)."""
        node = self.find(relative)
        return _yaml(node) if node is not None else {}

    def options(self, group: str) -> list[str]:
        """The choices of a config group: its YAML files in every readable directory."""
        names = set()
        for root in self.roots:
            folder = root.joinpath(*group.split("/"))
            if folder.is_dir():
                names |= {p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")}
        return sorted(names)

    def groups(self) -> tuple[str, ...]:
        """The config groups: the folders of the readable directories (hydra/ holds Hydra's own settings)."""
        names = set()
        for root in self.roots:
            names |= {p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
        return tuple(sorted(names))


def _searchpath_override(overrides: list[str]) -> list[str] | None:
    """The entries of a `hydra.searchpath=[…]` override (it replaces the primary config's own), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for arg in overrides:
        if arg.partition("=")[0].lstrip("+") == "hydra.searchpath":
            try:
                value = OverridesParser.create().parse_override(arg).value()
            except HydraException:
                return None
            return [str(v) for v in value] if isinstance(value, list) else None
    return None


def check_search_path(args: list[str], config: str) -> str | None:
    """An error line for `--config-dir` / `--config-path` naming no directory, or a primary config they lack."""
    _, flags = split_flags(args)
    for key, flag in (("config_dir", "--config-dir"), ("config_path", "--config-path")):
        value = flags.get(key)
        if value is not None and not value:
            return f"{flag} needs a directory: {flag} DIR"
        if value and "://" not in value and not Path(value).expanduser().is_dir():
            return f"{flag} {value}: no such directory"
    search = ConfigSearch.of(args, config)
    if search.find(f"{search.primary}.yaml") is not None or search.unseen:
        return None
    if flags.get("config_name"):
        return f"--config-name {search.primary}: no {search.primary}.yaml on the config search path"
    return (f"--config-path {flags['config_path']} has no {search.primary}.yaml, the primary config of this "
            f"command: copy longgen's conf/ there, or add only your own group files with --config-dir DIR")


def compose_setup(args: list[str], config: str) -> tuple[Any, str, list[str]]:
    """How `hydra.compose` reads the configs `longgen COMMAND args` reads (for checks that compose jobs before
    Hydra runs them): the initialize context to enter (the shipped package, or the --config-path directory), the
    primary config's name, and the overrides that add --config-dir to the search path (a `hydra.searchpath`
    override, joined with the entries the command line or the primary config already list)."""
    from hydra import initialize_config_dir, initialize_config_module

    overrides, flags = split_flags(args)
    search = ConfigSearch.of(args, config)
    where = flags.get("config_path") or SHIPPED
    if where.startswith("pkg://"):
        context = initialize_config_module(where[len("pkg://"):].replace("/", "."), version_base="1.3")
    else:
        context = initialize_config_dir(os.path.abspath(where.removeprefix("file://")), version_base="1.3")
    if not flags.get("config_dir"):
        return context, search.primary, []
    listed = _searchpath_override(overrides)
    if listed is None:
        hydra_node = ConfigSearch._build([where], search.primary).load(f"{search.primary}.yaml").get("hydra")
        listed = hydra_node.get("searchpath") if isinstance(hydra_node, dict) else None
    entries = [f"file://{os.path.abspath(flags['config_dir'])}", *(listed or [])]
    quoted = ",".join("'" + str(e).replace("'", "\\'") + "'" for e in entries)
    return context, search.primary, [f"hydra.searchpath=[{quoted}]"]


def absolute_config_path(args: list[str]) -> list[str]:
    """`-cp DIR` with DIR relative to the working directory, as `--config-dir` is: Hydra reads a relative config
    path as relative to the module declaring @hydra.main, a folder inside the installed package."""
    out = list(args)
    for i, arg in enumerate(out):
        name, eq, inline = arg.partition("=")
        if arg in ("--config-path", "-cp") and i + 1 < len(out):
            target, value = i + 1, out[i + 1]
        elif eq and name in ("--config-path", "-cp"):
            target, value = i, inline
        else:
            continue
        if "://" in value or os.path.isabs(value):
            continue
        absolute = os.path.abspath(os.path.expanduser(value))
        out[target] = absolute if target != i else f"{name}={absolute}"
    return out


@contextlib.contextmanager
def shared_config_loads() -> Iterator[None]:
    """Within: every `hydra.compose` reads each config file once and hands each composition its own deep copy.

    Hydra's loader keeps loaded configs for one composition only, so a sweep's pre-check re-read and re-parsed the
    same YAML for every job (most of its time). The shared store is keyed on the config's path and on the search
    path it was looked up on (a `hydra.searchpath` override changes which file a path names), lives for the `with`
    block only (edits made after it are seen), and never hands out the stored object: a composition merges and may
    change what it loaded, so each composition gets its own copy, as if read afresh (one copy per path, kept for
    the rest of that composition, as Hydra's own cache does)."""
    from hydra._internal import config_loader_impl
    from hydra._internal.config_repository import CachingConfigRepository

    store: dict[tuple, Any] = {}

    class SharedLoads(CachingConfigRepository):
        def load_config(self, config_path: str) -> Any:  # Hydra's: the same object within one composition
            if f"config_path={config_path}" not in self.cache:
                sources = tuple((s.provider, s.scheme(), s.path) for s in self.get_sources())
                key = (sources, config_path)
                if key not in store:
                    store[key] = self.delegate.load_config(config_path=config_path)
                self.cache[f"config_path={config_path}"] = copy.deepcopy(store[key])
            return self.cache[f"config_path={config_path}"]

    original = config_loader_impl.CachingConfigRepository
    config_loader_impl.CachingConfigRepository = SharedLoads
    try:
        yield
    finally:
        config_loader_impl.CachingConfigRepository = original

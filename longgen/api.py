"""The Python API: `longgen.generate(...)`, `longgen.extend(...)`, `longgen.resume(...)`, `longgen.decode(...)` for
notebooks and services.

Each call is its command line run in this process: the overrides (strings as typed after the command, and keyword
arguments written into that form) pass the CLI's own checks (longgen/cli.py `command_line_problem`: unknown
options, groups, search path, run directory) and its quoting of free text, the config is composed with Hydra's
compose API from the same primary config (`--config-dir` / `--config-path` included), the run directory is made
as Hydra makes it, the log configured as Hydra configures it, and the same command function runs the same stages
(longgen/commands/, longgen/run/). A bad input raises `UsageError` (its message is the CLI's error line without
`longgen: error:`) and nothing is left behind, as on the command line; a failed run raises `RunFailure` or
`Interrupted`. The result is the run directory and its manifest.

    result = longgen.generate("backbone=tiny", "sampler=gen-l-video", prompt="a red fox", num_windows=2,
                              run_dir="outputs/fox")
    result.run_dir, result.manifest["seed"], result.video

Keyword values are written as on the command line: a str as typed (free text such as prompt= is quoted for you,
as the CLI does), bool as true/false, None as null, lists and dicts in Hydra's syntax; a dict of a group's options
becomes dotted keys (`sampler={"num_steps": 2}` → `sampler.num_steps=2`), except `story=`, which takes the story
itself as well as a path (a dict in the story file's form, or a Story: `story_option`). `run_dir=` is `hydra.run.dir=`,
`config_dir=` is `--config-dir`. One job per call: sweeps (-m) and several processes (gpus=N) stay with the CLI.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from longgen.config_search import absolute_config_path, compose_setup, overrides_only
from longgen.errors import UsageError
from longgen.overrides import AS_RECORDED_ENV, expand_home, fill_positional, hydra_quote, quote_free_text
from longgen.rundir import note_existing_dirs

__all__ = ["Result", "UsageError", "generate", "extend", "resume", "decode"]


@dataclass(frozen=True)
class Result:
    """A finished run: its directory and the manifest written there (manifest.json as a dict)."""

    run_dir: Path
    manifest: dict

    @property
    def video(self) -> Path | None:
        """The written video (generate: video.mp4; extend: extended.mp4), from the manifest's outputs."""
        name = (self.manifest.get("outputs") or {}).get("video")
        return self.run_dir / name if name else None


# ---------------------------------------------------------------------------------------------------- the calls
def generate(*overrides: str, **options: Any) -> Result:
    """`longgen generate OVERRIDES` in this process; returns the run directory and its manifest."""
    from longgen.commands.generate import run_generate

    options, story = story_option(options)
    with _composed("generate", list(overrides), options, story) as (cfg, out_dir, choices, hc):
        manifest = run_generate(cfg, out_dir, choices, hc)
        if cfg.get("eval"):
            from longgen.eval.evaluate import evaluate_run_dir

            evaluate_run_dir(str(out_dir))
    return Result(out_dir, manifest)


def extend(video: str | os.PathLike, *overrides: str, **options: Any) -> Result:
    """`longgen extend VIDEO OVERRIDES` in this process; returns the run directory and its manifest."""
    from longgen.commands.extend import run_extend

    args = [f"video={hydra_quote(str(video))}", *overrides]
    options, story = story_option(options)
    with _composed("extend", args, options, story) as (cfg, out_dir, choices, hc):
        manifest = run_extend(cfg, out_dir, choices, hc)
    return Result(out_dir, manifest)


def resume(run_dir: str | os.PathLike, *overrides: str, **options: Any) -> Result:
    """`longgen resume RUN_DIR OVERRIDES` in this process: an interrupted generate or extend run continued from its
    checkpoint (only the options that cannot change the result may be given, checkpoint.HARMLESS); returns the run
    directory and its manifest."""
    from longgen.commands.resume import log_name, run_resume
    from longgen.rundir import setup_logging

    path = given_path(run_dir, "the run directory to resume")
    check_override_strings(overrides)
    with caller_logging():  # the caller's logging, given back after the call (as generate's and extend's)
        setup_logging(path if path.is_dir() else None, log_name(path))  # as the command does (commands/resume.py)
        manifest = run_resume(path, [*overrides, *keyword_overrides(options)])
    return Result(Path(os.path.abspath(path)), manifest)


def decode(target: str | os.PathLike, *overrides: str, **options: Any) -> dict:
    """`longgen decode RUN_DIR|LATENTS.safetensors OVERRIDES` in this process; returns the written video's facts
    (path, frames, fps, width, height)."""
    from longgen.commands.decode import run_decode
    from longgen.rundir import setup_logging

    path = given_path(target, "the run directory or the latents file to decode")
    check_override_strings(overrides)
    with caller_logging():  # the caller's logging, given back after the call (as generate's and extend's)
        setup_logging(path if path.is_dir() else None, "decode")  # as the command does (longgen/commands/decode.py)
        return run_decode(path, [*overrides, *keyword_overrides(options)])


# ---------------------------------------------------------------------------------------------------- the command line
def story_option(options: dict[str, Any]) -> tuple[dict[str, Any], dict | None]:
    """`story=` given as the story itself — a dict in the story file's form, or a longgen.story.Story — split off
    the other options: checked as a story file is (UsageError naming what to change), relative image paths read
    from the working directory, and returned as the story file's JSON with `${` escaped, so that OmegaConf keeps
    the text as written. A path (or nothing) leaves the options as they are, with None."""
    from longgen.overrides import _no_interpolation
    from longgen.story import Story

    value = options.get("story")
    if isinstance(value, (list, tuple)):
        raise UsageError(f"story= takes a path to a story file or the story itself, a dict (or a Story), not a "
                         f"{type(value).__name__}: put the local prompts under `local`, e.g. "
                         f"story={{\"global\": \"a fox\", \"local\": [\"a fox sleeps\", \"a fox runs\"]}}")
    if not isinstance(value, (Mapping, Story)):
        return options, None
    data = value.to_dict() if isinstance(value, Story) else dict(value)
    story = Story.from_dict(data, where="story").with_images_under(Path.cwd())

    def escaped(item: Any) -> Any:
        if isinstance(item, str):
            return _no_interpolation(item)
        if isinstance(item, dict):
            return {key: escaped(v) for key, v in item.items()}
        return [escaped(v) for v in item] if isinstance(item, list) else item

    return {k: v for k, v in options.items() if k != "story"}, escaped(story.to_dict())


def keyword_overrides(options: dict[str, Any]) -> list[str]:
    """Keyword arguments as command-line overrides (module docstring)."""
    out = []
    for key, value in options.items():
        if key == "run_dir":
            key = "hydra.run.dir"
        if key == "config_dir":
            out += ["--config-dir", str(value)]
        elif isinstance(value, dict) and value:
            out += keyword_overrides({f"{key}.{k}": v for k, v in value.items()})
        else:
            out.append(f"{key}={_typed(value)}")
    return out


def _typed(value: Any) -> str:
    """A top-level value as a user would type it: text as is, the rest in Hydra's syntax."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return _hydra_value(value)


def _hydra_value(value: Any) -> str:
    """A value inside Hydra's override grammar: quoted text, true/false, null, [..], {k: v}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return hydra_quote(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    raise UsageError(f"{value!r} ({type(value).__name__}) is not an option value: use str, int, float, bool, None, "
                     f"a list or a dict")


def given_path(value: Any, what: str) -> Path:
    """The path a command takes first (resume's and decode's RUN_DIR), `~` expanded; anything else is one line."""
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{value!r} ({type(value).__name__}) is not a path: pass {what}")
    return Path(value).expanduser()


def check_override_strings(overrides: tuple | list) -> None:
    """Positional overrides are 'KEY=VALUE' strings, as typed after the command: anything else is one line."""
    for arg in overrides:
        if not isinstance(arg, str):
            raise UsageError(f"{arg!r} ({type(arg).__name__}) is not an override: pass 'KEY=VALUE' strings "
                             f"or KEY=value keyword arguments")


def command_line(command: str, overrides: list[str], options: dict[str, Any]) -> list[str]:
    """The overrides as the CLI passes them to Hydra after its checks (longgen/cli.py `main`), or UsageError."""
    from longgen.cli import COMMANDS, command_line_problem

    check_override_strings(overrides)
    rest = [*overrides, *keyword_overrides(options)]
    if "-m" in rest or "--multirun" in rest:
        raise UsageError(f"longgen.{command.replace('-', '_')} runs one job: sweep in a loop of calls, or with "
                         f"`longgen {command} -m`")
    for arg in overrides_only(rest):
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "gpus" and value.strip() not in ("1", "null"):
            raise UsageError(f"gpus={value} starts one process per GPU: run `longgen {command} gpus={value} ...` "
                             f"instead; longgen.{command} runs in this process")
    rest = expand_home(absolute_config_path(fill_positional(command, rest)))
    problem = command_line_problem(COMMANDS[command][1], rest)
    if problem:
        raise UsageError(problem)
    return rest if os.environ.get(AS_RECORDED_ENV) == "1" else quote_free_text(rest)


@contextlib.contextmanager
def _composed(command: str, overrides: list[str], options: dict[str, Any], story: dict | None = None) -> Iterator[tuple]:
    """The task config, run directory, group choices and Hydra config of one job, as `@hydra.main` and Hydra's
    `run_job` give them to the command: composed from the command's primary config (`story`, the story itself
    from `story_option`, set as its `story`), the run directory made (absolute), HydraConfig set for the call and
    restored after it, the log configured (console and the run directory's COMMAND.log)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log
    from omegaconf import OmegaConf, open_dict, read_write

    rest = command_line(command, overrides, options)
    note_existing_dirs(rest)
    context, primary, search_path = compose_setup(rest, command.replace("-", "_"))
    try:
        with context:
            cfg = compose(primary, overrides=overrides_only(rest) + search_path, return_hydra_config=True)
    except Exception as exc:  # Hydra's own composition errors (a value of the wrong type, ...)
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    if story is not None:
        if cfg.get("story") not in (None, ""):
            raise UsageError(f"story= is given twice (story={cfg.story} and the story itself): give it once")
        with open_dict(cfg):
            cfg.story = story
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        with caller_logging():  # the caller's logging, given back after the call
            out_dir = Path(os.path.abspath(str(OmegaConf.select(cfg, "hydra.run.dir"))))
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                cfg.hydra.runtime.output_dir = str(out_dir)
            HydraConfig.instance().set_config(cfg)
            hc = copy.deepcopy(cfg.hydra)
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            out_dir.mkdir(parents=True, exist_ok=True)
            configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
            yield task, out_dir, dict(hc.runtime.choices), hc
    finally:
        if previous is not None:
            HydraConfig.instance().set_config(previous)
        else:
            HydraConfig.instance().cfg = None


@contextlib.contextmanager
def caller_logging() -> Iterator[None]:
    """Keep the root logger's handlers and level as they are on entry; on exit close the handlers added inside (a
    run's console and its run directory's log file) and give the root logger back its own: a notebook's later
    messages must not land in the last run's log."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


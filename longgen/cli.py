"""`longgen COMMAND [hydra overrides]`: dispatch a subcommand to its `@hydra.main` function (longgen/commands/).

The command word is removed from argv so that Hydra sees only its own flags and overrides; `-m`, `--cfg job`,
`--help` and `hydra.run.dir=…` keep working after the command. Before Hydra starts, the command line is checked
and free text quoted (longgen/overrides.py); under torchrun or `gpus=N` the process joins its group first
(longgen/parallel/).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from pathlib import Path

from longgen import __version__
from longgen.config_search import COMPLETION_FLAGS, absolute_config_path, check_search_path, flags_first
from longgen.overrides import (
    AS_RECORDED_ENV,
    check_group_choices,
    check_option_keys,
    check_output_dir,
    expand_home,
    fill_positional,
    mixed_modes,
    not_utf8,
    quote_free_text,
    sweep_without_multirun,
    unreadable_override,
)
from longgen.redact import check_command_line
from longgen.rundir import note_existing_dirs

#: command → (module with a `main`, its primary Hydra config or None for commands that take a path first and
#: read their config from it, one-line description)
COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "generate": ("longgen.commands.generate", "generate", "sample a long video from a prompt or story into Hydra's run directory"),
    "split-prompt": ("longgen.commands.split_prompt", "split_prompt", "split a scenario into a global prompt and N local prompts (story.json)"),
    "resume": ("longgen.commands.resume", None, "continue an interrupted run from its checkpoint (bit-identical result)"),
    "decode": ("longgen.commands.decode", None, "write the video again from a run's saved latents (no sampling)"),
    "extend": ("longgen.commands.extend", "extend", "continue a video (any mp4) from its last frames: extended.mp4 + continuation.mp4"),
    "eval": ("longgen.commands.eval", "eval", "measure run directories, multirun directories or mp4 files; report for several"),
}

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
  longgen generate --config-dir my_conf backbone=my-backbone   (your own group files next to the shipped ones)
  eval "$(longgen -sc install=bash)"   (shell completion of commands, config groups and keys; zsh, fish too)
  longgen generate --help          (options of one command)
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, _, desc) in COMMANDS.items())
    return USAGE.format(commands=lines)


def join_processes(command: str) -> int | None:
    """Under torchrun, or as one of the processes `gpus=N` started: join the process group. Ranks > 0 follow rank
    0's jobs and return their exit status here (they never run Hydra); rank 0 and a process alone go on (None)."""
    from longgen.errors import RunFailure
    from longgen.parallel import units
    from longgen.run.follower import run_published_job

    try:
        group = units.attach()
    except RunFailure as exc:
        print(f"longgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if group is not None and group.rank != 0:
        return group.follow(run_published_job)
    return None


def one_process_only(command: str) -> str | None:
    """A command other than generate/resume under torchrun: each rank would run all of it alone, racing for the run
    directory's lock and leaving a half-started directory when torchrun stops the others; one line instead."""
    if command in ("generate", "resume") or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    return (f"longgen {command} runs in one process: start it without torchrun (only generate and resume run on "
            f"several processes)")


def start_processes(command: str, rest: list[str]) -> int | None:
    """`gpus=N` (N > 1): run this command as N processes, one per GPU, and return their exit status; None when
    this process runs it itself (gpus=1, or already one of several)."""
    from longgen.errors import UsageError
    from longgen.parallel import launcher

    try:
        return launcher.launch_if_asked(command, rest)
    except UsageError as exc:
        print(f"longgen: error: {exc}", file=sys.stderr)
        return exc.exit_code


RERUN_USAGE = """usage: longgen generate --rerun-failed SWEEP_DIR

Run a `longgen generate -m` sweep's failed jobs again, each in its own job directory (continued with `longgen
resume` where a checkpoint is kept, else generated anew with its overrides), and start the jobs it never ran or cut
mid-way; a failed job finished since by hand is recorded as done. sweep.json is rewritten."""


def rerun_failed_jobs(rest: list[str]) -> int:
    """`longgen generate --rerun-failed SWEEP_DIR`: the sweep's failed jobs run again, in their own directories."""
    from longgen.errors import user_errors
    from longgen.run.sweep import rerun_failed

    if rest in (["-h"], ["--help"]):
        print(RERUN_USAGE)
        return 0
    if len(rest) != 1 or rest[0].startswith("-"):
        print(f"longgen: error: {RERUN_USAGE.splitlines()[0]}", file=sys.stderr)
        return 2
    with user_errors():
        return rerun_failed(Path(rest[0]).expanduser())


#: options that only print (help pages, the composed config, Hydra's info, shell completion)
PRINT_ONLY = {"-h", "--help", "help", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version", *COMPLETION_FLAGS}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print_any_text()
    if argv is None and (not args or PRINT_ONLY & set(args)):
        end_quietly_on_a_closed_pipe()
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"longgen {__version__}")
        return 0
    if args[0] in COMPLETION_FLAGS:
        return refuse(problem) if (problem := completion_problem(args[1:])) else shell_completion(args[1:])
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"longgen: error: unknown command {command!r}; commands: {', '.join(COMMANDS)} (see longgen --help)", file=sys.stderr)
        return 2
    module_name, config, _ = COMMANDS[command]
    if problem := one_process_only(command):
        return refuse(problem) if os.environ.get("RANK", "0") == "0" else 2  # one line, from rank 0
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
    if problem := not_utf8(rest):  # before Hydra writes a config no UTF-8 file can hold
        return refuse(problem)
    if command == "generate" and rest[:1] == ["--rerun-failed"]:
        return rerun_failed_jobs(rest[1:])
    if "--rerun-failed" in rest:  # Hydra would read the sweep directory as an override
        return refuse(f"--rerun-failed takes no other option: {RERUN_USAGE.splitlines()[0].removeprefix('usage: ')}")
    if COMPLETION_FLAGS & set(rest):  # Hydra's shell completion runs no job: no checks, one script for `longgen`
        flag = next(i for i, arg in enumerate(rest) if arg in COMPLETION_FLAGS)
        if problem := completion_problem(rest[flag + 1:], command):
            return refuse(problem)
        return run_app(module_name, "longgen", flags_first(rest))
    rest = flags_first(expand_home(absolute_config_path(fill_positional(command, rest))))
    if problem := command_line_problem(config, rest):
        return refuse(problem)
    if "--help" in rest or "-h" in rest:  # a short page read from the configs (--hydra-help: Hydra's own)
        from longgen.command_help import help_page

        print(help_page(config, rest))
        return 0
    if os.environ.pop(AS_RECORDED_ENV, None) != "1":  # --rerun-failed passes a job's overrides as Hydra got them
        rest = quote_free_text(rest)
    # Hydra: a traceback / its grammar error, 2 lines / a five-line hint for `seed=0,1` without -m
    if problem := mixed_modes(rest) or unreadable_override(rest) or sweep_without_multirun(rest):
        return refuse(problem)
    note_existing_dirs(rest)  # before Hydra makes directories: clean-up never removes one that existed
    if command == "generate":
        return launch_generate(module_name, rest)
    return run_app(module_name, f"longgen {command}", rest)


def launch_generate(module_name: str, rest: list[str]) -> int:
    """`generate` once its command line passed the checks: a sweep's jobs are checked first; then the command runs
    as N processes (gpus=N; a bad option never starts them), or here, a sweep with its directory held."""
    multirun = "-m" in rest or "--multirun" in rest
    if multirun:
        from longgen.commands.generate import validate_sweep

        if problem := validate_sweep(rest):
            return refuse(problem)
    code = start_processes("generate", rest)
    if code is not None:
        return code
    return run_sweep(module_name, rest) if multirun else run_app(module_name, "longgen generate", rest)


def run_sweep(module_name: str, rest: list[str]) -> int:
    """`generate -m`: run the sweep with its `hydra.sweep.dir=` held (longgen/run/sweep.py `sweep_held`), so a second
    sweep into it started meanwhile is one line, not jobs that fail each other's."""
    from longgen.config_search import overrides_only
    from longgen.errors import UsageError
    from longgen.run.sweep import RUNNING, given_sweep_dir, interrupted_sweep, refuse_second_sweep, sweep_held

    given = given_sweep_dir(overrides_only(rest))
    RUNNING.clear()  # set when this sweep starts (an earlier one of this process is not named after a Ctrl-C)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(sweep_held(given[1] if given else None))
            refuse_second_sweep(overrides_only(rest))  # one that ended between the first check and the lock
        except UsageError as exc:
            return refuse(f"{exc}; no job was started")
        try:
            return run_app(module_name, "longgen generate", rest)
        except KeyboardInterrupt as exc:  # in the launching process (joblib, submitit): sweep.json said "not run"
            name = str(exc.args[0]) if exc.args and str(exc.args[0]) in ("SIGTERM", "SIGHUP") else "SIGINT"
            print(f"longgen: error: {interrupted_sweep(name)}", file=sys.stderr)
            return 128 + signal.Signals[name].value


def print_any_text() -> None:
    """A terminal whose encoding is not UTF-8 (a locale such as en_US in ISO-8859-1, or GBK) shows characters it
    lacks (a Chinese prompt, an emoji, a table's lines) as \\uXXXX escapes instead of a UnicodeEncodeError traceback
    after the work is done. Files are always UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors="backslashreplace")


def refuse(problem: str) -> int:
    """Print a command line's problem as longgen's one error line; the exit status for it."""
    print(f"longgen: error: {problem}", file=sys.stderr)
    return 2


def end_quietly_on_a_closed_pipe() -> None:
    """`longgen generate --help | head`: a reader that stops early ends the printing as it ends any Unix filter, by
    SIGPIPE, not with a BrokenPipeError traceback (Hydra prints its own for --cfg). Only for print-only options of
    the `longgen` program itself, never for a caller of main() in its own process. Nothing is written then."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def command_line_problem(config: str, rest: list[str]) -> str | None:
    """The first problem the checks before Hydra find on a command whose primary config is `config`, else None."""
    from longgen.errors import UsageError

    try:
        return (check_command_line(rest) or check_search_path(rest, config) or check_group_choices(rest, config)
                or check_option_keys(config, rest) or check_output_dir(rest))
    except UsageError as exc:  # a user's config file that is not YAML
        return str(exc)


def run_app(module_name: str, prog: str, rest: list[str]) -> int:
    """Run a command's `@hydra.main` function on `rest`, as the program `prog`."""
    module = importlib.import_module(module_name)
    sys.argv = [prog, *rest]
    module.main()
    return 0


#: the shells Hydra writes completion scripts for
SHELLS = ("bash", "zsh", "fish")


def completion_problem(args: list[str], command: str | None = None) -> str | None:
    """One line for a shell-completion request Hydra would answer with a traceback (a shell it has no script for, no
    install=/uninstall=/query= word, a query outside the completion script, which sets $COMP_LINE); else None."""
    word = args[0] if args else ""
    action, _, shell = word.partition("=")
    if action not in ("install", "uninstall", "query") or shell not in SHELLS:
        return (f"-sc takes install=SHELL, uninstall=SHELL or query=SHELL with SHELL one of {', '.join(SHELLS)}"
                f"{f', got {word!r}' if word else ''}: e.g. eval \"$(longgen -sc install=bash)\"")
    if action == "query" and command is not None and "COMP_LINE" not in os.environ:
        return (f"-sc {word} is what the completion script runs on TAB (it sets $COMP_LINE): install it with "
                f"eval \"$(longgen -sc install={shell})\"")
    return None


def shell_completion(args: list[str]) -> int:
    """`longgen -sc install=bash` (or zsh, fish; uninstall=…) prints Hydra's completion script for `longgen`. The
    script calls `longgen -sc query=SHELL` with the line typed so far in $COMP_LINE: the command word is completed
    here; after it, the command's Hydra app completes its config groups and keys (Hydra's own completion), given
    the line without the command word so that it reads only its own part."""
    word = args[0] if args else ""
    if not word.startswith("query="):
        return run_app(COMMANDS["generate"][0], "longgen", ["-sc", *args])
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) < 2 or (len(words) == 2 and not line.endswith(" ")):  # still typing the command
        typed = words[1] if len(words) == 2 else ""
        print("\n".join(name for name in COMMANDS if name.startswith(typed)))
        return 0
    module_name, config, _ = COMMANDS.get(words[1], (None, None, None))
    if config is None:  # an unknown word, or a command that takes a path: the shell completes file names
        return 0
    start = line.index(words[1], line.index(words[0]) + len(words[0]))
    os.environ["COMP_LINE"] = line[:start] + line[start + len(words[1]):].lstrip(" ")
    point = os.environ.get("COMP_POINT", "")
    if point.isdigit():
        os.environ["COMP_POINT"] = str(max(0, int(point) - (len(line) - len(os.environ["COMP_LINE"]))))
    return run_app(module_name, "longgen", ["-sc", word])


if __name__ == "__main__":
    sys.exit(main())

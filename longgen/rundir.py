"""The run directory: atomic output files, one process at a time, finished work never overwritten.

- `atomic_file(path)`: a unique temporary file created next to `path` (mkstemp: O_CREAT|O_EXCL, so it never
  follows a planted symlink and two runs never share it), renamed over `path` only when the block completes; on any
  error, interrupt or exit it is removed. A SIGKILL can leave one hidden `.NAME.*.tmp*` file behind, never a
  truncated file under the final name; `remove_stale_temps` clears such leftovers when the directory is next used.
- `RunDirectory.claim()`: an exclusive `flock` on `.longgen.lock` for the life of the process, so a second run
  into the same directory stops with one line instead of interleaving its files with the first's.
- `check_fresh()`: a directory holding a finished video, final latents or an unfinished run's checkpoint is
  refused (`overwrite=true` to replace it, `longgen resume DIR` to continue it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from longgen.errors import UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

LOCK_NAME = ".longgen.lock"
CHECKPOINT = "checkpoint.safetensors"
LATENTS = "latents.safetensors"
#: files a finished or interrupted run leaves, which a new run must not silently replace
OUTPUTS = ("manifest.json", LATENTS, CHECKPOINT)
#: the other files a run writes into its directory by name (renamed into place: a folder there stops the write)
WRITTEN = ("story.json", "preview.jpg", "eval.json", "extended.mp4", "continuation.mp4")
_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp(\.[a-z0-9]+)?$")


#: the directories that existed when this command started, among the run or sweep directory given on the command
#: line and their parents, by identity (device:inode, so `../x`, `x/..` or a link naming one still matches it);
#: kept in the environment so a sweep's worker processes see it too. Clean-up after an early input error removes
#: only directories this command made (issue 28: a typo once deleted a user's folder). "*": a directory given
#: through an interpolation, or a process started without the longgen command (the variable unset), so unknown:
#: nothing is removed.
EXISTING_DIRS_ENV = "LONGGEN_EXISTING_DIRS"


def note_existing_dirs(args: list[str]) -> None:
    """Before Hydra makes any directory: remember which of the given run/sweep directories (and their parents)
    already exist."""
    cwd = Path.cwd()
    existing = [_identity(d) for d in (cwd, *cwd.parents)]
    for base in ("outputs", "multirun"):  # the default directories' bases and what is under them (DATE, extend/, …)
        with contextlib.suppress(OSError):
            existing += [_identity(d) for d in (cwd / base, *(cwd / base).iterdir()) if d.is_dir()]
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir"):
            continue
        if "${" in value:
            existing.append("*")
            continue
        path = Path(os.path.abspath(value.strip("'\"")))  # as Hydra makes it: `..` folded (`~` expanded before)
        existing += [_identity(d) for d in (path, *path.parents) if d.is_dir()]
    os.environ[EXISTING_DIRS_ENV] = json.dumps(existing)


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def made_by_this_command(path: Path) -> bool:
    """Whether the directory `path` did not exist before this command started (see note_existing_dirs)."""
    existing = json.loads(os.environ.get(EXISTING_DIRS_ENV, '["*"]'))
    try:
        return "*" not in existing and _identity(Path(path)) not in existing
    except OSError:
        return False


def discard_if_unused(out_dir: Path, hydra_subdir: bool = False) -> None:
    """After an input error caught before any work: remove the run directory Hydra made for this command, if it
    holds nothing but this run's log (and its parent date folder, if this command made it and it is empty then).
    A directory that existed before the command (a user's folder given as hydra.run.dir=, `.`) is never removed.
    hydra_subdir: the command lets Hydra write `.hydra/` at start (split-prompt, eval), which then counts as unused
    too."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out_dir:
            handler.close()
    if not made_by_this_command(out_dir):
        return
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return
    if all((e.is_file() and e.suffix == ".log") or (hydra_subdir and e.name == ".hydra") for e in entries):
        shutil.rmtree(out_dir, ignore_errors=True)
        parent = out_dir.parent
        while made_by_this_command(parent):  # every level Hydra made (outputs/DATE, new/folders/…), if empty
            try:
                parent.rmdir()  # only succeeds when empty
            except OSError:
                break
            parent = parent.parent


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path in path's directory; rename it to `path` when the block ends without error.
    `suffix` is appended to the temporary name (e.g. ".mp4" so that ffmpeg picks the container)."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)  # replaces a symlink at `path` itself, never its target
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: Path, data: bytes | Sequence[bytes | memoryview]) -> None:
    """`data` (bytes, or buffers written one after another: no joined copy of a large file in memory) into the file
    at `path` (a temporary of atomic_file), flushed to the disk before it is renamed."""
    with open(path, "wb") as f:
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: object) -> None:
    """JSON with finite numbers only (allow_nan=False: NaN/inf would make invalid JSON)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 16 MiB chunks (the recorded identity of an input: a LoRA file, the video
    `longgen extend` continues)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temps(directory: Path) -> list[str]:
    """Delete temporary files that a killed run left in `directory` (call only while holding its lock)."""
    removed = []
    for entry in directory.iterdir():
        if entry.is_file() and _TEMP.match(entry.name):
            entry.unlink()
            removed.append(entry.name)
    return removed


def check_writable_dir(path: Path, what: str) -> None:
    """One line when `path` cannot become a writable directory: it is a file, lies under a file, or its nearest
    existing ancestor is read-only."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what}={path} is a file, not a directory: pick another directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what}={path} lies under the file {probe}: pick another directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what}={path}: {probe} is not writable: pick a writable directory")
    try:  # what access() cannot see: a read-only file system, /proc or /sys, root's writes refused
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".longgen-probe-"))
    except OSError as exc:
        raise UsageError(f"{what}={path}: cannot create a directory in {probe} ({exc.strerror}): pick a writable "
                         f"directory") from None


#: a sweep's ledger (one JSON line per finished job attempt, longgen/run/sweep.py) and its summary
LEDGER = "sweep-jobs.jsonl"
SUMMARY = "sweep.json"
#: held by the process running a sweep or its --rerun-failed (longgen/run/sweep.py `sweep_held`)
SWEEP_LOCK = ".longgen-sweep.lock"
#: what a sweep writes into an existing name of its directory: Hydra's multirun.yaml (opened, following links),
#: longgen's ledger (appended) and its lock (opened)
SWEEP_FILES = ("multirun.yaml", LEDGER, SWEEP_LOCK)


def read_ledger(sweep_dir: Path, since: int = 0) -> dict[int, dict]:
    """The latest outcome of every job of the sweep, by job number; `requeues`: how often the scheduler's job was
    requeued before it (when it was). `since`: only the lines from that byte on (a line's start: what a launch's
    jobs wrote, the ledger's size when they were submitted)."""
    jobs: dict[int, dict] = {}
    requeues: dict[int, int] = {}
    path = Path(sweep_dir) / LEDGER
    if path.is_file():
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8")
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                number = int(entry["job"])
                # a requeue that submitit then refused (longgen/run/preemption.py `requeue`) did not happen
                requeues[number] = (requeues.get(number, 0) + (entry["status"] == "requeued")
                                    - bool(entry.get("requeue_refused")))
                jobs[number] = {**entry, **({"requeues": requeues[number]} if requeues[number] else {})}
    return jobs


def holds_finished_run(run_dir: Path) -> bool:
    """Whether a run directory holds a finished run: its manifest, and no checkpoint of an unfinished one."""
    return (run_dir / "manifest.json").is_file() and not (run_dir / CHECKPOINT).is_file()


def refuse_sweep_links(path: Path) -> None:
    """A sweep never writes outside its directory: one line if a symbolic link was planted under a name it writes."""
    _refuse_links(Path(path), lambda entry: entry.name in SWEEP_FILES, "sweep")


def refuse_run_links(path: Path) -> None:
    """A run never writes outside its directory: refuse symbolic links where longgen or Hydra writes into or appends
    to an existing name (`.hydra/`, the logs). Final files are written by renaming a new file over the name, which
    replaces a link rather than following it. Checked before Hydra starts (every command) and again at claim."""
    _refuse_links(Path(path), lambda entry: entry.name == ".hydra" or entry.suffix == ".log", "run")
    if not Path(path).is_dir():
        return
    # a file named .hydra, or a folder named like a log: Hydra's makedirs / the log's open would be a traceback
    wrong = sorted(entry.name for entry in Path(path).iterdir() if not entry.is_symlink() and (
        (entry.name == ".hydra" and not entry.is_dir()) or (entry.suffix == ".log" and entry.is_dir())))
    if wrong:
        raise UsageError(f"{path} holds {', '.join(wrong)} of the wrong kind (.hydra must be a folder, a .log a "
                         f"file): move it away, or pick another run directory (hydra.run.dir=…)")


def _refuse_links(path: Path, written: Callable[[Path], bool], kind: str) -> None:
    """One line naming the symbolic links in `path` whose names longgen or Hydra writes through (`written`)."""
    if not path.is_dir():
        return
    planted = sorted(entry.name for entry in path.iterdir() if entry.is_symlink() and written(entry))
    if planted:
        raise UsageError(f"{path} holds symbolic links where longgen writes ({', '.join(planted)}): remove them or "
                         f"pick another {kind} directory")


def lock_exclusively(fd: int, busy: str) -> None:
    """An exclusive, non-blocking flock on the open file `fd` (dropped when it is closed): UsageError(busy) when
    another process holds it; another failure (a filesystem without flock) as the OSError it is."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise UsageError(busy) from None
        raise


class RunDirectory:
    """A run directory held by this process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def claim(self) -> "RunDirectory":
        """Take the directory's lock (held until the process exits or `release`); one line if another run has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot lock the run directory {self.path}: {exc.strerror}") from None
        try:
            lock_exclusively(fd, f"another longgen run is using {self.path}: wait for it to finish or pick another "
                                 f"directory (hydra.run.dir=…)")
        except (OSError, UsageError):
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        try:
            refuse_run_links(self.path)
        except UsageError:
            self.release()
            raise
        remove_stale_temps(self.path)
        return self

    def in_use(self) -> bool:
        """Whether another process holds this directory's lock now, probed without changing a byte of it (a
        shared, non-blocking flock on the lock file, let go at once)."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EACCES)
        finally:
            os.close(fd)  # closing drops a lock taken here

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def existing_outputs(self, video_name: str) -> list[str]:
        names = [video_name, *OUTPUTS]
        return [n for n in names if (self.path / n).exists()]

    def check_fresh(self, video_name: str, overwrite: bool) -> None:
        """Refuse a directory that holds another run's results, unless `overwrite` (then remove them), and one
        holding a folder (or anything but a file) under a name the run writes, which no rename can replace."""
        blocked = [n for n in dict.fromkeys([video_name, *OUTPUTS, *WRITTEN])
                   if (self.path / n).exists() and not (self.path / n).is_file()]
        if blocked:
            raise UsageError(f"{self.path} holds {', '.join(blocked)} as a folder (or other non-file) where the run "
                             f"writes a file: move it away, or pick another directory (hydra.run.dir=…)")
        found = self.existing_outputs(video_name)
        if not found:
            return
        if not overwrite:
            if CHECKPOINT in found and video_name not in found:
                raise UsageError(
                    f"{self.path} holds an unfinished run ({CHECKPOINT}): continue it with `longgen resume {shlex.quote(str(self.path))}`, "
                    f"or pass overwrite=true to start over there"
                )
            raise UsageError(
                f"{self.path} already holds a finished run ({', '.join(found)}): pick another directory or pass "
                f"overwrite=true to replace it"
            )
        for name in [*found, *self.previous_extras()]:
            (self.path / name).unlink(missing_ok=True)

    def previous_extras(self) -> list[str]:
        """What else the previous run wrote here, removed by overwrite=true so the new run never shows or names it:
        its evaluation, preview and the other files its manifest lists (extend's second video, say)."""
        names = {"eval.json", "preview.jpg"}
        with contextlib.suppress(OSError, ValueError, AttributeError):
            outputs = json.loads((self.path / "manifest.json").read_text(encoding="utf-8")).get("outputs", {})
            names |= {v for v in outputs.values() if isinstance(v, str) and "/" not in v and not v.startswith(".")}
        return sorted(n for n in names if (self.path / n).is_file() and not (self.path / n).is_symlink())


# ---------------------------------------------------------------------------------------------------- saved config
def load_run_config(run_dir: Path) -> tuple[DictConfig, dict[str, str]]:
    """The resolved config a run was made with (.hydra/config.yaml) and its group choices (.hydra/hydra.yaml)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory: give the run directory of a `longgen generate` run")
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a longgen run directory (no .hydra/config.yaml)")
    try:
        cfg = OmegaConf.load(path)
        choices = {}
        hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
        if hydra_yaml.is_file():
            choices = dict(OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices") or {})
    except Exception as exc:
        raise UsageError(f"{path} cannot be read ({str(exc).splitlines()[0][:120]}): the run directory is damaged") from None
    return cfg, {k: str(v) for k, v in choices.items()}


def option_after_path(item: str, command: str) -> tuple[str, str]:
    """KEY (a leading + dropped) and VALUE of a KEY=VALUE option given after `longgen COMMAND PATH`; one line
    otherwise."""
    key, sep, value = item.partition("=")
    key = key.lstrip("+")
    if not sep or not key:
        raise UsageError(f"`longgen {command}` takes KEY=VALUE options after the path, got {item!r}")
    return key, value


def names_option(key: str, options: Iterable[str]) -> bool:
    """`key` is one of `options` or a key under one (writer.crf under writer)."""
    return any(key == option or key.startswith(option + ".") for option in options)


def apply_overrides(cfg: DictConfig, overrides: list[str], allowed: tuple[str, ...], command: str) -> list[str]:
    """Apply `key=value` overrides (values parsed as YAML, like Hydra's) whose key is under one of `allowed`
    (e.g. "writer" allows writer.crf); anything else is one line. Returns the applied overrides."""
    import yaml
    from omegaconf import OmegaConf

    applied = []
    for item in overrides:
        key, value = option_after_path(item, command)
        if not names_option(key, allowed):
            raise UsageError(
                f"`longgen {command}` cannot change {key}: it would change the result or does not apply; "
                f"allowed: {', '.join(allowed)}"
            )
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        if OmegaConf.is_dict(OmegaConf.select(cfg, key)) and not isinstance(parsed, dict):
            raise UsageError(f"`longgen {command}` keeps the run's {key} config and cannot choose another ({item}): "
                             f"change its options instead, as {key}.KEY=VALUE")
        OmegaConf.update(cfg, key, parsed, merge=True, force_add=True)
        applied.append(f"{key}={value}")
    return applied


class RunLog(logging.FileHandler):
    """The run's log file (generate.log, …), appended and never opened through a symbolic link: a link planted
    under the log's name would carry the log outside the run directory. Such a link gets nothing (the run is then
    refused with one line when it claims the directory, refuse_run_links). Nor does a directory that an input error
    removed before the first line was written (a sweep job whose split failed: the error is then recorded in the
    sweep's ledger, and logging must neither fail nor make the directory again).

    A directory that already held another command's files when the handler was made (an earlier run's log, lock or
    results: `longgen decode`/`resume` of a run, a run given hydra.run.dir= of an existing one) is not written
    until this command owns it (own_run_log, once its checks pass): the records wait in memory, so a command
    refused there leaves that directory as it was."""

    def __init__(self, filename, *args, **kwargs) -> None:
        kwargs["encoding"] = kwargs.get("encoding") or "utf-8"  # as every file longgen writes, whatever the locale
        super().__init__(filename, *args, **kwargs)
        try:
            names = [entry.name for entry in Path(self.baseFilename).parent.iterdir()]
        except OSError:  # no directory yet
            names = []
        self._held: list[logging.LogRecord] | None = [] if any(n != ".hydra" for n in names) else None

    def emit(self, record: logging.LogRecord) -> None:
        if self._held is None:
            super().emit(record)
        else:
            self._held.append(record)

    def write_held(self) -> None:
        """Write the records kept while the directory was not this command's, in order; from now on write them."""
        with self.lock:
            held, self._held = self._held or [], None
            for record in held:
                super().emit(record)

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags, 0o666)
        except OSError as exc:
            removed = exc.errno == errno.ENOENT and not os.path.isdir(os.path.dirname(self.baseFilename))
            if exc.errno != errno.ELOOP and not removed:
                raise
            return open(os.devnull, "a", encoding=self.encoding)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def own_run_log(run_dir: Path) -> None:
    """This command's checks passed and it works in `run_dir` now: its log records go to the run's log file there
    (those kept so far first)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLog) and os.path.dirname(handler.baseFilename) == os.path.abspath(run_dir):
            handler.write_held()


def setup_logging(run_dir: Path | None, name: str = "generate") -> None:
    """For commands that run without Hydra (resume, decode): the Rich console handler and the run's log file
    (appended), as conf/hydra/job_logging/rich.yaml sets them up for generate. A directory that is not a run
    directory (no .hydra/config.yaml: the command refuses it) gets no log file, so nothing is left in it."""
    from longgen.progress import rich_handler

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    from longgen.redact import RedactFilter

    console = rich_handler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(RedactFilter())
    root.addHandler(console)
    if run_dir is None or not (Path(run_dir) / ".hydra" / "config.yaml").is_file():
        return
    file_handler = RunLog(Path(run_dir) / f"{name}.log", mode="a", delay=True)
    file_handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    file_handler.addFilter(RedactFilter())
    root.addHandler(file_handler)

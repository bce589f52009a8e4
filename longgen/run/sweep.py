"""A sweep (`longgen generate -m …`) survives a failed job, says what failed, and can re-run only those jobs.

- Each job of a multirun runs inside `recorded_job`: a job that fails (a bad input, out of memory, a full disk, a
  failed LLM split, any exception) prints its one error line, leaves it in its log, is recorded in the sweep's
  ledger, and the launcher goes on with the next job (Hydra's basic launcher and joblib both stop at the first
  job that raises). Ctrl-C/SIGTERM still stops the whole sweep, after the running job saved its checkpoint.
- The ledger is `SWEEP_DIR/sweep-jobs.jsonl`: one JSON line per finished job (appended by whichever process ran
  it, so joblib's workers write it too): job number, overrides, run directory, status, error line.
- A job on a scheduler (hydra/launcher=submitit_slurm, longgen/run/preemption.py) that is preempted is recorded as
  `requeued` and continues in a later attempt, which records its own outcome; sweep.json lists every job that was
  requeued at least once (`requeued`, with the count in its entry) besides done / failed / not run.
- `SweepSummary` (a Hydra callback, conf/generate.yaml) writes `SWEEP_DIR/sweep.json` (done / failed / not run)
  when the sweep starts (every job not run), when a job is interrupted and at the end; at the end it logs one
  line per failed job and makes the command exit with status 1 if any job failed.
- `longgen generate --rerun-failed SWEEP_DIR` runs each failed job again in its own job directory — continuing
  it with `longgen resume` where a checkpoint is kept, else generating it anew with the job's overrides — and
  rewrites the ledger and sweep.json with the new outcomes. It also starts the jobs of the sweep that never ran
  (no line in the ledger: the sweep was stopped before them, or a scheduler's job and the process awaiting it both
  died): their overrides and directories come from the sweep's multirun.yaml, the way Hydra made them; a job whose
  directory holds a finished run (a manifest) is recorded as done, one with a checkpoint is resumed. The last line
  says how many jobs of each kind it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from longgen.errors import Interrupted, RunFailure, UsageError
from longgen.overrides import unquoted
from longgen.redact import scrub
from longgen.rundir import (
    CHECKPOINT,
    LEDGER,
    SUMMARY,
    SWEEP_LOCK,
    RunDirectory,
    holds_finished_run,
    lock_exclusively,
    read_ledger,
    refuse_sweep_links,
    write_json,
)
from longgen.story import cut

log = logging.getLogger("longgen")
#: the longest file or folder name common file systems take (ext4, XFS, btrfs, APFS, NTFS: 255 bytes or UTF-16 units)
NAME_MAX = 255


# ---------------------------------------------------------------------------------------------------- one job
@contextlib.contextmanager
def recorded_job(hc: Any) -> Iterator[None]:
    """Run one multirun job; record its outcome in the sweep's ledger; a failure does not end the sweep."""
    # unresolved: a prompt's escaped `\${…}` read through the config would lose its escape (and re-run differently)
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]
    entry = {"job": int(hc.job.num), "overrides": overrides, "run_dir": str(hc.runtime.output_dir)}
    ledger = Path(str(hc.sweep.dir)) / LEDGER
    try:
        yield
    except (Interrupted, KeyboardInterrupt):
        append_entry(ledger, {**entry, "status": "interrupted"})
        write_summary(ledger.parent, read_ledger(ledger.parent))  # the later jobs listed as not run
        raise  # the caller's user_errors prints it and ends the sweep
    except (UsageError, RunFailure) as exc:
        _failed(ledger, entry, str(exc))
    except Exception as exc:  # a bug or an unexpected library error: its traceback goes to the job's log only
        log.debug("job %d failed:\n%s", entry["job"], traceback.format_exc())
        _failed(ledger, entry, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    else:
        append_entry(ledger, {**entry, "status": "done"})


def _failed(ledger: Path, entry: dict, line: str) -> None:
    line = scrub(line)
    log.error("sweep job %d failed: %s", entry["job"], line)
    print(f"longgen: error: sweep job {entry['job']} ({' '.join(entry['overrides'])}): {line}", file=sys.stderr)
    append_entry(ledger, {**entry, "status": "failed", "error": line})


def append_entry(ledger: Path, entry: dict) -> None:
    """One line, appended with a single write (O_APPEND): lines of concurrent workers never interleave."""
    ledger.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def write_summary(sweep_dir: Path, jobs: dict[int, dict], planned: int | None = None) -> dict:
    """sweep.json: jobs done, failed (or interrupted) and not run, and those requeued by a scheduler on the way
    (a requeued job is also done or failed once its last attempt ended; until then it is only requeued); `planned`
    (the sweep's job count) is kept from the summary written when the sweep started when not given."""
    if planned is None:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            planned = int(json.loads((sweep_dir / SUMMARY).read_text(encoding="utf-8"))["planned"])
    done = [j for j in sorted(jobs) if jobs[j]["status"] == "done"]
    failed = [j for j in sorted(jobs) if jobs[j]["status"] not in ("done", "requeued")]
    requeued = [j for j in sorted(jobs) if jobs[j].get("requeues")]
    not_run = [j for j in range(planned) if j not in jobs] if planned is not None else []
    summary = {"planned": planned, "done": done, "requeued": requeued, "failed": failed, "not_run": not_run,
               "jobs": [jobs[j] for j in sorted(jobs)]}
    write_json(sweep_dir / SUMMARY, summary)
    return summary


# ---------------------------------------------------------------------------------------------------- the sweep
def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, by job number, as Hydra's basic sweeper splits the sweep's (`config`: the sweep's)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
    loader = _sweep_loader(config) if any("glob(" in o for o in overrides) else None  # glob() lists a group
    batches = BasicSweeper.split_arguments(OverridesParser.create(loader).parse_overrides(overrides), None)
    return [list(job) for batch in batches for job in batch]


def job_subdir(loader: Any, config: DictConfig, overrides: list[str], number: int) -> str:
    """Job `number`'s directory under the sweep directory (hydra.sweep.subdir), as its own process names it:
    composed by `loader` (Hydra's config loader) from the sweep's `config` and the job's overrides."""
    return composed_subdir(loader.load_sweep_config(config, list(overrides)), number)


def composed_subdir(job: DictConfig, number: int) -> str:
    """hydra.sweep.subdir of job `number`, whose config (Hydra's included) is `job`, as Hydra's launcher names it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with open_dict(job.hydra.job):
        job.hydra.job.num = number
    hydra = HydraConfig.instance()
    saved = hydra.cfg
    try:
        hydra.set_config(job)  # the subdir reads hydra:runtime.choices
        return str(OmegaConf.select(job, "hydra.sweep.subdir"))
    finally:
        hydra.cfg = saved


def check_job_dirs(subdirs: list[str], written: str) -> None:
    """Before a sweep starts: each job's hydra.sweep.subdir (by job number) must name its own folder inside the sweep
    directory. A subdir shared by two jobs made the second fail after its model loaded (or, with overwrite=true,
    replace the first's video); one outside the sweep directory is not found by `longgen eval SWEEP_DIR`.
    `written`: the subdir as the command line or config wrote it."""
    seen: dict[str, int] = {}
    for number, subdir in enumerate(subdirs):
        norm = os.path.normpath(subdir) if subdir else "."
        if os.path.isabs(norm) or norm == "." or norm.split(os.sep)[0] == "..":
            raise UsageError(f"hydra.sweep.subdir={written} puts job {number} in {subdir!r}, not in a folder of its "
                             f"own inside hydra.sweep.dir: give a relative subdir naming each job, e.g. "
                             f"hydra.sweep.subdir='${{hydra.job.num}}_${{hydra:runtime.choices.sampler}}'")
        if norm in seen:
            raise UsageError(f"hydra.sweep.subdir={written} gives jobs {seen[norm]} and {number} the same directory "
                             f"{subdir!r}: include ${{hydra.job.num}} in it, e.g. "
                             f"hydra.sweep.subdir='${{hydra.job.num}}_${{hydra:runtime.choices.sampler}}'")
        seen[norm] = number
        longest = max(norm.split(os.sep), key=lambda name: len(name.encode("utf-8")))
        if (size := len(longest.encode("utf-8"))) > NAME_MAX:
            raise UsageError(f"hydra.sweep.subdir={cut(written)} gives job {number} a folder name of "
                             f"{size} bytes ({cut(longest, 30)}), over the limit of {NAME_MAX} "
                             f"of file systems (a Chinese or Japanese character is 3 bytes): name jobs by short "
                             f"values, e.g. hydra.sweep.subdir='${{hydra.job.num}}_${{hydra:runtime.choices.sampler}}'")


def _sweep_loader(config: DictConfig) -> Any:
    """Hydra's config loader over the config sources the sweep was composed from (its multirun.yaml's)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins

    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's resolvers (hydra:, now:)
    Plugins.instance()  # registers the config sources (pkg://, file://, structured://)
    register_launcher(str(config.hydra.launcher.get("_target_", "")))
    search = ConfigSearchPathImpl()
    for source in config.hydra.runtime.config_sources:
        search.append(str(source.provider), f"{source.schema}://{source.path}")
    return ConfigLoaderImpl(config_search_path=search)



def register_launcher(target: str) -> None:
    """Make longgen's submitit launchers (hydra_plugins/longgen_submitit, longgen/run/preemption.py) known to Hydra
    before it instantiates the sweep's launcher: Hydra finds plugins by listing the hydra_plugins package, which
    cannot see a package behind setuptools' editable-install finder (`pip install -e`)."""
    if not target.startswith("hydra_plugins.longgen_submitit."):
        return
    import hydra_plugins.longgen_submitit as ours
    from hydra.core.plugins import Plugins

    for launcher in (ours.LocalLauncher, ours.SlurmLauncher):
        Plugins.instance().register(launcher)


def given_sweep_dir(args: list[str]) -> tuple[str, Path] | None:
    """(as typed, as a path) of the command line's `hydra.sweep.dir=`; None when not given or interpolated (Hydra
    makes it new at each start)."""
    given = [a.partition("=")[2] for a in args if a.partition("=")[0] == "hydra.sweep.dir"]
    if not given or "${" in given[-1]:
        return None
    raw = unquoted(given[-1])  # quoted for Hydra
    return raw, Path(raw).expanduser()


@contextlib.contextmanager
def sweep_held(sweep_dir: Path | None, what: str = ", or give a new hydra.sweep.dir=") -> Iterator[None]:
    """Hold the sweep directory (an exclusive flock on SWEEP_DIR/.longgen-sweep.lock) while a sweep or its
    --rerun-failed runs: two started at once into one directory numbered their jobs alike, wrote one ledger and
    each failed the other's jobs. One line when another holds it. A filesystem without flock is left unlocked."""
    if sweep_dir is None:
        yield
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    refuse_sweep_links(sweep_dir)  # a link planted as the lock: one line, not ELOOP's traceback
    fd = os.open(sweep_dir / SWEEP_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock: left unlocked
            lock_exclusively(fd, f"{sweep_dir} is in use by another sweep or --rerun-failed of it: wait for it to "
                                 f"end{what}")
        yield
    finally:
        os.close(fd)  # closing drops the flock


def refuse_second_sweep(args: list[str]) -> None:
    """A sweep into a `hydra.sweep.dir=` that holds another sweep (its sweep.json or ledger) would rewrite that
    sweep's summary, so its finished jobs read as failed and --rerun-failed points at them: refused before any job.
    `args`: the command line's overrides; an interpolated directory is left to Hydra (it is new each start)."""
    if (given := given_sweep_dir(args)) is None:
        return
    raw, sweep_dir = given
    found = [name for name in (SUMMARY, LEDGER) if (sweep_dir / name).exists()]
    if found:
        raise UsageError(f"hydra.sweep.dir={raw} already holds a sweep ({', '.join(found)}): give a new "
                         f"hydra.sweep.dir=, or run its failed jobs again with `longgen generate --rerun-failed "
                         f"{shlex.quote(str(sweep_dir))}`")


#: the sweep directory ("dir") and Hydra launcher ("launcher") of the sweep this process runs (set when it starts),
#: for the line after a Ctrl-C
RUNNING: dict[str, Any] = {}


def interrupted_sweep(name: str = "SIGINT") -> str:
    """The line for a sweep that Ctrl-C stopped in the launching process (joblib's workers are stopped with it,
    without the step-end of a job run in this process; a submitit job is not: it runs on, and records its outcome):
    sweep.json rewritten from the ledger, and how to go on."""
    sweep_dir = RUNNING.get("dir")
    if sweep_dir is None:
        return f"interrupted ({name}) before the sweep started; no job was run"
    summary = write_summary(sweep_dir, read_ledger(sweep_dir))
    if RUNNING.get("launcher", "").startswith("hydra_plugins.longgen_submitit."):  # the scheduler's jobs, not ours
        return (f"sweep interrupted ({name}) while it awaited its submitit jobs: {len(summary['done'])} done so far; "
                f"the jobs still running go on without it (SLURM's: scancel them to stop them) and record their "
                f"outcome in {sweep_dir / LEDGER}; once they have ended, finish the sweep with: longgen generate "
                f"--rerun-failed {shlex.quote(str(sweep_dir))}")
    return (f"sweep interrupted ({name}): {len(summary['done'])} done; the jobs it cut keep their last checkpoint "
            f"(see {sweep_dir / SUMMARY}); finish the sweep with: longgen generate --rerun-failed "
            f"{shlex.quote(str(sweep_dir))}")


class SweepSummary(Callback):
    """At the end of a multirun: sweep.json, one line per failed job, exit status 1 if any failed."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """sweep.json with every job not run yet: an interrupted sweep still says which jobs never ran."""
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        RUNNING["dir"] = self.sweep_dir
        RUNNING["launcher"] = str(config.hydra.launcher.get("_target_", ""))
        register_launcher(RUNNING["launcher"])
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_summary(self.sweep_dir, {}, len(sweep_jobs(config)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        jobs = read_ledger(sweep_dir)
        summary = write_summary(sweep_dir, jobs)
        # a job a signal stopped (its own process recorded it, its checkpoint kept) is among the failed, said so
        stopped = [j for j in summary["failed"] if jobs[j]["status"] == "interrupted"]
        log.info("sweep %s: %d done, %d failed%s%s (%s)", sweep_dir, len(summary["done"]), len(summary["failed"]),
                 f" ({len(stopped)} of them interrupted)" if stopped else "",
                 f", {len(summary['requeued'])} requeued on the way" if summary["requeued"] else "", sweep_dir / SUMMARY)
        if summary["failed"]:
            numbers, failed = ", ".join(str(j) for j in summary["failed"]), len(summary["failed"]) - len(stopped)
            how = "; ".join([f"{len(stopped)} interrupted"] + [f"{failed} failed"] * bool(failed))
            ended = f"did not finish ({numbers}: {how}" if stopped else f"failed ({numbers}"
            print(f"longgen: error: {len(summary['failed'])} of {len(jobs)} sweep jobs {ended}; see "
                  f"{sweep_dir / SUMMARY}); run them again with: longgen generate --rerun-failed {sweep_dir}",
                  file=sys.stderr)
            raise SystemExit(1)


# ---------------------------------------------------------------------------------------------------- re-run
#: the kinds of jobs --rerun-failed starts, in the order its summary names them
KINDS = ("failed", "never started", "without a manifest")


def never_run(sweep_dir: Path, jobs: dict[int, dict]) -> tuple[list[tuple[int, dict, str]], list[dict]]:
    """The jobs of the sweep (its multirun.yaml) with no line in the ledger: [(number, entry, kind)] to start —
    kind "never started" (no directory) or "without a manifest" (started, never finished) — and the entries of
    those whose directory holds a finished run (recorded as done)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return [], []
    try:
        config = OmegaConf.load(path)
        planned = sweep_jobs(config)
    except Exception as exc:
        raise UsageError(f"{path} cannot be read ({str(exc).strip().splitlines()[0]}): the jobs that never ran are "
                         f"not known; fix or remove it to re-run only the failed jobs") from None
    missing = [n for n in range(len(planned)) if n not in jobs]
    if not missing:
        return [], []
    try:
        loader = _sweep_loader(config)
    except Exception as exc:
        raise UsageError(f"the config sources in {path} cannot be loaded ({str(exc).strip().splitlines()[0]}): the "
                         f"jobs that never ran cannot be composed again; no job was started") from None
    start, finished = [], []
    for number in missing:
        try:
            run_dir = sweep_dir / job_subdir(loader, config, planned[number], number)
        except Exception as exc:
            raise UsageError(f"sweep job {number} ({' '.join(planned[number])}) cannot be composed again "
                             f"({str(exc).strip().splitlines()[0]}); no job was started") from None
        entry = {"job": number, "overrides": planned[number], "run_dir": str(run_dir)}
        if holds_finished_run(run_dir):
            finished.append({**entry, "status": "done"})
        else:
            start.append((number, entry, "without a manifest" if run_dir.is_dir() else "never started"))
    return start, finished


def done_entry(entry: dict) -> dict:
    """A failed job's ledger entry as done: found finished, or finished on its re-run (its error and requeue count
    belong to the attempt that failed)."""
    return {**{k: v for k, v in entry.items() if k not in ("error", "requeues")}, "status": "done"}


def finished_since(jobs: dict[int, dict]) -> list[dict]:
    """The ledger's failed jobs whose directory now holds a finished run (continued by hand with `longgen resume`,
    or decoded again), as done entries: started again they would be refused as a finished run."""
    return [done_entry(entry) for entry in (jobs[j] for j in sorted(jobs))
            if entry["status"] != "done" and holds_finished_run(Path(entry["run_dir"]))]


def started_in(sweep_dir: Path) -> Path | None:
    """The working directory the sweep was started from (its multirun.yaml's hydra.runtime.cwd), where it still
    exists; None (this process's) otherwise."""
    with contextlib.suppress(Exception):  # no multirun.yaml, an older or damaged one: the current directory
        cwd = Path(str(OmegaConf.load(sweep_dir / "multirun.yaml").hydra.runtime.cwd))
        if cwd.is_dir():
            return cwd
    return None


def rerun_failed(sweep_dir: Path) -> int:
    """`longgen generate --rerun-failed SWEEP_DIR`: each failed job again, in its own directory, and each job that
    never ran; exit status."""
    sweep_dir = Path(os.path.abspath(sweep_dir))  # the jobs' run directories, wherever they are started from
    if not read_ledger(sweep_dir) and not (sweep_dir / "multirun.yaml").is_file():
        raise UsageError(f"{sweep_dir} has no {LEDGER}: not the directory of a `longgen generate -m` sweep")
    with sweep_held(sweep_dir, ", then run --rerun-failed again"):
        return rerun_jobs(sweep_dir, read_ledger(sweep_dir))


def rerun_jobs(sweep_dir: Path, jobs: dict[int, dict]) -> int:
    """--rerun-failed's work, with the sweep directory held: record the jobs finished since, start the others
    (a job whose run directory another process holds is the sweep's own, still running: left to it)."""
    unrun, finished = never_run(sweep_dir, jobs)
    finished = finished_since(jobs) + finished
    for entry in finished:
        print(f"longgen: sweep job {entry['job']}: {entry['run_dir']} holds a finished run; recorded as done",
              file=sys.stderr)
        jobs[entry["job"]] = entry
        append_entry(sweep_dir / LEDGER, entry)
    todo = sorted([(j, jobs[j], "failed") for j in sorted(jobs) if jobs[j]["status"] != "done"] + unrun)
    if not todo:
        write_summary(sweep_dir, jobs)
        print(f"longgen: every job of {sweep_dir} is done; nothing to run again")
        return 0
    origin = started_in(sweep_dir)
    started = {kind: 0 for kind in KINDS}
    resumed, running = 0, []
    for number, entry, kind in todo:
        run_dir = Path(entry["run_dir"])
        if RunDirectory(run_dir).in_use():  # the sweep's own job still runs (its awaiting process was stopped)
            print(f"longgen: sweep job {number}: {run_dir} is in use by a run still going; left to it",
                  file=sys.stderr)
            running.append(number)
            continue
        resumed += (run_dir / CHECKPOINT).is_file()
        started[kind] += 1
        jobs[number], code = rerun_one(number, entry, kind, origin)
        append_entry(sweep_dir / LEDGER, jobs[number])
        if code == 130:
            break
    summary = write_summary(sweep_dir, jobs)
    kinds = ", ".join(f"{n} {kind}" for kind, n in started.items() if n)
    still = (f"; {len(running)} still running (job {', '.join(map(str, running))}): run --rerun-failed again once "
             f"{'it has' if len(running) == 1 else 'they have'} ended" if running else "")
    print(f"longgen: sweep {sweep_dir}: started {sum(started.values())} job(s) ({kinds or 'none'}; {resumed} of them "
          f"resumed from a checkpoint); now {len(summary['done'])} done, {len(summary['failed'])} failed{still}",
          file=sys.stderr)
    return 1 if summary["failed"] or running else 0


def rerun_one(number: int, entry: dict, kind: str, origin: Path | None) -> tuple[dict, int]:
    """Start one job of the sweep again (resumed where a checkpoint is kept); its new ledger entry, exit status."""
    from longgen.overrides import AS_RECORDED_ENV, hydra_quote

    run_dir = Path(entry["run_dir"])
    if (run_dir / CHECKPOINT).is_file():
        command = ["resume", str(run_dir)]
    else:
        command = ["generate", *entry["overrides"], f"hydra.run.dir={hydra_quote(str(run_dir))}"]
    print(f"longgen: sweep job {number} ({kind}): longgen {' '.join(command)}", file=sys.stderr)
    # the job's overrides as Hydra got them (free text already quoted: quoting it again would change a prompt)
    env = {**os.environ, AS_RECORDED_ENV: "1"}
    # from where the sweep started: its recorded overrides' relative paths (story=, a LoRA's path) hold there
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", *command], env=env, cwd=origin)
    # refused as finished: the sweep's own job ended between the ledger's reading and this start
    if proc.returncode == 0 or holds_finished_run(run_dir):
        return done_entry(entry), 0
    return {**entry, "status": "failed", "error": f"exit status {proc.returncode} on re-run"}, proc.returncode

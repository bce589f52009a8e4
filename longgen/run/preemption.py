"""Sweeps on a scheduler: `hydra/launcher=submitit_slurm` (and `submitit_local`, the same on this machine), one
submitit job per video, and jobs that survive preemption.

The launcher is ours, over submitit itself, with the keys of Hydra's submitit launcher plugin (conf/hydra/launcher/):
that plugin stops the whole sweep when one job dies without a result (its `results()` raise) and can only requeue a
job by starting it over; extending it would need Hydra's deprecated schema matching of a YAML file against its
same-named structured config.

In a job (one process, `__call__`): SIGTERM (SLURM's preemption) and SIGUSR2 (SLURM's `--signal` before the time
limit; submitit's preemption signal) are held while the job plans and records, and taken by the run's own
handler (longgen/run/checkpoint.py `Interrupts`) while it samples: the current step finishes, the checkpoint is
written, the run stops with `Interrupted`. The job then requeues itself through submitit's own path (the handler
submitit installed for its signal: it calls `checkpoint()`, saves the returned `DelayedSubmission` as the job's new
pickle and requeues the job — `scontrol requeue` on SLURM, exit status 144 for the local controller, which starts it
again). `checkpoint()` returns a `ResumeRun` when the run directory holds a checkpoint — the next attempt runs
`longgen resume RUN_DIR`, bit-identical to an unpreempted run, at most the interrupted step computed again — and
the job itself otherwise (stopped before its first step: it starts over in the same directory).

A job with gpus=N (N > 1) gets N GPUs of one node (`gpus_per_node`, one task: `check_job_resources` refuses other
layouts with one line before the sweep starts) and runs its video window-parallel on them as `longgen generate
gpus=N` does on one host: the job's process is rank 0 — it runs the Hydra job, takes the signals and writes the
checkpoint — and starts the other N - 1 ranks itself (longgen/parallel/launcher.py `hosting`), which follow its jobs
and ignore the scheduler's signals (rank 0 finishes the step on every rank, then stops them). The requeued attempt
is `longgen resume RUN_DIR` on N processes through the same `gpus=N` launcher, the signals passed on to its rank 0.

Every attempt's outcome goes into the sweep's ledger (longgen/run/sweep.py): `requeued` when preempted, then `done`
or `failed`; sweep.json lists the requeued jobs beside done and failed. A job that dies without a word (SIGKILL,
out of host memory) is `failed` with its last checkpoint kept: `longgen generate --rerun-failed SWEEP_DIR` resumes
it. The launcher waits for every job; a failed job never stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from longgen.errors import UsageError
from longgen.run.sweep import LEDGER, append_entry, job_subdir
from longgen.rundir import CHECKPOINT, holds_finished_run, read_ledger

log = logging.getLogger("longgen")

#: a scheduler's stop signals: preemption (SIGTERM) and the warning before the time limit (SIGUSR2)
PREEMPTION = (signal.SIGTERM, signal.SIGUSR2)
#: keys every submitit executor understands (submitit.AutoExecutor's shared parameters); the others of a launcher
#: config are the executor's own (prefixed with its name for AutoExecutor)
_SHARED = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
           "stderr_to_stdout")
_NOT_PARAMETERS = ("_target_", "submitit_folder", "max_num_timeout")
#: launcher keys whose values are whole numbers, with the least value each may take (null: submitit's default)
_WHOLE = {"timeout_min": 1, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
          "cpus_per_gpu": 1, "gpus_per_task": 1, "max_num_timeout": 0, "signal_delay_s": 0, "array_parallelism": 1}


# ---------------------------------------------------------------------------------------------------- signals
def received() -> set[str]:
    """The stop signals this process received (checkpoint.RECEIVED, which the run's own handler adds to too;
    imported when a job runs: Hydra imports this module at every start, torch is not needed for that)."""
    from longgen.run.checkpoint import RECEIVED

    return RECEIVED


@contextlib.contextmanager
def held_preemption(child: subprocess.Popen | None = None) -> Iterator[dict[int, Any]]:
    """While inside: SIGTERM/SIGUSR2 are noted in `received()` and passed on to `child` when given, otherwise left
    for later (the run's Interrupts take them over while it samples). Yields the handlers that were installed
    before (submitit's)."""
    def note(signum: int, frame) -> None:
        received().add(signal.Signals(signum).name)
        log.warning("%s: the job stops at the next step boundary and is requeued", signal.Signals(signum).name)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    before = {sig: signal.signal(sig, note) for sig in PREEMPTION}
    try:
        yield before
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stops_awaiting() -> Iterator[None]:
    """While the sweep's process awaits its jobs: SIGTERM (a driver job's time limit) and SIGHUP (a closed login
    shell) end it as Ctrl-C does (KeyboardInterrupt naming the signal: one line, sweep.json from the ledger), not
    silently; the jobs are the scheduler's and run on. A signal this process ignores stays ignored (`nohup`)."""
    def stop(signum: int, frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)
              if signal.getsignal(sig) is signal.SIG_DFL}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def preempted() -> bool:
    """Whether a scheduler's stop signal reached this process."""
    return bool(received() & {s.name for s in PREEMPTION})


def requeue(before: dict[int, Any], run_dir: Path, number: int, overrides: list[str]) -> None:
    """Record the job as requeued and requeue it through submitit's own handler for its preemption signal (it calls
    the job's `checkpoint()`, saves the next attempt and requeues; it exits the process). When submitit will not
    (hydra.launcher.max_num_timeout reached) the job is failed, with the reason, and not counted as requeued."""
    import submitit
    from submitit.core.utils import UncompletedJobError

    handler = before.get(submitit.JobEnvironment._usr_sig())
    if not callable(handler):  # not a submitit job (e.g. the job function called directly)
        raise UsageError("the job was preempted outside a submitit job: nothing can requeue it")
    _ledger_entry(run_dir, number, overrides, "requeued", signal=sorted(received()))
    try:
        handler(submitit.JobEnvironment._usr_sig(), None)
    except UncompletedJobError as exc:
        line = f"not requeued ({exc}): raise hydra.launcher.timeout_min or max_num_timeout; {rerun_hint(run_dir)}"
        _ledger_entry(run_dir, number, overrides, "failed", error=line, requeue_refused=True)
        raise RuntimeError(line) from None


def rerun_hint(run_dir: Path) -> str:
    """What `--rerun-failed` of the sweep does for a job that ended without finishing: resume or start again."""
    rerun = f"longgen generate --rerun-failed {run_dir.parent}"
    if (run_dir / CHECKPOINT).is_file():
        return f"its checkpoint is kept: {rerun} resumes it"
    return f"no step was checkpointed: {rerun} starts it again"


def failure_line(exc: BaseException) -> str:
    """The one line that says why a submitit job ended without a result: for a job that raised (submitit's
    FailedJobError: a header, the job's traceback between two rules, where to find the logs) its traceback's last
    line, the job's own error; for a job that left none (killed: SIGKILL, out of memory, cancelled) the scheduler's
    state for it; else the message's first line."""
    text = str(exc).strip()
    if state := re.search(r"has not produced any output \(state: ([^)\n]*)\)", text):
        known = "" if state.group(1) in ("FINISHED", "UNKNOWN") else f"; its state: {state.group(1)}"  # local: FINISHED
        return f"it was killed before it wrote one (SIGKILL, out of memory, cancelled{known})"
    parts = text.split("----------------------")
    if len(parts) >= 3 and (lines := [line.strip() for line in parts[1].splitlines() if line.strip()]):
        return lines[-1][:300]
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _ledger_entry(run_dir: Path, number: int, overrides: list[str], status: str, **extra: Any) -> None:
    """One line in the sweep's ledger (the sweep directory is the job directory's parent)."""
    append_entry(run_dir.parent / LEDGER, {"job": number, "overrides": overrides, "run_dir": str(run_dir),
                                           "status": status, **extra})


# ---------------------------------------------------------------------------------------------------- processes
def check_job_resources(cfg: DictConfig) -> None:
    """Before a sweep on our submitit launcher starts (`cfg`: one job's composed config, Hydra's included): each job
    is one task on one node that starts its own gpus=N processes, on GPUs the launcher config gives it."""
    launcher = cfg.hydra.launcher
    target = str(launcher.get("_target_", ""))
    if not target.startswith("hydra_plugins.longgen_submitit."):
        return
    cluster = "local" if target.endswith("LocalLauncher") else "slurm"
    choice = f"hydra/launcher=submitit_{cluster}"
    check_launcher_values(launcher, choice, cluster)
    tasks, nodes = launcher.get("tasks_per_node") or 1, launcher.get("nodes") or 1
    if tasks != 1:
        raise UsageError(f"hydra.launcher.tasks_per_node={tasks} with {choice}: a longgen job starts its own gpus=N "
                         f"processes; set hydra.launcher.tasks_per_node=1")
    if nodes != 1:
        raise UsageError(f"hydra.launcher.nodes={nodes} with {choice}: a longgen job runs on the GPUs of one node; "
                         f"set hydra.launcher.nodes=1 (several nodes: `srun torchrun`, README)")
    gpus, given = cfg.get("gpus", 1), launcher.get("gpus_per_node") or 0
    if gpus == "all" and given < 1:
        raise UsageError(f"gpus=all with {choice} and hydra.launcher.gpus_per_node={given}: give each job its GPUs "
                         f"with hydra.launcher.gpus_per_node=N")
    if gpus != "all" and int(gpus) > max(given, 1):
        raise UsageError(f"gpus={gpus} but hydra.launcher.gpus_per_node={given} gives each job {given} GPU(s): set "
                         f"hydra.launcher.gpus_per_node={gpus}")
    if cluster == "slurm" and shutil.which("srun") is None:  # submitit's own test when it starts, as one line
        raise UsageError(f"{choice} needs SLURM, but this machine has no `srun`: submit from a SLURM login node, or "
                         f"run the jobs here with hydra/launcher=submitit_local")


def check_launcher_values(launcher: DictConfig, choice: str, cluster: str) -> None:
    """The launcher config as submitit will take it, so that a typo (`+hydra.launcher.KEY=…`), a word where a number
    belongs or a time limit of 0 is one line before the sweep starts rather than submitit's traceback (or a job
    that fails) after it: every key one that submitit's `cluster` executor knows, whole numbers whole and in range,
    `mem_gb` a positive number, `stderr_to_stdout` true or false, `setup` a list of shell lines,
    `additional_parameters` a mapping, and `submitit_folder` a folder that can be made."""
    try:
        from submitit.core.plugins import get_executors
    except ImportError:
        raise UsageError(f'{choice} needs submitit: pip install "longgen[slurm]"') from None
    known = {*get_executors()[cluster]._valid_parameters(), *_SHARED, *_NOT_PARAMETERS}
    hint = "; sbatch options go in hydra.launcher.additional_parameters" if cluster == "slurm" else ""
    values = OmegaConf.to_container(launcher, resolve=True)
    for key, value in values.items():
        name = f"hydra.launcher.{key}"
        if key not in known:
            raise UsageError(f"{name} is not a setting of {choice} (submitit's {cluster} executor): drop it{hint}")
        if value is None:
            continue
        if key in _WHOLE and (isinstance(value, bool) or not isinstance(value, int) or value < _WHOLE[key]):
            raise UsageError(f"{name}={value!r} must be a whole number >= {_WHOLE[key]} (or null)")
        if key == "mem_gb" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise UsageError(f"{name}={value!r} must be a number of GB > 0 (or null)")
        if key == "stderr_to_stdout" and not isinstance(value, bool):
            raise UsageError(f"{name}={value!r} must be true or false")
        if key == "setup" and not (isinstance(value, list) and all(isinstance(line, str) for line in value)):
            raise UsageError(f"{name}={value!r} must be a list of shell lines, e.g. ['module load cuda']")
        if key == "additional_parameters" and not isinstance(value, dict):
            raise UsageError(f"{name}={value!r} must be a mapping of sbatch options, e.g. {{requeue: true}}")
    check_submitit_folder(str(values.get("submitit_folder") or ""))


def check_submitit_folder(folder: str) -> None:
    """`hydra.launcher.submitit_folder` (up to its first %-placeholder) must be a folder that can be made: its nearest
    existing ancestor a directory in which a folder can be made (tried: os.access says yes to root even in /proc)."""
    path = Path(folder.split("%")[0] or ".").expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".longgen-probe-", dir=existing))
    except OSError:
        raise UsageError(f"hydra.launcher.submitit_folder={folder}: {existing} is not a writable folder; point it at "
                         f"a folder the jobs can write (default: the sweep directory's .submitit/)") from None


def job_processes(cfg: DictConfig) -> int:
    """The processes a job runs its video on: its gpus=N (gpus=all: every GPU the job was given)."""
    gpus = cfg.get("gpus", 1)
    if gpus != "all":
        return int(gpus)
    import torch

    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)


# ---------------------------------------------------------------------------------------------------- next attempts
@dataclass
class ResumeRun:
    """The next attempt of a preempted job: `longgen resume RUN_DIR` in a child process, the scheduler's signals
    passed on to it (the local controller signals only this process; on SLURM the child gets them as well, and
    a repeat is not a second request: checkpoint.Interrupts)."""

    run_dir: str
    number: int
    overrides: list[str]
    gpus: int = 1  # processes: more than one through the gpus=N launcher

    def __call__(self) -> None:
        run_dir = Path(self.run_dir)
        if holds_finished_run(run_dir):
            _ledger_entry(run_dir, self.number, self.overrides, "done")  # it ended before the scheduler stopped it
            return
        command = [sys.executable, "-m", "longgen.cli", "resume", str(run_dir)]
        if self.gpus > 1:
            from longgen.parallel.launcher import launch

            with held_preemption() as before:
                code = launch(command, self.gpus, forward=PREEMPTION, label=f"submitit gpus={self.gpus}")
        else:
            child = subprocess.Popen(command)
            with held_preemption(child) as before:
                code = child.wait()
        if code == 0:
            _ledger_entry(run_dir, self.number, self.overrides, "done")
            return
        if preempted():
            requeue(before, run_dir, self.number, self.overrides)
        line = f"`longgen resume {run_dir}` ended with exit status {code}"
        _ledger_entry(run_dir, self.number, self.overrides, "failed", error=line)
        raise RuntimeError(line)

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


# ---------------------------------------------------------------------------------------------------- the launcher
class SubmititLauncher(Launcher):
    """Hydra launcher: each job of the sweep as one submitit job of `cluster`, every job awaited."""

    cluster = "local"

    def __init__(self, **params: Any) -> None:
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.run_dir: Path | None = None  # set in the job when it stops: where `checkpoint()` looks
        self.ledger_start = 0  # the sweep ledger's size when the jobs were submitted
        self.gpus = 1  # the job's processes (its gpus=N), set in the job

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def executor(self) -> Any:
        """The submitit executor with the launcher config's parameters."""
        import submitit

        extra = {}
        if self.params.get("max_num_timeout") is not None:
            extra[f"{self.cluster}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster=self.cluster, **extra)
        parameters = {(k if k in _SHARED else f"{self.cluster}_{k}"): v for k, v in self.params.items()
                      if k not in _NOT_PARAMETERS}
        executor.update_parameters(**parameters)
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = self.executor()
        numbers = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        for number, overrides in zip(numbers, job_overrides):
            log.info("submitit %s job #%d: %s", self.cluster, number, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        ledger = sweep_dir / LEDGER
        self.ledger_start = ledger.stat().st_size if ledger.is_file() else 0  # what this launch's jobs write follows
        jobs = executor.map_array(self, [list(o) for o in job_overrides], numbers, [state] * len(numbers))
        log.info("%d submitit %s job(s) in %s (logs in %s)", len(jobs), self.cluster, sweep_dir,
                 self.params["submitit_folder"])
        with stops_awaiting():
            return [self._outcome(job, number, list(overrides)) for job, number, overrides
                    in zip(jobs, numbers, job_overrides)]

    def _outcome(self, job: Any, number: int, overrides: list[str]) -> JobReturn:
        """A job's result once it ended; a job that died without one (killed, out of memory) is recorded as failed
        in the sweep's ledger (its last checkpoint is kept) and does not stop the sweep."""
        try:
            result = job.results()[0]
        except Exception as exc:  # submitit's UncompletedJobError, or the job's own exception
            run_dir = self.job_dir(overrides, number)
            if self._stopped_by_signal(run_dir.parent, number):  # SIGINT to the job (`scancel --signal=INT`, `pkill`)
                log.warning("submitit job %s (sweep job %d) was interrupted; %s", job.job_id, number,
                            rerun_hint(run_dir))
                return JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            line = failure_line(exc)
            log.error("submitit job %s (sweep job %d) ended without a result: %s", job.job_id, number, line)
            _ledger_entry(run_dir, number, overrides, "failed",
                          error=f"submitit job {job.job_id} ended without a result: {line}")
            # as for any failed job of a longgen sweep (sweep.recorded_job): the ledger has it, Hydra's sweeper
            # goes on (it re-raises a FAILED job's exception), SweepSummary makes the exit status 1
            return JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        if isinstance(result, JobReturn):
            return result
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=result)

    def _stopped_by_signal(self, sweep_dir: Path, number: int) -> bool:
        """Whether job `number`'s own process recorded, in this launch, that a signal stopped it (sweep.py
        `recorded_job`: status "interrupted", the checkpoint written): it then leaves no result, as a killed job
        does, but it was not killed."""
        try:
            return read_ledger(sweep_dir, self.ledger_start).get(number, {}).get("status") == "interrupted"
        except (OSError, ValueError):  # an unreadable ledger: the job is recorded failed, as a killed one is
            return False

    def job_dir(self, overrides: list[str], number: int) -> Path:
        """A job's directory as its own process names it (hydra.sweep.dir / hydra.sweep.subdir of its config)."""
        assert self.hydra_context is not None and self.config is not None
        return Path(str(self.config.hydra.sweep.dir)) / job_subdir(self.hydra_context.config_loader, self.config,
                                                                    overrides, number)

    # ------------------------------------------------------------------ in the job's process
    def __call__(self, overrides: list[str], number: int, singleton_state: dict) -> JobReturn:
        import submitit

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = number
        self.gpus = job_processes(config)
        from longgen.parallel.launcher import hosting  # torch: only in a job (Hydra imports this module at start)

        ranks = (hosting([sys.executable, "-m", "longgen.cli", "generate"], self.gpus, f"submitit gpus={self.gpus}")
                 if self.gpus > 1 else contextlib.nullcontext())
        with held_preemption() as before, ranks:
            try:
                return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            except SystemExit:
                if not preempted():
                    raise
                self.run_dir = self.job_dir(overrides, number)
                requeue(before, self.run_dir, number, list(overrides))
                raise

    def checkpoint(self, overrides: list[str], number: int, singleton_state: dict) -> Any:
        """The next attempt after a preemption: resume from the run's checkpoint, else this job from the start."""
        import submitit

        if self.run_dir is not None and (self.run_dir / CHECKPOINT).is_file():
            return submitit.helpers.DelayedSubmission(ResumeRun(str(self.run_dir), number, list(overrides),
                                                                self.gpus))
        return submitit.helpers.DelayedSubmission(self, overrides, number, singleton_state)

"""`gpus=N`: start a command as N processes, one per GPU (torch.distributed's TCPStore for the rendezvous, the
same environment torchrun gives), supervise them, and turn a rank that dies into one line. Also the checks that
refuse a launch before anything starts (too few GPUs, a CPU run, a command that runs in one process).

A submitit job with gpus=N (hydra/launcher=submitit_slurm, longgen/run/preemption.py) gets N GPUs and one task:
its job function runs the Hydra job itself, so it becomes rank 0 in place (`hosting`) and starts the other N - 1
ranks with the same environment; its requeued attempt (`longgen resume`) is an ordinary `launch`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Sequence

import torch

from longgen.errors import UsageError
from longgen.parallel import units
from longgen.parallel.units import DEFAULT_TIMEOUT

log = logging.getLogger("longgen")


# ---------------------------------------------------------------------------------------------------- launching
def requested_gpus(command: str, args: list[str]) -> str | None:
    """The `gpus=` value of a generate/resume command line (resume: else the run's saved config), or None."""
    given = [a.partition("=")[2] for a in args if a.partition("=")[0].lstrip("+") == "gpus"]
    if given:
        return given[-1].strip()
    if command == "resume" and args and not args[0].startswith("-"):
        saved = Path(args[0]).expanduser() / ".hydra" / "config.yaml"
        with contextlib.suppress(Exception):
            import yaml

            value = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("gpus")
            return None if value is None else str(value)
    return None


def gpu_count(value: str, command: str, args: list[str]) -> int:
    """Processes to start for `gpus=value` on this host: one per GPU; one line when they are not there."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rest = [a for a in args if a.partition("=")[0].lstrip("+") != "gpus"]
    if value == "all":
        if visible == 0:
            raise UsageError(_cpu_hint("gpus=all", "N", command, rest))
        return visible
    if "," in value or "(" in value:
        raise UsageError(f"gpus={value} cannot be swept by this launcher: every job of its sweep runs on the same "
                         f"processes; give the sweep one gpus=N, or run each job as processes of its own with "
                         f"hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=N (hydra/launcher=submitit_local "
                         f"on this host)")
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"gpus={value!r}: give a number of GPUs (e.g. gpus=2) or gpus=all") from None
    if n < 1:
        raise UsageError(f"gpus={value}: give a number of GPUs >= 1 (or gpus=all)")
    if n > visible:
        raise UsageError(_cpu_hint(f"gpus={n}", str(n), command, rest, visible))
    return n


def _cpu_hint(what: str, n: str, command: str, rest: list[str], visible: int = 0) -> str:
    """The torchrun line that runs the same command on n CPU processes, each argument shell-quoted so that it can be
    pasted as it is (a run directory or prompt with spaces stays one argument)."""
    seen = f"only {visible} CUDA GPU(s) are visible" if visible else "no CUDA GPU is visible"
    if command == "resume" and rest:  # the run directory comes first: `longgen resume RUN_DIR [KEY=VALUE ...]`
        words = [command, rest[0], "backbone.device=cpu", *rest[1:]]
    else:
        words = [command, "backbone.device=cpu", *rest]
    line = shlex.join(words)
    return (f"{what} starts one process per CUDA GPU of this host, but {seen}; to run {n} processes on the CPU "
            f"use torchrun (gloo): torchrun --standalone --nproc-per-node={n} -m longgen.cli {line}".rstrip())


def check_launch(command: str, args: list[str], size: int) -> None:
    """Command-line combinations that cannot work on several processes, refused before anything starts."""
    launchers = [a for a in args if a.partition("=")[0] == "hydra/launcher"]
    if size > 1 and launchers:
        raise UsageError(
            f"{launchers[-1]} with {size} processes: a sweep on several processes runs its jobs one after another, "
            f"each on all of them; to run one-GPU jobs side by side use gpus=1 with hydra/launcher=joblib and "
            f"backbone.device=free"
        )


#: the variables that say who a process is in its group (torchrun's names)
_RANK_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_USE_AGENT_STORE", "LONGGEN_LAUNCHER")


def _host_store():
    """The group's key-value store, served by this process (so it outlives every rank it starts)."""
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=DEFAULT_TIMEOUT))


def _rank_env(rank: int, nprocs: int, port: int, label: str) -> dict[str, str]:
    """torchrun's environment for `rank` of `nprocs` on this host (the store on `port`)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
            "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "TORCHELASTIC_USE_AGENT_STORE": "True", "LONGGEN_LAUNCHER": label}


def _base_env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _RANK_KEYS}
    base.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: gloo over loopback, whatever the hostname resolves to
    return base


def launch(command: list[str], nprocs: int, grace: float = 30.0, forward: Sequence[int] = (signal.SIGTERM,),
           label: str | None = None) -> int:
    """Run `command` as `nprocs` processes with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT; the key-value store lives here, so it outlives any rank). Returns the exit status: rank 0's, or 1
    with one line when a rank died without saying why. Ctrl-C is left to rank 0 (the others ignore it); the
    `forward` signals (a scheduler's: SIGTERM, and SIGUSR2 in a submitit job) are passed on to rank 0, after the
    handler this process had for them, when it had one."""
    import torch.distributed as dist

    store = _host_store()
    keys = dist.PrefixStore("longgen/", store)
    base = _base_env()
    procs: list[subprocess.Popen] = []
    old_int = signal.getsignal(signal.SIGINT)
    old = {sig: signal.getsignal(sig) for sig in forward}

    def forward_to_rank0(signum, frame):  # e.g. a scheduler's preemption: rank 0 checkpoints and stops the others
        if callable(old[signum]):
            old[signum](signum, frame)
        with contextlib.suppress(ProcessLookupError):
            procs[0].send_signal(signum)

    try:
        for rank in range(nprocs):
            procs.append(subprocess.Popen(command, env={**base, **_rank_env(rank, nprocs, store.port,
                                                                            label or f"gpus={nprocs}")}))
            if rank == 0:
                # Ctrl-C is rank 0's to handle (finish the step, save, stop the others): the launcher and the ranks
                # started from here on ignore it (an ignored signal stays ignored across exec)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                for sig in forward:
                    signal.signal(sig, forward_to_rank0)
        return _supervise(procs, keys, grace)
    finally:
        signal.signal(signal.SIGINT, old_int)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@contextlib.contextmanager
def hosting(command: list[str], nprocs: int, label: str, grace: float = 30.0) -> Iterator[units.Group]:
    """This process as rank 0 of `nprocs` and the other ranks started as `command` (a longgen command: they join
    the group and follow rank 0's jobs, longgen/run/follower.py), for as long as inside. For a job function that
    runs the job itself (a submitit job with gpus=N); `launch` is the same for a command line. A rank that dies is
    written into the store for rank 0 to report as one line; on leaving, the others are told to end and awaited."""
    import torch.distributed as dist

    store = _host_store()
    keys = dist.PrefixStore("longgen/", store)
    base = _base_env()
    saved = {k: os.environ.get(k) for k in (*_RANK_KEYS, "GLOO_SOCKET_IFNAME")}
    os.environ.update({**_rank_env(0, nprocs, store.port, label), "GLOO_SOCKET_IFNAME": base["GLOO_SOCKET_IFNAME"]})
    procs = [subprocess.Popen(command, env={**base, **_rank_env(rank, nprocs, store.port, label)})
             for rank in range(1, nprocs)]
    ended = threading.Event()
    watcher = threading.Thread(target=_watch, args=(procs, keys, ended), daemon=True)
    watcher.start()
    try:
        yield units.attach()
    finally:
        ended.set()
        watcher.join()
        units.detach()
        _await(procs, grace)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _watch(followers: list[subprocess.Popen], keys, ended: threading.Event) -> None:
    """Until `ended`: the first rank of `followers` (ranks 1, 2, …) that dies or fails goes into the store."""
    while not ended.wait(0.1):
        for rank, p in enumerate(followers, 1):
            code = p.poll()
            if code is not None and code != 0:
                with contextlib.suppress(Exception):
                    keys.compare_set("fail", "", _why(rank, code))
                return


def _why(rank: int, code: int) -> str:
    """What became of a rank that exited with `code` (a negative code: killed by that signal)."""
    if code < 0:
        name = signal.Signals(-code).name
        return f"rank {rank} was killed by {name}{' (out of host memory?)' if name == 'SIGKILL' else ''}"
    return f"rank {rank} exited with status {code}"


def _supervise(procs: list[subprocess.Popen], keys, grace: float) -> int:
    stop_at: float | None = None  # when a follower failed: rank 0 has until then to report and exit
    while True:
        code0 = procs[0].poll()
        if code0 is not None:
            _await(procs[1:], grace)
            if code0 < 0:  # killed: it could not say why
                name = signal.Signals(-code0).name
                print(f"longgen: error: rank 0 was killed by {name}"
                      f"{' (out of host memory?)' if name == 'SIGKILL' else ''}; the run directory keeps the last "
                      f"checkpoint: continue with `longgen resume RUN_DIR`", file=sys.stderr, flush=True)
                return 1
            return code0
        for rank, p in enumerate(procs[1:], 1):
            code = p.poll()
            if code is not None and code != 0 and stop_at is None:
                with contextlib.suppress(Exception):
                    keys.compare_set("fail", "", _why(rank, code))
                stop_at = time.monotonic() + grace
        if stop_at is not None and time.monotonic() > stop_at:
            procs[0].send_signal(signal.SIGTERM)
            stop_at = time.monotonic() + 1e9
            _await(procs[:1], 10.0)
        time.sleep(0.05)


def _await(procs: list[subprocess.Popen], grace: float) -> None:
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        if p.poll() is None:
            p.kill()
            p.wait()


def scheduled(args: list[str]) -> bool:
    """Whether the command line sends its jobs to a scheduler (hydra/launcher=submitit_*): each job then starts
    its own processes on the GPUs it is given (`hosting`), checked against them before the sweep starts."""
    return any(a.partition("=")[0] == "hydra/launcher" and a.partition("=")[2].startswith("submitit_")
               for a in args)


#: flags that only print (help, config): they never start processes
_SHOW_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version"}


def launch_if_asked(command: str, args: list[str]) -> int | None:
    """`gpus=N` (N > 1, or all with several GPUs) outside a process group: run the command as N processes and return
    their exit status; None when this process should run the command itself."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        check_launch(command, args, int(os.environ["WORLD_SIZE"]))
        return None
    value = requested_gpus(command, args)
    if value in (None, "1") or any(a in _SHOW_ONLY for a in args) or scheduled(args):
        return None
    n = gpu_count(value, command, args)
    check_launch(command, args, n)
    if n == 1:
        return None
    return launch([sys.executable, "-m", "longgen.cli", command, *args], n)

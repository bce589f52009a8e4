"""`gpus=N`: start a command as N processes, one per GPU (torch.distributed's TCPStore for the rendezvous, the
same environment torchrun gives), supervise them, and turn a rank that dies into one line. Also the checks that
refuse a launch before anything starts (too few GPUs, a CPU run, a command that runs in one process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from longgen.errors import UsageError
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

            value = (yaml.safe_load(saved.read_text()) or {}).get("gpus")
            return None if value is None else str(value)
    return None


def gpu_count(value: str, command: str, args: list[str]) -> int:
    """Processes to start for `gpus=value` on this host: one per GPU; one line when they are not there."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rest = " ".join(a for a in args if a.partition("=")[0].lstrip("+") != "gpus")
    if value == "all":
        if visible == 0:
            raise UsageError(_cpu_hint("gpus=all", "N", command, rest))
        return visible
    if "," in value or "(" in value:
        raise UsageError(f"gpus={value} cannot be swept: every job of a sweep runs on the same processes")
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"gpus={value!r}: give a number of GPUs (e.g. gpus=2) or gpus=all") from None
    if n < 1:
        raise UsageError(f"gpus={value}: give a number of GPUs >= 1 (or gpus=all)")
    if n > visible:
        raise UsageError(_cpu_hint(f"gpus={n}", str(n), command, rest, visible))
    return n


def _cpu_hint(what: str, n: str, command: str, rest: str, visible: int = 0) -> str:
    seen = f"only {visible} CUDA GPU(s) are visible" if visible else "no CUDA GPU is visible"
    if command == "resume":  # the run directory comes first: `longgen resume RUN_DIR [KEY=VALUE ...]`
        run_dir, _, options = rest.partition(" ")
        line = f"resume {run_dir} backbone.device=cpu {options}"
    else:
        line = f"{command} backbone.device=cpu {rest}"
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


def launch(command: list[str], nprocs: int, grace: float = 30.0) -> int:
    """Run `command` as `nprocs` processes with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT; the key-value store lives here, so it outlives any rank). Returns the exit status: rank 0's, or 1
    with one line when a rank died without saying why. Ctrl-C is left to rank 0 (the others ignore it); SIGTERM is
    passed on to rank 0."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=DEFAULT_TIMEOUT))
    keys = dist.PrefixStore("longgen/", store)
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")}
    base.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: gloo over loopback, whatever the hostname resolves to
    procs: list[subprocess.Popen] = []
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def forward_term(signum, frame):  # e.g. a scheduler's preemption: rank 0 checkpoints and stops the others
        with contextlib.suppress(ProcessLookupError):
            procs[0].send_signal(signal.SIGTERM)

    try:
        for rank in range(nprocs):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nprocs),
                   "LOCAL_WORLD_SIZE": str(nprocs), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
                   "LONGGEN_LAUNCHER": f"gpus={nprocs}"}
            procs.append(subprocess.Popen(command, env=env))
            if rank == 0:
                # Ctrl-C is rank 0's to handle (finish the step, save, stop the others): the launcher and the ranks
                # started from here on ignore it (an ignored signal stays ignored across exec)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, forward_term)
        return _supervise(procs, keys, grace)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


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
                if code < 0:
                    name = signal.Signals(-code).name
                    why = f"rank {rank} was killed by {name}{' (out of host memory?)' if name == 'SIGKILL' else ''}"
                else:
                    why = f"rank {rank} exited with status {code}"
                with contextlib.suppress(Exception):
                    keys.compare_set("fail", "", why)
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


#: flags that only print (help, config): they never start processes
_SHOW_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version"}


def launch_if_asked(command: str, args: list[str]) -> int | None:
    """`gpus=N` (N > 1, or all with several GPUs) outside a process group: run the command as N processes and return
    their exit status; None when this process should run the command itself."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        check_launch(command, args, int(os.environ["WORLD_SIZE"]))
        return None
    value = requested_gpus(command, args)
    if value in (None, "1") or any(a in _SHOW_ONLY for a in args):
        return None
    n = gpu_count(value, command, args)
    check_launch(command, args, n)
    if n == 1:
        return None
    return launch([sys.executable, "-m", "longgen.cli", command, *args], n)

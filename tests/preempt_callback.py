"""A Hydra callback for tests/test_slurm.py: in a sweep job's own process, at the end of a chosen denoising step,
the process sends itself a real signal, through the real handlers, as a scheduler's preemption would arrive.

    LONGGEN_TEST_PREEMPT="JOB:STEP:SIGNAL,..."   e.g. "1:1:SIGUSR2,3:2:SIGKILL"
    SIGNAL+ranks (e.g. SIGTERM+ranks): in the middle of step STEP instead (at its first exchange between the ranks
    of a gpus=N job), and to the job's child processes too (its other ranks), as SLURM signals every process of a
    job; rank 0 finishes that step, so the checkpoint is the one after step STEP
    longgen generate -m ... +hydra.callbacks.preempt._target_=preempt_callback.Preempt   (tests/ on PYTHONPATH)

The later attempt of a requeued job (`longgen resume`) runs no sweep callback, so it runs undisturbed.
"""

from __future__ import annotations

import os
import signal

from hydra.experimental.callback import Callback


class Preempt(Callback):
    def on_job_start(self, config, **kwargs) -> None:
        plan = {}
        for item in filter(None, os.environ.get("LONGGEN_TEST_PREEMPT", "").split(",")):
            job, step, name = item.split(":")
            name, _, ranks = name.partition("+")
            plan[int(job)] = (int(step), getattr(signal, name), ranks == "ranks")
        if int(config.hydra.job.num) not in plan:
            return
        step, sig, ranks = plan[int(config.hydra.job.num)]
        from longgen.run import checkpoint

        plain = checkpoint.StepHooks.__call__
        armed = [False]  # +ranks: signal at the next exchange between the ranks

        def hooked(self, state, total):
            if state.done == step and not ranks:
                os.kill(os.getpid(), sig)
            armed[0] = ranks and state.done == step - 1
            return plain(self, state, total)

        checkpoint.StepHooks.__call__ = hooked
        if not ranks:
            return
        from longgen.parallel.units import Group

        spread = Group._spread

        def signalled(self, fn, sizes, kind):
            if armed[0]:
                armed[0] = False
                for pid in children():
                    os.kill(pid, sig)
                os.kill(os.getpid(), sig)
            return spread(self, fn, sizes, kind)

        Group._spread = signalled


def children() -> list[int]:
    """The processes this process started (Linux: their parent in /proc/PID/stat)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid():
            found.append(int(pid))
    return found

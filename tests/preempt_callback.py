"""A Hydra callback for tests/test_slurm.py: in a sweep job's own process, at the end of a chosen denoising step,
the process sends itself a real signal, through the real handlers, as a scheduler's preemption would arrive.

    LONGGEN_TEST_PREEMPT="JOB:STEP:SIGNAL,..."   e.g. "1:1:SIGUSR2,3:2:SIGKILL"
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
            plan[int(job)] = (int(step), getattr(signal, name))
        if int(config.hydra.job.num) not in plan:
            return
        step, sig = plan[int(config.hydra.job.num)]
        from longgen.run import checkpoint

        plain = checkpoint.StepHooks.__call__

        def hooked(self, state, total):
            if state.done == step:
                os.kill(os.getpid(), sig)
            return plain(self, state, total)

        checkpoint.StepHooks.__call__ = hooked

"""hydra/launcher=submitit_local (the submitit_slurm launcher's code on this machine: real processes, real signals,
requeue by submitit's local controller): preempted jobs checkpoint at the step they were signalled in, are requeued
as `longgen resume RUN_DIR` and end with the bytes of an unpreempted job; sweep.json lists done / requeued / failed.

Every submitit job is a new Python process that imports torch, so the sweeps take far more than the CPU suite
can spare; they run with LONGGEN_SLURM_TESTS=1:
- one sweep of two jobs with the same seed, the second preempted (SIGUSR2) after its first step;
- the chaos sweep: five videos twice, undisturbed and with preemption (SIGUSR2, SIGTERM) and a SIGKILL at seeded
  random steps (60 % of the jobs), the killed job re-run with --rerun-failed, every video's latents compared.
    LONGGEN_SLURM_TESTS=1 .venv/bin/python -m pytest -q -n 0 tests/test_slurm.py
The CI suite runs the parts of that path that need no new process: the summary's requeued jobs, what a preempted
job's next attempt is, and a scheduler's repeated signal in the run's own handler.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_cli

TESTS = Path(__file__).resolve().parent
TINY = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "num_windows=2", "sampler=direct",
        "prompt=a cat", "hydra/launcher=submitit_local", "+hydra.callbacks.preempt._target_=preempt_callback.Preempt"]


def sweep(base: Path, seeds: str, steps: int, preempt: str = "", *more: str):
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "LONGGEN_TEST_PREEMPT": preempt}
    return run_cli("generate", "-m", *TINY, f"sampler.num_steps={steps}", f"seed={seeds}", *more,
                   f"hydra.sweep.dir={base}", env=env, timeout=1800)


def latents(run_dir: Path) -> torch.Tensor:
    return load_file(str(run_dir / "latents.safetensors"))["latents"]


PROCESSES = pytest.mark.skipif(os.environ.get("LONGGEN_SLURM_TESTS") != "1",
                               reason="submitit sweeps start many processes: set LONGGEN_SLURM_TESTS=1")


# ---------------------------------------------------------------------------------------------------- in this process
def test_summary_lists_requeued_jobs_beside_done_and_failed(tmp_path):
    from longgen.run.sweep import append_entry, read_ledger, write_summary

    for job, status in [(1, "interrupted"), (1, "requeued"), (0, "done"), (2, "requeued"), (1, "done"),
                        (2, "requeued"), (2, "failed"), (3, "requeued")]:
        append_entry(tmp_path / "sweep-jobs.jsonl", {"job": job, "overrides": [], "run_dir": "x", "status": status})
    summary = write_summary(tmp_path, read_ledger(tmp_path), planned=5)
    assert summary["done"] == [0, 1] and summary["failed"] == [2] and summary["not_run"] == [4]
    assert summary["requeued"] == [1, 2, 3]  # job 3: requeued, its next attempt not ended yet
    assert [j.get("requeues", 0) for j in summary["jobs"]] == [0, 1, 2, 1]


def test_a_preempted_job_resumes_from_its_checkpoint_else_starts_over(tmp_path):
    from hydra_plugins.longgen_submitit import LocalLauncher

    from longgen.run.preemption import ResumeRun

    launcher = LocalLauncher(submitit_folder=str(tmp_path / "s"))
    args = (["seed=1"], 3, {})
    assert launcher.checkpoint(*args).function is launcher  # stopped before any step: the same job again
    launcher.run_dir = tmp_path / "3_direct"
    launcher.run_dir.mkdir()
    assert launcher.checkpoint(*args).args == args
    (launcher.run_dir / "checkpoint.safetensors").write_bytes(b"x")
    nxt = launcher.checkpoint(*args)
    assert nxt.function == ResumeRun(str(launcher.run_dir), 3, ["seed=1"]) and nxt.args == ()


def test_a_schedulers_repeated_signal_is_not_a_second_request(monkeypatch):
    import signal

    from longgen.run import checkpoint
    from longgen.run.checkpoint import Interrupts

    monkeypatch.setattr(checkpoint, "RECEIVED", set())  # this process's record, not the test worker's
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    with Interrupts() as interrupts:
        interrupts.sampling = True
        os.kill(os.getpid(), signal.SIGUSR2)  # the job's wrapper forwards it and SLURM sends it to every process
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
        except KeyboardInterrupt:
            pytest.fail("the same SIGUSR2 again stopped the run at once instead of after the step")
        assert interrupts.requested == "SIGUSR2" and checkpoint.RECEIVED == {"SIGUSR2"}
        with pytest.raises(KeyboardInterrupt):  # a person's Ctrl-C still stops at once
            os.kill(os.getpid(), signal.SIGINT)
    with Interrupts() as interrupts:  # the next run of this job's process: the SIGUSR2 came while it loaded
        assert interrupts.requested == "SIGUSR2"
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    with Interrupts() as interrupts:
        interrupts.sampling = True
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):  # outside a scheduler's job: a second signal stops at once
            os.kill(os.getpid(), signal.SIGTERM)


# ---------------------------------------------------------------------------------------------------- submitit jobs
@PROCESSES
def test_preempted_job_is_requeued_and_resumes_to_the_same_bytes(tmp_path):
    proc = sweep(tmp_path / "s", "0,0", 3, "1:1:SIGUSR2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["done"] == [0, 1] and summary["requeued"] == [1] and summary["failed"] == [], summary
    assert [j.get("requeues", 0) for j in summary["jobs"]] == [0, 1]
    plain, preempted = tmp_path / "s" / "0_direct", tmp_path / "s" / "1_direct"
    resumed = json.loads((preempted / "manifest.json").read_text())["resumed"]
    assert resumed["after_step"] == 1  # the checkpoint of the step the signal came in: nothing computed twice
    assert "resumed" not in json.loads((plain / "manifest.json").read_text())
    assert torch.equal(latents(preempted), latents(plain))
    assert not (preempted / "checkpoint.safetensors").exists()
    ledger = [json.loads(line) for line in (tmp_path / "s" / "sweep-jobs.jsonl").read_text().splitlines()]
    assert [(e["job"], e["status"]) for e in ledger if e["job"] == 1] == [(1, "interrupted"), (1, "requeued"),
                                                                           (1, "done")]
    assert next(e for e in ledger if e["status"] == "requeued")["signal"] == ["SIGUSR2"]


@PROCESSES
def test_chaos_sweep_every_video_as_unpreempted(tmp_path):
    jobs, steps = 5, 4
    rng = random.Random(27)
    hit = rng.sample(range(jobs), 3)  # 60 % of the jobs: two preempted, one killed outright
    plan = {hit[0]: "SIGUSR2", hit[1]: "SIGTERM", hit[2]: "SIGKILL"}
    preempt = ",".join(f"{j}:{rng.randint(1, steps - 1)}:{sig}" for j, sig in plan.items())
    seeds = ",".join(str(s) for s in range(jobs))
    calm = sweep(tmp_path / "calm", seeds, steps)
    assert calm.returncode == 0, calm.stderr[-3000:]
    chaos = sweep(tmp_path / "chaos", seeds, steps, preempt)
    assert chaos.returncode == 1, chaos.stderr[-3000:]  # the killed job failed
    summary = json.loads((tmp_path / "chaos" / "sweep.json").read_text())
    assert summary["failed"] == [hit[2]] and summary["requeued"] == sorted(hit[:2]), (preempt, summary)
    assert sorted(summary["done"]) == sorted(set(range(jobs)) - {hit[2]})
    rerun = run_cli("generate", "--rerun-failed", str(tmp_path / "chaos"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((tmp_path / "chaos" / "sweep.json").read_text())["done"] == list(range(jobs))
    for job in range(jobs):
        name = f"{job}_direct"
        assert torch.equal(latents(tmp_path / "chaos" / name), latents(tmp_path / "calm" / name)), (job, preempt)

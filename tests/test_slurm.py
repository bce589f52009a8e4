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


def test_a_sweeps_gpus_must_fit_the_jobs_it_is_given(monkeypatch):
    import shutil

    from longgen.commands.generate import validate_sweep

    which = shutil.which  # as on a SLURM login node (the launcher refuses a machine without srun)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/srun" if name == "srun" else which(name, *a, **k))

    base = ["-m", "backbone=tiny", "prompt=a cat", "hydra/launcher=submitit_slurm"]
    cases = [
        (["gpus=1,2"], "sweep job 1 (backbone=tiny prompt=a\\ cat gpus=2): gpus=2 but hydra.launcher.gpus_per_node=1 "
                       "gives each job 1 GPU(s): set hydra.launcher.gpus_per_node=2"),
        (["gpus=all", "hydra.launcher.gpus_per_node=0"], "gpus=all with hydra/launcher=submitit_slurm"),
        (["gpus=2", "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=2"],
         "set hydra.launcher.tasks_per_node=1"),
        (["gpus=2", "hydra.launcher.gpus_per_node=2", "hydra.launcher.nodes=2"], "set hydra.launcher.nodes=1"),
    ]
    for extra, line in cases:
        problem = validate_sweep([*base, *extra])
        assert problem is not None and line in problem and problem.endswith("no job was started"), (extra, problem)
    assert validate_sweep([*base, "gpus=1,2,all", "hydra.launcher.gpus_per_node=2"]) is None


def test_a_preempted_gpus_job_resumes_on_as_many_processes(tmp_path):
    from hydra_plugins.longgen_submitit import SlurmLauncher

    from longgen.run.preemption import ResumeRun

    launcher = SlurmLauncher(submitit_folder=str(tmp_path / "s"))
    launcher.run_dir, launcher.gpus = tmp_path / "0_direct", 2
    launcher.run_dir.mkdir()
    (launcher.run_dir / "checkpoint.safetensors").write_bytes(b"x")
    assert launcher.checkpoint(["gpus=2"], 0, {}).function == ResumeRun(str(launcher.run_dir), 0, ["gpus=2"], 2)


def test_the_gpus_launcher_passes_a_schedulers_signal_to_rank_0_after_the_jobs_own_handler(tmp_path):
    import signal
    import sys
    import threading

    from longgen.parallel.launcher import launch

    seen = []

    def note(signum, frame):  # as held_preemption's: the job notes that it was preempted
        seen.append(signum)

    before = signal.signal(signal.SIGUSR2, note)
    rank0 = ("import signal, sys, time; signal.signal(signal.SIGUSR2, lambda s, f: sys.exit(7)); "
             "open(sys.argv[1], 'w').close(); time.sleep(60)")
    ready = tmp_path / "rank0-ready"

    def signal_when_ready():
        while not ready.exists():
            threading.Event().wait(0.02)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=signal_when_ready, daemon=True).start()
    try:
        assert launch([sys.executable, "-c", rank0, str(ready)], 1, forward=(signal.SIGUSR2, signal.SIGTERM)) == 7
        assert signal.getsignal(signal.SIGUSR2) is note  # the job's handler is back once the ranks ended
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert seen == [signal.SIGUSR2]


def test_rerun_failed_starts_the_jobs_that_never_ran(tmp_path, monkeypatch, capsys):
    import subprocess

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf, open_dict

    from longgen.overrides import hydra_quote
    from longgen.run import sweep as sweeps

    with initialize_config_module("longgen.conf", version_base="1.3"):
        config = compose("generate", overrides=["backbone=tiny", "sampler=direct"], return_hydra_config=True)
    with open_dict(config):  # the sweep's own config, as Hydra writes it into multirun.yaml
        config.hydra.overrides.task = ["backbone=tiny", "sampler=direct", "seed=0,1,2,3,4"]
    OmegaConf.save(config, tmp_path / "multirun.yaml")
    for job, files in [(0, ["manifest.json"]), (1, ["checkpoint.safetensors"]), (3, ["story.json"]),
                       (4, ["manifest.json"])]:
        (tmp_path / f"{job}_direct").mkdir()
        for name in files:
            (tmp_path / f"{job}_direct" / name).write_text("{}")
    overrides = ["backbone=tiny", "sampler=direct"]
    for job, status in [(0, "done"), (1, "failed")]:
        sweeps.append_entry(tmp_path / sweeps.LEDGER, {"job": job, "overrides": [*overrides, f"seed={job}"],
                                                       "run_dir": str(tmp_path / f"{job}_direct"), "status": status})
    sweeps.write_summary(tmp_path, sweeps.read_ledger(tmp_path), planned=5)
    commands = []

    def run(argv, env, cwd=None):  # the re-run starts jobs from the sweep's own directory
        commands.append(argv[3:])
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(sweeps.subprocess, "run", run)
    assert sweeps.rerun_failed(tmp_path) == 0
    assert commands == [["resume", str(tmp_path / "1_direct")],
                        ["generate", *overrides, "seed=2", f"hydra.run.dir={hydra_quote(str(tmp_path / '2_direct'))}"],
                        ["generate", *overrides, "seed=3", f"hydra.run.dir={hydra_quote(str(tmp_path / '3_direct'))}"]]
    err = capsys.readouterr().err
    assert "sweep job 4: " in err and "holds a finished run; recorded as done" in err
    assert err.splitlines()[-1].endswith("started 3 job(s) (1 failed, 1 never started, 1 without a manifest; 1 of "
                                         "them resumed from a checkpoint); now 5 done, 0 failed")
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["done"] == [0, 1, 2, 3, 4] and summary["not_run"] == [] and summary["failed"] == []
    assert sweeps.rerun_failed(tmp_path) == 0 and len(commands) == 3  # nothing left to run
    assert "nothing to run again" in capsys.readouterr().out


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


@PROCESSES
def test_gpus2_jobs_give_the_bytes_of_one_gpu_also_preempted_and_never_run(tmp_path):
    # one job on one process, two on two (gloo on the CPU): the second of them stopped by SIGTERM in step 2 (sent to
    # every process of the job, as SLURM does: rank 0 finishes the step and checkpoints, rank 1 goes on with it)
    # and requeued as `longgen resume` on two processes
    base = tmp_path / "s"
    proc = sweep(base, "0", 3, "2:2:SIGTERM+ranks", "gpus=1,2,2", "backbone.micro_batch=1",
                 "hydra.launcher.gpus_per_node=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((base / "sweep.json").read_text())
    assert summary["done"] == [0, 1, 2] and summary["requeued"] == [2] and summary["failed"] == [], summary
    runs = [base / f"{job}_direct" for job in range(3)]
    manifests = [json.loads((run / "manifest.json").read_text()) for run in runs]
    assert [m["distributed"]["world_size"] for m in manifests] == [1, 2, 2]
    assert all(m["distributed"]["ranks"][1]["units"] > 0 for m in manifests[1:])  # rank 1 did its share
    assert manifests[2]["resumed"]["after_step"] == 2 and manifests[2]["distributed"]["launcher"] == "submitit gpus=2"
    assert torch.equal(latents(runs[1]), latents(runs[0])) and torch.equal(latents(runs[2]), latents(runs[0]))
    assert not (runs[2] / "checkpoint.safetensors").exists()

    # job 0 as if it never ran (no ledger line, no directory): --rerun-failed starts it from multirun.yaml
    reference = latents(runs[0])
    ledger = base / "sweep-jobs.jsonl"
    ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines() if json.loads(line)["job"]))
    import shutil

    shutil.rmtree(runs[0])
    rerun = run_cli("generate", "--rerun-failed", str(base))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "started 1 job(s) (1 never started; 0 of them resumed" in rerun.stderr.splitlines()[-1]
    assert torch.equal(latents(runs[0]), reference)
    assert json.loads((base / "sweep.json").read_text())["done"] == [0, 1, 2]


def test_rerun_failed_leaves_a_running_job_alone_and_records_one_finished_meanwhile(tmp_path, monkeypatch, capsys):
    # the awaiting process of a submitit sweep was stopped (Ctrl-C on the login node): its jobs run on. Job 0 still
    # runs (its run directory's lock is held); job 1 finishes while its re-run starts, which is refused as finished
    import fcntl
    import subprocess

    from longgen.run import sweep as sweeps
    from longgen.rundir import LOCK_NAME, RunDirectory

    for job in (0, 1):
        (tmp_path / f"{job}_direct").mkdir()
        sweeps.append_entry(tmp_path / sweeps.LEDGER, {"job": job, "overrides": [f"seed={job}"], "status": "failed",
                                                       "run_dir": str(tmp_path / f"{job}_direct")})
    (tmp_path / "0_direct" / "checkpoint.safetensors").write_bytes(b"x")
    running = os.open(tmp_path / "0_direct" / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(running, fcntl.LOCK_EX)
    assert RunDirectory(tmp_path / "0_direct").in_use()
    commands = []

    def run(argv, env, cwd=None):  # job 1's own process wrote its manifest first: the re-run is refused
        commands.append(argv[3])
        (tmp_path / "1_direct" / "manifest.json").write_text("{}")
        return subprocess.CompletedProcess(argv, 2)

    monkeypatch.setattr(sweeps.subprocess, "run", run)
    try:
        assert sweeps.rerun_failed(tmp_path) == 1  # job 0 is not done yet
    finally:
        os.close(running)
    assert commands == ["generate"]  # job 0 was not started beside its running self
    err = capsys.readouterr().err
    assert f"sweep job 0: {tmp_path / '0_direct'} is in use by a run still going" in err
    assert err.splitlines()[-1].endswith("now 1 done, 1 failed; 1 still running (job 0): run --rerun-failed again "
                                         "once it has ended")
    jobs = sweeps.read_ledger(tmp_path)
    assert jobs[1]["status"] == "done" and "error" not in jobs[1] and jobs[0]["status"] == "failed"


def test_ctrl_c_in_a_submitit_sweeps_awaiting_process_says_its_jobs_go_on(tmp_path):
    # the jobs of a submitit sweep are not this process's: stopping it cuts none of them (SLURM's run on)
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from longgen.run import sweep as sweeps

    with initialize_config_module("longgen.conf", version_base="1.3"):
        config = compose("generate", overrides=["backbone=tiny", "hydra/launcher=submitit_slurm"],
                         return_hydra_config=True)
    with open_dict(config):
        config.hydra.sweep.dir = str(tmp_path)
        config.hydra.overrides.task = ["backbone=tiny", "seed=0,1"]
    sweeps.RUNNING.clear()
    sweeps.SweepSummary().on_multirun_start(config)
    line = sweeps.interrupted_sweep()
    assert "cut" not in line and line == (
        f"sweep interrupted (SIGINT) while it awaited its submitit jobs: 0 done so far; the jobs still running go on "
        f"without it (SLURM's: scancel them to stop them) and record their outcome in {tmp_path / 'sweep-jobs.jsonl'}; "
        f"once they have ended, finish the sweep with: longgen generate --rerun-failed {tmp_path}")


def test_a_requeued_job_of_an_eval_sweep_is_evaluated_by_its_resume(tmp_path, monkeypatch):
    # `generate -m … eval=true` on submitit: a preempted job ends as `longgen resume RUN_DIR`, which wrote no
    # eval.json, so the sweep's report left out exactly the requeued jobs
    import longgen.commands.resume as resume
    import longgen.eval.evaluate as evaluate

    evaluated, resumed = [], []
    monkeypatch.setattr(resume, "run_resume", lambda run_dir, overrides: resumed.append(run_dir) or {})
    monkeypatch.setattr(evaluate, "evaluate_run_dir", lambda run_dir: evaluated.append(Path(run_dir)) or {})
    for name, asked in (("a", "true"), ("b", "false")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"eval: {asked}\nseed: 0\n")
        resume.main([str(tmp_path / name)])
    assert resumed == [tmp_path / "a", tmp_path / "b"] and evaluated == [tmp_path / "a"]


def test_sigterm_or_sighup_to_the_process_awaiting_submitit_jobs_is_one_line_and_a_true_summary(tmp_path, monkeypatch,
                                                                                                  capsys):
    # the awaiting process as a driver job of its own (sbatch, its time limit: SIGTERM) or a closed login shell
    # (SIGHUP) died without a word, its sweep.json still saying every job "not run" while they ran on
    import signal
    from types import SimpleNamespace

    from hydra_plugins.longgen_submitit import LocalLauncher
    from omegaconf import OmegaConf

    import longgen.cli as cli
    from longgen.run import sweep as sweeps

    launcher = LocalLauncher(submitit_folder=str(tmp_path / "s"))
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    fake = SimpleNamespace(map_array=lambda fn, *columns: [SimpleNamespace(job_id="1")] * len(columns[0]))
    monkeypatch.setattr(launcher, "executor", lambda: fake)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        monkeypatch.setattr(launcher, "_outcome", lambda job, number, overrides, sig=sig: os.kill(os.getpid(), sig))
        with pytest.raises(KeyboardInterrupt, match=sig.name):
            launcher.launch([["seed=0"]], 0)
        assert signal.getsignal(sig) is signal.SIG_DFL  # this process's own handling again once it stopped waiting
    ignored = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # `nohup longgen generate -m …`: a closed shell is no stop
    try:
        assert launcher.launch([["seed=0"]], 0) == [None]
    finally:
        signal.signal(signal.SIGHUP, ignored)

    def launch(module_name, prog, rest):  # the sweep started, job 0 finished, then the SIGTERM while awaiting
        sweeps.RUNNING.update(dir=tmp_path, launcher="hydra_plugins.longgen_submitit.SlurmLauncher")
        sweeps.write_summary(tmp_path, {}, 2)
        sweeps.append_entry(tmp_path / "sweep-jobs.jsonl", {"job": 0, "overrides": [], "run_dir": "x",
                                                             "status": "done"})
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(cli, "run_app", launch)
    assert cli.main(["generate", "-m", "backbone=tiny", "prompt=a cat", "seed=0,1",
                     f"hydra.sweep.dir={tmp_path}"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines()[-1].startswith("longgen: error: sweep interrupted (SIGTERM) while it "
                                                               "awaited its submitit jobs: 1 done so far;")
    assert json.loads((tmp_path / "sweep.json").read_text())["done"] == [0]


def test_a_job_submitit_will_not_requeue_again_is_failed_with_its_reason_not_requeued(tmp_path):
    # hydra.launcher.max_num_timeout reached: submitit's handler refuses the requeue. The ledger said "requeued"
    # (sweep.json listed the job as requeued) and the only error line was "Job (task=0) failed during processing
    # with trace:", the header of submitit's error, not its reason
    import signal

    import submitit
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from longgen.run.preemption import failure_line, requeue
    from longgen.run.sweep import read_ledger, write_summary

    def refuse(signum, frame):
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    run_dir = tmp_path / "0_direct"
    before = {submitit.JobEnvironment._usr_sig(): refuse, signal.SIGTERM: signal.SIG_DFL}
    with pytest.raises(RuntimeError, match="no step was checkpointed: longgen generate --rerun-failed .* starts it"):
        requeue(before, run_dir, 0, ["seed=0"])  # stopped while it loaded
    run_dir.mkdir()
    (run_dir / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(RuntimeError) as refused:
        requeue(before, run_dir, 0, ["seed=0"])
    line = ("not requeued (Job not requeued because: timed-out too many times.): raise hydra.launcher.timeout_min or "
            f"max_num_timeout; its checkpoint is kept: longgen generate --rerun-failed {tmp_path} resumes it")
    assert str(refused.value) == line
    summary = write_summary(tmp_path, read_ledger(tmp_path), planned=1)
    assert summary["failed"] == [0] and summary["requeued"] == [] and summary["jobs"][0]["error"] == line
    trace = (f"Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nRuntimeError: {line}")
    error = FailedJobError(f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
                           f"----------------------\nYou can check full logs with 'job.stderr(0)'")
    assert failure_line(error) == f"RuntimeError: {line}"
    killed = UncompletedJobError("Job 12 (task: 0) with path /s/.submitit/12/12_0_result.pkl\nhas not produced any "
                                 "output (state: OUT_OF_MEMORY)\nError stream produced:\n" + "-" * 40 + "\nlog")
    # it was the line naming the result's path; the local controller calls a killed job FINISHED
    assert failure_line(killed) == ("it was killed before it wrote one (SIGKILL, out of memory, cancelled; its state: "
                                    "OUT_OF_MEMORY)")
    assert failure_line(UncompletedJobError(str(killed).replace("OUT_OF_MEMORY", "FINISHED"))) == (
        "it was killed before it wrote one (SIGKILL, out of memory, cancelled)")
    assert failure_line(UncompletedJobError("something else\nmore")) == "something else"


def test_a_submitit_job_without_a_result_is_recorded_with_its_own_reason(tmp_path):
    # mutation audit: the awaiting process's record of a killed or raising job, not only failure_line on its own
    from types import SimpleNamespace

    from hydra_plugins.longgen_submitit import LocalLauncher
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from longgen.run.sweep import read_ledger

    launcher = LocalLauncher(submitit_folder=str(tmp_path / "s"))
    launcher.job_dir = lambda overrides, number: tmp_path / f"{number}_direct"
    trace = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nValueError: the job's own reason"
    errors = [FailedJobError(f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
                             f"----------------------\nYou can check full logs with 'job.stderr(0)'"),
              UncompletedJobError("Job 7 (task: 0) with path /s/7_0_result.pkl\nhas not produced any output "
                                  "(state: UNKNOWN)\nError stream produced:\n" + "-" * 40 + "\nlog")]
    for number, error in enumerate(errors):
        job = SimpleNamespace(job_id=str(7 + number), results=lambda error=error: (_ for _ in ()).throw(error))
        launcher._outcome(job, number, [f"seed={number}"])
    jobs = read_ledger(tmp_path)
    assert jobs[0]["error"] == "submitit job 7 ended without a result: ValueError: the job's own reason"
    # the scheduler knew nothing of it (UNKNOWN, as FINISHED on the local controller): no state to name
    assert jobs[1]["error"] == ("submitit job 8 ended without a result: it was killed before it wrote one (SIGKILL, "
                                "out of memory, cancelled)")


def test_a_submitit_job_a_signal_stopped_is_interrupted_not_killed(tmp_path, caplog):
    # SIGINT to a job's process (`scancel --signal=INT`, a terminal's Ctrl-C under a launcher that ignores it): the
    # job checkpointed and recorded "interrupted", then left no result (KeyboardInterrupt passes submitit's handler);
    # the launcher called it "killed before it wrote one (SIGKILL, out of memory, cancelled)" and recorded it failed
    from types import SimpleNamespace

    from hydra_plugins.longgen_submitit import LocalLauncher
    from submitit.core.utils import UncompletedJobError

    from longgen.run.sweep import LEDGER, append_entry, read_ledger

    launcher = LocalLauncher(submitit_folder=str(tmp_path / "s"))
    launcher.job_dir = lambda overrides, number: tmp_path / f"{number}_direct"
    # an earlier launch's record of job 1 is not this launch's
    append_entry(tmp_path / LEDGER, {"job": 1, "overrides": ["seed=1"], "status": "interrupted"})
    launcher.ledger_start = (tmp_path / LEDGER).stat().st_size
    for number in (0, 2):
        append_entry(tmp_path / LEDGER, {"job": number, "overrides": [f"seed={number}"], "status": "interrupted"})
    append_entry(tmp_path / LEDGER, {"job": 2, "overrides": ["seed=2"], "status": "requeued"})
    killed = UncompletedJobError("Job 7 (task: 0) with path /s/7_0_result.pkl\nhas not produced any output "
                                 "(state: FINISHED)")
    (tmp_path / "0_direct").mkdir()
    (tmp_path / "0_direct" / "checkpoint.safetensors").write_bytes(b"x")
    caplog.set_level("WARNING", logger="longgen")
    for number in (0, 1, 2):
        job = SimpleNamespace(job_id=str(7 + number), results=lambda: (_ for _ in ()).throw(killed))
        launcher._outcome(job, number, [f"seed={number}"])
    jobs = read_ledger(tmp_path)
    assert jobs[0]["status"] == "interrupted" and "error" not in jobs[0]
    assert f"sweep job 0) was interrupted; its checkpoint is kept: longgen generate --rerun-failed {tmp_path} " \
           "resumes it" in caplog.text
    assert jobs[1]["status"] == "failed" and "killed before it wrote one" in jobs[1]["error"]
    assert jobs[2]["status"] == "failed"  # its last record in this launch was not "interrupted"


def test_a_sweep_with_interrupted_jobs_says_they_did_not_finish(tmp_path, capsys):
    # its last line called every job that did not end done "failed", interrupted ones too (checkpoint kept)
    from omegaconf import OmegaConf

    from longgen.run.sweep import LEDGER, SweepSummary, append_entry

    for number, status in enumerate(("done", "interrupted", "failed")):
        append_entry(tmp_path / LEDGER, {"job": number, "overrides": [f"seed={number}"], "status": status})
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"longgen: error: 2 of 3 sweep jobs did not finish (1, 2: 1 interrupted; 1 failed; see "
        f"{tmp_path / 'sweep.json'}); run them again with: longgen generate --rerun-failed {tmp_path}")


def test_rerun_failed_stops_at_a_job_stopped_by_ctrl_c(tmp_path, monkeypatch):
    # exit status 130: the user's Ctrl-C reached the job; the sweep's re-run stops there, the next job is not started
    import subprocess

    from longgen.run import sweep as sweeps

    for job in (0, 1):
        (tmp_path / f"{job}_direct").mkdir()
        sweeps.append_entry(tmp_path / sweeps.LEDGER, {"job": job, "overrides": [f"seed={job}"], "status": "failed",
                                                       "run_dir": str(tmp_path / f"{job}_direct")})
    commands = []
    monkeypatch.setattr(sweeps.subprocess, "run",
                        lambda argv, env, cwd=None: commands.append(argv) or subprocess.CompletedProcess(argv, 130))
    assert sweeps.rerun_failed(tmp_path) == 1
    assert len(commands) == 1 and "seed=0" in commands[0]


def test_only_the_writing_process_evaluates_a_resumed_eval_run(tmp_path, monkeypatch):
    # under torchrun every rank runs `longgen resume`: one eval.json, written by the rank that writes the run's files
    from types import SimpleNamespace

    import longgen.commands.resume as resume
    import longgen.eval.evaluate as evaluate

    evaluated = []
    monkeypatch.setattr(resume, "run_resume", lambda run_dir, overrides: {})
    monkeypatch.setattr(evaluate, "evaluate_run_dir", lambda run_dir: evaluated.append(Path(run_dir)) or {})
    monkeypatch.setattr(resume, "current", lambda: SimpleNamespace(writes=False))
    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / ".hydra" / "config.yaml").write_text("eval: true\nseed: 0\n")
    resume.main([str(tmp_path / "a")])
    assert evaluated == []


def test_rerun_failed_with_only_a_running_job_left_is_not_a_success(tmp_path, monkeypatch, capsys):
    # the sweep's job 1 still runs and has no ledger line yet (started, no manifest): nothing failed, but the sweep is
    # not finished either: exit 1, as the last line says to run --rerun-failed again (mutation audit)
    import fcntl

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf, open_dict

    from longgen.run import sweep as sweeps
    from longgen.rundir import LOCK_NAME

    with initialize_config_module("longgen.conf", version_base="1.3"):
        config = compose("generate", overrides=["backbone=tiny", "sampler=direct"], return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = ["backbone=tiny", "sampler=direct", "seed=0,1"]
    OmegaConf.save(config, tmp_path / "multirun.yaml")
    for job in (0, 1):
        (tmp_path / f"{job}_direct").mkdir()
    (tmp_path / "0_direct" / "manifest.json").write_text("{}")
    (tmp_path / "1_direct" / "story.json").write_text("{}")
    sweeps.append_entry(tmp_path / sweeps.LEDGER, {"job": 0, "overrides": ["seed=0"], "status": "done",
                                                   "run_dir": str(tmp_path / "0_direct")})
    monkeypatch.setattr(sweeps.subprocess, "run", lambda *a, **k: pytest.fail("a running job was started again"))
    running = os.open(tmp_path / "1_direct" / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(running, fcntl.LOCK_EX)
    try:
        assert sweeps.rerun_failed(tmp_path) == 1
    finally:
        os.close(running)
    assert capsys.readouterr().err.splitlines()[-1].endswith("now 1 done, 0 failed; 1 still running (job 1): run "
                                                             "--rerun-failed again once it has ended")


def test_a_job_that_recorded_its_own_failure_in_this_launch_is_not_called_interrupted(tmp_path, monkeypatch):
    # only "interrupted" as the job's last record of this launch means a signal stopped it; and launch() takes the
    # ledger's size before it submits, so an earlier launch's "interrupted" is not read as this one's
    from types import SimpleNamespace

    from hydra_plugins.longgen_submitit import LocalLauncher
    from omegaconf import OmegaConf

    from longgen.run.sweep import LEDGER, append_entry

    launcher = LocalLauncher(submitit_folder=str(tmp_path / "s"))
    append_entry(tmp_path / LEDGER, {"job": 0, "overrides": [], "status": "interrupted"})
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    monkeypatch.setattr(launcher, "executor", lambda: SimpleNamespace(map_array=lambda fn, *c: [None] * len(c[0])))
    monkeypatch.setattr(launcher, "_outcome", lambda job, number, overrides: launcher._stopped_by_signal(tmp_path, 0))
    assert launcher.launch([["seed=0"]], 0) == [False]
    append_entry(tmp_path / LEDGER, {"job": 0, "overrides": [], "status": "failed", "error": "x"})
    assert not launcher._stopped_by_signal(tmp_path, 0)


def test_a_sweep_whose_unfinished_jobs_were_all_interrupted_says_only_that(tmp_path, capsys, caplog):
    from omegaconf import OmegaConf

    from longgen.run.sweep import LEDGER, SweepSummary, append_entry

    for number, status in enumerate(("done", "interrupted", "interrupted")):
        append_entry(tmp_path / LEDGER, {"job": number, "overrides": [f"seed={number}"], "status": status})
    caplog.set_level("INFO", logger="longgen")
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "did not finish (1, 2: 2 interrupted; see " in capsys.readouterr().err
    assert "1 done, 2 failed (2 of them interrupted)" in caplog.text

"""Checkpoints, resume, interrupts, decode and run-directory safety (issue: long runs never lose work).

In-process: every sampler (incl. SynCoS stage 2 and GLC's shifts, re-init and VMCR) stopped after a step, its
checkpoint read back from disk, and continued by a fresh sampler and a fresh generator gives latents equal bit for
bit to an uninterrupted run. Through the CLI: kill -9 in the middle of sampling then `longgen resume`, SIGINT
(exit 130, one line, checkpoint, resume), refusals, `longgen decode`, finished and locked run directories. The
uninterrupted reference run, the resumes that finish and one decode run in this process (the Python API calls the
commands' own functions); what is about the process (signals, exit status, its one error line) runs the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import longgen
from longgen.run.checkpoint import Checkpoint, Interrupts, StepHooks, load_checkpoint
from longgen.errors import Interrupted, UsageError
from longgen.rundir import RunDirectory
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.fifo import FIFOSampler
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import GLCSampler
from longgen.samplers.syncos import SynCoSSampler

from cli_helpers import error_lines, run_cli
from conftest import make_tiny

L3 = 21  # 3 windows of 13 at stride 4
SAMPLERS = {
    "direct": lambda: DirectSampler(num_steps=4, eta=0.5),
    "gen-l-video": lambda: GenLVideoSampler(num_steps=4),
    "syncos": lambda: SynCoSSampler(num_steps=4, t_min=0, iters=2, batch_windows=3),
    "syncos-csd-only": lambda: SynCoSSampler(num_steps=4, iters=2, batch_windows=3, stage1=False, stage3=False),
    "glc": lambda: GLCSampler(num_steps=4, vmcr_source="affine"),
    "shots": lambda: _shots(),
    "extend": lambda: _extend(),
}


def _extend():
    """`longgen extend`'s sampler: Gen-L-Video with a 5-frame history put back at every step's level (replacement)."""
    from longgen.run.extend import HistorySampler

    sampler = HistorySampler(GenLVideoSampler(num_steps=4), 5, "replace", 0)
    sampler.history = torch.randn((5, 4, 8, 8), generator=torch.Generator().manual_seed(9))
    return sampler


def _shots():
    """A two-shot scene: GLC (shifts from each take's own generator) on both takes, cross-shot attention on."""
    from longgen.run.shots import ShotOptions, ShotsSampler, plan_shots
    from longgen.story import Story

    options = ShotOptions(windows=(1, 2), cross_attention=0.5)
    inner = GLCSampler(num_steps=4, vmcr_source="affine", abam=False)
    story = Story.from_dict({"shots": ["a cat", "[SHOT CUT] a dog runs"]})
    return ShotsSampler(inner, plan_shots(story, options, 13, 4, L3, 3, inner.plan, lambda n: 4 * n - 3), options)


@pytest.fixture(scope="module")
def tiny2():
    return make_tiny(prompts=("a cat", "a dog runs"))


def _run(backbone, after_step=None):
    noise = torch.randn((1, L3, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: int(s >= 4),
                      generator=torch.Generator().manual_seed(7))
    if after_step is not None:
        run.after_step = after_step
    return run


class _Stop(Exception):
    pass


def checkpoint_after_two_steps(sampler, run: SamplingRun, path: Path, name: str) -> Checkpoint:
    """Run `sampler` with generate's step hooks writing `path` every step, stop it after step 2, read it back."""

    def snapshot(state, total):
        return Checkpoint(state, total, run.generator.get_state(), {"sampler": name}, "story")

    hooks = StepHooks(path, snapshot, Interrupts(), every=1)

    def stop_after_two(state, total):
        hooks(state, total)
        if state.done == 2:
            raise _Stop

    run.after_step = stop_after_two
    with pytest.raises(_Stop):
        sampler.sample(run)
    return load_checkpoint(path)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_resume_from_a_saved_checkpoint_is_bit_identical(tiny2, tmp_path, name):
    reference = SAMPLERS[name]().sample(_run(tiny2))
    path = tmp_path / "checkpoint.safetensors"
    ckpt = checkpoint_after_two_steps(SAMPLERS[name](), _run(tiny2), path, name)
    assert ckpt.state.done == 2 and ckpt.total == 4
    fresh = _run(tiny2)  # a new process would rebuild the run from the seed, then restore the generator
    fresh.generator.set_state(ckpt.generator_state)
    resumed = SAMPLERS[name]().sample(fresh, ckpt.state)
    assert torch.equal(resumed, reference)
    # metamorphic: resuming without restoring the generator changes every sampler that draws after step 2
    if name in ("syncos", "syncos-csd-only", "glc", "direct"):
        again = _run(tiny2)
        assert not torch.equal(SAMPLERS[name]().sample(again, load_checkpoint(path).state), reference)


@pytest.fixture(scope="module")
def small():
    """16×16 pixels: one transformer token per latent frame."""
    return make_tiny(prompts=("a cat", "a dog runs"), height=16, width=16)


@pytest.fixture
def one_thread():
    """FIFO's queue is many tiny tensor ops: one intra-op thread is much faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("stop", [3, 10])  # inside the base clip (7 steps), inside the queue iterations
def test_fifo_resume_is_bit_identical(small, one_thread, tmp_path, stop):
    fifo = lambda: FIFOSampler(num_partitions=1)  # noqa: E731  M = 13: 7 base-clip steps + 21 iterations
    reference = fifo().sample(_run(small))
    path, run = tmp_path / "checkpoint.safetensors", _run(small)
    hooks = StepHooks(path, lambda state, total: Checkpoint(state, total, run.generator.get_state(), {}, "s"),
                      Interrupts(), every=1)

    def stop_there(state, total):
        hooks(state, total)
        if state.done == stop:
            raise _Stop

    run.after_step = stop_there
    with pytest.raises(_Stop):
        fifo().sample(run)
    ckpt = load_checkpoint(path)
    assert ckpt.state.done == stop and ckpt.total == 28
    fresh = _run(small)
    fresh.generator.set_state(ckpt.generator_state)
    assert torch.equal(fifo().sample(fresh, ckpt.state), reference)
    if stop > 7:  # the queue's noise was drawn: continuing without the saved generator gives another video
        assert not torch.equal(fifo().sample(_run(small), load_checkpoint(path).state), reference)


def test_interrupt_writes_checkpoint_then_stops(tiny2, tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    interrupts = Interrupts()
    run = _run(tiny2)
    snapshot = lambda state, total: Checkpoint(state, total, run.generator.get_state(), {}, "s")  # noqa: E731
    hooks = StepHooks(path, snapshot, interrupts, every=0, resume_command="longgen resume X")

    def after(state, total):
        if state.done == 1:
            interrupts.requested = "SIGTERM"
        hooks(state, total)

    run.after_step = after
    with pytest.raises(Interrupted, match=r"SIGTERM after step 1 of 4.*longgen resume X"):
        GenLVideoSampler(num_steps=4).sample(run)
    assert load_checkpoint(path).state.done == 1  # written although periodic checkpoints are off


def test_damaged_checkpoints_are_one_line(tmp_path):
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UsageError, match="damaged or not a longgen checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(UsageError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------- CLI
RUN = ["backbone=tiny", "sampler=syncos", "sampler.num_steps=8", "sampler.t_min=700", "sampler.iters=2",
       "sampler.batch_windows=3", "num_windows=3", "prompt=a cat", "save_latents=true"]


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "longgen.cli", "generate", *RUN, f"hydra.run.dir={out}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    path, deadline = out / "checkpoint.safetensors", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            try:
                if load_checkpoint(path).state.done >= step:
                    return
            except UsageError:
                pass  # being replaced right now
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of step {step} appeared (exit {proc.poll()})")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    longgen.generate(*RUN, run_dir=out)
    return out


def test_kill9_then_resume_equals_uninterrupted(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "video.mp4").exists() and (out / "checkpoint.safetensors").exists()
    longgen.resume(out)
    assert torch.equal(load_file(out / "latents.safetensors")["latents"],
                       load_file(reference_run / "latents.safetensors")["latents"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"]["after_step"] >= 2 and not (out / "checkpoint.safetensors").exists()
    ref = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["transformer_forwards"] == ref["transformer_forwards"]
    assert manifest["transformer_forwards_planned"] == ref["transformer_forwards_planned"] == ref["transformer_forwards"]


def test_sigint_exits_130_with_resume_line(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_step(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("longgen: error:")]
    assert len(lines) == 1 and f"longgen resume {out}" in lines[0] and "Traceback" not in stderr
    assert "stopped by SIGINT" in (out / "generate.log").read_text()
    assert not any(p.name.endswith(".tmp") or ".tmp." in p.name for p in out.iterdir())
    # a changed sampler option is refused, a harmless one accepted
    refused = run_cli("resume", str(out), "sampler.t_min=800")
    assert refused.returncode == 2 and len(error_lines(refused)) == 1 and "sampler.t_min" in error_lines(refused)[0]
    longgen.resume(out, "writer.crf=20")
    assert "resuming " in (out / "generate.log").read_text()  # appended to the run's log once resume owns it
    assert torch.equal(load_file(out / "latents.safetensors")["latents"],
                       load_file(reference_run / "latents.safetensors")["latents"])


def test_decode_reproduces_the_video(reference_run, tmp_path, capsys):
    proc = run_cli("decode", str(reference_run), "writer.filename=again.mp4", "progress_seconds=0.001")
    assert proc.returncode == 0, proc.stderr
    assert len(_decode_lines(proc)) >= 2, proc.stderr  # a line at every update, as generate's (issue 27)
    a = _frames(reference_run / "video.mp4")
    b = _frames(reference_run / "again.mp4")
    assert a.shape == b.shape and np.array_equal(a, b)
    assert f"wrote {reference_run / 'again.mp4'}" in (reference_run / "decode.log").read_text()  # decode's own log
    # from the latents file into another folder (in this process: the command's own run_decode)
    capsys.readouterr()
    longgen.decode(reference_run / "latents.safetensors", "backbone=tiny", f"out={tmp_path}", "progress_seconds=0.001")
    assert len(_decode_lines(capsys.readouterr())) >= 2
    assert np.array_equal(_frames(tmp_path / "video.mp4"), a)
    again = run_cli("decode", str(reference_run), "writer.filename=again.mp4")
    assert again.returncode == 2 and "overwrite=true" in error_lines(again)[0]


def _decode_lines(proc) -> list[str]:
    """The decode progress lines a command (a process, or capsys's capture of a call) logged off a terminal
    (`decode: N/M, ...`)."""
    return [ln for ln in (proc.out + proc.err if hasattr(proc, "out") else proc.stdout + proc.stderr).splitlines()
            if "decode: " in ln and "/" in ln]


def _frames(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def test_finished_and_locked_run_directories_are_refused(reference_run, tmp_path):
    proc = run_cli("generate", *RUN, f"hydra.run.dir={reference_run}")
    assert proc.returncode == 2 and "already holds a finished run" in error_lines(proc)[0]
    held = RunDirectory(tmp_path / "busy").claim()
    try:
        proc = run_cli("generate", *RUN, f"hydra.run.dir={tmp_path / 'busy'}")
        assert proc.returncode == 2 and "another longgen run is using" in error_lines(proc)[0]
    finally:
        held.release()

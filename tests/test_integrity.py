"""Data integrity (issue 28, items 3, 5 and 10): checkpoints carry a hash of their tensors, checked on load; the
previous checkpoint is replaced only by a verified one; a NaN/inf state is never saved nor decoded; a full disk at
checkpoint, latents, video or record time is one line naming what is kept and the resume command (in
generate.log too); extend runs record their input video's hash and refuse a changed input on resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longgen.run.checkpoint import Checkpoint, Interrupts, StepHooks, load_checkpoint, save_checkpoint
from longgen.errors import RunFailure, UsageError
from longgen.samplers.base import SamplerState

from cli_helpers import error_lines, run_cli

HERE = Path(__file__).resolve().parent
TINY = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "num_windows=2", "sampler=gen-l-video",
        "sampler.num_steps=3", "prompt=a cat", "checkpoint_every=1"]


def _ckpt(done: int, value: float = 1.0) -> Checkpoint:
    state = SamplerState({"x": torch.full((3, 4, 2, 2), value)}, done=done)
    return Checkpoint(state, 5, torch.Generator().manual_seed(1).get_state(), {"seed": 1}, "story")


def _flip_data_bit(path: Path, at: int = 5) -> None:
    """Flip one bit in the tensor data (after the 8-byte length and the JSON header)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + at] ^= 0x04
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------- item 3
def test_a_flipped_bit_in_the_tensor_data_is_damage(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, _ckpt(2))
    assert torch.equal(load_checkpoint(path).state.tensors["x"], torch.ones(3, 4, 2, 2))
    _flip_data_bit(path)
    with pytest.raises(UsageError, match="is damaged or not a longgen checkpoint.*does not match its sha256"):
        load_checkpoint(path)


def test_a_failed_or_unverified_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import longgen.run.checkpoint

    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, _ckpt(1))
    real = longgen.run.checkpoint.write_bytes

    def short_write(filename, data):  # a write that ends short without an error (a full disk, a network mount)
        real(filename, data)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) - 7)

    monkeypatch.setattr(longgen.run.checkpoint, "write_bytes", short_write)
    with pytest.raises(OSError, match="is the disk full"):
        save_checkpoint(path, _ckpt(2))

    def flipped_write(filename, data):  # a bit lost between memory and disk
        real(filename, data)
        _flip_data_bit(Path(filename))

    monkeypatch.setattr(longgen.run.checkpoint, "write_bytes", flipped_write)
    with pytest.raises(OSError, match="differs from what was written"):
        save_checkpoint(path, _ckpt(2))
    assert load_checkpoint(path).state.done == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]  # no temporary files left


def test_a_nan_state_is_never_saved_and_names_the_step(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    hooks = StepHooks(path, lambda state, total: Checkpoint(state, total, torch.Generator().get_state(), {}, "s"),
                      Interrupts(), every=1, resume_command="longgen resume RUN")
    hooks(SamplerState({"x": torch.ones(2, 2)}, done=1), 4)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(RunFailure, match=r"after step 2 of 4 holds NaN/inf.*after step 1\) is kept in .*"
                                             r"continue with: longgen resume RUN"):
            hooks(SamplerState({"x": torch.tensor([[1.0, bad], [0.0, 0.0]])}, done=2), 4)
    assert load_checkpoint(path).state.done == 1


def test_cli_nan_stops_with_one_line_and_no_video(tmp_path):
    out = tmp_path / "run"
    proc = _fault("nan:2", *TINY, f"hydra.run.dir={out}")  # one call per step: step 1 fine, step 2 NaN
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line, = error_lines(proc)
    assert "after step 2 of 3 holds NaN/inf" in line and "after step 1) is kept" in line
    assert not (out / "video.mp4").exists() and load_checkpoint(out / "checkpoint.safetensors").state.done == 1
    assert line.removeprefix("longgen: error: ") in (out / "generate.log").read_text()


# ---------------------------------------------------------------------------------------------------- item 10
def _fault(fault: str, *args: str, command: str = "generate") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(HERE / "fault_driver.py"), fault, command, *args],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fault, kept", [
    ("checkpoint:2", "the last good checkpoint (after step 1) is kept in"),
    ("latents", "the sampled latents are kept in"),
    ("video", "the sampled latents are kept in"),
    ("record", "the sampled latents are kept in"),
])
def test_a_full_disk_is_one_line_naming_what_is_kept(tmp_path, fault, kept):
    """The one line of each full disk, through the CLI. The resume of a run cut by a full disk at a checkpoint (to
    the uninterrupted run's latents, only the steps not done run again) is tests/test_api.py
    test_resume_continues_a_cut_generate_or_extend_run_to_the_same_latents; here the run stopped once every step
    was done (record) is resumed."""
    import longgen

    out = tmp_path / "run"
    proc = _fault(fault, *TINY, "save_latents=true", f"hydra.run.dir={out}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line, = error_lines(proc)
    assert f"{kept} {out / 'checkpoint.safetensors'}" in line and f"longgen resume {out}" in line
    assert ("No space left on device" in line or "no space left" in line)
    assert line.removeprefix("longgen: error: ") in (out / "generate.log").read_text()
    assert not any(".tmp" in p.name for p in out.iterdir())
    step = load_checkpoint(out / "checkpoint.safetensors").state.done  # intact
    assert step == (1 if fault.startswith("checkpoint") else 3)
    if fault == "record":  # space freed: the resume finishes the same video from the last step's checkpoint
        sampled = load_file(out / "latents.safetensors")["latents"]  # written before the record failed
        resumed = longgen.resume(out)
        assert resumed.manifest["resumed"]["after_step"] == 3 and resumed.video.is_file()
        # no step ran again: the forwards counted are the uninterrupted run's
        assert resumed.manifest["transformer_forwards"] == resumed.manifest["transformer_forwards_planned"]
        assert torch.equal(load_file(out / "latents.safetensors")["latents"], sampled)


# ---------------------------------------------------------------------------------------------------- item 5
EXTEND = ["backbone=tiny", "backbone.num_frames=17", "backbone.stride=2", "backbone.height=16", "backbone.width=16",
          "sampler=gen-l-video", "sampler.num_steps=3", "num_windows=2", "prompt=a cat"]


def test_extend_resume_checks_the_input_video_by_its_hash(tmp_path, monkeypatch):
    """The cut extend run and its final resume run in this process (longgen.extend / longgen.resume, the commands'
    own functions); the two refusals go through the CLI (exit status 2, one line)."""
    import longgen
    from fault_driver import plant
    from test_extend import make_video

    src = tmp_path / "in" / "input.mp4"
    src.parent.mkdir()
    make_video(src, 20, (16, 16), 8)
    out = tmp_path / "run"
    # started from its own folder with a relative path; stopped by a full disk at the second checkpoint
    monkeypatch.chdir(src.parent)
    with monkeypatch.context() as patch, pytest.raises(RunFailure, match="no space left|No space left"):
        plant("checkpoint:2", patch.setattr)
        longgen.extend("input.mp4", *EXTEND, run_dir=out)
    assert (out / "checkpoint.safetensors").is_file()
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.inputs["video"]["path"] == str(src.resolve())
    original = src.read_bytes()
    make_video(src, 20, (16, 16), 4)  # another video under the same name
    changed = run_cli("resume", str(out), cwd=tmp_path)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    line, = error_lines(changed)
    assert f"{src.resolve()} changed since this extend run started" in line
    moved = tmp_path / "elsewhere.mp4"
    moved.write_bytes(original)
    src.unlink()
    gone = run_cli("resume", str(out), cwd=tmp_path)
    assert gone.returncode == 2 and "is gone: give it with video=PATH" in error_lines(gone)[0]
    elsewhere = tmp_path / "other-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    longgen.resume(out, "video=../elsewhere.mp4")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"]["after_step"] == 1 and manifest["input"]["path"] == str(moved.resolve())
    assert (out / "extended.mp4").is_file()

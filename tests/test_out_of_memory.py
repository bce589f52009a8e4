"""Running out of GPU memory is one line that says what is kept and how to continue, never a traceback (issue 23).

No GPU here: the tiny backbone's `predict` (or `load`) raises torch.cuda.OutOfMemoryError — what PyTorch raises
on a GPU — from the Nth call on, inside a real CLI process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from cli_helpers import error_lines

DRIVER = """
import sys, torch
from longgen.backbones.cogvideox import CogVideoXBackbone as Backbone
method, after, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
original = getattr(Backbone, method)
calls = [0]
def failing(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] > after:
        if kind == "driver":  # what a new process gets when another holds the GPU (torch.AcceleratorError)
            raise RuntimeError("CUDA error: out of memory")
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return original(self, *args, **kwargs)
setattr(Backbone, method, failing)
from longgen.cli import main
sys.exit(main(sys.argv[4:]))
"""

RUN = ["generate", "backbone=tiny", "backbone.height=16", "backbone.width=16", "backbone.micro_batch=2",
       "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=4", "prompt=a cat"]


def _run(method: str, after: int, *args: str, kind: str = "allocator") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", DRIVER, method, str(after), kind, *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_out_of_memory_while_sampling_keeps_the_finished_steps(tmp_path):
    run = tmp_path / "run"
    # Gen-L-Video asks for all windows of a step in one predict: the 3rd call is step 3's
    proc = _run("predict", 2, *RUN, f"hydra.run.dir={run}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert "out of GPU memory while sampling" in line and "backbone.micro_batch=2" in line
    assert f"checkpoint after step 2 is kept in {run / 'checkpoint.safetensors'}" in line
    assert f"longgen resume {run}" in line
    assert "out of GPU memory" in (run / "generate.log").read_text()


def test_out_of_memory_while_loading_is_one_line(tmp_path):
    # the driver's error (a RuntimeError, not torch's OutOfMemoryError): what building a model on a full GPU raised
    proc = _run("load", 0, *RUN, f"hydra.run.dir={tmp_path / 'run'}", kind="driver")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert "out of GPU memory while loading" in line and "backbone.cpu_offload=true" in line
    assert f"no step was checkpointed yet; start it again at its first step with: longgen resume {tmp_path / 'run'}" \
        in line
    assert (tmp_path / "run" / "story.json").is_file()  # what that resume reads


def test_out_of_memory_while_a_resume_loads_names_the_kept_checkpoint(tmp_path):
    # seen on a GPU (session 13): a resume that found the GPU full said "nothing was sampled yet" of a run whose
    # checkpoint after step 3 was on disk; the line names that checkpoint, which stays as it was
    run = tmp_path / "run"
    stopped = _run("predict", 2, *RUN, f"hydra.run.dir={run}")
    assert stopped.returncode == 1, stopped.stderr[-2000:]
    before = (run / "checkpoint.safetensors").read_bytes()
    proc = _run("load", 0, "resume", str(run), kind="driver")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert "out of GPU memory while loading" in line and "backbone.cpu_offload=true" in line
    assert f"the checkpoint after step 2 is kept in {run / 'checkpoint.safetensors'}" in line
    assert f"continue with: longgen resume {run}" in line and "nothing was sampled" not in line
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_out_of_memory_in_longgen_decode_is_one_line(tmp_path):
    from safetensors.torch import save_file

    latents = tmp_path / "latents.safetensors"
    save_file({"latents": torch.randn(5, 4, 2, 2)}, str(latents))
    out = tmp_path / "out"
    proc = _run("decode_stream", 0, "decode", str(latents), "backbone=tiny", "backbone.height=16",
                "backbone.width=16", f"out={out}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert "out of GPU memory while decoding" in line and "backbone.vae_tiling=true" in line
    assert not (out / "video.mp4").exists() and latents.is_file()

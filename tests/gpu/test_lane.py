"""The GPU lane: what users run, where they run it (issue 23). Full-size architectures with random weights
(compute does not depend on weight values), few windows and steps, through the installed CLI in subprocesses.

Run by `scripts/gpu_lane.sh` on a CUDA machine (skipped elsewhere). Cases:
- every sampler on CogVideoX-2B (direct, gen-l-video, syncos with stage 2 active across the interruption, glc with
  ABAM + VMCR, fifo) and syncos/fifo on Wan 2.1 1.3B: an uninterrupted run, and a run stopped by SIGINT, resumed,
  that resume killed with SIGKILL mid-sampling, and resumed again: the final latents equal the uninterrupted run's
  byte for byte (so both kinds of interruption, and a resume of a resumed run, are covered by one chain);
- `longgen decode` of a run directory and of a latents file gives the video's frames;
- `longgen extend` with its defaults, uninterrupted and stopped-then-resumed (same latents);
- a multi-shot scene with cross-shot attention, stopped and resumed (same latents);
- `eval=true` (eval.json) and `preview_every` (preview.jpg) inside the cases above;
- `backbone.attention=fa3|fa3-fp8|cudnn`, `backbone.compile=false`, `backbone.cpu_offload=true`;
- a request that does not fit in GPU memory (another process holds most of it): one line, no traceback, the
  sampled latents kept, and `longgen resume` finishes the video once memory is free (marked `alone`: it needs the
  GPU to itself, so the lane runs it after the parallel part).
`gpus=2` (same bytes as 1, resumed on 2) needs a machine with two GPUs: skipped where fewer are visible.
"""

from __future__ import annotations

import concurrent.futures
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

#: LONGGEN_LANE_DRY=1 runs the lane's logic on the CPU with the tiny backbones (to debug the lane itself; it proves
#: nothing about GPUs)
DRY = os.environ.get("LONGGEN_LANE_DRY") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

PROMPT = "prompt=a red fox walks through a snowy birch forest in soft morning light"  # no comma: -m sweeps
if DRY:
    COG_MODEL = ["backbone=tiny", "backbone.height=16", "backbone.width=16"]
    WAN_MODEL = ["backbone=tiny-wan", "backbone.height=16", "backbone.width=16"]
else:
    COG_MODEL = ["backbone=cogvideox-2b", "backbone.random_weights=true"]
    WAN_MODEL = ["backbone=wan2.1-t2v-1.3b", "backbone.random_weights=true"]
COG = [*COG_MODEL, "save_latents=true", PROMPT]
WAN = [*WAN_MODEL, "save_latents=true", PROMPT]

#: the resume chains: name → (backbone options, sampler options)
CHAINS = {
    "cog-direct": (COG, ["sampler=direct", "num_windows=1", "sampler.num_steps=5", "sampler.eta=0.5"]),
    "cog-gen-l-video": (COG, ["sampler=gen-l-video", "num_windows=2", "sampler.num_steps=5"]),
    # 6 steps from t = 999: stage 2 (t >= t_min) runs in steps 0-2, so the interruption falls inside it
    # micro-batches of 4: calls of 4 and 2 samples, two compiled graphs (compile_determinism.py)
    "cog-syncos": (COG, ["sampler=syncos", "num_windows=3", "sampler.num_steps=6", "sampler.t_min=500",
                         "sampler.iters=3", "preview_every=1", "backbone.micro_batch=4"]),
    "cog-glc": (COG, ["sampler=glc", "num_windows=3", "sampler.num_steps=5", "sampler.abam=true",
                      "backbone.micro_batch=4"]),
    "cog-fifo": (COG, ["sampler=fifo", "num_windows=2", "sampler.num_partitions=1"]),
    "wan-syncos": (WAN, ["sampler=syncos", "num_windows=2", "sampler.num_steps=6", "sampler.t_min=500",
                         "sampler.iters=3"]),
    "wan-fifo": (WAN, ["sampler=fifo", "num_windows=2", "sampler.num_partitions=1"]),
}


# ---------------------------------------------------------------------------------------------------- helpers
def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": "1"} if DRY else {})}


def cli(*args: str, cwd: Path, timeout: float = 540) -> subprocess.CompletedProcess:
    """The installed CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "longgen.cli", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "longgen.cli", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def keep_log(what: str, stderr: str) -> None:
    """Append a failing process's stderr to $LANE_LOG (the lane's failure log, read after the run)."""
    path = os.environ.get("LANE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"\n===== {os.environ.get('PYTEST_CURRENT_TEST', '?')} · {what}\n{stderr[-6000:]}\n")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        keep_log(f"exit {proc.returncode}: {' '.join(proc.args[3:])}", proc.stderr)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("longgen: error:")]
    if len(lines) != 1 or "Traceback" in stderr:
        keep_log("expected one error line", stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def checkpoint_step(run_dir: Path) -> tuple[int, int] | None:
    """(finished steps, total) of the run's checkpoint, None while there is none (or it is being replaced)."""
    from safetensors import safe_open

    path = run_dir / "checkpoint.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        return int(meta["done"]), int(meta["total"])
    except Exception:
        return None


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 480) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        seen = checkpoint_step(run_dir)
        if seen is not None and seen[0] >= step:
            return seen[0]
        time.sleep(0.05)
    out, err = proc.communicate() if proc.poll() is not None else ("", "")
    keep_log(f"no checkpoint of step {step} (exit {proc.poll()})", err)
    raise AssertionError(f"no checkpoint of step {step} in {run_dir} (exit {proc.poll()}): {err[-2000:]}")


def latents(run_dir: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(run_dir / "latents.safetensors")["latents"]


def frames(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def whole_and_chain(command: list[str], tmp_path: Path, whole_extra: tuple[str, ...] = ()) -> dict:
    """The uninterrupted run (tmp_path/whole) in the background while the interrupted chain (tmp_path/chain) runs:
    the lane's time is mostly process start-up and compilation, so the two overlap."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        whole = pool.submit(cli, *command, *whole_extra, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
        seen = interrupted_chain(command, tmp_path / "chain", tmp_path)
        ok(whole.result())
    return seen


def interrupted_chain(command: list[str], run_dir: Path, cwd: Path) -> dict:
    """SIGINT after the first checkpoint, `longgen resume`, SIGKILL of that resume one step later, `longgen resume`
    again; returns what each stage saw."""
    proc = start(*command, f"hydra.run.dir={run_dir}", cwd=cwd)
    wait_for_step(run_dir, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 130:
        keep_log(f"SIGINT run exit {proc.returncode}", err)
    assert proc.returncode == 130, err[-3000:]
    assert f"longgen resume {run_dir}" in one_line(err)
    stopped, total = checkpoint_step(run_dir)
    assert 1 <= stopped < total

    proc = start("resume", str(run_dir), cwd=cwd)
    killed = wait_for_step(run_dir, stopped + 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed = checkpoint_step(run_dir)[0]
    ok(cli("resume", str(run_dir), cwd=cwd))
    return {"sigint_after": stopped, "killed_after": killed, "total": total}


def same_chain_latents(tmp_path: Path, what: str, seen: dict) -> torch.Tensor:
    """The uninterrupted run's latents (tmp_path/whole), checked finite and equal byte for byte to the interrupted
    chain's (tmp_path/chain); a difference goes to the lane's failure log with its size and the frames it touches."""
    whole, chain = latents(tmp_path / "whole"), latents(tmp_path / "chain")
    assert torch.isfinite(whole).all()
    if not torch.equal(whole, chain):
        diff = (whole - chain).abs()
        keep_log("latents differ", f"{what}: {seen}; max |diff| {diff.max().item():.3g}, frames differing "
                 f"{(diff.flatten(1).amax(1) > 0).nonzero().flatten().tolist()}")
    assert torch.equal(whole, chain), f"{what}: resumed latents differ ({seen})"
    return whole


# ---------------------------------------------------------------------------------------------------- resume chains
@pytest.mark.parametrize("name", list(CHAINS))
def test_uninterrupted_equals_sigint_and_kill9_resumes(name, tmp_path):
    backbone, sampler = CHAINS[name]
    command = ["generate", *backbone, *sampler]
    extra = ("eval=true",) if name == "cog-gen-l-video" else ()
    seen = whole_and_chain(command, tmp_path, extra)
    same_chain_latents(tmp_path, name, seen)
    manifest = json.loads((tmp_path / "chain" / "manifest.json").read_text())
    reference = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert manifest["resumed"]["after_step"] == seen["killed_after"]
    assert manifest["transformer_forwards"] == reference["transformer_forwards"]
    assert manifest["backbone"]["device"].startswith("cpu" if DRY else "cuda"), manifest["backbone"]
    assert not (tmp_path / "chain" / "checkpoint.safetensors").exists()
    if name == "cog-gen-l-video":
        report = json.loads((tmp_path / "whole" / "eval.json").read_text())
        assert report and "Traceback" not in json.dumps(report)
    if name == "cog-syncos":
        assert (tmp_path / "chain" / "preview.jpg").stat().st_size > 0


def test_decode_of_a_run_directory_and_of_a_latents_file(tmp_path):
    run = tmp_path / "run"
    ok(cli("generate", *COG, "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=3",
           "backbone.vae_tiling=false", f"hydra.run.dir={run}", cwd=tmp_path))
    ok(cli("decode", str(run), "backbone.vae_tiling=false", "writer.filename=again.mp4", cwd=tmp_path))
    other = tmp_path / "elsewhere"
    ok(cli("decode", str(run / "latents.safetensors"), *COG_MODEL, "backbone.vae_tiling=false", f"out={other}",
           cwd=tmp_path))
    video = frames(run / "video.mp4")
    assert video.shape[0] == 4 * (latents(run).shape[0] - 1) + 1
    assert np.array_equal(frames(run / "again.mp4"), video)
    assert np.array_equal(frames(other / "video.mp4"), video)


# ---------------------------------------------------------------------------------------------------- extend, shots
def test_extend_with_defaults_uninterrupted_and_resumed(tmp_path):
    source = tmp_path / "source"
    ok(cli("generate", *COG, "sampler=direct", "num_windows=1", "sampler.num_steps=3", f"hydra.run.dir={source}",
           cwd=tmp_path))
    command = ["extend", str(source / "video.mp4"), *COG_MODEL, "save_latents=true",
               "prompt=the fox leaps into a snow drift", "sampler.num_steps=5"]
    seen = whole_and_chain(command, tmp_path)
    assert torch.equal(latents(tmp_path / "whole"), latents(tmp_path / "chain")), seen
    for name in ("extended.mp4", "continuation.mp4", "manifest.json"):
        assert (tmp_path / "chain" / name).stat().st_size > 0


def test_multi_shot_scene_with_cross_shot_attention_resumed(tmp_path):
    story = tmp_path / "scene.json"
    story.write_text(json.dumps({
        "characters": {"1": "a tall woman in a green raincoat", "2": "an old fisherman"},
        "environment": "a rainy harbour at dusk",
        "story": "she waits for a ferry and meets an old friend",
        "shots": ["Wide shot: Character 1 stands at the pier.", "[SHOT CUT] Close-up: Character 2 lights a pipe."],
    }))
    command = ["generate", *COG_MODEL, "save_latents=true", f"story={story}", "sampler=gen-l-video", "sampler.num_steps=5", "shots.windows=[1,2]",
               "shots.cross_attention=0.5"]
    seen = whole_and_chain(command, tmp_path)
    assert torch.equal(latents(tmp_path / "whole"), latents(tmp_path / "chain")), seen


# ---------------------------------------------------------------------------------------------------- options
@pytest.mark.skipif(DRY, reason="FlashAttention-3 needs a Hopper GPU")
def test_attention_kernels_compile_off_and_cpu_offload(tmp_path):
    """One sweep process: fa3, fa3-fp8 and cuDNN attention (compiled), eager, and model CPU offload."""
    base = ["generate", "-m", *COG, "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    ok(cli(*base, "backbone.attention=fa3,fa3-fp8,cudnn", cwd=tmp_path))
    ok(cli(*base, "backbone.compile=false", "backbone.cpu_offload=false,true", "hydra.sweep.dir=" +
           str(tmp_path / "sweep2"), cwd=tmp_path))
    runs = sorted((tmp_path / "sweep").glob("*_gen-l-video")) + sorted((tmp_path / "sweep2").glob("*_gen-l-video"))
    assert len(runs) == 5, runs
    got, used = [], []
    for run in runs:
        backbone = json.loads((run / "manifest.json").read_text())["backbone"]
        used.append((backbone["attention_used"], backbone["compiled"], backbone["cpu_offload"]))
        got.append(latents(run))
        assert torch.isfinite(got[-1]).all(), run
        assert (run / "video.mp4").stat().st_size > 0
    assert [u[0] for u in used[:3]] == ["fa3", "fa3-fp8", "cudnn"] and used[0][1], used
    assert not used[3][1] and not used[4][1] and used[4][2], used
    fa3, fp8, cudnn, eager, offload = got
    # the exact kernels agree closely with each other; FP8 attention is further off but the same video
    assert (fa3 - cudnn).abs().max() < 0.05 * cudnn.abs().max()
    assert (fp8 - cudnn).abs().max() < 0.3 * cudnn.abs().max()
    assert torch.equal(eager, offload), "model CPU offload changed the result"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="gpus=2 needs two GPUs on this machine")
def test_two_gpus_same_bytes_and_resumed_on_two(tmp_path):
    command = ["generate", *COG, "sampler=syncos", "num_windows=3", "sampler.num_steps=5", "sampler.t_min=500",
               "sampler.iters=3"]
    ok(cli(*command, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path))
    ok(cli(*command, "gpus=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "two"))
    seen = interrupted_chain([*command, "gpus=2"], tmp_path / "chain", tmp_path)
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "chain")), seen


# ---------------------------------------------------------------------------------------------------- out of memory
HOG = """
import signal, sys, torch
leave = int(float(sys.argv[1]) * 2**30)
free, _ = torch.cuda.mem_get_info()
held = torch.empty(max(0, free - leave), dtype=torch.uint8, device="cuda")
print("holding", held.numel() // 2**20, "MiB", flush=True)
signal.pause()
"""


def _hog(leave_gib: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOG, str(leave_gib)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("holding")
    return proc


@pytest.mark.alone
@pytest.mark.skipif(DRY, reason="fills a GPU's memory: nothing to fill on the CPU")
def test_out_of_memory_is_one_line_and_keeps_finished_work(tmp_path):
    # decode: room for sampling (≈ 6 GB) but not for a whole-frame decode (≈ 15 GB): the sampled latents are kept
    # and `longgen resume` writes the video once memory is free
    run = tmp_path / "run"
    command = ["generate", *COG, "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=3",
               "backbone.vae_tiling=false", "backbone.compile=false", f"hydra.run.dir={run}"]
    hog = _hog(9.0)
    try:
        proc = cli(*command, cwd=tmp_path)
    finally:
        hog.kill()
        hog.wait()
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "memory" in line and f"longgen resume {run}" in line, line
    assert not (run / "video.mp4").exists()
    assert (run / "checkpoint.safetensors").exists() or (run / "latents.safetensors").exists()
    ok(cli("resume", str(run), cwd=tmp_path))
    assert (run / "video.mp4").stat().st_size > 0

    # sampling: no room for the model's activations at all: one line, nothing but the log left behind
    small = tmp_path / "small"
    hog = _hog(4.5)
    try:
        proc = cli("generate", *COG, "sampler=syncos", "num_windows=6", "backbone.micro_batch=12",
                   "sampler.num_steps=3", "backbone.compile=false", f"hydra.run.dir={small}", cwd=tmp_path)
    finally:
        hog.kill()
        hog.wait()
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert "memory" in line, line
    assert not (small / "video.mp4").exists()

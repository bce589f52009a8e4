"""Bad numbers and settings of `generate` fail in the plan stage with one line, before any weights load; outputs
are written atomically; refused runs leave no directory. In-process through Hydra's compose API (fast), plus a
few CLI runs for what only the CLI shows."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from longgen.errors import UsageError
from longgen.run.job import plan_job
from longgen.commands.generate import validate_sweep
from longgen.rundir import atomic_file, write_json

from cli_helpers import error_lines, run_cli

BASE = ["backbone=tiny", "prompt=a cat", "num_windows=2", "sampler.num_steps=2"]


def _plan(*overrides: str):
    keys = {o.split("=")[0] for o in overrides}
    args = [b for b in BASE if b.split("=")[0] not in keys] + list(overrides)
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=args, return_hydra_config=True)
    return plan_job(cfg, Path("."), dict(cfg.hydra.runtime.choices))


@pytest.mark.parametrize("override,message", [
    ("num_windows=abc", "num_windows='abc' must be a whole number"),
    ("length_factor=abc", "length_factor='abc' must be a finite number"),
    ("length_factor=inf", "length_factor=inf must be a finite number"),
    ("seed=18446744073709551616", "seed=18446744073709551616 must be a whole number"),
    ("sampler.num_steps=1e9", "sampler.num_steps=1000000000 must be a whole number between 1 and 1000"),
    ("sampler.num_steps=abc", "sampler.num_steps='abc' must be a whole number"),
    ("sampler.guidance_scale=nan", "sampler.guidance_scale=nan must be a finite number"),
    ("writer.codec=nope", "ffmpeg cannot encode with writer.codec=nope"),
    ("writer.preset=bogus", "writer.preset=bogus"),
    ("save_latents=maybe", "save_latents='maybe' must be true or false"),
])
def test_bad_numbers_and_settings_are_one_line(override, message):
    with pytest.raises(UsageError) as err:
        _plan(override)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["num_windows=1000000000", "length_factor=1e9", "latent_frames=2000001"])
def test_huge_videos_are_refused_at_once(override):
    keys = ("num_windows=null",) if not override.startswith("num_windows") else ()
    started = time.perf_counter()
    with pytest.raises(UsageError, match="latent frames|must be a whole number|finite number"):
        _plan(*keys, override)
    assert time.perf_counter() - started < 5  # no plan, tensor or window list is ever built


def test_a_sweep_is_validated_before_any_job(tmp_path):
    assert validate_sweep(["-m", *BASE, "sampler=gen-l-video,direct"]) is None
    problem = validate_sweep(["-m", *BASE, "sampler.guidance_scale=6,nan"])
    assert problem.startswith("sweep job 1 ") and "guidance_scale=nan" in problem
    proc = run_cli("generate", "-m", *BASE, "seed=0,-1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1 and not (tmp_path / "sweep").exists()


def test_run_dir_problems_and_refusals_leave_nothing(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target, message in ((afile, "is a file"), (afile / "sub", "lies under the file")):
        proc = run_cli("generate", *BASE, f"hydra.run.dir={target}")
        assert proc.returncode == 2 and message in error_lines(proc)[0] and "Traceback" not in proc.stderr
    out = tmp_path / "dated" / "run"
    proc = run_cli("generate", *BASE, "sampler.stride=0", f"hydra.run.dir={out}")
    assert proc.returncode == 2 and not (tmp_path / "dated").exists()


def test_atomic_files_are_unique_and_never_follow_links(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json.tmp").symlink_to(victim)  # the old fixed temporary name, planted
    (run / ".manifest.json.tmp").symlink_to(victim)
    write_json(run / "manifest.json", {"a": 1})
    assert victim.read_text() == "keep me" and (run / "manifest.json").read_text().startswith("{")
    with pytest.raises(ValueError):
        write_json(run / "bad.json", {"x": float("nan")})  # NaN would make invalid JSON
    assert not (run / "bad.json").exists() and not [p for p in run.iterdir() if ".bad.json" in p.name]
    with pytest.raises(RuntimeError), atomic_file(run / "video.mp4") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert not (run / "video.mp4").exists()


def _small_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk


def test_a_full_disk_during_the_video_leaves_no_truncated_file(tmp_path):

    code = (
        "import numpy as np, sys\n"
        "from longgen.writer import Mp4Writer\n"
        "from longgen.errors import RunFailure\n"
        "rng = np.random.default_rng(0)\n"
        "chunks = (rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8) for _ in range(50))\n"
        "try:\n"
        f"    Mp4Writer().write(chunks, {str(tmp_path)!r}, 8)\n"
        "except RunFailure as exc:\n"
        "    print('FAILED', exc); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], preexec_fn=_small_files, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and not list(tmp_path.iterdir())

"""GPU lane cases of issue 25's "plain sight" part: SynCoS on the full-size CogVideoX-2B (random weights) run by the
CLI with its stderr not a terminal shows a progress line per step, weighted by the forwards each step plans (the
stage-2 steps first), and the Python API with the same overrides, in another process, writes the same latents byte
for byte. `LONGGEN_LANE_DRY=1` runs it on the CPU with the tiny backbone."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from test_lane import COG, DRY, _env, cli, latents, ok

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

#: 6 steps from t = 999, stage 2 above t_min=500: steps 1-3 carry 3 windows + 3 iterations × 2 windows
SYNCOS = ["sampler=syncos", "num_windows=3", "sampler.num_steps=6", "sampler.t_min=500", "sampler.iters=3",
          "progress_every=1"]


def test_syncos_progress_lines_and_the_api_writes_the_cli_latents(tmp_path):
    proc = ok(cli("generate", *COG, *SYNCOS, f"hydra.run.dir={tmp_path / 'cli'}", cwd=tmp_path))
    text = " ".join(proc.stderr.split())
    shares = [int(s) for s in re.findall(r"denoise · 3 windows: \d/6 \((\d+)% of the work\)", text)]
    assert len(shares) == 6 and shares[-1] == 100, text[-2000:]
    # guided: stage 1 = 6 forwards every step, stage 2 = 3 × 2 × 2 = 12 more at the steps above t_min (the first)
    work = [b - a for a, b in zip([0, *shares], shares)]  # % of the work each step did
    assert work[0] > 2 * work[-1], shares

    overrides = [*COG, *SYNCOS, f"hydra.run.dir={tmp_path / 'api'}"]
    script = "import sys, longgen; r = longgen.generate(*sys.argv[1:]); print(r.run_dir)"
    api = subprocess.run([sys.executable, "-c", script, *overrides], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=540)
    assert api.returncode == 0, api.stderr[-3000:]
    assert api.stdout.strip().endswith(os.fspath(tmp_path / "api"))
    assert (tmp_path / "api" / "latents.safetensors").read_bytes() == (tmp_path / "cli" / "latents.safetensors").read_bytes()
    assert torch.equal(latents(tmp_path / "api"), latents(tmp_path / "cli"))

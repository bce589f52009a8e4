"""GPU lane case of issue 27's `gpus=N` group jobs (run by scripts/gpu_lane.sh; `LONGGEN_LANE_DRY=1` runs it on the
CPU with the tiny backbone): a submitit_local sweep of three CogVideoX-2B jobs with the same seed — one on one
GPU, two on two GPUs (`gpus=2`, `hydra.launcher.gpus_per_node=2`), the second of those stopped by SIGTERM in step 2
(sent to every process of the job, as SLURM does: tests/preempt_callback.py) and requeued as `longgen resume` on two
GPUs — all three with the same latents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_lane import COG, DRY, _env, latents, ok

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]
TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not DRY and torch.cuda.device_count() < 2, reason="a gpus=2 job needs two GPUs")
def test_gpus2_submitit_jobs_give_the_bytes_of_one_gpu_also_preempted(tmp_path):
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "LONGGEN_TEST_PREEMPT": "2:2:SIGTERM+ranks"}
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", "generate", "-m", *COG, "sampler=gen-l-video",
                           "num_windows=2", "sampler.num_steps=4", "backbone.micro_batch=1", "seed=0", "gpus=1,2,2",
                           "hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=2",
                           "+hydra.callbacks.preempt._target_=preempt_callback.Preempt",
                           f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=570)
    ok(proc)
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["done"] == [0, 1, 2] and summary["requeued"] == [2], summary
    runs = [tmp_path / "s" / f"{job}_gen-l-video" for job in range(3)]
    manifests = [json.loads((run / "manifest.json").read_text()) for run in runs]
    assert [m["distributed"]["world_size"] for m in manifests] == [1, 2, 2]
    assert manifests[2]["resumed"]["after_step"] == 2
    for run in runs[1:]:
        assert torch.equal(latents(run), latents(runs[0])), run.name
    if not DRY:
        assert [r["device"] for r in manifests[1]["distributed"]["ranks"]] == ["cuda:0", "cuda:1"]
        assert [r["device"] for r in manifests[2]["distributed"]["ranks"]] == ["cuda:0", "cuda:1"]

"""GPU lane cases of issue 27's SLURM part (run by scripts/gpu_lane.sh; `LONGGEN_LANE_DRY=1` runs them on the CPU
with the tiny backbones):
- a submitit_local sweep of two CogVideoX-2B jobs with the same seed, the second preempted (SIGUSR2, sent by the
  job's process to itself after step 2: tests/preempt_callback.py) and requeued as `longgen resume`: same latents;
- two torchrun "nodes" on this host (c10d rendezvous, one process and one GPU each, NCCL): the latents of one GPU
  (needs two GPUs; on the CPU in the dry run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_lane import COG, DRY, _env, keep_log, latents, ok

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]
TESTS = Path(__file__).resolve().parents[1]


def test_preempted_submitit_job_resumes_to_the_bytes_of_an_unpreempted_one(tmp_path):
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "LONGGEN_TEST_PREEMPT": "1:2:SIGUSR2"}
    gpus = [] if DRY else ["hydra.launcher.gpus_per_node=1"]
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", "generate", "-m", *COG, "sampler=gen-l-video",
                           "num_windows=2", "sampler.num_steps=5", "seed=0,0", "hydra/launcher=submitit_local", *gpus,
                           "+hydra.callbacks.preempt._target_=preempt_callback.Preempt",
                           f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=540)
    ok(proc)
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["done"] == [0, 1] and summary["requeued"] == [1], summary
    run = tmp_path / "s" / "1_gen-l-video"
    assert json.loads((run / "manifest.json").read_text())["resumed"]["after_step"] == 2
    assert torch.equal(latents(run), latents(tmp_path / "s" / "0_gen-l-video"))


@pytest.mark.skipif(not DRY and torch.cuda.device_count() < 2, reason="two nodes with a GPU each need two GPUs")
def test_two_torchrun_nodes_give_the_bytes_of_one_gpu(tmp_path):
    command = ["generate", *COG, "sampler=gen-l-video", "num_windows=3", "sampler.num_steps=4",
               "backbone.micro_batch=1"]
    ok(subprocess.run([sys.executable, "-m", "longgen.cli", *command, f"hydra.run.dir={tmp_path / 'one'}"],
                      cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=540))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for i in range(2):
        env = {**_env(), "GLOO_SOCKET_IFNAME": "lo", **({} if DRY else {"CUDA_VISIBLE_DEVICES": str(i)})}
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
             f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lane-multinode", "-m", "longgen.cli", *command,
             f"hydra.run.dir={tmp_path / 'two'}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    errors = [n.communicate(timeout=540)[1] for n in nodes]
    for node, err in zip(nodes, errors):
        if node.returncode != 0:
            keep_log(f"node exit {node.returncode}", err)
    assert [n.returncode for n in nodes] == [0, 0], [e[-3000:] for e in errors]
    assert torch.equal(latents(tmp_path / "one"), latents(tmp_path / "two"))
    distributed = json.loads((tmp_path / "two" / "manifest.json").read_text())["distributed"]
    assert distributed["world_size"] == 2 and [r["rank"] for r in distributed["ranks"]] == [0, 1]
    if not DRY:
        assert distributed["backend"] == "nccl+gloo" and all(r["device"] == "cuda:0" for r in distributed["ranks"])

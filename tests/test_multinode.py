"""Multi-node torchrun: two "nodes" on this host (two torchrun agents meeting through the c10d rendezvous, one
process each, gloo) generate the same bytes as one process; only global rank 0 writes, each process computes on
device LOCAL_RANK. The form a cluster uses (README "SLURM"):
    srun torchrun --nnodes=$SLURM_NNODES --nproc-per-node=$GPUS --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29500 ...
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import torch
from safetensors.torch import load_file

COMMON = ["backbone=tiny", "backbone.micro_batch=1", "backbone.height=16", "backbone.width=16", "num_windows=2",
          "sampler=gen-l-video", "sampler.num_steps=2", "prompt=a fox in snow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_over_gloo_give_the_bytes_of_one_process(tmp_path, monkeypatch):
    two, one = tmp_path / "two", tmp_path / "one"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=longgen-multinode",
            "-m", "longgen.cli", "generate", *COMMON, f"hydra.run.dir={two}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "LONGGEN_DIST_TIMEOUT": "120", "GLOO_SOCKET_IFNAME": "lo"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    nodes = []
    for i in range(2):
        (tmp_path / f"node{i}").mkdir()  # each node's working directory: it must stay empty
        nodes.append(subprocess.Popen(node, env=env, cwd=tmp_path / f"node{i}", stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    # one process, here, while the two nodes run
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", *COMMON, f"hydra.run.dir={one}"]) == 0
    results = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [err[-3000:] for _, err in results]

    assert torch.equal(load_file(two / "latents.safetensors")["latents"], load_file(one / "latents.safetensors")["latents"])
    manifest = json.loads((two / "manifest.json").read_text())["distributed"]
    assert manifest["world_size"] == 2 and manifest["launcher"] == "torchrun" and manifest["backend"] == "gloo"
    assert [r["rank"] for r in manifest["ranks"]] == [0, 1]
    assert all(r["units"] > 0 for r in manifest["ranks"])  # both nodes computed units
    # only global rank 0 wrote: no node made anything in its working directory
    assert [list((tmp_path / f"node{i}").iterdir()) for i in range(2)] == [[], []]

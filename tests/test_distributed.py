"""Several processes give the same bytes as one (torchrun with gloo on the CPU, and the gpus=N launcher), failures
are one line, and a run stopped on 2 processes resumes on 3, on two "nodes", to the uninterrupted result.

One test drives everything through three process groups (1, 2 and 3 processes), running the commands through
`longgen.cli.main` (tests/dist_driver.py), because starting processes is most of the cost on a CPU: 1 and 2 run
every sampler and switch; 3 runs only what needs a third rank (the resume onto an uneven split of units, a failure
on rank 2). The 3 processes are two torchrun agents on this host meeting through the c10d rendezvous, as the nodes
of a cluster do (README "SLURM"):
    srun torchrun --nnodes=$SLURM_NNODES --nproc-per-node=$GPUS --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29500 ...
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import error_lines, run_cli

REPO = Path(__file__).resolve().parents[1]
DRIVER = str(REPO / "tests" / "dist_driver.py")
# micro_batch 1: every window × CFG branch is a unit, so every rank of 2 or 3 gets work in every sampler;
# 16×16 pixels (one transformer token per latent frame): the tiny VAE's decode would otherwise be most of the time
COMMON = ["backbone=tiny", "backbone.micro_batch=1", "backbone.height=16", "backbone.width=16", "num_windows=2",
          "sampler.num_steps=2", "save_latents=true"]
# the newer families (issue 26): the A14B's two experts (3 steps cross its switch: t = 1000, 960 | 857) and
# HunyuanVideo 1.5's joint attention over valid text tokens, split over ranks as the first family's units are
FAMILIES = [c for c in COMMON if not c.startswith(("backbone=", "sampler.num_steps"))] + ["sampler.num_steps=3"]


def _commands(base: Path, story: Path, tail: list[list[str]]) -> list[list[str]]:
    common = [*COMMON, f"story={story}"]  # two local prompts: windows carry different prompt ids
    return [
        # every sampler at its defaults (GLC: global + local paths, ABAM, VMCR affine, noise re-init; SynCoS: stage 2)
        # with one prompt (direct's single window could show only one of the story's two)
        ["generate", "-m", *COMMON, "prompt=a red fox in snow", "sampler=direct,gen-l-video,syncos,glc",
         f"hydra.sweep.dir={base}/a"],
        # GLC's model-source VMCR (one vector-Jacobian product per window) and ABAM without guidance (one branch)
        ["generate", *common, "sampler=glc", "sampler.vmcr_source=model", "sampler.guidance_scale=1.0",
         f"hydra.run.dir={base}/b"],
        # SynCoS stage 2 alone, random timesteps and fresh noise per iteration (more draws from the generator)
        ["generate", *common, "sampler=syncos", "sampler.stage1=false", "sampler.stage3=false", "sampler.iters=3",
         "sampler.grounded_timestep=false", "sampler.fixed_noise=false", f"hydra.run.dir={base}/c"],
        # FIFO-Diffusion (its own step count: 7 base-clip steps + 17 queue iterations) on FreeNoise initial noise
        ["generate", *[c for c in common if not c.startswith("sampler.num_steps")], "sampler=fifo",
         "sampler.num_partitions=1", "noise=freenoise", f"hydra.run.dir={base}/d"],
        # 18 windows: a step's predicts come in two groups (gen_l_video.WINDOWS_PER_PREDICT = 16 and 2), each one
        # split over the ranks
        ["generate", *[c for c in common if not c.startswith("num_windows")], "sampler=gen-l-video",
         "num_windows=18", f"hydra.run.dir={base}/w"],
        # a two-shot scene (two takes, each with its own generator) with cross-shot attention: the reference
        # window's capture runs on every rank, the shared calls are ordinary units
        ["generate", *COMMON, f"story={story.with_name('scene.json')}", "sampler=gen-l-video",
         "shots.cross_attention=0.5", f"hydra.run.dir={base}/s"],
        ["generate", "-m", *FAMILIES, "prompt=a red fox in snow", "backbone=tiny-wan22-a14b,tiny-hunyuan15",
         "sampler=gen-l-video,syncos", f"hydra.sweep.dir={base}/n"],
        # FIFO on the A14B: its queue's windows straddle the switch, each frame from its own expert
        ["generate", *[c for c in FAMILIES if not c.startswith("sampler.num_steps")], "prompt=a red fox in snow",
         "backbone=tiny-wan22-a14b", "sampler=fifo", "sampler.num_partitions=1", f"hydra.run.dir={base}/e"],
        *tail,
    ]


def _job(name: str, base: Path, story: Path, seed: int) -> list[str]:
    return ["generate", *COMMON, f"story={story}", "sampler=gen-l-video", f"backbone.weights_seed={seed}",
            f"hydra.run.dir={base}/{name}"]


def _start(argv: list[str], fault: str | None = None, cwd: Path = REPO) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "LONGGEN_DIST_TIMEOUT": "120", "PYTHONPATH": str(REPO / "tests"), "GLOO_SOCKET_IFNAME": "lo"}
    for key in ("LONGGEN_TEST_FAULT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if fault:
        env["LONGGEN_TEST_FAULT"] = fault
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_store(port: int, node: subprocess.Popen, seconds: float = 120) -> None:
    """Block until the first torchrun agent listens on the rendezvous port (its c10d store), so that the second
    node joins a store the first one hosts, however slowly either process starts on a busy machine."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and node.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the first node never listened on port {port} (exit {node.poll()})")


def _finish(proc: subprocess.Popen, timeout: int = 600) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _latents(run_dir: Path) -> torch.Tensor:
    return load_file(run_dir / "latents.safetensors")["latents"]


def _runs(base: Path) -> dict[str, Path]:
    """Run directories that finished (have a manifest), by their path under base."""
    return {str(m.parent.relative_to(base)): m.parent for m in base.rglob("manifest.json")}


def test_one_two_three_processes_same_bytes_failures_and_resume(tmp_path):
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global": "a red fox in snow", "local": ["a red fox in snow. It sniffs.",
                                                                          "a red fox in snow. It leaps."]}))
    (tmp_path / "scene.json").write_text(json.dumps({"characters": {"1": "a red fox"}, "environment": "snow",
                                                     "shots": ["Character 1 sniffs.", "[SHOT CUT] Character 1 leaps."]}))
    w1, w2, w3 = tmp_path / "w1", tmp_path / "w2", tmp_path / "w3"

    # one process: the reference, with job f run to the end (alongside the two-process run: they are independent)
    one = _start([sys.executable, DRIVER, json.dumps(_commands(w1, story, [_job("f", w1, story, 7)]))])

    # two processes through the gpus=N launcher; in job f rank 1 is SIGKILLed at its first call of step 2
    launcher = ("import sys; from longgen.parallel.launcher import launch; "
                "sys.exit(launch([sys.executable, sys.argv[1], sys.argv[2]], 2))")
    two = _finish(_start([sys.executable, "-c", launcher, DRIVER,
                          json.dumps(_commands(w2, story, [_job("f", w2, story, 7)]))], fault="1:kill:7:3"))
    one = _finish(one)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 1, two.stderr[-3000:]
    lines = error_lines(two)
    assert len(lines) == 1 and "rank 1 was killed by SIGKILL" in lines[0], two.stderr[-3000:]
    assert "checkpoint after step 1" in lines[0] and "Traceback" not in two.stderr
    killed = w2 / "f"
    assert (killed / "checkpoint.safetensors").is_file()
    assert not (killed / "video.mp4").exists() and not (killed / "manifest.json").exists()
    assert not [p.name for p in killed.iterdir() if ".tmp" in p.name]

    # three processes on two nodes (torchrun agents through the c10d rendezvous: 2 processes on the first, which
    # started first and so hosts the store and holds ranks 0-1, 1 on the second): the 2-process run of f resumed,
    # then rank 2 raises in job g. Only what needs a third rank runs here (three processes on a 2-core CI machine
    # cost the most): the resume onto 3 ranks, whose units (2 windows x 2 CFG branches a step) split unevenly,
    # 2/1/1, and a failure on a rank other than 0 and 1, here on the other node. Every sampler and switch is
    # compared on 1 and 2 processes below
    port = _free_port()
    endpoint = f"--rdzv-endpoint=127.0.0.1:{port}"
    commands = json.dumps([["resume", str(killed)], _job("g", w3, story, 8)])
    nodes = []
    for i, procs in enumerate((2, 1)):
        (tmp_path / f"node{i}").mkdir()  # each node's working directory: it must stay empty
        nodes.append(_start([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--nproc-per-node={procs}",
                             "--rdzv-backend=c10d", endpoint, "--rdzv-id=longgen-multinode", DRIVER, commands],
                            fault="2:raise:8:2", cwd=tmp_path / f"node{i}"))
        if i == 0:
            _wait_for_store(port, nodes[0])  # the first node hosts the store and comes first in the rendezvous
    three = [_finish(node) for node in nodes]
    assert [node.returncode != 0 for node in three] == [True, True]
    lines = error_lines(three[0]) + error_lines(three[1])  # rank 0's line (on the first node)
    assert len(lines) == 1 and "rank 2 failed: RuntimeError: injected failure" in lines[0], [
        node.stderr[-3000:] for node in three]
    assert not (w3 / "g" / "video.mp4").exists() and (w3 / "g" / "checkpoint.safetensors").is_file()
    # only global rank 0 wrote: no node made anything in its working directory
    assert [list((tmp_path / f"node{i}").iterdir()) for i in range(2)] == [[], []]

    # rank 0 alone wrote: the sweep directory holds its jobs, Hydra's multirun.yaml, the sweep's lock, ledger and
    # summary (each job recorded once), nothing from other ranks
    assert sorted(p.name for p in (w2 / "a").iterdir()) == [".longgen-sweep.lock", "0_direct", "1_gen-l-video",
                                                            "2_syncos", "3_glc", "multirun.yaml", "sweep-jobs.jsonl",
                                                            "sweep.json"]
    assert len((w2 / "a" / "sweep-jobs.jsonl").read_text().splitlines()) == 4
    assert json.loads((w2 / "a" / "sweep.json").read_text())["done"] == [0, 1, 2, 3]
    assert sorted(p.name for p in (w2 / "a" / "3_glc").iterdir()) == sorted(
        p.name for p in (w1 / "a" / "3_glc").iterdir())
    assert sorted(p.name for p in w3.iterdir()) == ["g"]

    # the same bytes for every sampler and switch on 1 and 2 processes
    ref, runs2 = _runs(w1), _runs(w2)
    assert len(ref) == 15 and set(ref) == set(runs2), (sorted(ref), sorted(runs2))
    for name, run in ref.items():
        if name == "f":
            continue
        assert torch.equal(_latents(runs2[name]), _latents(run)), name
        manifest = json.loads((runs2[name] / "manifest.json").read_text())
        assert manifest["distributed"]["world_size"] == 2
        assert [r["rank"] for r in manifest["distributed"]["ranks"]] == [0, 1]
        assert manifest["transformer_forwards"] == json.loads((run / "manifest.json").read_text())[
            "transformer_forwards"]
        assert (run / "video.mp4").read_bytes() == (runs2[name] / "video.mp4").read_bytes()
    # stopped on 2 processes, resumed on 3 over two nodes = uninterrupted on 1; its last step's 4 units split 2/1/1
    assert torch.equal(_latents(killed), _latents(w1 / "f"))
    assert (killed / "video.mp4").read_bytes() == (w1 / "f" / "video.mp4").read_bytes()
    resumed = json.loads((killed / "manifest.json").read_text())
    assert resumed["resumed"]["after_step"] == 1 and resumed["distributed"]["world_size"] == 3
    assert resumed["distributed"]["launcher"] == "torchrun" and resumed["distributed"]["backend"] == "gloo"
    ranks = resumed["distributed"]["ranks"]
    assert resumed["distributed"]["unit_plans"]["predict 1,1,1,1"] == 1
    assert [r["rank"] for r in ranks] == [0, 1, 2], ranks
    assert [r["by_kind"]["predict"]["units"] for r in ranks] == [2, 1, 1], ranks
    assert json.loads((runs2["a/1_gen-l-video"] / "manifest.json").read_text())["distributed"]["launcher"] == "gpus=2"


def test_gpus_without_gpus_is_one_line_naming_torchrun(tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has GPUs")
    proc = run_cli("generate", "gpus=2", "backbone=tiny", "prompt=a cat", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "torchrun --standalone --nproc-per-node=2 -m longgen.cli generate" in lines[0]
    assert "backbone.device=cpu" in lines[0] and "gpus=2 backbone" not in lines[0]
    assert not (tmp_path / "run").exists()


def test_free_gpu_takes_the_first_gpu_nobody_holds(tmp_path, monkeypatch):
    """backbone.device=free: a lock per GPU (by UUID) in the temp directory; held GPUs are skipped, all held waits."""
    import fcntl
    import threading
    import types

    from longgen.parallel import pool

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=f"uuid-{i}"))
    monkeypatch.setattr(pool.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(pool, "_HELD", {})
    folder = tmp_path / f"longgen-gpus-{os.getuid()}"
    folder.mkdir()
    other = os.open(folder / "GPU-uuid-0.lock", os.O_RDWR | os.O_CREAT)  # another job holds GPU 0
    fcntl.flock(other, fcntl.LOCK_EX)
    assert pool.claim_free_gpu() == torch.device("cuda", 1)
    assert pool.claim_free_gpu() == torch.device("cuda", 2)
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.claim_free_gpu(poll=0.01)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got  # every GPU is held: it waits
    os.close(other)  # the other job ends
    waiter.join(5)
    assert got == [torch.device("cuda", 0)]
    pool.release_gpu(torch.device("cuda", 1))
    assert pool.claim_free_gpu() == torch.device("cuda", 1)
    for index in (0, 1, 2):
        pool.release_gpu(torch.device("cuda", index))
    assert pool._HELD == {}


def test_scatter_frames_adds_in_position_order_without_repeated_frames_per_call(monkeypatch):
    """The window fusion must give the same bits on any device: no index_add_ call may hold a frame twice (a CUDA
    index_add_ adds such positions with atomics in arrival order), and each frame sums in clip-position order."""
    from longgen.diffusion import scatter_frames

    index = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [1, 1, 5, 0]])  # overlapping windows, a repeat inside a clip
    values = torch.randn(3, 4, 2, 3, generator=torch.Generator().manual_seed(1))
    calls = []
    plain = torch.Tensor.index_add_

    def checked(self, dim, idx, src, *args, **kwargs):
        calls.append(idx.tolist())
        assert len(set(idx.tolist())) == idx.numel(), "a frame twice in one index_add_"
        return plain(self, dim, idx, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "index_add_", checked)
    total, count = scatter_frames(values, index, 6)
    expected = torch.zeros(6, 2, 3)
    for p, frame in enumerate(index.reshape(-1).tolist()):  # written out: position order
        expected[frame] = expected[frame] + values.reshape(12, 2, 3)[p]
    assert torch.equal(total, expected) and count.tolist() == [2, 3, 2, 2, 1, 2]
    assert len(calls) == 2 * 3  # sum and count, in 3 runs


@pytest.mark.parametrize("groups", [[1, 1, 1, 1], [2, 2], [3, 1], [4]])
def test_add_frames_in_clip_groups_gives_the_bits_of_the_position_order_sum(groups):
    """A step sums its windows' x̂0 a group of clips at a time (gen_l_video.WINDOWS_PER_PREDICT): for any grouping, in
    clip order, every frame must get the written-out sum in position order, the bits of one scatter of all clips."""
    from longgen.diffusion import add_frames

    index = torch.tensor([[0, 1, 2], [1, 2, 3], [3, 4, 0], [2, 2, 4]])  # overlapping clips, a repeat inside one
    values = torch.randn(4, 3, 2, 5, generator=torch.Generator().manual_seed(2)) * 1e3  # large: order shows in bits
    total, count = torch.zeros(5, 2, 5), torch.zeros(5)
    first = 0
    for size in groups:
        add_frames(total, count, values[first : first + size], index[first : first + size])
        first += size
    expected = torch.zeros(5, 2, 5)
    for p, frame in enumerate(index.reshape(-1).tolist()):  # written out: position order
        expected[frame] = expected[frame] + values.reshape(12, 2, 5)[p]
    assert torch.equal(total, expected) and count.tolist() == [2, 2, 4, 2, 2]


def test_a_swept_gpus_says_how_to_give_jobs_their_own_processes():
    # `-m gpus=1,2`: the basic launcher runs every job on the processes of the one command; the line said so only
    from longgen.errors import UsageError
    from longgen.parallel.launcher import gpu_count

    with pytest.raises(UsageError) as refused:
        gpu_count("1,2", "generate", ["-m", "seed=0,1"])
    assert str(refused.value) == (
        "gpus=1,2 cannot be swept by this launcher: every job of its sweep runs on the same processes; give the "
        "sweep one gpus=N, or run each job as processes of its own with hydra/launcher=submitit_slurm "
        "hydra.launcher.gpus_per_node=N (hydra/launcher=submitit_local on this host)")


def test_a_peer_lost_after_a_stop_signal_is_the_stop_not_a_failure(tmp_path):
    # `srun torchrun` / torchrun under SIGTERM: every rank gets it; the others end while rank 0 finishes its step.
    # Rank 0 said "lost contact with another process" (a failure: a sweep went on to its next job, which failed too)
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from longgen.errors import Interrupted
    from longgen.parallel.units import PeerFailed
    from longgen.run.checkpoint import Interrupts
    from longgen.run.stages import denoise

    def sample(run, state):
        raise PeerFailed("lost contact with another process (Connection reset by peer)")

    job = SimpleNamespace(cfg=OmegaConf.create({"backbone": {"micro_batch": 1}}), out_dir=tmp_path,
                          sampler=SimpleNamespace(sample=sample))
    hooks = SimpleNamespace(saved_at=7, path=tmp_path / "checkpoint.safetensors")
    interrupts = Interrupts()
    with pytest.raises(PeerFailed):  # no stop asked: a failure, as before
        denoise(job, None, None, hooks, interrupts)
    interrupts.requested = "SIGTERM"
    with pytest.raises(Interrupted) as stopped:
        denoise(job, None, None, hooks, interrupts)
    assert str(stopped.value) == (
        f"stopped by SIGTERM, which ended the other processes before this step did (lost contact with another "
        f"process (Connection reset by peer)); the checkpoint after step 7 is kept in {tmp_path / 'checkpoint.safetensors'}"
        f"; continue with: longgen resume {tmp_path}")

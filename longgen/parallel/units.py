"""Several processes, one per GPU, sampling one video: window-parallel generation, bit-identical to one process.

Everything about ranks lives in this package (this module; the `gpus=N` launcher in launcher.py; the free-GPU pool
in pool.py); samplers never see them (DESIGN.md, "Growing the house"). Nothing here imports the stage library:
rank > 0 receives its job runner (`Group.follow(runner)`, longgen/run/follower.py).

Units of work. A backbone cuts each guided `predict` into transformer calls of at most `backbone.micro_batch`
samples: the CFG-stacked rows [unconditional windows, conditional windows] are taken in order, `micro_batch` at a
time (`run_stacked`, longgen/backbones/micro_batch.py). That cut depends only on the batch and `micro_batch`, never on the number of processes, and
the one-process path uses exactly the same calls. `Units.map(fn, sizes)` runs the units: in one process all of them
in order; in a group of N processes unit k runs on rank k mod N, and every rank receives every unit's output as raw
bytes (`Group._exchange`: one broadcast per rank, no reduction), so every rank holds the same tensors a single
process would have computed. Everything else — the run's CPU generator, window fusion, SynCoS's AdamW steps, GLC's
noise re-initialisation and VMCR — runs on every rank, identically and in the same order, so the ranks' states stay
equal without being exchanged. The other units of work are windows for GLC's model-source VMCR (one
vector-Jacobian product per window, `Denoiser.window_vjp`) and spatial VAE tiles for the streamed decode.

GLC's anchor attention (ABAM) needs the anchor's keys/values of every layer in every call that blends with it. Each
CFG branch is therefore run in two phases (`AnchorLayout.phases`): first the branch's anchor rows, in calls of their
own that every rank runs (they only store their keys/values; an anchor's own attention is unchanged by the blend),
then the branch's other rows as distributed units. The one-process path runs the same phases, so the calls — and
the bytes — are the same for any number of processes.

Processes. Rank 0 is the only writer: it runs Hydra (run directory, .hydra/, logs, progress bar), claims the run
directory, writes checkpoints, previews, the video and the manifest. The other ranks never run Hydra and create no
file: they `follow` — rank 0 publishes each job (resolved config, story, run directory, checkpoint when resuming)
in the process group's key-value store, and they run it with no writer. A sweep on N processes runs its jobs one
after another, each on all of them.

Starting the processes: under `torchrun` (or SLURM + torchrun) the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) says who is who and `attach()` joins the group. `gpus=N` re-executes the same command as N
processes with that same environment (`launch`, a small torchrun without restarts) — so both paths run the same
code and the CPU tests with torchrun cover it — and gives the launcher control over what the user sees: one line
naming the rank that failed and why, Ctrl-C handled by rank 0 (finish the step, checkpoint), the rest stopped.
Backends: NCCL for CUDA tensors, gloo for CPU tensors (one process group with both on a GPU host).

Failure: a rank that raises writes "rank R failed: reason" into the store and exits; the launcher writes the same
for a rank that dies (killed, out of host memory). Every wait on a collective polls: it returns when the collective
completes, and raises `PeerFailed` with that reason when one appears (or the launcher vanished, or nothing happened
for LONGGEN_DIST_TIMEOUT seconds, 1800 by default), so no rank hangs in NCCL waiting for a dead peer. Rank 0 turns
it into its one error line; the last checkpoint stays as on one GPU.

Sweeps of one-GPU jobs running side by side (e.g. Hydra's joblib launcher) pin each job to its own GPU with
`backbone.device=free`: the first visible GPU that no other longgen process on this host holds (`claim_free_gpu`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch

from longgen.errors import RunFailure, UsageError

log = logging.getLogger("longgen")

#: seconds a collective may wait for the other ranks before the run is declared stuck (env LONGGEN_DIST_TIMEOUT)
DEFAULT_TIMEOUT = 1800.0
#: every dtype a unit may return, by code in the exchanged metadata
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool)
_ALIGN = 16  # bytes: every exchanged tensor starts at a multiple of this in the byte buffer


class PeerFailed(RunFailure):
    """Another rank failed (or the launcher stopped the run); the message names the rank and why."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, (UsageError, RunFailure)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- statistics
@dataclass
class RankStats:
    """What one rank did in one job: its units, their samples (transformer forwards), and time computing them vs in
    collectives (waiting for the other ranks included). `plans` counts the unit layouts seen: (kind, sizes)."""

    units: int = 0
    samples: int = 0
    busy_s: float = 0.0
    comm_s: float = 0.0
    replicated_s: float = 0.0  # calls every rank runs (ABAM anchors)
    by_kind: dict = field(default_factory=dict)  # kind → {"units", "samples", "busy_s"}
    plans: Counter = field(default_factory=Counter)

    def add(self, kind: str, units: int, samples: int, busy: float) -> None:
        self.units += units
        self.samples += samples
        self.busy_s += busy
        entry = self.by_kind.setdefault(kind, {"units": 0, "samples": 0, "busy_s": 0.0})
        entry["units"] += units
        entry["samples"] += samples
        entry["busy_s"] += busy

    def to_dict(self) -> dict:
        return {
            "units": self.units,
            "samples": self.samples,
            "busy_s": round(self.busy_s, 3),
            "comm_s": round(self.comm_s, 3),
            "replicated_s": round(self.replicated_s, 3),
            "by_kind": {k: {**v, "busy_s": round(v["busy_s"], 3)} for k, v in self.by_kind.items()},
        }


# ---------------------------------------------------------------------------------------------------- one process
class Units:
    """The single-process world: every unit runs here, in order. Also the base of `Group`."""

    rank = 0
    size = 1
    local_rank = 0
    backend: str | None = None
    launcher: str | None = None

    def __init__(self) -> None:
        self.stats = RankStats()
        self.denoiser: Any = None
        self._alone = 0

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory, logs and progress (rank 0)."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return getattr(self.denoiser, "device", None) or torch.device("cpu")

    # ------------------------------------------------------------------ running units
    def map(self, fn: Callable[[int], Any], sizes: Sequence[int], kind: str = "predict", wait: bool = True) -> list:
        """[fn(0), …, fn(n−1)] for n = len(sizes) units; sizes[k] is unit k's number of samples (for the
        statistics). fn returns a tensor or a tuple of tensors. Every process receives every result.
        `wait=False` lets a single process return while the device still works on the results (the streamed
        decode queues the next batch before handing over the last); the statistics then time the queueing only.
        Several processes always wait: results travel between them as finished bytes."""
        self.stats.plans[(kind, tuple(int(s) for s in sizes))] += 1
        if self.size == 1 or self._alone:
            return self._run_here(fn, range(len(sizes)), sizes, kind, wait)
        return self._spread(fn, sizes, kind)

    def _run_here(self, fn, ks, sizes, kind, wait: bool = True) -> list:
        t0 = time.perf_counter()
        out = [fn(k) for k in ks]
        if wait:
            _sync(self.device)
        self.stats.add(kind, len(out), sum(int(sizes[k]) for k in ks), time.perf_counter() - t0)
        return out

    def _spread(self, fn, sizes, kind) -> list:
        """Spread the units over the processes; with one process that is running them all here (`Group`
        overrides this with the rank k mod N split and the byte all-gather)."""
        return self._run_here(fn, range(len(sizes)), sizes, kind)

    def replicated(self, fn: Callable[[], Any]) -> Any:
        """A call that every rank runs itself (ABAM anchors): timed apart from the units."""
        t0 = time.perf_counter()
        out = fn()
        _sync(self.device)
        self.stats.replicated_s += time.perf_counter() - t0
        return out

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Units inside run here only (a preview on rank 0, one window's VJP unit): no collective."""
        self._alone += 1
        try:
            yield
        finally:
            self._alone -= 1

    def solo(self, fn: Callable | None) -> Callable | None:
        """fn wrapped to run `alone` (None stays None)."""
        if fn is None:
            return None

        def wrapped(*args, **kwargs):
            with self.alone():
                return fn(*args, **kwargs)

        return wrapped

    # ------------------------------------------------------------------ jobs
    def adopt(self, job) -> None:
        """Make a planned job this world's: the backbone runs its units here; fresh statistics."""
        gpus = job.cfg.get("gpus", 1)
        if self.size == 1 and gpus not in (1, "all", None):
            raise UsageError(f"gpus={gpus} but this process runs alone: start it with `longgen generate gpus={gpus} …` "
                             f"or under torchrun")
        job.world = self
        job.backbone.units = self
        self.denoiser = job.backbone
        self.stats = RankStats()

    @contextlib.contextmanager
    def job(self, message: dict) -> Iterator[None]:
        """Bracket one job on rank 0 (the other ranks receive `message` and run it too)."""
        yield

    def report(self, timings: dict) -> None:
        """Followers: hand this rank's timings to rank 0 (nothing to do alone)."""

    def summary(self, timings: dict) -> dict:
        """The manifest's `distributed` entry: world size, backend, devices and per-rank timings."""
        return {
            "world_size": self.size,
            "backend": self.backend,
            "launcher": self.launcher,
            "ranks": [self._rank_entry(timings)],
            "unit_plans": _plans(self.stats.plans),
        }

    def _rank_entry(self, timings: dict) -> dict:
        dev = self.device
        entry = {"rank": self.rank, "host": os.uname().nodename, "device": str(dev)}
        if dev.type == "cuda":
            entry["gpu"] = torch.cuda.get_device_name(dev)
        entry.update({k: round(v, 3) for k, v in timings.items() if k.endswith("_s")})
        entry.update(self.stats.to_dict())
        return entry


def _plans(plans: Counter) -> dict[str, int]:
    """{"predict 4,4,2": 50, …}: how often each unit layout occurred (for projections to other GPU counts)."""
    return {f"{kind} {','.join(map(str, sizes))}": n for (kind, sizes), n in sorted(plans.items())}


# ---------------------------------------------------------------------------------------------------- N processes
class Group(Units):
    """This process as rank `rank` of `size` (torch.distributed initialised from torchrun's environment)."""

    def __init__(self, rank: int, size: int, local_rank: int, backend: str, store, launcher: str) -> None:
        super().__init__()
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.backend, self.launcher = backend, launcher
        self.store = store
        self.timeout = float(os.environ.get("LONGGEN_DIST_TIMEOUT", DEFAULT_TIMEOUT))
        self.broken = False
        self._parent = os.getppid()
        self._jobs = 0  # jobs published (rank 0) or received (followers)

    @classmethod
    def from_env(cls) -> "Group":
        import torch.distributed as dist

        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        cuda = torch.cuda.is_available() and local_rank < torch.cuda.device_count()
        if cuda:
            torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl" if cuda and dist.is_nccl_available() else "gloo"
        timeout = float(os.environ.get("LONGGEN_DIST_TIMEOUT", DEFAULT_TIMEOUT))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout + 60))
            store = dist.PrefixStore("longgen/", dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                timeout=timedelta(seconds=timeout), wait_for_workers=False))
        except Exception as exc:
            raise RunFailure(f"rank {rank}: could not join the other {size - 1} process(es): {_reason(exc)}") from None
        launcher = os.environ.get("LONGGEN_LAUNCHER", "torchrun")
        return cls(rank, size, local_rank, "nccl+gloo" if "nccl" in backend else "gloo", store, launcher)

    # ------------------------------------------------------------------ failure detection
    def fail(self, reason: str) -> None:
        """Record the first failure for every rank (and the launcher) to see."""
        with contextlib.suppress(Exception):
            self.store.compare_set("fail", "", reason)

    def check(self) -> None:
        """Raise PeerFailed when another rank failed, rank 0 ended, or the launcher is gone."""
        try:
            if self.store.check(["fail"]):
                raise PeerFailed(self.store.get("fail").decode())
            if self.rank != 0 and self.store.check(["end"]):
                raise PeerFailed("rank 0 stopped")
        except PeerFailed:
            self.broken = True
            raise
        except Exception as exc:  # the store lived in the launcher (or rank 0), which is gone
            self.broken = True
            raise PeerFailed(f"lost the other processes ({_reason(exc)})") from None
        if os.getppid() != self._parent:
            self.broken = True
            raise PeerFailed("the launching process ended")

    def _wait(self, works: list) -> None:
        """Wait for async collectives, polling for failures (a blocking NCCL wait would hang on a dead peer)."""
        start = time.monotonic()
        next_check = start
        nap = 1e-4  # grows to 5 ms: prompt when the others are ready, light on a shared CPU when they are not
        for work in works:
            while not work.is_completed():
                now = time.monotonic()
                if now >= next_check:
                    self.check()
                    next_check = now + 0.05
                if now - start > self.timeout:
                    self.broken = True
                    raise PeerFailed(f"no answer from the other processes for {self.timeout:.0f} s "
                                     f"(LONGGEN_DIST_TIMEOUT)")
                time.sleep(nap)
                nap = min(nap * 2, 0.005)
            try:
                work.wait()
            except Exception as exc:  # gloo: a peer's connection closed; its reason may be on its way
                self.broken = True
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    self.check()
                    time.sleep(0.05)
                raise PeerFailed(f"lost contact with another process ({_reason(exc)})") from None

    # ------------------------------------------------------------------ units
    def _spread(self, fn, sizes, kind) -> list:
        den = self.denoiser
        before = (getattr(den, "forward_count", 0), getattr(den, "call_count", 0))
        mine = range(self.rank, len(sizes), self.size)
        t0 = time.perf_counter()
        outs = {}
        counts = {}
        for k in mine:
            f0, c0 = getattr(den, "forward_count", 0), getattr(den, "call_count", 0)
            outs[k] = fn(k)
            counts[k] = (getattr(den, "forward_count", 0) - f0, getattr(den, "call_count", 0) - c0)
        _sync(self.device)
        self.stats.add(kind, len(outs), sum(int(sizes[k]) for k in mine), time.perf_counter() - t0)
        t1 = time.perf_counter()
        results, remote = self._exchange(outs, counts)
        self.stats.comm_s += time.perf_counter() - t1
        if den is not None and hasattr(den, "forward_count"):
            # every rank counts the forwards and calls of every unit, as one process would
            den.forward_count = before[0] + sum(f for f, _ in counts.values()) + sum(f for f, _ in remote)
            den.call_count = before[1] + sum(c for _, c in counts.values()) + sum(c for _, c in remote)
        return [results[k] for k in range(len(sizes))]

    def _exchange(self, outs: dict[int, Any], counts: dict[int, tuple[int, int]]) -> tuple[dict, list]:
        """Every rank's unit results to every rank, as bytes. Returns ({unit: result}, [(forwards, calls)] of the
        units run elsewhere)."""
        meta, data = self._pack(outs, counts)
        metas, buffers = self._share(meta, data)
        return self._unpack(outs, metas, buffers)

    def _pack(self, outs: dict[int, Any], counts: dict[int, tuple[int, int]]) -> tuple[list[int], torch.Tensor]:
        """This rank's results as one byte buffer (each tensor at a multiple of _ALIGN) and the metadata that
        describes it: per unit [k, single, n tensors, forwards, calls], then per tensor [dtype, ndim, *shape, offset]."""
        meta: list[int] = []
        chunks: list[torch.Tensor] = []
        offset = 0
        device = self.device
        for k in sorted(outs):
            single = isinstance(outs[k], torch.Tensor)
            tensors = [outs[k]] if single else list(outs[k])
            meta += [k, int(single), len(tensors), *counts[k]]
            for t in tensors:
                t = t.detach().contiguous()
                raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)
                meta += [_DTYPES.index(t.dtype), t.dim(), *t.shape, offset]
                pad = -raw.numel() % _ALIGN
                chunks.append(raw.to(device))
                if pad:
                    chunks.append(torch.zeros(pad, dtype=torch.uint8, device=device))
                offset += raw.numel() + pad
        data = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8, device=device)
        return meta, data

    def _share(self, meta: list[int], data: torch.Tensor) -> tuple[list[list[int]], dict[int, torch.Tensor]]:
        """Every rank's metadata (as lists) and byte buffer (ranks with no bytes have none)."""
        import torch.distributed as dist

        device = self.device
        # 1. how much metadata and data each rank has (CPU tensors: gloo)
        mine = torch.tensor([len(meta), data.numel()], dtype=torch.int64)
        sizes = [torch.empty(2, dtype=torch.int64) for _ in range(self.size)]
        self._wait([dist.all_gather(sizes, mine, async_op=True)])
        longest = max(int(s[0]) for s in sizes)
        # 2. the metadata, padded to the longest
        padded = torch.zeros(max(longest, 1), dtype=torch.int64)
        padded[: len(meta)] = torch.tensor(meta, dtype=torch.int64)
        metas = [torch.empty_like(padded) for _ in range(self.size)]
        self._wait([dist.all_gather(metas, padded, async_op=True)])
        # 3. the bytes: one broadcast from each rank that has any (NCCL for CUDA tensors)
        buffers, works = {}, []
        for r in range(self.size):
            n = int(sizes[r][1])
            if n == 0:
                continue
            buffers[r] = data if r == self.rank else torch.empty(n, dtype=torch.uint8, device=device)
            works.append(dist.broadcast(buffers[r], src=r, async_op=True))
        self._wait(works)
        return [metas[r][: int(sizes[r][0])].tolist() for r in range(self.size)], buffers

    def _unpack(self, outs: dict[int, Any], metas: list[list[int]], buffers: dict[int, torch.Tensor]
                ) -> tuple[dict, list]:
        """The units' results, this rank's own as computed and the others' as views of their buffers."""
        results: dict[int, Any] = {}
        remote: list[tuple[int, int]] = []
        for r, m in enumerate(metas):
            i = 0
            while i < len(m):
                k, single, n, fw, calls = m[i : i + 5]
                i += 5
                tensors = []
                for _ in range(n):
                    dtype, ndim = _DTYPES[m[i]], m[i + 1]
                    shape, start = m[i + 2 : i + 2 + ndim], m[i + 2 + ndim]
                    i += 3 + ndim
                    if r != self.rank:
                        tensors.append(self._view(buffers.get(r), start, dtype, shape))
                if r == self.rank:
                    results[k] = outs[k]
                else:
                    results[k] = tensors[0] if single else tuple(tensors)
                    remote.append((fw, calls))
        return results, remote

    def _view(self, buffer: torch.Tensor | None, start: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        """A tensor of `shape` and `dtype` read from `buffer` at byte `start` (no copy)."""
        count = 1
        for d in shape:
            count *= d
        nbytes = count * torch.empty(0, dtype=dtype).element_size()
        raw = buffer[start : start + nbytes] if nbytes else torch.empty(0, dtype=torch.uint8, device=self.device)
        return raw.view(dtype).reshape(shape)

    # ------------------------------------------------------------------ jobs
    def adopt(self, job) -> None:
        gpus = job.cfg.get("gpus", 1)
        if isinstance(gpus, int) and gpus > 1 and gpus != self.size:
            raise UsageError(f"gpus={gpus} but {self.size} processes were started (torchrun --nproc-per-node): "
                             f"make them agree")
        backbone = job.backbone
        device = str(getattr(backbone, "device_name", "auto"))
        cuda = torch.cuda.is_available()
        if device == "free":
            raise UsageError("backbone.device=free picks one GPU for a one-process job; with several processes each "
                             "uses its own GPU (cuda:LOCAL_RANK): drop backbone.device")
        if device not in ("auto", "cuda", "cpu"):
            raise UsageError(f"backbone.device={device} with {self.size} processes: each process uses its own GPU "
                             f"(cuda:LOCAL_RANK); choose GPUs with CUDA_VISIBLE_DEVICES and drop backbone.device")
        if device in ("auto", "cuda") and cuda:
            backbone.device_name = f"cuda:{self.local_rank}"
        elif device == "cuda":
            raise UsageError("backbone.device=cuda but no CUDA GPU is visible: use backbone.device=cpu")
        super().adopt(job)

    @contextlib.contextmanager
    def job(self, message: dict) -> Iterator[None]:
        """Rank 0: publish the job to the other ranks, run it; any failure stops every rank."""
        self.check()
        self.store.set(f"job/{self._jobs}", pickle.dumps(message))
        self._jobs += 1
        log.info("%d processes (%s), rank 0 writes; unit k of each step runs on rank k mod %d (units of up to %s "
                 "samples: backbone.micro_batch)", self.size, self.backend, self.size,
                 getattr(self.denoiser, "micro_batch", "?"))
        try:
            yield
        except BaseException as exc:
            self.fail(f"rank 0 failed: {_reason(exc)}")
            raise

    def report(self, timings: dict) -> None:
        entry = self._rank_entry(timings)
        entry["unit_plans"] = _plans(self.stats.plans)
        self.store.set(f"stats/{self._jobs - 1}/{self.rank}", json.dumps(entry))

    def summary(self, timings: dict) -> dict:
        ranks = [self._rank_entry(timings)]
        for r in range(1, self.size):
            key = f"stats/{self._jobs - 1}/{r}"
            start = time.monotonic()
            while not self.store.check([key]):
                self.check()
                if time.monotonic() - start > self.timeout:
                    raise PeerFailed(f"rank {r} did not report its timings")
                time.sleep(0.01)
            entry = json.loads(self.store.get(key))
            entry.pop("unit_plans", None)
            ranks.append(entry)
        return {
            "world_size": self.size,
            "backend": self.backend,
            "launcher": self.launcher,
            "ranks": ranks,
            "unit_plans": _plans(self.stats.plans),
        }

    # ------------------------------------------------------------------ followers
    def follow(self, runner: Callable[[dict, "Group"], None]) -> int:
        """Ranks > 0: run every job rank 0 publishes with `runner(message, group)` (longgen/run/follower.py), until
        rank 0 ends. Returns the exit status."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides what Ctrl-C does (finish the step, save)
        logging.getLogger().handlers.clear()
        logging.getLogger().addHandler(logging.NullHandler())
        logging.getLogger().setLevel(logging.CRITICAL)  # rank 0 logs; the same lines from here would be duplicates
        warnings.simplefilter("ignore")
        while True:
            try:
                message = self._next_job()
                if message is None:
                    return self._leave(0)
                self._jobs += 1
                runner(message, self)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach rank 0 as one line
                if not isinstance(exc, PeerFailed):
                    self.fail(f"rank {self.rank} failed: {_reason(exc)}")
                self.broken = True
                self._await_end(60.0)  # let rank 0 say it before a launcher (torchrun) stops everyone
                return self._leave(1)

    def _await_end(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with contextlib.suppress(Exception):
            while time.monotonic() < deadline and not self.store.check(["end"]) and os.getppid() == self._parent:
                time.sleep(0.05)

    def _next_job(self) -> dict | None:
        key = f"job/{self._jobs}"
        while True:
            if self.store.check([key]):
                return pickle.loads(self.store.get(key))
            if self.store.check(["end"]):
                return None
            self.check()
            time.sleep(0.02)

    def _leave(self, code: int) -> int:
        with contextlib.suppress(Exception):
            self.store.set(f"left/{self.rank}", str(code))
        self._teardown(code)
        return code

    def finish(self, exit_when_broken: bool = True) -> None:
        """Rank 0 at exit: tell the followers there is nothing more, wait for them briefly, tear down. A group
        broken by a failed peer is aborted and the process leaves at once, unless `exit_when_broken` is False (the
        process goes on alone: a submitit job that records its outcome)."""
        with contextlib.suppress(Exception):
            self.store.set("end", "1")
            deadline = time.monotonic() + 10
            left = [f"left/{r}" for r in range(1, self.size)]
            while time.monotonic() < deadline and not all(self.store.check([k]) for k in left):
                time.sleep(0.02)
        self._teardown(None, exit_when_broken)

    def _teardown(self, code: int | None, exit_when_broken: bool = True) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if self.broken:
            # a collective may still wait for a dead peer (NCCL would block in destroy): abort, then leave at once
            import threading

            aborter = threading.Thread(target=lambda: dist.distributed_c10d._abort_process_group(), daemon=True)
            with contextlib.suppress(Exception):
                aborter.start()
                aborter.join(5)
            if not exit_when_broken:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(1 if code is None else code)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- this process
_GROUP: Group | None = None


def attach() -> Group | None:
    """Join the process group when this process is one of several (torchrun's environment: WORLD_SIZE > 1); None
    when it runs alone. Rank 0 tells the others to stop when it exits."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import atexit

    if int(os.environ.get("RANK", "0")) != 0 and os.environ.get("SUBMITIT_EXECUTOR"):
        # a scheduler signals every process of a job (SLURM), but stopping is rank 0's to decide: it finishes the
        # step, checkpoints and stops the others (a rank that died of the signal would lose the step)
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
    _GROUP = Group.from_env()
    if _GROUP.rank == 0:
        atexit.register(_GROUP.finish)
    return _GROUP


def detach() -> None:
    """Rank 0 leaves its group (the others are told to end) and this process runs alone again."""
    global _GROUP
    if _GROUP is None:
        return
    import atexit

    atexit.unregister(_GROUP.finish)
    group, _GROUP = _GROUP, None
    group.finish(exit_when_broken=False)


def current() -> Units:
    """The world of the next job in this process: the group, or a fresh single-process world."""
    return _GROUP if _GROUP is not None else Units()


# ---------------------------------------------------------------------------------------------------- GPU pool

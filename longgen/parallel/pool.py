"""`backbone.device=free`: a host-wide pool of GPUs shared by longgen processes. A process claims the first visible
GPU that no other longgen process holds (an exclusive file lock per GPU in the temporary directory, released when
the process ends or the job releases it), waiting while every GPU is busy.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from longgen.errors import UsageError

log = logging.getLogger("longgen")


_HELD: dict[int, int] = {}  # device index → fd holding its lock

def _gpu_key(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return f"GPU-{uuid}"
    bus = getattr(props, "pci_bus_id", None)
    return f"pci-{bus}" if bus is not None else f"index-{index}-{os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}"


def check_a_gpu_is_visible() -> None:
    """`backbone.device=free` needs a CUDA GPU on this machine; one line otherwise (also before a local sweep, whose
    every job would fail alike)."""
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise UsageError("backbone.device=free picks a free CUDA GPU, but no CUDA GPU is visible: use "
                         "backbone.device=cpu")


def claim_free_gpu(poll: float = 1.0) -> torch.device:
    """`backbone.device=free`: the first visible CUDA GPU that no other longgen process on this host holds (an
    exclusive flock on a file named after the GPU's UUID), held until `release_gpu` or the process ends. Waits when
    every GPU is taken (more parallel jobs than GPUs)."""
    check_a_gpu_is_visible()
    folder = Path(tempfile.gettempdir()) / f"longgen-gpus-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    waiting = False
    while True:
        for index in range(torch.cuda.device_count()):
            if index in _HELD:
                continue
            fd = os.open(folder / f"{_gpu_key(index)}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _HELD[index] = fd
            log.info("backbone.device=free: using cuda:%d", index)
            return torch.device("cuda", index)
        if not waiting:
            log.info("backbone.device=free: every GPU is held by another longgen job; waiting for one")
            waiting = True
        time.sleep(poll)


def release_gpu(device: torch.device | None) -> None:
    """Give back a GPU taken by `claim_free_gpu` (nothing for any other device)."""
    if device is None or device.type != "cuda":
        return
    fd = _HELD.pop(device.index if device.index is not None else 0, None)
    if fd is not None:
        os.close(fd)

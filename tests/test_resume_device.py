"""A resumed run's state is placed on the job's device (issue 23: `longgen resume` crashed on every GPU because
the checkpoint's tensors stayed on the CPU while the model and the fresh noise were on cuda:0).

No GPU here, so the job's device is `meta`: a denoiser that reports it and checks that every window it is given
is on it. The checkpoint is read on the CPU, as on a GPU machine. For every sampler (and the wrappers of
multi-shot scenes and `longgen extend`), the state the first resumed step receives must hold its floating-point
tensors on the job's device and its saved generator states on the CPU; direct sampling and FIFO (no host-side
window bookkeeping) are also run to the end on `meta`.
"""

from __future__ import annotations

import pytest
import torch

from longgen.denoiser import Prediction
from longgen.samplers.base import SamplingRun
from longgen.samplers.fifo import FIFOSampler

from conftest import make_tiny
from test_checkpoint import L3, SAMPLERS, checkpoint_after_two_steps

CASES = {**SAMPLERS, "fifo": lambda: FIFOSampler(num_partitions=1)}
ELSEWHERE = torch.device("meta")


class Elsewhere:
    """The tiny backbone as if it lived on another device: reports `meta`, refuses windows from anywhere else."""

    def __init__(self, inner):
        self._inner = inner
        self.device = ELSEWHERE

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def predict(self, x_t, t, prompt_ids, guidance_scale):
        assert x_t.device == ELSEWHERE, f"the sampler handed the model a window on {x_t.device}"
        return Prediction(torch.zeros_like(x_t), torch.zeros_like(x_t))  # [B, M, C, H, W] on meta


class _Seen(Exception):
    pass


@pytest.fixture(scope="module")
def tiny2():
    return make_tiny(prompts=("a cat", "a dog runs"))


def _run(denoiser, device):
    noise = torch.randn((1, L3, *denoiser.latent_shape), generator=torch.Generator().manual_seed(0))
    return SamplingRun(denoiser=denoiser, noise=noise.to(device), prompt_for_window=lambda s, m: int(s >= 4),
                       generator=torch.Generator().manual_seed(7))


def _checkpoint(tiny2, tmp_path, name):
    """Two steps on the CPU, saved to disk the way generate saves them, and read back (on the CPU)."""
    return checkpoint_after_two_steps(CASES[name](), _run(tiny2, "cpu"), tmp_path / "checkpoint.safetensors", name)


@pytest.mark.parametrize("name", list(CASES))
def test_resumed_state_is_on_the_jobs_device(tiny2, tmp_path, name):
    ckpt = _checkpoint(tiny2, tmp_path, name)
    assert all(v.device.type == "cpu" for v in ckpt.state.tensors.values())  # as read from disk
    sampler = CASES[name]()
    seen = {}

    def first_step(run, state, i):
        seen.update(i=i, tensors={k: (v.device, v.dtype) for k, v in state.tensors.items()})
        raise _Seen

    sampler.step = first_step
    with pytest.raises(_Seen):
        sampler.sample(_run(Elsewhere(tiny2), ELSEWHERE), ckpt.state)
    assert seen["i"] == 2
    for key, (device, dtype) in seen["tensors"].items():
        saved = ckpt.state.tensors[key]
        assert dtype == saved.dtype, key
        assert device == (ELSEWHERE if saved.is_floating_point() else torch.device("cpu")), (key, device)


@pytest.mark.parametrize("name", ["direct", "fifo"])
def test_resume_runs_to_the_end_on_the_jobs_device(tiny2, tmp_path, name):
    ckpt = _checkpoint(tiny2, tmp_path, name)
    out = CASES[name]().sample(_run(Elsewhere(tiny2), ELSEWHERE), ckpt.state)
    assert out.device == ELSEWHERE and out.shape == (1, L3, *tiny2.latent_shape)

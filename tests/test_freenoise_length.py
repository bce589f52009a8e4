"""FreeNoise (longgen/noise.py; Qiu et al. 2024, §3 "Noise rescheduling") on videos that are not a whole number of
windows: `latent_frames=L` with L − M not a multiple of the stride S, so the sampler's last window is end-aligned
and the rescheduled noise ends inside a shuffle block.

The oracle is the rule written out frame by frame: frame v < M is its own i.i.d. draw; frame v = M + j·S + i
(block j, position i) repeats the noise of frame j·S + π_j(i), where π_j is block j's permutation of 0..S − 1 (one
`randperm(S)` per block, drawn in block order after the Gaussian frames, also for a last block shorter than S,
which takes the first L − (M + j·S) entries of its permutation). The noise has exactly L frames.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from longgen.noise import FreeNoise


def freenoise_sources(length: int, window: int, stride: int, perms: list[list[int]]) -> list[int]:
    """Index into the i.i.d. draw of every frame 0..length − 1, from FreeNoise's rule as a plain loop over frames."""
    sources: list[int] = []
    for v in range(length):
        if v < window:
            sources.append(v)
            continue
        block, position = divmod(v - window, stride)
        earlier = block * stride + perms[block][position]  # the frame one window earlier, shuffled within its block
        sources.append(sources[earlier])
    return sources


def replay(length: int, window: int, stride: int, frame: tuple[int, ...], seed: int):
    """The draws FreeNoise makes from a seed, made again: the Gaussian frames [1, L, *frame], then one permutation
    of the stride per started block. Returns (iid, perms, the generator after them)."""
    gen = torch.Generator().manual_seed(seed)
    iid = torch.randn((1, length, *frame), generator=gen)
    blocks = 0 if length <= window else -(-(length - window) // stride)  # ⌈(L − M) / S⌉
    perms = [torch.randperm(stride, generator=gen).tolist() for _ in range(blocks)]
    return iid, perms, gen


@pytest.mark.parametrize("length, window, stride", [
    (23, 13, 4),  # L − M = 10: two whole blocks and a tail of 2
    (26, 13, 4),  # tail of 1
    (27, 13, 4),  # tail of 2 after three blocks
    (15, 13, 4),  # only a partial block
    (29, 13, 4),  # a whole number of blocks (no tail): the same rule
    (30, 21, 6),  # Wan geometry, tail of 3
    (14, 5, 3),   # tail of 0 after 3 blocks
    (9, 5, 5),    # stride = window, tail of 4
])
def test_rescheduled_noise_has_exactly_l_frames_and_follows_the_rule(length, window, stride):
    frame = (2, 3, 3)
    gen = torch.Generator().manual_seed(11)
    noise = FreeNoise(stride=stride).draw((1, length, *frame), gen, window)
    assert noise.shape == (1, length, *frame)
    iid, perms, after = replay(length, window, stride, frame, 11)
    sources = freenoise_sources(length, window, stride, perms)
    for v in range(length):
        assert torch.equal(noise[0, v], iid[0, sources[v]]), f"frame {v}"
    # the sampler continues the same generator: FreeNoise drew exactly one permutation per block
    assert torch.equal(gen.get_state(), after.get_state())
    # every frame repeats one of the first window's i.i.d. frames
    assert all(s < window for s in sources)


def test_the_window_option_replaces_the_backbones_window():
    """`noise.window=5` on a backbone whose window is 13: the rule runs with f = 5."""
    frame = (2, 3, 3)
    noise = FreeNoise(window=5, stride=3).draw((1, 14, *frame), torch.Generator().manual_seed(11), 13)
    iid, perms, _ = replay(14, 5, 3, frame, 11)
    assert torch.equal(noise[0], iid[0, freenoise_sources(14, 5, 3, perms)])


def test_generate_x_t_with_latent_frames_is_l_frames_of_freenoise():
    """generate's x_T for latent_frames=23 on the tiny CogVideoX (window 13, stride 4): the windows end-aligned
    (starts 0, 4, 8, 10), the noise 23 frames long, frame for frame the rule above."""
    from longgen.run.stages import initial_noise
    from longgen.run.job import plan_job

    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["backbone=tiny", "prompt=a cat", "latent_frames=23", "noise=freenoise",
                                             "sampler=gen-l-video", "seed=7"])
    job = plan_job(cfg, "unused", {"noise": "freenoise", "sampler": "gen-l-video", "backbone": "tiny"})
    assert job.length == 23 and job.plan.starts == (0, 4, 8, 10)
    noise, gen = initial_noise(job)
    frame = tuple(job.backbone.latent_shape)
    assert noise.shape == (1, 23, *frame)
    iid, perms, after = replay(23, 13, 4, frame, 7)
    sources = freenoise_sources(23, 13, 4, perms)
    assert torch.equal(noise[0], iid[0, sources])
    assert torch.equal(gen.get_state(), after.get_state())

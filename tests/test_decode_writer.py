"""Streaming VAE decode equals diffusers' whole-video decode (plain and tiled); the mp4 writer's output."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from longgen.writer import Mp4Writer, burn_index

from conftest import make_tiny


def _reference_frames(vae, latents):
    z = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        pix = vae.decode(z).sample[0]  # [3, F, H, W]
    return ((pix / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("length", [1, 3, 13, 25])
def test_stream_decode_equals_vae_decode(length):
    backbone = make_tiny()
    latents = torch.randn(1, length, *backbone.latent_shape, generator=torch.Generator().manual_seed(length))
    chunks = list(backbone.decode_stream(latents))
    ours = np.concatenate(chunks)
    assert ours.shape[0] == 4 * (length - 1) + 1
    if length > 3:
        assert len(chunks) > 1, "decode must stream in several chunks"
    assert np.array_equal(ours, _reference_frames(backbone.pipe.vae, latents))


def test_tiled_stream_decode_equals_tiled_vae_decode():
    backbone = make_tiny()
    vae = backbone.pipe.vae
    # unequal overlaps (8 rows, 16 columns of 32): a row blend used for columns shows
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor_height=0.25,
                      tile_overlap_factor_width=0.5)
    latents = torch.randn(1, 9, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = np.concatenate(list(backbone.decode_stream(latents)))
    reference = _reference_frames(vae, latents)
    assert np.array_equal(ours, reference)
    vae.disable_tiling()
    untiled = _reference_frames(vae, latents)
    assert not np.array_equal(reference, untiled), "tiling was not exercised"


def _chunks(n_chunks, f=4, h=32, w=48):
    rng = np.random.default_rng(0)
    for _ in range(n_chunks):
        yield rng.integers(0, 255, size=(f, h, w, 3), dtype=np.uint8)


def test_writer_frame_count_and_fps(tmp_path):
    info = Mp4Writer().write(_chunks(5), tmp_path, fps=8, total_frames=20)
    assert info["frames"] == 20
    n, secs = imageio_ffmpeg.count_frames_and_secs(info["path"])
    assert n == 20 and abs(secs - 2.5) < 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


def test_writer_leaves_nothing_when_interrupted(tmp_path):
    def broken():
        yield from _chunks(2)
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError):
        Mp4Writer().write(broken(), tmp_path, fps=8)
    assert list(tmp_path.iterdir()) == []


def test_burn_index_marks_the_corner_only():
    frame = np.full((64, 96, 3), 128, dtype=np.uint8)
    out = burn_index(frame, 42)
    assert out.shape == frame.shape
    assert not np.array_equal(out[:16, :32], frame[:16, :32])
    assert np.array_equal(out[40:, 60:], frame[40:, 60:])


def test_decode_refuses_a_finished_extend_run_saying_what_its_latents_give(tmp_path):
    """README check: decode's line for a finished `longgen extend` run said its latents, decoded as a file, "write
    them again" (its extended.mp4 and continuation.mp4); they hold only the kept history and the new part, so that
    file decodes to one video of those (81 frames where extended.mp4 had 243 at tiny size)."""
    from longgen.commands.decode import extend_refusal

    (tmp_path / "latents.safetensors").write_bytes(b"")
    line = extend_refusal(tmp_path, "tiny")
    assert "one video of the kept history and the new part (not the whole input)" in line, line
    assert "write them again" not in line and f"longgen decode {tmp_path}/latents.safetensors backbone=tiny" in line

"""The backbones' speed changes keep the maths: split-block group norm, the GELU epilogue, whole-frame decoding.

Oracles: torch's own `nn.GroupNorm` evaluated in float64, diffusers' `GELU` module, the decoder-call count of a
streamed decode. The GPU-only kernels (cuBLASLt's epilogue) are measured in scripts/gemm_epilogue_probe.py; here the
wrapper around it is checked against the op's documented result.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longgen.backbones.cogvideox import UNTILED_DECODE_BYTES_PER_PIXEL
from longgen.backbones.fused_gelu import EpilogueGELU, fuse_gelu_projections
from longgen.backbones.group_norm import ParallelGroupNorm, parallel_group_norms
from longgen.errors import UsageError

from conftest import make_tiny

CASES = [  # (shape, groups, memory format)
    ((1, 32, 5, 12, 16), 8, torch.contiguous_format),
    ((2, 64, 3, 8, 10), 8, torch.channels_last_3d),
    ((3, 12, 20), 4, torch.contiguous_format),
]


def _norms(shape, groups, dtype):
    torch.manual_seed(0)
    ref = nn.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = ParallelGroupNorm(groups, shape[1], eps=1e-6)
    ours.load_state_dict(ref.state_dict())
    return ref, ours.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,groups,fmt", CASES)
def test_parallel_group_norm_equals_torch_group_norm(dtype, shape, groups, fmt):
    ref, ours = _norms(shape, groups, dtype)
    # an offset of 13 σ: the case where a one-pass variance loses digits
    x = (torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3 + 40).to(dtype)
    x = x.contiguous(memory_format=fmt)
    with torch.no_grad():
        exact = ref.double()(x.double())  # torch's kernel in float64 on the same (rounded) input
        native = nn.GroupNorm(groups, shape[1], eps=1e-6).to(dtype)
        native.load_state_dict(ref.state_dict())
        y = ours(x)
        native_err = (native(x).double() - exact).abs().max().item()
    assert y.dtype == dtype and y.shape == x.shape
    err = (y.double() - exact).abs().max().item()
    # as accurate as torch's kernel in the same dtype (up to an output rounding)
    assert err <= 2 * native_err + {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 0.02}[dtype]


def test_parallel_group_norm_far_from_zero():
    """An offset of 10⁴ σ: the float32 variance must come from centred values (a one-pass E[x²] − μ² there loses
    every digit of σ²)."""
    ref, ours = _norms((1, 16, 4, 6, 6), 4, torch.float32)
    x = torch.randn(1, 16, 4, 6, 6, generator=torch.Generator().manual_seed(2)) + 1e4  # rounded at 1e-3
    with torch.no_grad():
        exact = ref.double()(x.double())
        assert (ours(x).double() - exact).abs().max().item() < 1e-2  # torch's own float32 kernel: 1e-3


def test_parallel_group_norms_swaps_every_vae_group_norm_and_keeps_the_decode():
    native = make_tiny(vae_norm="native")
    vae = native.pipe.vae
    count = sum(type(m) is nn.GroupNorm for m in vae.modules())
    assert count > 0
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    latents = torch.randn(1, 5, *native.latent_shape, generator=torch.Generator().manual_seed(3))
    frames_native = torch.from_numpy(__import__("numpy").concatenate(list(native.decode_stream(latents))))
    params = {id(p) for p in vae.parameters()}
    assert parallel_group_norms(vae) == count
    assert not any(type(m) is nn.GroupNorm for m in vae.modules())
    assert sum(isinstance(m, ParallelGroupNorm) for m in vae.modules()) == count
    assert {id(p) for p in vae.parameters()} == params  # the same Parameter objects
    after = vae.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    frames = torch.from_numpy(__import__("numpy").concatenate(list(native.decode_stream(latents))))
    assert (frames.int() - frames_native.int()).abs().max().item() <= 1


def test_backbone_vae_norm_option():
    assert any(isinstance(m, ParallelGroupNorm) for m in make_tiny().pipe.vae.modules())  # the default
    assert make_tiny().describe()["vae_norm"] == "parallel"
    with pytest.raises(UsageError, match="vae_norm"):
        make_tiny(vae_norm="fast")


# ------------------------------------------------------------------------------------------ GELU epilogue
def _cuda_addmm_activation(bias, mat1, mat2, beta=1, alpha=1, use_gelu=False):
    """What torch._addmm_activation returns on CUDA (cuBLASLt GELU epilogue = tanh approximation)."""
    out = torch.addmm(bias, mat1, mat2)
    return F.gelu(out, approximate="tanh") if use_gelu else F.relu(out)


def test_epilogue_gelu_equals_diffusers_gelu(monkeypatch):
    from diffusers.models.activations import GELU

    monkeypatch.setattr(torch, "_addmm_activation", _cuda_addmm_activation)
    torch.manual_seed(0)
    gelu = GELU(8, 12, approximate="tanh")  # not square: a transposed weight would not even run
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(EpilogueGELU(gelu.proj)(x), gelu(x), atol=1e-6)


def test_epilogue_gelu_under_autograd_is_differentiable(monkeypatch):
    """torch has no derivative for `_addmm_activation`: a differentiable call (GLC's vmcr_source=model) takes the
    plain projection and GELU, whose output and input gradient are diffusers' GELU's."""
    from diffusers.models.activations import GELU

    def no_derivative(*args, **kwargs):
        raise AssertionError("the epilogue op was called under autograd")

    monkeypatch.setattr(torch, "_addmm_activation", no_derivative)
    torch.manual_seed(0)
    gelu = GELU(8, 12, approximate="tanh")
    x = torch.randn(2, 5, 8, requires_grad=True)
    out = EpilogueGELU(gelu.proj)(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (ref,) = torch.autograd.grad(gelu(x).square().sum(), x)
    torch.testing.assert_close(grad, ref)


def test_fuse_gelu_projections_on_a_transformer(monkeypatch):
    monkeypatch.setattr(torch, "_addmm_activation", _cuda_addmm_activation)
    backbone = make_tiny()
    transformer = backbone.pipe.transformer
    x = torch.randn(1, backbone.window, *backbone.latent_shape, generator=torch.Generator().manual_seed(4))
    before = backbone.predict(x, 500, [0], 1.0).x0
    assert fuse_gelu_projections(transformer) == transformer.config.num_layers
    assert not fuse_gelu_projections(transformer)  # nothing left to fuse
    after = backbone.predict(x, 500, [0], 1.0).x0
    assert torch.allclose(after, before, atol=1e-5)


def test_fused_gelu_option():
    tiny = make_tiny()
    assert tiny.fused_gelu == "auto" and tiny.describe()["fused_gelu_layers"] == 0  # CPU: not fused
    with pytest.raises(UsageError, match="fused_gelu=true needs a CUDA device"):
        make_tiny(fused_gelu=True)
    with pytest.raises(UsageError, match="fused_gelu"):
        make_tiny(fused_gelu="yes")


# ------------------------------------------------------------------------------------------ decoding
def test_vae_tiling_auto_decodes_whole_frames_when_the_gpu_has_room(monkeypatch):
    backbone = make_tiny(vae_tiling="auto")
    vae = backbone.pipe.vae
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
    z = torch.zeros(1, backbone.latent_shape[0], 3, *backbone.latent_shape[1:])  # [1, C, b, h, w]: 64×64 pixels
    assert backbone._tiled_decode(vae, z)  # CPU: host memory keeps the tiled decode
    backbone.device = torch.device("cuda")  # the decision alone, with the room reported below
    need = UNTILED_DECODE_BYTES_PER_PIXEL * 64 * 64 * vae.dtype.itemsize // 2
    monkeypatch.setattr(type(backbone), "_gpu_room", lambda self: need)
    assert not backbone._tiled_decode(vae, z)
    monkeypatch.setattr(type(backbone), "_gpu_room", lambda self: need - 1)
    assert backbone._tiled_decode(vae, z)
    backbone.vae_tiling = True
    monkeypatch.setattr(type(backbone), "_gpu_room", lambda self: 10 * need)
    assert backbone._tiled_decode(vae, z)
    with pytest.raises(UsageError, match="vae_tiling"):
        make_tiny(vae_tiling="maybe")


def test_vae_tiling_auto_per_family():
    """CogVideoX decides per decode (tiling enabled, `_tiled_decode` chooses); Wan, which streams one latent frame
    at a time, decodes untiled under `auto` and tiles only when asked."""
    from test_wan import make_tiny_wan

    assert make_tiny(vae_tiling="auto").pipe.vae.use_tiling
    assert not make_tiny_wan(vae_tiling="auto").pipe.vae.use_tiling
    assert make_tiny_wan(vae_tiling=True).pipe.vae.use_tiling


def test_stream_decode_runs_one_batch_ahead():
    """The next temporal batch is queued before the previous batch is handed over (decode overlaps the writer),
    and never more than one: memory stays bounded."""
    backbone = make_tiny()
    calls = []
    hook = backbone.pipe.vae.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        stream = backbone.decode_stream(torch.randn(1, 9, *backbone.latent_shape))
        seen = []
        for chunk in stream:
            seen.append(len(calls))
    finally:
        hook.remove()
    assert seen == [2, 3, 4, 4]  # batches of 3, 2, 2, 2 latent frames

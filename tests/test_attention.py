"""longgen's joint-attention processor (the one the FlashAttention-3 kernels and ABAM run through) against
diffusers' own CogVideoX processor, and the FP8 scaling maths of the fa3-fp8 kernel (CPU: the kernels themselves
need a Hopper GPU; their speed and error are in benchmarks/README.md)."""

from __future__ import annotations

import pytest
import torch

from longgen.backbones.attention import E4M3_MAX, JointAttention, check_fa3, fp8_per_head
from longgen.errors import UsageError

from conftest import make_tiny


def test_processor_with_sdpa_equals_diffusers_processor():
    backbone = make_tiny(prompts=("a cat",))
    x = torch.randn((2, backbone.window, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    reference = backbone.predict(x, 979, [0, 0], 6.0).x0
    backbone.pipe.transformer.set_attn_processor(JointAttention("sdpa"))
    ours = backbone.predict(x, 979, [0, 0], 6.0).x0
    assert (ours - reference).abs().max() <= 1e-5
    # metamorphic: a rewrite of the video keys/values reaches the output
    backbone.pipe.transformer.set_attn_processor(JointAttention("sdpa", video_kv=lambda k, v: (k, v.flip(2))))
    assert (backbone.predict(x, 979, [0, 0], 6.0).x0 - reference).abs().max() > 1e-3


def test_fp8_scales_map_each_head_to_the_e4m3_range():
    x = torch.randn(2, 50, 3, 8) * torch.tensor([1.0, 30.0, 0.01])[None, None, :, None]  # [b, n, heads, d]
    x8, descale = fp8_per_head(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (2, 3)
    peak = x8.float().abs().amax(dim=(1, 3))  # [b, heads]
    assert torch.allclose(peak, torch.full_like(peak, E4M3_MAX))
    back = x8.float() * descale[:, None, :, None]
    assert ((back - x).norm() / x.norm()) < 0.05  # e4m3 keeps ~2 significant digits per element


def test_fa3_where_it_cannot_run_is_one_line():
    with pytest.raises(UsageError, match="Hopper"):
        check_fa3(torch.device("cpu"))


def test_fa3_calls_that_autograd_differentiates_take_torch_attention():
    """fa3-fwd has no backward kernel: a differentiable call (GLC's vmcr_source=model) must not reach it, and its
    gradient is that of plain softmax attention written out; a no-grad call still goes to FlashAttention-3."""
    from longgen.backbones.attention import fa3, fa3_fp8

    calls = []

    def flash(q, k, v, **scales):  # stands in for fa3-fwd: records the call, returns the layout it would
        calls.append(q.shape)
        return q

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g, requires_grad=True) for _ in range(3))
    for func in (fa3, fa3_fp8):
        out = func(q, k, v, flash)
        (dq,) = torch.autograd.grad(out.square().sum(), q)
        q2 = q.detach().requires_grad_(True)
        ref = torch.softmax(q2 @ k.detach().transpose(-1, -2) / 8**0.5, dim=-1) @ v.detach()  # [1, 2, 6, 8]
        (dq_ref,) = torch.autograd.grad(ref.square().sum(), q2)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dq, dq_ref, rtol=1e-4, atol=1e-6)
    assert calls == []
    with torch.no_grad():
        fa3(q, k, v, flash)
    assert len(calls) == 1

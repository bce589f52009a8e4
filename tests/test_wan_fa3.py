"""`backbone.attention=fa3` on Wan through fa3-fwd (longgen/backbones/attention.py `WanAttention`,
longgen/backbones/wan.py `WanFlashKernel`), on the CPU: fa3-fwd itself needs a Hopper GPU, so a stand-in
`flash_attn_func` (plain softmax attention in fa3-fwd's [b, n, heads, d] layout, recording its calls) is put where
the package would be. The processor equals diffusers' own WanAttnProcessor on tiny Wan transformers (text-to-video
and I2V); the GPU lane (tests/gpu/test_lane_wanfa3.py) compares the real kernel with cuDNN attention."""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types

import pytest
import torch

from longgen.backbones import attention
from longgen.backbones.attention import WAN_TEXT_TOKENS, WanAttention
from longgen.backbones.wan import WanFlashKernel
from longgen.errors import UsageError


def _stand_in(calls: list):
    """A fake `fa3_fwd_interface` module whose flash_attn_func records (q dtype, q shape, k shape) per call."""

    def flash_attn_func(q, k, v):  # [b, n, heads, d], [b, m, heads, d] → [b, n, heads, d]
        calls.append((q.dtype, tuple(q.shape), tuple(k.shape)))
        scores = torch.einsum("bnhd,bmhd->bhnm", q.float(), k.float()) / q.shape[-1] ** 0.5
        return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v.float()).to(q.dtype)

    module = types.ModuleType("fa3_fwd_interface")
    module.__spec__ = importlib.machinery.ModuleSpec("fa3_fwd_interface", None)
    module.flash_attn_func = flash_attn_func
    return module


@pytest.fixture
def fa3_calls(monkeypatch) -> list:
    from longgen.backbones import spectral_attention

    calls: list = []
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", _stand_in(calls))
    yield calls
    spectral_attention._attend.cache_clear()  # FreeLong's op keeps the kernel it resolved: not the stand-in

def _transformer(i2v: bool):
    """A one-block Wan transformer (2 heads of 8) in float32; I2V: an image context of 3 tokens."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    extra = dict(image_dim=12, added_kv_proj_dim=16) if i2v else {}
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
                                 rope_max_seq_len=32, **extra).eval()


def _inputs(i2v: bool) -> dict:
    """Two samples of 3 latent frames at 4×4 (12 video tokens); 512 text tokens (the I2V split point)."""
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 4, 4, generator=g), timestep=torch.tensor([500.0, 300.0]),
                  encoder_hidden_states=torch.randn(2, WAN_TEXT_TOKENS, 16, generator=g), return_dict=False)
    if i2v:
        inputs["encoder_hidden_states_image"] = torch.randn(2, 3, 12, generator=g)
    return inputs


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_processor_equals_diffusers_wan_processor(i2v, fa3_calls):
    """With torch SDPA as its kernel the processor is diffusers' to float32 rounding (projections, q/k norms, RoPE,
    heads, the image cross-attention); with the fa3 stand-in (bf16 inputs, as fa3-fwd takes) it is within bf16
    rounding, and every attention of the block — self, text cross and image cross — went through the kernel."""
    model, inputs = _transformer(i2v), _inputs(i2v)
    with torch.no_grad():
        stock = model(**inputs)[0]  # [2, 4, 3, 4, 4]
        model.set_attn_processor(WanAttention("sdpa"))
        ours = model(**inputs)[0]
        model.set_attn_processor(WanAttention("fa3"))
        flash = model(**inputs)[0]
    assert (ours - stock).abs().max() <= 1e-5
    assert (flash - stock).abs().max() <= 2e-2 * stock.abs().max()
    dtypes, queries, keys = zip(*fa3_calls)
    assert set(dtypes) == {torch.bfloat16}
    assert set(queries) == {(2, 12, 2, 8)}
    assert list(keys) == [(2, 12, 2, 8), (2, WAN_TEXT_TOKENS, 2, 8)] + ([(2, 3, 2, 8)] if i2v else [])


def test_differentiated_calls_do_not_reach_fa3(fa3_calls):
    """GLC's vmcr_source=model differentiates through the transformer: fa3-fwd has no backward kernel, so those
    calls take torch's attention, and the gradient is that of the stock processor."""
    model, inputs = _transformer(False), _inputs(False)
    x = inputs.pop("hidden_states").requires_grad_()
    model(hidden_states=x, **inputs)[0].square().sum().backward()
    stock = x.grad.clone()
    x.grad = None
    model.set_attn_processor(WanAttention("fa3"))
    model(hidden_states=x, **inputs)[0].square().sum().backward()
    assert fa3_calls == []
    assert (x.grad - stock).abs().max() <= 1e-5 * stock.abs().max()


def test_the_kernel_installs_fa3_fwd_and_says_so(fa3_calls, monkeypatch):
    """Where fa3-fwd is installed it is what runs (the manifest's attention_kernels names it)."""
    monkeypatch.setattr(attention, "check_fa3", lambda device: None)  # the stand-in "runs" on this CPU
    kernel, model = WanFlashKernel(), _transformer(False)
    kernel.check_installed()
    kernel.check(torch.device("cpu"))
    kernel.install(model)
    assert "fa3-fwd" in kernel.description
    assert {type(p) for p in model.attn_processors.values()} == {WanAttention}


def test_fa3_where_it_cannot_run_is_one_line(fa3_calls, monkeypatch):
    with pytest.raises(UsageError, match="runs on NVIDIA Hopper GPUs"):
        WanFlashKernel().check(torch.device("cpu"))
    monkeypatch.delitem(sys.modules, "fa3_fwd_interface")
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.endswith("_interface") else
                        found(name, *a))
    with pytest.raises(UsageError, match=r'needs FlashAttention-3 .*pip install "longgen\[fa3\]"') as err:
        WanFlashKernel().check_installed()
    assert "\n" not in str(err.value)


def test_abam_and_freelong_on_wan_compute_with_fa3(fa3_calls, monkeypatch):
    """A tiny Wan backbone loaded with backbone.attention=fa3 (the stand-in "runs" on this CPU): its predictions, with
    anchor attention (ABAM) and with FreeLong's blend, are those of the same backbone on torch's SDPA within bf16
    rounding, each computed through the kernel; the manifest's attention_kernels names fa3-fwd."""
    from test_wan import make_tiny_wan

    monkeypatch.setattr(attention, "check_fa3", lambda device: None)
    small = dict(height=16, width=16)
    fa3, plain = make_tiny_wan(("a fox",), attention="fa3", **small), make_tiny_wan(("a fox",), **small)
    assert fa3.describe()["attention_kernels"] == "FlashAttention-3 (fa3-fwd, longgen's Wan processor)"
    x = torch.randn(1, 9, *fa3.latent_shape, generator=torch.Generator().manual_seed(0))
    runs = {"plain": lambda den: contextlib.nullcontext(), "abam": lambda den: den.anchor_attention(0.5),
            "freelong": lambda den: den.spectral_attention(9, (3, 5), 0.25, 0.25)}
    for name, within in runs.items():
        with within(plain):
            want = plain.predict(x, 600.0, [0], 1.0).x0
        before = len(fa3_calls)
        with within(fa3):
            got = fa3.predict(x, 600.0, [0], 1.0).x0
        assert (got - want).abs().max() <= 2e-2 * want.abs().max(), name
        queries = [q[1] for _, q, k in fa3_calls[before:] if k[1] != fa3.max_text_tokens]  # self-attention
        assert queries and (min(queries) < 9 if name == "freelong" else set(queries) == {9}), (name, queries)

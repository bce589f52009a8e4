"""HunyuanVideo 1.5's valid-prefix attention (longgen/backbones/prefix_attention.py) against masked attention written
out (scores, −∞ on a masked pair, softmax, a row that sees no key is 0), rows of different valid lengths in one
call; the op under a compiled graph; a mask whose valid tokens are not first is refused. The whole transformer
against diffusers' stock masked processor: tests/test_hunyuan15.py::test_direct_equals_the_pipeline_from_the_embeddings_on."""

from __future__ import annotations

import math

import pytest
import torch

from longgen.backbones.prefix_attention import (HunyuanPrefixKernel, attend_with, prefix_attention,
                                                prefix_attention_op)
from longgen.errors import UsageError

N_VIDEO, S, HEADS, HD = 6, 5, 2, 4


def masked_attention_written_out(q, k, v, text_mask):
    """The stock rule by the formula: a query sees a key when both are valid (every video token, the valid text
    tokens wherever they are); a query that sees none gets 0."""
    b, _, n, _ = q.shape
    text = text_mask.bool()
    valid_q = torch.cat([torch.ones(b, n - S, dtype=torch.bool), text], dim=1)  # [b, N + S]
    valid_k = torch.cat([torch.ones(b, k.shape[2] - S, dtype=torch.bool), text], dim=1)  # [b, N' + S]
    out = torch.zeros_like(q)
    for row in range(b):
        for i in range(n):
            if not valid_q[row, i]:
                continue
            for h in range(q.shape[1]):
                scores = (k[row, h] @ q[row, h, i]) / math.sqrt(q.shape[-1])  # [N' + S]
                scores = scores.masked_fill(~valid_k[row], float("-inf"))
                out[row, h, i] = torch.softmax(scores, dim=0) @ v[row, h]
    return out


def _qkv(b, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, HEADS, N_VIDEO + S, HD, generator=gen, dtype=torch.float64) for _ in range(3)]


def test_rows_of_different_valid_lengths_equal_masked_attention_written_out():
    q, k, v = _qkv(3)
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])  # valid text tokens first
    ours = prefix_attention(attend_with("valid-prefix"), q, k, v, text_mask)
    assert (ours - masked_attention_written_out(q, k, v, text_mask)).abs().max().item() < 1e-12
    # rows of one length take the one-call path
    same = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    ours = prefix_attention(attend_with("valid-prefix"), q, k, v, same)
    assert (ours - masked_attention_written_out(q, k, v, same)).abs().max().item() < 1e-12
    # the oracle can tell: attending over every token (the mask ignored) differs
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (plain - masked_attention_written_out(q, k, v, text_mask)).abs().max().item() > 1e-3


def test_video_keys_added_to_the_queries_own_equal_masked_attention_written_out():
    """ABAM's and cross-shot attention's call: N' = N + 4 video keys (the reference's appended), always valid."""
    q, _, _ = _qkv(2, seed=2)
    gen = torch.Generator().manual_seed(3)
    k, v = (torch.randn(2, HEADS, N_VIDEO + 4 + S, HD, generator=gen, dtype=torch.float64) for _ in range(2))
    text_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    ours = prefix_attention(attend_with("valid-prefix"), q, k, v, text_mask)
    assert ours.shape == q.shape
    assert (ours - masked_attention_written_out(q, k, v, text_mask)).abs().max().item() < 1e-12
    # rows of one length (the one-call path), as a window's rows of one prompt are: the keys keep all N' video
    # tokens (cutting them at the queries' N + T went unnoticed while only rows of different lengths were checked)
    same = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    ours = prefix_attention(attend_with("valid-prefix"), q, k, v, same)
    assert (ours - masked_attention_written_out(q, k, v, same)).abs().max().item() < 1e-12


def test_the_op_traces_into_a_compiled_graph_and_gives_the_same_numbers():
    q, k, v = (x.float() for x in _qkv(2, seed=1))
    text_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    compiled = torch.compile(lambda *a: prefix_attention_op(*a, "valid-prefix") * 2, backend="aot_eager",
                             fullgraph=True)  # fullgraph: the lengths (data) stay inside the op, no graph break
    eager = prefix_attention(attend_with("valid-prefix"), q, k, v, text_mask) * 2
    assert torch.equal(compiled(q, k, v, text_mask), eager)


def test_valid_text_tokens_that_are_not_first_are_refused():
    q, k, v = _qkv(1)
    with pytest.raises(RuntimeError, match="not first in their rows"):
        prefix_attention(attend_with("valid-prefix"), q, k, v, torch.tensor([[0, 1, 1, 0, 0]]))


def test_fa3_off_a_hopper_gpu_is_one_line():
    with pytest.raises(UsageError, match="backbone.attention=fa3 runs on NVIDIA Hopper GPUs"):
        HunyuanPrefixKernel("fa3", lambda name: True).check(torch.device("cpu"))


def test_the_ops_shape_function_agrees_with_the_op():
    """What the compiler is told (the fake) against what the op returns, by torch.library.opcheck (mutation audit: a
    fake of the wrong shape passed the aot_eager compile above, Inductor would build on it)."""
    q, k, v = (x.float() for x in _qkv(2, seed=4))
    for mask in ([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]):
        torch.library.opcheck(prefix_attention_op, (q, k, v, torch.tensor(mask), "valid-prefix"),
                              test_utils=("test_schema", "test_faketensor"))


def test_hunyuan_takes_valid_prefix_and_fa3_by_name():
    """backbone.attention on HunyuanVideo 1.5: the SDPA set and its own two kernels, as README lists them (mutation
    audit: dropping `fa3` from the family's kernels left no test failing); a bad name lists them."""
    from omegaconf import OmegaConf

    from longgen.build import build

    from conftest import REPO

    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-hunyuan15.yaml")
    cfg.attention = "fa4"
    with pytest.raises(UsageError) as err:
        build(cfg, "backbone", "tiny-hunyuan15")
    assert str(err.value).startswith("backbone.attention='fa4': use one of auto, sdpa, cudnn, flash, efficient, math, "
                                     "valid-prefix, fa3")


def test_abam_and_cross_shot_attention_attend_on_the_valid_prefix_where_it_is_installed():
    """Standing in for longgen's valid-prefix processor they take its attention (the same numbers as the masked
    fallback, tested above and in test_hunyuan15_attention.py; only the speed would be lost); standing in for
    diffusers' processor, its masked attention."""
    from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

    from longgen.backbones.attention import hunyuan_attend
    from longgen.backbones.prefix_attention import HunyuanPrefixAttention

    prefix = HunyuanPrefixAttention("valid-prefix")
    assert hunyuan_attend(prefix) == prefix.attend_joint
    assert hunyuan_attend(HunyuanVideo15AttnProcessor2_0()).__name__ == "masked"

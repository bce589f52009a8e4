"""HunyuanVideo 1.5's joint attention on each row's valid tokens only (`backbone.attention=auto` and `fa3` on this
family).

The stock processor (diffusers' HunyuanVideo15AttnProcessor2_0) attends over the joint sequence [N video tokens;
S text tokens] under a dense [b, 1, N + S, N + S] boolean mask that lets a query see a key only when both are valid.
Before its blocks the transformer sorts each row's text tokens so that the valid ones (image, ByT5, Qwen) come
first, so the valid tokens of row r are the prefix of length N + T_r (T_r = the row's valid text tokens). For a
valid query the masked attention equals plain attention over that prefix: a masked key enters the softmax with
weight exp(−∞) = 0, so leaving it out changes no sum. A padded text query sees no key under the mask; its output
here is 0. No valid token ever reads a padded one (they are masked keys in every block) and only the video tokens
leave the last block, so the transformer's output is the stock one's, up to the kernels' rounding.

Why: SDPA kernels given a mask run far below their unmasked speed at this model's shape. On an H100 at 480p
(2 × 16 heads × 51,275 tokens × 128) cuDNN ran at 175 TFLOP/s with the mask, 593 without it, and
FlashAttention-3 at 746 on the valid prefix; the masked attention was ~6.7 s of the 7.3 s forward
(benchmarks/README.md, "Issue 26").

Kernels (`HunyuanPrefixKernel`, installed on the joint layers of the 54 double-stream blocks only; the text
refiner's layers keep their processors):
- `valid-prefix` (what `auto` takes): torch SDPA on the prefix, on CUDA in the order cuDNN, flash, efficient, math;
- `fa3`: FlashAttention-3 (fa3-fwd, Hopper) on the prefix, in bf16.
The prefix lengths are read from the mask once per layer call (one device sync) inside the custom op
`longgen::prefix_attention`, so compiled blocks trace through it; a call autograd differentiates (GLC's
`vmcr_source=model`) runs the same function outside the op.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from longgen.backbones.attention import (SDPA_KERNELS, Kernel, check_fa3, hunyuan_out, hunyuan_qkv, kernel_func,
                                        needs_backward)

#: the SDPA order of `valid-prefix` on CUDA: auto's everywhere in longgen (cuDNN measured fastest at head dim 128)
PREFIX_SDPA = SDPA_KERNELS["auto"]
#: attend(q, k, v): [b, heads, n, hd] each → [b, heads, n, hd], unmasked
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def valid_text_counts(text_mask: torch.Tensor) -> list[int]:
    """Each row's count of valid text tokens T_r, from the text mask [b, S]. Raises when a row's valid text tokens
    are not its first ones (the transformer sorts them so; anything else would make the prefix wrong)."""
    valid = text_mask.bool()  # [b, S]
    counts, leading = torch.stack([valid.sum(1), valid.long().cumprod(1).sum(1)]).tolist()  # one sync
    if counts != leading:
        raise RuntimeError("HunyuanVideo 1.5's valid text tokens are not first in their rows, which valid-prefix "
                           "attention needs: use backbone.attention=sdpa")
    return counts


def prefix_attention(attend: Attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     text_mask: torch.Tensor) -> torch.Tensor:
    """q: [b, heads, N + S, hd]; k, v: [b, heads, N' + S, hd] (video tokens first, N' ≥ N where ABAM or cross-shot
    attention add video keys, then the S text tokens, valid ones first); text_mask: [b, S] → [b, heads, N + S, hd]:
    `attend` of each row's N + T_r valid queries over its N' + T_r valid keys, padded text queries 0. Rows with
    as many valid text tokens share one call."""
    s = text_mask.shape[1]
    n_q, n_k = q.shape[2] - s, k.shape[2] - s
    texts = valid_text_counts(text_mask)
    if len(set(texts)) == 1:
        t = texts[0]
        return F.pad(attend(q[:, :, : n_q + t], k[:, :, : n_k + t], v[:, :, : n_k + t]), (0, 0, 0, s - t))
    rows = []
    for row, t in enumerate(texts):
        q_row = q[row : row + 1, :, : n_q + t]  # [1, heads, N + T_r, hd]
        k_row, v_row = (x[row : row + 1, :, : n_k + t] for x in (k, v))  # [1, heads, N' + T_r, hd]
        rows.append(F.pad(attend(q_row, k_row, v_row), (0, 0, 0, s - t)))  # [1, heads, N + S, hd]
    return torch.cat(rows)


def _sdpa_in_order(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked torch SDPA, [b, heads, n, hd] → [b, heads, n, hd], on CUDA in PREFIX_SDPA's order."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, n) for n in PREFIX_SDPA], set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


@functools.cache
def attend_with(kernel: str) -> Attend:
    """The unmasked attention of a kernel name ("valid-prefix": SDPA; "fa3": FlashAttention-3, resolved once)."""
    return _sdpa_in_order if kernel == "valid-prefix" else kernel_func(kernel)


@torch.library.custom_op("longgen::prefix_attention", mutates_args=())
def prefix_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_mask: torch.Tensor,
                        kernel: str) -> torch.Tensor:
    """`prefix_attention` with the kernel named, as one op (its lengths are data: traced code cannot slice by them)."""
    # contiguous, as the shape function promises the compiler (q may be a transposed view)
    return prefix_attention(attend_with(kernel), q, k, v, text_mask).contiguous()


@prefix_attention_op.register_fake
def _prefix_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_mask: torch.Tensor,
                           kernel: str) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
class HunyuanPrefixAttention:
    """Processor for a HunyuanVideo 1.5 joint attention layer: the stock projections, norms and RoPE
    (`hunyuan_qkv`), attention over each row's valid prefix with `kernel`, the stock output projections."""

    #: diffusers' attention backend: none (the masked fallback of `attention.hunyuan_attend` reads it)
    _attention_backend = None

    def __init__(self, kernel: str = "valid-prefix") -> None:
        self.kernel = kernel

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb=None) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = hunyuan_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)  # [b, N + S, heads, hd]
        out = self.attend_joint(q, k, v, attention_mask)  # [b, N + S, heads·hd]
        return hunyuan_out(attn, out, encoder_hidden_states.shape[1])

    def attend_joint(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     text_mask: torch.Tensor) -> torch.Tensor:
        """q [b, N + S, heads, hd], k, v [b, N' + S, heads, hd], text_mask [b, S] → [b, N + S, heads·hd]; also how
        ABAM and cross-shot attention attend when they stand in for this processor (`attention.hunyuan_attend`)."""
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [b, heads, n, hd]
        if needs_backward(q, k, v):  # the op has no backward; the function it wraps has
            out = prefix_attention(attend_with(self.kernel), q, k, v, text_mask)
        else:
            out = prefix_attention_op(q, k, v, text_mask, self.kernel)  # [b, heads, N + S, hd]
        return out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # [b, N + S, heads·hd]


class HunyuanPrefixKernel(Kernel):
    """`valid-prefix` or `fa3` on the joint attention layers of a HunyuanVideo 1.5 transformer (`layers`: which
    processor names those are)."""

    DESCRIPTIONS = {"valid-prefix": "torch SDPA (cuDNN first on CUDA) on each row's valid tokens",
                    "fa3": "FlashAttention-3 (fa3-fwd) on each row's valid tokens"}

    def __init__(self, name: str, layers: Callable[[str], bool]) -> None:
        super().__init__(name, self.DESCRIPTIONS[name])
        self.layers = layers

    def check(self, device: torch.device) -> None:
        if self.name == "fa3":
            check_fa3(device)

    def install(self, transformer: torch.nn.Module) -> None:
        processor = HunyuanPrefixAttention(self.name)
        processors = {name: processor if self.layers(name) else p for name, p in transformer.attn_processors.items()}
        transformer.set_attn_processor(processors)

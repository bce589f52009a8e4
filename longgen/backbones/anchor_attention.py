"""Anchor-based attention (ABAM) for the CogVideoX, Wan and HunyuanVideo 1.5 transformers: GLC-Diffusion (Ma et
al. 2025, arXiv 2501.05484), §3.2 "Anchor-Based Attention Mechanism", Eq. 10.

Inside every attention layer, the keys and values of each window (clip) in a batch are blended with those of an
anchor window at the same token positions: K ← λ·K + (1 − λ)·K_anchor and V ← λ·V + (1 − λ)·V_anchor; the
queries are left alone, so each window still attends with its own content but to a mixture of its own and the
anchor's keys/values. λ = 1 is plain attention; the paper's default is λ = 0.1 (its §7 / Table 4).

Which window is the anchor, exactly:
- The batch a sampler hands to `predict` is split into consecutive *groups* (GLC: the global-path clips, then the
  local-path windows); the first window of each group is that group's anchor (the paper's "first video clip" of a
  denoising path). With no groups given, the whole batch is one group.
- Classifier-free guidance runs the batch twice in one stacked batch, [unconditional rows, conditional rows]. Each
  branch has its own anchor: unconditional rows blend with the unconditional anchor's K/V, conditional rows with the
  conditional anchor's (mixing branches would leak the prompt into the unconditional estimate).
- The backbone splits those rows into transformer calls (micro-batches, possibly spread over several processes:
  longgen/parallel/units.py). Each branch runs in two phases (`AnchorLayout.phases`): its anchor rows first, in calls
  of their own, which store their K/V per layer; then its other rows, each blending with its group's stored anchor.
  The anchor's own K/V are unchanged by the blend (λ·K_a + (1 − λ)·K_a = K_a), so an anchor call is plain attention
  and the stored K/V are exactly those of the anchor at this timestep. The calls are the same whatever the number of
  processes (each process runs the anchor calls itself), so the result is the same bytes on 1 or N GPUs; it does
  not depend on the micro-batch size beyond floating-point rounding.
- The store holds one anchor per group and layer (the conditional branch overwrites the unconditional anchors only
  after every unconditional row has run) and is emptied when the `predict` call ends. Memory: 2 (K and V) × layers ×
  heads × video tokens × head dim per group, e.g. 2·30·30·17 550·64 fp16 values ≈ 4 GB per group on CogVideoX-2B.
  Wan 2.2 A14B (processors in both experts): each expert's part of a `predict` is a run of its own, whose anchor
  calls rewrite every (layer, group) before its other rows read them, so an expert never blends with the other
  expert's anchors, also when per-frame timesteps run both experts in one predict; the store keeps one expert's.
- Only the video tokens are blended; the text tokens of the joint attention keep each window's own prompt
  (windows of a multi-event story carry different local prompts, and the method's point is visual consistency).
- With RoPE (CogVideoX-5B, Wan) the blend is applied after the rotation; both windows have the same positions, so
  this equals blending before the rotation.
- Wan (`WanAnchorAttnProcessor`) has separate self-attention (video tokens only) and cross-attention (video queries,
  text keys/values) in each block. Eq. 10 is applied in the self-attention layers, whose keys/values are the video
  tokens; the cross-attention layers keep their stock processor (their keys/values are the window's own prompt, as
  the text tokens of CogVideoX's joint attention are). The store is larger there: 2·30·32 760·1536 bf16 values
  ≈ 6 GB per group for Wan-1.3B at 480p, ≈ 62 GB for 14B at 720p (too much next to the model on one 80 GB GPU:
  sampler.abam=false there).
- HunyuanVideo 1.5 (`HunyuanAnchorProcessor`) has joint attention as CogVideoX, with the video tokens first and the
  text tokens (under their padding mask) after them: Eq. 10 blends the video keys/values only, in the joint
  attention layers of its double-stream blocks (not the text refiner's).

Compilation: the blend is the custom op `longgen::anchor_blend` (opaque to torch.compile), and one processor
object serves every layer; the op finds its layer by counting its calls within the transformer call in flight
(layers run in order). So the compiled blocks see no per-layer Python constants and no Python bookkeeping: they
keep one compiled graph for all blocks, as without ABAM (closures over the layer index made Dynamo recompile per
layer, run past its recompile limit and fall back to eager blocks, +19 % per step).

`anchored(transformer, strength, groups, processor, layers)` installs these processors on a diffusers transformer
(every attention layer, or those whose processor name `layers` accepts) and puts the original processors back on
exit (also on an exception); `AnchorLayout.call(batch)` brackets one `predict`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from longgen.backbones.attention import (CallInFlight, JointAttention, hunyuan_attend, hunyuan_out, hunyuan_qkv,
                                        processors_installed, wan_attend, wan_self_qkv)
from longgen.errors import UsageError


class AnchorLayout(CallInFlight):
    """Where the anchors are in the rows of one `predict` call, and their keys/values per layer."""

    #: the AnchorLayout whose transformer call is in flight (at most one; a list so that nesting is detected)
    ACTIVE: list["AnchorLayout"] = []
    what = "anchor attention"

    def __init__(self, strength: float, groups: Sequence[int] | None = None) -> None:
        if not 0.0 <= float(strength) <= 1.0:
            raise UsageError(f"anchor attention strength λ={strength} must be in [0, 1] (1 = plain attention)")
        if groups is not None:
            groups = [int(g) for g in groups]
            if not groups or any(g < 1 for g in groups):
                raise UsageError(f"anchor attention groups {list(groups)} must be positive window counts")
        self.strength = float(strength)
        self.groups = groups
        self._batch: int | None = None  # windows per CFG branch in the open predict call
        self._group_of: list[int] = []  # in-branch row → group
        self._group_start: list[int] = []  # group → its anchor's in-branch row
        self._planned = False  # the backbone asked for this predict's phases
        self._store: dict[tuple[int, int], tuple[int, torch.Tensor, torch.Tensor]] = {}  # (layer, group) → branch, K, V

    @contextlib.contextmanager
    def call(self, batch: int) -> Iterator[None]:
        """Bracket one `predict` of `batch` windows (per CFG branch)."""
        sizes = self.groups if self.groups is not None else [batch]
        if sum(sizes) != batch:
            raise ValueError(f"anchor attention groups {sizes} do not add up to the {batch} windows of this predict")
        self._group_of = [g for g, n in enumerate(sizes) for _ in range(n)]
        self._group_start = [sum(sizes[:g]) for g in range(len(sizes))]
        self._batch, self._planned, self._rows = batch, False, None
        self._store.clear()
        try:
            yield
            if not self._planned:
                raise RuntimeError("anchor attention: the backbone ran this predict without its anchor phases")
        finally:
            self._batch = None
            self._store.clear()

    def phases(self, total: int) -> list[tuple[list[int], list[int]]]:
        """How the `total` CFG-stacked rows of the open predict must run: per branch (unconditional, then
        conditional), (its anchor rows, its other rows), each in stacked-row order. The anchors run first, in calls
        of their own, so that every later call of the branch — in this process or another — finds their keys and
        values stored, and no call mixes anchors with other rows."""
        if self._batch is None:
            raise RuntimeError("anchor attention phases asked outside a predict call of the backbone")
        if total % self._batch:
            raise RuntimeError(f"anchor attention: {total} rows for a batch of {self._batch} windows")
        self._planned = True
        out = []
        for branch in range(total // self._batch):
            first = branch * self._batch
            anchors = [first + s for s in self._group_start]
            others = [r for r in range(first, first + self._batch) if r not in anchors]
            out.append((anchors, others))
        return out

    def blend_next(
        self, key: torch.Tensor, value: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        """`blend` for the next anchored layer of the transformer call in flight (layers are called in order), written
        into `out` (tensors shaped as key and value)."""
        layer = self.next_layer()
        k, v = self.blend(layer, self.rows(layer, key.shape[0]), key, value, out=out)
        if k is key:  # an anchor call: its keys/values pass unchanged
            out[0].copy_(key)
            out[1].copy_(value)

    def rows(self, layer: int, size: int) -> list[int]:
        """Rows (in the CFG-stacked batch) of the transformer call in flight."""
        if self._batch is None or self._rows is None:
            raise RuntimeError("anchor attention processors ran outside a predict call of the backbone")
        if len(self._rows) != size:
            raise RuntimeError(f"anchor attention: a call of {size} rows where {len(self._rows)} were announced")
        return self._rows

    def blend(
        self, layer: int, rows: Sequence[int], key: torch.Tensor, value: torch.Tensor,
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10 for the video tokens of one call. key, value: [b, ...] (rows first; CogVideoX [b, heads, N, hd],
        Wan [b, N, heads, hd]) → same shapes.

        A call of anchors stores each anchor's keys/values for its (layer, group) and leaves them unchanged
        (λ·K_a + (1 − λ)·K_a = K_a); a call of other rows blends each with its branch's stored anchor."""
        anchor = [(row % self._batch) == self._group_start[self._group_of[row % self._batch]] for row in rows]
        if all(anchor):
            for i, row in enumerate(rows):
                group = self._group_of[row % self._batch]
                # clone: keep only the anchor's row alive, not the whole call's tensor; the conditional branch's
                # anchor replaces the unconditional one once every unconditional row has read it
                self._store[(layer, group)] = (row // self._batch, key[i].clone(), value[i].clone())
            return key, value
        if any(anchor):
            raise RuntimeError("anchor attention: a transformer call mixed anchor rows with other rows")
        stored = []
        for row in rows:
            branch, k_a, v_a = self._store[(layer, self._group_of[row % self._batch])]
            if branch != row // self._batch:
                raise RuntimeError("anchor attention: a row ran before its branch's anchor")
            stored.append((k_a, v_a))
        if all(k is stored[0][0] for k, _ in stored):  # one anchor for the whole call (the usual case): broadcast
            k_anchor, v_anchor = stored[0][0][None], stored[0][1][None]  # [1, ...]
        else:
            k_anchor = torch.stack([k for k, _ in stored])  # key.shape
            v_anchor = torch.stack([v for _, v in stored])  # value.shape
        # λ·K + (1 − λ)·K_a as one fused pass over the tensors (lerp from the anchor towards the row's own)
        k_out, v_out = out if out is not None else (None, None)
        return (torch.lerp(k_anchor, key, self.strength, out=k_out),
                torch.lerp(v_anchor, value, self.strength, out=v_out))


@torch.library.custom_op("longgen::anchor_blend", mutates_args=())
def anchor_blend(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10 for the next anchored layer of the transformer call in flight (`AnchorLayout.blend_next`).
    key, value: [b, ...] rows first → new tensors of the same shapes (an anchor call's are copies)."""
    layout = AnchorLayout.in_flight()
    # outputs laid out exactly as the inputs (what the shape function promises the compiler), written in place
    k_out, v_out = torch.empty_like(key), torch.empty_like(value)
    layout.blend_next(key, value, out=(k_out, v_out))
    return k_out, v_out


@anchor_blend.register_fake
def _anchor_blend_shapes(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(key), torch.empty_like(value)


# derived from diffusers models/attention_processor.py (CogVideoXAttnProcessor2_0), version 0.42
def anchor_processor(kernel: str = "sdpa") -> JointAttention:
    """The joint text-video attention of a CogVideoX block with Eq. 10 applied to its video keys and values
    ([b, heads, N, head_dim]), computed with the backbone's attention kernel (longgen/backbones/attention.py: SDPA
    or FlashAttention-3)."""
    return JointAttention(kernel, video_kv=anchor_blend)


def cogvideox_anchor(kernel: str = "sdpa") -> Callable:
    """The `processor` factory of `anchored` for CogVideoX blocks: one processor object for every layer."""
    shared: dict[str, JointAttention] = {}
    return lambda layout, layer, replaces=None: shared.setdefault("processor", anchor_processor(kernel))


# derived from diffusers models/transformers/transformer_wan.py (WanAttnProcessor), version 0.42
class WanAnchorAttnProcessor:
    """Self-attention of a Wan block with Eq. 10 applied to its (video) keys and values.

    Same call signature and result as diffusers' `WanAttnProcessor` for a self-attention layer of a text-to-video
    Wan model (no image tokens): projections, RMS norms of q and k across heads, RoPE on q and k, attention as the
    replaced processor computed it (`attention.wan_attend`: longgen's FlashAttention-3 processor with its kernel,
    else diffusers' attention dispatcher with the layer's backend, so `backbone.attention`'s kernels still apply),
    output projection. With λ = 1 it returns the stock processor's output."""

    def __init__(self, layout: AnchorLayout, layer: int, replaces=None) -> None:
        # the layout and layer are found at run time by the `anchor_blend` op (see the module docstring)
        self.attend = wan_attend(replaces)  # the replaced processor's kernel or attention backend

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q, k, v = wan_self_qkv("WanAnchorAttnProcessor", attn, hidden_states, encoder_hidden_states, attention_mask,
                               rotary_emb)  # [b, N, heads, hd] each
        k, v = anchor_blend(k, v)  # [b, N, heads, hd] each
        out = self.attend(q, k, v)  # [b, N, heads·hd]
        return attn.to_out[1](attn.to_out[0](out))  # output projection, then dropout


# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
class HunyuanAnchorProcessor:
    """A HunyuanVideo 1.5 joint attention layer with Eq. 10 applied to its video keys and values (the first N of
    its [video; text] tokens, after RoPE); the text keys/values stay the window's own. Projections, norms and RoPE
    as diffusers' processor (`hunyuan_qkv`), its masked attention with the replaced processor's backend
    (`hunyuan_attend`), its two output projections. With λ = 1 it returns the stock processor's output."""

    def __init__(self, replaces=None) -> None:
        self.attend = hunyuan_attend(replaces)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden_states.shape[1]  # video tokens
        q, k, v = hunyuan_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)  # [b, N+S, heads, hd]
        k_video, v_video = anchor_blend(k[:, :n], v[:, :n])  # [b, N, heads, hd] each
        k, v = torch.cat([k_video, k[:, n:]], dim=1), torch.cat([v_video, v[:, n:]], dim=1)
        out = self.attend(q, k, v, attention_mask)  # [b, N+S, heads·hd]
        return hunyuan_out(attn, out, encoder_hidden_states.shape[1])  # video [b, N, D], text [b, S, D]


def hunyuan_anchor() -> Callable:
    """The `processor` factory of `anchored` for HunyuanVideo 1.5: one processor object for every joint attention
    layer, on the attention backend of the first processor it replaces (all of them share one)."""
    shared: dict[str, HunyuanAnchorProcessor] = {}

    def make(layout: AnchorLayout, layer: int, replaces=None) -> HunyuanAnchorProcessor:
        if "processor" not in shared:
            shared["processor"] = HunyuanAnchorProcessor(replaces)
        return shared["processor"]

    return make


@contextlib.contextmanager
def anchored(
    transformer,
    strength: float,
    groups: Sequence[int] | None = None,
    processor: Callable | None = None,
    layers: Callable[[str], bool] | None = None,
) -> Iterator[AnchorLayout]:
    """Install anchor attention on the attention layers of a diffusers transformer (or of each of a list of them: Wan
    2.2 A14B's experts) whose processor name `layers` accepts (all when None) for the duration of the block:
    `processor(layout, layer, replaces)` with the layers numbered in call order and `replaces` the processor it stands
    in for. The original processors (the same objects) are restored on exit, also when the block raises."""
    processor = processor or cogvideox_anchor()
    layout = AnchorLayout(strength, groups)
    with processors_installed(transformer, layout, processor, layers):
        yield layout

"""Anchor-based attention (ABAM) for the CogVideoX transformer: GLC-Diffusion (Ma et al. 2025, arXiv 2501.05484),
§3.2 "Anchor-Based Attention Mechanism", Eq. 10.

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
  longgen/distributed.py). Each branch runs in two phases (`AnchorLayout.phases`): its anchor rows first, in calls
  of their own, which store their K/V per layer; then its other rows, each blending with its group's stored anchor.
  The anchor's own K/V are unchanged by the blend (λ·K_a + (1 − λ)·K_a = K_a), so an anchor call is plain attention
  and the stored K/V are exactly those of the anchor at this timestep. The calls are the same whatever the number of
  processes (each process runs the anchor calls itself), so the result is the same bytes on 1 or N GPUs; it does
  not depend on the micro-batch size beyond floating-point rounding.
- The store holds one anchor per group and layer (the conditional branch overwrites the unconditional anchors only
  after every unconditional row has run) and is emptied when the `predict` call ends. Memory: 2 (K and V) × layers ×
  heads × video tokens × head dim per group, e.g. 2·30·30·17 550·64 fp16 values ≈ 4 GB per group on CogVideoX-2B.
- Only the video tokens are blended; the text tokens of the joint attention keep each window's own prompt
  (windows of a multi-event story carry different local prompts, and the method's point is visual consistency).
- With RoPE (CogVideoX-5B) the blend is applied after the rotation; both windows have the same positions, so this
  equals blending before the rotation.

`anchored(transformer, strength, groups)` installs these processors on a diffusers CogVideoX transformer and puts the
original processors back on exit (also on an exception); `AnchorLayout.call(batch)` brackets one `predict`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from longgen.errors import UsageError


class AnchorLayout:
    """Where the anchors are in the rows of one `predict` call, and their keys/values per layer."""

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
        self._rows: list[int] | None = None  # rows of the transformer call in flight
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

    @contextlib.contextmanager
    def running(self, rows: Sequence[int]) -> Iterator[None]:
        """Bracket one transformer call over these stacked rows."""
        self._rows = list(rows)
        try:
            yield
        finally:
            self._rows = None

    def rows(self, layer: int, size: int) -> list[int]:
        """Rows (in the CFG-stacked batch) of the transformer call in flight."""
        if self._batch is None or self._rows is None:
            raise RuntimeError("anchor attention processors ran outside a predict call of the backbone")
        if len(self._rows) != size:
            raise RuntimeError(f"anchor attention: a call of {size} rows where {len(self._rows)} were announced")
        return self._rows

    def blend(
        self, layer: int, rows: Sequence[int], key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10 for the video tokens of one call. key, value: [b, heads, N, head_dim] → same shapes.

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
        k_rows, v_rows = [], []
        for row in rows:
            branch, k_a, v_a = self._store[(layer, self._group_of[row % self._batch])]
            if branch != row // self._batch:
                raise RuntimeError("anchor attention: a row ran before its branch's anchor")
            k_rows.append(k_a)
            v_rows.append(v_a)
        k_anchor = torch.stack(k_rows)  # [b, heads, N, head_dim]
        v_anchor = torch.stack(v_rows)  # [b, heads, N, head_dim]
        lam = self.strength
        return lam * key + (1.0 - lam) * k_anchor, lam * value + (1.0 - lam) * v_anchor


class AnchorAttnProcessor:
    """Joint text-video attention of a CogVideoX block with Eq. 10 applied to the video keys and values.

    Same call signature as diffusers' CogVideoX processors: returns (video hidden states, text hidden states)."""

    def __init__(self, layout: AnchorLayout, layer: int) -> None:
        self.layout = layout
        self.layer = layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.shape[1]
        rows = self.layout.rows(self.layer, hidden_states.shape[0])
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [b, T+N, D]: text tokens first
        b, n, _ = tokens.shape
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, n, heads, x.shape[-1] // heads).transpose(1, 2)  # [b, heads, T+N, hd]

        q = split_heads(attn.to_q(tokens))
        k = split_heads(attn.to_k(tokens))
        v = split_heads(attn.to_v(tokens))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:  # rotate the video tokens only
            q = torch.cat([q[:, :, :n_text], apply_rotary_emb(q[:, :, n_text:], image_rotary_emb)], dim=2)
            if not attn.is_cross_attention:
                k = torch.cat([k[:, :, :n_text], apply_rotary_emb(k[:, :, n_text:], image_rotary_emb)], dim=2)

        k_video, v_video = self.layout.blend(self.layer, rows, k[:, :, n_text:], v[:, :, n_text:])  # [b, heads, N, hd]
        k = torch.cat([k[:, :, :n_text], k_video], dim=2)  # [b, heads, T+N, hd]
        v = torch.cat([v[:, :, :n_text], v_video], dim=2)  # [b, heads, T+N, hd]

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n, b)
            attention_mask = attention_mask.reshape(b, heads, -1, attention_mask.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, n, -1)  # [b, T+N, heads·hd]
        out = attn.to_out[1](attn.to_out[0](out))  # output projection, then dropout
        return out[:, n_text:], out[:, :n_text]  # video [b, N, D], text [b, T, D]


@contextlib.contextmanager
def anchored(transformer, strength: float, groups: Sequence[int] | None = None) -> Iterator[AnchorLayout]:
    """Install anchor attention on every attention layer of a diffusers transformer for the duration of the block;
    the original processors (the same objects) are restored on exit, also when the block raises."""
    layout = AnchorLayout(strength, groups)
    original = dict(transformer.attn_processors)  # name → processor, in call order
    processors = {name: AnchorAttnProcessor(layout, layer) for layer, name in enumerate(original)}
    transformer.set_attn_processor(processors)
    try:
        yield layout
    finally:
        transformer.set_attn_processor(dict(original))  # set_attn_processor consumes the dict it is given

"""DiTCtrl's mask-guided KV-sharing (Cai et al., CVPR 2025, arXiv 2412.18597, §3.2) on the CogVideoX, Wan and
HunyuanVideo 1.5 transformers: the clip of prompt i+1 (the *target*) attends with the keys and values of the clip
of prompt i (the *source*) in chosen layers, optionally restricted by a subject mask read from the text–video
attention map.

What happens in one attention layer l of the chosen span (`layers`, half-open, counted in call order over the
layers that carry the video's self-attention: CogVideoX's joint text+video attention, Wan's `attn1`, HunyuanVideo
1.5's joint attention, whose padded text keys stay masked — each row's own, or its source's, kept with the keys —
and whose padded text queries get 0 as in its stock processor; its subject's text positions differ per row, as
the valid ByT5 tokens come first, so each call's rows get their own, `hunyuan_subject_keys`):
- the source runs plain attention and its keys/values are kept, per guidance branch (the *capture*);
- unmasked (no subject tokens): the target's queries — on CogVideoX its text and video queries — attend to the
  source's keys/values instead of its own: out_t = softmax(Q_t·K_sᵀ/√d)·V_s (the public code's KVSharingAdaLNMixin,
  the MasaCtrl-style mutual self-attention DiTCtrl builds on);
- mask-guided: a binary subject mask is read for each clip from its own text–video attention map (below), M_s for
  the source and M_t for the target. Foreground queries of the target attend to the source's foreground keys and
  background queries to its background keys, text keys always allowed:
      out_t = M_t ⊙ Attn(Q_t, K_s, V_s; keys text ∪ {n: M_s[n]})
            + (1 − M_t) ⊙ Attn(Q_t, K_s, V_s; keys text ∪ {n: ¬M_s[n]})
  with M_t per query token (a text query counts as foreground when it is one of the subject tokens), as the public
  code's KVSharingMaskGuidedAdaLNMixin does. Where one of the two key sets has no video key and there is no text
  key either (Wan's self-attention), that part attends to every source key instead of to none.

The mask (DiTCtrl §3.2: "mask extracted from the cross-attention map"): in every attention layer of a call up to
and including l, the head-averaged attention probability of each video query on the subject text tokens is summed
over those tokens and accumulated; at layer l the mean over the layers so far, [N] per row, is reshaped to frames
[F, N/F], min-max normalised within each frame ((a − min)/(max − min + 1e-6)) and thresholded (≥ τ, public code
τ = 0.3). On CogVideoX the probabilities are those of the joint attention (softmax over text and video keys; the
text columns are the "video-to-text" block of the paper's Fig. 1); on Wan, whose text enters by cross-attention,
those of the cross-attention layers `attn2` (softmax over the text keys), which run after the self-attention of
their block: at Wan's first layer no map exists yet and that layer shares unmasked (as the public code does when
its map is empty). Both branches of a clip use the masks of its conditional row (the unconditional prompt has no
subject tokens), as the public code does.

Calls and processes (the same protocol as cross-shot attention, longgen/backbones/shot_attention.py): the capture's
rows run in calls of their own on every process (`phases` hands them to `micro_batch.run_stacked` as "anchors"), so
every process holds every source's keys/values; the sharing calls are ordinary units of work, except that with a
mask under guidance the conditional target rows run first, replicated, and keep their M_t for the unconditional
rows. Every row's result depends only on itself and the stores, never on which rows share its call: the same bytes
on 1 or N processes and for any micro-batch size. Attention in the installed processors is torch SDPA (not the
FlashAttention-3 kernels of `backbone.attention`); all of it goes through the opaque custom op `longgen::kv_attention`
(and `longgen::kv_cross_attention` for Wan's maps), so compiled blocks keep one graph whatever the mode.

Memory: the store holds, per source window, 2 (K, V) × 2 branches × |layers| × heads × tokens × head dim, e.g. the
paper's 5 layers on CogVideoX-2B: 2·2·5·30·17 776·64 fp16 values ≈ 1.4 GB per source window.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from longgen.backbones.attention import (CallInFlight, as_models, hunyuan_out, hunyuan_qkv, processors_installed,
                                        wan_qkv)
from longgen.errors import UsageError

#: queries per block when the subject attention map is formed (bounds the [heads, block, keys] scores)
QUERY_BLOCK = 1024
#: the min-max normalisation's guard against a flat map (public code: 1e-6)
FLAT = 1e-6


# ---------------------------------------------------------------------------------------------------- pure maths
def subject_share(q: torch.Tensor, k: torch.Tensor, subject: Sequence[int]) -> torch.Tensor:
    """Head-averaged attention probability of every query on the `subject` key positions, summed over them.
    q: [b, heads, n_q, d] (the video queries); k: [b, heads, n_k, d] (every key those queries attend to; the
    subject positions index into it) → [b, n_q] float32. The softmax runs over all n_k keys, in query blocks."""
    idx = torch.as_tensor(list(subject), dtype=torch.long, device=k.device)
    kf = k.float()
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = []
    for start in range(0, q.shape[2], QUERY_BLOCK):
        scores = q[:, :, start : start + QUERY_BLOCK].float() @ kf.transpose(-1, -2) * scale  # [b, heads, c, n_k]
        probs = torch.softmax(scores, dim=-1).index_select(-1, idx)  # [b, heads, c, |subject|]
        out.append(probs.sum(-1).mean(1))  # [b, c]
    return torch.cat(out, dim=1)  # [b, n_q]


def subject_mask(share: torch.Tensor, frames: int, threshold: float) -> torch.Tensor:
    """The binary subject mask of one clip from its layer-averaged subject attention `share` [N] (frame-major video
    tokens): per frame, min-max normalised over its N/F tokens, then ≥ threshold → [N] bool."""
    per_frame = share.float().reshape(frames, -1)  # [F, N/F]
    low = per_frame.amin(dim=1, keepdim=True)
    high = per_frame.amax(dim=1, keepdim=True)
    normalised = (per_frame - low) / (high - low + FLAT)  # [F, N/F] in [0, 1)
    return (normalised >= threshold).reshape(-1)  # [N]


def shared_attention(
    q: torch.Tensor,
    k_src: torch.Tensor,
    v_src: torch.Tensor,
    n_text: int,
    source_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    subject: Sequence[int] = (),
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One layer's KV-shared attention (module docstring). q: [b, heads, T+N, d] the target's queries (T text tokens
    first, T = `n_text`, 0 for Wan's self-attention); k_src, v_src: [b, heads, T+N, d] the source's keys/values;
    source_mask, target_mask: [b, N] bool (None: unmasked sharing); key_mask: [b, T+N] bool, the source's keys that
    exist (HunyuanVideo 1.5: its padded text keys do not; None: all) → [b, heads, T+N, d]."""
    if source_mask is None:
        allowed = None if key_mask is None else key_mask[:, None, None, :]  # [b, 1, 1, T+N]
        return F.scaled_dot_product_attention(q, k_src, v_src, attn_mask=allowed)
    b = source_mask.shape[0]
    text = torch.ones(b, n_text, dtype=torch.bool, device=q.device)  # text keys: always allowed
    if key_mask is not None:
        text = key_mask[:, :n_text]  # the valid ones
    fg_keys = torch.cat([text, source_mask], dim=1)  # [b, T+N]
    bg_keys = torch.cat([text, ~source_mask], dim=1)
    if n_text == 0:  # no text key to fall back on: an empty key set attends to every key
        every = torch.ones_like(fg_keys)
        fg_keys = torch.where(fg_keys.any(dim=1, keepdim=True), fg_keys, every)
        bg_keys = torch.where(bg_keys.any(dim=1, keepdim=True), bg_keys, every)
    out_fg = F.scaled_dot_product_attention(q, k_src, v_src, attn_mask=fg_keys[:, None, None, :])
    out_bg = F.scaled_dot_product_attention(q, k_src, v_src, attn_mask=bg_keys[:, None, None, :])
    text_fg = torch.zeros(n_text, dtype=torch.bool, device=q.device)  # text queries: the subject's are foreground
    if n_text:
        text_fg[list(subject)] = True
    queries_fg = torch.cat([text_fg.expand(b, n_text), target_mask], dim=1)  # [b, T+N]
    return torch.where(queries_fg[:, None, :, None], out_fg, out_bg)  # [b, heads, T+N, d]


# ---------------------------------------------------------------------------------------------------- the layout
class KVLayout(CallInFlight):
    """The sources' keys/values (and masks) per layer, and what the predict calls of the moment do: `off` (plain
    attention), `capture` (keep the sources' keys/values) or `share` (attend with them). Speaks
    `micro_batch.run_stacked`'s layout protocol (`phases`, `running`)."""

    #: the KVLayout whose transformer call is in flight (at most one; a list so that nesting is detected)
    ACTIVE: list["KVLayout"] = []
    what = "DiTCtrl KV-sharing"

    def __init__(self, layers: Sequence[int], subject: Sequence[int] = (), threshold: float = 0.3) -> None:
        start, end = (int(v) for v in layers)
        self.layers = range(start, end)
        self.subject = tuple(int(s) for s in subject)
        self.threshold = float(threshold)
        self.mode = "off"
        # keyed by (model, layer, …): Wan 2.2 A14B's experts keep theirs apart (CallInFlight.model)
        # (model, layer, branch, window) → K, V [heads, T+N, d] and which of those keys exist ([T+N] bool, None: all)
        self._kv: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._source_mask: dict[tuple[int, ...], torch.Tensor | None] = {}  # (model, layer, window) → [N] bool
        self._target_mask: dict[tuple[int, ...], torch.Tensor | None] = {}  # (model, layer, window) → [N] bool
        self._sources: list[int] = []  # share: window b of the predict attends with captured window sources[b]
        self._batch: int | None = None  # windows per branch of the open predict
        self._frames = 0  # latent frames per window of the open predict
        self._total = 0  # CFG-stacked rows of the open predict
        self._share: torch.Tensor | None = None  # [rows, N] subject attention summed over the call's layers so far
        self._share_layers = 0
        # per row of the call in flight, the subject's positions among its text keys, where they differ per row
        # (HunyuanVideo 1.5: set by `hunyuan_subject_keys`); None: `subject` itself for every row
        self._subject_keys: list[tuple[int, ...]] | None = None

    @property
    def masked(self) -> bool:
        return bool(self.subject)

    # ------------------------------------------------------------------ modes
    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Predict calls inside run plain attention and keep window b's keys/values (and mask) as source b."""
        self._kv.clear()
        self._source_mask.clear()
        self.mode = "capture"
        try:
            yield
            if not self._kv:
                raise RuntimeError("KV-sharing: the capture ran no layer of the chosen span")
        finally:
            self.mode = "off"

    @contextlib.contextmanager
    def sharing(self, sources: Sequence[int]) -> Iterator[None]:
        """Predict calls inside attend, in the chosen layers, with the keys/values of captured window sources[b]."""
        if not self._kv:
            raise RuntimeError("KV-sharing: sharing asked before any source was captured")
        self._sources = [int(s) for s in sources]
        self._target_mask.clear()
        self.mode = "share"
        try:
            yield
        finally:
            self.mode = "off"
            self._target_mask.clear()

    @contextlib.contextmanager
    def call(self, batch: int, frames: int) -> Iterator[None]:
        """Bracket one `predict` of `batch` windows of `frames` latent frames (per guidance branch)."""
        if self.mode == "share" and len(self._sources) != batch:
            raise ValueError(f"KV-sharing: {len(self._sources)} sources for a predict of {batch} windows")
        self._batch, self._frames = batch, frames
        try:
            yield
        finally:
            self._batch = None

    # ------------------------------------------------------------------ run_stacked's protocol
    def phases(self, total: int) -> list[tuple[list[int], list[int]]]:
        """Capture: every row in calls of its own on every process. Share: ordinary units; with a mask under guidance
        the conditional rows first, replicated, so every process holds their target masks."""
        if self._batch is None:
            raise RuntimeError("KV-sharing phases asked outside a predict call of the backbone")
        self._total = total
        rows = list(range(total))
        if self.mode == "capture":
            return [(rows, [])]
        if self.mode == "share" and self.masked and total == 2 * self._batch:
            return [(rows[self._batch :], []), ([], rows[: self._batch])]
        return [([], rows)]

    @contextlib.contextmanager
    def running(self, rows: Sequence[int]) -> Iterator[None]:
        self._share, self._share_layers, self._subject_keys = None, 0, None
        with super().running(rows):
            yield

    def rows(self, size: int) -> list[int]:
        if self._rows is None or self._batch is None:
            raise RuntimeError("KV-sharing processors ran outside a predict call of the backbone")
        if len(self._rows) != size:
            raise RuntimeError(f"KV-sharing: a call of {size} rows where {len(self._rows)} were announced")
        return self._rows

    def branch(self, row: int) -> int:
        """0 for an unconditional row, 1 for a conditional one (rows are [unconditional…, conditional…])."""
        return row // self._batch if self._total == 2 * self._batch else 1

    # ------------------------------------------------------------------ the subject map
    def add_map(self, q_video: torch.Tensor, k: torch.Tensor, n_text: int, key_mask: torch.Tensor | None = None
                ) -> None:
        """Accumulate this layer's subject attention of the call's rows: q_video [b, heads, N, d], k [b, heads, n_k, d]
        whose first `n_text` keys are the text tokens (the subject indices point into them); key_mask [b, n_k] bool,
        the keys that exist (None: all; HunyuanVideo 1.5's valid text keys come first, so dropping the others moves
        no subject position). Only while a mask is wanted and a capture or share is open."""
        if not self.masked or self.mode == "off":
            return
        if self._subject_keys is not None:  # each row its own positions (checked where they were set)
            share = torch.cat([subject_share(q_video[i : i + 1],
                                             k[i : i + 1] if key_mask is None else k[i : i + 1, :, key_mask[i]],
                                             subject)
                               for i, subject in enumerate(self._subject_keys)])  # [b, N]
        elif max(self.subject) >= n_text:
            raise UsageError(f"sampler.subject_tokens={list(self.subject)} points past the {n_text} text tokens "
                             f"of this model: use token positions below {n_text}")
        else:
            share = subject_share(q_video, k, self.subject)  # [b, N]
        self._share = share if self._share is None else self._share + share
        self._share_layers += 1

    def _own_masks(self) -> list[torch.Tensor | None]:
        """Each row's subject mask from its map so far (None while no map exists: Wan's first layer)."""
        if self._share is None:
            return [None] * len(self._rows)
        mean = self._share / self._share_layers  # [b, N]
        return [subject_mask(mean[i], self._frames, self.threshold) for i in range(mean.shape[0])]

    # ------------------------------------------------------------------ one layer
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int,
               text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention of the next chosen-kind layer of the call in flight. q, k, v: [b, heads, T+N, d] (text first,
        T = n_text); text_mask: [b, T] bool, the text keys that exist (None: all) → [b, heads, T+N, d]."""
        layer = self.next_layer()
        rows = self.rows(q.shape[0])
        # the keys that exist, [b, T+N] bool: the valid text keys and every video key (None: all)
        keys = None if text_mask is None else F.pad(text_mask.bool(), (0, q.shape[2] - n_text), value=True)
        if n_text and self.mode != "off":
            self.add_map(q[:, :, n_text:], k, n_text, keys)  # CogVideoX: the joint attention's video-to-text block
        if self.mode == "off" or layer not in self.layers:
            return shared_attention(q, k, v, n_text, key_mask=keys)  # plain: the row's own keys
        if self.mode == "capture":
            masks = self._own_masks() if self.masked else [None] * len(rows)
            for i, row in enumerate(rows):
                window = row % self._batch
                # clone: keep only this row alive, not the whole call's tensor
                self._kv[(self.model, layer, self.branch(row), window)] = (k[i].clone(), v[i].clone(),
                                                                            None if keys is None else keys[i])
                if self.branch(row) == 1:
                    self._source_mask[(self.model, layer, window)] = masks[i]
            return shared_attention(q, k, v, n_text, key_mask=keys)
        if self.mode != "share":
            raise RuntimeError(f"KV-sharing: attention asked in mode {self.mode!r}")
        if (self.model, layer, 1, self._sources[0]) not in self._kv:
            raise RuntimeError(f"KV-sharing: transformer {self.model} shares keys/values that another transformer "
                               f"captured (Wan 2.2 A14B: capture at the sharing calls' timesteps)")
        kept = [self._kv[(self.model, layer, self.branch(row), self._sources[row % self._batch])] for row in rows]
        k_src = torch.stack([kk for kk, _, _ in kept]).to(k.dtype)  # [b, heads, T+N, d]
        v_src = torch.stack([vv for _, vv, _ in kept]).to(v.dtype)
        src_keys = None if keys is None else torch.stack([kk for _, _, kk in kept])  # [b, T+N] the source's
        if not self.masked:
            return shared_attention(q, k_src, v_src, n_text, key_mask=src_keys)
        own = self._own_masks()
        source, target = [], []
        for i, row in enumerate(rows):
            window = row % self._batch
            if self.branch(row) == 1:
                self._target_mask[(self.model, layer, window)] = own[i]
            source.append(self._source_mask[(self.model, layer, self._sources[window])])
            target.append(self._target_mask[(self.model, layer, window)])
        if any(m is None for m in source + target):  # no map yet (Wan's first layer): unmasked sharing
            return shared_attention(q, k_src, v_src, n_text, key_mask=src_keys)
        return self._masked_sharing(q, k_src, v_src, n_text, torch.stack(source), torch.stack(target), src_keys)

    def _masked_sharing(self, q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, n_text: int,
                        source: torch.Tensor, target: torch.Tensor, src_keys: torch.Tensor | None) -> torch.Tensor:
        """`shared_attention` under the masks source, target [b, N] with the subject's text positions: the same
        for every row, or (`_subject_keys`) each row's own, one row at a time → [b, heads, T+N, d]."""
        if self._subject_keys is None:
            return shared_attention(q, k_src, v_src, n_text, source, target, self.subject, src_keys)
        one = lambda t, i: None if t is None else t[i : i + 1]  # noqa: E731  row i, kept 4-D / 2-D
        return torch.cat([shared_attention(q[i : i + 1], k_src[i : i + 1], v_src[i : i + 1], n_text,
                                           source[i : i + 1], target[i : i + 1], subject, one(src_keys, i))
                          for i, subject in enumerate(self._subject_keys)])


@torch.library.custom_op("longgen::kv_attention", mutates_args=())
def kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int,
                 text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`KVLayout.attend` for the next self-attention layer of the transformer call in flight. [b, heads, T+N, d]."""
    return KVLayout.in_flight().attend(q, k, v, n_text, text_mask).contiguous()


@kv_attention.register_fake
def _kv_attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_text: int,
                        text_mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("longgen::kv_cross_attention", mutates_args=())
def kv_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Wan's cross-attention (video queries, text keys/values) [b, heads, n, d], adding its subject map to the call
    in flight (`KVLayout.add_map`)."""
    KVLayout.in_flight().add_map(q, k, k.shape[2])
    return F.scaled_dot_product_attention(q, k, v).contiguous()


@kv_cross_attention.register_fake
def _kv_cross_attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------------- CogVideoX
# derived from diffusers models/attention_processor.py (CogVideoXAttnProcessor2_0), version 0.42
class CogVideoXKVProcessor:
    """A CogVideoX joint text-video attention layer whose attention goes through `kv_attention` (one object serves
    every layer; the op finds its layer by counting)."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.shape[1]
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [b, T+N, D]: text first
        b, n, _ = tokens.shape
        split = lambda x: x.reshape(b, n, attn.heads, -1).transpose(1, 2)  # noqa: E731  [b, heads, T+N, hd]
        q, k, v = split(attn.to_q(tokens)), split(attn.to_k(tokens)), split(attn.to_v(tokens))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:  # RoPE on the video tokens only (CogVideoX-5B)
            q = torch.cat([q[:, :, :n_text], apply_rotary_emb(q[:, :, n_text:], image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :n_text], apply_rotary_emb(k[:, :, n_text:], image_rotary_emb)], dim=2)
        out = kv_attention(q, k, v, n_text)  # [b, heads, T+N, hd]
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1)))  # [b, T+N, D]
        return out[:, n_text:], out[:, :n_text]  # video [b, N, D], text [b, T, D]


def cogvideox_kv() -> dict:
    """`kv_shared` keyword arguments for CogVideoX: every attention layer is joint text+video attention."""
    processor = CogVideoXKVProcessor()
    return {"processor": lambda layout, layer, replaces: processor}


# ---------------------------------------------------------------------------------------------------- Wan
# derived from diffusers models/transformers/transformer_wan.py (WanAttnProcessor), version 0.42
class WanKVProcessor:
    """A Wan attention layer of a text-to-video model through the KV-sharing ops: self-attention (`attn1`: video
    tokens, RoPE) through `kv_attention`, or cross-attention (`attn2`: text keys/values) through
    `kv_cross_attention`. Projections and q/k RMS norms as diffusers' WanAttnProcessor; one object per kind."""

    def __init__(self, cross: bool) -> None:
        self.cross = cross

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if attn.add_k_proj is not None or (encoder_hidden_states is not None) != self.cross:
            raise RuntimeError("WanKVProcessor is for the attention layers of a text-to-video Wan model")
        context = encoder_hidden_states if self.cross else hidden_states
        q, k, v = wan_qkv(attn, hidden_states, context, rotary_emb)  # [b, n, heads, hd] each
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, n, hd]
        out = kv_cross_attention(q, k, v) if self.cross else kv_attention(q, k, v, 0)  # [b, heads, N, hd]
        out = out.transpose(1, 2).flatten(2, 3).type_as(hidden_states)  # [b, N, D]
        return attn.to_out[1](attn.to_out[0](out))


def wan_kv() -> dict:
    """`kv_shared` keyword arguments for Wan: self-attention layers share; cross-attention layers give the map."""
    self_attention, cross_attention = WanKVProcessor(cross=False), WanKVProcessor(cross=True)
    return {"processor": lambda layout, layer, replaces: self_attention,
            "layers": lambda name: name.endswith(".attn1.processor"),
            "map_processor": lambda layout, layer, replaces: cross_attention,
            "map_layers": lambda name: name.endswith(".attn2.processor")}


# ---------------------------------------------------------------------------------------------------- HunyuanVideo 1.5
# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
class HunyuanKVProcessor:
    """A HunyuanVideo 1.5 joint attention layer (video tokens, then S text tokens under the padding mask) whose
    attention goes through `kv_attention`: q, k, v as diffusers' processor forms them (`hunyuan_qkv`), handed to
    the op text first with the text mask, so a query sees only the valid text keys of the row whose keys it
    attends with (its own, or the source's); a padded text query's output is 0, as the stock processor's masked
    SDPA gives it. One object serves every layer."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        n_text = encoder_hidden_states.shape[1]
        q, k, v = hunyuan_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)  # [b, N+S, heads, hd]
        # [b, N+S, heads, hd] → [b, heads, S+N, hd]: the text tokens first, as the op takes them
        text_first = lambda x: torch.cat([x[:, -n_text:], x[:, :-n_text]], dim=1).transpose(1, 2)  # noqa: E731
        text_mask = attention_mask.bool()  # [b, S]
        out = kv_attention(text_first(q), text_first(k), text_first(v), n_text, text_mask)  # [b, heads, S+N, hd]
        valid = F.pad(text_mask, (0, out.shape[2] - n_text), value=True)  # [b, S+N] the queries that see a key
        out = (out * valid[:, None, :, None]).transpose(1, 2).flatten(2, 3).type_as(q)  # [b, S+N, D]
        return hunyuan_out(attn, torch.cat([out[:, n_text:], out[:, :n_text]], dim=1), n_text)  # video, text


def hunyuan_subject_keys(subject: Sequence[int], qwen_mask: torch.Tensor, byt5_mask: torch.Tensor,
                         n_image: int) -> list[tuple[int, ...]]:
    """Per row, where the subject's positions among the Qwen tokens (`sampler.subject_tokens`; qwen_mask [b, S1])
    sit among that row's text keys as HunyuanVideo 1.5 packs them (valid image tokens, n_image of them; the valid
    ByT5 tokens, byt5_mask [b, S2]; the valid Qwen tokens in order; then the padding): n_image + the row's valid
    ByT5 count + the position's rank among the row's valid Qwen tokens. A position that is no valid token of
    the row is left out."""
    out = []
    for qwen, byt5 in zip(qwen_mask.bool(), byt5_mask.bool()):  # [S1], [S2]
        rank = torch.cumsum(qwen.long(), 0) - 1  # [S1]: each valid Qwen token's place among the valid ones
        start = n_image + int(byt5.sum())
        out.append(tuple(start + int(rank[j]) for j in subject if j < qwen.shape[0] and bool(qwen[j])))
    return out


def hunyuan_subject_hook(layout: KVLayout) -> Callable:
    """A forward pre-hook for the HunyuanVideo 1.5 transformer that hands the layout, per row of the call, the
    subject's text key positions (`hunyuan_subject_keys`) from the call's own masks; a conditional row whose
    prompt has no Qwen token at one of the positions is one line (an unconditional row's map is never used)."""

    def hook(module, args, kwargs):
        if layout.mode == "off":
            return
        vision = kwargs["image_embeds"]  # [b, 729, Dimg]; all zero: text-to-video, its tokens masked (the model's test)
        n_image = 0 if bool(torch.all(vision == 0)) else vision.shape[1]
        qwen = kwargs["encoder_attention_mask"]  # [b, S1]
        keys = hunyuan_subject_keys(layout.subject, qwen, kwargs["encoder_attention_mask_2"], n_image)
        for i, row in enumerate(layout.rows(len(keys))):
            if layout.branch(row) == 1 and len(keys[i]) < len(layout.subject):
                valid = int(qwen[i].bool().sum())
                raise UsageError(f"sampler.subject_tokens={list(layout.subject)} points past the {valid} text tokens "
                                 f"of a prompt (HunyuanVideo 1.5's Qwen tokens): use token positions below {valid}")
        layout._subject_keys = keys

    return hook


def hunyuan_kv() -> dict:
    """`kv_shared` keyword arguments for HunyuanVideo 1.5: its double-stream blocks' joint attention layers share
    (not the text refiner's self-attention); with a subject, each call's rows get their own text key positions."""
    processor = HunyuanKVProcessor()
    return {"processor": lambda layout, layer, replaces: processor,
            "layers": lambda name: name.startswith("transformer_blocks."),
            "subject_hook": hunyuan_subject_hook}


# ---------------------------------------------------------------------------------------------------- installing
def model_span(layers: Sequence[int | None], count: int) -> tuple[int, int]:
    """The span [a, b) of `count` attention layers that `sampler.kv_layers` names: negative numbers count from the
    end and b None means the end, as in a Python slice (a start before the first layer is the first layer); a
    span that is empty or reaches past the model is one line."""
    start, end = layers
    a = max(0, int(start) + count) if int(start) < 0 else int(start)
    b = count if end is None else (int(end) + count if int(end) < 0 else int(end))
    if not 0 <= a < b <= count:
        raise UsageError(f"sampler.kv_layers=[{start}, {'null' if end is None else end}] must be a non-empty span "
                         f"within the {count} attention layers of this model: use [a, b] with 0 <= a < b <= {count}, "
                         f"or count from the end, e.g. [-5, null] (paper: [25, 30] of CogVideoX-2B's 30)")
    return a, b


@contextlib.contextmanager
def kv_shared(
    transformers,
    layers: Sequence[int],
    subject: Sequence[int],
    threshold: float,
    processor: Callable,
    layers_filter: Callable[[str], bool] | None = None,
    map_processor: Callable | None = None,
    map_layers: Callable[[str], bool] | None = None,
    subject_hook: Callable[[KVLayout], Callable] | None = None,
) -> Iterator[KVLayout]:
    """Install the KV-sharing processors on the self-attention layers of a diffusers transformer, or of each of
    several (Wan 2.2 A14B's two experts), (those whose processor name `layers_filter` accepts; all when None) and,
    where a mask is asked and the family reads it from separate cross-attention layers, `map_processor` on those
    (`map_layers`), for the duration of the block; the original processors are restored on exit. `layers` is the
    half-open span [start, end) of self-attention layers that share; it must lie within each model's (the models
    have as many layers, so the span names the same layers in each). Where a mask is asked, `subject_hook(layout)`
    (HunyuanVideo 1.5: the subject's text positions differ per row) runs as each model's forward pre-hook."""
    counts = {sum(1 for name in model.attn_processors if layers_filter is None or layers_filter(name))
              for model in as_models(transformers)}
    if len(counts) != 1:
        raise UsageError(f"KV-sharing: the model's transformers have {sorted(counts)} attention layers, so "
                         f"sampler.kv_layers cannot name the same layers in each: use another sampler than ditctrl")
    start, end = model_span(layers, counts.pop())
    layout = KVLayout((start, end), subject, threshold)
    with contextlib.ExitStack() as stack:
        stack.enter_context(processors_installed(transformers, layout, processor, layers_filter))
        if layout.masked and map_processor is not None:
            stack.enter_context(processors_installed(transformers, layout, map_processor, map_layers))
        if layout.masked and subject_hook is not None:
            for model in as_models(transformers):
                stack.callback(model.register_forward_pre_hook(subject_hook(layout), with_kwargs=True).remove)
        yield layout

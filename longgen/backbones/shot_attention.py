"""Cross-shot attention for multi-shot scenes (longgen/run/shots.py), on the CogVideoX, Wan and HunyuanVideo 1.5
transformers.

What it does. LCT (Guo et al. 2025, §3.2.2) lets every shot of a scene attend to every other shot's tokens (full
attention over the scene) and learns, by fine-tuning, to use that for consistent characters, places, light and
colour. Without training, the closest public mechanisms keep the model's own attention and only widen what it sees:
- StoryDiffusion's consistent self-attention (Zhou et al. 2024, §3.1): in each self-attention layer, the keys and
  values of an image are concatenated with tokens sampled from the other images of the batch, at a sampling rate;
  the queries stay the image's own;
- GLC-Diffusion's anchor-based attention (Ma et al. 2025, Eq. 10): every clip's keys/values are tied to those of one
  anchor clip at the same denoising step.
Here, per denoising step, one *reference* window (the first window of the reference shot's take) runs through the
model once at that step's timestep (the *capture*), and each layer keeps its video keys and values, per guidance
branch. During the step, every attention layer of every other take appends a share r (`shots.cross_attention`, the
sampling rate) of those reference tokens to its own video keys and values: its queries — video and, on CogVideoX's
joint attention, text — attend to its own tokens and to the reference's. r = 0 installs nothing (shots are
independent, bit for bit); r = 1 appends every reference token, i.e. full attention from each shot to the pair
(own shot, reference window), LCT's scene attention restricted to the shots that matter for consistency.

Details:
- Tokens are taken evenly spaced over the reference's video tokens (frame-major order, so every frame and every
  region contributes): n = ⌈r·N⌉ tokens at positions ⌊j·N/n⌋ — deterministic (no random generator, the same on
  every process and after a resume) where StoryDiffusion samples at random.
- Positional encoding: RoPE (CogVideoX-5B, Wan) is applied to the reference keys inside the capture, at the
  reference window's own positions, before they are kept; the receiving shot's tokens keep theirs. CogVideoX-2B adds
  its positional embedding to the tokens before the blocks, so its keys carry it already. (LCT gives every shot
  distinct absolute positions with its interleaved RoPE; a model not trained for that would see positions it never
  saw, so the shared tokens keep the positions they had in their own window.)
- Guidance branches: unconditional rows see the reference's unconditional keys/values and conditional rows its
  conditional ones (mixing them would leak the reference prompt into the unconditional estimate).
- Only the video keys/values are shared; the text tokens of CogVideoX's joint attention stay each shot's own.
  Wan: the self-attention layers (`attn1`); its cross-attention layers keep their text keys/values. HunyuanVideo
  1.5: the joint attention layers of its double-stream blocks; the appended tokens join its video keys (always
  valid under its text padding mask).
- Calls and processes: the capture's rows run in calls of their own on every process (`phases` hands them to
  `micro_batch.run_stacked` as "anchors", the same protocol as ABAM), so every process holds the reference
  keys/values, and the sharing calls are ordinary units of work: the result is the same bytes on 1 or N processes.
  While no capture or sharing is open (the reference take's own step), the installed processors call the
  processors they replaced, so the reference take is computed exactly as alone.
- Compilation: one processor object serves every layer whose replaced processor is the same (or an equal
  stateless one), and the keys/values go through the opaque custom op `longgen::shot_kv`, which finds its layer
  by counting its calls inside the transformer call; so compiled blocks keep one graph per mode and call shape (a
  processor per layer, closing over its index, made Dynamo recompile per block up to its limit and run the rest
  eagerly).
- Wan 2.2 A14B's two experts: the kept tokens are keyed by the transformer too (`CallInFlight.model`), so each
  expert attends to the reference tokens its own layers produced; a capture whose per-frame timesteps straddle the
  boundary runs both experts and keeps both.
- Memory: the kept tokens, 2 (K, V) × 2 branches × layers × heads × r·N × head dim, e.g. r = 0.5 on CogVideoX-2B:
  2·2·30·30·8775·64 fp16 values ≈ 4 GB.

`shared_attention(transformer, share, guided, processor, layers)` installs the processors for the duration of a
block and yields the `ShotLayout`; `DiffusersBackbone.shot_attention` (the `Denoiser` seam) wraps it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch

from longgen.backbones.attention import (CallInFlight, JointAttention, hunyuan_attend, hunyuan_out, hunyuan_qkv,
                                        processors_installed, wan_attend, wan_self_qkv)
from longgen.errors import UsageError

MODES = ("off", "capture", "share")


class ShotLayout(CallInFlight):
    """The reference keys/values per (layer, guidance branch), and what the predict calls of the moment do:
    `off` (plain attention through the replaced processors), `capture` (keep the reference's keys/values) or
    `share` (append them). Speaks `micro_batch.run_stacked`'s layout protocol (`phases`, `running`)."""

    #: the ShotLayout whose transformer call is in flight (at most one; a list so that nesting is detected)
    ACTIVE: list["ShotLayout"] = []
    what = "cross-shot attention"

    def __init__(self, share: float, guided: bool) -> None:
        if not 0.0 < float(share) <= 1.0:
            raise UsageError(f"cross-shot attention share {share} must be in (0, 1] (0 turns it off)")
        self.share = float(share)
        self.guided = bool(guided)
        self.mode = "off"
        self._store: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._total: int | None = None  # CFG-stacked rows of the predict in flight
        self._index: dict[tuple[int, str], torch.Tensor] = {}  # (N, device) → kept token positions

    # ------------------------------------------------------------------ modes
    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Predict calls inside keep their keys/values as the reference (replacing the previous step's)."""
        self._store.clear()
        self.mode = "capture"
        try:
            yield
            if not self._store:
                raise RuntimeError("cross-shot attention: the capture ran no attention layer")
        finally:
            self.mode = "off"

    @contextlib.contextmanager
    def sharing(self) -> Iterator[None]:
        """Predict calls inside attend to the captured reference tokens as well."""
        if not self._store:
            raise RuntimeError("cross-shot attention: sharing asked before any reference was captured")
        self.mode = "share"
        try:
            yield
        finally:
            self.mode = "off"

    # ------------------------------------------------------------------ run_stacked's protocol
    def phases(self, total: int) -> list[tuple[list[int], list[int]]]:
        """Capture: every row runs in calls of their own on every process (so each process keeps the reference);
        otherwise all rows are ordinary units."""
        self._total = total
        if self.mode == "capture":
            return [(list(range(total)), [])]
        return [([], list(range(total)))]

    def rows(self, size: int) -> list[int]:
        if self._rows is None or self._total is None:
            raise RuntimeError("cross-shot attention processors ran outside a predict call of the backbone")
        if len(self._rows) != size:
            raise RuntimeError(f"cross-shot attention: a call of {size} rows where {len(self._rows)} were announced")
        return self._rows

    def branch(self, row: int) -> int:
        """0 for an unconditional row, 1 for a conditional one (rows are [unconditional…, conditional…])."""
        return row // (self._total // 2) if self.guided else 1

    # ------------------------------------------------------------------ the keys and values
    def kept_count(self, tokens: int) -> int:
        """n = ⌈r·N⌉ reference tokens kept of N."""
        return max(1, math.ceil(self.share * tokens))

    def kept_positions(self, tokens: int, device: torch.device) -> torch.Tensor:
        """⌈r·N⌉ evenly spaced token positions of N: [n] int64."""
        key = (tokens, str(device))
        if key not in self._index:
            n = self.kept_count(tokens)
            self._index[key] = (torch.arange(n, device=device) * tokens) // n  # [n]
        return self._index[key]

    def apply_next(self, key: torch.Tensor, value: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply` for the next layer of the transformer call in flight (layers are called in order)."""
        return self.apply(self.next_layer(), key.shape[0], key, value, dim)

    def apply(self, layer: int, size: int, key: torch.Tensor, value: torch.Tensor, dim: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The video keys/values of one call, rows first with tokens on `dim` (CogVideoX [b, heads, N, hd], dim 2;
        Wan [b, N, heads, hd], dim 1). Capture: keep each branch's kept tokens, return them unchanged. Share:
        return them with the reference tokens of each row's branch appended on `dim`."""
        rows = self.rows(size)
        if self.mode == "capture":
            index = self.kept_positions(key.shape[dim], key.device)
            for i, row in enumerate(rows):
                # clone: keep only these tokens alive, not the whole call's tensor
                self._store[(self.model, layer, self.branch(row))] = (
                    key[i].index_select(dim - 1, index).clone(), value[i].index_select(dim - 1, index).clone())
            return key, value
        if self.mode != "share":
            raise RuntimeError(f"cross-shot attention: keys/values rewritten in mode {self.mode!r}")
        if (self.model, layer, 1) not in self._store:
            raise RuntimeError(f"cross-shot attention: transformer {self.model} shares a reference that another "
                               f"transformer captured (Wan 2.2 A14B: capture at the sharing calls' timesteps)")
        ref = [self._store[(self.model, layer, self.branch(row))] for row in rows]
        k_ref = torch.stack([k for k, _ in ref]).to(key.dtype)  # [b, …, n, …]
        v_ref = torch.stack([v for _, v in ref]).to(value.dtype)
        return torch.cat([key, k_ref], dim=dim), torch.cat([value, v_ref], dim=dim)  # tokens N + n on `dim`


@torch.library.custom_op("longgen::shot_kv", mutates_args=())
def shot_kv(key: torch.Tensor, value: torch.Tensor, dim: int, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The video keys/values of the next layer of the transformer call in flight (`ShotLayout.apply_next`), rows
    first with tokens on `dim`. `kept` = 0 while capturing (copies of the inputs, laid out as them) and n while
    sharing (new contiguous tensors with N + n tokens on `dim`): the shape the caller promises the compiler."""
    k, v = ShotLayout.in_flight().apply_next(key, value, dim)
    if kept == 0:
        if k is not key:
            raise RuntimeError("cross-shot attention: keys/values were extended while capturing")
        k_out, v_out = torch.empty_like(key), torch.empty_like(value)
        return k_out.copy_(key), v_out.copy_(value)
    if k.shape[dim] != key.shape[dim] + kept:
        raise RuntimeError(f"cross-shot attention: {k.shape[dim] - key.shape[dim]} reference tokens where {kept} "
                           f"were announced")
    return k.contiguous(), v.contiguous()


@shot_kv.register_fake
def _shot_kv_shapes(key: torch.Tensor, value: torch.Tensor, dim: int, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kept == 0:
        return torch.empty_like(key), torch.empty_like(value)
    grown = lambda t: t.new_empty((*t.shape[:dim], t.shape[dim] + kept, *t.shape[dim + 1 :]))  # noqa: E731
    return grown(key), grown(value)


def layout_kv(layout: ShotLayout, key: torch.Tensor, value: torch.Tensor, dim: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Capture or share one layer's video keys/values through the op (the mode is read here, in Python, so a
    compiled block specialises on it and on the share r that fixes n)."""
    kept = layout.kept_count(key.shape[dim]) if layout.mode == "share" else 0
    return shot_kv(key, value, dim, kept)


def equivalent(a, b) -> bool:
    """Whether two attention processors compute the same thing: the same object, or the same class with equal
    attributes (diffusers gives every layer its own stateless processor instance)."""
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(vars(a) == vars(b))
    except (TypeError, RuntimeError):  # attributes that cannot be compared (tensors)
        return False


def shared_factory(make: Callable) -> Callable:
    """A `processor(layout, layer, replaces)` factory that builds one processor per distinct replaced processor
    (normally one for the whole transformer) with `make(layout, replaces)`."""
    built: list[tuple[object, object]] = []

    def factory(layout: ShotLayout, layer: int, replaces):
        for old, proc in built:
            if equivalent(old, replaces) and proc.layout is layout:
                return proc
        proc = make(layout, replaces)
        built.append((replaces, proc))
        return proc

    return factory


# ---------------------------------------------------------------------------------------------------- CogVideoX
# derived from diffusers models/attention_processor.py (CogVideoXAttnProcessor2_0), version 0.42
class CogVideoXShotProcessor:
    """A CogVideoX joint text-video attention layer with the reference shot's video keys/values appended
    (longgen's JointAttention on the backbone's kernel); while the layout is `off` it calls the processor it
    replaced, so nothing changes. The layer is found at run time by the `shot_kv` op."""

    def __init__(self, layout: ShotLayout, layer: int, replaces, kernel: str = "sdpa") -> None:
        self.layout, self.replaced = layout, replaces
        self.joint = JointAttention(kernel, video_kv=self._video_kv)

    def _video_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return layout_kv(self.layout, key, value, dim=2)  # [b, heads, N(+n), hd]

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout.mode == "off":
            return self.replaced(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask,
                                 image_rotary_emb=image_rotary_emb)
        return self.joint(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def cogvideox_shot(kernel: str = "sdpa") -> Callable:
    """The `processor` factory of `shared_attention` for CogVideoX blocks, on the backbone's attention kernel: one
    processor object for all layers whose processors are alike."""
    return shared_factory(lambda layout, replaces: CogVideoXShotProcessor(layout, 0, replaces, kernel))


# ---------------------------------------------------------------------------------------------------- Wan
# derived from diffusers models/transformers/transformer_wan.py (WanAttnProcessor), version 0.42
class WanShotAttnProcessor:
    """A Wan self-attention layer (video tokens only) with the reference shot's keys/values appended after the
    rotary embedding; while the layout is `off` it calls the processor it replaced. The projections, the RMS norms
    of q and k across heads, the interleaved-pair RoPE and the output projection are those of diffusers'
    WanAttnProcessor for a text-to-video model; attention is computed as the replaced processor computed it
    (`attention.wan_attend`: its FlashAttention-3 kernel, else diffusers' dispatcher with its backend). The layer is
    found at run time by the `shot_kv` op."""

    def __init__(self, layout: ShotLayout, layer: int, replaces) -> None:
        self.layout, self.replaced = layout, replaces
        self.attend = wan_attend(replaces)  # the replaced processor's kernel or attention backend

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.layout.mode == "off":
            return self.replaced(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        q, k, v = wan_self_qkv("WanShotAttnProcessor", attn, hidden_states, encoder_hidden_states, attention_mask,
                               rotary_emb)  # [b, N, heads, hd] each
        k, v = layout_kv(self.layout, k, v, dim=1)  # [b, N(+n), heads, hd]
        out = self.attend(q, k, v)  # [b, N, D]
        return attn.to_out[1](attn.to_out[0](out))


def wan_shot() -> Callable:
    """The `processor` factory of `shared_attention` for Wan self-attention layers: one object for alike layers."""
    return shared_factory(lambda layout, replaces: WanShotAttnProcessor(layout, 0, replaces))


# ---------------------------------------------------------------------------------------------------- HunyuanVideo 1.5
# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
class HunyuanShotProcessor:
    """A HunyuanVideo 1.5 joint attention layer (video tokens, then text tokens under the padding mask) with the
    reference shot's video keys/values, after RoPE, appended to its own video keys/values (always valid keys, the
    text keys stay the shot's own); while the layout is `off` it calls the processor it replaced. Projections,
    norms, RoPE (`hunyuan_qkv`), the masked attention with the replaced processor's backend (`hunyuan_attend`) and
    the two output projections are diffusers' processor's. The layer is found at run time by the `shot_kv` op."""

    def __init__(self, layout: ShotLayout, layer: int, replaces) -> None:
        self.layout, self.replaced = layout, replaces
        self.attend = hunyuan_attend(replaces)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout.mode == "off":
            return self.replaced(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n = hidden_states.shape[1]  # video tokens
        q, k, v = hunyuan_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)  # [b, N+S, heads, hd]
        k_video, v_video = layout_kv(self.layout, k[:, :n], v[:, :n], dim=1)  # [b, N(+n), heads, hd]
        k, v = torch.cat([k_video, k[:, n:]], dim=1), torch.cat([v_video, v[:, n:]], dim=1)
        out = self.attend(q, k, v, attention_mask)  # [b, N+S, heads·hd]
        return hunyuan_out(attn, out, encoder_hidden_states.shape[1])  # video [b, N, D], text [b, S, D]


def hunyuan_shot() -> Callable:
    """The `processor` factory of `shared_attention` for HunyuanVideo 1.5's joint attention layers: one object for
    alike layers."""
    return shared_factory(lambda layout, replaces: HunyuanShotProcessor(layout, 0, replaces))


# ---------------------------------------------------------------------------------------------------- installing
@contextlib.contextmanager
def shared_attention(
    transformer,
    share: float,
    guided: bool,
    processor: Callable,
    layers: Callable[[str], bool] | None = None,
) -> Iterator[ShotLayout]:
    """Install `processor(layout, layer, replaces)` on the attention layers of a diffusers transformer (or of each of a
    list of them: Wan 2.2 A14B's experts) whose processor name `layers` accepts (all when None), numbered in call order,
    for the duration of the block; the original processors (the same objects) are restored on exit, also when the block
    raises."""
    layout = ShotLayout(share, guided)
    with processors_installed(transformer, layout, processor, layers):
        yield layout

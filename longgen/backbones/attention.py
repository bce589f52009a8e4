"""`backbone.attention`, resolved once at load; the attention kernels for the CogVideoX transformer's joint text-video
attention, and the processor that uses them.

`backbone.attention` picks how softmax(QKᵀ/√d)·V is computed in every attention layer. `resolve_attention` turns
the configured value into the one choice a loaded backbone runs (`AttentionChoice`, recorded in the manifest as
`attention_used` and `attention_kernels`):
- `sdpa`, `cudnn`, `flash`, `efficient`, `math`: torch's scaled_dot_product_attention (the model's own diffusers
  processors) with that SDPA backend set around each transformer call on CUDA; off CUDA the sets do not apply and
  torch's SDPA runs as it is (`sdpa`);
- a family's own kernels (`Kernel`, listed by the family): CogVideoX's `fa3` and `fa3-fp8` below, Wan's `fa3`
  (fa3-fwd through `WanAttention` below, else diffusers' FlashAttention-3 backend: longgen/backbones/wan.py);
- `auto`: the first of the family's `auto_attention` kernels that runs here (CogVideoX: `fa3`; Wan: none), else on
  CUDA the SDPA order cuDNN, flash, efficient, math (recorded as `cudnn-first`), else torch's SDPA (`sdpa`).

The kernels of CogVideoX's joint attention:
- `fa3`: FlashAttention-3 (Shah et al. 2024, "FlashAttention-3: Fast and Accurate Attention with Asynchrony and
  Low-precision") forward kernels for Hopper from the `fa3-fwd` package (`pip install "longgen[fa3]"`), through
  longgen's processor below. The package has bf16 and e4m3 kernels only: fp16 models cast q/k/v to bf16 around the
  call and the output back (the error this adds is measured in benchmarks/README.md);
- `fa3-fp8` (opt-in, inexact): the same kernel on e4m3 inputs. Scaling that keeps the error low: K is first
  "smoothed" by subtracting its mean over tokens per (sample, head) — every score of a query row then shifts by the
  same constant q·k̄, which softmax cancels (SageAttention, Zhang et al. 2025, §3.2) — then q, k, v are scaled per
  (sample, head) so their largest magnitude maps to e4m3's largest finite value 448, and the kernel undoes the scales
  with its q/k/v descale inputs.

`JointAttention` is the processor: it forms q/k/v of the concatenated [text; video] tokens, applies the layer's
q/k norms and RoPE on the video tokens (CogVideoX-5B), optionally rewrites the video keys/values (GLC's ABAM,
longgen/backbones/anchor_attention.py, uses this hook so anchor attention runs on the same kernels), calls the
kernel, and projects the output. The kernels are `torch.library` custom ops, so torch.compile traces through them.
`WanAttention` is its counterpart for Wan's layers (self-attention, text and image cross-attention), on `wan_qkv`.
HunyuanVideo 1.5's joint attention (video tokens first, then text tokens under a padding mask) runs on each row's
valid tokens without a mask by default (longgen/backbones/prefix_attention.py: `valid-prefix`, `fa3`); its longgen
processors share `hunyuan_qkv`, `hunyuan_out`, and `valid_text_first`, which runs a text-first op row by row on
the valid text tokens, or `hunyuan_attend`, the stock masked attention.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from longgen.errors import UsageError

#: e4m3's largest finite magnitude
E4M3_MAX = 448.0
KERNELS = ("fa3", "fa3-fp8")
#: backbone.attention → the torch SDPA kernels allowed around each transformer call on CUDA, in priority order
#: (auto: cuDNN first, measured fastest on H100 for CogVideoX's head dim 64 — see benchmarks/README.md; sdpa:
#: torch's own default order)
SDPA_KERNELS = {
    "auto": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "sdpa": (),
    "cudnn": ("CUDNN_ATTENTION",),
    "flash": ("FLASH_ATTENTION",),
    "efficient": ("EFFICIENT_ATTENTION",),
    "math": ("MATH",),
}
#: the name `attention_used` records for auto's SDPA order
AUTO_SDPA = "cudnn-first"


# ---------------------------------------------------------------------------------------------------- resolution
class Kernel(ABC):
    """An attention implementation a family offers beyond the SDPA kernel sets, chosen by `backbone.attention=name`
    (or by `auto`, where the family lists it in `auto_attention`)."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        #: what the manifest records as `attention_kernels`
        self.description = description

    def check_installed(self) -> None:
        """At construction: one line when what it needs is not installed (by default it is checked at load)."""

    @abstractmethod
    def check(self, device: torch.device) -> None:
        """At load: one line (UsageError) when it cannot run on `device`."""

    def runs_on(self, device: torch.device) -> bool:
        try:
            self.check(device)
        except UsageError:
            return False
        return True

    @abstractmethod
    def install(self, transformer: torch.nn.Module) -> None:
        """Make every attention layer of the loaded transformer use it."""


@dataclass(frozen=True)
class AttentionChoice:
    """`backbone.attention` resolved on the loaded device: what every transformer call runs."""

    asked: str  # backbone.attention as configured
    used: str  # a family kernel's name, or the SDPA set that applies (`cudnn-first` for auto's, `sdpa`: none)
    sdpa: tuple[str, ...] = ()  # torch SDPBackend names set around each transformer call, in priority order
    kernel: Kernel | None = None  # the family kernel installed at load; None: the model's own SDPA processors

    @property
    def description(self) -> Any:
        """The manifest's `attention_kernels`: the family kernel, or the SDPA kernels set ("torch default": none)."""
        if self.kernel is not None:
            return self.kernel.description
        return list(self.sdpa) or "torch default"

    def around_calls(self) -> ContextManager[None]:
        """The SDPA kernel set for the duration of a transformer call (nothing to set: a null context)."""
        if not self.sdpa:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, n) for n in self.sdpa], set_priority=True)


def attention_choices(kernels: Mapping[str, Kernel]) -> tuple[str, ...]:
    """Every value `backbone.attention` takes on a family with these kernels."""
    return (*SDPA_KERNELS, *kernels)


def resolve_attention(asked: str, device: torch.device, kernels: Mapping[str, Kernel],
                      auto_tries: Sequence[str]) -> AttentionChoice:
    """The one resolution of `backbone.attention` (module docstring), on the device the backbone loads onto: a
    family kernel asked by name is checked (one line where it cannot run here); `auto` takes the first of
    `auto_tries` that runs here, else the SDPA order cuDNN first; the SDPA sets apply on CUDA only."""
    if asked in kernels:
        kernels[asked].check(device)
        return AttentionChoice(asked, asked, kernel=kernels[asked])
    if asked == "auto":
        for name in auto_tries:
            if kernels[name].runs_on(device):
                return AttentionChoice(asked, name, kernel=kernels[name])
    if device.type != "cuda":
        return AttentionChoice(asked, "sdpa")
    return AttentionChoice(asked, AUTO_SDPA if asked == "auto" else asked, SDPA_KERNELS[asked])


# ---------------------------------------------------------------------------------------------------- the kernels


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[b, heads, n, d] → [b, heads, n, d] with torch SDPA (backend set by the caller's sdpa_kernel context)."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


def _fa3_func():
    try:
        from fa3_fwd_interface import flash_attn_func
    except Exception as exc:  # not installed, or its CUDA library does not load here
        raise UsageError(
            f"backbone.attention=fa3 needs the fa3-fwd package on an H100/H200 (pip install \"longgen[fa3]\"): "
            f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}; or use backbone.attention=auto"
        ) from None
    return flash_attn_func


def check_fa3(device: torch.device) -> None:
    """One line when FlashAttention-3 cannot run here (no CUDA, not a Hopper GPU, package missing)."""
    if device.type != "cuda":
        raise UsageError("backbone.attention=fa3 runs on NVIDIA Hopper GPUs (H100/H200) only: use backbone.attention=auto")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        raise UsageError(f"backbone.attention=fa3 needs a Hopper GPU (sm_90); this one is sm_{major}{minor}: "
                         f"use backbone.attention=auto")
    _fa3_func()


class JointKernel(Kernel):
    """FlashAttention-3 (`fa3`) or its e4m3 variant (`fa3-fp8`) in every layer of a CogVideoX transformer, through
    `JointAttention` (Hopper GPUs with the fa3-fwd package)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"FlashAttention-3 (fa3-fwd){' on e4m3 inputs' if name == 'fa3-fp8' else ''}")

    def check(self, device: torch.device) -> None:
        check_fa3(device)

    def install(self, transformer: torch.nn.Module) -> None:
        transformer.set_attn_processor(JointAttention(self.name))


def needs_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether autograd will differentiate through this attention call (GLC's `vmcr_source=model`)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def differentiable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[b, heads, n, d] → [b, heads, n, d] for a call autograd differentiates: fa3-fwd is built without a backward
    kernel, so these calls take torch's FlashAttention-2 (memory-efficient, then plain attention where it cannot
    run), whose backward is deterministic under `torch.use_deterministic_algorithms` (set by
    `Denoiser.window_vjp`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flash_attn_func: Callable) -> torch.Tensor:
    """[b, heads, n, d] → [b, heads, n, d] with FlashAttention-3 in bf16 (fp16 inputs are cast)."""
    if needs_backward(q, k, v):
        return differentiable(q, k, v)
    dtype = q.dtype
    q, k, v = (x.transpose(1, 2).to(torch.bfloat16) for x in (q, k, v))  # [b, n, heads, d]
    out = flash_attn_func(q, k, v)  # [b, n, heads, d] bf16
    return out.transpose(1, 2).to(dtype)


def fp8_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [b, n, heads, d] → (e4m3 tensor of x / scale, descale [b, heads] float32) with scale = amax/448 per
    (sample, head)."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp_min(1e-12)  # [b, heads]
    scale = amax / E4M3_MAX  # [b, heads]
    x8 = (x.float() / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return x8, scale.contiguous()


def fa3_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flash_attn_func: Callable) -> torch.Tensor:
    """[b, heads, n, d] → [b, heads, n, d] with FlashAttention-3 on e4m3 inputs (K smoothed, per-head scales)."""
    if needs_backward(q, k, v):
        return differentiable(q, k, v)
    dtype = q.dtype
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [b, n, heads, d]
    k = k - k.mean(dim=1, keepdim=True)  # smoothing: softmax is invariant to a per-row constant shift of scores
    (q8, qs), (k8, ks), (v8, vs) = fp8_per_head(q), fp8_per_head(k), fp8_per_head(v)
    out = flash_attn_func(q8, k8, v8, q_descale=qs, k_descale=ks, v_descale=vs)  # [b, n, heads, d] bf16
    return out.transpose(1, 2).to(dtype)


def kernel_func(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The attention function for a kernel name ("sdpa", "fa3", "fa3-fp8"), with FlashAttention-3 resolved once
    here (not inside the traced function)."""
    if name == "sdpa":
        return sdpa
    func = {"fa3": fa3, "fa3-fp8": fa3_fp8}[name]
    flash = _fa3_func()
    return lambda q, k, v: func(q, k, v, flash)


#: video_kv(k_video, v_video) → (k_video, v_video), each [b, heads, N, d]: a rewrite of the video keys/values
VideoKV = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# derived from diffusers models/attention_processor.py (CogVideoXAttnProcessor2_0), version 0.42
class JointAttention:
    """Processor for a diffusers CogVideoX attention layer (returns (video hidden states, text hidden states), as
    diffusers' processors do), computing attention with `kernel` and rewriting the video K/V with `video_kv`."""

    def __init__(self, kernel: str = "sdpa", video_kv: VideoKV | None = None) -> None:
        self.kernel = kernel
        self.attend = kernel_func(kernel)
        self.video_kv = video_kv

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise UsageError("longgen's attention processor does not take an attention mask (CogVideoX uses none)")
        n_text = encoder_hidden_states.shape[1]
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [b, T+N, D]: text tokens first
        b, n, _ = tokens.shape
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, n, heads, x.shape[-1] // heads).transpose(1, 2)  # [b, heads, T+N, hd]

        q, k, v = split_heads(attn.to_q(tokens)), split_heads(attn.to_k(tokens)), split_heads(attn.to_v(tokens))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:  # rotate the video tokens only
            q = torch.cat([q[:, :, :n_text], apply_rotary_emb(q[:, :, n_text:], image_rotary_emb)], dim=2)
            if not attn.is_cross_attention:
                k = torch.cat([k[:, :, :n_text], apply_rotary_emb(k[:, :, n_text:], image_rotary_emb)], dim=2)
        if self.video_kv is not None:
            k_video, v_video = self.video_kv(k[:, :, n_text:], v[:, :, n_text:])  # [b, heads, N, hd]
            k = torch.cat([k[:, :, :n_text], k_video], dim=2)  # [b, heads, T+N, hd]
            v = torch.cat([v[:, :, :n_text], v_video], dim=2)  # [b, heads, T+N, hd]
        out = self.attend(q, k, v)  # [b, heads, T+N, hd]
        out = out.transpose(1, 2).reshape(b, n, -1)  # [b, T+N, heads·hd]
        out = attn.to_out[1](attn.to_out[0](out))  # output projection, then dropout
        return out[:, n_text:], out[:, :n_text]  # video [b, N, D], text [b, T, D]


class CallInFlight:
    """The transformer call in flight, for layouts whose attention goes through a custom op (ABAM's `anchor_blend`,
    cross-shot attention's `shot_kv`): its stacked rows, and which layer's turn is next. An op cannot be given the
    layer index (one processor object serves every layer, so compiled blocks share one graph); it finds the layout
    with `in_flight()` and counts layers with `next_layer()` (layers are called in order). Subclasses set `ACTIVE`,
    their own registry, and `what` (their name in errors)."""

    ACTIVE: ClassVar[list]
    what: ClassVar[str]
    _rows: list[int] | None = None
    _next_layer = 0
    #: which of the backbone's transformers the calls run (0: the first; 1: Wan 2.2 A14B's low-noise expert,
    #: set by `on_model`): the layouts that keep keys/values from one predict for later ones (cross-shot
    #: attention, KV-sharing) key them by (model, layer), so one model's layers never read another's
    model = 0

    @contextlib.contextmanager
    def on_model(self, model: int) -> Iterator[None]:
        """The transformer calls inside run model number `model` (layers are counted from 0 in each call)."""
        previous, self.model = self.model, int(model)
        try:
            yield
        finally:
            self.model = previous

    @contextlib.contextmanager
    def running(self, rows: Sequence[int]) -> Iterator[None]:
        """Bracket one transformer call over these stacked rows."""
        self._rows, self._next_layer = list(rows), 0
        self.ACTIVE.append(self)
        try:
            yield
        finally:
            self.ACTIVE.remove(self)
            self._rows = None

    def next_layer(self) -> int:
        layer = self._next_layer
        self._next_layer += 1
        return layer

    @classmethod
    def in_flight(cls):
        """The layout whose transformer call is running (exactly one: nesting is an error)."""
        if len(cls.ACTIVE) != 1:
            raise RuntimeError(f"{cls.what} ran outside (or nested in) a transformer call of the backbone")
        return cls.ACTIVE[0]


def as_models(transformers) -> list[torch.nn.Module]:
    """One diffusers transformer, or several (Wan 2.2 A14B's two experts), as a list."""
    return [transformers] if isinstance(transformers, torch.nn.Module) else list(transformers)


@contextlib.contextmanager
def processors_installed(
    transformers, layout: Any, processor: Callable, layers: Callable[[str], bool] | None = None
) -> Iterator[Any]:
    """Install `processor(layout, layer, replaces)` on the attention layers whose processor name `layers` accepts
    (all when None) of a diffusers transformer, or of each of several (`transformers`: Wan 2.2 A14B's two experts),
    the layers of each model numbered in call order from 0 and `replaces` the processor each stands in for, for the
    duration of the block; yields `layout`. Every model gets its original processors (the same objects) back on
    exit, also when the block, or the installation in a later model, raises. Used by ABAM, cross-shot attention,
    FreeLong and KV-sharing."""
    with contextlib.ExitStack() as restore:
        for model in as_models(transformers):
            original = dict(model.attn_processors)  # name → processor, in call order
            chosen = [name for name in original if layers is None or layers(name)]
            processors = dict(original)
            for layer, name in enumerate(chosen):
                processors[name] = processor(layout, layer, original[name])
            restore.callback(model.set_attn_processor, dict(original))  # it consumes the dict it is given
            model.set_attn_processor(processors)
        yield layout


def wan_qkv(attn, hidden_states: torch.Tensor, context: torch.Tensor | None = None,
            rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries from `hidden_states` and keys/values from `context` (default: the same tokens) of a Wan attention
    layer, per head: [b, n, heads, hd] each, RoPE applied to queries and keys where `rotary_emb` is given. The step
    every longgen processor for Wan's layers (anchor, cross-shot, spectral, KV-sharing) shares before its own
    attention. Wan's tables are [1, N, 1, hd] with each angle repeated for the (even, odd) pair it rotates: the
    interleaved-pair RoPE of diffusers' apply_rotary_emb with the sequence on dim 1."""
    from diffusers.models.embeddings import apply_rotary_emb

    context = hidden_states if context is None else context
    heads = lambda t: t.unflatten(2, (attn.heads, -1))  # noqa: E731  [b, n, D] → [b, n, heads, hd]
    q = heads(attn.norm_q(attn.to_q(hidden_states)))
    k = heads(attn.norm_k(attn.to_k(context)))
    v = heads(attn.to_v(context))
    if rotary_emb is not None:
        cos, sin = (table[0, :, 0] for table in rotary_emb)  # [N, hd] each
        q = apply_rotary_emb(q, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)
        k = apply_rotary_emb(k, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)
    return q, k, v


def wan_self_qkv(name: str, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                 attention_mask: torch.Tensor | None, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`wan_qkv` for processors that serve only the self-attention layers of a text-to-video Wan model (anchor,
    cross-shot, spectral): q, k, v [b, N, heads, hd] each; any other layer is a RuntimeError naming processor `name`."""
    if encoder_hidden_states is not None or attn.add_k_proj is not None or attention_mask is not None:
        raise RuntimeError(f"{name} is for the self-attention layers of a text-to-video Wan model")
    return wan_qkv(attn, hidden_states, rotary_emb=rotary_emb)


def heads_last(attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [b, n, heads, hd], k/v [b, m, heads, hd] → [b, n, heads·hd] with `attend`, a [b, heads, n, hd] kernel."""
    heads_first = lambda t: t.transpose(1, 2)  # noqa: E731  [b, n, heads, hd] → [b, heads, n, hd]
    out = attend(heads_first(q), heads_first(k), heads_first(v))  # [b, heads, n, hd]
    return out.transpose(1, 2).flatten(2, 3).type_as(q)  # [b, n, heads·hd]


#: the text tokens at the end of an I2V Wan cross-attention context (its image tokens come first): the length
#: diffusers' WanAttnProcessor splits at
WAN_TEXT_TOKENS = 512


# derived from diffusers models/transformers/transformer_wan.py (WanAttnProcessor), version 0.42
class WanAttention:
    """Processor for every attention layer of a diffusers Wan transformer (self-attention, text cross-attention and
    Wan I2V's image cross-attention), computing attention with `kernel` ("fa3": FlashAttention-3 from fa3-fwd, whose
    differentiated calls take torch's attention; "sdpa"). The projections, the RMS norms of q and k across heads,
    the interleaved-pair RoPE (`wan_qkv`) and the sum of text and image attention before the output projection are
    those of diffusers' WanAttnProcessor. All three attentions go through the kernel: FlashAttention-3 takes keys of
    any length (the 512 text tokens, the 257 image tokens) and Wan's head dim 128."""

    def __init__(self, kernel: str = "fa3") -> None:
        self.kernel = kernel
        self.attend = kernel_func(kernel)

    def heads_last(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [b, n, heads, hd], k/v [b, m, heads, hd] → [b, n, heads·hd] with the kernel."""
        return heads_last(self.attend, q, k, v)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise UsageError("longgen's Wan attention processor does not take an attention mask (Wan uses none)")
        image = None
        if attn.add_k_proj is not None:  # I2V cross-attention: context = [image tokens; text tokens]
            split = encoder_hidden_states.shape[1] - WAN_TEXT_TOKENS
            image, encoder_hidden_states = encoder_hidden_states[:, :split], encoder_hidden_states[:, split:]
        q, k, v = wan_qkv(attn, hidden_states, encoder_hidden_states, rotary_emb)  # [b, n|m, heads, hd] each
        out = self.heads_last(q, k, v)  # [b, N, D]
        if image is not None:
            k_img = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (attn.heads, -1))  # [b, I, heads, hd]
            v_img = attn.add_v_proj(image).unflatten(2, (attn.heads, -1))  # [b, I, heads, hd]
            out = out + self.heads_last(q, k_img, v_img)  # [b, N, D]
        return attn.to_out[1](attn.to_out[0](out))  # output projection, then dropout


def wan_attend(replaces) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """How a longgen processor standing in for the processor `replaces` of a Wan attention layer (ABAM, cross-shot
    attention) computes attention: q [b, n, heads, hd], k/v [b, m, heads, hd] → [b, n, heads·hd], with the replaced
    `WanAttention`'s kernel (`backbone.attention=fa3` on fa3-fwd), else through diffusers' attention dispatcher with
    the replaced processor's attention backend (torch SDPA, or diffusers' `_flash_3`)."""
    if isinstance(replaces, WanAttention):
        return replaces.heads_last
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    backend = getattr(replaces, "_attention_backend", None)

    def dispatched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = dispatch_attention_fn(q, k, v, dropout_p=0.0, is_causal=False, backend=backend)  # [b, n, heads, hd]
        return out.flatten(2, 3).type_as(q)  # [b, n, heads·hd]

    return dispatched


# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
def hunyuan_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of a HunyuanVideo 1.5 joint attention layer, per head: [b, N + S, heads, hd] each,
    the N video tokens first (projections, per-head RMS norms, RoPE), then the S text tokens (the added projections
    and their norms; no positions). The step every longgen processor for this transformer shares before its own
    attention, as diffusers' processor computes it."""
    from diffusers.models.embeddings import apply_rotary_emb

    heads = lambda t: t.unflatten(2, (attn.heads, -1))  # noqa: E731  [b, n, D] → [b, n, heads, hd]
    q = attn.norm_q(heads(attn.to_q(hidden_states)))  # [b, N, heads, hd]
    k = attn.norm_k(heads(attn.to_k(hidden_states)))
    v = heads(attn.to_v(hidden_states))
    if rotary_emb is not None:
        q = apply_rotary_emb(q, rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, rotary_emb, sequence_dim=1)
    q_text = heads(attn.add_q_proj(encoder_hidden_states))  # [b, S, heads, hd]
    k_text = heads(attn.add_k_proj(encoder_hidden_states))
    v_text = heads(attn.add_v_proj(encoder_hidden_states))
    if attn.norm_added_q is not None:
        q_text = attn.norm_added_q(q_text)
    if attn.norm_added_k is not None:
        k_text = attn.norm_added_k(k_text)
    return torch.cat([q, q_text], dim=1), torch.cat([k, k_text], dim=1), torch.cat([v, v_text], dim=1)


def hunyuan_out(attn, out: torch.Tensor, n_text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A HunyuanVideo 1.5 joint attention output [b, N + S, D] (video first, S = n_text) → the layer's (video
    [b, N, D], text [b, S, D]) through its two output projections."""
    video, text = out[:, : out.shape[1] - n_text], out[:, out.shape[1] - n_text :]
    return attn.to_out[1](attn.to_out[0](video)), attn.to_add_out(text)


#: attend(q, k, v, n_text): q, k, v [1, heads, T + N, hd] (the T text tokens first) → [1, heads, T + N, hd]
TextFirst = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def valid_text_first(attend: TextFirst, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     text_mask: torch.Tensor) -> torch.Tensor:
    """HunyuanVideo 1.5's masked joint attention through a longgen op written for text-first tokens without a mask.
    q, k, v: [b, heads, N + S, hd] (N video tokens, then S text tokens); text_mask: [b, S], true on the valid text
    tokens → [b, heads, N + S, hd]. The stock processor lets a valid query see the video and the valid text keys
    and gives a padded text query no key at all; here each row runs `attend` on its own, over its T valid text
    tokens then the video tokens (attention does not depend on the order of its keys, and the text tokens carry no
    positions), and its padded text rows are 0, what torch's SDPA returns for a query whose keys are all masked."""
    n_video = q.shape[2] - text_mask.shape[1]
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)  # [b, heads, N + S, hd]
    video = torch.arange(n_video, device=q.device)
    for row in range(q.shape[0]):
        text = n_video + torch.nonzero(text_mask[row].bool())[:, 0]  # [T] positions of the valid text tokens
        order = torch.cat([text, video])  # [T + N]
        pick = lambda x: x[row : row + 1].index_select(2, order)  # noqa: E731  [1, heads, T + N, hd]
        out[row : row + 1, :, order] = attend(pick(q), pick(k), pick(v), text.numel()).to(q.dtype)
    return out


# derived from diffusers models/transformers/transformer_hunyuan_video15.py (HunyuanVideo15AttnProcessor2_0), version 0.42
def hunyuan_attend(replaces) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """How a longgen processor standing in for the processor `replaces` of a HunyuanVideo 1.5 joint attention layer
    (ABAM, cross-shot attention) computes its attention: q [b, N + S, heads, hd], k, v [b, N' + S, heads, hd] (video
    first; N' ≥ N: keys added to the video's) and the text mask [b, S] → [b, N + S, heads·hd], under the stock
    processor's mask (a query and a key both valid: every video token, the valid text tokens): where `replaces` is
    longgen's valid-prefix processor (prefix_attention.py), with its kernel on each row's valid tokens, else through
    diffusers' attention dispatcher with the replaced processor's attention backend."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    if hasattr(replaces, "attend_joint"):
        return replaces.attend_joint
    backend = getattr(replaces, "_attention_backend", None)

    def masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        text = text_mask.bool()  # [b, S]
        queries = F.pad(text, (q.shape[1] - text.shape[1], 0), value=True)  # [b, N + S]
        keys = F.pad(text, (k.shape[1] - text.shape[1], 0), value=True)  # [b, N' + S]
        pairs = queries[:, None, :, None] & keys[:, None, None, :]  # [b, 1, N + S, N' + S]
        out = dispatch_attention_fn(q, k, v, attn_mask=pairs, dropout_p=0.0, is_causal=False, backend=backend)
        return out.flatten(2, 3).type_as(q)  # [b, N + S, heads·hd]

    return masked

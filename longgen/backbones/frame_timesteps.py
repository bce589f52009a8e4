"""A timestep per latent frame for CogVideoX: per-frame adaLN modulation of the video tokens.

CogVideoX (Yang et al. 2024, §3) conditions its transformer on the timestep through adaptive layer norms in the
adaLN-Zero form of DiT (Peebles & Xie 2023, §3.2): from the time embedding e = MLP(sinusoid(t)) each block's
`norm1` and `norm2` map SiLU(e) linearly to a shift β, a scale γ and a gate α for the video tokens and another
three for the text tokens; a token h enters attention (resp. the feed-forward) as LayerNorm(h)·(1 + γ) + β and its
residual is h + α·out. The output layer's AdaLayerNorm (`norm_out`) takes one more shift and scale for the video
tokens. Diffusers computes e once per sample.

With one timestep t_f per latent frame f (what FIFO-Diffusion's diagonal denoising needs, Kim et al. 2024 §3.1),
the tokens of frame f take β_f, γ_f, α_f computed from e(t_f) in every block and in the output layer: each frame is
modulated exactly as the model modulates a whole clip at t_f. The tokens of frame f are the f-th run of
(H/2)·(W/2) video tokens (diffusers' patch embedding flattens frames outermost).

The text tokens belong to no frame. They take their modulation from e(t̄), t̄ the mean of the window's frame
timesteps. Why: e(t̄) is the embedding of a timestep, which the model was trained on (an average of embeddings, or of
modulations, is not); for FIFO's evenly spaced diagonal t̄ is the noise level of the window's middle frame, the
level "typical" of the window the text stream attends to; and when every frame has the same t, t̄ = t exactly
(integer timesteps average exactly in floating point), so the per-frame call is the model's own call, bit for bit.
Frame 0's embedding was the other candidate; it would tie the text stream to the cleanest frame of a window.

Mechanism (diffusers is not edited): for a per-frame call the transformer is called with timestep t̄ [b], so its
own time embedding is e(t̄), the text tokens' embedding. A forward hook on its `time_embedding` returns, in place of
e(t̄) [b, D], the stack [e(t_1), …, e(t_F), e(t̄)] [b, F + 1, D] that every consumer of the embedding receives; each
e(t_f) comes from the same two modules with b rows, as the model's own call computes e(t). The blocks' `norm1` /
`norm2` and the output `norm_out` are swapped, for the duration of the call only, for wrappers that read that stack
(`FrameNormZero`, `FrameAdaNorm`); they call the wrapped module's own linear map, SiLU and LayerNorm, one frame at a
time with b rows, so a frame's modulation has the same bits as a whole clip's at its timestep. The wrappers are
built once per transformer and reused (a compiled block then sees two stable module layouts, not a new one per
call).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from longgen.errors import UsageError


def _rows(temb: torch.Tensor) -> list[torch.Tensor]:
    """The stack [b, F + 1, D] as F + 1 contiguous embeddings [b, D]. Contiguous: torch's SiLU takes a vectorised
    path on contiguous input and a scalar one on strided views, whose last bits differ."""
    return [e.contiguous() for e in temb.unbind(dim=1)]


def _per_frame(params: list[torch.Tensor]) -> torch.Tensor:
    """Stack one [b, dim] tensor per frame into [b, F, 1, dim] (broadcast over a frame's tokens)."""
    return torch.stack(params, dim=1)[:, :, None, :]  # [b, F, 1, dim]


def _tokens_by_frame(h: torch.Tensor, frames: int) -> torch.Tensor:
    """Video tokens [b, F·P, dim] (frames outermost) → [b, F, P, dim]."""
    b, n, dim = h.shape
    if n % frames:
        raise ValueError(f"{n} video tokens do not split into {frames} frames")
    return h.reshape(b, frames, n // frames, dim)  # [b, F, P, dim]


# derived from diffusers models/normalization.py (CogVideoXLayerNormZero), version 0.42
class FrameNormZero(nn.Module):
    """Per-frame stand-in for a CogVideoX block's `CogVideoXLayerNormZero` (norm1 / norm2). Called like it, with
    `temb` the stack [b, F + 1, D] (frames, then the text tokens' embedding); returns the modulated video tokens
    [b, F·P, dim], the modulated text tokens [b, S, dim], the video gate [b, F·P, dim] and the text gate [b, 1, dim]."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def _params(self, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Shift, scale, gate (video), then shift, scale, gate (text), each [b, dim], from one embedding e [b, D]."""
        return self.inner.linear(self.inner.silu(e)).chunk(6, dim=1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor):
        *frame_embs, text_emb = _rows(temb)  # F × [b, D], e(t̄) [b, D]
        frames = len(frame_embs)
        per_frame = [self._params(e) for e in frame_embs]  # F × 6 × [b, dim]
        _, _, _, text_shift, text_scale, text_gate = self._params(text_emb)
        shift = _per_frame([p[0] for p in per_frame])  # [b, F, 1, dim]
        scale = _per_frame([p[1] for p in per_frame])
        gate = _per_frame([p[2] for p in per_frame])
        video = _tokens_by_frame(self.inner.norm(hidden_states), frames)  # [b, F, P, dim]
        video = (video * (1 + scale) + shift).flatten(1, 2)  # [b, F·P, dim]
        text = self.inner.norm(encoder_hidden_states) * (1 + text_scale)[:, None, :] + text_shift[:, None, :]
        gate = gate.expand(-1, -1, video.shape[1] // frames, -1).flatten(1, 2)  # [b, F·P, dim]
        return video, text, gate, text_gate[:, None, :]


# derived from diffusers models/normalization.py (AdaLayerNorm), version 0.42
class FrameAdaNorm(nn.Module):
    """Per-frame stand-in for the transformer's output `AdaLayerNorm` (norm_out, shift-then-scale chunks), applied
    to the video tokens [b, F·P, dim] with `temb` the stack [b, F + 1, D]."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, timestep=None, temb: torch.Tensor | None = None) -> torch.Tensor:
        frame_embs = _rows(temb)[:-1]  # F × [b, D]
        frames = len(frame_embs)
        per_frame = [self.inner.linear(self.inner.silu(e)).chunk(2, dim=1) for e in frame_embs]
        shift = _per_frame([p[0] for p in per_frame])  # [b, F, 1, dim]
        scale = _per_frame([p[1] for p in per_frame])
        video = _tokens_by_frame(self.inner.norm(x), frames)  # [b, F, P, dim]
        return (video * (1 + scale) + shift).flatten(1, 2)  # [b, F·P, dim]


# derived from diffusers models/transformers/cogvideox_transformer_3d.py (CogVideoXTransformer3DModel.forward), version 0.42
class FrameModulation:
    """The per-frame wrappers of one CogVideoX transformer, installed by `installed(...)` for one call."""

    def __init__(self, transformer: nn.Module) -> None:
        cfg = transformer.config
        if getattr(cfg, "patch_size_t", None) is not None or getattr(transformer, "ofs_embedding", None) is not None:
            raise UsageError(
                "this CogVideoX transformer patches frames in time or takes an ofs embedding (CogVideoX 1.5): "
                "longgen's per-frame timesteps support CogVideoX 1.0 (2B, 5B) only"
            )
        if transformer.norm_out.emb is not None or transformer.norm_out.chunk_dim != 1:
            raise UsageError("unexpected CogVideoX output norm: per-frame timesteps need diffusers' AdaLayerNorm "
                             "with shift-then-scale chunks")
        self.transformer = transformer
        blocks = transformer.transformer_blocks
        self._plain = [(b.norm1, b.norm2) for b in blocks]
        self._frame = [(FrameNormZero(b.norm1), FrameNormZero(b.norm2)) for b in blocks]
        self._out = (transformer.norm_out, FrameAdaNorm(transformer.norm_out))

    def _hook(self, timesteps: torch.Tensor):
        """Forward hook on `time_embedding`: e(t̄) [b, D] (the transformer's own output) → [b, F + 1, D]."""
        proj = self.transformer.time_proj

        def hook(module, args, text_emb):
            sample = args[0]  # sinusoid(t̄) in the model dtype, [b, inner]
            frames = [module.forward(proj(t.contiguous()).to(sample.dtype)) for t in timesteps.unbind(dim=1)]
            return torch.stack([*frames, text_emb], dim=1)  # [b, F + 1, D]

        return hook

    def _swap(self, frame: bool) -> None:
        pairs = self._frame if frame else self._plain
        for block, (n1, n2) in zip(self.transformer.transformer_blocks, pairs):
            block.norm1, block.norm2 = n1, n2
        self.transformer.norm_out = self._out[1] if frame else self._out[0]

    @contextlib.contextmanager
    def installed(self, timesteps: torch.Tensor) -> Iterator[torch.Tensor]:
        """Within the block, a transformer call with the yielded timestep t̄ [b] modulates frame f's video tokens with
        e(timesteps[:, f]) and the text tokens with e(t̄). timesteps: [b, F] float32 on the model's device."""
        mean = timesteps.double().mean(dim=1).float()  # [b] t̄
        handle = self.transformer.time_embedding.register_forward_hook(self._hook(timesteps))
        self._swap(True)
        try:
            yield mean
        finally:
            self._swap(False)
            handle.remove()

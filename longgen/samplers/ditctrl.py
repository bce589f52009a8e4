"""DiTCtrl (Cai et al., CVPR 2025, "DiTCtrl: Exploring Attention Control in Multi-Modal Diffusion Transformer for
Tuning-Free Multi-Prompt Longer Video Generation", arXiv 2412.18597): multi-prompt video as clips of consecutive
prompts, joined by KV-sharing and latent blending. The baseline SynCoS compares against on CogVideoX-2B (SynCoS
supplementary Table 5, Fig. 14).

The long latent x_t [L, C, H, W] is covered by clips of the native length M starting every S frames (stride
S = M − overlap; paper: overlap 6 of CogVideoX-2B's 13 latent frames, S = 7; the public code
(sat/configs/inference.yaml) now advises overlap 9, S = 4, the default here as it keeps CogVideoX's latent length
odd), each clip conditioned on the local
prompt of the story segment holding its centre. Adjacent clips overlap and share those frames' latents, so they
start from the same noise there (the public code copies the noise of the overlap for the same effect).

Per denoising step t, as the public code's multi-prompt sampler does (sat/sgm/modules/diffusionmodules/sampling.py,
`VPSDEDPMPP2MSampler_MultiPrompt`), every adjacent pair (clip k = source, clip k+1 = target) is denoised:
1. KV-sharing (§3.2), in the steps `kv_steps` and the attention layers `kv_layers` (public code: steps [2, 25) of
   50, layers [25, 30) of CogVideoX-2B's 30; sat/configs/inference.yaml): the source runs plain attention, the
   target attends with the source's keys and values,
       Attn(Q_{k+1}, K_k, V_k) = softmax(Q_{k+1}·K_kᵀ/√d)·V_k,
   and, with subject tokens given, mask-guided: M_k, M_{k+1} are binary masks thresholded (τ = `mask_threshold`,
   public code 0.3) from each clip's per-frame min-max normalised attention map on the subject tokens, and
       out = M_{k+1} ⊙ Attn(Q_{k+1}, K_k, V_k; M_k) + (1 − M_{k+1}) ⊙ Attn(Q_{k+1}, K_k, V_k; 1 − M_k),
   each part attending only to the source's foreground (resp. background) video keys and every text key
   (longgen/backbones/kv_sharing.py has the layer details, CogVideoX's joint attention and Wan's cross-attention
   map). Outside those steps each clip is predicted once, plainly (the pair's two predictions would be equal).
2. Latent blending (§3.3): every clip's clean estimate x̂0_k is weighted per position j of the clip by the triangle
       w_j = min(u_j, 2 − u_j),  u_j = 2·(j + ½)/M,   j = 0 … M − 1,
   and each frame takes Σ w·x̂0 / Σ w over the predictions covering it. As in the public code a clip contributes once
   per pair it belongs to: an inner clip twice (as target of pair k − 1 and source of pair k), the end clips once.
3. One DDIM step (Song et al. 2021, Eq. 12) from x_t with the blended x̂0 (the public code steps with
   DPM-Solver++(2M) SDE, CogVideoX's SAT sampler; longgen's samplers share the backbone's DDIM so they compare on one
   solver).
One clip (L = M) predicts the clip once and steps: direct sampling, bit for bit.

Not carried over: the public code's "transition blocks" (extra clips between prompts conditioned on a linear mix of
the two prompts' text embeddings) need the seam to mix encoded prompts; here every clip carries one local prompt.
Cost per KV-sharing step: 2·(N − 1) clip predictions for N clips, N otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from longgen.denoiser import Denoiser
from longgen.diffusion import ddim_step, gather_windows, scatter_windows
from longgen.errors import UsageError
from longgen.options import Number, flag, option, whole
from longgen.samplers.base import ETA, GUIDANCE, NUM_STEPS, STRIDE, Sampler, SamplerState, SamplingRun

log = logging.getLogger(__name__)


def span(name: str, value: Any) -> tuple[int, int]:
    """Rule: a half-open span [a, b] of whole numbers with 0 <= a <= b."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise UsageError(f"{name}={value!r} must be a span [a, b] of two whole numbers (half-open: a <= i < b)")
    a, b = (whole(name, v, 0) for v in value)
    if a > b:
        raise UsageError(f"{name}=[{a}, {b}] must have a <= b (half-open: a <= i < b)")
    return a, b


def layer_span(name: str, value: Any) -> tuple[int, int | None]:
    """Rule: a half-open span [a, b] of attention layers; as in a Python slice, negative numbers count from the
    model's last layer and b may be null (to the last), so [-5, null] is the last five layers of any model. Whether
    it fits the model is checked when the weights are there (backbones/kv_sharing.py)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise UsageError(f"{name}={value!r} must be a span [a, b] of layers (half-open; negative counts from the end, "
                         f"b null: to the last layer)")
    a = whole(name, value[0])
    b = None if value[1] is None else whole(name, value[1])
    if b is not None and (a >= 0) == (b >= 0) and a >= b:
        raise UsageError(f"{name}=[{a}, {b}] must have a < b (half-open: a <= i < b)")
    return a, b


def tokens(name: str, value: Any) -> tuple[int, ...]:
    """Rule: a list of distinct token positions (whole numbers >= 0); empty for none."""
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"{name}={value!r} must be a list of token positions, e.g. [1, 2] ([] for no mask)")
    out = tuple(whole(name, v, 0) for v in value)
    if len(set(out)) != len(out):
        raise UsageError(f"{name}={list(out)} names a token twice: list each position once")
    return out


def blend_weights(window: int) -> torch.Tensor:
    """DiTCtrl §3.3's position weights of a clip of `window` frames: w_j = min(u_j, 2 − u_j), u_j = 2(j + ½)/M.
    → [M] float32, peak 1 at the centre, 1/M at either end."""
    u = (torch.arange(window, dtype=torch.float32) + 0.5) * 2.0 / window  # [M]
    return torch.minimum(u, 2.0 - u)


def blend(values: torch.Tensor, starts: list[int], length: int, weights: torch.Tensor) -> torch.Tensor:
    """Position-weighted per-frame average of clip estimates (§3.3): values [K, M, C, H, W] of clips starting at
    `starts` (a start may repeat: a clip counted twice), weights [M] → [L, C, H, W]. Σ_k w·x̂0_k / Σ_k w per frame."""
    w = weights.to(values.device, values.dtype)[None, :, None, None, None]  # [1, M, 1, 1, 1]
    total, _ = scatter_windows(values * w, starts, length)  # [L, C, H, W]
    wsum, _ = scatter_windows(w.expand(len(starts), -1, 1, 1, 1), starts, length)  # [L, 1, 1, 1]
    return total / wsum


@dataclass(eq=False)
class DiTCtrlSampler(Sampler):
    """The options (conf/sampler/ditctrl.yaml), each with its accepted values."""

    num_steps: int = option(50, NUM_STEPS)
    guidance_scale: float = option(6.0, GUIDANCE)
    eta: float = option(0.0, ETA)
    stride: int = option(4, STRIDE)  # M − overlap (paper: 7, overlap 6 of 13; public code's advice: 4, overlap 9)
    kv_sharing: bool = option(True, flag)
    kv_steps: tuple[int, int] = option((2, 25), span)  # sampling steps that share, half-open
    kv_layers: tuple[int, int | None] = option((25, 30), layer_span)  # attention layers that share, half-open
    subject_tokens: tuple[int, ...] = option((), tokens)  # text token positions of the subject; () = no mask
    mask_threshold: float = option(0.3, Number(0, 1))

    def check_denoiser(self, den: Denoiser) -> None:
        """`kv_layers` against the model's attention layers (where the backbone knows their number before loading)
        and `subject_tokens` against its text tokens, when the run is planned; KV-sharing checks them again."""
        if self.kv_sharing:
            den.check_kv_layers(self.kv_layers)
            limit = getattr(den, "max_text_tokens", None)  # the text keys a prompt has at most (padded to it)
            if self.subject_tokens and limit is not None and max(self.subject_tokens) >= limit:
                raise UsageError(f"sampler.subject_tokens={list(self.subject_tokens)} points past the {limit} text "
                                 f"tokens of this model: use token positions below {limit}")

    def check_prompts(self, prompts: list[str], den: Denoiser) -> None:
        """`subject_tokens` against each local prompt's own text tokens: a position past them lands in that prompt's
        padding (CogVideoX, Wan) or on no token (HunyuanVideo 1.5, refused there only mid-run), so its subject mask
        would mean nothing. Judged where the count is exact: a loaded tokenizer, or the random-weight test models'
        word tokens (so at planning for those, before sampling for the others)."""
        count_tokens = getattr(den, "count_tokens", None)
        if not (self.kv_sharing and self.subject_tokens) or count_tokens is None:
            return
        for i, prompt in enumerate(prompts, 1):
            count, exact = count_tokens(prompt)
            count = min(count, getattr(den, "max_text_tokens", count))  # longer prompts are cut to the limit
            if exact and max(self.subject_tokens) >= count:
                raise UsageError(f"sampler.subject_tokens={list(self.subject_tokens)} points past the {count} text "
                                 f"tokens of local prompt {i}: use token positions below {count} (each prompt's own "
                                 f"tokens; later ones are padding), or lengthen that prompt")

    def calls_share_attention(self) -> str | None:
        return "DiTCtrl's KV sharing (sampler.kv_sharing=true)" if self.kv_sharing else None

    def begin(self, run: SamplingRun) -> int:
        den = run.denoiser
        self._plan = self.plan(run.length, den.window)
        self._starts = list(self._plan.starts)
        self._ids = [run.prompt_for_window(s, self._plan.window) for s in self._starts]
        self._weights = blend_weights(self._plan.window)
        self._sched = den.schedule(self.num_steps)
        total = len(self._sched)
        if not self.kv_sharing and self.subject_tokens:
            log.warning("sampler.subject_tokens=%s does nothing with sampler.kv_sharing=false (the subject mask only "
                        "guides KV-sharing): drop it, or pass sampler.kv_sharing=true", list(self.subject_tokens))
        if self.kv_sharing and len(self._starts) > 1 and not any(self.shares_at(i) for i in range(total)):
            log.warning("sampler.kv_steps=[%d, %d] holds none of this run's %d steps: no KV-sharing happens (clips and "
                        "latent blending only); give steps below %d, e.g. sampler.kv_steps=[0, %d]",
                        *self.kv_steps, total, total, total)
        return total

    def forwards_per_step(self, total: int) -> list[float]:
        """Transformer forwards of each step (window samples × guidance branches): 2(N − 1) clip predictions at a
        sharing step, N otherwise (the progress ETA's weights)."""
        branches = 2 if self.guidance_scale > 1.0 else 1
        n = len(self._starts)
        return [float(branches * (2 * (n - 1) if self.shares_at(i) else n)) for i in range(total)]

    def shares_at(self, i: int) -> bool:
        """Whether step i runs KV-sharing: on, inside `kv_steps`, and at least one pair of clips."""
        return self.kv_sharing and self.kv_steps[0] <= i < self.kv_steps[1] and len(self._starts) > 1

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        den = run.denoiser
        x = state.tensors["x"]  # [L, C, H, W] x_t
        c = self._sched.step(i)
        clips = gather_windows(x, self._starts, self._plan.window)  # [N, M, C, H, W]
        n = len(self._starts)
        if n == 1:  # one clip: direct sampling
            x0 = den.predict(clips, c.t, self._ids, self.guidance_scale).x0[0]  # [L, C, H, W]
        elif self.shares_at(i):
            with den.kv_sharing(self.kv_layers, self.subject_tokens, self.mask_threshold) as kv:
                with kv.capturing():  # clips 0 … N−2 as sources, plain attention
                    source = den.predict(clips[:-1], c.t, self._ids[:-1], self.guidance_scale).x0  # [N−1, M, …]
                with kv.sharing(range(n - 1)):  # clip k + 1 attends with clip k's keys/values
                    target = den.predict(clips[1:], c.t, self._ids[1:], self.guidance_scale).x0  # [N−1, M, …]
            values = torch.cat([source, target])  # [2(N−1), M, C, H, W]
            x0 = blend(values, self._starts[:-1] + self._starts[1:], run.length, self._weights)  # [L, C, H, W]
        else:
            plain = den.predict(clips, c.t, self._ids, self.guidance_scale).x0  # [N, M, C, H, W]
            twice = list(range(1, n - 1))  # inner clips belong to two pairs
            values = torch.cat([plain, plain[1:-1]])  # [2(N−1), M, C, H, W]
            x0 = blend(values, self._starts + [self._starts[k] for k in twice], run.length, self._weights)
        noise = run.randn(tuple(x.shape)) if self.eta > 0 else None
        state.tensors["x"] = ddim_step(x, x0, c, self.eta, noise)  # [L, C, H, W] x_{t−1}
        state.estimate = x0

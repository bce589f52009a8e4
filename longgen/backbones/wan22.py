"""Wan 2.2 text-to-video (Wan Team 2025, arXiv 2503.20314; the Wan2.2 release) behind the `Denoiser` seam: the
Wan 2.1 backbone (longgen/backbones/wan.py: rectified flow, layout, per-frame timesteps, streamed decode) with the
two things Wan 2.2 adds, as diffusers 0.42's `WanPipeline` runs them:

- TI2V-5B (`backbone=wan2.2-ti2v-5b`, text-to-video mode): the high-compression Wan 2.2 VAE (48 latent channels,
  temporal 4, spatial 16 = 8 in the decoder × a 2×2 output patch) and `expand_timesteps`: the transformer gets one
  timestep per token. In text-to-video mode every token carries the step's t (the pipeline's mask is all ones), so
  a window's call is the per-frame call with all frames at t; per-frame timesteps (FIFO) are the same call with the
  frames' own t.
- T2V-A14B (`backbone=wan2.2-t2v-a14b`): two experts of the same architecture, `transformer` for high noise
  (t ≥ boundary_ratio · T) and `transformer_2` for low noise (t < boundary), each with its own guidance scale
  (the sampler's `guidance_scale` for the high-noise expert, `backbone.guidance_scale_2` for the low-noise one, as
  the pipeline's `guidance_scale` / `guidance_scale_2`). The switch happens inside every `predict`, so every
  sampler and window takes the expert of its own timestep. With per-frame timesteps a window may hold frames on
  both sides of the boundary (FIFO's queue): both experts then see the whole window and each frame takes the
  prediction of its own expert at its own guidance scale.
  The attention processors of ABAM, cross-shot attention, FreeLong and DiTCtrl's KV-sharing go into both experts
  (`_attention_models`); the keys/values cross-shot attention and KV-sharing keep are kept per expert
  (`CallInFlight.model`) and ABAM's anchors are rewritten by each expert's own calls, so each expert's layers read
  only what that expert's layers stored, also when one predict runs both.
  A LoRA (`backbone.lora`) names its expert(s) with `experts: high | low | both` (Wan 2.2 LoRAs ship one file per
  expert) and goes into those transformers (longgen/backbones/lora.py; diffusers' Wan loader with
  `load_into_transformer_2` for the low-noise one).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import torch

from longgen.backbones import riflex
from longgen.backbones.fused_gelu import fuse_gelu_projections
from longgen.backbones.lora import check_experts
from longgen.backbones.wan import WanBackbone, cast_like_pretrained
from longgen.denoiser import Prediction
from longgen.errors import UsageError
from longgen.options import number


class Wan22Backbone(WanBackbone):
    """A Wan 2.2 text-to-video model (TI2V-5B or T2V-A14B). Construction only checks the configuration."""

    family = "Wan 2.2"
    #: the shared options' defaults for TI2V-5B; conf/backbone/wan2.2-*.yaml give them all
    option_defaults = dict(model_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers", dtype="bfloat16", num_frames=121, height=704,
                           width=1280, fps=24, latent_channels=48, spatial_compression=16, max_text_tokens=512,
                           vae_tiling=False, micro_batch=2)
    example_config = "conf/backbone/tiny-wan22-ti2v.yaml"
    lora_experts = True  # `experts` of each LoRA checked below, against one transformer or two

    def __init__(self, *, boundary_ratio: float | None = None, guidance_scale_2: float | None = None,
                 expand_timesteps: bool = False, vae_dtype: str = "float32", flow_shift: float | None = None,
                 **shared: Any) -> None:
        """`boundary_ratio`: the A14B's expert switch as a fraction of T (null: one transformer); `guidance_scale_2`:
        the low-noise expert's guidance scale (null: the sampler's); `expand_timesteps`: one timestep per token
        (TI2V-5B); `vae_dtype`, `flow_shift`: WanBackbone's; `shared`: the DiffusersOptions."""
        super().__init__(vae_dtype=vae_dtype, flow_shift=flow_shift, **shared)
        if boundary_ratio is not None and not (isinstance(boundary_ratio, (int, float))
                                               and not isinstance(boundary_ratio, bool) and 0.0 < boundary_ratio < 1.0):
            raise UsageError(f"backbone.boundary_ratio={boundary_ratio!r} must be in (0, 1) (A14B T2V: 0.875), or null "
                             f"for a single transformer")
        if guidance_scale_2 is not None:  # as the sampler's guidance_scale
            number("backbone.guidance_scale_2", guidance_scale_2, 0, 100, note=" (A14B T2V: 3), or null for the "
                   "sampler's guidance_scale")
        if guidance_scale_2 is not None and boundary_ratio is None:
            raise UsageError("backbone.guidance_scale_2 is the low-noise expert's scale: it needs backbone."
                             "boundary_ratio (two experts); set guidance_scale_2=null")
        check_experts(self.loras, two=boundary_ratio is not None)  # which expert(s) each LoRA goes into
        if self.vae_tiling is True and self.spatial_compression != 8:  # the Wan 2.2 VAE (before anything runs)
            raise UsageError("backbone.vae_tiling=true: the Wan 2.2 VAE (patchified output) decodes untiled here, one "
                             "latent frame at a time: set backbone.vae_tiling=false")
        self.boundary_ratio = None if boundary_ratio is None else float(boundary_ratio)
        self.guidance_scale_2 = None if guidance_scale_2 is None else float(guidance_scale_2)
        self.expand_timesteps = bool(expand_timesteps)
        self._expert = 0  # 0: transformer (high noise), 1: transformer_2 (low noise)

    # ------------------------------------------------------------------ loading
    def check_available(self) -> None:
        """WanBackbone's check, and a local A14B folder must hold the low-noise expert (`transformer_2/`)."""
        super().check_available()
        if self.boundary_ratio is not None and self.model_path and not self.random_weights:
            if not (Path(self._source) / "transformer_2").is_dir():
                raise UsageError(f"backbone.model_path={self._source} has no transformer_2/ (the low-noise expert of "
                                 f"{self.model_id}): download the whole model with `hf download {self.model_id} "
                                 f"--local-dir {self._source}`")

    # (pretrained: WanBackbone._load_pretrained; WanPipeline reads transformer_2, boundary_ratio, expand_timesteps)
    def _build_random(self):
        """Transformer(s) and VAE of the configured architecture with seeded random weights; `transformer_2` (the
        A14B's low-noise expert) from its own section or, if absent, the transformer's, drawn after it."""
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

        arch = {k: dict(v) for k, v in self.architecture.items()}
        for key in ("transformer", "transformer_2"):
            if "patch_size" in arch.get(key, {}):
                arch[key]["patch_size"] = tuple(arch[key]["patch_size"])
        two = self.boundary_ratio is not None
        # two 14B experts drawn in float32 would hold ~112 GB on the device before the cast, more than an H100's 80
        # GB: they are drawn in the model dtype (~56 GB in bf16) and the VAE cast to its own dtype after
        high, low, vae = self._seeded_build(lambda: (
            WanTransformer3DModel(**arch.get("transformer", {})),
            WanTransformer3DModel(**arch.get("transformer_2", arch.get("transformer", {}))) if two else None,
            AutoencoderKLWan(**arch.get("vae", {})),
        ), dtype=self.dtype if two else None)
        for model in (high, low):
            if model is not None:
                cast_like_pretrained(model, self.dtype).eval()
        cast_like_pretrained(vae, self.vae_dtype).eval()
        return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=high, transformer_2=low,
                           scheduler=self._euler_scheduler(arch.get("scheduler", {})),
                           boundary_ratio=self.boundary_ratio, expand_timesteps=self.expand_timesteps)

    def _check_loaded(self, pipe) -> None:
        super()._check_loaded(pipe)
        found = (pipe.config.boundary_ratio, bool(pipe.config.expand_timesteps), pipe.transformer_2 is not None)
        wanted = (self.boundary_ratio, self.expand_timesteps, self.boundary_ratio is not None)
        if found != wanted:
            raise UsageError(f"the loaded model has boundary_ratio={found[0]}, expand_timesteps={found[1]} and "
                             f"{'two experts' if found[2] else 'one transformer'}, but the backbone config says "
                             f"{wanted[0]}/{wanted[1]}: pick the matching backbone (wan2.2-ti2v-5b, wan2.2-t2v-a14b)")
        if found[2] and pipe.transformer_2.config.in_channels != pipe.transformer.config.in_channels:
            raise UsageError("the loaded A14B experts take different latent channels: the model folder is broken")

    def load(self) -> None:
        """WanBackbone's load, then the low-noise expert gets what the first transformer got (RIFLEx tables,
        attention kernel, fused GELU); compiling covers both (`_blocks`)."""
        super().load()
        low = self.pipe.transformer_2
        if low is None:
            return
        if self.riflex_plan is not None:
            riflex.patch_wan_rope(low.rope, self.riflex_plan)
        if self.attention_choice.kernel is not None:
            self.attention_choice.kernel.install(low)
        if self.fused_gelu_layers:
            self.fused_gelu_layers += fuse_gelu_projections(low)

    def _blocks(self) -> Sequence[torch.nn.Module]:
        low = self.pipe.transformer_2
        return [*self.pipe.transformer.blocks, *(low.blocks if low is not None else ())]

    # ------------------------------------------------------------------ denoising
    def _model(self) -> torch.nn.Module:
        return self.pipe.transformer_2 if self._expert == 1 else self.pipe.transformer

    # derived from diffusers pipelines/wan/pipeline_wan.py (WanPipeline.__call__, WanPipeline.__init__), version 0.42
    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """TI2V-5B: a timestep per token, every frame's tokens at the window's t ([b] → [b, F]; Wan's per-frame
        path spreads it over the tokens)."""
        if self.expand_timesteps and t.dim() == 1:
            t = t[:, None].expand(-1, x.shape[1])  # [b, F]
        return super()._call_transformer(x, emb, t)

    def _boundary(self) -> float:
        """The switch timestep: boundary_ratio · T (A14B T2V: 0.875 · 1000 = 875)."""
        return self.boundary_ratio * self.pipe.scheduler.config.num_train_timesteps

    # derived from diffusers pipelines/wan/pipeline_wan.py (WanPipeline.__call__), version 0.42
    def _predict(self, x_t: torch.Tensor, t, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        """One expert's prediction where all of the call's timesteps are on one side of the boundary (t ≥ boundary:
        the high-noise `transformer`), else per frame: both experts over the whole window, each frame's x̂0, ε̂ from
        its own expert (t [M] or [B, M], x_t [B, M, C, H, W])."""
        if self.boundary_ratio is None:
            return super()._predict(x_t, t, prompt_ids, guidance_scale)
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return self._expert_predict(float(t) >= self._boundary(), x_t, t, prompt_ids, guidance_scale)
        high = (t.to(torch.float32) >= self._boundary()).reshape(-1, t.shape[-1])  # [1 or B, M]
        if bool(high.all()) or not bool(high.any()):
            return self._expert_predict(bool(high.all()), x_t, t, prompt_ids, guidance_scale)
        first = self._expert_predict(True, x_t, t, prompt_ids, guidance_scale)
        second = self._expert_predict(False, x_t, t, prompt_ids, guidance_scale)
        pick = high.to(first.x0.device)[:, :, None, None, None]  # [1 or B, M, 1, 1, 1]
        return Prediction(x0=torch.where(pick, first.x0, second.x0), eps=torch.where(pick, first.eps, second.eps))

    def _expert_predict(self, high: bool, x_t: torch.Tensor, t, prompt_ids: Sequence[int],
                        guidance_scale: float) -> Prediction:
        """The guided prediction of one expert: the low-noise one at `guidance_scale_2` when set (guidance stays
        off for both when the caller's scale is ≤ 1, as the pipeline's classifier-free-guidance switch)."""
        self._expert = 0 if high else 1
        scale = guidance_scale
        if not high and self.guidance_scale_2 is not None and guidance_scale > 1.0:
            scale = self.guidance_scale_2
        # the layout in flight (ABAM, cross-shot, KV-sharing) learns which expert runs: the ones that keep
        # keys/values between predicts keep each expert's apart
        layout = self._anchor_layout
        try:
            with layout.on_model(self._expert) if layout is not None else contextlib.nullcontext():
                return super()._predict(x_t, t, prompt_ids, scale)
        finally:
            self._expert = 0

    # ------------------------------------------------------------------ attention processors
    def _attention_models(self) -> list[torch.nn.Module]:
        """ABAM, cross-shot attention, FreeLong and KV-sharing go into both experts (the A14B): each predict runs
        the expert(s) of its timesteps with the processors in place."""
        low = self.pipe.transformer_2
        return [self.pipe.transformer, *([low] if low is not None else [])]

    # ------------------------------------------------------------------ manifest
    def describe(self) -> dict:
        info = super().describe()
        info.update({"boundary_ratio": self.boundary_ratio, "guidance_scale_2": self.guidance_scale_2,
                     "expand_timesteps": self.expand_timesteps})
        return info

"""Wan 2.1 text-to-video (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models",
arXiv 2503.20314) behind the `Denoiser` seam, loaded with diffusers.

One class serves the Wan 2.1 T2V models; the YAML in `conf/backbone/` picks weights and geometry:
- `wan2.1-t2v-1.3b` / `wan2.1-t2v-14b`: trained weights from a hub id (`Wan-AI/Wan2.1-T2V-*-Diffusers`) or a local
  diffusers folder (`model_path`), UMT5-XXL text encoder (512 tokens), flow-matching transformer;
- `tiny-wan`, and any config with `random_weights: true`: the same transformer/VAE classes built from the
  `architecture` section with seeded random weights and the hashed stand-in text encoder (no download).

What is Wan-specific, and lives here:
- Rectified flow (SynCoS supplementary §A.2, Eq. 7): x_t = (1 − σ)·x0 + σ·ε with σ = t / T, t the model timestep
  and T = num_train_timesteps. At the seam this is a = 1 − σ, s = σ. The model predicts the velocity v = ε − x0
  (Eq. 9), so x̂0 = x_t − σ·v and ε̂ = x_t + (1 − σ)·v (`diffusion.flow_to_x0_eps`).
- The schedule: the Diffusers repositories ship a `UniPCMultistepScheduler` (a second-order multistep solver)
  with `flow_shift`; longgen's samplers take first-order steps themselves (DDIM with η = 0, which on a flow path is
  the Euler step), so the sampling σ come from `FlowMatchEulerDiscreteScheduler` with the same shift — the same
  treatment as CogVideoX, whose scheduler class is fixed to DDIM. σ = shift·u / (1 + (shift − 1)·u) is applied by
  that scheduler; `backbone.flow_shift` overrides the loaded value (diffusers' Wan docs: 3.0 for 480p, 5.0 for 720p).
- Layout: the seam is [B, F, C, H, W]; diffusers' Wan transformer and VAE take [B, C, F, H, W]. The permutes happen
  only at the transformer call and in the decode.
- Per-frame timesteps (`per_frame_timesteps = True`): Wan's transformer accepts a timestep per token; `predict`
  accepts one timestep per latent frame (t [M] for every window, or [B, M] one row per window), spread over that
  frame's tokens (for FIFO-Diffusion).
- ABAM, cross-shot attention and FreeLong on the self-attention layers (`anchor_attention.WanAnchorAttnProcessor`,
  `shot_attention.WanShotAttnProcessor`, `spectral_attention.WanSpectralProcessor`), on the kernel of
  `backbone.attention` (FlashAttention-3 included); DiTCtrl's KV-sharing computes with torch SDPA.
- `backbone.attention=fa3` (`WanFlashKernel`): FlashAttention-3 from fa3-fwd through longgen's `WanAttention`
  processor, else diffusers' `_flash_3` backend; `auto` never picks it on Wan (not measured on Wan's shapes).
- The VAE: temporal compression 4 with a causal first frame (L latent frames decode to 4·(L − 1) + 1 frames, any
  L), spatial 8, per-channel latent normalisation (latents_mean / latents_std). `decode_stream` decodes one latent
  frame at a time carrying the VAE's causal-convolution cache, exactly as `AutoencoderKLWan.decode` does;
  `encode_frames` encodes video frames for `longgen extend`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from longgen.backbones import attention, riflex
from longgen.backbones.anchor_attention import WanAnchorAttnProcessor
from longgen.backbones.attention import Kernel
from longgen.backbones.diffusers_base import (DiffusersBackbone, HostFrames, euler_scheduler, flow_shift_option,
                                              pixels_to_vae, stitch_tiles, vae_dtype_option)
from longgen.backbones.shot_attention import wan_shot
from longgen.diffusion import NoiseSchedule, flow_to_x0_eps
from longgen.parallel.units import Units
from longgen.errors import UsageError

#: backbone.attention=fa3 where fa3-fwd is not installed: diffusers' FlashAttention-3 backend (needs the
#: `flash_attn_interface` module of flash-attention's Hopper build)
FA3_BACKEND = "_flash_3"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class WanFlashKernel(Kernel):
    """FlashAttention-3 in every attention layer of a Wan transformer (`backbone.attention=fa3`): the forward kernels
    of the fa3-fwd package through longgen's `WanAttention` processor where fa3-fwd is installed (what the GPU image
    has), else diffusers' attention backend `FA3_BACKEND` where flash-attention's Hopper build is, else one line.
    `auto` never takes it on Wan: it is not measured against cuDNN on Wan's shapes."""

    def __init__(self) -> None:
        super().__init__("fa3", "FlashAttention-3")

    def source(self) -> str:
        """"fa3-fwd" or FA3_BACKEND: what runs here; one line when neither is installed."""
        if _installed("fa3_fwd_interface"):
            return "fa3-fwd"
        if _installed("flash_attn_interface"):
            return FA3_BACKEND
        raise UsageError(
            "backbone.attention=fa3 needs FlashAttention-3 on an H100/H200: pip install \"longgen[fa3]\" (the fa3-fwd "
            "package), or flash-attention's Hopper build (flash_attn_interface); or use backbone.attention=auto"
        )

    def check_installed(self) -> None:
        self.source()

    def check(self, device: torch.device) -> None:
        if self.source() == "fa3-fwd":
            attention.check_fa3(device)
            self.description = "FlashAttention-3 (fa3-fwd, longgen's Wan processor)"
            return
        if device.type != "cuda":
            raise UsageError("backbone.attention=fa3 runs on a CUDA GPU only: use backbone.attention=auto on the CPU")
        self.description = f"FlashAttention-3 (diffusers attention backend {FA3_BACKEND})"

    def install(self, transformer: torch.nn.Module) -> None:
        if self.source() == "fa3-fwd":
            transformer.set_attn_processor(attention.WanAttention("fa3"))
        else:
            transformer.set_attention_backend(FA3_BACKEND)


# derived from diffusers models/modeling_utils.py (ModelMixin.from_pretrained), version 0.42
def cast_like_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a model built in code to `dtype` the way `from_pretrained(torch_dtype=dtype)` loads it: the modules the
    class lists in `_keep_in_fp32_modules` (Wan: RoPE tables, time embedder, norms, modulation tables) stay float32,
    so a random-weight benchmark runs the kernels of the real model. (A model drawn in bf16, as the A14B's parts are,
    is cast up to a float32 `dtype` here too.)"""
    torch.nn.Module.to(model, dtype)  # the plain cast (diffusers' own `to` warns about exactly this case)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            torch.nn.Module.to(module, torch.float32)
    return model


class WanBackbone(DiffusersBackbone):
    """A Wan 2.1 text-to-video model. Construction only checks the configuration; `load()` loads weights."""

    family = "Wan"
    #: the shared options' defaults (DiffusersOptions) for Wan 2.1 T2V 1.3B; conf/backbone/wan2.1-t2v-1.3b.yaml gives
    #: them all
    option_defaults = dict(model_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dtype="bfloat16", num_frames=81, height=480,
                           width=832, fps=16, max_text_tokens=512, vae_tiling=False, micro_batch=2)
    example_config = "conf/backbone/tiny-wan.yaml"
    #: FlashAttention-3 by name only (fa3-fwd, else diffusers' backend): `auto` takes the SDPA kernel order (cuDNN
    #: first)
    attention_kernels = {"fa3": WanFlashKernel()}
    per_frame_timesteps = True

    def __init__(self, *, vae_dtype: str = "float32", flow_shift: float | None = None, **shared: Any) -> None:
        """`vae_dtype`, `flow_shift`: Wan's own options; `shared`: the DiffusersOptions, handed over whole."""
        super().__init__(**shared)
        self.vae_dtype = vae_dtype_option(vae_dtype)
        self.vae_dtype_name = vae_dtype
        self.flow_shift = flow_shift_option(flow_shift)
        self._check_riflex(self.architecture.get("transformer", {}))  # the config's model: before any download

    def _check_riflex(self, transformer_config: Any) -> None:
        """A component `backbone.riflex=K` against the temporal RoPE of the transformer this config describes."""
        head = transformer_config.get("attention_head_dim")
        riflex.check_component(self.riflex, None if head is None else riflex.wan_temporal_dim(int(head)))

    def check_sequence(self, frames: int) -> None:
        """A whole-video sequence against the RoPE table of the configured transformer (`rope_max_seq_len`,
        diffusers' default 1024 where the config names none, as the released Wan checkpoints); `_spectral_processor`
        checks the loaded model's."""
        most = int(self.architecture.get("transformer", {}).get("rope_max_seq_len", 1024))
        if frames > most:
            raise UsageError(f"FreeLong runs all {frames} latent frames as one sequence, but this Wan's RoPE table "
                             f"covers {most}: ask for at most {most} latent frames")

    def check_available(self) -> None:
        super().check_available()
        config = Path(self._source or "") / "transformer" / "config.json"
        if self.riflex and not self.random_weights and config.is_file():
            self._check_riflex(json.loads(config.read_text(encoding="utf-8")))

    # ------------------------------------------------------------------ loading
    def _euler_scheduler(self, config):
        """diffusers_base.euler_scheduler with `backbone.flow_shift`."""
        return euler_scheduler(config, self.flow_shift)

    def _load_pretrained(self, source: str):
        from diffusers import AutoencoderKLWan, WanPipeline

        # the VAE in its own dtype (float32: diffusers' Wan docs recommend it for decoding quality)
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=self.vae_dtype)
        pipe = WanPipeline.from_pretrained(source, vae=vae, torch_dtype=self.dtype)
        pipe.scheduler = self._euler_scheduler(pipe.scheduler.config)
        return pipe

    def _build_random(self):
        """Transformer and VAE of the configured architecture with seeded random weights; no tokenizer/UMT5."""
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

        arch = {k: dict(v) for k, v in self.architecture.items()}
        for key in ("patch_size",):
            if key in arch.get("transformer", {}):
                arch["transformer"][key] = tuple(arch["transformer"][key])
        transformer, vae = self._seeded_build(lambda: (
            WanTransformer3DModel(**arch.get("transformer", {})),
            AutoencoderKLWan(**arch.get("vae", {})),
        ))
        cast_like_pretrained(transformer, self.dtype).eval()
        cast_like_pretrained(vae, self.vae_dtype).eval()
        scheduler = self._euler_scheduler(arch.get("scheduler", {}))
        return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)

    def _check_loaded(self, pipe) -> None:
        vcfg, tcfg = pipe.vae.config, pipe.transformer.config
        found = (vcfg.scale_factor_temporal, vcfg.scale_factor_spatial, tcfg.in_channels)
        wanted = (self.temporal_compression, self.spatial_compression, self.latent_shape[0])
        if found != wanted or vcfg.z_dim != tcfg.in_channels:
            raise UsageError(
                f"the loaded model has temporal/spatial compression {found[0]}/{found[1]} and {found[2]} latent "
                f"channels, but the backbone config says {wanted[0]}/{wanted[1]}/{wanted[2]}: fix conf/backbone or "
                f"pick the matching backbone"
            )
        if tuple(tcfg.patch_size) != (1, 2, 2):
            raise UsageError(f"the loaded Wan transformer has patch size {tuple(tcfg.patch_size)}; longgen needs (1, 2, 2)")

    def load(self) -> None:
        super().load()
        if self.riflex is not None:  # RIFLEx: lower one temporal frequency of the rotary module's tables
            rope = self.pipe.transformer.rope
            self.riflex_plan = riflex.plan(self.riflex, rope.t_dim, 10000.0, self.native_window)
            riflex.patch_wan_rope(rope, self.riflex_plan)

    def _blocks(self) -> Sequence[torch.nn.Module]:
        return self.pipe.transformer.blocks

    def _text_shape(self) -> tuple[int, int]:
        return self.max_text_tokens, self.pipe.transformer.config.text_dim

    # ------------------------------------------------------------------ denoising
    def schedule(self, num_steps: int) -> NoiseSchedule:
        sched = self.pipe.scheduler
        sched.set_timesteps(num_steps, device="cpu")
        ts = tuple(float(t) for t in sched.timesteps)  # σ_i·T, shift applied by the scheduler
        return NoiseSchedule.flow(ts, final_sigma=float(sched.sigmas[-1]),
                                  num_train_timesteps=sched.config.num_train_timesteps)

    def _sigma(self, t) -> float | torch.Tensor:
        """σ = t / T: a float for one timestep; per-frame timesteps t [M] or [B, M] give [1 or B, M, 1, 1, 1]."""
        T = self.pipe.scheduler.config.num_train_timesteps
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            frames = t.to(self.device, torch.float64).reshape(-1, t.shape[-1])  # [1 or B, M]
            return (frames / T).float()[:, :, None, None, None]  # [1 or B, M, 1, 1, 1]
        return float(t) / T

    def _timesteps(self, t, rows: int) -> torch.Tensor:
        """[rows] float32 for one timestep; [rows, M] for per-frame timesteps (t [M], or [B, M] with rows a multiple
        of B: the guidance branches are stacked window-major within each branch)."""
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            frames = t.to(self.device, torch.float32).reshape(-1, t.shape[-1])  # [1 or B, M]
            return frames.repeat(rows // frames.shape[0], 1)  # [rows, M]
        return torch.full((rows,), float(t), dtype=torch.float32, device=self.device)  # [rows]

    def _model(self) -> torch.nn.Module:
        """The transformer the next call runs (Wan 2.2 A14B: the expert of the current timestep, wan22.py)."""
        return self.pipe.transformer

    # derived from diffusers models/transformers/transformer_wan.py (WanTransformer3DModel.forward), version 0.42
    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [b, F, C, H, W]; t: [b] or [b, F] (per frame) → velocity [b, F, C, H, W]."""
        if t.dim() == 2:  # per frame → per token: each frame has (H/2)·(W/2) patch tokens, frames outermost
            if t.shape[1] != x.shape[1]:
                raise ValueError(f"{t.shape[1]} per-frame timesteps for windows of {x.shape[1]} latent frames")
            tokens = (x.shape[3] // 2) * (x.shape[4] // 2)
            t = t.repeat_interleave(tokens, dim=1)  # [b, F·(H/2)·(W/2)]
        out = self._model()(
            hidden_states=x.permute(0, 2, 1, 3, 4),  # [b, C, F, H, W]
            timestep=t,
            **self._context(emb),
            return_dict=False,
        )[0]  # [b, C, F, H, W]
        return out.permute(0, 2, 1, 3, 4)  # [b, F, C, H, W]

    def _context(self, emb: torch.Tensor) -> dict:
        """The transformer's cross-attention inputs from the rows' context emb [b, S, D] (text only here; Wan I2V
        also carries its image context, longgen/backbones/image_conditioning.py)."""
        return {"encoder_hidden_states": emb}

    def _to_x0_eps(self, x_t: torch.Tensor, out: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_to_x0_eps(x_t, out, self._sigma(t))

    def _processor_kernel(self) -> str:
        """The kernel FreeLong's op computes with: FlashAttention-3 where `backbone.attention=fa3` runs fa3-fwd,
        else torch SDPA (ABAM and cross-shot attention take the kernel of the processor they replace)."""
        kernel = self.attention_choice.kernel
        return "fa3" if isinstance(kernel, WanFlashKernel) and kernel.source() == "fa3-fwd" else "sdpa"

    def _anchor_processors(self) -> dict:
        return {"processor": WanAnchorAttnProcessor, "layers": lambda name: name.endswith(".attn1.processor")}

    def _shot_processors(self) -> dict:
        return {"processor": wan_shot(), "layers": lambda name: name.endswith(".attn1.processor")}

    def _spectral_processor(self, frames: int, plan) -> tuple:
        """FreeLong's processor on the self-attention layers; one line where the RoPE table is too short."""
        from dataclasses import replace

        from longgen.backbones.spectral_attention import WanSpectralProcessor, shared_processor

        most = min(model.config.rope_max_seq_len for model in self._attention_models())
        if frames > most:
            raise UsageError(f"FreeLong runs all {frames} latent frames as one sequence, but this Wan's RoPE table "
                             f"covers {most}: ask for at most {most} latent frames")
        plan = replace(plan, kernel=self._processor_kernel())
        return shared_processor(WanSpectralProcessor, plan), lambda name: name.endswith(".attn1.processor")

    def _kv_processors(self) -> dict:
        """DiTCtrl's KV-sharing on the self-attention layers, its mask from the cross-attention layers."""
        from longgen.backbones.kv_sharing import wan_kv

        return wan_kv()

    # ------------------------------------------------------------------ decoding
    # derived from diffusers pipelines/wan/pipeline_wan.py (WanPipeline.__call__), version 0.42
    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Seam latents [1, L, C, H, W] (normalised) → the VAE's [1, C, L, H, W] scale, in the VAE's dtype:
        z·std + mean per channel, written as WanPipeline writes it (z / (1/std) + mean) so the decode is the
        pipeline's."""
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype).permute(0, 2, 1, 3, 4)  # [1, C, L, H, W]
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        return z / inv_std + mean

    # derived from diffusers pipelines/wan/pipeline_wan.py (WanPipeline.__call__), version 0.42
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames [f, H, W, 3] with f = 4·(L − 1) + 1 → latents [1, L, C, h, w] float32 on the seam's scale:
        the mean of the VAE's posterior, normalised per channel ((z − mean)/std), the inverse of `_vae_input`."""
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        z = vae.encode(pixels_to_vae(frames, self.device, vae.dtype)).latent_dist.mode()  # [1, C, L, h, w]
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        return ((z - mean) * inv_std).permute(0, 2, 1, 3, 4).float()  # [1, L, C, h, w]

    # derived from diffusers models/autoencoders/autoencoder_kl_wan.py (AutoencoderKLWan._decode), version 0.42
    @torch.no_grad()
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Decode [1, L, C, H, W] latents to uint8 RGB frames [f, H, W, 3], one latent frame (1, then 4 video
        frames) at a time.

        `AutoencoderKLWan.decode` runs its decoder on one latent frame at a time, carrying a cache of the last
        frames each causal 3D convolution saw (`feat_cache`, one slot per causal conv, in call order) and marking
        the first frame (`first_chunk`). This walks the same loop and yields each frame group as it is decoded, so
        the frames equal a whole decode while memory stays that of one latent frame plus the cache. With tiling on,
        each spatial tile keeps its own cache and the tiles of each frame group are blended with the VAE's blend
        functions (equal to `tiled_decode`). The tiles (or the whole frame, untiled) are units of work
        (`self.units`): on several processes tile k of every frame runs on rank k mod N, which keeps its cache.
        """
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        patch = vae.config.patch_size  # Wan 2.2's VAE: the decoder's output is unpatchified (None: Wan 2.1)
        z = self._vae_input(latents)  # [1, C, L, h, w]
        slots = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())  # cache slots per decoder
        tile_h = vae.tile_sample_min_height // vae.spatial_compression_ratio
        tile_w = vae.tile_sample_min_width // vae.spatial_compression_ratio
        tiled = vae.use_tiling and (z.shape[4] > tile_w or z.shape[3] > tile_h)
        if tiled and patch is not None:
            raise UsageError("backbone.vae_tiling=true: the Wan 2.2 VAE (patchified output) decodes untiled here, one "
                             "latent frame at a time: set backbone.vae_tiling=false")
        if not tiled:
            x = vae.post_quant_conv(z)  # [1, C, L, h, w]: a 1×1×1 convolution, frame by frame the same
            cache = [None] * slots
        caches: dict[tuple[int, int], list] = {}
        pending = None  # the previous frame group on its way to the host
        for k in range(z.shape[2]):
            if tiled:
                pix = self._decode_tiles(vae, z[:, :, k : k + 1], caches, slots, first=k == 0, units=self.units)
            else:

                def whole(unit: int, k=k) -> torch.Tensor:
                    out = vae.decoder(x[:, :, k : k + 1], feat_cache=cache, feat_idx=[0], first_chunk=k == 0)
                    return out if patch is None else unpatchify(out, patch_size=patch)  # [1, 3, f, H, W]

                pix = self.units.map(whole, [1], kind="decode", wait=False)[0]  # one unit: rank 0 decodes
            # this group's kernels are queued: hand over the previous group while the device works on this one
            if pending is not None:
                yield pending.wait()
            pending = HostFrames(pix[0].clamp(-1.0, 1.0))  # [3, f, H, W], as the VAE's decode clamps
        if pending is not None:
            yield pending.wait()

    # derived from diffusers models/autoencoders/autoencoder_kl_wan.py (AutoencoderKLWan.tiled_decode), version 0.42
    @staticmethod
    def _decode_tiles(vae, z: torch.Tensor, caches: dict, slots: int, first: bool, units=None) -> torch.Tensor:
        """Spatially tiled decode of one latent frame z [1, C, 1, h, w] → [1, 3, f, H, W] (tiles overlap by the
        VAE's tile size minus its stride and are blended by its blend functions, then cropped to the stride)."""
        th = vae.tile_sample_min_height // vae.spatial_compression_ratio
        tw = vae.tile_sample_min_width // vae.spatial_compression_ratio
        step_h = vae.tile_sample_stride_height // vae.spatial_compression_ratio
        step_w = vae.tile_sample_stride_width // vae.spatial_compression_ratio
        blend_h = vae.tile_sample_min_height - vae.tile_sample_stride_height
        blend_w = vae.tile_sample_min_width - vae.tile_sample_stride_width
        keep_h, keep_w = vae.tile_sample_stride_height, vae.tile_sample_stride_width
        starts_h, starts_w = range(0, z.shape[3], step_h), range(0, z.shape[4], step_w)
        tiles = [(i, j) for i in starts_h for j in starts_w]

        def decode_tile(k: int) -> torch.Tensor:
            i, j = tiles[k]
            cache = caches.setdefault((i, j), [None] * slots)
            tile = vae.post_quant_conv(z[:, :, :, i : i + th, j : j + tw])  # [1, C, 1, th, tw]
            return vae.decoder(tile, feat_cache=cache, feat_idx=[0], first_chunk=first)

        decoded = (units or Units()).map(decode_tile, [1] * len(tiles), kind="decode")
        frames = stitch_tiles(vae, decoded, len(starts_w), (blend_h, blend_w), (keep_h, keep_w))
        height = z.shape[3] * vae.spatial_compression_ratio
        width = z.shape[4] * vae.spatial_compression_ratio
        return frames[:, :, :, :height, :width]  # [1, 3, f, H, W]

    # ------------------------------------------------------------------ manifest
    def describe(self) -> dict:
        info = super().describe()
        info.update({
            "vae_dtype": self.vae_dtype_name,
            "flow_shift": float(self.pipe.scheduler.shift) if self.pipe is not None else self.flow_shift,
        })
        return info

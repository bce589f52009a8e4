"""HunyuanVideo 1.5 text-to-video (Tencent Hunyuan, 8.3B) behind the `Denoiser` seam, loaded with diffusers 0.42
(`HunyuanVideo15Pipeline`).

One class serves the model; the YAML in `conf/backbone/` picks weights and geometry:
- `hunyuanvideo-1.5`: trained weights from a hub id (`hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v`, the id
  diffusers' own example uses) or a local diffusers folder (`model_path`);
- `tiny-hunyuan15`, and any config with `random_weights: true`: the same transformer/VAE classes built from the
  `architecture` section with seeded random weights and hashed stand-in text encoders (no download).

What is HunyuanVideo-1.5-specific, and lives here:
- Two text encoders. Qwen2.5-VL (chat template, hidden states two layers from the top, the template's first 108
  tokens cropped, `max_text_tokens` = 1000 tokens with an attention mask) and ByT5 on the quoted glyph texts of the
  prompt (256 byte tokens; a prompt without quotes gets zeros and an all-zero mask), both through the pipeline's
  own `encode_prompt`. The shared base keeps one embedding table [P, S, D]; this family packs each prompt's four
  tensors into one row of it (`pack_text`): rows 0..S1−1 the Qwen states, rows S1..S1+S2−1 the ByT5 states (zero
  padded to the wider width), the last column each row's mask. CFG stacking and micro-batching then slice it
  like any embedding, and the transformer call unpacks it (`unpack_text`).
- Rectified flow, velocity prediction (v = ε − x0) as Wan: a = 1 − σ, s = σ, σ = t / T; x̂0 = x_t − σ·v.
- The schedule: the pipeline passes σ = linspace(1, 0, N + 1)[:−1] to its `FlowMatchEulerDiscreteScheduler`, which
  applies the shift; `schedule` asks the scheduler for the same σ (not its default `set_timesteps(N)` spacing).
  `backbone.flow_shift` overrides the loaded shift.
- The transformer input is [latents, zero condition latents, zero mask] on the channel axis (2C + 1 channels; the
  image-to-video model fills the last two) and 729 all-zero vision tokens (the t2v switch inside the model); the
  timestep is cast to the model dtype, as the pipeline does.
- One timestep per sample only: the time embedding modulates every token alike (`HunyuanVideo15TimeEmbedding`
  gives one vector per sample), so `per_frame_timesteps = False` and FIFO-Diffusion refuses in one line.
- The VAE: temporal compression 4 with a causal first frame (4·(L − 1) + 1 frames), spatial 16, latents scaled by
  `scaling_factor`. Its decoder's middle block attends across all latent frames, so there is no per-frame cache
  to stream with (unlike Wan's); `decode_stream` runs one `vae.decode` (spatially tiled with `vae_tiling`, the
  VAE's own tiled decode) and hands the frames over a few at a time.
- The joint attention layers of its 54 double-stream blocks (no single-stream blocks) put the video tokens first
  and the text tokens (image, ByT5, Qwen; valid ones first) after them under a padding mask. longgen's processors
  go on those layers (not on the text refiner's) and keep that mask: FreeLong's spectral blend attention runs its
  text-first op row by row on the valid text tokens (attention.py `valid_text_first`); DiTCtrl's KV-sharing
  keeps each source row's text mask with its keys, and its subject mask (`sampler.subject_tokens`: positions among
  the prompt's Qwen tokens, as on CogVideoX among its T5 tokens) reads each row's map at that row's own text key
  positions (after its valid ByT5 tokens; kv_sharing.py `hunyuan_subject_keys`); GLC's
  anchor attention (ABAM) and cross-shot attention rewrite the video keys/values under the stock mask.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from longgen.backbones.diffusers_base import (DiffusersBackbone, HostFrames, euler_scheduler, flow_shift_option,
                                              pixels_to_vae, vae_dtype_option)
from longgen.backbones.hashed_text import hashed_embedding, tokenize
from longgen.backbones.pil_fallback import pil_fallback_quiet
from longgen.backbones.prefix_attention import HunyuanPrefixKernel
from longgen.backbones.wan import cast_like_pretrained
from longgen.diffusion import NoiseSchedule, flow_to_x0_eps
from longgen.errors import UsageError
from longgen.story import check_text_limit

#: vision tokens the pipeline feeds the t2v model (all zero: `HunyuanVideo15Pipeline.vision_num_semantic_tokens`)
VISION_TOKENS = 729
#: video frames handed to the writer per yield of `decode_stream`
FRAMES_PER_YIELD = 16


def pack_text(qwen: torch.Tensor, qwen_mask: torch.Tensor, byt5: torch.Tensor, byt5_mask: torch.Tensor) -> torch.Tensor:
    """The four text tensors of n prompts → one table [n, S1 + S2, max(D1, D2) + 1]: the Qwen states [n, S1, D1]
    in rows :S1, the ByT5 states [n, S2, D2] in rows S1:, zero padded to the wider width, each row's mask in the
    last column."""
    n, s1, d1 = qwen.shape
    _, s2, d2 = byt5.shape
    width = max(d1, d2)
    out = torch.zeros(n, s1 + s2, width + 1, dtype=qwen.dtype, device=qwen.device)
    out[:, :s1, :d1] = qwen
    out[:, s1:, :d2] = byt5.to(qwen.dtype)
    out[:, :s1, -1] = qwen_mask.to(qwen.dtype)
    out[:, s1:, -1] = byt5_mask.to(qwen.dtype)
    return out


def unpack_text(table: torch.Tensor, s1: int, d1: int, d2: int) -> dict[str, torch.Tensor]:
    """`pack_text`'s inverse: the transformer's four text keyword arguments from rows [b, S1 + S2, D + 1]."""
    return {
        "encoder_hidden_states": table[:, :s1, :d1],  # [b, S1, D1]
        "encoder_attention_mask": table[:, :s1, -1],  # [b, S1]
        "encoder_hidden_states_2": table[:, s1:, :d2],  # [b, S2, D2]
        "encoder_attention_mask_2": table[:, s1:, -1],  # [b, S2]
    }


def joint_layers(name: str) -> bool:
    """Whether a processor name is a joint text-video attention layer (one per double-stream block; the text token
    refiner's self-attention layers are not)."""
    return name.startswith("transformer_blocks.")


def has_lora_loader() -> bool:
    """Whether diffusers' HunyuanVideo 1.5 pipelines load LoRAs (0.42's do not: no LoRA loader mixin)."""
    with pil_fallback_quiet():  # the I2V module's SigLIP processor: its torchvision note is noise (pil_fallback.py)
        from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    pipelines = (HunyuanVideo15Pipeline, HunyuanVideo15ImageToVideoPipeline)
    return all(hasattr(pipe, "load_lora_weights") for pipe in pipelines)


class HunyuanVideo15Backbone(DiffusersBackbone):
    """A HunyuanVideo 1.5 text-to-video model. Construction only checks the configuration; `load()` loads
    weights."""

    family = "HunyuanVideo 1.5"
    #: the shared options' defaults (DiffusersOptions) for the 480p t2v model; conf/backbone/hunyuanvideo-1.5.yaml
    #: gives them all
    option_defaults = dict(model_id="hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v", dtype="bfloat16",
                           num_frames=121, height=480, width=848, fps=24, latent_channels=32, temporal_compression=4,
                           spatial_compression=16, max_text_tokens=1000, vae_tiling=True, micro_batch=2)
    example_config = "conf/backbone/tiny-hunyuan15.yaml"
    patch_size = 1
    per_frame_timesteps = False
    #: attention over each row's valid tokens on the joint layers (prefix_attention.py): `auto` takes `valid-prefix`
    #: (torch SDPA, cuDNN first); `fa3` by name. The SDPA set names (`sdpa`, `cudnn`, ...) keep the stock masked
    #: processors.
    attention_kernels = {name: HunyuanPrefixKernel(name, joint_layers) for name in ("valid-prefix", "fa3")}
    auto_attention = ("valid-prefix",)

    def __init__(self, *, vae_dtype: str = "bfloat16", flow_shift: float | None = None, glyph_tokens: int = 256,
                 **shared: Any) -> None:
        """`vae_dtype`, `flow_shift`, `glyph_tokens` (ByT5 tokens per prompt): this family's own options; `shared`:
        the DiffusersOptions, handed over whole."""
        super().__init__(**shared)
        self.vae_dtype_name, self.vae_dtype = vae_dtype, vae_dtype_option(vae_dtype)
        self.flow_shift = flow_shift_option(flow_shift)
        if glyph_tokens < 1:
            raise UsageError(f"backbone.glyph_tokens={glyph_tokens} must be >= 1")
        if self.riflex is not None:
            raise UsageError("backbone.riflex is not supported on HunyuanVideo 1.5 (no RIFLEx patch for its rotary "
                             "embedding): set backbone.riflex=false")
        if self.loras and not has_lora_loader():
            raise UsageError("backbone.lora: diffusers' HunyuanVideo 1.5 pipelines have no LoRA loader "
                             "(load_lora_weights): drop backbone.lora")
        self.glyph_tokens = glyph_tokens

    # ------------------------------------------------------------------ loading
    def _euler_scheduler(self, config):
        """diffusers_base.euler_scheduler with `backbone.flow_shift` (HunyuanVideo 1.5 ships a FlowMatch scheduler)."""
        return euler_scheduler(config, self.flow_shift)

    def _load_pretrained(self, source: str):
        from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Pipeline

        vae = AutoencoderKLHunyuanVideo15.from_pretrained(source, subfolder="vae", torch_dtype=self.vae_dtype)
        pipe = HunyuanVideo15Pipeline.from_pretrained(source, vae=vae, torch_dtype=self.dtype)
        pipe.scheduler = self._euler_scheduler(pipe.scheduler.config)
        pipe.tokenizer_max_length = self.max_text_tokens
        pipe.tokenizer_2_max_length = self.glyph_tokens
        return pipe

    def _build_random(self):
        """Transformer and VAE of the configured architecture with seeded random weights; no tokenizers/encoders
        (the hashed stand-ins take their place)."""
        from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel

        arch = {k: dict(v) for k, v in self.architecture.items()}
        for part, key in (("transformer", "rope_axes_dim"), ("vae", "block_out_channels")):
            if key in arch.get(part, {}):
                arch[part][key] = tuple(arch[part][key])
        # drawn in the model dtype: the 8.3B transformer in float32 would hold 33 GB on the device before its cast,
        # twice what it runs in (several lane processes share one GPU)
        transformer, vae = self._seeded_build(lambda: (
            HunyuanVideo15Transformer3DModel(**arch.get("transformer", {})),
            AutoencoderKLHunyuanVideo15(**arch.get("vae", {})),
        ), dtype=self.dtype)
        cast_like_pretrained(transformer, self.dtype).eval()
        cast_like_pretrained(vae, self.vae_dtype).eval()
        return HunyuanVideo15Pipeline(
            text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
            scheduler=self._euler_scheduler(arch.get("scheduler", {})), text_encoder_2=None, tokenizer_2=None,
            guider=None,  # guidance is the seam's (`predict`), never the pipeline's guider
        )

    def _check_loaded(self, pipe) -> None:
        vcfg, tcfg = pipe.vae.config, pipe.transformer.config
        found = (vcfg.temporal_compression_ratio, vcfg.spatial_compression_ratio, vcfg.latent_channels)
        wanted = (self.temporal_compression, self.spatial_compression, self.latent_shape[0])
        if found != wanted or tcfg.in_channels != 2 * vcfg.latent_channels + 1:
            raise UsageError(
                f"the loaded model has temporal/spatial compression {found[0]}/{found[1]} and {found[2]} latent "
                f"channels, but the backbone config says {wanted[0]}/{wanted[1]}/{wanted[2]}: fix conf/backbone or "
                f"pick the matching backbone"
            )
        if (tcfg.patch_size, tcfg.patch_size_t) != (1, 1):
            raise UsageError(f"the loaded HunyuanVideo 1.5 transformer has patch size {tcfg.patch_size_t}×"
                             f"{tcfg.patch_size}²; longgen needs 1×1²")

    def _blocks(self) -> Sequence[torch.nn.Module]:
        return self.pipe.transformer.transformer_blocks

    def _text_shape(self) -> tuple[int, int]:
        return self.max_text_tokens, self.pipe.transformer.config.text_embed_dim

    # ------------------------------------------------------------------ text
    def _text_widths(self) -> tuple[int, int, int]:
        """(S1, D1, D2): Qwen tokens, Qwen width, ByT5 width of the packed table."""
        cfg = self.pipe.transformer.config
        return self.max_text_tokens, cfg.text_embed_dim, cfg.text_embed_2_dim

    def other_text_limits(self, prompts: Sequence[tuple[str, str]], strict: bool) -> list[str]:
        """ByT5 reads a prompt's quoted text (the pipeline's `extract_glyph_texts`: "…" or “…”, each written
        'Text "…". ') as UTF-8 bytes plus </s>, 3 per Chinese character, and the pipeline cuts it at glyph_tokens
        without a word; the stand-in encoder of random weights counts its own tokens."""
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts

        glyphs = [(f"{label}'s quoted text", extract_glyph_texts(text) or "") for label, text in prompts]

        def count(glyph: str) -> tuple[int, bool]:
            return (len(tokenize(glyph)) if self.random_weights else len(glyph.encode("utf-8")) + 1), True

        return check_text_limit(glyphs, count, self.glyph_tokens,
                                f"{self.label}'s ByT5 glyph encoder (backbone.glyph_tokens)", strict)

    def _hashed_texts(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """The stand-in encoders: hashed word vectors for the prompt (mask over its words, at least one position, as
        the real template always leaves tokens) and for its glyph texts (zeros, all-zero mask, without quotes)."""
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts

        s1, d1, d2 = self._text_widths()
        s2 = self.glyph_tokens
        qwen = torch.stack([hashed_embedding(t, s1, d1) for t in texts])  # [n, S1, D1]
        qwen_mask = torch.stack([torch.arange(s1) < max(1, len(tokenize(t))) for t in texts]).float()  # [n, S1]
        byt5, byt5_mask = torch.zeros(len(texts), s2, d2), torch.zeros(len(texts), s2)  # [n, S2, D2], [n, S2]
        for i, text in enumerate(texts):
            glyphs = extract_glyph_texts(text)
            if glyphs is not None:
                byt5[i] = hashed_embedding(glyphs, s2, d2)
                byt5_mask[i] = (torch.arange(s2) < len(tokenize(glyphs))).float()
        return qwen, qwen_mask, byt5, byt5_mask

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[n, S1 + S2, D + 1] packed text table (`pack_text`), in the model dtype on the device."""
        if self.random_weights:
            parts = self._hashed_texts(texts)
        else:
            parts = self.pipe.encode_prompt(prompt=texts, device=self.device, dtype=self.dtype,
                                            batch_size=len(texts))
        return pack_text(*(p.to(self.device, self.dtype) for p in parts))

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str = "") -> list[int]:
        """The base's encode (and its text encoder policy), the same policy then applied to the ByT5 encoder."""
        ids = super().encode_prompts(prompts, negative_prompt)
        te2 = getattr(self.pipe, "text_encoder_2", None)
        if te2 is not None and not self.cpu_offload:
            if self.text_encoder_policy == "release":
                self.pipe.text_encoder_2 = None
            elif self.text_encoder_policy == "cpu":
                te2.to("cpu")
        return ids

    # ------------------------------------------------------------------ denoising
    # derived from diffusers pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py (HunyuanVideo15Pipeline.__call__), version 0.42
    def schedule(self, num_steps: int) -> NoiseSchedule:
        """The pipeline's σ = linspace(1, 0, N + 1)[:−1], shifted by the scheduler; the last step goes to σ = 0."""
        sched = self.pipe.scheduler
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist(), device="cpu")
        ts = tuple(float(t) for t in sched.timesteps)  # σ_i·T, shift applied
        return NoiseSchedule.flow(ts, final_sigma=float(sched.sigmas[-1]),
                                  num_train_timesteps=sched.config.num_train_timesteps)

    def _timesteps(self, t, rows: int) -> torch.Tensor:
        return torch.full((rows,), float(t), dtype=torch.float32, device=self.device)  # [rows]

    # derived from diffusers pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py (HunyuanVideo15Pipeline.__call__), version 0.42
    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [b, F, C, H, W]; emb: packed text rows [b, S1 + S2, D + 1]; t: [b] → velocity [b, F, C, H, W]."""
        hidden, vision, text = self._model_inputs(x.permute(0, 2, 1, 3, 4), emb)  # [b, 2C + 1, F, H, W], [b, N, Dimg]
        out = self.pipe.transformer(
            hidden_states=hidden,
            timestep=t.to(hidden.dtype),  # the pipeline casts the timestep to the latents' dtype
            image_embeds=vision,
            return_dict=False,
            **unpack_text(text, *self._text_widths()),
        )[0]  # [b, C, F, H, W]
        return out.permute(0, 2, 1, 3, 4)  # [b, F, C, H, W]

    def _model_inputs(self, hidden: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The text-to-video inputs: latents [b, C, F, H, W] followed by zero condition latents and a zero mask
        ([b, 2C + 1, F, H, W]), 729 zero vision tokens [b, 729, Dimg] (the model's t2v switch), the text rows as
        given. The image-to-video subclass (hunyuan15_i2v.py) takes its conditions from its inputs instead."""
        b, c, f, h, w = hidden.shape
        condition = torch.zeros(b, c + 1, f, h, w, dtype=hidden.dtype, device=hidden.device)  # t2v: no image
        cfg = self.pipe.transformer.config
        vision = torch.zeros(b, VISION_TOKENS, cfg.image_embed_dim, dtype=hidden.dtype, device=hidden.device)
        return torch.cat([hidden, condition], dim=1), vision, emb

    def _to_x0_eps(self, x_t: torch.Tensor, out: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_to_x0_eps(x_t, out, float(t) / self.pipe.scheduler.config.num_train_timesteps)

    def _anchor_processors(self) -> dict:
        """ABAM on the joint attention layers of the double-stream blocks (anchor_attention.py)."""
        from longgen.backbones.anchor_attention import hunyuan_anchor

        return {"processor": hunyuan_anchor(), "layers": joint_layers}

    def _shot_processors(self) -> dict:
        """Cross-shot attention on the joint attention layers of the double-stream blocks (shot_attention.py)."""
        from longgen.backbones.shot_attention import hunyuan_shot

        return {"processor": hunyuan_shot(), "layers": joint_layers}

    def _spectral_processor(self, frames: int, plan) -> tuple:
        """FreeLong's processor on the joint attention layers of the double-stream blocks (not the text refiner's),
        on torch SDPA; the 3-D RoPE is computed for any number of frames."""
        from dataclasses import replace

        from longgen.backbones.spectral_attention import HunyuanSpectralProcessor, shared_processor

        plan = replace(plan, kernel="sdpa")
        return shared_processor(HunyuanSpectralProcessor, plan), joint_layers

    def _kv_processors(self) -> dict:
        """DiTCtrl's KV-sharing on the joint attention layers (torch SDPA; longgen/backbones/kv_sharing.py)."""
        from longgen.backbones.kv_sharing import hunyuan_kv

        return hunyuan_kv()

    # ------------------------------------------------------------------ video
    # derived from diffusers pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py (HunyuanVideo15Pipeline.__call__), version 0.42
    @torch.no_grad()
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Latents [1, L, C, h, w] → uint8 RGB frames [f, H, W, 3], `FRAMES_PER_YIELD` at a time, from one
        `vae.decode` of latents / scaling_factor (spatially tiled when the VAE's tiling is on)."""
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        z = latents.to(self.device, vae.dtype).permute(0, 2, 1, 3, 4) / vae.config.scaling_factor  # [1, C, L, h, w]
        pix = self.units.map(lambda unit: vae.decode(z, return_dict=False)[0], [1], kind="decode")[0]  # [1, 3, f, H, W]
        for start in range(0, pix.shape[2], FRAMES_PER_YIELD):
            yield HostFrames(pix[0, :, start : start + FRAMES_PER_YIELD].clamp(-1.0, 1.0)).wait()

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames [f, H, W, 3], f = 4·(L − 1) + 1 → latents [1, L, C, h, w] float32 on the seam's scale
        (the posterior's mode × scaling_factor, the inverse of the decode's division)."""
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(vae)
        z = vae.encode(pixels_to_vae(frames, self.device, vae.dtype)).latent_dist.mode()  # [1, C, L, h, w]
        return (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4).float()  # [1, L, C, h, w]

    # ------------------------------------------------------------------ manifest
    def describe(self) -> dict:
        info = super().describe()
        info.update({
            "vae_dtype": self.vae_dtype_name,
            "flow_shift": float(self.pipe.scheduler.shift) if self.pipe is not None else self.flow_shift,
            "glyph_tokens": self.glyph_tokens,
        })
        return info

"""HunyuanVideo 1.5 image-to-video behind the `Denoiser` seam, as diffusers 0.42 runs it
(pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5_image2video.py, `HunyuanVideo15ImageToVideoPipeline`).

The text-to-video family (hunyuan15.py) already feeds its transformer [latents, condition latents, mask] on the
channel axis and a block of vision tokens, all zero; this model fills them. Per window, with the condition table
every image-to-video family shares (image_conditioning.ImageConditioned: condition ids name (prompt, image) pairs):

- the condition latents: the image, resized as the pipeline resizes it (`video_processor.resize`, crop) and
  VAE-encoded as a one-frame video (the posterior's mode × scaling_factor, `_get_image_latents`: no random draw), at
  latent frame 0 and zeros after it; the mask channel is 1 on latent frame 0 and 0 elsewhere
  (`prepare_cond_latents_and_mask`). Both guidance branches get them (the pipeline does the same);
- the vision tokens: SigLIP's last hidden states of the image after its own processor (`encode_image`; 729 tokens
  of width 1152 for the 480p model), an extra context the transformer attends to, again for both branches. They
  travel with the packed text table through the micro-batch loop (rows S1 + S2 onward, zero padded to its width)
  and are split off at the transformer call;
- a window without an image gets the text-to-video inputs (zero condition latents, zero mask, zero vision tokens):
  the pipelines' treatment of a video with no given frame. The transformer decides "no image" per call, not per
  row (`is_t2v = all(image_embeds == 0)` over the whole batch), so a call whose rows mix windows with and without an
  image is made as two calls, one per kind; every row then sees exactly what the pipeline gives it.

The random-weight build (`tiny-hunyuan15-i2v`, or `random_weights: true`) adds a SigLIP vision model of the
`architecture.image_encoder` size with seeded random weights and its image processor (`architecture.image_processor`)
to the text-to-video family's build; the text encoders stay hashed stand-ins.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from longgen.backbones.hunyuan15 import VISION_TOKENS, HunyuanVideo15Backbone
from longgen.backbones.image_conditioning import ImageConditioned
from longgen.backbones.pil_fallback import pil_fallback_quiet
from longgen.errors import UsageError


class HunyuanVideo15I2VBackbone(ImageConditioned, HunyuanVideo15Backbone):
    """HunyuanVideo 1.5 image-to-video (conf/backbone/hunyuanvideo-1.5-i2v.yaml, tiny-hunyuan15-i2v.yaml)."""

    family = "HunyuanVideo 1.5 I2V"
    option_defaults = {**HunyuanVideo15Backbone.option_defaults,
                       "model_id": "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v"}
    example_config = "conf/backbone/tiny-hunyuan15-i2v.yaml"
    image_calls_split = True  # the transformer's image/no-image switch is per call (`_call_transformer`)

    def __init__(self, *, vae_dtype: str = "bfloat16", flow_shift: float | None = None, glyph_tokens: int = 256,
                 **shared: Any) -> None:
        """The text-to-video family's own options and the shared ones, as HunyuanVideo15Backbone takes them."""
        super().__init__(vae_dtype=vae_dtype, flow_shift=flow_shift, glyph_tokens=glyph_tokens, **shared)
        self._first_frames: torch.Tensor | None = None  # [I, C, h, w] the key images' VAE latents
        self._vision: torch.Tensor | None = None  # [I, N, Dimg] their SigLIP tokens

    # ------------------------------------------------------------------ loading
    def _load_pretrained(self, source: str):
        with pil_fallback_quiet():
            from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15ImageToVideoPipeline

        vae = AutoencoderKLHunyuanVideo15.from_pretrained(source, subfolder="vae", torch_dtype=self.vae_dtype)
        pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(source, vae=vae, torch_dtype=self.dtype)
        pipe.scheduler = self._euler_scheduler(pipe.scheduler.config)  # as the text-to-video family does
        pipe.tokenizer_max_length = self.max_text_tokens
        pipe.tokenizer_2_max_length = self.glyph_tokens
        return pipe

    def _build_random(self):
        """The text-to-video family's random build with a seeded random SigLIP vision model and its processor."""
        with pil_fallback_quiet():
            from diffusers import HunyuanVideo15ImageToVideoPipeline
        from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

        base = super()._build_random()
        arch = {k: dict(v) for k, v in self.architecture.items()}
        encoder = self._seeded_build(lambda: SiglipVisionModel(SiglipVisionConfig(**arch.get("image_encoder", {}))))
        return HunyuanVideo15ImageToVideoPipeline(
            **base.components, image_encoder=encoder.to(self.dtype).eval(),
            feature_extractor=SiglipImageProcessorPil(**arch.get("image_processor", {})))

    def _check_loaded(self, pipe) -> None:
        super()._check_loaded(pipe)
        encoder, tcfg = getattr(pipe, "image_encoder", None), pipe.transformer.config
        if encoder is None or encoder.config.hidden_size != tcfg.image_embed_dim:
            width = None if encoder is None else encoder.config.hidden_size
            raise UsageError(
                f"{self.label} has no SigLIP image encoder matching its transformer's image_embed_dim "
                f"({tcfg.image_embed_dim}; encoder width {width}): it is not a HunyuanVideo 1.5 image-to-video model "
                f"(use backbone=hunyuanvideo-1.5-i2v, or backbone=hunyuanvideo-1.5 for text-to-video)")
        if tcfg.image_embed_dim > max(tcfg.text_embed_dim, tcfg.text_embed_2_dim) + 1:
            raise UsageError(f"{self.label}: image_embed_dim {tcfg.image_embed_dim} is wider than the text rows the "
                             f"vision tokens travel in: longgen cannot run this transformer")

    # ------------------------------------------------------------------ the image conditions
    # derived from diffusers pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5_image2video.py (HunyuanVideo15ImageToVideoPipeline.__call__, HunyuanVideo15ImageToVideoPipeline._get_image_latents, HunyuanVideo15ImageToVideoPipeline.encode_image), version 0.42
    def _encode_images(self, images, seed: int) -> None:
        """Each image resized (crop) to the frame as the pipeline does, then its VAE latent [C, h, w] (posterior
        mode × scaling_factor: `seed` draws nothing) and its SigLIP tokens [N, Dimg]."""
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        latents, tokens = [], []
        for image in images:
            image = self.pipe.video_processor.resize(image, height=self.height, width=self.width, resize_mode="crop")
            z = self.pipe._get_image_latents(vae=vae, image_processor=self.pipe.video_processor, image=image,
                                             height=self.height, width=self.width, device=self.device)  # [1, C, 1, h, w]
            latents.append(z[0, :, 0])
            tokens.append(self.pipe.encode_image(image=image, batch_size=1, device=self.device,
                                                 dtype=self.dtype)[0])  # [N, Dimg]
        self._first_frames = torch.stack(latents) if latents else None  # [I, C, h, w]
        self._vision = torch.stack(tokens) if tokens else None  # [I, N, Dimg]

    # derived from diffusers pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5_image2video.py (HunyuanVideo15ImageToVideoPipeline.prepare_cond_latents_and_mask), version 0.42
    def _condition_latents(self, slot: int | None, frames: int) -> torch.Tensor:
        """[1, F, C + 1, h, w]: the image latent at latent frame 0 (zeros after it) and the mask channel, 1 on latent
        frame 0; all zeros without an image (the text-to-video inputs)."""
        c, h, w = self.latent_shape
        cond = torch.zeros(1, frames, c + 1, h, w, device=self.device, dtype=torch.float32)  # [1, F, C + 1, h, w]
        if slot is not None:
            cond[0, 0, :c] = self._first_frames[slot].float()
            cond[0, 0, c] = 1.0
        return cond

    def _context_rows(self, emb: torch.Tensor, slots: Sequence[int | None]) -> torch.Tensor:
        """emb [R, S1 + S2, D + 1] → [R, S1 + S2 + N, D + 1]: each row's packed text, then its image's N vision
        tokens zero padded from Dimg to D + 1 (all zero without an image); `_model_inputs` splits them again."""
        if self._vision is None:  # no image in this run: every window gets the text-to-video inputs
            return emb
        vision = self._vision.to(emb.device, emb.dtype)  # [I, N, Dimg]
        rows = torch.zeros(len(slots), vision.shape[1], emb.shape[2], dtype=emb.dtype, device=emb.device)
        for row, slot in enumerate(slots):
            if slot is not None:
                rows[row, :, : vision.shape[2]] = vision[slot]
        return torch.cat([emb, rows], dim=1)  # [R, S1 + S2 + N, D + 1]

    # ------------------------------------------------------------------ the transformer call
    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The text-to-video family's call, made once per kind of row when the rows mix windows with and without an
        image (the transformer's image/no-image switch is per call). x: [b, F, 2C + 1, H, W]."""
        imaged = self._vision_rows(emb).flatten(1).ne(0).any(dim=1)  # [b]: rows conditioned on an image
        if bool(imaged.all()) or not bool(imaged.any()):
            return super()._call_transformer(x, emb, t)
        if self._anchor_layout is not None:
            raise UsageError("HunyuanVideo 1.5 I2V runs windows with and without a key image in separate transformer "
                             "calls, which anchor, cross-shot and KV-sharing attention cannot follow: set "
                             "backbone.micro_batch=1")
        out = None
        for rows in (imaged.nonzero()[:, 0], (~imaged).nonzero()[:, 0]):
            part = super()._call_transformer(x[rows], emb[rows], t[rows])  # [r, F, C, H, W]
            if out is None:
                out = part.new_empty(x.shape[0], *part.shape[1:])
            out[rows] = part
        return out  # [b, F, C, H, W]

    def _vision_rows(self, emb: torch.Tensor) -> torch.Tensor:
        """The vision tokens' part of the rows: [b, N, D + 1] (N = 0 when the run has no image)."""
        s1, _, _ = self._text_widths()
        return emb[:, s1 + self.glyph_tokens :]

    def _model_inputs(self, hidden: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """hidden [b, 2C + 1, F, H, W] already carries the condition latents and mask (`_with_conditions`); the
        vision tokens [b, N, Dimg] come off the end of the rows (729 zero tokens when the run has no image)."""
        vision = self._vision_rows(emb)[..., : self.pipe.transformer.config.image_embed_dim]  # [b, N, Dimg]
        text = emb[:, : emb.shape[1] - vision.shape[1]]  # [b, S1 + S2, D + 1]
        if vision.shape[1] == 0:
            vision = hidden.new_zeros(hidden.shape[0], VISION_TOKENS, vision.shape[2])  # [b, 729, Dimg]
        return hidden, vision, text

    def describe(self) -> dict:
        info = super().describe()
        info["image_conditioning"] = ("VAE mode of the image at latent frame 0 + a mask channel (1 on frame 0), "
                                      "channel concat, and SigLIP vision tokens; windows without an image: zeros "
                                      "(the text-to-video inputs)")
        return info

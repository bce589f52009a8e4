"""Image-to-video backbones: CogVideoX-5B-I2V and Wan 2.1 I2V behind the `Denoiser` seam, loaded with diffusers.

A window of an image-to-video model is conditioned on an image at its first frame. The conditioning is per window:
`encode_images` encodes the run's key images once, `condition_id(prompt, image)` names a (prompt, image) pair, and
`predict` takes such ids wherever it takes prompt ids. A plain prompt id conditions its window on no image, which is
what the pipelines give every frame after the first ("zero conditioning"). Samplers only route ids, as they route
per-window prompts; everything below is the families' own, and the facts come from diffusers 0.42:

- CogVideoX I2V (pipelines/cogvideo/pipeline_cogvideox_image2video.py): the image, preprocessed by the pipeline's
  VideoProcessor, is VAE-encoded as a one-frame video — a sample of the posterior (drawn here from a CPU generator
  seeded by the run's seed, so a seed gives the same latents on any device and on resume) — times the VAE's
  scaling factor (divided by it where the VAE config sets `invert_scale_latents`, CogVideoX 1.5). It is placed at
  the first latent frame, the other frames are zeros, and the result is concatenated channel-wise to the noisy
  latent: the transformer takes 2C input channels and returns C. Both guidance branches get the same image latent;
  no noise is added to it (the pipeline adds none). The `ofs` embedding and temporal patches of CogVideoX 1.5 are
  not supported (refused at load). CogVideoX-5B-I2V learned its positional embeddings at 720×480 only.
- Wan 2.1 I2V (pipelines/wan/pipeline_wan_i2v.py): (1) the CLIP vision encoder's penultimate hidden states of the
  image (the pipeline's own `encode_image`) are an extra cross-attention context (`encoder_hidden_states_image`);
  (2) the conditioning latent is the VAE encode (posterior mode) of the video [image, zero frames…] of the window's
  length, normalised per channel, preceded by a mask block of `temporal_compression` channels per latent frame that
  is 1 on the first latent frame and 0 elsewhere (the pipeline's own `prepare_latents` builds both); it is
  concatenated channel-wise to the noisy latent (in_channels = 2·z + 4). A window without an image gets the same
  construction from an all-zero video with an all-zero mask (the pipeline's treatment of a frame that is not given)
  and the CLIP context of a mid-grey frame (the pipeline has no image-less case; grey is that zero frame's colour).
  The image context travels with the text context through the micro-batch loop: each row's context is the text
  tokens followed by the image tokens, zero-padded to the text width, and is split again at the transformer call.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from longgen.backbones.cogvideox import CogVideoXBackbone
from longgen.backbones.pil_fallback import pil_fallback_quiet
from longgen.backbones.wan import WanBackbone
from longgen.errors import UsageError

#: diffusers' Wan attention takes all but the last 512 context tokens as the image context (transformer_wan.py)
WAN_TEXT_TOKENS = 512
#: the colour of the frame a Wan window without an image is conditioned on (0 in the VAE's [−1, 1] pixel range)
GREY = 128


class ImageConditioned:
    """The per-window condition table every image-to-video family shares: condition ids P.. name (prompt, image)
    pairs, ids below P (the number of encoded prompts) are prompts alone. A family supplies `_encode_images`,
    `_condition_latents` and, where it has an image context, `_context_rows`."""

    image_conditioning = True

    @torch.no_grad()
    def encode_images(self, frames: Sequence[np.ndarray], seed: int) -> None:
        from PIL import Image

        if self._embeds is None:
            raise RuntimeError("encode_prompts() must run before encode_images()")
        self._pairs: list[tuple[int, int]] = []
        self._cache: dict[tuple[int | None, int], torch.Tensor] = {}
        self._encode_images([Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames], seed)

    def condition_id(self, prompt_id: int, image: int) -> int:
        pair = (int(prompt_id), int(image))
        if pair not in self._pairs:
            self._pairs.append(pair)
        return self._embeds.shape[0] + self._pairs.index(pair)

    def _slots(self, prompt_ids: Sequence[int]) -> list[int | None]:
        """Each window's key image (None: no image)."""
        p = self._embeds.shape[0]
        return [None if i < p else self._pairs[i - p][1] for i in prompt_ids]

    def _text_rows(self, prompt_ids: Sequence[int]) -> list[int]:
        p = self._embeds.shape[0]
        return [i if i < p else self._pairs[i - p][0] for i in prompt_ids]

    def _with_conditions(self, x_in: torch.Tensor, emb: torch.Tensor, prompt_ids: Sequence[int],
                         guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x_in [R, F, C, H, W] → [R, F, C + Cc, H, W] with each row's conditioning latent; emb [R, S, D] → the rows'
        context. Both guidance branches of a window get its image (the pipelines do the same)."""
        slots = self._slots(prompt_ids)  # [B]
        if guided:
            slots = slots + slots  # [2B]: unconditional rows first, as _predict stacks them
        with torch.no_grad():
            cond = torch.cat([self._cached_condition(s, x_in.shape[1]) for s in slots])  # [R, F, Cc, H, W]
        return torch.cat([x_in, cond.to(x_in.dtype)], dim=2), self._context_rows(emb, slots)

    def _cached_condition(self, slot: int | None, frames: int) -> torch.Tensor:
        """[1, F, Cc, H, W] in the model dtype for a window of `frames` latent frames, computed once per shape."""
        key = (slot, frames)
        if key not in self._cache:
            self._cache[key] = self._condition_latents(slot, frames).to(self.device, self.dtype)
        return self._cache[key]

    def _context_rows(self, emb: torch.Tensor, slots: Sequence[int | None]) -> torch.Tensor:
        return emb

    def release(self) -> None:
        self._cache = {}
        super().release()


# ---------------------------------------------------------------------------------------------------- CogVideoX
class CogVideoXI2VBackbone(ImageConditioned, CogVideoXBackbone):
    """CogVideoX image-to-video (conf/backbone/cogvideox-5b-i2v.yaml, tiny-i2v.yaml)."""

    family = "CogVideoX I2V"

    def __init__(self, *, vae_norm: str = "parallel", **shared: Any) -> None:
        """CogVideoX's own options and the shared ones, as CogVideoXBackbone takes them."""
        super().__init__(vae_norm=vae_norm, **shared)

    def _load_pretrained(self, source: str):
        from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

        pipe = CogVideoXImageToVideoPipeline.from_pretrained(source, torch_dtype=self.dtype)
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)  # as CogVideoXBackbone does
        return pipe

    def _build_random(self):
        from diffusers import CogVideoXImageToVideoPipeline

        return CogVideoXImageToVideoPipeline(**super()._build_random().components)

    def _check_loaded(self, pipe) -> None:
        vcfg, tcfg = pipe.vae.config, pipe.transformer.config
        c = self.latent_shape[0]
        found = (vcfg.temporal_compression_ratio, 2 ** (len(vcfg.block_out_channels) - 1), tcfg.in_channels,
                 tcfg.out_channels)
        wanted = (self.temporal_compression, self.spatial_compression, 2 * c, c)
        if found != wanted:
            raise UsageError(
                f"the loaded model has temporal/spatial compression {found[0]}/{found[1]} and {found[2]} input / "
                f"{found[3]} output channels, but an image-to-video CogVideoX with this config needs "
                f"{'/'.join(map(str, wanted[:2]))} and {2 * c} / {c}: fix conf/backbone or pick the matching backbone"
            )
        if tcfg.patch_size_t is not None or tcfg.ofs_embed_dim is not None:
            raise UsageError("this CogVideoX transformer patches frames in time or takes an ofs embedding "
                             "(CogVideoX 1.5 I2V), which longgen does not run: use backbone=cogvideox-5b-i2v")
        native = (tcfg.sample_height * self.spatial_compression, tcfg.sample_width * self.spatial_compression)
        if tcfg.use_learned_positional_embeddings and (self.height, self.width) != native:
            raise UsageError(
                f"{self.label} learned its positional embeddings at {native[1]}x{native[0]} only: drop "
                f"backbone.height/backbone.width (asked {self.width}x{self.height})"
            )

    # derived from diffusers pipelines/cogvideo/pipeline_cogvideox_image2video.py (CogVideoXImageToVideoPipeline.__call__), version 0.42
    def _encode_images(self, images, seed: int) -> None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        first = []
        for image in images:  # one posterior draw each, in order, from the one generator
            pixels = self.pipe.video_processor.preprocess(image, height=self.height, width=self.width)
            pixels = pixels.to(self.device, dtype=self.dtype)  # [1, 3, H, W] in [−1, 1]
            _, z = self.pipe.prepare_latents(pixels, 1, self.latent_shape[0], 1, self.height, self.width, self.dtype,
                                             self.device, gen, latents=pixels.new_zeros(1))  # z: [1, 1, C, h, w]
            first.append(z[0, 0])
        self._first_frames = torch.stack(first) if first else None  # [I, C, h, w] scaled like the pipeline's

    def _condition_latents(self, slot: int | None, frames: int) -> torch.Tensor:
        """The image latent at latent frame 0, zeros after it (zeros throughout without an image)."""
        c, h, w = self.latent_shape
        cond = torch.zeros(1, frames, c, h, w, device=self.device, dtype=self.dtype)  # [1, F, C, h, w]
        if slot is not None:
            cond[0, 0] = self._first_frames[slot]
        return cond

    def describe(self) -> dict:
        info = super().describe()
        info["image_conditioning"] = "VAE posterior sample of the image at latent frame 0, zeros after, channel concat"
        return info


# ---------------------------------------------------------------------------------------------------- Wan
def wan_i2v_pipeline() -> type:
    """diffusers' WanImageToVideoPipeline class, imported without transformers' note that its CLIP image processor
    fell back to the PIL backend (pil_fallback.py)."""
    with pil_fallback_quiet():
        from diffusers import WanImageToVideoPipeline
    return WanImageToVideoPipeline


class WanI2VBackbone(ImageConditioned, WanBackbone):
    """Wan 2.1 image-to-video (conf/backbone/wan2.1-i2v-14b-480p.yaml, tiny-wan-i2v.yaml)."""

    family = "Wan I2V"

    def __init__(self, *, vae_dtype: str = "float32", flow_shift: float | None = None, **shared: Any) -> None:
        """Wan's own options and the shared ones, as WanBackbone takes them."""
        super().__init__(vae_dtype=vae_dtype, flow_shift=flow_shift, **shared)

    def _load_pretrained(self, source: str):
        from diffusers import AutoencoderKLWan
        from transformers import CLIPVisionModel

        # VAE and CLIP image encoder in float32, as diffusers' Wan I2V docs load them
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=self.vae_dtype)
        encoder = CLIPVisionModel.from_pretrained(source, subfolder="image_encoder", torch_dtype=torch.float32)
        pipe = wan_i2v_pipeline().from_pretrained(source, vae=vae, image_encoder=encoder, torch_dtype=self.dtype)
        pipe.scheduler = self._euler_scheduler(pipe.scheduler.config)  # as WanBackbone does
        return pipe

    def _build_random(self):
        from transformers import CLIPVisionConfig, CLIPVisionModel
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the PIL backend: no torchvision needed

        base = super()._build_random()
        arch = {k: dict(v) for k, v in self.architecture.items()}
        encoder = self._seeded_build(lambda: CLIPVisionModel(CLIPVisionConfig(**arch.get("image_encoder", {}))))
        return wan_i2v_pipeline()(tokenizer=None, text_encoder=None, vae=base.vae, scheduler=base.scheduler,
                                  image_processor=CLIPImageProcessor(**arch.get("image_processor", {})),
                                  image_encoder=encoder.eval(), transformer=base.transformer)

    def _check_loaded(self, pipe) -> None:
        vcfg, tcfg = pipe.vae.config, pipe.transformer.config
        z, c = self.latent_shape[0], self.temporal_compression
        found = (vcfg.scale_factor_temporal, vcfg.scale_factor_spatial, vcfg.z_dim, tcfg.in_channels,
                 tcfg.out_channels)
        wanted = (c, self.spatial_compression, z, 2 * z + c, z)
        if found != wanted:
            raise UsageError(
                f"the loaded model has temporal/spatial compression {found[0]}/{found[1]}, {found[2]} latent channels "
                f"and {found[3]} input / {found[4]} output channels, but a Wan image-to-video model with this config "
                f"needs {wanted[0]}/{wanted[1]}, {z} and {2 * z + c} / {z}: fix conf/backbone or pick the matching "
                f"backbone"
            )
        if tuple(tcfg.patch_size) != (1, 2, 2):
            raise UsageError(f"the loaded Wan transformer has patch size {tuple(tcfg.patch_size)}; longgen needs (1, 2, 2)")
        encoder = getattr(pipe, "image_encoder", None)
        if tcfg.image_dim is None or encoder is None or encoder.config.hidden_size != tcfg.image_dim:
            raise UsageError(f"{self.label} has no CLIP image encoder matching its transformer's image_dim: it is not a "
                             f"Wan 2.1 image-to-video model (use backbone=wan2.1-i2v-14b-480p)")
        if self.max_text_tokens != WAN_TEXT_TOKENS or tcfg.image_dim > tcfg.text_dim:
            raise UsageError(f"Wan I2V reads the last {WAN_TEXT_TOKENS} context tokens as text: "
                             f"backbone.max_text_tokens must be {WAN_TEXT_TOKENS}")

    # derived from diffusers pipelines/wan/pipeline_wan_i2v.py (WanImageToVideoPipeline.__call__), version 0.42
    def _encode_images(self, images, seed: int) -> None:
        """CLIP contexts of the images and of the grey no-image frame; the images' preprocessed pixels. (No random
        draw: the pipeline takes the VAE posterior's mode.)"""
        from PIL import Image

        grey = Image.new("RGB", (self.width, self.height), (GREY, GREY, GREY))
        contexts = [self.pipe.encode_image(image, self.device) for image in [*images, grey]]  # each [1, N, Dimg]
        self._image_context = torch.cat(contexts).to(self.dtype)  # [I + 1, N, Dimg]; the last: no image
        self._pixels = [self.pipe.video_processor.preprocess(image, height=self.height, width=self.width)
                        for image in images]  # each [1, 3, H, W] in [−1, 1], float32

    def _condition_latents(self, slot: int | None, frames: int) -> torch.Tensor:
        """[1, F, c + z, h, w]: the mask block and the normalised VAE latent of [image, zeros…] (the pipeline's
        prepare_latents); without an image, of zeros with an all-zero mask."""
        image = (self._pixels[slot] if slot is not None else torch.zeros(1, 3, self.height, self.width))
        image = image.to(self.device, torch.float32)
        _, cond = self.pipe.prepare_latents(image, 1, self.latent_shape[0], self.height, self.width,
                                            self.frames_for(frames), torch.float32, self.device, None,
                                            latents=image.new_zeros(1))  # [1, c + z, F, h, w]
        if slot is None:
            cond[:, : self.temporal_compression] = 0  # the mask: no frame is given
        return cond.permute(0, 2, 1, 3, 4)  # [1, F, c + z, h, w]

    def _context_rows(self, emb: torch.Tensor, slots: Sequence[int | None]) -> torch.Tensor:
        """emb [R, S, D] → [R, S + N, D]: each row's text tokens, then its image's N context tokens zero-padded
        from Dimg to D (`_context` splits them again)."""
        none = self._image_context.shape[0] - 1
        index = torch.as_tensor([none if s is None else s for s in slots], device=self._image_context.device)
        ctx = self._image_context.index_select(0, index)  # [R, N, Dimg]
        padded = emb.new_zeros(emb.shape[0], ctx.shape[1], emb.shape[2])  # [R, N, D]
        padded[:, :, : ctx.shape[2]] = ctx.to(emb.dtype)
        return torch.cat([emb, padded], dim=1)  # [R, S + N, D]

    def _context(self, emb: torch.Tensor) -> dict:
        dim = self.pipe.transformer.config.image_dim
        return {"encoder_hidden_states": emb[:, :WAN_TEXT_TOKENS],  # [b, S, D]
                "encoder_hidden_states_image": emb[:, WAN_TEXT_TOKENS:, :dim]}  # [b, N, Dimg]

    def describe(self) -> dict:
        info = super().describe()
        info["image_conditioning"] = ("CLIP image context + mask and VAE mode of [image, zero frames], channel "
                                      "concat; windows without an image: zero mask, zero frames, grey-frame context")
        return info

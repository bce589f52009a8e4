"""Wan 2.2 TI2V-5B in both of its modes behind the `Denoiser` seam: text-to-video (wan22.py, unchanged) and, given
a start image or key images, image-to-video as diffusers 0.42's `WanImageToVideoPipeline` runs the model with
`expand_timesteps` (pipelines/wan/pipeline_wan_i2v.py). The same weights serve both; no image encoder.

The image mode, per window (condition ids from image_conditioning.ImageConditioned, as the other image-to-video
families route them):
- the image latent: the image preprocessed by the pipeline's VideoProcessor, VAE-encoded alone as a one-frame video
  (the posterior's mode, no random draw), normalised per channel ((z − mean) / std): one latent frame [C, h, w];
- the model's input: the window's first latent frame replaced by the image latent (the pipeline's
  `(1 − mask)·condition + mask·latents`, mask 0 on latent frame 0), and that frame's tokens at timestep 0, every
  other token at the step's t (the pipeline's per-token timesteps `mask·t`); both guidance branches alike;
- the prediction: the pipeline keeps stepping latent frame 0 but overwrites it with the image latent before
  decoding, so what it produces there is the image latent. The seam returns x̂0 = the image latent on that frame,
  and the ε̂ that makes x_t = a·x̂0 + s·ε̂ hold there; a sampler's last step (σ = 0) lands it on the image latent
  exactly, and every other frame is the text-to-video prediction of the modified input.
A window without an image is the text-to-video call. The model is image-optional: without any image the run is a
text-to-video run (the backbone face's `image_optional`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from longgen.backbones.image_conditioning import ImageConditioned
from longgen.backbones.wan22 import Wan22Backbone
from longgen.denoiser import Prediction
from longgen.errors import UsageError


class Wan22TI2VBackbone(ImageConditioned, Wan22Backbone):
    """Wan 2.2 TI2V-5B, text- or image-to-video (conf/backbone/wan2.2-ti2v-5b.yaml, tiny-wan22-ti2v.yaml)."""

    image_optional = True

    def __init__(self, *, boundary_ratio: float | None = None, guidance_scale_2: float | None = None,
                 expand_timesteps: bool = False, vae_dtype: str = "float32", flow_shift: float | None = None,
                 **shared: Any) -> None:
        """Wan22Backbone's options and the shared ones, as it takes them."""
        super().__init__(boundary_ratio=boundary_ratio, guidance_scale_2=guidance_scale_2,
                         expand_timesteps=expand_timesteps, vae_dtype=vae_dtype, flow_shift=flow_shift, **shared)
        self._pairs: list[tuple[int, int]] = []  # no image until encode_images: every id is a prompt
        self._cache: dict = {}
        self._first_frames: torch.Tensor | None = None  # [I, C, h, w] the key images' latents
        self._window_slots: list[int | None] = []  # each window's image in the predict in progress
        self._frames = 0  # its latent frames M

    # derived from diffusers pipelines/wan/pipeline_wan_i2v.py (WanImageToVideoPipeline.__call__, WanImageToVideoPipeline.prepare_latents), version 0.42
    def _encode_images(self, images, seed: int) -> None:
        """Each image's normalised VAE latent [C, h, w] (posterior mode: `seed` draws nothing)."""
        if not self.expand_timesteps:
            raise UsageError("image conditioning of Wan 2.2 TI2V needs its per-token timesteps: set "
                             "backbone.expand_timesteps=true (the TI2V-5B model's own setting)")
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(self.device, torch.float32)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(self.device, torch.float32)
        first = []
        for image in images:
            pixels = self.pipe.video_processor.preprocess(image, height=self.height, width=self.width)  # [1, 3, H, W]
            video = pixels.to(self.device, torch.float32).unsqueeze(2).to(vae.dtype)  # [1, 3, 1, H, W]
            z = vae.encode(video).latent_dist.mode().to(torch.float32)  # [1, C, 1, h, w]
            first.append(((z - mean) * inv_std)[0, :, 0])
        self._first_frames = torch.stack(first) if first else None  # [I, C, h, w]

    def _with_conditions(self, x_in: torch.Tensor, emb: torch.Tensor, prompt_ids: Sequence[int],
                         guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x_in [R, F, C, H, W] with each imaged row's latent frame 0 replaced by its image latent; emb unchanged.
        Remembers each window's image (for `_timesteps` and `_to_x0_eps` of the same predict)."""
        self._window_slots = self._slots(prompt_ids)  # [B]
        if not self._any_image():
            return x_in, emb
        x_in = x_in.clone()  # unguided, x_in may be the caller's x_t itself
        rows = self._window_slots * 2 if guided else self._window_slots  # [2B]: unconditional rows first
        for row, slot in enumerate(rows):
            if slot is not None:
                x_in[row, 0] = self._first_frames[slot].to(x_in.device, x_in.dtype)
        return x_in, emb

    def _any_image(self) -> bool:
        return any(slot is not None for slot in self._window_slots)

    def _timesteps(self, t, rows: int) -> torch.Tensor:
        """Wan's timesteps ([rows] or [rows, M]), as [rows, M] with latent frame 0 at 0 in imaged rows (rows are the
        windows, repeated per guidance branch)."""
        ts = super()._timesteps(t, rows)
        if not self._any_image():
            return ts
        if ts.dim() == 1:
            ts = ts[:, None].expand(-1, self._frames).clone()  # [rows, M]
        imaged = torch.as_tensor([slot is not None for slot in self._window_slots], device=ts.device)  # [B]
        ts[imaged.repeat(rows // imaged.shape[0]), 0] = 0.0
        return ts

    def _predict(self, x_t: torch.Tensor, t, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        self._frames = x_t.shape[1]  # M, for `_timesteps`
        return super()._predict(x_t, t, prompt_ids, guidance_scale)

    def _to_x0_eps(self, x_t: torch.Tensor, out: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Wan's (x̂0, ε̂); on latent frame 0 of an imaged window x̂0 is the image latent and ε̂ = (x_t − (1 − σ)·x̂0)/σ
        (x_t [B, M, C, H, W] float32)."""
        x0, eps = super()._to_x0_eps(x_t, out, t)
        if not self._any_image():
            return x0, eps
        b, m = x_t.shape[:2]
        sigma = torch.as_tensor(self._sigma(t), dtype=torch.float32, device=x_t.device)
        sigma = sigma.reshape(-1, m)[:, :1] if sigma.dim() else sigma.reshape(1, 1)  # [1 or B, 1]: frame 0's σ
        sigma = sigma.expand(b, 1)[:, :, None, None, None]  # [B, 1, 1, 1, 1]
        image = x0[:, :1].clone()  # [B, 1, C, H, W]: the image latent where a window has one
        pick = torch.zeros(b, m, 1, 1, 1, dtype=torch.bool, device=x_t.device)  # [B, M, 1, 1, 1]
        for row, slot in enumerate(self._window_slots):
            if slot is not None:
                image[row, 0] = self._first_frames[slot].to(x_t.device, torch.float32)
                pick[row, 0] = True
        clean_eps = (x_t[:, :1] - (1.0 - sigma) * image) / sigma  # [B, 1, C, H, W]
        pad = torch.zeros_like(x0[:, 1:])  # [B, M − 1, C, H, W]: frames the pick never takes
        x0 = torch.where(pick, torch.cat([image, pad], dim=1), x0)
        eps = torch.where(pick, torch.cat([clean_eps, pad], dim=1), eps)
        return x0, eps

    def describe(self) -> dict:
        info = super().describe()
        info["image_conditioning"] = ("optional: the image's normalised VAE mode replaces latent frame 0, whose tokens "
                                      "take timestep 0 (expand_timesteps); windows without an image: text-to-video")
        return info

"""What the stages ask of a backbone: its declared face (DESIGN.md, "The layers").

A sampler sees a backbone only through the seam, `longgen.denoiser.Denoiser` (window, latent shape, schedule,
`predict`, the capabilities). The stages of a run (longgen/run/, longgen/commands/) need more: the lifecycle (find
the weights, load, release), the text side (count tokens, encode prompts), the video side (which latent lengths
decode, how many frames they become, the decode stream, the encode of frames for `extend`), the geometry and frame
rate of the videos it makes, and a description for the manifest. `Backbone` declares all of it, once, so
`Job.backbone` has a type and a new family knows what to implement; the diffusers families get it from
`longgen.backbones.diffusers_base.DiffusersBackbone`. Nothing else of a backbone object is the stages' business
(tests/test_backbone_face.py reads the stages and holds them to this list).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from longgen.denoiser import Denoiser

#: keys a backbone config may hold that are not the backbone's options: the model's own sampling defaults, read
#: by the other groups' configs through interpolation (conf/sampler/*.yaml `stride: ${backbone.stride}`,
#: `guidance_scale: ${oc.select:backbone.guidance_scale,6.0}`, `t_min: ${oc.select:backbone.syncos_t_min,900}`,
#: conf/generate.yaml and conf/extend.yaml `negative_prompt`). `longgen.build.build` accepts them in the
#: backbone's node and does not pass them to its constructor; the manifest records them as `model_defaults`.
SAMPLING_DEFAULTS = ("stride", "guidance_scale", "negative_prompt", "syncos_t_min")
#: the name of the latent space the backbone decodes (one per VAE and latent scaling), recorded in every latents
#: and checkpoint file and checked before a backbone decodes or continues one (longgen/run/latent_space.py)
LATENT_SPACE = "latent_space"


class Backbone(Denoiser):
    """A text-to-video model as the stages use it: the seam a sampler sees, plus what a run needs around it.
    Construction only checks the configuration; `load()` brings the weights."""

    #: config keys held for the other groups and the stages, not passed to the constructor (SAMPLING_DEFAULTS,
    #: LATENT_SPACE)
    config_only: ClassVar[tuple[str, ...]] = (*SAMPLING_DEFAULTS, LATENT_SPACE)

    #: frames per second of the videos it makes
    fps: int
    #: video frame size in pixels
    width: int
    height: int
    #: video frames per latent frame (after the first, which holds one)
    temporal_compression: int
    #: the model's own clip length in latent frames; `window` differs from it only when the backbone extends its
    #: clip (RIFLEx, longgen/backbones/riflex.py). `length_factor` counts native clips.
    native_window: int
    #: the text encoder's tokens per prompt
    max_text_tokens: int
    #: built with seeded random weights (and a stand-in text encoder: token limits are advisory)
    random_weights: bool
    #: the configured device (`backbone.device`), resolved to `device` at load; the gpus=N launcher may pin it to
    #: its rank's GPU before then
    device_name: str
    #: window rows per transformer call (`backbone.micro_batch`)
    micro_batch: int
    #: the LoRA adapters of `backbone.lora` (longgen/backbones/lora.py `Lora` items; empty without), for the start
    #: line, the manifest and what a checkpoint records
    loras: Sequence[Any]

    @property
    @abstractmethod
    def label(self) -> str:
        """The model's name in messages and the manifest."""

    # ------------------------------------------------------------------ lifecycle
    @abstractmethod
    def check_available(self) -> None:
        """One line (UsageError), before any work, when the weights cannot be found."""

    @abstractmethod
    def load(self) -> None:
        """Load the weights onto the device; afterwards `device` is set and every other method may run."""

    @abstractmethod
    def release(self) -> None:
        """Drop the models and cached tensors (the next job of a sweep starts with free memory)."""

    # ------------------------------------------------------------------ text
    @abstractmethod
    def count_tokens(self, prompt: str) -> tuple[int, bool]:
        """(token count, exact) for a prompt: exact once the tokenizer is loaded, else an estimate."""

    def other_text_limits(self, prompts: Sequence[tuple[str, str]], strict: bool) -> list[str]:
        """Limits of text encoders besides the one `count_tokens` counts for (HunyuanVideo 1.5's ByT5 on quoted
        text), for `(label, text)` prompts as `story.check_text_limit` checks them: one UsageError for what would be
        cut, else the warnings. None by default."""
        return []

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str = "") -> list[int]:
        """Encode the prompts (and the negative prompt guidance is taken against); return each prompt's id, the
        `prompt_ids` of `predict`."""

    # ------------------------------------------------------------------ images (image-to-video models)
    #: an image-to-video model: windows may be conditioned on an image at their first frame (`encode_images`,
    #: `condition_id`; longgen/backbones/image_conditioning.py); text-to-video models refuse images
    image_conditioning: ClassVar[bool] = False
    #: an image-to-video model that also runs with no image at all (Wan 2.2 TI2V: text-to-video mode); the others
    #: need a start image or key images
    image_optional: ClassVar[bool] = False
    #: windows with and without an image sharing a micro-batch run as separate transformer calls (HunyuanVideo 1.5
    #: I2V: its image switch is per call), which anchor attention (GLC's ABAM) cannot follow
    image_calls_split: ClassVar[bool] = False

    def encode_images(self, frames: Sequence[np.ndarray], seed: int) -> None:
        """Encode key images, uint8 RGB [H, W, 3] at the model's frame size, numbered 0.. in order; `seed` fixes
        any random draw (a VAE posterior sample). After `encode_prompts`."""
        raise NotImplementedError(f"{self.label} takes no image conditioning")

    def condition_id(self, prompt_id: int, image: int) -> int:
        """The id `predict` takes for a window conditioned on prompt `prompt_id` and key image `image` at its first
        latent frame (a prompt id alone conditions a window on no image)."""
        raise NotImplementedError(f"{self.label} takes no image conditioning")

    # ------------------------------------------------------------------ a LoRA scale per event
    def check_events(self, count: int) -> None:
        """UsageError when the backbone's per-event options (a LoRA scale per event) do not fit a story of `count`
        events; nothing to check by default."""

    def event_id(self, condition_id: int, event: int) -> int:
        """The id `predict` takes for a window of story event `event` conditioned as `condition_id` (a prompt id or
        a `condition_id`) says; the condition id itself where nothing differs by event."""
        return condition_id

    # ------------------------------------------------------------------ lengths
    @abstractmethod
    def frames_for(self, latent_frames: int) -> int:
        """Video frames that `latent_frames` latent frames decode to."""

    def check_length(self, latent_frames: int, fix: str | None = None) -> None:
        """UsageError when the VAE cannot decode this latent length (every length decodes by default); `fix` is
        what the message tells the user to change (default: the length options of generate)."""

    # ------------------------------------------------------------------ video
    @abstractmethod
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Latents [1, L, C, H, W] → uint8 RGB frames [f, H, W, 3], a few at a time, `frames_for(L)` in all."""

    @abstractmethod
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames [f, H, W, 3], f = `frames_for(L)` → latents [1, L, C, h, w] float32 on the seam's scale
        (`longgen extend`)."""

    @abstractmethod
    def describe(self) -> dict:
        """Facts for the manifest (model, dtype, device, attention, compile, ...)."""

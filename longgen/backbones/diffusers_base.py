"""What every diffusers text-to-video backbone shares behind the `Denoiser` seam.

A backbone family (CogVideoX, Wan) subclasses `DiffusersBackbone` and supplies only what is model-specific: how to
build or load its pipeline, its latent layout and timestep format at the transformer call, how the model output
becomes (x̂0, ε̂), its noise schedule, its streaming VAE decode and its attention processor for ABAM. This module
holds the rest, once:

- the shared options (`DiffusersOptions`, one object a family hands over whole) and their checks, which run before
  any weights load (dtype, geometry, micro-batch, attention, compile);
- finding the weights: a local diffusers folder (`model_path`) checked for completeness, or the hub id through the
  Hugging Face cache, each failure one line naming the model and how to pass a local copy;
- `load()`: `backbone.attention` resolved on the device (longgen/backbones/attention.py), random-weight build or
  `from_pretrained`, geometry check, VAE tiling, CPU offload, the family's attention kernel installed, regional
  `torch.compile` with an eager fallback;
- text: each unique prompt encoded once (the pipeline's own `encode_prompt`, or the hashed stand-in encoder for
  random weights), then the text encoder released, moved to the CPU or kept;
- `predict`: classifier-free guidance stacked into one batch ([unconditional rows, conditional rows]),
  micro-batched into transformer calls of `micro_batch` samples, under the chosen SDPA kernels, guided in float32;
- anchor attention (GLC-Diffusion ABAM), cross-shot attention (multi-shot scenes) and FreeLong's spectral blend
  attention installed for the duration of a block; the manifest description.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import logging
import math
import warnings
from abc import abstractmethod
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch

from longgen.backbones import compile_determinism, riflex
from longgen.backbones.anchor_attention import anchored
from longgen.backbones.attention import AttentionChoice, Kernel, attention_choices, resolve_attention
from longgen.backbones.face import Backbone
from longgen.backbones.fused_gelu import fuse_gelu_projections
from longgen.backbones.hashed_text import hashed_embedding, ideographs, tokenize
from longgen.backbones.lora import (
    apply_loras,
    check_event_count,
    check_experts,
    parse_loras,
    per_event,
    resolve_hub,
)
from longgen.backbones.lora_events import EventScales
from longgen.backbones.micro_batch import run_stacked
from longgen.denoiser import Prediction
from longgen.errors import UsageError
from longgen.options import whole
from longgen.parallel import pool

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}
MODEL_FILES = ("model_index.json",)
SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
TEXT_ENCODER_POLICIES = ("release", "cpu", "keep")


# ---------------------------------------------------------------------------------- options of the flow-matching families
def vae_dtype_option(name: str) -> torch.dtype:
    """`backbone.vae_dtype` of a family that decodes in its own dtype (Wan, HunyuanVideo 1.5); one line if unknown."""
    if name not in DTYPES:
        raise UsageError(f"backbone.vae_dtype={name!r} is not supported: use float32, bfloat16 or float16")
    return DTYPES[name]


def flow_shift_option(value: float | None) -> float | None:
    """`backbone.flow_shift` (None: the loaded scheduler's shift); one line unless > 0."""
    if value is not None and not value > 0:
        raise UsageError(f"backbone.flow_shift={value} must be > 0 (or null: the loaded scheduler's shift)")
    return None if value is None else float(value)


def euler_scheduler(config, flow_shift: float | None):
    """FlowMatchEulerDiscreteScheduler with the loaded scheduler's training length and shift (UniPC calls it
    `flow_shift`, FlowMatch `shift`), or `flow_shift` when set."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    shift = flow_shift
    if shift is None:
        shift = config.get("flow_shift", config.get("shift", 1.0))
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000),
                                           shift=float(shift))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "free":  # sweeps of one-GPU jobs side by side: a GPU no other longgen job holds
        return pool.claim_free_gpu()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"backbone.device={device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"backbone.device={device} but no CUDA GPU is visible: use backbone.device=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"backbone.device={device} but this machine shows {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}): pick one of them, or auto")
    return dev


# derived from diffusers image_processor.py (VaeImageProcessor.normalize), version 0.42
def pixels_to_vae(frames, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB frames [f, H, W, 3] (numpy) → a VAE input [1, 3, f, H, W] in [−1, 1] (the inverse of the decode's
    (x / 2 + 0.5)·255)."""
    x = torch.as_tensor(frames).to(device=device, dtype=torch.float32)  # [f, H, W, 3]
    x = x.permute(3, 0, 1, 2)[None] / 127.5 - 1.0  # [1, 3, f, H, W]
    return x.to(dtype)


def fusion_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the feed-forward's GELU epilogue can run here (longgen/backbones/fused_gelu.py)."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def check_fused_gelu(device: torch.device, dtype: torch.dtype) -> None:
    """`backbone.fused_gelu=true` where the epilogue cannot run: one line."""
    if not fusion_runs(device, dtype):
        raise UsageError(f"backbone.fused_gelu=true needs a CUDA device and float16/bfloat16 weights (here "
                         f"{device.type}, {str(dtype).removeprefix('torch.')}): use fused_gelu=auto or false")


# derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (AutoencoderKLCogVideoX.tiled_decode), version 0.42
# derived from diffusers models/autoencoders/autoencoder_kl_wan.py (AutoencoderKLWan.tiled_decode), version 0.42
def stitch_tiles(vae, decoded: list[torch.Tensor], columns: int, blend: tuple[int, int],
                 keep: tuple[int, int]) -> torch.Tensor:
    """Decoded tiles in row-major order, `columns` to a row, each [1, 3, f, h, w] → [1, 3, f, H, W]: each tile is
    blended into the tile above it over blend[0] rows and into its left neighbour over blend[1] columns (the VAE's
    own blend_v / blend_h), then cropped to keep = (rows, columns) of pixels, the tiles' stride."""
    rows = [decoded[r : r + columns] for r in range(0, len(decoded), columns)]
    out_rows = []
    for r, row in enumerate(rows):
        out = []
        for c, tile in enumerate(row):
            if r > 0:
                tile = vae.blend_v(rows[r - 1][c], tile, blend[0])
            if c > 0:
                tile = vae.blend_h(row[c - 1], tile, blend[1])
            out.append(tile[:, :, :, : keep[0], : keep[1]])
        out_rows.append(torch.cat(out, dim=4))
    return torch.cat(out_rows, dim=3)


# derived from diffusers image_processor.py (VaeImageProcessor.denormalize, VaeImageProcessor.numpy_to_pil), version 0.42
class HostFrames:
    """Decoded pixels [3, f, H, W] in [-1, 1] → uint8 frames [f, H, W, 3] copied to the host without blocking.

    The conversion and the device-to-host copy are queued behind the decode that produced them; `wait()` returns
    the frames once that copy is done, so the caller can queue the next batch's decode before waiting (on CUDA the
    copy goes to pinned memory and overlaps nothing but its own stream's work; on the CPU it is a plain copy)."""

    def __init__(self, pix: torch.Tensor) -> None:
        frames = (pix.float() / 2 + 0.5).clamp(0, 1)  # [3, f, H, W]
        frames = (frames.permute(1, 2, 3, 0) * 255).round().to(torch.uint8)  # [f, H, W, 3]
        if frames.device.type == "cuda":
            self.host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            self.host.copy_(frames, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(torch.cuda.current_stream(frames.device))
        else:
            self.host, self.done = frames.cpu(), None

    def wait(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()


#: the DiffusersOptions that are counts or sizes: each a whole number >= 1
WHOLE_SIZES = ("num_frames", "height", "width", "fps", "latent_channels", "temporal_compression",
               "spatial_compression", "max_text_tokens", "micro_batch")


@dataclass(frozen=True, kw_only=True)
class DiffusersOptions:
    """The options every diffusers backbone takes: the keys of conf/backbone/*.yaml that are not a family's own
    (those are its constructor's keyword arguments) nor the model's sampling defaults (face.SAMPLING_DEFAULTS).
    Where a field has no default here, each family gives its own (`DiffusersBackbone.option_defaults`)."""

    model_id: str  # hub id of the weights (and the model's name in messages)
    model_path: str | None = None  # local diffusers folder of the weights
    revision: str | None = None  # hub revision
    dtype: str  # transformer and text encoder dtype: float16, bfloat16 or float32 (fp16, bf16, fp32)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, free (a GPU no other longgen job holds)
    num_frames: int  # native clip length in video frames: temporal_compression·k + 1
    height: int  # frame size in pixels: multiples of spatial_compression × the transformer's patch size
    width: int
    fps: int
    latent_channels: int = 16
    temporal_compression: int = 4  # the VAE's
    spatial_compression: int = 8  # the VAE's
    max_text_tokens: int  # the text encoder's tokens per prompt
    vae_tiling: bool | str  # auto, true, false
    cpu_offload: bool = False  # diffusers model CPU offload (CUDA)
    text_encoder: str = "release"  # after encoding: release, cpu or keep
    micro_batch: int  # samples (windows × CFG branches) per transformer call
    attention: str = "auto"  # longgen/backbones/attention.py
    compile: bool | str = "auto"  # torch.compile of each transformer block: auto (CUDA), true, false
    fused_gelu: bool | str = "auto"  # longgen/backbones/fused_gelu.py: auto, true, false
    lora: list | None = None  # LoRA adapters: [{path, scale, weight_name, name, events}] (lora.py, lora_events.py)
    random_weights: bool = False  # build `architecture` with seeded random weights instead of loading
    weights_seed: int = 0
    architecture: dict | None = None  # the model classes' constructor arguments, for random_weights
    riflex: bool | int = False  # RIFLEx (longgen/backbones/riflex.py): 2x window on a 3-D RoPE model; true or K

    def check(self, patch_size: int, attention: Sequence[str], example_config: str) -> None:
        """One line (UsageError) for the first option a family of this transformer `patch_size`, `attention`
        choices and random-weight example config cannot take; nothing is loaded."""
        if self.dtype not in DTYPES:
            raise UsageError(f"backbone.dtype={self.dtype!r} is not supported: use float16, bfloat16 or float32")
        if self.text_encoder not in TEXT_ENCODER_POLICIES:
            raise UsageError(f"backbone.text_encoder={self.text_encoder!r}: use release, cpu or keep")
        c = self.temporal_compression
        if (self.num_frames - 1) % c != 0:
            raise UsageError(f"backbone.num_frames={self.num_frames} must be {c}·k+1 (e.g. {c * 12 + 1} or "
                             f"{c * 20 + 1}) for this VAE")
        step = self.spatial_compression * patch_size  # VAE downsampling × transformer patch size
        if self.height % step or self.width % step:
            raise UsageError(f"backbone.height/width ({self.height}×{self.width}) must be multiples of {step}")
        for key in ("compile", "vae_tiling", "fused_gelu"):
            if getattr(self, key) not in (True, False, "auto"):
                raise UsageError(f"backbone.{key}={getattr(self, key)!r}: use auto, true or false")
        if self.fused_gelu is True:  # what is known before loading (an `auto` device is checked again at load)
            check_fused_gelu(torch.device("cpu" if self.device == "cpu" else "cuda"), DTYPES[self.dtype])
        if self.attention not in attention:
            raise UsageError(f"backbone.attention={self.attention!r}: use one of {', '.join(attention)}")
        if self.random_weights and not self.architecture:
            raise UsageError(f"backbone.random_weights=true needs an `architecture` section (see {example_config})")
        riflex.parse_riflex(self.riflex)


def options_signature(family: type, own: inspect.Signature) -> inspect.Signature:
    """The constructor signature a family shows (to `longgen.build`, Hydra and help): its own keyword options
    (`own`, without its **shared) followed by every DiffusersOptions field with the family's default."""
    shared = {f.name for f in fields(DiffusersOptions)}
    params = [p for p in own.parameters.values()
              if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in shared]
    for f in fields(DiffusersOptions):
        default = family.option_defaults.get(f.name, f.default)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                        default=inspect.Parameter.empty if default is MISSING else default))
    return own.replace(parameters=params)


class DiffusersBackbone(Backbone):
    """A diffusers text-to-video pipeline behind the seam. Construction only checks the configuration; `load()`
    loads weights. A family takes its own options as keyword arguments and hands the shared ones, whole, to
    `__init__` (`**shared`, checked as one DiffusersOptions); it implements the abstract hooks."""

    #: whether `vae_tiling=auto` lets the family decide per decode (it then enables the VAE's tiling and chooses
    #: whole frames or tiles in `decode_stream`); otherwise `auto` decodes untiled
    decides_tiling = False
    #: family name used in messages ("a diffusers CogVideoX folder")
    family: str = "diffusers"
    #: the family's defaults for the DiffusersOptions fields without one (and any it sets otherwise)
    option_defaults: ClassVar[dict[str, Any]] = {}
    #: the transformer's spatial patch size (frame sizes are multiples of spatial_compression × patch_size)
    patch_size: ClassVar[int] = 2
    #: the shipped random-weight config named where `architecture` is missing
    example_config: ClassVar[str] = "conf/backbone/tiny.yaml"
    #: attention kernels beyond the SDPA kernel sets, by `backbone.attention` name (longgen/backbones/attention.py)
    attention_kernels: ClassVar[Mapping[str, Kernel]] = {}
    #: the kernels `backbone.attention=auto` takes, in this order, where they run (else SDPA, cuDNN first)
    auto_attention: ClassVar[tuple[str, ...]] = ()
    #: whether the family may have two experts and checks the LoRA items' `experts` itself (Wan 2.2); else an
    #: item naming experts is refused (lora.check_experts)
    lora_experts: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every family's constructor shows its whole option set (`options_signature`), so `longgen.build` checks
        config keys and their kinds against it as against any constructor."""
        super().__init_subclass__(**kwargs)
        if "__init__" not in vars(cls):  # no options of its own: a constructor of its own to carry the signature
            inherited = cls.__init__

            def __init__(self, **shared: Any) -> None:
                inherited(self, **shared)

            cls.__init__ = __init__
        cls.__init__.__signature__ = options_signature(cls, inspect.signature(cls.__init__))

    def __init__(self, **shared: Any) -> None:
        """`shared`: the DiffusersOptions fields (the family's `option_defaults` fill those not given)."""
        options = DiffusersOptions(**{**self.option_defaults, **shared})
        # frame sizes and rates are positive whole numbers: 0 or -16 pass the multiple-of check below, and a float
        # (height=32.0) would reach torch as a tensor size; 32.0 is taken as 32
        options = replace(options, **{key: whole(f"backbone.{key}", getattr(options, key), 1) for key in WHOLE_SIZES})
        options.check(self.patch_size, attention_choices(self.attention_kernels), self.example_config)
        if options.attention in self.attention_kernels:
            self.attention_kernels[options.attention].check_installed()
        self.options = options
        self.model_id, self.model_path, self.revision = options.model_id, options.model_path, options.revision
        self.dtype_name, self.dtype = options.dtype, DTYPES[options.dtype]
        self.device_name = options.device
        self.num_frames, self.height, self.width, self.fps = (options.num_frames, options.height, options.width,
                                                              options.fps)
        self.temporal_compression = options.temporal_compression
        self.spatial_compression = options.spatial_compression
        self.max_text_tokens = options.max_text_tokens
        self.vae_tiling, self.cpu_offload = options.vae_tiling, options.cpu_offload
        self.text_encoder_policy = options.text_encoder
        self.micro_batch = options.micro_batch
        self.attention = options.attention  # as configured; resolved at load (`attention_choice`)
        self.attention_choice: AttentionChoice | None = None
        self.compile, self.fused_gelu, self.fused_gelu_layers = options.compile, options.fused_gelu, 0
        self.random_weights, self.weights_seed = options.random_weights, options.weights_seed
        self.architecture = options.architecture or {}
        self.loras = parse_loras(options.lora)  # local files found and their headers read; nothing loaded
        if not self.lora_experts:
            check_experts(self.loras, two=False)
        # a scale per event: unfused adapters, scales set per transformer call (lora_events.py)
        self.lora_events = EventScales(self.loras) if per_event(self.loras) else None
        if self.lora_events is not None and self.fused_gelu is True:
            raise UsageError("backbone.fused_gelu=true computes the feed-forward from the base weights, but a LoRA "
                             "scale per event (backbone.lora[].events) keeps the adapters unfused: use fused_gelu=auto")
        # geometry, known before any weights load
        self.native_window = (options.num_frames - 1) // options.temporal_compression + 1
        # RIFLEx: the window is the extrapolated one; the family lowers one temporal RoPE frequency at load
        self.riflex = riflex.parse_riflex(options.riflex)
        self.riflex_plan: riflex.RiflexPlan | None = None
        self.window = self.native_window if self.riflex is None else riflex.extended_window(self.native_window)
        self.latent_shape = (options.latent_channels, options.height // options.spatial_compression,
                             options.width // options.spatial_compression)
        self.pipe = None
        self._source: str | None = None
        self._prompts: list[str] = []
        self._embeds: torch.Tensor | None = None  # [P, S, D]
        self._negative: torch.Tensor | None = None  # [1, S, D]
        self.compiled = False
        self._anchor_layout = None  # the AnchorLayout while anchor_attention is on
        self.forward_count = 0
        self.call_count = 0

    # ------------------------------------------------------------------ hooks for a family
    @abstractmethod
    def _build_random(self):
        """The pipeline with the configured architecture and seeded random weights (no text encoder)."""

    @abstractmethod
    def _load_pretrained(self, source: str):
        """The pipeline from a diffusers folder, in the configured dtype, its scheduler fixed to the class the
        seam's schedule is read from."""

    @abstractmethod
    def _check_loaded(self, pipe) -> None:
        """UsageError when the loaded model's compression/channels disagree with the config."""

    @abstractmethod
    def _blocks(self) -> Sequence[torch.nn.Module]:
        """The transformer blocks (compiled one by one)."""

    @abstractmethod
    def _text_shape(self) -> tuple[int, int]:
        """(sequence length, width) of a prompt embedding from the hashed stand-in encoder."""

    @abstractmethod
    def _timesteps(self, t, rows: int) -> torch.Tensor:
        """The transformer's timestep input for `rows` samples at timestep t, on the device: [rows, ...]."""

    @abstractmethod
    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One transformer call. x: [b, F, C, H, W] model dtype; emb: [b, S, D]; t: [b, ...] → output
        [b, F, C, H, W] in the seam's layout."""

    @abstractmethod
    def _to_x0_eps(self, x_t: torch.Tensor, out: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) from the guided model output `out` for x_t, both [B, M, C, H, W] float32."""

    def _attention_models(self) -> list[torch.nn.Module]:
        """The transformers that ABAM, cross-shot attention, FreeLong and KV-sharing install their processors into:
        the pipeline's transformer (Wan 2.2 A14B: both experts, wan22.py)."""
        return [self.pipe.transformer]

    @abstractmethod
    def _anchor_processors(self) -> dict:
        """Keyword arguments of `anchored(...)` for this transformer: the processor class and which layers."""

    # ------------------------------------------------------------------ description
    @property
    def label(self) -> str:
        if self.random_weights:
            return f"{self.model_id} (random weights, backbone.weights_seed={self.weights_seed})"
        return self.model_path or self.model_id

    def frames_for(self, latent_frames: int) -> int:
        """Decoded video frames for a latent length: c·(L − 1) + 1 (the first latent frame holds one frame)."""
        return self.temporal_compression * (latent_frames - 1) + 1

    # ------------------------------------------------------------------ availability and loading
    def check_available(self) -> None:
        """Fail fast, before any work, when the weights cannot be found. Sets the local source directory."""
        resolve_hub(self.loras)  # LoRAs named by hub id: from the Hugging Face cache
        if self.random_weights:
            return
        if self.model_path:
            path = Path(self.model_path).expanduser()
            if not path.is_dir():
                raise UsageError(
                    f"backbone.model_path={self.model_path} is not a directory: point it at a local copy of "
                    f"{self.model_id} (a diffusers folder with model_index.json)"
                )
            missing = [f for f in MODEL_FILES if not (path / f).is_file()]
            missing += [d for d in SUBFOLDERS if not (path / d).is_dir()]
            if missing:
                raise UsageError(
                    f"backbone.model_path={path} is not a diffusers {self.family} folder (missing "
                    f"{', '.join(missing)}): download it with `hf download {self.model_id} --local-dir {path}`"
                )
            self._source = str(path)
            return
        from huggingface_hub import snapshot_download

        try:
            self._source = snapshot_download(self.model_id, revision=self.revision)
        except Exception as exc:  # offline, unknown repo, gated, disk full: all mean "no weights here"
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"cannot load {self.model_id}: not in the local Hugging Face cache and the hub could not be reached "
                f"({reason}); download it elsewhere (`hf download {self.model_id} --local-dir DIR`) "
                f"and pass backbone.model_path=DIR"
            ) from exc

    def load(self) -> None:
        self.device = resolve_device(self.device_name)
        self.attention_choice = resolve_attention(self.attention, self.device, self.attention_kernels,
                                                  self.auto_attention)
        if self.device.type == "cpu" and self.dtype == torch.float16 and not self.random_weights:
            log.warning("float16 on the CPU is very slow; pass backbone.dtype=float32 for CPU runs")
        if self.random_weights:
            pipe = self._build_random()
        else:
            if self._source is None:
                self.check_available()
            try:
                with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; older ones know only it
                    warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                    pipe = self._load_pretrained(self._source)
            except (OSError, ValueError) as exc:
                raise UsageError(f"could not load {self.family} from {self._source}: {exc}".splitlines()[0]) from exc
        self._check_loaded(pipe)
        if self.vae_tiling is True or (self.vae_tiling == "auto" and self.decides_tiling):
            pipe.vae.enable_tiling()
        fuse = self.lora_events is None
        if self.cpu_offload and self.device.type == "cuda":
            apply_loras(pipe, self.loras, self.model_id, fuse)  # on the CPU, before the offload hooks (lora.py)
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
            apply_loras(pipe, self.loras, self.model_id, fuse)  # on the device (lora.py)
        self.pipe = pipe
        if self.lora_events is not None:
            experts = (pipe.transformer, getattr(pipe, "transformer_2", None))  # Wan 2.2 A14B: two
            self.lora_events.attach([model for model in experts if model is not None])
        if self.attention_choice.kernel is not None:
            self.attention_choice.kernel.install(pipe.transformer)
        self._fuse_gelu()
        self.compiled = self._compile_blocks()

    def _fuse_gelu(self) -> None:
        """The feed-forwards' projection + tanh GELU as one cuBLASLt call (longgen/backbones/fused_gelu.py): `auto`
        on CUDA in fp16/bf16, `true` insists (one line where it cannot run)."""
        if self.fused_gelu is False or self.lora_events is not None:  # unfused LoRA layers: the plain projection
            return
        if self.fused_gelu is True:
            check_fused_gelu(self.device, self.dtype)
        elif not fusion_runs(self.device, self.dtype):
            return
        self.fused_gelu_layers = fuse_gelu_projections(self.pipe.transformer)

    def _seeded_build(self, build, dtype: torch.dtype | None = None):
        """Run `build()` (which constructs modules) with the global RNG seeded by `weights_seed`, on the device when
        it is CUDA (fast init of large models), without disturbing the caller's RNG state. `dtype`: the parameters'
        dtype while they are drawn (default float32); a model too large to be built in float32 on the device first
        (the A14B's two experts) is drawn in its own dtype."""
        build_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        previous = torch.get_default_dtype()
        with torch.random.fork_rng(devices=[build_device] if build_device.type == "cuda" else []):
            torch.manual_seed(self.weights_seed)
            torch.set_default_dtype(dtype or torch.float32)
            try:
                with build_device:
                    return build()
            finally:
                torch.set_default_dtype(previous)

    def _compile_blocks(self) -> bool:
        """Regional torch.compile: each transformer block (they share one graph), not the whole model, so compile
        time stays at seconds. `auto` compiles on CUDA only; a compile failure falls back to eager (see
        _transformer)."""
        want = self.compile if self.compile != "auto" else self.device.type == "cuda"
        if not want:
            return False
        # Inductor picks some kernels' launch configurations by timing them; for reductions that changes the
        # summation order, so processes could differ (compile_determinism.py).
        if not compile_determinism.install():
            log.warning("this torch's Inductor cannot fix its reduction kernels: compiled runs may differ in the last "
                        "bits between processes and between a run and its resume (backbone.compile=false avoids it)")
        for block in self._blocks():
            block.compile(dynamic=False)
        return True

    def _uncompile(self, exc: Exception) -> None:
        log.warning("torch.compile failed (%s); continuing without compilation", str(exc).splitlines()[0][:200])
        for block in self._blocks():
            block._compiled_call_impl = None
        self.compiled = False

    def release(self) -> None:
        """Drop every model and cached tensor so a following sweep job starts with free GPU memory."""
        self.pipe = None
        self._embeds = self._negative = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.device_name == "free":
            pool.release_gpu(getattr(self, "device", None))

    # ------------------------------------------------------------------ text
    def count_tokens(self, prompt: str) -> tuple[int, bool]:
        """(token count, exact) for a prompt: exact with the loaded tokenizer, else a word-based estimate."""
        tok = getattr(self.pipe, "tokenizer", None) if self.pipe is not None else None
        if tok is not None:
            return len(tok(prompt, add_special_tokens=True).input_ids), True
        if self.random_weights:
            return len(tokenize(prompt)), True
        # T5's SentencePiece splits English into ~1.3 pieces per word and punctuation mark, plus </s>; Chinese and
        # Japanese (no spaces) into about one piece per character
        tokens = tokenize(prompt)
        cjk = ideographs(tokens)
        return int(math.ceil((len(tokens) - cjk) * 1.3)) + cjk + 1, False

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[n, S, D] embeddings, in the model dtype on the device."""
        if self.random_weights:
            seq, dim = self._text_shape()
            emb = torch.stack([hashed_embedding(t, seq, dim) for t in texts])
            return emb.to(self.device, self.dtype)
        embeds, _ = self.pipe.encode_prompt(
            prompt=texts,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=self.max_text_tokens,
            device=self.device,
            dtype=self.dtype,
        )
        return embeds

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str = "") -> list[int]:
        """Encode each unique prompt once; return the id of every input prompt in the embedding table.
        The text encoder is released (or moved to the CPU) afterwards, per `backbone.text_encoder`."""
        unique = list(dict.fromkeys(prompts))
        table = self._encode_texts(unique + [negative_prompt])  # [P+1, S, D]
        self._prompts = unique
        self._embeds, self._negative = table[:-1], table[-1:]
        te = getattr(self.pipe, "text_encoder", None)
        if te is not None and not self.cpu_offload:
            if self.text_encoder_policy == "release":
                self.pipe.text_encoder = None
                del te
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            elif self.text_encoder_policy == "cpu":
                te.to("cpu")
        return [unique.index(p) for p in prompts]

    # ------------------------------------------------------------------ a LoRA scale per event
    def check_events(self, count: int) -> None:
        check_event_count(self.loras, count)

    def event_id(self, condition_id: int, event: int) -> int:
        if self.lora_events is None:
            return condition_id
        return self.lora_events.event_id(condition_id, event)

    # ------------------------------------------------------------------ denoising
    def _transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One counted transformer call under the chosen kernels; falls back to eager when compilation fails."""
        with self.attention_choice.around_calls():
            try:
                out = self._call_transformer(x, emb, t)
            except Exception as exc:
                if not self.compiled or not type(exc).__module__.startswith("torch._"):
                    raise
                self._uncompile(exc)
                out = self._call_transformer(x, emb, t)
        self.forward_count += x.shape[0]
        self.call_count += 1
        if self.on_forward is not None:
            self.on_forward(x.shape[0])
        return out

    def predict(self, x_t: torch.Tensor, t, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        with torch.no_grad():
            return self._predict(x_t, t, prompt_ids, guidance_scale)

    # derived from diffusers pipelines/cogvideo/pipeline_cogvideox.py (CogVideoXPipeline.__call__), version 0.42
    def _predict(self, x_t: torch.Tensor, t, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        """The guided prediction under whatever grad mode the caller set (predict: none; predict_grad: autograd)."""
        if self._embeds is None:
            raise RuntimeError("encode_prompts() must run before predict()")
        b = x_t.shape[0]
        self._check_frame_timesteps(t, b, x_t.shape[1])
        scales = None  # each window's LoRA scale set, with a scale per event (lora_events.py)
        if self.lora_events is not None:
            prompt_ids, scales = self.lora_events.resolve(prompt_ids)
        ids = torch.as_tensor(self._text_rows(prompt_ids), dtype=torch.long, device=self._embeds.device)
        cond = self._embeds.index_select(0, ids)  # [B, S, D]
        guided = guidance_scale > 1.0
        if guided:
            emb = torch.cat([self._negative.expand(b, -1, -1), cond])  # [2B, S, D]: unconditional first
            x_in = torch.cat([x_t, x_t])  # [2B, M, C, H, W]
        else:
            emb, x_in = cond, x_t
        x_in = x_in.to(self.device, self.dtype)
        x_in, emb = self._with_conditions(x_in, emb, prompt_ids, guided)  # image-to-video: image_conditioning.py
        ts = self._timesteps(t, x_in.shape[0])  # [2B or B, ...]
        # transformer calls of micro_batch rows, the same on 1 or N processes (longgen/backbones/micro_batch.py);
        # with a LoRA scale per event, each call holds rows of one scale set (a CFG row takes its window's)
        groups = None if scales is None else (scales + scales if guided else scales)  # [2B or B]
        out = run_stacked(
            self._transformer, x_in, emb, ts, self.micro_batch, self.units, self._anchor_layout, groups,
            self.lora_events.scaled if self.lora_events is not None else None,
        ).float()  # [2B or B, M, C, H, W]
        if guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)  # [B, M, C, H, W]
        x0, eps = self._to_x0_eps(x_t.to(out.device, torch.float32), out, t)
        return Prediction(x0=x0, eps=eps)

    # ------------------------------------------------------------------ per-window conditions (image-to-video)
    def _text_rows(self, prompt_ids: Sequence[int]) -> list[int]:
        """The text-table row of each window's condition id; a text-to-video model's ids are its rows."""
        return list(prompt_ids)

    def _with_conditions(self, x_in: torch.Tensor, emb: torch.Tensor, prompt_ids: Sequence[int],
                         guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's inputs with each window's non-text conditioning attached (none here; an
        image-to-video family adds its image, longgen/backbones/image_conditioning.py)."""
        return x_in, emb

    def _check_frame_timesteps(self, t, batch: int, frames: int) -> None:
        """A tensor t is a timestep per latent frame: [M] (every window) or [B, M] (one row per window)."""
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return
        if not self.per_frame_timesteps:
            raise UsageError(f"the {type(self).__name__} backbone takes one timestep per window, not one per frame: "
                             f"use a sampler that does not need per-frame timesteps")
        if t.shape not in ((frames,), (batch, frames)):
            raise ValueError(f"per-frame timesteps of shape {tuple(t.shape)} for {batch} windows of {frames} "
                             f"frames: expected ({frames},) or ({batch}, {frames})")

    def predict_grad(self, x_t: torch.Tensor, t, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        """`predict` with autograd enabled (differentiable in x_t); the model's weights are not updated.

        Memory: diffusers' gradient checkpointing keeps only each block's inputs and recomputes the block in the
        backward pass (a whole CogVideoX-2B window of 13 latent frames otherwise holds ~1 GB of activations per
        layer and CFG row: 66 GB for its 30 layers and two rows, which ran the lane out of an H200). It acts only
        under autograd, so `predict` is untouched. The compiled blocks run eagerly here (`force_eager`): grad mode
        and the deterministic backward would each add a compiled graph per block and shape, past Dynamo's
        recompile limit, for calls made once per window and step."""
        self._checkpoint_blocks()
        with torch.enable_grad(), torch.compiler.set_stance("force_eager"):
            return self._predict(x_t, t, prompt_ids, guidance_scale)

    def _checkpoint_blocks(self) -> None:
        """Turn on diffusers' gradient checkpointing in every transformer of the pipeline (once)."""
        for name in ("transformer", "transformer_2"):
            model = getattr(self.pipe, name, None)
            if model is not None and not getattr(model, "gradient_checkpointing", True):
                model.enable_gradient_checkpointing()

    @contextlib.contextmanager
    def anchor_attention(self, strength: float, groups: Sequence[int] | None = None) -> Iterator[None]:
        """Anchor-based attention (GLC-Diffusion Eq. 10) for every `predict` inside the block; each model's own
        processors are restored on exit. How anchors are found across CFG branches and micro-batches:
        `longgen.backbones.anchor_attention`."""
        if self.pipe is None:
            raise RuntimeError("load() must run before anchor_attention()")
        plain = type(self).predict
        with anchored(self._attention_models(), strength, groups, **self._anchor_processors()) as layout:

            def predict(x_t, t, prompt_ids, guidance_scale):
                with layout.call(x_t.shape[0]):
                    return plain(self, x_t, t, prompt_ids, guidance_scale)

            self.predict = predict  # this instance only, for the duration of the block
            self._anchor_layout = layout
            try:
                yield
            finally:
                del self.predict
                self._anchor_layout = None

    @contextlib.contextmanager
    def shot_attention(self, share: float, guided: bool) -> Iterator[Any]:
        """Cross-shot attention (longgen/backbones/shot_attention.py) for every `predict` inside the block: the
        family's processors are installed and the layout takes the place run_stacked reads anchors from; each
        model's own processors are restored on exit."""
        from longgen.backbones.shot_attention import shared_attention

        if self.pipe is None:
            raise RuntimeError("load() must run before shot_attention()")
        if self._anchor_layout is not None:
            raise UsageError("cross-shot attention cannot run inside anchor attention (ABAM): turn one off")
        with shared_attention(self._attention_models(), share, guided, **self._shot_processors()) as layout:
            self._anchor_layout = layout
            try:
                yield layout
            finally:
                self._anchor_layout = None

    def _shot_processors(self) -> dict:
        """Keyword arguments of `shared_attention(...)` for this transformer (processor factory, which layers)."""
        raise UsageError(f"the {self.family} backbone has no cross-shot attention: turn it off (shots.cross_attention=0)")

    @contextlib.contextmanager
    def spectral_attention(self, frames: int, windows: Sequence[int], temporal_cutoff: float,
                           spatial_cutoff: float | None) -> Iterator[None]:
        """FreeLong's spectral blend attention (longgen/backbones/spectral_attention.py) in every `predict` inside the
        block; each model's own processors are restored on exit. The family checks that its positions cover
        `frames` latent frames and supplies the processor (`_spectral_processor`)."""
        from longgen.backbones.spectral_attention import SpectralPlan, spectral_installed

        if self.pipe is None:
            raise RuntimeError("load() must run before spectral_attention()")
        if self._anchor_layout is not None:
            raise UsageError("FreeLong's spectral blend attention cannot run together with cross-shot attention or "
                             "ABAM: set shots.cross_attention=0")
        plan = SpectralPlan(tuple(int(w) for w in windows), float(temporal_cutoff),
                            None if spatial_cutoff is None else float(spatial_cutoff),
                            self.latent_shape[1] // self.patch_size, self.latent_shape[2] // self.patch_size)
        processor, layers = self._spectral_processor(frames, plan)
        with spectral_installed(self._attention_models(), processor, layers):
            yield

    def _spectral_processor(self, frames: int, plan: Any) -> tuple[Any, Any]:
        """(processor, which layers) of FreeLong's attention for videos of `frames` latent frames, or UsageError."""
        raise UsageError(f"the {self.family} backbone has no spectral blend attention (FreeLong): use another sampler")

    @contextlib.contextmanager
    def kv_sharing(self, layers: Sequence[int], subject: Sequence[int], threshold: float) -> Iterator[Any]:
        """DiTCtrl's KV-sharing (longgen/backbones/kv_sharing.py) for every `predict` inside the block: the family's
        processors are installed, each predict announces its windows to the layout, and the layout takes the place
        run_stacked reads anchors from; each model's own processors are restored on exit."""
        from longgen.backbones.kv_sharing import kv_shared

        if self.pipe is None:
            raise RuntimeError("load() must run before kv_sharing()")
        if self._anchor_layout is not None:
            raise UsageError("KV-sharing cannot run inside anchor or cross-shot attention: turn one off")
        kw = self._kv_processors()
        with kv_shared(self._attention_models(), layers, subject, threshold, kw["processor"], kw.get("layers"),
                       kw.get("map_processor"), kw.get("map_layers"), kw.get("subject_hook")) as layout:
            plain = type(self).predict

            def predict(x_t, t, prompt_ids, guidance_scale):
                with layout.call(x_t.shape[0], x_t.shape[1]):
                    return plain(self, x_t, t, prompt_ids, guidance_scale)

            self.predict, self._anchor_layout = predict, layout  # this instance only, for the block
            try:
                yield layout
            finally:
                del self.predict
                self._anchor_layout = None

    def check_kv_layers(self, layers: Sequence[int | None]) -> None:
        from longgen.backbones.kv_sharing import model_span

        depth = self._transformer_depth()
        if depth is not None:  # KV-sharing's layers: one self-attention layer per transformer block
            model_span(layers, depth)

    def _transformer_depth(self) -> int | None:
        """The transformer's number of blocks as its config states it, read without loading: the architecture's
        for random weights, else transformer/config.json in model_path or the Hugging Face cache; None if unknown."""
        if self.random_weights:
            depth = (self.architecture.get("transformer") or {}).get("num_layers")
            return None if depth is None else int(depth)
        from huggingface_hub import try_to_load_from_cache

        try:  # a malformed hub id or config file: unknown here, check_available and load say what is wrong
            if self.model_path:
                config = Path(self.model_path).expanduser() / "transformer" / "config.json"
            else:
                cached = try_to_load_from_cache(self.model_id, "transformer/config.json", revision=self.revision)
                config = Path(cached) if isinstance(cached, str) else None
            if config is None or not config.is_file():
                return None
            depth = json.loads(config.read_text(encoding="utf-8")).get("num_layers")
            return None if depth is None else int(depth)
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def _kv_processors(self) -> dict:
        """The KV-sharing processors for this transformer (longgen/backbones/kv_sharing.py: `cogvideox_kv`, `wan_kv`)."""
        raise UsageError(f"the {self.family} backbone has no KV-sharing: use another sampler than ditctrl")

    # ------------------------------------------------------------------ manifest
    def describe(self) -> dict:
        """Facts for the manifest."""
        info = {
            "backbone": self.label,
            "dtype": self.dtype_name,
            "device": str(getattr(self, "device", self.device_name)),
            "window_latent_frames": self.window,
            "latent_shape": list(self.latent_shape),
            "micro_batch": self.micro_batch,
            "attention": self.attention,  # as configured; what runs is resolved at load (attention.py)
            "attention_used": self.attention_choice.used if self.attention_choice else None,
            "attention_kernels": self.attention_choice.description if self.attention_choice else None,
            "compile": self.compile,
            "compiled": self.compiled,
            "fused_gelu": self.fused_gelu,
            "fused_gelu_layers": self.fused_gelu_layers,
            "cpu_offload": self.cpu_offload,
            "vae_tiling": self.vae_tiling,
            "lora": [lora.describe(k) for k, lora in enumerate(self.loras)],  # path, sha256 of the file read, scale, adapter name
        }
        if self.lora_events is not None:
            info["lora_scales"] = self.lora_events.describe()
        if self.riflex is not None:
            info["riflex"] = self.riflex_plan.describe() if self.riflex_plan else {"window": self.window}
        if self.pipe is not None:
            info["attention_processors"] = sorted({type(p).__name__ for model in self._attention_models()
                                                   for p in model.attn_processors.values()})
        if torch.cuda.is_available() and getattr(self, "device", torch.device("cpu")).type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

"""CogVideoX (Yang et al. 2024) behind the `Denoiser` seam, loaded with diffusers.

One class serves every CogVideoX variant; the YAML in `conf/backbone/` picks the weights and geometry:
- `cogvideox-2b` / `cogvideox-5b`: trained weights from a hub id (`model_id`) or a local diffusers directory
  (`model_path`), T5-XXL text encoder, v-prediction DDIM scheduler with zero terminal SNR.
- `tiny`, and any config with `random_weights: true`: the same transformer/VAE classes built from the
  `architecture` section with seeded random weights and the hashed stand-in text encoder. Nothing is downloaded;
  the compute is that of the real model when the architecture is the real one (benchmarks).

What lives here and nowhere else: v-prediction → (x̂0, ε̂) conversion, classifier-free guidance, RoPE, dtype and
device placement, CPU offload, micro-batching of windows × CFG branches, text-encoder release, and the streaming
VAE decode used by the writer.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from longgen.backbones.anchor_attention import anchored
from longgen.backbones.hashed_text import hashed_embedding, tokenize
from longgen.denoiser import Denoiser, Prediction
from longgen.diffusion import NoiseSchedule, v_to_x0_eps
from longgen.errors import UsageError

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}
_MODEL_FILES = ("model_index.json",)
#: backbone.attention → the torch SDPA kernels allowed (sdpa: torch's own default order). auto: FlashAttention-3
#: when it can run here (Hopper + the fa3-fwd package), else cuDNN first on CUDA — the fastest measured on H100
#: for CogVideoX's head dim 64 (benchmarks/README.md); fa3/fa3-fp8: longgen's processor, no SDPA
_ATTENTION = {
    "auto": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "sdpa": (),
    "cudnn": ("CUDNN_ATTENTION",),
    "flash": ("FLASH_ATTENTION",),
    "efficient": ("EFFICIENT_ATTENTION",),
    "math": ("MATH",),
    "fa3": (),  # FlashAttention-3 through longgen's processor (longgen/backbones/attention.py)
    "fa3-fp8": (),
}
_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"backbone.device={device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"backbone.device={device} but no CUDA GPU is visible: use backbone.device=cpu or auto")
    return dev


class CogVideoXBackbone(Denoiser):
    """A CogVideoX text-to-video model. Construction only checks the configuration; `load()` loads weights."""

    def __init__(
        self,
        model_id: str = "THUDM/CogVideoX-2b",
        model_path: str | None = None,
        revision: str | None = None,
        dtype: str = "float16",
        device: str = "auto",
        num_frames: int = 49,
        height: int = 480,
        width: int = 720,
        fps: int = 8,
        stride: int = 4,
        latent_channels: int = 16,
        temporal_compression: int = 4,
        spatial_compression: int = 8,
        max_text_tokens: int = 226,
        vae_tiling: bool = True,
        cpu_offload: bool = False,
        text_encoder: str = "release",
        micro_batch: int = 4,
        attention: str = "auto",
        compile: bool | str = "auto",
        random_weights: bool = False,
        weights_seed: int = 0,
        architecture: dict | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise UsageError(f"backbone.dtype={dtype!r} is not supported: use float16, bfloat16 or float32")
        if text_encoder not in ("release", "cpu", "keep"):
            raise UsageError(f"backbone.text_encoder={text_encoder!r}: use release, cpu or keep")
        if (num_frames - 1) % temporal_compression != 0:
            raise UsageError(
                f"backbone.num_frames={num_frames} must be {temporal_compression}·k+1 (e.g. 49) for this VAE"
            )
        step = spatial_compression * 2  # VAE downsampling × transformer patch size
        if height % step or width % step:
            raise UsageError(f"backbone.height/width ({height}×{width}) must be multiples of {step}")
        if micro_batch < 1:
            raise UsageError(f"backbone.micro_batch={micro_batch} must be >= 1")
        if compile not in (True, False, "auto"):
            raise UsageError(f"backbone.compile={compile!r}: use auto, true or false")
        if attention not in _ATTENTION:
            raise UsageError(f"backbone.attention={attention!r}: use one of {', '.join(_ATTENTION)}")
        if random_weights and not architecture:
            raise UsageError("backbone.random_weights=true needs an `architecture` section (see conf/backbone/tiny.yaml)")
        self.model_id = model_id
        self.model_path = model_path
        self.revision = revision
        self.dtype_name = dtype
        self.dtype = _DTYPES[dtype]
        self.device_name = device
        self.num_frames = num_frames
        self.height, self.width = height, width
        self.fps = fps
        self.stride = stride
        self.temporal_compression = temporal_compression
        self.spatial_compression = spatial_compression
        self.max_text_tokens = max_text_tokens
        self.vae_tiling = vae_tiling
        self.cpu_offload = cpu_offload
        self.text_encoder_policy = text_encoder
        self.micro_batch = micro_batch
        self.attention = attention
        self.compile = compile
        self.random_weights = random_weights
        self.weights_seed = weights_seed
        self.architecture = architecture or {}
        # geometry, known before any weights load
        self.window = (num_frames - 1) // temporal_compression + 1
        self.latent_shape = (latent_channels, height // spatial_compression, width // spatial_compression)
        self.pipe = None
        self._source: str | None = None
        self._prompts: list[str] = []
        self._embeds: torch.Tensor | None = None  # [P, S, D]
        self._negative: torch.Tensor | None = None  # [1, S, D]
        self._rope_cache: dict[int, Any] = {}
        self.compiled = False
        self.forward_count = 0
        self.call_count = 0

    # ------------------------------------------------------------------ description
    @property
    def label(self) -> str:
        if self.random_weights:
            return f"{self.model_id} (random weights, seed {self.weights_seed})"
        return self.model_path or self.model_id

    def frames_for(self, latent_frames: int) -> int:
        """Decoded video frames for a latent length: c·(L − 1) + 1 (needs odd L for CogVideoX's VAE)."""
        return self.temporal_compression * (latent_frames - 1) + 1

    def check_length(self, latent_frames: int) -> None:
        if latent_frames % 2 == 0:
            raise UsageError(
                f"the latent length L={latent_frames} is even; CogVideoX's VAE decodes only odd latent lengths "
                f"to c·(L−1)+1 frames: use an even sampler.stride or another num_windows"
            )

    # ------------------------------------------------------------------ availability and loading
    def check_available(self) -> None:
        """Fail fast, before any work, when the weights cannot be found. Sets the local source directory."""
        if self.random_weights:
            return
        if self.model_path:
            path = Path(self.model_path).expanduser()
            if not path.is_dir():
                raise UsageError(
                    f"backbone.model_path={self.model_path} is not a directory: point it at a local copy of "
                    f"{self.model_id} (a diffusers folder with model_index.json)"
                )
            missing = [f for f in _MODEL_FILES if not (path / f).is_file()]
            missing += [d for d in _SUBFOLDERS if not (path / d).is_dir()]
            if missing:
                raise UsageError(
                    f"backbone.model_path={path} is not a diffusers CogVideoX folder (missing {', '.join(missing)}): "
                    f"download it with `huggingface-cli download {self.model_id} --local-dir {path}`"
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
                f"({reason}); download it elsewhere (`huggingface-cli download {self.model_id} --local-dir DIR`) "
                f"and pass backbone.model_path=DIR"
            ) from exc

    def load(self) -> None:
        from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

        self.device = resolve_device(self.device_name)
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
                    pipe = CogVideoXPipeline.from_pretrained(self._source, torch_dtype=self.dtype)
            except (OSError, ValueError) as exc:
                raise UsageError(f"could not load CogVideoX from {self._source}: {exc}".splitlines()[0]) from exc
            # Samplers implement DDIM themselves from ᾱ; the scheduler's own config (v-prediction, zero terminal
            # SNR, SNR shift, trailing spacing) is kept and only its class is fixed to the DDIM variant.
            pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
        self._check_loaded(pipe)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        if self.cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        self.pipe = pipe
        self.attention_used = self._install_attention()
        self.compiled = self._compile_blocks()

    def _install_attention(self) -> str:
        """Put longgen's FlashAttention-3 processor on every attention layer when asked (or when `auto` finds it
        usable); return the kernel that runs."""
        from longgen.backbones.attention import KERNELS, JointAttention, check_fa3, fa3_available

        kernel = self.attention
        if kernel == "auto" and self.device.type == "cuda" and fa3_available(self.device):
            kernel = "fa3"
        if kernel not in KERNELS:
            return kernel
        check_fa3(self.device)
        self.pipe.transformer.set_attn_processor(JointAttention(kernel))
        return kernel

    def _compile_blocks(self) -> bool:
        """Regional torch.compile: each transformer block (they share one graph), not the whole model, so compile
        time stays at seconds. `auto` compiles on CUDA only; a compile failure falls back to eager (see
        _call_transformer)."""
        want = self.compile if self.compile != "auto" else self.device.type == "cuda"
        if not want:
            return False
        for block in self.pipe.transformer.transformer_blocks:
            block.compile(dynamic=False)
        return True

    def _uncompile(self, exc: Exception) -> None:
        log.warning("torch.compile failed (%s); continuing without compilation", str(exc).splitlines()[0][:200])
        for block in self.pipe.transformer.transformer_blocks:
            block._compiled_call_impl = None
        self.compiled = False

    def _build_random(self):
        """Transformer and VAE of the configured architecture with seeded random weights; no tokenizer/T5."""
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

        arch = {k: dict(v) for k, v in self.architecture.items()}
        build_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        with torch.random.fork_rng(devices=[build_device] if build_device.type == "cuda" else []):
            torch.manual_seed(self.weights_seed)
            with build_device:
                transformer = CogVideoXTransformer3DModel(**arch.get("transformer", {}))
                vae = AutoencoderKLCogVideoX(**arch.get("vae", {}))
        if self.dtype != torch.float32:
            transformer.to(self.dtype)
            vae.to(self.dtype)
        transformer.eval()
        vae.eval()
        scheduler = CogVideoXDDIMScheduler(**arch.get("scheduler", {}))
        return CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)

    def _check_loaded(self, pipe) -> None:
        vae_t = pipe.vae.config.temporal_compression_ratio
        vae_s = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        chans = pipe.transformer.config.in_channels
        if (vae_t, vae_s, chans) != (self.temporal_compression, self.spatial_compression, self.latent_shape[0]):
            raise UsageError(
                f"the loaded model has temporal/spatial compression {vae_t}/{vae_s} and {chans} latent channels, but "
                f"the backbone config says {self.temporal_compression}/{self.spatial_compression}/{self.latent_shape[0]}: "
                f"fix conf/backbone or pick the matching backbone"
            )

    def release(self) -> None:
        """Drop every model and cached tensor so a following sweep job starts with free GPU memory."""
        self.pipe = None
        self._embeds = self._negative = None
        self._rope_cache.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ text
    def count_tokens(self, prompt: str) -> tuple[int, bool]:
        """(token count, exact) for a prompt: exact with the loaded tokenizer, else a word-based estimate."""
        tok = getattr(self.pipe, "tokenizer", None) if self.pipe is not None else None
        if tok is not None:
            return len(tok(prompt, add_special_tokens=True).input_ids), True
        if self.random_weights:
            return len(tokenize(prompt)), True
        # T5's SentencePiece splits English into ~1.3 pieces per word and punctuation mark, plus </s>.
        return int(math.ceil(len(tokenize(prompt)) * 1.3)) + 1, False

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[n, S, D] embeddings, in the model dtype on the device."""
        if self.random_weights:
            tcfg = self.pipe.transformer.config
            emb = torch.stack([hashed_embedding(t, tcfg.max_text_seq_length, tcfg.text_embed_dim) for t in texts])
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

    # ------------------------------------------------------------------ denoising
    def schedule(self, num_steps: int) -> NoiseSchedule:
        sched = self.pipe.scheduler
        sched.set_timesteps(num_steps, device="cpu")
        acp = sched.alphas_cumprod.to(torch.float64)  # [T_train]
        final = float(sched.final_alpha_cumprod)
        jump = sched.config.num_train_timesteps // num_steps
        ts = tuple(int(t) for t in sched.timesteps)
        # the scheduler's own rule for the target of each step (CogVideoXDDIMScheduler.step): t − T/n, or its
        # final ᾱ past zero
        prev = tuple(float(acp[t - jump]) if t - jump >= 0 else final for t in ts)
        return NoiseSchedule(alphas_cumprod=acp, timesteps=ts, alphas_cumprod_prev=prev)

    def _rope(self, frames: int):
        if not self.pipe.transformer.config.use_rotary_positional_embeddings:
            return None
        if frames not in self._rope_cache:
            self._rope_cache[frames] = self.pipe._prepare_rotary_positional_embeddings(
                self.height, self.width, frames, self.device
            )
        return self._rope_cache[frames]

    def _attention_kernels(self):
        names = _ATTENTION[getattr(self, "attention_used", self.attention)]
        if not names or self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, n) for n in names], set_priority=True)

    def _transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One batched transformer call. x: [b, F, C, H, W] model dtype; emb: [b, S, D]; t: [b] → v [b, F, C, H, W]."""
        with self._attention_kernels():
            try:
                out = self._call_transformer(x, emb, t)
            except Exception as exc:
                if not self.compiled or not type(exc).__module__.startswith("torch._"):
                    raise
                self._uncompile(exc)
                out = self._call_transformer(x, emb, t)
        self.forward_count += x.shape[0]
        self.call_count += 1
        return out

    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.pipe.transformer(
            hidden_states=x,
            encoder_hidden_states=emb,
            timestep=t,
            image_rotary_emb=self._rope(x.shape[1]),
            return_dict=False,
        )[0]

    def predict(self, x_t: torch.Tensor, t: int, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        with torch.no_grad():
            return self._predict(x_t, t, prompt_ids, guidance_scale)

    def _predict(self, x_t: torch.Tensor, t: int, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        """The guided prediction under whatever grad mode the caller set (predict: none; predict_grad: autograd)."""
        if self._embeds is None:
            raise RuntimeError("encode_prompts() must run before predict()")
        b = x_t.shape[0]
        ids = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=self._embeds.device)
        cond = self._embeds.index_select(0, ids)  # [B, S, D]
        guided = guidance_scale > 1.0
        if guided:
            emb = torch.cat([self._negative.expand(b, -1, -1), cond])  # [2B, S, D]: unconditional first
            x_in = torch.cat([x_t, x_t])  # [2B, M, C, H, W]
        else:
            emb, x_in = cond, x_t
        x_in = x_in.to(self.device, self.dtype)
        ts = torch.full((x_in.shape[0],), int(t), dtype=torch.long, device=self.device)
        mb = self.micro_batch
        v = torch.cat(
            [self._transformer(x_in[i : i + mb], emb[i : i + mb], ts[i : i + mb]) for i in range(0, x_in.shape[0], mb)]
        ).float()  # [2B or B, M, C, H, W]
        if guided:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)  # [B, M, C, H, W]
        acp = float(self.pipe.scheduler.alphas_cumprod[int(t)])
        a, s = math.sqrt(acp), math.sqrt(1.0 - acp)
        x0, eps = v_to_x0_eps(x_t.to(v.device, torch.float32), v, a, s)
        return Prediction(x0=x0, eps=eps)

    @contextlib.contextmanager
    def anchor_attention(self, strength: float, groups: Sequence[int] | None = None) -> Iterator[None]:
        """Anchor-based attention (GLC-Diffusion Eq. 10) for every `predict` inside the block; the transformer's own
        processors are restored on exit. How anchors are found across CFG branches and micro-batches:
        `longgen.backbones.anchor_attention`."""
        if self.pipe is None:
            raise RuntimeError("load() must run before anchor_attention()")
        plain = type(self).predict
        kernel = self.attention_used if str(self.attention_used).startswith("fa3") else "sdpa"
        with anchored(self.pipe.transformer, strength, groups, kernel) as layout:

            def predict(x_t, t, prompt_ids, guidance_scale):
                with layout.call(x_t.shape[0]):
                    return plain(self, x_t, t, prompt_ids, guidance_scale)

            self.predict = predict  # this instance only, for the duration of the block
            try:
                yield
            finally:
                del self.predict

    def predict_grad(self, x_t: torch.Tensor, t: int, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        """`predict` with autograd enabled (differentiable in x_t); the model's weights are not updated."""
        with torch.enable_grad():
            return self._predict(x_t, t, prompt_ids, guidance_scale)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Decode [1, L, C, H, W] latents to uint8 RGB frames [f, H, W, 3], a few at a time.

        Walks the VAE's own temporal batches (the first carries the remainder) and carries its causal-conv cache
        from batch to batch, exactly as `AutoencoderKLCogVideoX.decode` does, so the frames equal a whole decode
        while memory stays bounded by one batch. With tiling on, each spatial tile keeps its own cache and tiles
        are blended with the VAE's blend functions per batch (equal to `tiled_decode`).
        """
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        z = (latents.to(self.device, vae.dtype) / vae.config.scaling_factor).permute(0, 2, 1, 3, 4)  # [1, C, L, H, W]
        n = z.shape[2]
        fb = vae.num_latent_frames_batch_size
        rem = n % fb
        bounds = [(0, fb + rem)] + [(fb * k + rem, fb * (k + 1) + rem) for k in range(1, max(n // fb, 1))]
        tiled = vae.use_tiling and (z.shape[4] > vae.tile_latent_min_width or z.shape[3] > vae.tile_latent_min_height)
        caches: dict[tuple[int, int], Any] = {}
        for lo, hi in bounds:
            zb = z[:, :, lo:hi]  # [1, C, b, H, W]
            if tiled:
                pix = self._decode_tiles(vae, zb, caches)
            else:
                pix, caches[(0, 0)] = self._decode_block(vae, zb, caches.get((0, 0)))
            frames = (pix[0].float() / 2 + 0.5).clamp(0, 1)  # [3, f, H, W]
            yield (frames.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).cpu().numpy()  # [f, H, W, 3]

    @staticmethod
    def _decode_block(vae, z: torch.Tensor, cache):
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return vae.decoder(z, conv_cache=cache)

    def _decode_tiles(self, vae, z: torch.Tensor, caches: dict) -> torch.Tensor:
        """Spatially tiled decode of one temporal batch z [1, C, b, h, w] → [1, 3, f, H, W]."""
        th, tw = vae.tile_latent_min_height, vae.tile_latent_min_width
        step_h = int(th * (1 - vae.tile_overlap_factor_height))
        step_w = int(tw * (1 - vae.tile_overlap_factor_width))
        blend_h = int(vae.tile_sample_min_height * vae.tile_overlap_factor_height)
        blend_w = int(vae.tile_sample_min_width * vae.tile_overlap_factor_width)
        keep_h = vae.tile_sample_min_height - blend_h
        keep_w = vae.tile_sample_min_width - blend_w
        rows = []
        for i in range(0, z.shape[3], step_h):
            row = []
            for j in range(0, z.shape[4], step_w):
                tile, caches[(i, j)] = self._decode_block(vae, z[:, :, :, i : i + th, j : j + tw], caches.get((i, j)))
                row.append(tile)
            rows.append(row)
        out_rows = []
        for r, row in enumerate(rows):
            out = []
            for c, tile in enumerate(row):
                if r > 0:
                    tile = vae.blend_v(rows[r - 1][c], tile, blend_h)
                if c > 0:
                    tile = vae.blend_h(row[c - 1], tile, blend_w)
                out.append(tile[:, :, :, :keep_h, :keep_w])
            out_rows.append(torch.cat(out, dim=4))
        return torch.cat(out_rows, dim=3)

    def describe(self) -> dict:
        """Facts for the manifest."""
        info = {
            "backbone": self.label,
            "dtype": self.dtype_name,
            "device": str(getattr(self, "device", self.device_name)),
            "window_latent_frames": self.window,
            "latent_shape": list(self.latent_shape),
            "micro_batch": self.micro_batch,
            "attention": self.attention,
            "attention_used": getattr(self, "attention_used", None),
            "attention_kernels": list(_ATTENTION[getattr(self, "attention_used", self.attention)])
            or ("FlashAttention-3 (fa3-fwd)" if str(getattr(self, "attention_used", "")).startswith("fa3") else "torch default"),
            "compile": self.compile,
            "compiled": self.compiled,
            "cpu_offload": self.cpu_offload,
            "vae_tiling": self.vae_tiling,
        }
        if self.pipe is not None:
            proc = self.pipe.transformer.attn_processors
            info["attention_processors"] = sorted({type(p).__name__ for p in proc.values()})
        if torch.cuda.is_available() and getattr(self, "device", torch.device("cpu")).type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info


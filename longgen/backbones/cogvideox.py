"""CogVideoX (Yang et al. 2024) behind the `Denoiser` seam, loaded with diffusers.

One class serves every CogVideoX variant; the YAML in `conf/backbone/` picks the weights and geometry:
- `cogvideox-2b` / `cogvideox-5b`: trained weights from a hub id (`model_id`) or a local diffusers directory
  (`model_path`), T5-XXL text encoder, v-prediction DDIM scheduler with zero terminal SNR.
- `tiny`, and any config with `random_weights: true`: the same transformer/VAE classes built from the
  `architecture` section with seeded random weights and the hashed stand-in text encoder. Nothing is downloaded;
  the compute is that of the real model when the architecture is the real one (benchmarks).

What lives here: the variance-preserving schedule read from `CogVideoXDDIMScheduler`, v-prediction → (x̂0, ε̂),
RoPE (5B), the joint text-video attention processors for ABAM, cross-shot attention and FreeLong, per-frame timesteps
(`per_frame_timesteps`: each latent frame's tokens modulated from its own timestep,
`longgen.backbones.frame_timesteps`), the VAE encode of video frames (`longgen extend`), and the streaming VAE
decode used by the writer.
Loading, text encoding, guidance, micro-batching, offload and compilation are shared with every diffusers backbone
(`longgen.backbones.diffusers_base`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from longgen.backbones import riflex
from longgen.backbones.anchor_attention import cogvideox_anchor
from longgen.backbones.attention import KERNELS, JointKernel
from longgen.backbones.diffusers_base import DiffusersBackbone, HostFrames, pixels_to_vae, stitch_tiles
from longgen.backbones.frame_timesteps import FrameModulation
from longgen.backbones.group_norm import parallel_group_norms
from longgen.backbones.shot_attention import cogvideox_shot
from longgen.diffusion import NoiseSchedule, v_to_x0_eps
from longgen.errors import UsageError


#: `backbone.vae_norm`: the VAE's group normalisations as split-block reductions (`parallel`, longgen/backbones/
#: group_norm.py; 4.5 s of a 14.4 s 4× decode on an H100 was torch's kernel) or torch's own kernel (`native`)
VAE_NORMS = ("parallel", "native")
#: GPU memory a whole-frame (untiled) decode of one temporal batch needs per output pixel, fp16: measured peak
#: 18.4 GB with 3.8 GB of weights at 480×720 on an H100 (42 KB/pixel), plus 13 % margin (`vae_tiling=auto`)
UNTILED_DECODE_BYTES_PER_PIXEL = 48_000


class CogVideoXBackbone(DiffusersBackbone):
    """A CogVideoX text-to-video model. Construction only checks the configuration; `load()` loads weights."""

    family = "CogVideoX"
    #: the shared options' defaults (DiffusersOptions) for CogVideoX-2B; conf/backbone/cogvideox-2b.yaml gives them all
    option_defaults = dict(model_id="THUDM/CogVideoX-2b", dtype="float16", num_frames=49, height=480, width=720,
                           fps=8, max_text_tokens=226, vae_tiling="auto", micro_batch=4)
    #: FlashAttention-3 through longgen's joint-attention processor (longgen/backbones/attention.py); `auto` takes
    #: fa3 where it runs (a Hopper GPU with fa3-fwd), else the SDPA kernel order (cuDNN first)
    attention_kernels = {name: JointKernel(name) for name in KERNELS}
    auto_attention = ("fa3",)
    #: a timestep per latent frame (t [M] or [B, M]): per-frame adaLN modulation, see frame_timesteps.py
    per_frame_timesteps = True
    #: `vae_tiling=auto`: whole frames when the GPU has room, else tiles (`_tiled_decode`)
    decides_tiling = True

    def __init__(self, *, vae_norm: str = "parallel", **shared: Any) -> None:
        """`vae_norm`: CogVideoX's own option; `shared`: the DiffusersOptions, handed over whole."""
        super().__init__(**shared)
        if vae_norm not in VAE_NORMS:
            raise UsageError(f"backbone.vae_norm={vae_norm!r}: use {' or '.join(VAE_NORMS)}")
        self.vae_norm = vae_norm
        self._rope_cache: dict[int, Any] = {}
        self._frame_modulation: FrameModulation | None = None
        if "use_rotary_positional_embeddings" in self.architecture.get("transformer", {}):  # the config's model
            self._check_riflex(dict(self.architecture["transformer"]))  # facts: refused before any download

    def _check_riflex(self, transformer_config: dict) -> None:
        """backbone.riflex on a transformer without rotary embeddings (CogVideoX-2B: absolute positions): one line."""
        if self.riflex is not None and not transformer_config.get("use_rotary_positional_embeddings", False):
            raise UsageError(f"backbone.riflex needs rotary position embeddings, but {self.model_id} uses absolute "
                             f"positions (CogVideoX-2B's kind): use backbone.riflex=false or a RoPE model "
                             f"(backbone=cogvideox-5b)")
        head = transformer_config.get("attention_head_dim")  # its temporal quarter carries the temporal RoPE
        riflex.check_component(self.riflex, None if head is None else int(head) // 4)

    def check_available(self) -> None:
        super().check_available()
        config = Path(self._source or "") / "transformer" / "config.json"
        if self.riflex is not None and not self.random_weights and config.is_file():
            self._check_riflex(json.loads(config.read_text(encoding="utf-8")))

    def check_length(self, latent_frames: int, fix: str | None = None) -> None:
        if latent_frames % 2 == 0:
            raise UsageError(
                f"the latent length L={latent_frames} is even; CogVideoX's VAE decodes only odd latent lengths "
                f"to c·(L−1)+1 frames: {fix or 'use an even sampler.stride or another num_windows'}"
            )

    # ------------------------------------------------------------------ loading
    def _load_pretrained(self, source: str):
        from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

        pipe = CogVideoXPipeline.from_pretrained(source, torch_dtype=self.dtype)
        # Samplers implement DDIM themselves from ᾱ; the scheduler's own config (v-prediction, zero terminal
        # SNR, SNR shift, trailing spacing) is kept and only its class is fixed to the DDIM variant.
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
        return pipe

    def _build_random(self):
        """Transformer and VAE of the configured architecture with seeded random weights; no tokenizer/T5."""
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

        arch = {k: dict(v) for k, v in self.architecture.items()}
        transformer, vae = self._seeded_build(lambda: (
            CogVideoXTransformer3DModel(**arch.get("transformer", {})),
            AutoencoderKLCogVideoX(**arch.get("vae", {})),
        ))
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

    def load(self) -> None:
        super().load()
        if self.vae_norm == "parallel":  # the VAE's group norms with split-block statistics (group_norm.py)
            parallel_group_norms(self.pipe.vae)
        if self.riflex is not None:  # the temporal quarter of the head dimension, base 10000 (diffusers' 3-D RoPE)
            tcfg = self.pipe.transformer.config
            self._check_riflex(dict(tcfg))
            self.riflex_plan = riflex.plan(self.riflex, tcfg.attention_head_dim // 4, 10000.0, self.native_window)

    def _blocks(self) -> Sequence[torch.nn.Module]:
        return self.pipe.transformer.transformer_blocks

    def release(self) -> None:
        self._rope_cache.clear()
        self._frame_modulation = None
        super().release()

    def _text_shape(self) -> tuple[int, int]:
        tcfg = self.pipe.transformer.config
        return tcfg.max_text_seq_length, tcfg.text_embed_dim

    # ------------------------------------------------------------------ denoising
    # derived from diffusers schedulers/scheduling_ddim_cogvideox.py (CogVideoXDDIMScheduler.step), version 0.42
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
        return NoiseSchedule.vp(alphas_cumprod=acp, timesteps=ts, alphas_cumprod_prev=prev)

    def _rope(self, frames: int):
        if not self.pipe.transformer.config.use_rotary_positional_embeddings:
            return None
        if frames not in self._rope_cache:
            table = self.pipe._prepare_rotary_positional_embeddings(self.height, self.width, frames, self.device)
            if self.riflex_plan is not None:  # (cos, sin) [F·h·w, D]: RIFLEx's lowered temporal component
                patch = self.spatial_compression * self.pipe.transformer.config.patch_size
                table = riflex.patch_rows(*table, (self.height // patch) * (self.width // patch), self.riflex_plan)
            self._rope_cache[frames] = table
        return self._rope_cache[frames]

    def _timesteps(self, t, rows: int) -> torch.Tensor:
        """[rows] int64 for one timestep; [rows, M] float32 for per-frame timesteps (t [M], or [B, M] with rows a
        multiple of B: the guidance branches are stacked window-major within each branch)."""
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            frames = t.to(self.device, torch.float32).reshape(-1, t.shape[-1])  # [1 or B, M]
            return frames.repeat(rows // frames.shape[0], 1)  # [rows, M]
        return torch.full((rows,), int(t), dtype=torch.long, device=self.device)  # [rows]

    def _call_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [b, F, C, H, W] (CogVideoX's own layout); t: [b] or [b, F] (per frame) → v [b, F, C, H, W]."""
        if t.dim() == 2:
            if t.shape[1] != x.shape[1]:
                raise ValueError(f"{t.shape[1]} per-frame timesteps for windows of {x.shape[1]} latent frames")
            if self._frame_modulation is None:
                self._frame_modulation = FrameModulation(self.pipe.transformer)
            with self._frame_modulation.installed(t) as mean:  # mean: t̄ [b], the text tokens' timestep
                return self._run_transformer(x, emb, mean)
        return self._run_transformer(x, emb, t)

    def _run_transformer(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.pipe.transformer(
            hidden_states=x,
            encoder_hidden_states=emb,
            timestep=t,
            image_rotary_emb=self._rope(x.shape[1]),
            return_dict=False,
        )[0]

    def _to_x0_eps(self, x_t: torch.Tensor, out: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        acp = self.pipe.scheduler.alphas_cumprod
        if isinstance(t, torch.Tensor) and t.dim() >= 1:  # per frame: a, s [1 or B, M, 1, 1, 1]
            frames = t.reshape(-1, t.shape[-1]).tolist()  # [1 or B][M]
            a = [[math.sqrt(float(acp[int(v)])) for v in row] for row in frames]
            s = [[math.sqrt(1.0 - float(acp[int(v)])) for v in row] for row in frames]
            shape = (len(frames), len(frames[0]), 1, 1, 1)
            a_t = torch.tensor(a, dtype=torch.float32, device=out.device).reshape(shape)
            s_t = torch.tensor(s, dtype=torch.float32, device=out.device).reshape(shape)
            return v_to_x0_eps(x_t, out, a_t, s_t)
        a, s = math.sqrt(float(acp[int(t)])), math.sqrt(1.0 - float(acp[int(t)]))
        return v_to_x0_eps(x_t, out, a, s)

    def _processor_kernel(self) -> str:
        """The kernel the ABAM and cross-shot processors compute with: the resolved FlashAttention-3 kernel, else
        SDPA."""
        kernel = self.attention_choice.kernel
        return kernel.name if kernel is not None else "sdpa"

    def _anchor_processors(self) -> dict:
        """ABAM processors on the kernel in use (FlashAttention-3 or SDPA)."""
        return {"processor": cogvideox_anchor(self._processor_kernel())}

    def _shot_processors(self) -> dict:
        """Cross-shot attention processors on the kernel in use (FlashAttention-3 or SDPA)."""
        return {"processor": cogvideox_shot(self._processor_kernel())}

    def _spectral_processor(self, frames: int, plan) -> tuple:
        """FreeLong's processor on every joint attention layer, on the kernel in use; one line where the model's
        tokens or positions do not fit it (spectral_attention.py)."""
        from dataclasses import replace

        from longgen.backbones.spectral_attention import CogVideoXSpectralProcessor, shared_processor

        cfg = self.pipe.transformer.config
        if cfg.patch_size_t is not None or cfg.patch_size != self.patch_size:
            raise UsageError(f"FreeLong needs one token frame per latent frame and {self.patch_size}×"
                             f"{self.patch_size} patches; this CogVideoX has patch_size_t={cfg.patch_size_t}, "
                             f"patch_size={cfg.patch_size}: use another sampler")
        if cfg.use_learned_positional_embeddings and frames != self.window:
            raise UsageError(f"this CogVideoX has learned positional embeddings for {self.window} latent frames only; "
                             f"FreeLong runs all {frames} as one sequence: use another sampler")
        plan = replace(plan, text=cfg.max_text_seq_length, kernel=self._processor_kernel())
        return shared_processor(CogVideoXSpectralProcessor, plan), None

    def _kv_processors(self) -> dict:
        """DiTCtrl's KV-sharing on every joint attention layer (torch SDPA; longgen/backbones/kv_sharing.py)."""
        from longgen.backbones.kv_sharing import cogvideox_kv

        return cogvideox_kv()

    def describe(self) -> dict:
        info = super().describe()
        info["vae_norm"] = self.vae_norm
        return info

    # ------------------------------------------------------------------ encoding (longgen extend)
    # derived from diffusers pipelines/cogvideo/pipeline_cogvideox_video2video.py (CogVideoXVideoToVideoPipeline.prepare_latents), version 0.42
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames [f, H, W, 3] with f = c·(L − 1) + 1 → latents [1, L, C, h, w] float32 on the seam's scale:
        the mean of the VAE's posterior (not a sample: the same frames give the same latents) times the VAE's
        scaling factor, the inverse of `decode_stream`'s division."""
        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: bring the VAE onto the device first
            hook.pre_forward(vae)
        x = pixels_to_vae(frames, self.device, vae.dtype)  # [1, 3, f, H, W]
        z = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor  # [1, C, L, h, w]
        return z.permute(0, 2, 1, 3, 4).float()  # [1, L, C, h, w]

    # ------------------------------------------------------------------ decoding
    # derived from diffusers pipelines/cogvideo/pipeline_cogvideox.py (CogVideoXPipeline.decode_latents), version 0.42
    # derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (AutoencoderKLCogVideoX._decode), version 0.42
    @torch.no_grad()
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Decode [1, L, C, H, W] latents to uint8 RGB frames [f, H, W, 3], a few at a time.

        Walks the VAE's own temporal batches (the first carries the remainder) and carries its causal-conv cache
        from batch to batch, exactly as `AutoencoderKLCogVideoX.decode` does, so the frames equal a whole decode
        while memory stays bounded by one batch. With tiling on, each spatial tile keeps its own cache and tiles
        are blended with the VAE's blend functions per batch (equal to `tiled_decode`). The tiles (or the whole
        batch, untiled) are units of work (`self.units`): on several processes tile k of every batch runs on rank
        k mod N, which keeps its cache, and every process receives every tile's bytes.
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
        tiled = self._tiled_decode(vae, z)
        caches: dict[tuple[int, int], Any] = {}
        pending = None  # the previous batch's frames on their way to the host
        for lo, hi in bounds:
            zb = z[:, :, lo:hi]  # [1, C, b, H, W]
            if tiled:
                pix = self._decode_tiles(vae, zb, caches)
            else:

                def whole(k: int, zb=zb) -> torch.Tensor:
                    pix, caches[(0, 0)] = self._decode_block(vae, zb, caches.get((0, 0)))
                    return pix

                pix = self.units.map(whole, [1], kind="decode", wait=False)[0]  # one unit: rank 0 decodes
            # this batch's kernels are queued: hand over the previous batch while the device works on this one
            if pending is not None:
                yield pending.wait()
            pending = HostFrames(pix[0])
        if pending is not None:
            yield pending.wait()

    # derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (AutoencoderKLCogVideoX._decode), version 0.42
    def _tiled_decode(self, vae, z: torch.Tensor) -> bool:
        """Whether to decode in spatial tiles. diffusers' CogVideoX tiles are half the frame each way, so a tiled
        480×720 decode runs 3 × 3 overlapping tiles: 2.25× the convolutions and 15.1 s against 6.5 s whole on an
        H100 (scripts/decode_probe.py). `vae_tiling=auto` therefore decodes whole frames when the GPU has room
        (measured need, UNTILED_DECODE_BYTES_PER_PIXEL) and tiles otherwise; `true` tiles whenever the frame is
        larger than a tile, `false` never tiles."""
        larger = z.shape[4] > vae.tile_latent_min_width or z.shape[3] > vae.tile_latent_min_height
        if not (vae.use_tiling and larger):
            return False
        if self.vae_tiling is True:
            return True
        if self.device.type != "cuda":
            return True  # host memory: keep the bounded tiled decode
        pixels = z.shape[3] * z.shape[4] * self.spatial_compression**2
        need = UNTILED_DECODE_BYTES_PER_PIXEL * pixels * vae.dtype.itemsize // 2
        return self._gpu_room() < need

    def _gpu_room(self) -> int:
        """Bytes this process can still allocate on its GPU. One process also sees what others hold (the free
        memory); several ranks must take the same decision, so they count only the card's size and their own
        (equal) allocations."""
        allocated = torch.cuda.memory_allocated(self.device)
        room = torch.cuda.get_device_properties(self.device).total_memory - allocated
        if self.units.size == 1:
            free, _ = torch.cuda.mem_get_info(self.device)
            room = min(room, free + torch.cuda.memory_reserved(self.device) - allocated)
        return room

    # derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (AutoencoderKLCogVideoX._decode), version 0.42
    @staticmethod
    def _decode_block(vae, z: torch.Tensor, cache):
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return vae.decoder(z, conv_cache=cache)

    # derived from diffusers models/autoencoders/autoencoder_kl_cogvideox.py (AutoencoderKLCogVideoX.tiled_decode), version 0.42
    def _decode_tiles(self, vae, z: torch.Tensor, caches: dict) -> torch.Tensor:
        """Spatially tiled decode of one temporal batch z [1, C, b, h, w] → [1, 3, f, H, W]."""
        th, tw = vae.tile_latent_min_height, vae.tile_latent_min_width
        step_h = int(th * (1 - vae.tile_overlap_factor_height))
        step_w = int(tw * (1 - vae.tile_overlap_factor_width))
        blend_h = int(vae.tile_sample_min_height * vae.tile_overlap_factor_height)
        blend_w = int(vae.tile_sample_min_width * vae.tile_overlap_factor_width)
        keep_h = vae.tile_sample_min_height - blend_h
        keep_w = vae.tile_sample_min_width - blend_w
        starts_h, starts_w = range(0, z.shape[3], step_h), range(0, z.shape[4], step_w)
        tiles = [(i, j) for i in starts_h for j in starts_w]

        def decode_tile(k: int) -> torch.Tensor:
            i, j = tiles[k]
            out, caches[(i, j)] = self._decode_block(vae, z[:, :, :, i : i + th, j : j + tw], caches.get((i, j)))
            return out  # [1, 3, f, th·8, tw·8]

        decoded = self.units.map(decode_tile, [1] * len(tiles), kind="decode")
        return stitch_tiles(vae, decoded, len(starts_w), (blend_h, blend_w), (keep_h, keep_w))  # [1, 3, f, H, W]

"""`longgen extend VIDEO.mp4 [prompt=… | story=… | scenario=…] [num_windows=N] …`: continue a video — one that
longgen made or any other — from its last frames, with the story of the new part (LCT's shot extension, Guo et al.
2025, §3.2.3 and Fig. 1, done without training).

The stages of an extend run (the command is longgen/commands/extend.py); they compose the shared stages
(longgen/run/job.py, longgen/run/stages.py) with three of their own:
1. plan (`plan_extend`): options; backbone, sampler and writer; the new part's story and which event each window
   shows (`plan_events`: generate's plan, longgen.windows.event_plan, over the new part — window centres and a
   timed story's seconds count from the join, windows centred in the history show the first event, every event
   gets a window whenever the windows can give it one; logged at start and written to the manifest's `events`); and
   the input video, streamed once: its frames are resampled to the backbone's frame rate (nearest frame in time,
   when the rates differ) and resized and center-cropped to the backbone's size (reported; `resize=false` refuses a
   video of another size), and the last c·(h − 1) + 1 of them (c the VAE's temporal compression) are kept as the
   history. Every bad input fails here with one line and nothing written: a missing file, not a video, a video too
   short for the history, a size the backbone cannot take with resize=false. On an image-to-video backbone the
   story's events may carry key images (`event_images`: each conditions the first of its event's windows that starts
   after the history; by the same window → event map as the prompts).
2. encode: the prompts (generate's stage), then the history frames through the VAE → h latent frames z_h.
3. sample (generate's stage: checkpoints, previews, Ctrl-C and `longgen resume` work as for generate): the
   configured sampler over a latent of L = M + S·(N − 1) frames, [h history | L − h new], wrapped by
   `HistorySampler`, which keeps the history as known context:
   - `context=per-frame` (backbones with per-frame timesteps, `Denoiser.per_frame_timesteps`): the history frames of
     x_t hold z_h at the fixed noise level t_c — clean for t_c = 0, lightly noised otherwise (LCT §3.2.3 conditions
     on history at t_c, 100–500 in practice; its Fig. 7/8: lower keeps detail, higher limits error accumulation) —
     and every model call is told each frame's level: a frame whose content is exactly that history is labelled
     t_c, every other frame the step's t (`KnownFrames`). Windows cut from x_t carry the history frames bit for bit,
     so they are found in any window, at any position (GLC's dilated clips too); estimates the sampler forms itself
     (SynCoS' stage 2 re-noises its clean estimate) are not the history and keep the step's t, which is their level.
   - `context=replace` (any backbone): after every step the history frames are put back at the level the step
     reached, x[:h] = a·z_h + s·ε_h with ε_h their slice of x_T — the replacement method of conditional sampling
     (Ho et al. 2022, "Video Diffusion Models", §3.1); a fixed ε_h keeps them on one deterministic DDIM path.
   - `context=auto`: per-frame where the backbone has it, else replace.
   The output's history latents are z_h exactly.
4. decode: [history | new] decoded in one piece, so the causal VAE decoder runs through the history before the new
   frames and continues its state; the history's c·(h − 1) + 1 frames are dropped.
5. write: continuation.mp4 (the new frames), extended.mp4 (the input's frames, resampled and fitted, then the new
   frames), story.json, latents.safetensors (with save_latents=true; [h + n] frames) and manifest.json: the input
   and what was done to it, the history, the join, and the join's seam score — `longgen eval`'s seam ratio
   (longgen/eval/seams.py) of the frame difference and of the warping error across the join against the
   transitions between latent-frame blocks around it. When the input has c·(k − 1) + 1 frames (longgen's videos
   do), the manifest also describes extended.mp4 as k + n latent frames with the join as a boundary, so
   `longgen eval RUN_DIR` scores it with every other metric.

The run directory is claimed, locked and refused when it holds another run's results exactly as for generate
(longgen/rundir.py); every file is written atomically. The input is recorded by its absolute path (in the saved
config) and its sha256 (in every checkpoint and the manifest): `longgen resume` refuses an input that changed since,
and takes `video=PATH` again (a moved file, another working directory) when its hash matches (`check_input_video`).
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from longgen.backbones.face import Backbone
from longgen.denoiser import Denoiser, Prediction
from longgen.errors import Interrupted, RunFailure, UsageError
from longgen.options import flag, whole
from longgen.parallel.units import current
from longgen.progress import StepProgress
from longgen.run.checkpoint import Checkpoint, Interrupts
from longgen.run.images import ImagePlan, plan_images
from longgen.run.job import (
    Job,
    build_parts,
    check_progress,
    check_prompt_lengths,
    log_event_plan,
    one_prompt_story,
    planned_length,
    resolve_story,
)
from longgen.run.stages import (
    encode,
    keep_latents,
    manifest_head,
    package_versions,
    progress_shown,
    release,
    resume_command,
    sample,
    save_latents,
    stopped_before_sampling,
    video_facts,
)
from longgen.rundir import CHECKPOINT, LATENTS, file_sha256, write_json, write_text
from longgen.samplers.base import Sampler, SamplerState, SamplingRun
from longgen.story import Story
from longgen.windows import Clock, EventPlan, WindowPlan, event_plan, event_slots, latent_length

log = logging.getLogger("longgen")

CONTEXTS = ("auto", "per-frame", "replace")
EXTENDED = "extended.mp4"
CONTINUATION = "continuation.mp4"
#: relative frame-rate difference below which the input is taken at its own rate
FPS_TOLERANCE = 0.01


# ---------------------------------------------------------------------------------------------------- the input
def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [h, w, 3] → [height, width, 3]: scaled by the larger of the two ratios (so it covers the target;
    area filter when shrinking, bicubic when growing), then the center cut out."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    resized = cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    x0, y0 = (rw - width) // 2, (rh - height) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])


def ffmpeg_rate(fps: float) -> str:
    """The `-r` value for a frame rate read from ffmpeg's metadata (two decimals): the exact NTSC fraction when the
    rate rounds to one (23.98 is 24000/1001: `-r 23.98` would repeat a frame every ~4 minutes), else the number."""
    for base in (24, 30, 48, 60, 120):
        if abs(fps - base * 1000 / 1001) < 0.006:
            return f"{base * 1000}/1001"
    return repr(float(fps))


def _open(path: Path, rate: float | None = None) -> tuple[dict, Iterator[bytes], Any]:
    """ffmpeg's metadata of `path` and an iterator over its RGB frames (raw bytes); one line when it cannot read it.
    With `rate`, the frames come at that constant rate by their timestamps: a variable-frame-rate video (as phones
    record) otherwise comes at ffmpeg's guessed base rate, with repeated frames, while its metadata gives the mean
    rate, so the frames would be taken at the wrong times."""
    import imageio_ffmpeg

    output = ["-r", ffmpeg_rate(rate)] if rate else None
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=output)
    try:
        meta = next(reader)
        size = tuple(int(v) for v in meta["size"])
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"no frame size ({meta.get('size')})")
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError, TypeError) as exc:
        reader.close()
        reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "no video stream"
        raise UsageError(f"{path} is not a video ffmpeg can read ({reason}): give an .mp4 (or any video ffmpeg reads)") from None
    return meta, reader, reader


@dataclass
class Source:
    """The input video as extend uses it: at the backbone's frame rate and size."""

    path: Path
    width: int
    height: int
    fps: float  # the input's own rate
    out_fps: float  # the rate it is taken at (the backbone's)
    out_width: int
    out_height: int
    resize: bool  # whether frames are resized/cropped
    sha256: str = ""  # of the file's bytes
    frames: int = 0  # frames after resampling
    tail: np.ndarray | None = None  # [K, H, W, 3] the last K frames after resampling and fitting

    @property
    def resampled(self) -> bool:
        return abs(self.fps - self.out_fps) > FPS_TOLERANCE * self.out_fps

    def describe_fit(self) -> str | None:
        """What was done to the input, in words, or None when nothing."""
        done = []
        if (self.width, self.height) != (self.out_width, self.out_height):
            scale = max(self.out_width / self.width, self.out_height / self.height)
            rw, rh = max(self.out_width, round(self.width * scale)), max(self.out_height, round(self.height * scale))
            done.append(f"resized {self.width}×{self.height} → {rw}×{rh}"
                        + (f" and center-cropped to {self.out_width}×{self.out_height}" if (rw, rh) != (self.out_width, self.out_height) else ""))
        if self.resampled:
            done.append(f"resampled {self.fps:g} → {self.out_fps:g} fps (nearest frame in time)")
        return "; ".join(done) or None

    def stream(self) -> Iterator[np.ndarray]:
        """The frames, resampled and fitted, one [H, W, 3] uint8 array at a time (the file is read again)."""
        meta, raw, reader = _open(self.path, self.fps)  # frames at the rate `step` assumes
        try:
            step = self.fps / self.out_fps if self.resampled else 1.0  # input frames per output frame
            want = 0  # index of the next output frame; it shows input frame ⌊want·step + ½⌋
            for i, chunk in enumerate(raw):
                frame = None
                while math.floor(want * step + 0.5) == i:
                    if frame is None:
                        frame = np.frombuffer(chunk, dtype=np.uint8).reshape(self.height, self.width, 3)
                        frame = fit_frame(frame, self.out_width, self.out_height)
                    yield frame
                    want += 1
        except (RuntimeError, OSError) as exc:
            raise UsageError(f"{self.path} could not be read to the end ({str(exc).strip().splitlines()[-1][:160]})") from None
        finally:
            reader.close()


def check_input_video(path: Path, recorded: dict) -> None:
    """On resume: the input video at `path` (the saved config's, or `video=` given again) must be the file the run
    started from, by its sha256; one line otherwise."""
    path = Path(str(path)).expanduser()
    again = f"give it with video=PATH (the run started from {recorded.get('path')})"
    if not path.is_file():
        raise UsageError(f"the input video {path} of this extend run is gone: {again}, or start a new run")
    if file_sha256(path) == recorded.get("sha256"):
        return
    started = Path(str(recorded.get("path") or path))
    if path.resolve() != started.resolve():  # another file given with video=: it was never this run's input
        raise UsageError(f"{path} is not the video this extend run started from ({started}; its sha256 differs): "
                         f"pass video=PATH of a copy of {started.name} as it was, or start a new run with "
                         f"`longgen extend {path}`")
    raise UsageError(f"{path} changed since this extend run started (its sha256 differs from the recorded one): "
                     f"put the original back or {again}; or start a new run")


def read_source(path: Path, backbone: Backbone, keep: int, resize: bool) -> Source:
    """Read the input once: its geometry and rate, its frame count at the backbone's rate and its last `keep`
    frames, fitted. One line for a missing file, something that is not a video, a size the backbone cannot take
    with resize=false, or a video shorter than `keep` frames."""
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise UsageError(f"video={path}: no such file; give the video to continue (longgen extend VIDEO.mp4 …)")
    if not path.is_file():
        raise UsageError(f"video={path} is not a file; give the video to continue (an .mp4)")
    meta, _, reader = _open(path)
    reader.close()
    width, height = (int(v) for v in meta["size"])
    fps = float(meta.get("fps") or 0.0)
    if not fps > 0:
        raise UsageError(f"{path} has no frame rate ffmpeg can read: re-encode it (e.g. ffmpeg -i IN -r 8 OUT.mp4)")
    want_w, want_h = backbone.width, backbone.height
    if (width, height) != (want_w, want_h) and not resize:
        raise UsageError(f"{path} is {width}×{height} but {backbone.label} makes {want_w}×{want_h} videos: "
                         f"pass resize=true (resized and center-cropped) or give a {want_w}×{want_h} video")
    source = Source(path.resolve(), width, height, fps, float(backbone.fps), want_w, want_h, resize, file_sha256(path))
    tail: collections.deque = collections.deque(maxlen=keep)
    for frame in source.stream():
        tail.append(frame)
        source.frames += 1
    if source.frames < keep:
        rate = f" at {source.out_fps:g} fps" if source.resampled else ""
        raise UsageError(
            f"{path} has {source.frames} frame(s){rate}; a history of {(keep - 1) // backbone.temporal_compression + 1} "
            f"latent frames needs the last {keep}: give a longer video or a shorter history=…"
        )
    source.tail = np.stack(tail)  # [K, H, W, 3]
    return source


# ---------------------------------------------------------------------------------------------------- sampling
class KnownFrames(Denoiser):
    """The backbone as a sampler sees it while a history is kept at level t_c (context=per-frame): every model call
    tells each latent frame its noise level — t_c for a frame whose content is exactly one of the known frames, the
    call's t for every other — by splitting the batch into windows with the same pattern and calling the backbone
    with one timestep per frame for those that hold known frames (`Denoiser.per_frame_timesteps`)."""

    per_frame_timesteps = False  # the sampler above it gives one t per call, as to any backbone

    def __init__(self, backbone: Denoiser, known: torch.Tensor, t_c: float) -> None:
        self.backbone = backbone
        self.window, self.latent_shape, self.device = backbone.window, backbone.latent_shape, backbone.device
        self.units = backbone.units
        self.known = known  # [h, C, H, W]
        self.t_c = t_c

    def schedule(self, num_steps: int):
        return self.backbone.schedule(num_steps)

    def anchor_attention(self, strength: float, groups: Sequence[int] | None = None):
        raise UsageError("context=per-frame cannot run GLC's ABAM (its anchor groups span windows at different noise "
                         "levels): pass sampler.abam=false, or context=replace")

    def known_mask(self, x_t: torch.Tensor) -> torch.Tensor:
        """[B, M] bool: frame m of window b is bit for bit one of the known frames. x_t: [B, M, C, H, W]."""
        known = self.known.to(x_t.device, x_t.dtype)
        mask = torch.zeros(x_t.shape[:2], dtype=torch.bool, device=x_t.device)
        for frame in known:  # [C, H, W]
            mask |= (x_t == frame).flatten(2).all(dim=2)
        return mask

    def _levels(self, pattern: tuple[bool, ...], t: float) -> torch.Tensor:
        return torch.tensor([self.t_c if k else float(t) for k in pattern], dtype=torch.float64)  # [M]

    def _split(self, call, x_t: torch.Tensor, t, prompt_ids: Sequence[int], guidance_scale: float) -> Prediction:
        mask = self.known_mask(x_t).cpu()  # [B, M]
        if not mask.any() or isinstance(t, torch.Tensor):
            return call(x_t, t, prompt_ids, guidance_scale)
        groups: dict[tuple[bool, ...], list[int]] = {}
        for b, row in enumerate(mask.tolist()):
            groups.setdefault(tuple(row), []).append(b)
        x0 = eps = None
        for pattern, rows in groups.items():  # in order of first appearance: deterministic
            level = self._levels(pattern, t) if any(pattern) else t
            index = torch.as_tensor(rows, device=x_t.device)
            pred = call(x_t.index_select(0, index), level, [prompt_ids[b] for b in rows], guidance_scale)
            if x0 is None:
                x0 = torch.empty((x_t.shape[0], *pred.x0.shape[1:]), dtype=pred.x0.dtype, device=pred.x0.device)
                eps = torch.empty_like(x0)
            x0[index.to(x0.device)] = pred.x0  # [len(rows), M, C, H, W] into the batch
            eps[index.to(x0.device)] = pred.eps
        return Prediction(x0, eps)

    def predict(self, x_t, t, prompt_ids, guidance_scale) -> Prediction:
        return self._split(self.backbone.predict, x_t, t, prompt_ids, guidance_scale)

    def predict_grad(self, x_t, t, prompt_ids, guidance_scale) -> Prediction:
        return self._split(self.backbone.predict_grad, x_t, t, prompt_ids, guidance_scale)


class HistorySampler(Sampler):
    """The configured sampler over [h history | new] latent frames, with the history kept as known context
    (module docstring, stage 3). `history` (z_h [h, C, H, W]) is set after the VAE encode."""

    def __init__(self, inner: Sampler, frames: int, context: str, t_c: float) -> None:
        self.inner = inner
        self.frames = int(frames)
        self.context = context
        self.t_c = float(t_c)
        self.stride, self.num_steps, self.guidance_scale = inner.stride, inner.num_steps, inner.guidance_scale
        self.history: torch.Tensor | None = None

    def plan(self, length: int, window: int):
        return self.inner.plan(length, window)

    def begin(self, run: SamplingRun) -> int:
        if self.history is None or self.history.shape[0] != self.frames:
            raise RuntimeError("HistorySampler: the history latents were not set before sampling")
        den = run.denoiser
        self._sched = den.schedule(self.inner.num_steps)
        h = self.frames
        self._eps = run.noise[0, :h]  # [h, C, H, W] the history's noise: its slice of x_T
        self._history = self.history.to(run.noise.device, torch.float32)  # [h, C, H, W]
        self._sub = run
        if self.context == "per-frame":
            a, s = self._sched.coeffs(self.t_c)
            known = self._history if self.t_c == 0 else a * self._history + s * self._eps  # [h, C, H, W]
            self._known = known
            self._sub = copy.copy(run)
            self._sub.denoiser = KnownFrames(den, known, self.t_c)
        return self.inner.begin(self._sub)

    def forwards_per_step(self, total: int) -> list[float] | None:
        return self.inner.forwards_per_step(total)

    def _put_back(self, tensors: dict[str, torch.Tensor], a: float, s: float) -> None:
        if "x" not in tensors:
            raise UsageError("extend needs a sampler that keeps x_t between steps; this one keeps only a clean estimate "
                             "(SynCoS with stage1=false): use another sampler")
        x = tensors["x"].clone()  # [L, C, H, W]
        h = self.frames
        # [h, C, H, W]: the history at its fixed level t_c (per-frame) or at the level a, s of this point (replace)
        x[:h] = self._known if self.context == "per-frame" else a * self._history + s * self._eps
        tensors["x"] = x

    def initial_state(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        tensors = self.inner.initial_state(self._sub)
        first = self._sched.step(0)
        self._put_back(tensors, first.a, first.s)
        return tensors

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        self.inner.step(self._sub, state, i)
        c = self._sched.step(i)
        self._put_back(state.tensors, c.a_prev, c.s_prev)  # the level step i moved to

    def finish(self, state: SamplerState) -> torch.Tensor:
        latents = self.inner.finish(state).clone()  # [1, L, C, H, W]
        if self.history is not None:
            latents[0, : self.frames] = self.history.to(latents.device, latents.dtype)
        return latents

    def describe(self) -> dict:
        return {**self.inner.describe(), "context": self.context,
                "t_c": self.t_c if self.context == "per-frame" else None}


# ---------------------------------------------------------------------------------------------------- the job
@dataclass
class ExtendJob(Job):
    """generate's Job for the latent [history | new], with the input video."""

    source: Source | None = None
    history: int = 0  # h, latent frames of history
    context: str = "replace"

    @property
    def new_frames(self) -> int:
        return self.length - self.history

    def clock(self) -> Clock:
        """Seconds ↔ latent frames of the new part's events, counted from the join (`join_clock`)."""
        return join_clock(self.backbone)

    def inputs(self) -> dict:
        """generate's, the input video and the windows' events: a resume must sample with the events its
        checkpointed steps had (`check_event_plan`)."""
        return {"video": {"path": str(self.source.path), "sha256": self.source.sha256}, **super().inputs(),
                "events": {"windows": list(self.events.events), "edges": list(self.events.edges)}}


def check_options(cfg: DictConfig) -> None:
    whole("seed", cfg.seed, 0, 2**63 - 1)
    whole("num_windows", cfg.num_windows, 1, 10_000)
    if cfg.get("history") is not None:
        whole("history", cfg.history, 1)
    whole("t_c", cfg.t_c, 0, 999)
    if cfg.context not in CONTEXTS:
        raise UsageError(f"context={cfg.context!r}: use {', '.join(CONTEXTS)}")
    for name in ("resize", "save_latents", "use_global_prompt", "overwrite"):
        flag(name, cfg.get(name, False))
    whole("checkpoint_every", cfg.checkpoint_every, 0)
    whole("preview_every", cfg.preview_every, 0)
    check_progress(cfg)


#: inputs read as a one-frame video whose frame starts the extension (the default history is then 1)
STILL_IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def plan_extend(cfg: DictConfig, out_dir: Path, choices: dict[str, Any], story: Story | None = None) -> ExtendJob:
    """Stage 1 (module docstring). `story` given (resume): use it instead of prompt/story/scenario."""
    check_options(cfg)
    if cfg.get("video") in (None, ""):
        raise UsageError("give the video to continue: longgen extend VIDEO.mp4 prompt=\"…\"")
    parts = build_parts(cfg, choices)  # generate's stage 1 parts: sampler, backbone, writer, noise (noise=…)
    inner, writer = parts.sampler, parts.writer
    backbone: Backbone = parts.backbone
    if steps := getattr(inner, "steps_follow_length", None):  # HistorySampler keeps the history per DDIM step
        raise UsageError(f"{steps}, but longgen extend puts the history back after every DDIM step: use "
                         "sampler=gen-l-video, syncos, glc or direct")
    m = backbone.window
    length = planned_length(cfg, parts)
    # a still image (longgen extend IMAGE.png: ffmpeg reads it as one frame) is the start frame: one latent frame
    still = Path(str(cfg.video)).suffix.lower() in STILL_IMAGES
    h = int(cfg.history) if cfg.get("history") is not None else 1 if still else m - inner.stride
    if not 1 <= h < min(m, length):
        raise UsageError(f"history={h} latent frames: it must be at least 1 and less than a window "
                         f"({m} latent frames on {backbone.label}), so that the first window holds new frames")
    context = cfg.context
    if context == "auto":
        context = "per-frame" if backbone.per_frame_timesteps else "replace"
    elif context == "per-frame" and not backbone.per_frame_timesteps:
        raise UsageError(f"context=per-frame needs a backbone with per-frame timesteps; {backbone.label} has none: "
                         f"use context=replace (or auto)")
    said = "context=per-frame" if cfg.context == "per-frame" else f"context=auto (per-frame on {backbone.label})"
    if context == "per-frame" and getattr(inner, "abam", False):
        raise UsageError(f"{said} cannot run GLC's ABAM (its anchor groups span windows at different noise "
                         "levels): pass sampler.abam=false, or context=replace")
    if context == "per-frame" and (shared := inner.calls_share_attention()):
        raise UsageError(f"{said} splits model calls by noise level, which {shared} cannot run across: "
                         f"pass context=replace")
    plan = inner.plan(length, m)
    writer.check()
    if story is None:
        story = resolve_story(cfg, choices)
    if story.multi_shot:
        raise UsageError("extend continues one shot: give the new part as prompt=…, a story with `global` and "
                         "`local` prompts, or scenario=…")
    given, story = story, one_prompt_story(story, inner, choices.get("sampler"))  # direct/freelong: one prompt
    events = plan_events(story, plan, inner, backbone, int(cfg.num_windows), h)
    used, stripped = story, 0
    if not cfg.get("use_global_prompt", True):
        used, stripped = story.without_global()
    check_prompt_lengths(used, backbone, cfg.negative_prompt or "", inner)
    backbone.check_events(story.num_events)  # a LoRA scale per event: one per event of the new part
    images = event_images(cfg, choices, story, plan, backbone, inner, events)
    keep = backbone.frames_for(h)
    source = read_source(Path(str(cfg.video)), backbone, keep, bool(cfg.resize))
    backbone.check_available()
    sampler = HistorySampler(inner, h, context, float(cfg.t_c))
    job = ExtendJob(cfg, dict(choices), Path(out_dir), sampler, backbone, writer, length, plan, given, used,
                    bool(cfg.get("use_global_prompt", True)), stripped, noise=parts.noise, events=events,
                    images=images, source=source, history=h, context=context)
    log_event_plan(job)
    return job


def join_clock(backbone: Backbone) -> Clock:
    """Seconds ↔ latent frames from the join: the n new latent frames are the continuation's c·n frames at the
    backbone's frame rate (no first frame alone, unlike a video's start)."""
    return Clock(backbone.fps, backbone.temporal_compression, first_alone=False)


@dataclass(frozen=True)
class NewPart:
    """The windows after the join as the story's checks see a video (Story.event_edges, timeline_note): `count`
    events they can show (windows.event_slots), over `length` latent frames."""

    count: int
    length: int


def plan_events(story: Story, plan: WindowPlan, inner: Sampler, backbone: Backbone, num_windows: int,
                h: int) -> EventPlan:
    """Which event each window shows, planned as generate plans it (longgen.windows.event_plan) over the new part:
    window centres and event times count from the join (latent frame h), and windows centred in the history show the
    first event. Every event gets a window whenever the windows can give it one (`event_slots`); otherwise, or for a
    timeline longer than the new part, one line naming the num_windows that works."""

    def part_for(n: int) -> NewPart:
        length = latent_length(backbone.window, inner.stride, backbone.temporal_compression, num_windows=n,
                               native_window=backbone.native_window)
        return NewPart(event_slots(inner.plan(length, backbone.window), h), length - h)

    if event_slots(plan, h) < story.num_events:
        refuse_missed_events(story, part_for, num_windows, h)
    clock, new = join_clock(backbone), plan.length - h
    edges = story.event_edges(new, clock, part_for, what="the new part")
    if note := story.timeline_note(new, clock, part_for, what="the new part"):
        log.info(note)
    return event_plan(plan, edges, origin=h)


def refuse_missed_events(story: Story, part_for: Callable[[int], NewPart], num_windows: int, h: int) -> None:
    """Refuse a new part whose windows cannot give every local prompt one, naming the least num_windows that can,
    searched as generate searches it (Story._windows_needed)."""
    need = story._windows_needed(lambda n: part_for(n).count >= story.num_events, num_windows)
    advice = f"pass num_windows={need}" if need else "use fewer local prompts"
    raise UsageError(f"the new part's {story.num_events} local prompts need a window each, more than num_windows="
                     f"{num_windows} gives (windows centred in the history, its {h} latent frames, all show the "
                     f"first): {advice}")


def event_images(cfg: DictConfig, choices: dict[str, Any], story: Story, plan: WindowPlan, backbone: Backbone,
                 sampler: Sampler, events: EventPlan) -> ImagePlan | None:
    """The new part's key images (story events with an `image`), routed as generate routes them
    (longgen/run/images.py), by the windows' events (`events.window_event`, as the prompts), but among the windows
    that start at or after the join (latent frame h): an event's image conditions the first of its windows whose
    first frame is new, since a window starting in the history begins with the input's frames. None without event
    images (an image-to-video backbone then conditions no window on an image); one line for an event whose windows
    all start in the history."""
    if story.images is None:
        return None
    h = int(events.origin)
    if backbone.image_conditioning:  # (a text-to-video backbone: plan_images' one line)
        after = {events.window_event(s, plan.window) for s in plan.starts if s >= h}
        for e, path in enumerate(story.images):
            if path is not None and e not in after:
                raise UsageError(f"story event {e + 1}'s image would be the first frame of one of its windows, but "
                                 f"they all start in the history (latent frames 0-{h - 1}, the input's end): put the "
                                 f"image on a later event, or pass a larger num_windows")
    return plan_images(cfg, choices, story, plan, backbone, sampler,
                       lambda start, size: events.window_event(start, size) if start >= h else -1)


def check_event_plan(recorded: dict, job: ExtendJob, path: Path) -> None:
    """On resume: the windows must show the events the checkpointed steps were sampled with. A checkpoint records
    them (`ExtendJob.inputs`); one written before extend planned events from the join records none. Such a
    checkpoint resumes for an untimed story (where the older rule, each window the event at its centre, showed every
    event, the plan here gives each window the same event and keeps the segment edges) and is refused for a timed
    story, whose times that rule read as proportions of the new part."""
    planned = job.inputs()["events"]
    if "events" in recorded:
        if recorded["events"] != planned:
            raise UsageError(f"{path} was sampled with other events per window than this longgen plans for the run: "
                             f"start a new run")
    elif job.story.timeline is not None:
        raise UsageError(f"{path} was written by an older longgen that read the story's times as proportions of the "
                         f"new part (they are now seconds from the join): start a new run")


def encode_history(job: ExtendJob) -> None:
    """Stage 2b: the kept frames through the VAE → the sampler's history z_h [h, C, H, W]."""
    t0 = time.perf_counter()
    latents = job.backbone.encode_frames(job.source.tail)  # [1, h, C, H, W]
    if latents.shape[1] != job.history:
        raise RuntimeError(f"the VAE made {latents.shape[1]} latent frames of {len(job.source.tail)} frames, "
                           f"expected {job.history}")
    job.sampler.history = latents[0]
    job.timings["encode_video_s"] = time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------- write
def continuation_frames(job: ExtendJob, latents: torch.Tensor) -> list[np.ndarray]:
    """Stage 4: [history | new] decoded in one piece; the history's c·(h − 1) + 1 frames dropped → chunks
    [f, H, W, 3] of the new frames."""
    skip, seen, chunks = job.backbone.frames_for(job.history), 0, []
    for chunk in job.backbone.decode_stream(latents):  # [f, H, W, 3]
        drop = min(max(skip - seen, 0), len(chunk))
        seen += len(chunk)
        if drop < len(chunk):
            chunks.append(chunk[drop:])
    return chunks


def _chunked(frames: Iterator[np.ndarray], size: int = 16) -> Iterator[np.ndarray]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def write_videos(job: ExtendJob, latents: torch.Tensor, progress: StepProgress) -> tuple[dict, dict]:
    """Stages 4–5: continuation.mp4 and extended.mp4. On failure the latents stay on disk, as in generate."""
    t0 = time.perf_counter()
    fps = job.backbone.fps
    try:
        new = continuation_frames(job, latents)
        alone = copy.copy(job.writer)
        alone.filename = CONTINUATION
        count = sum(len(c) for c in new)
        cont = alone.write(iter(new), job.out_dir, fps, count, progress)
        whole_ = copy.copy(job.writer)
        whole_.filename = EXTENDED
        chunks = (c for part in (_chunked(job.source.stream()), iter(new)) for c in part)
        video = whole_.write(chunks, job.out_dir, fps, job.source.frames + count, progress)
    except (Exception, KeyboardInterrupt) as exc:
        kept = keep_latents(job, latents)
        hint = resume_command(job)
        if isinstance(exc, UsageError):
            raise
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted while writing the videos; {kept}; finish with: {hint}") from None
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RunFailure(f"writing the videos failed: {reason}; {kept}; finish with: {hint}") from exc
    job.timings["decode_s"] = time.perf_counter() - t0
    return video, cont


def frames_between(path: Path, first: int, end: int) -> np.ndarray:
    """Frames first … end − 1 of a video (fewer at its end), read without keeping the others: uint8 [n, H, W, 3]."""
    meta, raw, reader = _open(path)
    width, height = (int(v) for v in meta["size"])
    out = []
    try:
        for i, chunk in enumerate(raw):
            if i >= end:
                break
            if i >= first:
                out.append(np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3))
    finally:
        reader.close()
    return np.stack(out)


def join_seam(frames: np.ndarray, join: int, compression: int, radius: int) -> dict:
    """`longgen eval`'s seam ratios at the join: the transition (join − 1, join) against those between the c-frame
    blocks of latent frames within ±radius of it (longgen/eval/seams.py), for the frame difference and the warping
    error. frames: uint8 [T, H, W, 3] of extended.mp4; join: index of the first new frame."""
    from longgen.eval import flicker, flow, seams
    from longgen.eval.evaluate import PIXEL_SEAM_FLOOR, WARP_SEAM_FLOOR
    from longgen.eval.measured import analysis_frames
    from longgen.eval.settings import default_settings

    settings = default_settings()
    pairs = [join - 1 + compression * k for k in range(-radius, radius + 1)]  # pair (p, p+1) of each transition
    lo, hi = max(0, pairs[0]), min(len(frames) - 1, pairs[-1] + 1)
    window = frames[lo : hi + 1]
    diff = flicker.frame_differences(window)  # pair p at p − lo
    small, factor = analysis_frames(window, settings.analysis_long_side)
    warp = flow.flow_curves(small, settings.flow, scale=float(factor)).warp
    pixel_d, warp_d = np.full(len(pairs), np.nan), np.full(len(pairs), np.nan)
    for k, p in enumerate(pairs):
        if lo <= p < hi:
            pixel_d[k], warp_d[k] = diff[p - lo], warp[p - lo]
    pixel = seams.seam_ratios(pixel_d, [radius], radius, PIXEL_SEAM_FLOOR).get(radius)
    warped = seams.seam_ratios(warp_d, [radius], radius, max(WARP_SEAM_FLOOR, seams.relative_floor(warp_d))).get(radius)
    flagged = any(r is not None and r > settings.seam_ratio for r in (pixel, warped))
    return {"pair": [join - 1, join], "ratio": pixel, "warp_ratio": warped, "threshold": settings.seam_ratio,
            "flagged": flagged, "radius_latent_frames": radius}


def join_line(join: int, seam: dict) -> str:
    """The log line of the join's seam ratios; a ratio `join_seam` could not measure (None in the manifest) is
    said in words, with why, not as nan."""
    still = "from the one-frame input's still image, " if join == 1 else ""

    def said(ratio: float | None, what: str, why: str) -> str:
        return f"{ratio:.2f} ({what})" if ratio is not None else f"no {what} to measure ({still}{why})"

    pixel = said(seam["ratio"], "frame difference", "too few frames around the join")
    warp = said(seam["warp_ratio"], "warping error", "the optical flow matched no pixel across the join, or too "
                                                     "few frames lie around it")
    return f"join at frame {join}: seam ratio {pixel}, {warp}; flagged above {seam['threshold']:.1f}"


def record(job: ExtendJob, latents: torch.Tensor, video: dict, cont: dict, extra: dict | None = None) -> dict:
    out, cfg, backbone, timings, src = job.out_dir, job.cfg, job.backbone, job.timings, job.source
    if cfg.save_latents:
        save_latents(latents, out / LATENTS, job.latent_identity())
    write_text(out / "story.json", job.given_story.to_json())
    from longgen.eval.settings import default_settings

    c = backbone.temporal_compression
    join = src.frames
    radius = default_settings().seam_radius
    first = max(0, join - 1 - c * radius)
    frames = frames_between(Path(video["path"]), first, join + c * radius + 1)  # the frames around the join
    seam = join_seam(frames, join - first, c, radius)
    seam["pair"] = [join - 1, join]
    log.info("%s", join_line(join, seam))
    geometry = {}
    if (join - 1) % c == 0:  # the input fills whole latent blocks: extended.mp4 is k + n latent frames
        k, n = (join - 1) // c + 1, job.new_frames
        shift = k - job.history
        windows = [{"start": 0, "end": k, "segment": "input"}]
        windows += [{"start": max(k, w["start"] + shift), "end": w["end"] + shift, "local_prompt": w["local_prompt"]}
                    for w in job.window_map()]
        geometry = {"latent_length": k + n, "window": job.plan.window, "windows": windows}
    manifest = {
        **manifest_head(job),
        "input": {"path": str(src.path), "sha256": src.sha256, "width": src.width, "height": src.height, "fps": src.fps,
                  "frames": src.frames, "fit": src.describe_fit()},
        "history": {"latent_frames": job.history, "video_frames": backbone.frames_for(job.history),
                    "context": job.context, "t_c": int(cfg.t_c) if job.context == "per-frame" else None},
        "continuation": {"latent_frames": job.new_frames, "video_frames": cont["frames"]},
        "join": {"video_frame": join, "seam": seam},
        "sampled_latent_length": job.length,
        "stride": job.sampler.stride,
        "sampling_windows": job.window_map(),
        **geometry,
        # the plan as generate writes it; frames and seconds count from the join (continuation.mp4's frame 0)
        "events": job.event_table(),
        "local_prompts": len(job.story.local_prompts),
        **({"images": job.images.describe()} if job.images is not None else {}),
        **video_facts(video, timings),
        "versions": package_versions(),
        "outputs": {"video": EXTENDED, "continuation": CONTINUATION, "story": "story.json",
                    "config": ".hydra/config.yaml",
                    "latents": LATENTS if (out / LATENTS).exists() else None},
        **(extra or {}),
    }
    write_json(out / "manifest.json", manifest)
    (out / CHECKPOINT).unlink(missing_ok=True)
    log.info("wrote %s (%d frames: %d of the input, %d new) and %s", video["path"], video["frames"], join,
             cont["frames"], cont["path"])
    return manifest


# ---------------------------------------------------------------------------------------------------- commands
def execute_extend(job: ExtendJob, resume: Checkpoint | None = None, extra: dict | None = None) -> dict:
    """Stages 2–5 on a claimed run directory."""
    current().adopt(job)
    try:
        with Interrupts() as interrupts, progress_shown(job.cfg) as progress:
            progress.label("encode", "load + encode text and video")
            progress("encode", 0, 1)
            with stopped_before_sampling(job):
                prompts = encode(job)
                encode_history(job)
            progress("encode", 1, 1)
            latents = sample(job, prompts, interrupts, progress, resume)
            video, cont = write_videos(job, latents, progress)
        return record(job, latents, video, cont, extra)
    finally:
        release(job)

"""FIFO-Diffusion (Kim, Kang, Choi & Han 2024, "FIFO-Diffusion: Generating Infinite Videos from Text without
Training", NeurIPS 2024, arXiv 2405.11473): diagonal denoising of a queue of frames at increasing noise levels.

Notation (paper §3): the model denoises clips of f frames (here M latent frames, the backbone's window) and is run
with a DDIM schedule of S steps whose timesteps, in increasing order, are τ_1 < … < τ_S (τ_0: clean).

- §3.1 diagonal denoising: a queue holds S frames, frame k at noise level τ_k. One iteration denoises every frame by
  one step at its own level, z^k(τ_k) → z^k(τ_{k−1}), the model being given one timestep per frame; the head is
  then clean and is dequeued (one output frame) and a frame of pure noise, z(τ_S) ~ N(0, I), is enqueued at the
  tail. Each frame passes through all S levels, one per iteration, never skipping one.
- §3.2 latent partitioning: S = n·f, and the queue of n·f frames is cut into n blocks of f consecutive frames, each
  denoised as one window with its own f timesteps (n = 4 in the paper). More steps, smaller noise-level gaps within
  a window, which the paper's bound ties to the error of diagonal denoising.
- §3.3 lookahead denoising: windows advance by f' = f/2 over the queue preceded by f' frames that are already
  denoised, and each window updates only its last f' frames, so every updated frame sees f' cleaner frames ahead of
  it; twice the model calls of §3.2 (2n windows per iteration).
- Queue initialisation (§3 starts the queue from a video the base model generated; the numbers are the authors'
  public implementation's): the base model generates one clip of f frames with the same S-step schedule; queue
  position k (level τ_k) holds that clip's frame max(0, k − (S − f)) forward-diffused to τ_k with fresh noise, so the
  first S − f + 1 positions repeat frame 0; the lookahead frames hold frame 0 at τ_1 and are always given timestep
  τ_1. The first S − f dequeued frames (the repeats of frame 0) are discarded: a video of L frames takes
  L + S − f iterations and starts with the base clip's frames, re-denoised from their queue levels.

In longgen's terms:
- The schedule is the backbone's S-step one (`Denoiser.schedule(S)`, descending): queue position p (0 = head)
  is at sampling step S − 1 − p, whose DDIM update (a_prev, s_prev) takes it to the level of position p − 1. The
  update is diffusion.ddim_step per frame with that frame's coefficients.
- Odd M (13 on CogVideoX): f' = ⌊M/2⌋ lookahead frames; windows advance by u = M − f' and update their last u
  frames, the last window aligned to the queue's end and updating only the frames the others left (K = ⌈S/u⌉ ≤ 2n
  windows per iteration: 8 for M = 13, n = 4; exactly 2n for even M, as in the paper). One `predict` call takes all
  K windows of an iteration with a timestep per frame (t [K, M]), so they are batched and spread like any windows.
- Local prompts by frame position: a window takes the local prompt of the video position of its frames (the story
  segment holding its centre; windows reaching past either end of the video are clamped to it).
- Noise: the base clip starts from the run's x_T frames 0..M−1 and video frame v ≥ M enters the tail as the run's
  x_T frame v, so an initial-noise option (FreeNoise, longgen/noise.py) applies as for any sampler; the queue's
  forward-diffusion noise and the frames past the video's end (tail context of the last iterations) are fresh
  draws from the run's generator.
- Steps: the base clip's S DDIM steps run K at a time (one step ≈ K window predictions, like one queue iteration),
  then come the L + S − M queue iterations; progress, ETA and checkpoints count steps of about equal cost.
- DDIM η: 0 by default as for every longgen sampler (the authors' VideoCrafter script defaults to 1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from longgen.denoiser import Denoiser
from longgen.diffusion import NoiseSchedule, add_noise, ddim_step, gather_windows
from longgen.errors import UsageError
from longgen.options import Whole, flag, option
from longgen.samplers.base import (
    ETA,
    GUIDANCE,
    MAX_STEPS,
    STRIDE,
    Sampler,
    SamplerState,
    SamplingRun,
    guidance_branches,
)
from longgen.windows import WindowPlan

log = logging.getLogger("longgen")


@dataclass(frozen=True)
class QueuePlan:
    """Geometry of the queue. Positions are "extended": the `head` lookahead frames first, then the `levels` = S
    queue frames (extended position head + p is queue position p, p = 0 the head, the cleanest)."""

    window: int  # M
    levels: int  # S = n·M
    head: int  # lookahead frames f' (0 without lookahead)
    starts: tuple[int, ...]  # extended start of each window of an iteration
    updates: tuple[tuple[int, int], ...]  # extended positions [a, b) each window updates

    @property
    def length(self) -> int:
        return self.head + self.levels

    def level(self, e: int) -> int:
        """Sampling-step index of extended position e: S − 1 at the head and in the lookahead frames, 0 at the tail."""
        return self.levels - 1 - max(0, e - self.head)


def queue_plan(window: int, partitions: int, lookahead: bool) -> QueuePlan:
    """Windows of one iteration: n partitions of M frames (§3.2), or with lookahead (§3.3) windows every
    u = M − ⌊M/2⌋ frames over f' = ⌊M/2⌋ lookahead frames + the queue, each updating its last u frames (the last
    window end-aligned, updating only what is left)."""
    levels = window * partitions
    head = window // 2 if lookahead else 0
    update = window - head
    length = head + levels
    count = math.ceil(levels / update)
    starts = tuple(min(w * update, length - window) for w in range(count))
    updates = tuple((head + w * update, min(head + (w + 1) * update, length)) for w in range(count))
    return QueuePlan(window, levels, head, starts, updates)


@dataclass(eq=False)
class FIFOSampler(Sampler):
    """The options (conf/sampler/fifo.yaml), each with its accepted values; the rest is set by `begin`."""

    #: key images (longgen/run/images.py) condition a window's first frame; the queue has no such window
    window_images: ClassVar[bool] = False
    window_images_reason: ClassVar[str] = ("its queue window slides one latent frame per step, so no window keeps "
                                           "an event's first frame at its start")
    #: the number of steps is the video's length (one queue iteration per latent frame), so the takes of a multi-shot
    #: scene, which step through one loop (longgen/run/shots.py), must be equally long
    steps_follow_length: ClassVar[str] = "sampler=fifo runs one queue iteration per latent frame"

    num_partitions: int = option(4, Whole(1, 64))
    lookahead: bool = option(True, flag)
    guidance_scale: float = option(6.0, GUIDANCE)
    eta: float = option(0.0, ETA)
    stride: int = option(4, STRIDE)  # only sets the video length for num_windows=N and the preview/manifest windows

    def __post_init__(self) -> None:
        super().__post_init__()
        # set by begin (the backbone's window decides them); recorded in the manifest
        self.num_steps: int | None = None  # S = n·M DDIM steps per frame
        self.queue_frames: int | None = None
        self.lookahead_frames: int | None = None
        self.windows_per_iteration: int | None = None
        self.base_steps: int | None = None  # steps of the base clip (S DDIM steps, K per step)
        self.iterations: int | None = None  # queue iterations, L + S − M
        self.discarded: int | None = None  # dequeued repeats of the base clip's frame 0, S − M

    # ------------------------------------------------------------------ plan
    def plan(self, length: int, window: int) -> WindowPlan:
        """The stride grid (previews, the manifest, the story check); checked before any weights load: the queue's
        n·M DDIM steps must fit the schedule."""
        if self.num_partitions * window > MAX_STEPS:
            raise UsageError(
                f"sampler.num_partitions={self.num_partitions} gives {self.num_partitions * window} DDIM steps per "
                f"frame (n × the window of {window} latent frames), more than the {MAX_STEPS} the schedule has: use "
                f"sampler.num_partitions<={MAX_STEPS // window}"
            )
        return super().plan(length, window)

    def check_denoiser(self, den: Denoiser) -> None:
        if not getattr(den, "per_frame_timesteps", False):
            family = getattr(den, "family", type(den).__name__)
            raise UsageError(f"sampler=fifo needs a timestep per latent frame, which {family} cannot take: use a "
                             f"CogVideoX or Wan backbone")

    def begin(self, run: SamplingRun) -> int:
        den = run.denoiser
        self.check_denoiser(den)
        self._plan = queue_plan(den.window, self.num_partitions, self.lookahead)
        self._sched: NoiseSchedule = den.schedule(self._plan.levels)
        levels, m = self._plan.levels, self._plan.window
        self.num_steps = levels
        self.queue_frames = levels
        self.lookahead_frames = self._plan.head
        self.windows_per_iteration = len(self._plan.starts)
        self.base_steps = math.ceil(levels / self.windows_per_iteration)
        self.discarded = levels - m
        self.iterations = run.length + self.discarded
        self._length = run.length
        self._base_prompt = run.prompt_for_window(0, m)
        self._prompt_for_window = run.prompt_for_window
        log.info("fifo: base clip of %d frames in %d DDIM steps, then %d queue iterations of %d windows over %d + %d "
                 "frames (%d partitions%s)", m, levels, self.iterations, self.windows_per_iteration, self._plan.head,
                 levels, self.num_partitions, ", lookahead" if self.lookahead else "")
        return self.base_steps + self.iterations

    def forwards_per_step(self, total: int) -> list[int]:
        """A base-clip step runs up to K single-window DDIM steps, a queue iteration K windows at once."""
        k, levels, cfg = self.windows_per_iteration, self._plan.levels, guidance_branches(self.guidance_scale)
        base = [(min((i + 1) * k, levels) - i * k) * cfg for i in range(self.base_steps)]
        return base + [k * cfg] * (total - self.base_steps)

    def initial_state(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        frame = tuple(run.noise.shape[2:])  # (C, H, W)
        return {
            "base": run.noise[0, : self._plan.window].clone(),  # [M, C, H, W] the base clip's x_t
            "queue": run.noise.new_zeros((self._plan.length, *frame)),  # [f' + S, C, H, W], filled after the base clip
            "out": run.noise.new_zeros((run.length, *frame)),  # [L, C, H, W] dequeued frames
        }

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        if i < self.base_steps:
            self._base_step(run, state, i)
        else:
            self._queue_step(run, state, i - self.base_steps)

    def finish(self, state: SamplerState) -> torch.Tensor:
        return state.tensors["out"][None]  # [1, L, C, H, W]

    # ------------------------------------------------------------------ the base clip and the initial queue
    def _base_step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        """DDIM steps [i·K, (i + 1)·K) of the base clip (one window at one timestep); after the last, the queue."""
        k = self.windows_per_iteration
        x = state.tensors["base"][None]  # [1, M, C, H, W]
        for j in range(i * k, min((i + 1) * k, self._plan.levels)):
            c = self._sched.step(j)
            pred = run.denoiser.predict(x, c.t, [self._base_prompt], self.guidance_scale)  # x0: [1, M, C, H, W]
            noise = run.randn(tuple(x.shape)) if self.eta > 0 else None
            x = ddim_step(x, pred.x0, c, self.eta, noise)  # [1, M, C, H, W]
        state.tensors["base"] = x[0]
        estimate = torch.zeros_like(state.tensors["out"])  # [L, C, H, W]
        estimate[: self._plan.window] = pred.x0[0]
        state.estimate = estimate
        if i == self.base_steps - 1:
            state.tensors["queue"] = self._initial_queue(run, x[0])

    def _initial_queue(self, run: SamplingRun, clip: torch.Tensor) -> torch.Tensor:
        """The clean base clip [M, C, H, W] forward-diffused to the queue's levels → [f' + S, C, H, W]."""
        plan = self._plan
        noise = run.randn((plan.length, *clip.shape[1:]))  # [f' + S, C, H, W]
        repeats = plan.levels - plan.window  # queue positions 0..S − M hold frame 0
        frames = []
        for e in range(plan.length):
            source = clip[max(0, e - plan.head - repeats)]  # [C, H, W]
            level = plan.level(e)
            frames.append(add_noise(source, noise[e], self._sched.a[level], self._sched.s[level]))
        return torch.stack(frames)  # [f' + S, C, H, W]

    # ------------------------------------------------------------------ one queue iteration
    def _window_prompts(self, k: int) -> list[int]:
        """Encoded prompt of each window at iteration k, by the video position of its frames: extended position e
        holds video frame k + e − f' − (S − M)."""
        plan = self._plan
        last = self._length - plan.window
        firsts = [k + s - plan.head - self.discarded for s in plan.starts]
        return [self._prompt_for_window(min(max(v, 0), last), plan.window) for v in firsts]

    def _queue_step(self, run: SamplingRun, state: SamplerState, k: int) -> None:
        plan, sched = self._plan, self._sched
        queue = state.tensors["queue"]  # [f' + S, C, H, W]
        windows = gather_windows(queue, list(plan.starts), plan.window)  # [K, M, C, H, W]
        steps = [[plan.level(s + j) for j in range(plan.window)] for s in plan.starts]  # [K][M] step indices
        t = torch.tensor([[sched.timesteps[i] for i in row] for row in steps], dtype=torch.float64)  # [K, M]
        pred = run.denoiser.predict(windows, t, self._window_prompts(k), self.guidance_scale)  # x0: [K, M, C, H, W]
        noise = run.randn((plan.levels, *queue.shape[1:])) if self.eta > 0 else None  # [S, C, H, W]
        updated = queue.clone()  # [f' + S, C, H, W]
        estimate = state.tensors["out"].clone()  # [L, C, H, W]
        for w, (start, (lo, hi)) in enumerate(zip(plan.starts, plan.updates)):
            for e in range(lo, hi):
                c = sched.step(plan.level(e))
                x0 = pred.x0[w, e - start]  # [C, H, W]
                updated[e] = ddim_step(queue[e], x0, c, self.eta, None if noise is None else noise[e - plan.head])
                video = k + e - plan.head - self.discarded
                if 0 <= video < self._length:
                    estimate[video] = x0
        out = state.tensors["out"]
        if k >= self.discarded:  # dequeue the head, now clean
            out = out.clone()
            out[k - self.discarded] = updated[plan.head]
        if k < self.iterations - 1:  # shift by one and enqueue the next frame, pure noise at the tail
            updated = torch.cat([updated[1:], self._tail_frame(run, k + plan.window)[None]])  # [f' + S, C, H, W]
        state.tensors["queue"] = updated
        state.tensors["out"] = out
        state.estimate = estimate

    def _tail_frame(self, run: SamplingRun, video: int) -> torch.Tensor:
        """x_T of video frame `video` [C, H, W]: the run's initial noise, or a fresh draw past the video's end."""
        if video < self._length:
            return run.noise[0, video]
        return run.randn(tuple(run.noise.shape[2:]))

    def describe(self) -> dict:
        info = super().describe()
        info["forwards_per_iteration"] = (self.windows_per_iteration or 0) * guidance_branches(self.guidance_scale)
        return info

"""Window geometry for long videos made of overlapping fixed-length windows ("chunks").

A video of L latent frames is covered by windows of M latent frames (the backbone's native clip length) that
start every S frames (the stride). Following SynCoS (supplementary §B) and Gen-L-Video, the natural length for N
windows is L = M + S·(N − 1); for any other L the last window is aligned to the end so no tail frame is left
uncovered (the public Gen-L-Video code drops such frames; we never do).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from longgen.errors import UsageError


@dataclass(frozen=True)
class WindowPlan:
    """Start frames of windows of `window` latent frames over a latent of `length` frames."""

    length: int
    window: int
    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        for s in self.starts:
            if s < 0 or s + self.window > self.length:
                raise ValueError(f"window start {s} does not fit a latent of {self.length} frames")

    @property
    def count(self) -> int:
        return len(self.starts)

    def centres(self) -> list[float]:
        """Centre of each window in latent-frame coordinates (frame i spans [i, i+1))."""
        return [s + self.window / 2 for s in self.starts]

    def coverage(self) -> list[int]:
        """How many windows cover each latent frame."""
        counts = [0] * self.length
        for s in self.starts:
            for f in range(s, s + self.window):
                counts[f] += 1
        return counts


def strided_plan(length: int, window: int, stride: int) -> WindowPlan:
    """Windows every `stride` frames from 0, plus an end-aligned last window when the stride does not land there."""
    check_geometry(length, window, stride)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return WindowPlan(length, window, tuple(starts))


def check_geometry(length: int, window: int, stride: int) -> None:
    if window <= 0:
        raise UsageError(f"the backbone's window must be positive, got {window}")
    if stride <= 0 or stride > window:
        raise UsageError(
            f"sampler.stride={stride} is invalid: it must be between 1 and the window length {window} (latent frames)"
        )
    if length < window:
        raise UsageError(
            f"the video ({length} latent frames) is shorter than one window ({window} latent frames): "
            f"use num_windows>=1 or length_factor>=1"
        )


#: length when none is given: the SynCoS paper's main setting (4x the native clip)
DEFAULT_LENGTH_FACTOR = 4.0


def latent_length(
    window: int,
    stride: int,
    temporal_compression: int,
    num_windows: int | None = None,
    length_factor: float | None = None,
    latent_frames: int | None = None,
    native_window: int | None = None,
) -> int:
    """Latent length L from at most one of: N windows, a multiple K of the native clip, or L itself.

    `native_window` is the model's own clip length M when the window differs from it (RIFLEx's doubled window,
    longgen/backbones/riflex.py): K counts native clips, so K = 4 asks for the same length with or without RIFLEx.

    `length_factor=K` asks for K times the native number of video frames F = c·(M − 1) + 1 (c the VAE's temporal
    compression); it is rounded to the nearest whole number of windows, so that L = M + S·(N − 1) and every
    window sits on the stride grid (K = 4 on CogVideoX-2B gives N = 10, L = 49, 193 frames).
    """
    given = {k: v for k, v in dict(num_windows=num_windows, length_factor=length_factor, latent_frames=latent_frames).items() if v is not None}
    if len(given) > 1:
        raise UsageError(f"give only one of num_windows, length_factor, latent_frames (got {', '.join(given)}); "
                         f"set the other to null, e.g. length_factor=null after +experiment=…, which sets length_factor")
    if stride <= 0 or stride > window:
        check_geometry(window, window, stride)
    if num_windows is not None:
        if int(num_windows) != num_windows or num_windows < 1:
            raise UsageError(f"num_windows={num_windows} must be a whole number >= 1")
        return window + stride * (int(num_windows) - 1)
    if length_factor is not None:
        if not length_factor >= 1:
            raise UsageError(f"length_factor={length_factor} must be >= 1 (1 is the backbone's native clip length)")
        native_frames = temporal_compression * ((native_window or window) - 1) + 1
        target_latent = (length_factor * native_frames - 1) / temporal_compression + 1
        n = max(1, int(math.floor((target_latent - window) / stride + 0.5)) + 1)
        return window + stride * (n - 1)
    if latent_frames is not None:
        if int(latent_frames) != latent_frames or latent_frames < window:
            raise UsageError(
                f"latent_frames={latent_frames} must be a whole number of at least one window ({window} latent frames)"
            )
        return int(latent_frames)
    return latent_length(window, stride, temporal_compression, length_factor=DEFAULT_LENGTH_FACTOR)


# ---------------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Clock:
    """Seconds ↔ latent-frame coordinates of a causal video VAE at `fps` that keeps the first frame alone and packs
    every following `temporal_compression` frames into one latent frame (CogVideoX and Wan: F = c·(L − 1) + 1).

    Video frame f is shown over [f/fps, (f+1)/fps); a latent of L frames decodes to F frames, F/fps seconds. The
    continuous map from a video-frame position p to a latent position is p on [0, 1] (latent frame 0 is frame 0) and
    1 + (p − 1)/c beyond, so that p = F lands on L.

    With `first_alone=False` the clock counts from a join inside a latent instead (`longgen extend`: the new part
    after h history frames), where every latent frame holds c video frames: p = c·position, so the n new latent frames
    decode to the continuation's c·n frames."""

    fps: float
    temporal_compression: int
    first_alone: bool = True

    def seconds(self, length: float) -> float:
        """Seconds of video that `length` latent frames decode to (a latent position read as a time)."""
        return self.frame_at(length) / self.fps

    def frame_at(self, position: float) -> float:
        """Video-frame position of latent position `position`."""
        if not self.first_alone:
            return position * self.temporal_compression
        return position if position <= 1 else 1 + (position - 1) * self.temporal_compression

    def latent_at(self, seconds: float) -> float:
        """Latent position of the time `seconds`."""
        frame = seconds * self.fps
        if not self.first_alone:
            return frame / self.temporal_compression
        return frame if frame <= 1 else 1 + (frame - 1) / self.temporal_compression


@dataclass(frozen=True)
class EventPlan:
    """Which event each window of a plan shows, and the segment edges that say it for any window.

    `edges[k]` is the right edge of event k's segment, in latent frames counted from `origin` (0 for generate; the
    join, latent frame h, for `longgen extend`, whose events lie over the new part only); the last is the length
    after the origin. A window of any start and size (a sampler's queue or shifted windows as well as the plan's)
    shows the event whose segment holds its centre, and a window centred before the origin the first event
    (`window_event`); `events[i]` is that event for the plan's window i."""

    edges: tuple[float, ...]
    events: tuple[int, ...]
    origin: float = 0.0

    def event_at(self, position: float) -> int:
        """The event whose segment [edges[k−1], edges[k]) holds `position` (latent frames from the origin)."""
        return min(bisect.bisect_right(self.edges, position), len(self.edges) - 1)

    def window_event(self, start: int, size: int) -> int:
        """The event of a window of `size` latent frames starting at latent frame `start` (of the whole latent)."""
        centre = start + size / 2 - self.origin
        return 0 if centre < 0 else self.event_at(centre)

    def windows_of(self, event: int) -> list[int]:
        return [i for i, e in enumerate(self.events) if e == event]


def event_slots(plan: WindowPlan, origin: float = 0.0) -> int:
    """How many events the plan's windows can show at most: every window centred at or after `origin` one each, and
    those centred before it (extend's windows centred in the history) together one, the first event."""
    after = sum(c >= origin for c in plan.centres())
    return after + (after < plan.count)


def assign_events(centres: Sequence[float], edges: Sequence[float], held: int = 0) -> list[int]:
    """The event of each window (centres ascending) when events own the segments ending at `edges`, such that every
    event gets at least one window and windows keep the story's order; the first `held` windows take the first event
    (extend's windows centred in the history). Needs len(centres) >= len(edges), and len(centres) − held >=
    len(edges) − 1 when some are held.

    Where every segment already holds a window centre, each window takes the segment holding its centre (the rule
    longgen has always used). Otherwise the monotone assignment giving every event a window is chosen that keeps the
    window centres nearest their event's segment (least summed distance in latent frames, found by dynamic
    programming over windows × events); between equally near choices the boundary between two events goes to the
    earlier window. Segments in proportion to the events' durations thus give windows in
    proportion to them too, as far as whole windows allow."""
    n, k = len(centres), len(edges)
    if n < k or (held and n - held < k - 1):
        raise ValueError(f"{k} events need at least {k} windows ({held} of them held on the first event), got {n}")
    nominal = [0 if j < held else min(bisect.bisect_right(edges, c), k - 1) for j, c in enumerate(centres)]
    if len(set(nominal)) == k:
        return nominal
    lows = np.array([0.0, *edges[:-1]])  # [K] left edge of each segment
    highs = np.array(edges, dtype=float)  # [K]
    c = np.asarray(centres, dtype=float)[:, None]  # [N, 1]
    cost = np.maximum(np.maximum(lows[None] - c, c - highs[None]), 0.0)  # [N, K] distance to each segment
    cost[:held, 1:] = np.inf  # held windows show the first event only
    # [N, K] least cost of windows 0..j with window j on event e; a path from (0, 0) to (N − 1, K − 1) that stays
    # or steps one event per window visits every event, so reaching the last event is all that is asked
    best = np.full((n, k), np.inf)
    stay = np.zeros((n, k), dtype=bool)  # window j − 1 has the same event as window j
    best[0, 0] = cost[0, 0]
    for j in range(1, n):
        same, step = best[j - 1], np.concatenate(([np.inf], best[j - 1, :-1]))  # [K] each
        stay[j] = same <= step
        best[j] = cost[j] + np.minimum(same, step)
    events, e = [0] * n, k - 1
    for j in range(n - 1, -1, -1):
        events[j] = e
        if j and not stay[j, e]:
            e -= 1
    return events


def event_plan(plan: WindowPlan, edges: Sequence[float], origin: float = 0.0) -> EventPlan:
    """The plan's windows assigned to events (`assign_events`) and segment edges moved just enough to say so: an edge
    already between the last window centre of one event and the first of the next stays where the story puts it,
    else it goes midway between them. Centres and `edges` count from `origin`; windows centred before it are held on
    the first event (and count as centred at the origin when an edge moves)."""
    centres = [c - origin for c in plan.centres()]
    events = assign_events(centres, edges, held=sum(c < 0 for c in centres))
    moved = []
    for e in range(len(edges) - 1):
        last = max(max(c, 0.0) for c, x in zip(centres, events) if x == e)
        first = min(c for c, x in zip(centres, events) if x == e + 1)
        moved.append(edges[e] if last < edges[e] <= first else (last + first) / 2)
    return EventPlan(tuple(moved) + (float(plan.length - origin),), tuple(events), float(origin))

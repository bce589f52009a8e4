"""Terminal output: one Rich console on stderr shared by the log handler and progress bars, so log lines print
above a live bar instead of through it.

Progress is shown one of two ways: on a terminal, a Rich bar per phase; otherwise (SLURM, nohup, pipes, CI) plain
log lines every `every` steps or `seconds` seconds and when a phase ends, so an unattended run's log shows how far
it is. Both give the same ETA, weighted by the work each step carries: a sampler states the transformer forwards
it plans per step (`Sampler.forwards_per_step`), because steps are not equal (SynCoS's stage-2 steps carry ~5x the
forwards of the others). The ETA counts from the first step this process saw, so after a resume it starts at the
checkpoint's step and uses only this process's own pace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
log = logging.getLogger("longgen")

#: default seconds between two plain progress lines (`progress_seconds`)
LINE_SECONDS = 30.0
#: the phase whose units are denoising steps: `every` counts them (other phases, e.g. decode's frames, print by time)
STEPS = "denoise"


def rich_handler(level: int | str = logging.NOTSET) -> logging.Handler:
    """The console's log handler (referenced by conf/hydra/job_logging/rich.yaml): Rich's on a terminal, sharing
    the console with the bars; plain lines otherwise, since Rich would wrap each record at 80 columns and pad it
    with spaces, so that `grep ETA` in a SLURM log finds half a line."""
    if not console.is_terminal:
        return PlainLines(level)
    return RichHandler(console=console, level=level, show_path=False, markup=False, rich_tracebacks=False)


class PlainLines(logging.Handler):
    """Each record as `[date time] LEVEL    message` on the current sys.stderr, never wrapped."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%x %X", time.localtime(record.created))
            console.file.write(f"[{stamp}] {record.levelname:<8} {self.format(record)}\n")
            console.file.flush()
        except Exception:  # as logging.StreamHandler: a broken stream must not stop the run
            self.handleError(record)


def weighted_eta(weights: Sequence[float], start: int, done: int, elapsed: float, partial: float = 0.0) -> float | None:
    """Seconds left after `done` of len(weights) steps and `partial` work of the next, `elapsed` seconds after step
    `start` (where this process began): elapsed · (work left) / (work done since start). None before any work."""
    spent = sum(weights[start:done]) + partial
    if spent <= 0:
        return None
    return elapsed * max(0.0, sum(weights[done:]) - partial) / spent


def clock_text(seconds: float | None) -> str:
    """0:42, 1:02:03; `?` when unknown."""
    if seconds is None:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class _Phase:
    """One phase's pace: where this process started it (step and time) and when it last printed a line."""

    start: int
    started: float
    total: int
    last_line_step: int = 0
    last_line_time: float = 0.0
    done: int = 0  # steps finished
    partial: float = 0.0  # work (forwards) of the next step issued so far


class StepProgress:
    """Callable `(phase, done, total)` used as a context manager: one bar per phase on a terminal, plain log lines
    otherwise, with elapsed time and an ETA weighted by `weigh(phase, per_step_work)` where given (equal steps
    otherwise). `label(phase, text)` sets the text shown for a phase (e.g. "denoise · 10 windows").

    `enabled`: None chooses by whether stderr is a terminal; True forces the bar; False shows nothing (ranks > 0).
    `every` / `seconds`: a plain line after this many denoising steps / seconds since the last one (0 or None: not
    by that rule); a line is also printed when a phase finishes."""

    def __init__(self, enabled: bool | None = None, every: int = 0, seconds: float | None = LINE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = ("bar" if console.is_terminal else "lines") if enabled is None else ("bar" if enabled else "off")
        self.every = int(every or 0)
        self.seconds = float(seconds) if seconds else None
        self._clock = clock
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._labels: dict[str, str] = {}
        self._phases: dict[str, _Phase] = {}
        self._weights: dict[str, Sequence[float]] = {}

    def label(self, phase: str, text: str) -> None:
        self._labels[phase] = text
        if self._progress is not None and phase in self._tasks:
            self._progress.update(self._tasks[phase], description=text)

    def weigh(self, phase: str, work: Sequence[float] | None) -> None:
        """The planned work of each step of `phase` (e.g. transformer forwards); None: steps count equally."""
        if work is None:
            self._weights.pop(phase, None)
        else:
            self._weights[phase] = list(work)

    def __enter__(self) -> "StepProgress":
        if self.mode == "bar":
            self._progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._tasks.clear()
        self._phases.clear()

    def eta(self, phase: str, done: int) -> float | None:
        """Seconds left in `phase` after `done` steps (and the work issued of the next), by the weights given for it
        (equal steps otherwise)."""
        p = self._phases.get(phase)
        if p is None:
            return None
        weights = self._step_weights(phase, p.total)
        partial = p.partial if weights is not None and done == p.done else 0.0
        return weighted_eta(weights or [1.0] * p.total, p.start, done, self._clock() - p.started, partial)

    def _step_weights(self, phase: str, total: int) -> Sequence[float] | None:
        weights = self._weights.get(phase)
        return weights if weights is not None and len(weights) == total and sum(weights) > 0 else None

    def within(self, phase: str, work: float) -> None:
        """`work` more of the running step of `phase` issued (transformer forwards, the unit of its weights): a step
        of hundreds of windows takes minutes, so the bar moves inside it and a plain line comes every `seconds`
        with the share of the work and an ETA that counts it. Nothing before the phase starts, without weights,
        or after its last step."""
        p = self._phases.get(phase)
        weights = self._step_weights(phase, p.total) if p is not None else None
        if self.mode == "off" or weights is None or p.done >= p.total:
            return
        p.partial = min(p.partial + work, weights[p.done])  # never past the step's planned work
        now = self._clock()
        if self._progress is not None and phase in self._tasks:
            self._progress.update(self._tasks[phase], completed=p.done + p.partial / weights[p.done],
                                  eta=clock_text(self.eta(phase, p.done)))
        elif self.mode == "lines" and self.seconds is not None and now - p.last_line_time >= self.seconds:
            p.last_line_time = now
            self._line(phase, p, now)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.mode == "off":
            return
        now = self._clock()
        p = self._phases.get(phase)
        if p is None or p.total != total or done < p.start:  # a new phase, or the same name started again
            p = self._phases[phase] = _Phase(done, now, total, last_line_step=done, last_line_time=now, done=done)
        if done != p.done:  # a step finished: the next one's work starts from nothing
            p.done, p.partial = done, 0.0
        eta = self.eta(phase, done)
        if self._progress is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._progress.add_task(self._labels.get(phase, phase), total=total, eta="?")
            self._progress.update(self._tasks[phase], completed=done, total=total, eta=clock_text(eta))
        elif self.mode == "lines" and total > 1 and done > p.last_line_step and self._line_due(p, done, now):
            p.last_line_step, p.last_line_time = done, now
            self._line(phase, p, now)

    def _line(self, phase: str, p: _Phase, now: float) -> None:
        """`label: done/total (share of the work), elapsed, ETA`; the share counts the running step's issued work."""
        weights = self._step_weights(phase, p.total)
        share = ""
        if weights is not None:
            work = 100 * (sum(weights[: p.done]) + p.partial) / sum(weights)
            share = f" ({work:.1f}% of the work)" if p.partial else f" ({work:.0f}% of the work)"
        log.info("%s: %d/%d%s, %s elapsed, ETA %s", self._labels.get(phase, phase), p.done, p.total, share,
                 clock_text(now - p.started), clock_text(self.eta(phase, p.done)))

    def _line_due(self, p: _Phase, done: int, now: float) -> bool:
        by_steps = self.every > 0 and p is self._phases.get(STEPS) and done - p.last_line_step >= self.every
        return done == p.total or by_steps or (self.seconds is not None and now - p.last_line_time >= self.seconds)

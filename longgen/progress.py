"""Terminal output: one Rich console on stderr shared by the log handler and progress bars, so log lines print
above a live bar instead of through it. Progress is a no-op when stderr is not a terminal (CI, pipes, sweeps to
files); the log still records every phase."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def rich_handler(level: int | str = logging.NOTSET) -> RichHandler:
    """Log handler on the shared console (referenced by conf/hydra/job_logging/rich.yaml)."""
    return RichHandler(console=console, level=level, show_path=False, markup=False, rich_tracebacks=False)


class StepProgress:
    """Callable `(phase, done, total)` that renders one bar per phase while used as a context manager: the stage
    (encode, denoise, stage 2 of SynCoS, decode), its step count, elapsed time and ETA. `label(phase, text)` sets
    the text shown for a phase (e.g. "denoise · 10 windows")."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._labels: dict[str, str] = {}

    def label(self, phase: str, text: str) -> None:
        self._labels[phase] = text
        if self._progress is not None and phase in self._tasks:
            self._progress.update(self._tasks[phase], description=text)

    def __enter__(self) -> "StepProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
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

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(self._labels.get(phase, phase), total=total)
        self._progress.update(self._tasks[phase], completed=done, total=total)

"""The Rich table `longgen eval` prints: one row per metric (catalogue.COLUMNS), one column per video, so it fits a
terminal; more than RUNS_PER_TABLE videos are printed as several tables."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from longgen.eval.catalogue import arrow, present, show

RUNS_PER_TABLE = 6


def cell(column, summary: dict) -> str:
    text = show(column, summary.get(column.key))
    if column.key == "seams_flagged" and summary.get("seam_boundaries") is not None:
        text += f" of {summary['seam_boundaries']}"
    if column.key == "repetition" and summary.get("repetition_lag"):
        text += f" at {summary['repetition_lag']}"
    return text


def results_table(results: list[dict], title: str = "longgen eval", labels: list[str] | None = None) -> Table:
    """One column per result, headed by its label (`labels`, default each result's own: its folder or file)."""
    columns = present(results)
    table = Table(title=title, caption="↑ higher is better, ↓ lower is better")
    table.add_column("metric", no_wrap=True)
    for label in labels or [str(r.get("label")) for r in results]:
        table.add_column(escape(label), justify="right", overflow="fold")
    for c in columns:
        table.add_row(escape(c.header + arrow(c)), *(cell(c, r.get("summary") or {}) for r in results))
    return table


def print_table(results: list[dict], labels: list[str] | None = None) -> None:
    """The results as tables of at most RUNS_PER_TABLE columns, headed by `labels` (see results_table)."""
    console = Console(soft_wrap=False)
    for start in range(0, len(results), RUNS_PER_TABLE):
        part = results[start: start + RUNS_PER_TABLE]
        title = "longgen eval" if len(results) <= RUNS_PER_TABLE else \
            f"longgen eval ({start + 1}–{start + len(part)} of {len(results)})"
        console.print(results_table(part, title, labels[start: start + RUNS_PER_TABLE] if labels else None))

"""Matplotlib figures of eval results (reads eval.json content only; no metric is computed here).

Figures are built with matplotlib's object API (`Figure`, no pyplot state, no GUI backend) and saved as PNG bytes;
report.py writes them to files and embeds them in report.html.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from typing import Iterator

import numpy as np
from matplotlib.figure import Figure

from longgen.eval.catalogue import arrow

_DPI = 110


#: matplotlib's warning for a character its font lacks (drawn as a box), once per glyph and figure
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


@contextlib.contextmanager
def missing_glyphs() -> Iterator[set[str]]:
    """Collect the characters the plot font lacks (labels in Chinese, emoji) into the set this yields, instead of
    matplotlib's UserWarning for each of them in each figure; other warnings are shown as usual."""
    found: set[str] = set()
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        match = _MISSING_GLYPH.search(str(message))
        if match:
            found.add(chr(int(match.group(1))))
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=_MISSING_GLYPH.pattern)
        warnings.showwarning = show
        yield found


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _curve(result: dict, key: str) -> np.ndarray:
    values = (result.get("curves") or {}).get(key) or []
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _boundaries(ax, result: dict, colour, flagged_only: bool = False) -> None:
    """Window boundaries as dotted vertical lines at the frame pair they fall between; flagged seams solid red."""
    for seam in result.get("seams") or []:
        x = seam["pixel_pair"][0] + 0.5
        if seam.get("flagged"):
            ax.axvline(x, color="red", lw=1.2, alpha=0.8)
        elif not flagged_only:
            ax.axvline(x, color=colour, lw=0.8, ls=":", alpha=0.5)


def curves_figure(results: list[dict]) -> bytes:
    """Per-pair frame difference (flicker) and warping error of every run, window boundaries marked."""
    colours = _colours(len(results))
    fig = Figure(figsize=(11, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for r, colour in zip(results, colours):
        x = np.arange(len(_curve(r, "frame_mae"))) + 0.5
        top.plot(x, _curve(r, "frame_mae"), color=colour, lw=1, label=r["label"])
        bottom.plot(x, _curve(r, "warp"), color=colour, lw=1)
        _boundaries(top, r, colour)
        _boundaries(bottom, r, colour)
    top.set_ylabel("mean |I(t+1) − I(t)|\n(grey levels)")
    top.set_title("Frame-to-frame change (flicker curve) and warping error; dotted: window boundaries, red: flagged seams",
                  fontsize=9)
    bottom.set_ylabel("warping error")
    bottom.set_xlabel("frame")
    top.legend(fontsize=7, ncol=min(4, len(results)), loc="upper right")
    return _png(fig)


def drift_figure(results: list[dict]) -> bytes:
    """ΔE from the first window and mean L* over time."""
    colours = _colours(len(results))
    fig = Figure(figsize=(11, 5))
    left, right = fig.subplots(1, 2)
    for r, colour in zip(results, colours):
        fps = (r.get("video_info") or {}).get("fps") or 8
        delta, light = _curve(r, "delta_e"), _curve(r, "lab_L")
        seconds = np.arange(len(delta)) / fps
        left.plot(seconds, delta, color=colour, lw=1, label=r["label"])
        right.plot(seconds, light, color=colour, lw=1)
    left.set_title("colour drift: ΔE*ab of mean colour from the first window", fontsize=9)
    left.set_xlabel("seconds")
    left.set_ylabel("ΔE*ab")
    right.set_title("mean L* (brightness)", fontsize=9)
    right.set_xlabel("seconds")
    right.set_ylabel("L*")
    left.legend(fontsize=7)
    return _png(fig)


def similarity_figure(results: list[dict]) -> bytes:
    """SSIM against the distance between frames."""
    colours = _colours(len(results))
    fig = Figure(figsize=(11, 4))
    ax = fig.subplots()
    for r, colour in zip(results, colours):
        ax.plot(_curve(r, "ssim_lag"), _curve(r, "ssim"), color=colour, lw=1, label=r["label"])
    ax.set_title("long-horizon similarity: mean SSIM of frames d apart", fontsize=9)
    ax.set_xlabel("distance d (frames)")
    ax.set_ylabel("SSIM")
    ax.legend(fontsize=7, ncol=min(4, len(results)))
    return _png(fig)


def bars_figure(groups: list[tuple[str, dict[str, list[float]]]], columns: list) -> bytes:
    """One panel per metric: a bar per group with mean ± standard deviation over its runs (seeds)."""
    n = len(columns)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, gridspec_kw={"hspace": 0.95, "wspace": 0.4})).ravel()
    names = [g for g, _ in groups]
    colours = _colours(len(groups))
    for ax, column in zip(axes, columns):
        means, stds = [], []
        for _, values in groups:
            v = np.array([x for x in values.get(column.key, []) if x is not None], dtype=float)
            means.append(v.mean() if v.size else np.nan)
            stds.append(v.std(ddof=1) if v.size > 1 else 0.0)
        ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
        ax.set_title(column.header + arrow(column), fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("per group: mean ± std over runs (seeds)", fontsize=10)
    return _png(fig)


def run_figure(result: dict) -> bytes:
    """One run: frame change, warping error and ΔE over frames, with its window boundaries and scene cuts."""
    fig = Figure(figsize=(6, 4.2))
    axes = fig.subplots(3, 1, sharex=True)
    keys = [("frame_mae", "|ΔI|"), ("warp", "warp"), ("delta_e", "ΔE")]
    for ax, (key, label) in zip(axes, keys):
        values = _curve(result, key)
        offset = 0.5 if key != "delta_e" else 0.0
        ax.plot(np.arange(len(values)) + offset, values, color="tab:blue", lw=1)
        _boundaries(ax, result, "grey")
        for cut in (result.get("scenes") or {}).get("cuts") or []:
            ax.axvline(cut, color="purple", lw=1.2, ls="--")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("frame", fontsize=8)
    return _png(fig)

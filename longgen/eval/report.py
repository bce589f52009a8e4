"""Comparison report of several evaluated runs: report.csv, plots/*.png and report.html.

Reads eval results only (the content of eval.json files); computes nothing but group statistics.

Groups: runs that differ only by seed form one group. A run's group is its Hydra overrides
(.hydra/overrides.yaml, kept in eval.json) without `seed=…`, without `hydra…` keys and without the overrides every
run shares — so `-m sampler=syncos,glc seed=0,1,2` gives the groups `sampler=syncos` and `sampler=glc`. Runs without
overrides (bare .mp4 files) are each their own group.

report.html is one file: the plots are embedded as PNG data URIs. Videos are embedded too (mp4 data URIs) when
`embed_videos=true`, or with `auto` when all of them together are at most 32 MB; otherwise they are linked by paths
relative to the report, so the page works as long as the report and the runs move together.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from longgen.errors import UsageError
from longgen.eval import plots
from longgen.eval.catalogue import COLUMNS, arrow, present, show
from longgen.rundir import CHECKPOINT, SUMMARY, atomic_file, read_ledger, write_bytes
from longgen.story import cut

log = logging.getLogger("longgen")

EMBED_LIMIT_BYTES = 32 * 1024 * 1024
FIXED_FIELDS = ["label", "group", "sampler", "seed", "video", "frames", "fps", "width", "height"]


def group_labels(results: list[dict]) -> list[str]:
    """The group of each result (see the module docstring)."""
    def varying(r: dict) -> list[str]:
        return [o for o in (r.get("run") or {}).get("overrides") or []
                if not o.split("=")[0].lstrip("+~").startswith(("seed", "hydra"))]

    lists = [varying(r) for r in results]
    with_overrides = [set(v) for v in lists if v]
    shared = set.intersection(*with_overrides) if with_overrides else set()
    labels = []
    for r, overrides in zip(results, lists):
        own = [o for o in overrides if o not in shared]
        if own:
            labels.append(" ".join(own))
        elif (r.get("run") or {}).get("overrides"):
            labels.append((r.get("run") or {}).get("sampler") or r["label"])
        else:
            labels.append(r["label"])
    return labels


def run_labels(results: list[dict]) -> list[str]:
    """What the console table and the report's run cards call each video: its group as report.csv has it (the
    experiment, or the overrides that set the run apart), then its folder where that adds something, e.g.
    `+experiment=freenoise-4x (2_gen-l-video)`: a sweep names its folders by sampler, which FreeNoise and
    Gen-L-Video share, and a seed's runs share a group. One video alone keeps its own name."""
    if len(results) < 2:
        return [r["label"] for r in results]
    return [group if group == r["label"] else f"{group} ({r['label']})"
            for r, group in zip(results, group_labels(results))]


def grouped(results: list[dict], labels: list[str]) -> list[tuple[str, dict[str, list]]]:
    """[(group, {summary key: values of its runs})] in order of first appearance."""
    out: dict[str, dict[str, list]] = {}
    for r, g in zip(results, labels):
        bucket = out.setdefault(g, {})
        for key, value in (r.get("summary") or {}).items():
            bucket.setdefault(key, []).append(value)
    return list(out.items())


def mean_std(values: list) -> tuple[float | None, float | None, int]:
    v = np.array([x for x in values if x is not None and not isinstance(x, bool)], dtype=float)
    if not v.size:
        return None, None, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


# ---------------------------------------------------------------------------------------------------- files
def _write_atomic(path: Path, data: bytes) -> None:
    """A report file through a fresh, unpredictable temporary file in its directory, renamed into place."""
    with atomic_file(path) as tmp:
        write_bytes(tmp, data)


def csv_text(results: list[dict], labels: list[str]) -> str:
    keys = [c.key for c in COLUMNS]
    extra = sorted({k for r in results for k in (r.get("summary") or {})} - set(keys))
    summary_keys = [k for k in keys if any(k in (r.get("summary") or {}) for r in results)] + extra
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIXED_FIELDS + summary_keys)
    for r, g in zip(results, labels):
        info, run = r.get("video_info") or {}, r.get("run") or {}
        row = [r["label"], g, run.get("sampler"), run.get("seed"), r.get("video"), info.get("frames"),
               info.get("fps"), info.get("width"), info.get("height")]
        row += [(r.get("summary") or {}).get(k) for k in summary_keys]
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def embed_mode(embed_videos: str | bool) -> str:
    """`report.embed_videos` as auto, true or false; anything else is one line (checked before any video is
    measured, so a typo does not cost the whole evaluation)."""
    mode = {True: "true", False: "false"}.get(embed_videos, str(embed_videos))
    if mode not in ("auto", "true", "false"):
        raise UsageError(f"report.embed_videos={embed_videos!r}: choose auto, true or false")
    return mode


def left_out(sweep_dir: str | Path, results: list[dict]) -> list[str]:
    """One line per job of the sweep (or folder of runs) in `sweep_dir` that `results` leave out: a job its ledger
    records as failed or interrupted (with its error), one it never ran (sweep.json's planned count), one done but
    not measured, and a job directory without a finished run. A report missing a method then says so."""
    from longgen.eval.inputs import job_order

    sweep_dir = Path(sweep_dir)
    shown = {Path(r["video"]).resolve().parent for r in results}
    jobs = read_ledger(sweep_dir)
    try:
        planned = int(json.loads((sweep_dir / SUMMARY).read_text(encoding="utf-8"))["planned"])
    except (OSError, ValueError, TypeError, KeyError):
        planned = 0
    named = shown | {Path(entry["run_dir"]).resolve() for entry in jobs.values()}
    unnamed = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.resolve() not in named), key=job_order)
    started = {job_order(p)[0] for p in unnamed}  # a job cut before its ledger line: its folder says more below
    lines = []
    for number in range(max(planned, max(jobs, default=-1) + 1)):
        entry = jobs.get(number)
        if entry is None and number not in started:
            lines.append(f"job {number}: not run")
        elif entry is None:
            continue
        elif Path(entry["run_dir"]).resolve() not in shown:
            status = "not measured" if entry["status"] == "done" else entry["status"]
            why = f"{status}: {entry['error']}" if entry.get("error") else status
            lines.append(f"job {number} ({' '.join(entry.get('overrides', []))}): {why}")
    for job in unnamed:
        if (job / CHECKPOINT).is_file():
            lines.append(f"{job.name}: unfinished, its checkpoint kept (longgen resume {job})")
        elif not (job / "manifest.json").is_file() and any((job / n).exists() for n in (".hydra", "generate.log")):
            lines.append(f"{job.name}: unfinished, no manifest.json")
    return lines


def write_report(results: list[dict], out_dir: str | Path, embed_videos: str | bool = "auto",
                 left: list[str] = ()) -> dict[str, Path]:
    """Write report.csv, plots/ and report.html into `out_dir`; return their paths. `left`: what the report leaves
    out (`left_out`), named at the top of report.html."""
    if len(results) < 1:
        raise UsageError("no evaluated runs to report on")
    mode = embed_mode(embed_videos)
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    labels = group_labels(results)
    groups = grouped(results, labels)
    bar_columns = [c for c in present(results) if c.key not in ("dynamic_share",)]
    named = [{**r, "label": name} for r, name in zip(results, run_labels(results))]  # the plots' legends and titles

    with plots.missing_glyphs() as missing:
        figures = {
            "curves": plots.curves_figure(named),
            "drift": plots.drift_figure(named),
            "similarity": plots.similarity_figure(named),
            "bars": plots.bars_figure(groups, bar_columns),
        }
        run_figures = [plots.run_figure(r) for r in named]
    if missing:
        log.info("the plot font has no %s: the plots show boxes for them (report.html and report.csv hold the "
                 "text); install a font with them (e.g. Noto Sans CJK) for readable plot labels",
                 cut("".join(sorted(missing)), 20))
    paths = {"csv": out_dir / "report.csv", "html": out_dir / "report.html"}
    for name, png in figures.items():
        paths[name] = out_dir / "plots" / f"{name}.png"
        _write_atomic(paths[name], png)
    for i, (r, png) in enumerate(zip(results, run_figures)):
        _write_atomic(out_dir / "plots" / f"run-{i:02d}-{_slug(r['label'])}.png", png)
    _write_atomic(paths["csv"], csv_text(results, labels).encode())
    embed = mode == "true" or (mode == "auto" and _videos_size(results) <= EMBED_LIMIT_BYTES)
    page = html_page(results, labels, groups, figures, run_figures, out_dir, embed, left)
    _write_atomic(paths["html"], page.encode())
    return paths


def _videos_size(results: list[dict]) -> int:
    return sum(Path(r["video"]).stat().st_size for r in results if Path(r["video"]).is_file())


# ---------------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
p.meta{color:#666;font-size:13px;margin:0 0 12px}
table{border-collapse:collapse;font-size:12px;background:#fff} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f0f0f0;cursor:help}
td.best{font-weight:bold;color:#0a6b1f}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.card h3{font-size:14px;margin:0 0 6px;word-break:break-all} .card video{width:100%;background:#000;border-radius:4px}
.card table{width:100%;margin:6px 0} .card img{width:100%}
img.plot{max-width:100%;background:#fff;border:1px solid #ddd;margin:6px 0}
.legend{font-size:12px;color:#555}
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _video_src(result: dict, out_dir: Path, embed: bool) -> str:
    path = Path(result["video"])
    if embed and path.is_file():
        return _data_uri(path.read_bytes(), "video/mp4")
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def _best(values: list[float | None], better: str) -> float | None:
    finite = [v for v in values if v is not None]
    if better not in ("high", "low") or len(set(finite)) < 2:  # nothing to prefer when all groups are equal
        return None
    return max(finite) if better == "high" else min(finite)


def _group_table(groups: list[tuple[str, dict[str, list]]], columns: list) -> str:
    stats = {c.key: [mean_std(values.get(c.key, [])) for _, values in groups] for c in columns}
    head = "".join(f'<th title="{html.escape(c.help)}">{html.escape(c.header + arrow(c))}</th>' for c in columns)
    rows = []
    for i, (name, values) in enumerate(groups):
        n = max((len(v) for v in values.values()), default=0)
        cells = []
        for c in columns:
            mean, std, count = stats[c.key][i]
            best = _best([s[0] for s in stats[c.key]], c.better)
            text = "–" if mean is None else show(c, mean) + (f" ± {show(c, std).lstrip('+')}" if count > 1 else "")
            cls = ' class="best"' if best is not None and mean == best else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{n}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>group</th><th>runs</th>{head}</tr>{''.join(rows)}</table>"


def _run_table(result: dict, columns: list) -> str:
    summary = result.get("summary") or {}
    rows = "".join(f'<tr><td title="{html.escape(c.help)}">{html.escape(c.header)}</td>'
                   f"<td>{html.escape(show(c, summary.get(c.key)))}</td></tr>" for c in columns)
    return f"<table>{rows}</table>"


def html_page(results, labels, groups, figures, run_figures, out_dir: Path, embed: bool, left: list[str] = ()) -> str:
    columns = present(results)
    cards = []
    for r, g, name, png in zip(results, labels, run_labels(results), run_figures):
        info = r.get("video_info") or {}
        facts = f"{info.get('frames')} frames, {info.get('width')}×{info.get('height')}, {info.get('fps'):g} fps"
        cards.append(
            f'<div class="card"><h3>{html.escape(name)}</h3>'
            f'<p class="meta">{html.escape(g)} · {html.escape(facts)}</p>'
            f'<video src="{_video_src(r, out_dir, embed)}" controls muted loop autoplay playsinline preload="metadata"></video>'
            f"{_run_table(r, columns)}"
            f'<img src="{_data_uri(png, "image/png")}" alt="curves of {html.escape(r["label"])}"></div>'
        )
    plot_html = "".join(f'<img class="plot" src="{_data_uri(png, "image/png")}" alt="{name}">'
                        for name, png in figures.items())
    legend = "".join(f"<li><b>{html.escape(c.header)}</b>: {html.escape(c.help)}</li>" for c in columns)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    how = "embedded in this file" if embed else "linked relative to this file (keep the report beside the runs)"
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>longgen eval report — {len(results)} runs</title><style>{_CSS}</style></head><body>"
        f"<h1>longgen eval report</h1><p class=\"meta\">{len(results)} runs in {len(groups)} groups · {stamp} · "
        f"videos {how}</p>"
        + (f"<h2>Left out ({len(left)})</h2><ul class=\"legend\">"
           + "".join(f"<li>{html.escape(line)}</li>" for line in left) + "</ul>" if left else "")
        + f"<h2>Groups (mean ± std over runs)</h2>{_group_table(groups, columns)}"
        f"<h2>Videos</h2><div class=\"grid\">{''.join(cards)}</div>"
        f"<h2>Plots</h2>{plot_html}"
        f"<h2>Metrics</h2><ul class=\"legend\">{legend}</ul>"
        "</body></html>\n"
    )


def load_results(sweep_dir: str | Path) -> list[dict]:
    """eval.json of each job directory of a sweep (a directory with .hydra/, manifest.json or eval.json), in job
    order; a job without one is left out (`left_out` names it)."""
    from longgen.eval.inputs import job_order

    jobs = sorted((p for p in Path(sweep_dir).iterdir()
                   if p.is_dir() and any((p / name).exists() for name in (".hydra", "manifest.json", "eval.json"))),
                  key=job_order)
    results = []
    for job in jobs:
        with contextlib.suppress(OSError, ValueError):
            results.append(json.loads((job / "eval.json").read_text(encoding="utf-8")))
    return results

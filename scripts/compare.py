"""The methods comparison of the seed papers in one command (issue 29): every long-video method longgen runs, on
the same story, seed and backbone, then one `longgen eval` report over all of them.

It is two longgen commands, printed before they run, so the same thing can be typed by hand:
  longgen generate -m +experiment=direct-4x,gen-l-video-4x,freenoise-4x,fifo-4x,freelong-4x,ditctrl-4x,
                      glc-paper-4x,syncos-paper-4x hydra.sweep.dir=OUT [OVERRIDES]
  longgen eval OUT
Each experiment (conf/experiment/) pins one method at 4x the native clip as its paper runs it; OVERRIDES (the
backbone, story, seed ...) apply to every method alike. The eval report (OUT/report.html, report.csv, plots) groups
the runs by experiment: the form of GLC-Diffusion's Table 1 and SynCoS's Tables 1/5 with the weight-free metrics,
plus the model metrics where `eval.models.*` names local weights. This script then adds OUT/compare.md: per method
the transformer forwards, the sampling seconds and their ratio to Gen-L-Video's.

  python scripts/compare.py --out runs/compare story=story.json backbone=cogvideox-2b seed=0
  python scripts/compare.py --out /tmp/c backbone=tiny backbone.height=16 backbone.width=16 \
      length_factor=null num_windows=2 sampler.num_steps=4 prompt="a fox"        # CI-size, seconds on a CPU

Split over machines or sessions (the GPU has no OpenCV for eval, and a device command has a time limit):
`--no-eval` stops after the sweep (OUT/compare.md already holds the cost table), `--methods` picks a subset, and
`--report-only` later evaluates finished sweeps together and writes one report and one cost table:
  python scripts/compare.py --no-eval --methods direct-4x,gen-l-video-4x --out A backbone=cogvideox-2b ...
  python scripts/compare.py --no-eval --methods fifo-4x,glc-paper-4x --out B backbone=cogvideox-2b ...
  python scripts/compare.py --report-only --out REPORT A B          # longgen eval A B out=REPORT; REPORT/compare.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

#: the comparison's rows, in the order of the papers' tables (baselines first)
METHODS = ("direct-4x", "gen-l-video-4x", "freenoise-4x", "fifo-4x", "freelong-4x", "ditctrl-4x", "glc-paper-4x",
           "syncos-paper-4x")


def longgen(*args: str) -> None:
    """Run one longgen command as a user would, echoing it; a failure ends the script with its exit status."""
    command = [sys.executable, "-m", "longgen.cli", *args]
    print("$ longgen " + " ".join(shlex.quote(a) for a in args), flush=True)
    status = subprocess.run(command).returncode
    if status != 0:
        sys.exit(f"compare: `longgen {args[0]}` exited {status}; see its messages above")


def method_rows(out: Path, sweeps: list[Path] | None = None) -> list[dict]:
    """One row per finished job of the sweeps (default: `out` itself): its experiment, sampler, forwards and sampling
    time (manifest.json); the job is named relative to `out` when it lies elsewhere."""
    rows = []
    for manifest_path in sorted(p for sweep in (sweeps or [out]) for p in sweep.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        overrides = (manifest_path.parent / ".hydra" / "overrides.yaml").read_text()
        method = next((m for m in METHODS if f"+experiment={m}" in overrides), manifest_path.parent.name)
        job = Path(os.path.relpath(manifest_path.parent, out)).as_posix()
        rows.append({"method": method, "job": job,
                     "sampler": manifest.get("sampler", {}).get("name", "?"),
                     "forwards": int(manifest.get("transformer_forwards", 0)),
                     "sample_s": float(manifest.get("timings", {}).get("sample_s", float("nan")))})
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: order.get(r["method"], len(order)))


def cost_table(rows: list[dict]) -> str:
    """Markdown: forwards and sampling seconds per method, each relative to Gen-L-Video's (the papers' unit)."""
    base = next((r for r in rows if r["method"] == "gen-l-video-4x"), None)
    lines = ["| method | job | forwards | × Gen-L-Video | sampling s | × Gen-L-Video |", "|---|---|---|---|---|---|"]
    for r in rows:
        f_ratio = f"{r['forwards'] / base['forwards']:.2f}" if base and base["forwards"] else "–"
        s_ratio = f"{r['sample_s'] / base['sample_s']:.2f}" if base and base["sample_s"] > 0 else "–"
        lines.append(f"| {r['method']} | {r['job']} | {r['forwards']} | {f_ratio} | {r['sample_s']:.1f} | {s_ratio} |")
    return "\n".join(lines) + "\n"


def sweep_dirs(parser: argparse.ArgumentParser, given: list[str], out: Path) -> list[Path]:
    """The finished sweeps `--report-only` reads (default: --out): each must hold jobs with a manifest.json, and no
    method may appear twice among them (the table would not say which run is the method's)."""
    sweeps = [Path(d).resolve() for d in given] or [out]
    for sweep in sweeps:
        if not any(sweep.glob("*/manifest.json")):
            parser.error(f"{sweep} holds no finished job (no */manifest.json); give the --out of a `compare.py "
                         f"--no-eval` run")
    methods = [r["method"] for r in method_rows(out, sweeps)]
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        parser.error(f"{', '.join(twice)} ran in more than one of the given sweeps; give each method's sweep once")
    return sweeps


def write_cost_table(out: Path, sweeps: list[Path] | None = None) -> str:
    """OUT/compare.md from the sweeps' manifests; returns the table."""
    table = cost_table(method_rows(out, sweeps))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("# Methods comparison: cost\n\n" + table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s --out DIR [--methods M,...] [--no-eval] [OVERRIDES]\n"
                                           "       %(prog)s --report-only --out DIR [SWEEP ...]")
    parser.add_argument("--out", required=True, type=Path,
                        help="the sweep directory (must not exist yet); with --report-only, where the report goes")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated experiments (default: all {len(METHODS)})")
    parser.add_argument("--no-eval", action="store_true",
                        help="stop after the sweep and its cost table (OUT/compare.md); evaluate later with "
                             "--report-only, e.g. on another machine")
    parser.add_argument("--report-only", action="store_true",
                        help="generate nothing: evaluate the finished sweeps given as arguments (default: --out) "
                             "together into --out and write its compare.md")
    args, rest = parser.parse_known_args(argv)
    if args.report_only:
        if args.no_eval:
            parser.error("--report-only and --no-eval together do nothing; give one of them")
        out = args.out.resolve()
        sweeps = sweep_dirs(parser, rest, out)
        longgen("eval", *map(str, sweeps), *([] if sweeps == [out] else [f"out={out}"]))
        table = write_cost_table(out, sweeps)
        print(table + f"\nreport: {out / 'report.html'}; cost table: {out / 'compare.md'}")
        return
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new --out directory (the comparison never mixes two sweeps)")
    out = args.out.resolve()
    longgen("generate", "-m", f"+experiment={args.methods}", f"hydra.sweep.dir={out}", *rest)
    if args.no_eval:
        table = write_cost_table(out)
        print(table + f"\ncost table: {out / 'compare.md'}; report later: python scripts/compare.py --report-only "
                      f"--out REPORT {out} [OTHER_SWEEP ...]")
        return
    longgen("eval", str(out))
    table = write_cost_table(out)
    print(table + f"\nreport: {out / 'report.html'}; cost table: {out / 'compare.md'}")


if __name__ == "__main__":
    main()

"""The methods comparison of the seed papers in one command (issue 29): every long-video method longgen runs, on
the same story, seed and backbone, then one `longgen eval` report over all of them.

It is two longgen commands, printed before they run, so the same thing can be typed by hand:
  longgen generate -m +experiment=direct-4x,gen-l-video-4x,freenoise-4x,fifo-4x,freelong-4x,ditctrl-4x,
                      glc-paper-4x,syncos-paper-4x hydra.sweep.dir=OUT [OVERRIDES]
  longgen eval OUT
Each experiment (conf/experiment/) pins one method at 4x the native clip as its paper runs it; OVERRIDES (the
backbone, story, seed ...) apply to every method alike. The eval report (OUT/report.html, report.csv, plots) groups
the runs by experiment: the form of GLC-Diffusion's Table 1 and SynCoS's Tables 1/5 with the weight-free metrics,
plus the model metrics where `longgen eval`'s `models.*` names local weights. Direct sampling and FreeLong show one
prompt over the whole video: on a story of several events their experiments show its global prompt
(`sampler.several_events=global`). This script then adds OUT/compare.md: per method
the transformer forwards, the sampling seconds and their ratio to Gen-L-Video's.

  python scripts/compare.py --out runs/compare story=story.json backbone=cogvideox-2b seed=0
  python scripts/compare.py --out /tmp/c backbone=tiny backbone.height=16 backbone.width=16 \
      length_factor=null num_windows=2 prompt="a fox"        # CI-size, about a minute on a CPU
(FIFO has no step count: `sampler.num_steps=N` fails the sweep's fifo-4x job, so give it only with --methods that
leave fifo-4x out.)

Split over machines or sessions (the GPU has no OpenCV for eval, and a device command has a time limit):
`--no-eval` stops after the sweep (OUT/compare.md already holds the cost table), `--methods` picks a subset, and
`--report-only` later evaluates finished sweeps together and writes one report and one cost table:
  python scripts/compare.py --no-eval --methods direct-4x,gen-l-video-4x --out A backbone=cogvideox-2b ...
  python scripts/compare.py --no-eval --methods fifo-4x,glc-paper-4x --out B backbone=cogvideox-2b ...
  python scripts/compare.py --report-only --out REPORT A B          # longgen eval A B out=REPORT; REPORT/compare.md
  python scripts/compare.py --report-only --no-eval --out REPORT A B   # REPORT/compare.md alone (videos not needed)
A run at reduced steps still measures each method's seconds per forward; `--full-forwards F.json` (from
scripts/compare_forwards.py, which counts every method's forwards at the real settings on a CPU) projects them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

#: the comparison's rows, in the order of the papers' tables (baselines first)
METHODS = ("direct-4x", "gen-l-video-4x", "freenoise-4x", "fifo-4x", "freelong-4x", "ditctrl-4x", "glc-paper-4x",
           "syncos-paper-4x")


def longgen(*args: str, sweep: Path | None = None) -> None:
    """Run one longgen command as a user would, echoing it; a failure ends the script with its exit status. Ctrl-C
    reaches longgen too (one process group): it finishes its step, keeps the checkpoint and writes sweep.json, so
    this waits for it rather than killing it (as subprocess.run would). `sweep`: the sweep directory, named in the
    line that says how to go on."""
    command = [sys.executable, "-m", "longgen.cli", *args]
    print("$ longgen " + " ".join(shlex.quote(a) for a in args), flush=True)
    process = subprocess.Popen(command)
    while True:
        try:
            status = process.wait()
            break
        except KeyboardInterrupt:  # a second Ctrl-C stops longgen at once; it is never killed from here
            continue
    if status != 0:  # a sweep refused before any job (a bad option, missing weights) has no ledger to go on from
        go_on = (f"; finish the sweep with `longgen generate --rerun-failed {shlex.quote(str(sweep))}`, then report "
                 f"with `python scripts/compare.py --report-only --out {shlex.quote(str(sweep))}`"
                 if sweep and (sweep / "sweep-jobs.jsonl").is_file() else "")
        print(f"compare: `longgen {args[0]}` exited {status}; see its messages above{go_on}", file=sys.stderr)
        sys.exit(status)


def method_rows(out: Path, sweeps: list[Path] | None = None) -> list[dict]:
    """One row per finished job of the sweeps (default: `out` itself): its experiment, sampler, forwards and sampling
    time (manifest.json); a job outside `out` is named with its sweep's folder, e.g. `A/1_gen-l-video`."""
    rows = []
    for manifest_path in sorted(p for sweep in (sweeps or [out]) for p in sweep.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        overrides = (manifest_path.parent / ".hydra" / "overrides.yaml").read_text()
        method = next((m for m in METHODS if f"+experiment={m}" in overrides), manifest_path.parent.name)
        sweep = manifest_path.parent.parent
        job = manifest_path.parent.name if sweep == out else f"{sweep.name}/{manifest_path.parent.name}"
        rows.append({"method": method, "job": job,
                     "sampler": manifest.get("sampler", {}).get("name", "?"),
                     "steps": manifest.get("sampler", {}).get("num_steps", "?"),
                     "forwards": int(manifest.get("transformer_forwards", 0)),
                     "planned": float(manifest.get("transformer_forwards_planned",
                                                   manifest.get("transformer_forwards", 0))),
                     "sample_s": float(manifest.get("timings", {}).get("sample_s", float("nan")))})
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: order.get(r["method"], len(order)))


def cost_table(rows: list[dict], full: dict[str, float] | None = None) -> str:
    """Markdown: forwards, sampling seconds and seconds per forward of each method, each relative to Gen-L-Video's
    (the papers' unit). Seconds per forward divide by the sampler's planned forward-equivalents (a backward pass counts
    two), so they compare across runs of different step counts; the totals compare only at equal settings. `full`
    (method -> planned forward-equivalents at the experiment's own settings, from scripts/compare_forwards.py) adds
    the projection: seconds per forward times those."""
    base = next((r for r in rows if r["method"] == "gen-l-video-4x"), None)

    def per_forward(r: dict) -> float:
        return r["sample_s"] / r["planned"] if r["planned"] > 0 else float("nan")

    def ratio(value: float, base_value: float | None) -> str:
        return f"{value / base_value:.2f}" if base_value and base_value > 0 else "–"

    def projected(r: dict | None) -> float | None:
        return per_forward(r) * full[r["method"]] if r and full and r["method"] in full else None

    extra = " full-settings forwards | projected s | × Gen-L-Video |" if full else ""
    lines = ["| method | job | steps | forwards | × Gen-L-Video | sampling s | × Gen-L-Video | s / forward | "
             "× Gen-L-Video |" + extra, "|---|---|---|---|---|---|---|---|---|" + "---|---|---|" * bool(full)]
    for r in rows:
        line = (f"| {r['method']} | {r['job']} | {r['steps']} | {r['forwards']} | "
                f"{ratio(r['forwards'], base and base['forwards'])} | {r['sample_s']:.1f} | "
                f"{ratio(r['sample_s'], base and base['sample_s'])} | {per_forward(r):.4f} | "
                f"{ratio(per_forward(r), base and per_forward(base))} |")
        if full:
            p = projected(r)
            line += (f" {full[r['method']]:g} | {p:.0f} | {ratio(p, projected(base))} |" if p is not None
                     else " – | – | – |")
        lines.append(line)
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


def full_forwards(parser: argparse.ArgumentParser, path: Path) -> dict[str, float]:
    """Method -> planned forward-equivalents from a `compare_forwards.py --json` file."""
    try:
        rows = json.loads(path.read_text())
        full = {r["method"]: float(r["planned"]) for r in rows} if isinstance(rows, list) else {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        parser.error(f"--full-forwards {path}: not a `scripts/compare_forwards.py --json` file ({exc})")
    if not full:
        parser.error(f"--full-forwards {path}: not a `scripts/compare_forwards.py --json` file (no method rows)")
    return full


def left_out_lines(out: Path, sweeps: list[Path] | None = None) -> list[str]:
    """The jobs of the sweeps that the table leaves out (failed with their error, never run, cut mid-way), one line
    each as `longgen eval` names them, so a table missing a method says so."""
    from longgen.eval.report import left_out

    lines = []
    for sweep in sweeps or [out]:
        finished = [{"video": str(p.parent / "video.mp4")} for p in sweep.glob("*/manifest.json")]
        lines += [line if sweep == out else f"{sweep.name}/{line}" for line in left_out(sweep, finished)]
    return lines


def write_cost_table(out: Path, sweeps: list[Path] | None = None, full: dict[str, float] | None = None) -> str:
    """OUT/compare.md from the sweeps' manifests, with the jobs it leaves out; returns the table."""
    left = left_out_lines(out, sweeps)
    table = cost_table(method_rows(out, sweeps), full)
    if left:
        table += f"\nLeft out ({len(left)}):\n\n" + "".join(f"- {line}\n" for line in left)
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
                             "--report-only, e.g. on another machine; with --report-only: the cost table alone")
    parser.add_argument("--report-only", action="store_true",
                        help="generate nothing: evaluate the finished sweeps given as arguments (default: --out) "
                             "together into --out and write its compare.md")
    parser.add_argument("--full-forwards", type=Path, metavar="JSON",
                        help="with --report-only: `scripts/compare_forwards.py --json` rows at the experiments' own "
                             "settings; adds each method's seconds projected to them")
    args, rest = parser.parse_known_args(argv)
    if args.full_forwards and not args.report_only:
        parser.error("--full-forwards goes with --report-only")
    if args.report_only:
        out = args.out.resolve()
        full = full_forwards(parser, args.full_forwards) if args.full_forwards else None
        sweeps = sweep_dirs(parser, rest, out)
        if not args.no_eval:
            longgen("eval", *map(str, sweeps), *([] if sweeps == [out] else [f"out={out}"]))
        table = write_cost_table(out, sweeps, full)
        print(table + ("" if args.no_eval else f"\nreport: {out / 'report.html'};") + f" cost table: {out / 'compare.md'}")
        return
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new --out directory (the comparison never mixes two sweeps)")
    out = args.out.resolve()
    longgen("generate", "-m", f"+experiment={args.methods}", f"hydra.sweep.dir={out}", *rest, sweep=out)
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

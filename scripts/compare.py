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


def longgen(*args: str) -> None:
    """Run one longgen command as a user would, echoing it; a failure ends the script with its exit status."""
    command = [sys.executable, "-m", "longgen.cli", *args]
    print("$ longgen " + " ".join(shlex.quote(a) for a in args), flush=True)
    status = subprocess.run(command).returncode
    if status != 0:
        sys.exit(f"compare: `longgen {args[0]}` exited {status}; see its messages above")


def method_rows(out: Path) -> list[dict]:
    """One row per finished job of the sweep: its experiment, sampler, forwards and sampling time (manifest.json)."""
    rows = []
    for manifest_path in sorted(out.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        overrides = (manifest_path.parent / ".hydra" / "overrides.yaml").read_text()
        method = next((m for m in METHODS if f"+experiment={m}" in overrides), manifest_path.parent.name)
        rows.append({"method": method, "job": manifest_path.parent.name,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s --out DIR [OVERRIDES]")
    parser.add_argument("--out", required=True, type=Path, help="the sweep directory (must not exist yet)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated experiments (default: all {len(METHODS)})")
    args, overrides = parser.parse_known_args(argv)
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new --out directory (the comparison never mixes two sweeps)")
    out = args.out.resolve()
    longgen("generate", "-m", f"+experiment={args.methods}", f"hydra.sweep.dir={out}", *overrides)
    longgen("eval", str(out))
    table = cost_table(method_rows(out))
    (out / "compare.md").write_text("# Methods comparison: cost\n\n" + table)
    print(table + f"\nreport: {out / 'report.html'}; cost table: {out / 'compare.md'}")


if __name__ == "__main__":
    main()

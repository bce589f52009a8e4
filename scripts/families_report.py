"""Markdown tables from what scripts/bench_families.sh has written so far: the attention probe's JSON
(`attention.json`) and bench.py's per-backbone JSON files (`W1-<backbone>.json`), for benchmarks/README.md.

    python scripts/families_report.py OUT_DIR          # writes OUT_DIR/families.md and prints it

A bench JSON without runs is a forward row whose W1 run did not finish (the stage's time ran out); a missing file is
a stage that did not get as far as its forward.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def attention_table(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    lines = [(f"Attention kernels ({data['device']}, torch {data['torch']}; `scripts/attention_probe.py`; TFLOP/s "
              f"of the shape's dense 4·B·H·N_q·N_kv·D; error vs fp32 on 256 valid queries of 2 heads):"), "",
             "| shape | call | B × H × N_q × N_kv × D | kernel | ms | TFLOP/s | rel. error | kernel that ran / error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        dims = f"{r['batch']} × {r['heads']} × {r['q_tokens']} × {r['kv_tokens']} × {r['head_dim']}"
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['label']} | {dims} | {r['kernel']} | – | – | – | failed: {r['error']} |")
        else:
            lines.append(f"| {r['shape']} | {r['label']} | {dims} | {r['kernel']} | {r['seconds'] * 1e3:.1f} | "
                         f"{r['tflops']:.0f} | {r['rel_err']:.1e} | {r.get('ran', '')} |")
    return lines


def bench_table(paths: list[Path]) -> list[str]:
    lines = [("Forward and W1 (gen-l-video 4×, 50 steps) per family (`scripts/bench.py`, random weights, regional "
              "compile, `attention=auto`; forward: one window, one CFG branch; W1 sampling: measured steps' median × "
              "50, or, with no step measured, 50 × windows × 2 × s / forward):"), "",
             ("| backbone | attention used | forward s / sample | TFLOP / forward | TFLOP/s | matmul TFLOP/s | ratio | "
              "W1 windows / L / frames | steps measured (s each) | W1 sampling min | rule | peak GB | build s | command |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        r = json.loads(path.read_text())
        compiled = ", compiled" if r["backbone"].get("compiled") else ""
        head = (f"| {r['backbone'].get('backbone', path.stem)} | {r['backbone'].get('attention_used')}{compiled} | "
                f"{r['forward_s_per_sample']:.3f} | {r['forward_tflop']:.0f} | {r['forward_tflops']:.0f} | "
                f"{fmt(r.get('matmul_tflops'), '.0f')} | {fmt(r.get('ratio_to_matmul'), '.1%')} | ")
        tail = f"{fmt(r.get('build_s'), '.0f')} | `{r['command']}` |"
        if not r["runs"]:
            lines.append(head + f"– | – | – | W1 not reached | {fmt(r.get('forward_peak_gpu_gb'), '.1f')} | " + tail)
        for run in r["runs"]:
            sampling = run["sampling_s"]
            lines.append(
                head + f"{run['windows']} / {run['latent_length']} / {run['frames']} | {run['steps_measured']} "
                f"({', '.join(f'{s:.1f}' for s in run['step_seconds']) or '–'}) | "
                f"{fmt(None if sampling is None else sampling / 60, '.1f')} | {run['sampling_formula']} | "
                f"{fmt(run.get('peak_gpu_gb'), '.1f')} | " + tail)
    return lines


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    out = Path(sys.argv[1])
    lines: list[str] = []
    if (out / "attention.json").exists():
        lines += attention_table(out / "attention.json") + [""]
    benches = sorted(out.glob("W1-*.json"))
    if benches:
        lines += bench_table(benches) + [""]
    (out / "families.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Transformer forwards of the methods comparison (issue 29, scripts/compare.py) at CogVideoX-2B 4x, counted on a CPU,
and each method's sampling time on an H200 estimated from them.

A method's forward count depends on the latent frame geometry (latent length, window, stride), the steps and
classifier-free guidance, never on the frame size or the weights. The tiny backbone has CogVideoX-2B's geometry
(49 video frames -> 13 latent frames, stride 4, temporal compression 4, CFG 6; checked below from the two YAMLs), so
this script runs the comparison's sweep on it at 16x16 pixels (`compare.py --no-eval`, ~25 s on a CPU) and reads
each manifest: `transformer_forwards` (counted) and `transformer_forwards_planned` (the sampler's own plan in
forward-equivalents: a backward pass through the model counts two forwards, GLC's randomly shifted window grid
its mean window count). OVERRIDES reach every method, e.g. `sampler.num_steps=10` or `story=...`, so the counts
of a reduced GPU run are computed exactly the same way.

  python scripts/compare_forwards.py                          # the comparison's own settings (4x, 50 steps ...)
  python scripts/compare_forwards.py --out /tmp/f sampler.num_steps=10 --json forwards.json

The time estimate: one CogVideoX-2B forward of one 13-latent-frame window (17,776 tokens: 226 text + 13 x 30 x 45
video) took 0.233 s on the H200 (benchmarks/README.md, issue 13, W1 with FlashAttention-3), of which attention is
30 layers x 4.94 ms (the FA3 call at that shape: 9.87 ms for 2 samples x 30 heads) = 0.148 s, the rest (linear
layers, norms) 0.085 s. A window of F latent frames has n = 226 + 1350 F tokens: the rest scales with n, attention
with n^2. FreeLong adds its local branch, each query frame against the text and w = 13 frames: n_video x n_13
key-query pairs against the global n^2. GLC's plan counts its model-VMCR backward passes as two forwards each.
Not modelled (so the estimate is a lower bound for them): FreeLong's 3-D FFT blend and its per-window-group attention
calls, DiTCtrl's KV-sharing layers on torch SDPA, GLC's ABAM bookkeeping (+4 to +19 %, W3) and SynCoS's optimiser.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (scripts/compare.py: the sweep, its methods and its manifest rows)

#: the geometry keys whose values make the forward counts; tiny must equal CogVideoX-2B in each
GEOMETRY = ("num_frames", "stride", "temporal_compression", "guidance_scale")
#: seconds of one CogVideoX-2B forward of one 13-latent-frame window on the H200 (FA3), and its attention share
FORWARD_S, ATTENTION_S = 0.233, 30 * 9.87e-3 / 2
TEXT_TOKENS, FRAME_TOKENS, NATIVE_FRAMES = 226, (480 // 16) * (720 // 16), 13


def check_geometry() -> None:
    """Refuse when the tiny backbone's latent frame geometry no longer matches CogVideoX-2B's."""
    def read(name: str) -> dict:
        return yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text())
    tiny, full = read("tiny"), read("cogvideox-2b")
    differ = [k for k in GEOMETRY if tiny.get(k) != full.get(k)]
    if differ:
        sys.exit(f"compare_forwards: backbone=tiny differs from cogvideox-2b in {', '.join(differ)}; its counts would "
                 f"not be CogVideoX-2B's")


def forward_seconds(frames: int, local_window: int | None = None, forward_s: float = FORWARD_S) -> float:
    """Estimated H200 seconds of one CogVideoX-2B forward of one sample over `frames` latent frames, given
    `forward_s` for a 13-frame window; with `local_window`, plus FreeLong's local attention branch (every video query
    against the text and that many frames)."""
    n, n13 = TEXT_TOKENS + FRAME_TOKENS * frames, TEXT_TOKENS + FRAME_TOKENS * NATIVE_FRAMES
    pairs = n * n
    if local_window is not None:
        pairs += FRAME_TOKENS * frames * (TEXT_TOKENS + FRAME_TOKENS * min(local_window, frames))
    return (forward_s - ATTENTION_S) * n / n13 + ATTENTION_S * pairs / (n13 * n13)


def forward_rows(sweep: Path, forward_s: float = FORWARD_S) -> list[dict]:
    """Per method of the sweep: windows, steps, counted and planned forwards, and the estimated H200 seconds."""
    rows = []
    for row in compare.method_rows(sweep):
        manifest = json.loads((sweep / row["job"] / "manifest.json").read_text())
        sampler, window = manifest["sampler"], int(manifest["window"])
        planned = float(manifest.get("transformer_forwards_planned", row["forwards"]))
        local = int(sampler.get("window") or NATIVE_FRAMES) if row["sampler"] == "freelong" else None
        per_forward = forward_seconds(window, local, forward_s)
        rows.append({**row, "latent_length": int(manifest["latent_length"]), "window": window,
                     "windows": len(manifest["windows"]), "steps": int(sampler["num_steps"]),
                     "planned": planned, "forward_s": round(per_forward, 3),
                     "estimate_s": round(planned * per_forward, 1)})
    return rows


def forwards_table(rows: list[dict]) -> str:
    """Markdown: the per-method forwards and the estimate, forwards and seconds relative to Gen-L-Video's."""
    base = next((r for r in rows if r["method"] == "gen-l-video-4x"), None)
    lines = ["| method | sampler | window (latent frames) | windows | steps | forwards | × Gen-L-Video | planned "
             "(fwd-equiv.) | est. s / forward | est. H200 sampling s | × Gen-L-Video |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f_ratio = f"{r['forwards'] / base['forwards']:.2f}" if base and base["forwards"] else "–"
        s_ratio = f"{r['estimate_s'] / base['estimate_s']:.2f}" if base and base["estimate_s"] else "–"
        lines.append(f"| {r['method']} | {r['sampler']} | {r['window']} | {r['windows']} | {r['steps']} | "
                     f"{r['forwards']} | {f_ratio} | {r['planned']:g} | {r['forward_s']:.3f} | {r['estimate_s']:.0f} | "
                     f"{s_ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--out DIR] [--json FILE] [--methods M,...] [OVERRIDES]")
    parser.add_argument("--out", type=Path, help="the tiny sweep's directory (must not exist; default: a temporary one)")
    parser.add_argument("--methods", default=",".join(compare.METHODS), help="comma-separated experiments")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--forward-s", type=float, default=FORWARD_S,
                        help=f"H200 seconds of one 13-frame forward (default {FORWARD_S}: compiled, FlashAttention-3; "
                             f"eager measured 0.291)")
    args, overrides = parser.parse_known_args(argv)
    if not args.forward_s > ATTENTION_S:
        parser.error(f"--forward-s={args.forward_s} must exceed the attention's own {ATTENTION_S:.3f} s")
    check_geometry()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = args.out or Path(tmp) / "sweep"
        command = [sys.executable, str(REPO / "scripts" / "compare.py"), "--no-eval", "--out", str(sweep),
                   "--methods", args.methods, "backbone=tiny", "backbone.height=16", "backbone.width=16",
                   "prompt=a red fox runs through snow", "seed=0", *overrides]
        status = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
        if status != 0:
            sys.exit(f"compare_forwards: the tiny sweep exited {status}; see its messages above")
        rows = forward_rows(sweep.resolve(), args.forward_s)
    table = forwards_table(rows)
    print(table, end="")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

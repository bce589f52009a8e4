"""scripts/bench.py runs on the CPU with the tiny backbone (no timing is asserted; CI exercises the code path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_tiny_slice_and_projection(tmp_path):
    out = tmp_path / "w1.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--backbone", "tiny", "--workload", "W1", "--steps", "2",
         "--no-markdown", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["windows"] == 10 and run["latent_length"] == 49 and run["steps_measured"] == 2
    assert run["step_forwards"] == [20, 20]  # 10 windows x 2 CFG branches per step
    assert run["decoded_frames"] == 193
    assert run["sampling_s"] > 0 and "50 steps" in run["sampling_formula"]
    assert result["forward_tflop"] > 0

"""scripts/compare.py: the methods comparison (issue 29) at CI size on the tiny backbone — every method of the
papers' tables on one story, seed and backbone, one eval report, and the cost table (no timing is asserted)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from cli_helpers import ONE_THREAD
from conftest import REPO


def test_compare_runs_every_method_and_writes_one_report(tmp_path):
    out = tmp_path / "compare"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare.py"), "--out", str(out), "backbone=tiny",
         "backbone.height=16", "backbone.width=16", "length_factor=null", "num_windows=2", "prompt=a red fox runs",
         "seed=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    sys.path.insert(0, str(REPO / "scripts"))
    from compare import METHODS

    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    # one row per method, grouped by its experiment, all from the same seed
    assert sorted(r["group"] for r in rows) == sorted(f"+experiment={m}" for m in METHODS)
    assert {r["seed"] for r in rows} == {"3"}
    assert (out / "report.html").is_file()
    table = (out / "compare.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    assert "| gen-l-video-4x | 1_gen-l-video | 200 | 1.00 |" in table  # 2 windows x 50 steps x 2 CFG branches


def test_unknown_method_and_an_existing_directory_are_refused(tmp_path):
    for args in (["--out", str(tmp_path / "new"), "--methods", "direct-4x,dit"], ["--out", str(tmp_path)]):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *args, "backbone=tiny"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert ("unknown method dit" in proc.stderr) or ("exists; give a new --out" in proc.stderr)
    assert not (tmp_path / "new").exists()

"""An interrupted sweep says which jobs never ran (issue 28 item 2: done / failed / skipped): sweep.json is written
when the sweep starts, with every job not run yet, and again when a job is interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli_helpers import ONE_THREAD
from test_no_data_loss import DRIVER, SMALL

# the job with weights_seed=1 is stopped as by Ctrl-C while it loads
INTERRUPT = DRIVER.replace('raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")',
                           "raise KeyboardInterrupt")


def test_an_interrupted_sweep_lists_the_jobs_not_run(tmp_path):
    assert INTERRUPT != DRIVER
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    proc = subprocess.run([sys.executable, "-c", INTERRUPT, "generate", "-m", *SMALL, "backbone.weights_seed=0,1,0",
                           f"hydra.sweep.dir={sweep}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((sweep / "sweep.json").read_text())
    assert (summary["planned"], summary["done"], summary["failed"], summary["not_run"]) == (3, [0], [1], [2])
    assert summary["jobs"][1]["status"] == "interrupted"

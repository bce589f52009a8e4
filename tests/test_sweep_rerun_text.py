"""`longgen generate --rerun-failed` runs a failed job with exactly the text it was given (issue 28 item 2): a
prompt holding `${…}` and a comma, in a sweep directory with a space, is the same prompt on the re-run as in the
job that succeeded, and `.hydra/overrides.yaml` keeps the override as Hydra got it (the escape included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli_helpers import ONE_THREAD, run_cli
from test_no_data_loss import DRIVER, SMALL

PROMPT = "a cat, then a ${dog}"


def test_rerun_failed_keeps_a_prompt_with_an_interpolation_and_a_comma(tmp_path):
    sweep = tmp_path / "my sweep"
    small = [a for a in SMALL if not a.startswith("prompt=")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    proc = subprocess.run([sys.executable, "-c", DRIVER, "generate", "-m", *small, f"prompt={PROMPT}",
                           "backbone.weights_seed=1,0", f"hydra.sweep.dir={sweep}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["failed"] == [0]
    overrides = (sweep / "1_gen-l-video" / ".hydra" / "overrides.yaml").read_text()
    assert "\\${dog}" in overrides, overrides

    again = run_cli("generate", "--rerun-failed", str(sweep))
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    for job in ("0_gen-l-video", "1_gen-l-video"):
        assert json.loads((sweep / job / "story.json").read_text())["global"] == PROMPT, job
    assert json.loads((sweep / "sweep.json").read_text())["done"] == [0, 1]

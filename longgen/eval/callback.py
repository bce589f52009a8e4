"""Hydra callback: at the end of `longgen generate -m … eval=true`, the comparison report of the sweep.

Configured in conf/generate.yaml (`hydra.callbacks.eval_report`) for every generate command; it does nothing unless
`eval=true`. Each job has already written its eval.json (generate evaluates right after writing its video); this
reads them from the job directories of the sweep and writes report.csv, plots/ and report.html into the sweep
directory. A job that failed has no eval.json: the report and a warning name each job left out and why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("longgen")


class EvalReport(Callback):
    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # resolve ${now:…} here, once: the same value the launcher uses for the job directories
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("eval"):
            return
        from longgen.errors import UsageError
        from longgen.eval.report import left_out, load_results, write_report

        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        results = load_results(sweep_dir)
        left = left_out(sweep_dir, results)
        for line in left:
            log.warning("eval report: left out %s", line)
        if not results:
            log.warning("eval report: no evaluated job in %s; no report written", sweep_dir)
            return
        try:
            paths = write_report(results, sweep_dir, left=left)
        except UsageError as exc:
            log.error("eval report: %s", exc)
            return
        log.info("eval report of %d runs: %s", len(results), paths["html"])

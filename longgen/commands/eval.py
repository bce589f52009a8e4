"""`longgen eval PATH... [OVERRIDES]`: measure run directories, multirun directories or .mp4 files.

Order of work, so that bad input fails before any long computation:
1. settings and model options checked; every PATH resolved (missing path, not a video, empty directory: one line);
2. each video probed (ffmpeg decodes its first frame); model weights loaded when model metrics are asked for;
3. each video measured; its eval.json written atomically into its run directory (a bare .mp4: `<name>.eval.json`
   in this command's run directory);
4. the Rich table printed; with several videos, report.csv, plots/ and report.html written into `out=` — by
   default the multirun directory when one is given alone, else this command's run directory
   (outputs/eval/DATE/TIME).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from longgen.errors import UsageError, user_errors
from longgen.rundir import discard_if_unused, own_run_log
from longgen.eval.evaluate import (
    ModelMetrics,
    evaluate_target,
    to_json,
    write_json_atomic,
)
from longgen.eval.inputs import Target, probe_video, resolve
from longgen.eval.settings import Settings
from longgen.eval.table import print_table

log = logging.getLogger("longgen")


def _paths(cfg: DictConfig) -> list[str]:
    value = cfg.get("paths")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(p) for p in OmegaConf.to_container(value)]


def report_dir(cfg: DictConfig, run_dir: Path, collections: list[Path], targets: list[Target]) -> Path:
    if cfg.get("out") not in (None, ""):
        out = Path(str(cfg.out)).expanduser()
        if out.exists() and not out.is_dir():
            raise UsageError(f"out={cfg.out} is a file; give a directory for report.csv, report.html and plots/")
        return out
    if len(collections) == 1 and all(t.video.resolve().is_relative_to(collections[0].resolve()) for t in targets):
        return collections[0]
    return run_dir


def result_path(target: Target, run_dir: Path, taken: set[Path]) -> Path:
    if target.run_dir is not None:
        return target.run_dir / "eval.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    path, n = run_dir / f"{target.label}.eval.json", 1
    while path in taken:
        n += 1
        path = run_dir / f"{target.label}-{n}.eval.json"
    taken.add(path)
    return path


def measurable(targets: list[Target], unreadable: list[str]) -> list[Target]:
    """The targets whose video ffmpeg can read, checked before any is measured: one that cannot is one line, unless
    it was found in a directory of runs (a sweep), where it is left out and named (`unreadable`) as a failed job is,
    so one broken video does not cost the whole report."""
    kept = []
    for target in targets:
        try:
            probe_video(target.video)
            kept.append(target)
        except UsageError as exc:
            if not target.collected:
                raise
            unreadable.append(f"{target.label}: {exc}")
    if not kept:
        raise UsageError(f"no video could be measured: {'; '.join(unreadable)}")
    return kept


def run_eval(cfg: DictConfig, run_dir: Path) -> list[dict]:
    settings = Settings.from_config(cfg.settings)
    models = ModelMetrics(cfg.get("models"))
    targets, collections, unreadable = resolve(_paths(cfg))
    out = report_dir(cfg, run_dir, collections, targets)
    if len(targets) > 1:  # a report will be written: its options are checked before any video is measured
        from longgen.eval.report import embed_mode

        embed_mode(cfg.get("report", {}).get("embed_videos", "auto"))
    prompt = cfg.get("prompt")
    if models.explicit and "prompt_fidelity" in models.names and not prompt:
        bare = [t for t in targets if t.story is None]
        if bare:
            raise UsageError(f"prompt_fidelity needs the prompts of {bare[0].video}: evaluate its run directory "
                             f"(with story.json) or pass prompt=\"…\"")
    targets = measurable(targets, unreadable)
    models.load()

    results, taken = [], set()
    for i, target in enumerate(targets, 1):
        log.info("[%d/%d] %s", i, len(targets), target.video)
        result = to_json(evaluate_target(target, settings, models, prompt))
        path = result_path(target, run_dir, taken)
        write_json_atomic(result, path)
        log.info("wrote %s (%.1f s)", path, result["timings"]["total"])
        results.append(result)
    from longgen.eval.report import left_out, run_labels, write_report

    left = unreadable + [f"{folder}: {line}" if len(collections) > 1 else line
                         for folder in collections for line in left_out(folder, results)]
    for line in left:  # a table missing a method says so
        log.warning("left out: %s", line)
    if len(results) < 2:
        print_table(results)
    else:  # headed by experiment (or the overrides that set each run apart), as report.csv groups them
        print_table(results, run_labels(results))
        out.mkdir(parents=True, exist_ok=True)
        paths = write_report(results, out, cfg.get("report", {}).get("embed_videos", "auto"), left)
        log.info("wrote %s, %s and %s", paths["csv"], paths["html"], out / "plots")
    return results


@hydra.main(version_base="1.3", config_path="pkg://longgen.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    own_run_log(Path(hc.runtime.output_dir))  # its own output folder: logged from the first line
    with user_errors():
        try:
            run_eval(cfg, Path(hc.runtime.output_dir))
        except UsageError:  # an input error: the run directory Hydra made for it (log, .hydra/) goes too
            discard_if_unused(Path(hc.runtime.output_dir), hydra_subdir=True)
            raise

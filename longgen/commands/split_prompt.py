"""`longgen split-prompt SCENARIO num_prompts=N`: scenario text → structured prompt (SynCoS supplementary Fig. 8).

Runs the configured splitter (conf/splitter/: auto, llm, offline) — into N events, or with multi_shot=true into the
multi-shot form of N shots (longgen/run/shots.py) — prints the story as a Rich table on stdout,
and writes story.json into Hydra's run directory (and to `out=…` when given). Nothing is written when the split
fails. The story's `source` records which splitter and model produced it; the API key is never recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from longgen.errors import UsageError, user_errors
from longgen.rundir import check_writable_dir, discard_if_unused, own_run_log
from longgen.splitters.scenario import split_scenario_file
from longgen.story import Story

log = logging.getLogger("longgen")


def story_table(story: Story) -> Table:
    """Global prompt, then each local prompt's event (the text after the global prompt it repeats); for a
    multi-shot story its characters, environment and story, then each shot (✂ marks a cut)."""
    src = story.source or {}
    title = f"story from splitter={src.get('splitter', '?')}" + (f" ({src['model']})" if src.get("model") else "")
    table = Table(title=title, show_lines=True, expand=True)
    if story.multi_shot:
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("prompt")
        table.add_column("duration", justify="right", no_wrap=True)
        for cid, desc in (story.characters or {}).items():
            table.add_row(f"Character {escape(cid)}", escape(desc), "")
        for key in ("environment", "story"):
            if getattr(story, key):
                table.add_row(key, escape(getattr(story, key)), "")
        for i, shot in enumerate(story.shots):
            weight = story.durations[i] if story.durations else 1
            table.add_row(f"{'✂ ' if shot.cut else ''}shot {i + 1}", escape(shot.prompt), f"{weight:g}")
        return table
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("prompt")
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_row("global", escape(story.global_prompt), "")
    for i, prompt in enumerate(story.local_prompts):
        shown = escape(prompt)
        if story.global_prompt and prompt.startswith(story.global_prompt) and prompt != story.global_prompt:
            shown = "[dim]global +[/dim] " + escape(prompt[len(story.global_prompt):].strip())
        weight = story.durations[i] if story.durations else 1
        table.add_row(str(i + 1), shown, f"{weight:g}")
    return table


def run_split_prompt(cfg: DictConfig, out_dir: Path, choices: dict) -> Story:
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") not in (None, "") else None
    if out is not None and out.is_dir():
        raise UsageError(f"out={cfg.out} is a directory; give a file path such as out={out / 'story.json'}")
    if out is not None and (out.exists() or out.is_symlink()) and not cfg.get("overwrite", False):
        raise UsageError(f"out={cfg.out} exists: pass overwrite=true to replace it, or give another out= path")
    if out is not None:  # before the split: no LLM call is wasted on a story that cannot be saved there
        try:
            check_writable_dir(out.parent, "out")
        except UsageError:
            raise UsageError(f"out={cfg.out}: its folder {out.parent} cannot take a file (read-only, a system "
                             f"folder or under a file): give another out= path") from None
    story = split_scenario_file(cfg.splitter, choices.get("splitter"), cfg.scenario, cfg.num_prompts,
                                shots=bool(cfg.get("multi_shot", False)))
    story.save(out_dir / "story.json")
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            story.save(out)
        except OSError as exc:  # e.g. the disk filled meanwhile
            raise UsageError(f"out={cfg.out} could not be written ({exc.strerror or exc}); the story is saved in "
                             f"{out_dir / 'story.json'}") from None
    Console(soft_wrap=False).print(story_table(story))
    log.info("wrote %s%s", out_dir / "story.json", f" and {out}" if out is not None else "")
    return story


@hydra.main(version_base="1.3", config_path="pkg://longgen.conf", config_name="split_prompt")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    own_run_log(Path(hc.runtime.output_dir))  # its own output folder: logged from the first line
    with user_errors():
        try:
            run_split_prompt(cfg, Path(hc.runtime.output_dir), dict(hc.runtime.choices))
        except UsageError:  # an input error: the run directory Hydra made for it (log, .hydra/) goes too
            discard_if_unused(Path(hc.runtime.output_dir), hydra_subdir=True)
            raise

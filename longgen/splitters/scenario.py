"""Read a scenario file and split it with the configured splitter (shared by `split-prompt` and `generate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from longgen.build import build
from longgen.errors import UsageError
from longgen.splitters.base import MAX_SCENARIO_CHARS, check_num_prompts, check_scenario
from longgen.story import Story, read_limited

#: bytes read from a scenario file at most: room for MAX_SCENARIO_CHARS characters of up to 4 bytes each in UTF-8
#: plus line breaks and indentation; a larger file is refused before it is read
MAX_SCENARIO_BYTES = 96 << 10


def read_scenario(path: str | Path) -> str:
    p = Path(path).expanduser()
    text = read_limited(p, MAX_SCENARIO_BYTES, "scenario file",
                        f"a scenario describes one video in at most {MAX_SCENARIO_CHARS} characters; is this the right file?")
    if not text.strip():
        raise UsageError(f"scenario file {p} is empty: write the story of the video in it as plain text")
    return check_scenario(text)


def split_scenario_file(node: DictConfig, choice: str | None, path: Any, num_prompts: Any,
                        shots: bool = False) -> Story:
    """Check N and the splitter options, read the scenario, split it (into N shots of the multi-shot form with
    `shots`). The story records the scenario file."""
    if path in (None, ""):
        raise UsageError("pass scenario=path/to/scenario.txt (a text file with the story of the video)")
    n = check_num_prompts(num_prompts)
    splitter = build(node, "splitter", choice)
    text = read_scenario(path)
    story = splitter.split_shots(text, n) if shots else splitter.split(text, n)
    story.source = {**story.source, "scenario_file": str(path)}
    return story

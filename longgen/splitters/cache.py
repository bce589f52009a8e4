"""LLM stories on disk, so repeated runs and sweeps reuse one split instead of calling the model again.

Location: `$XDG_CACHE_HOME/longgen/stories/` (`~/.cache/longgen/stories/` when the variable is unset). Key: the
SHA-256 of the scenario text, the number of prompts, the model name, the instruction template text, the
temperature and the server's URL (without credentials), so a second server is asked itself instead of being
handed the first one's story. One JSON story file per key, written atomically. The API key is never part of a
cached file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from longgen.errors import UsageError
from longgen.story import Story

log = logging.getLogger(__name__)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    # the XDG spec says relative paths in the variable are invalid and must be ignored
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "longgen" / "stories"


def cache_key(scenario: str, num_prompts: int, model: str, template: str, temperature: float, server: str) -> str:
    payload = json.dumps(
        {"scenario": scenario, "num_prompts": num_prompts, "model": model, "template": template,
         "temperature": float(temperature), "server": server},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class StoryCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> Story | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return Story.load(path)
        except UsageError as exc:  # a damaged entry is a miss, not a failure
            log.warning("ignoring a damaged cache entry (%s)", exc)
            return None

    def save(self, key: str, story: Story) -> Path | None:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            story.save(path)
        except OSError as exc:
            log.warning("could not write the story cache %s: %s", path, exc.strerror or exc)
            return None
        return path

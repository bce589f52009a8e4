"""The default splitter: the LLM splitter when one is configured (an API key in the environment variable named by
`api_key_env`, or a `base_url` of a local server), otherwise the offline rule-based splitter with a one-line
notice. Takes the LLM splitter's options, so `splitter.model=…` works with either choice."""

from __future__ import annotations

import logging
import os

from longgen.splitters.llm import LLMSplitter
from longgen.splitters.offline import OfflineSplitter
from longgen.story import Story

log = logging.getLogger(__name__)


class AutoSplitter(LLMSplitter):
    name = "auto"

    def uses_llm(self) -> bool:
        return bool(os.environ.get(self.api_key_env, "").strip() or self.base_url)

    def split(self, scenario: str, num_prompts: int) -> Story:
        return self._either("split", "splitter is used", scenario, num_prompts)

    def split_shots(self, scenario: str, num_prompts: int) -> Story:
        return self._either("split_shots", "splitter writes the shots", scenario, num_prompts)

    def _either(self, method: str, offline_does: str, scenario: str, num_prompts: int) -> Story:
        """`method` of the LLM splitter when a key or server is configured, else of the offline splitter (logged as
        "the offline rule-based <offline_does>")."""
        if self.uses_llm():
            story = getattr(super(), method)(scenario, num_prompts)
        else:
            log.info(
                "splitter=auto: no $%s and no splitter.base_url, so the offline rule-based %s (rough); set the key "
                "or pass splitter=llm splitter.base_url=… for an LLM split", self.api_key_env, offline_does,
            )
            story = getattr(OfflineSplitter(), method)(scenario, num_prompts)
        story.source = {**story.source, "selected_by": "auto"}
        return story

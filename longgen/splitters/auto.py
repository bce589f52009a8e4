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
        if self.uses_llm():
            story = super().split(scenario, num_prompts)
        else:
            log.info(
                "splitter=auto: no $%s and no splitter.base_url, so the offline rule-based splitter is used (rough); "
                "set the key or pass splitter=llm splitter.base_url=… for an LLM split", self.api_key_env,
            )
            story = OfflineSplitter().split(scenario, num_prompts)
        story.source = {**story.source, "selected_by": "auto"}
        return story

    def split_shots(self, scenario: str, num_prompts: int) -> Story:
        if self.uses_llm():
            story = super().split_shots(scenario, num_prompts)
        else:
            log.info(
                "splitter=auto: no $%s and no splitter.base_url, so the offline rule-based splitter writes the shots "
                "(rough); set the key or pass splitter=llm splitter.base_url=… for an LLM split", self.api_key_env,
            )
            story = OfflineSplitter().split_shots(scenario, num_prompts)
        story.source = {**story.source, "selected_by": "auto"}
        return story

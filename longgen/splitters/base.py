"""What every splitter provides: `split(scenario, num_prompts) -> Story` with exactly `num_prompts` local prompts,
each containing the global prompt, `split_shots(scenario, num_prompts)` for the multi-shot form (characters,
environment, story and exactly `num_prompts` shots; longgen/run/shots.py samples it), and `describe()` for provenance
(recorded as the story's `source`)."""

from __future__ import annotations

import abc
import unicodedata
from typing import Any

from longgen.errors import UsageError
from longgen.story import Story, joined_lines

#: Upper bound on local prompts per story; SynCoS used 2 to 4 (supplementary B), more is allowed but bounded so a
#: typo (num_prompts=40) fails at once.
MAX_PROMPTS = 16
#: Upper bound on a scenario's length (after runs of whitespace become one space): a scenario describes one video,
#: a few sentences to a page; the offline splitter takes about a second at this length in the worst case measured
#: (thousands of one-verb sentences) and an LLM's context holds it easily.
MAX_SCENARIO_CHARS = 20_000


def check_num_prompts(num_prompts: Any) -> int:
    if num_prompts is None:
        raise UsageError("pass num_prompts=N: how many local prompts (events) to split the scenario into")
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or not 1 <= num_prompts <= MAX_PROMPTS:
        raise UsageError(f"num_prompts={num_prompts!r} must be a whole number from 1 to {MAX_PROMPTS}")
    return num_prompts


def check_scenario(scenario: Any) -> str:
    if not isinstance(scenario, str) or not scenario.strip():
        raise UsageError("the scenario is empty: write the whole story of the video as text (one or more sentences)")
    text = joined_lines(scenario)
    if len(text) > MAX_SCENARIO_CHARS:
        raise UsageError(
            f"the scenario is {len(text)} characters long, over the limit of {MAX_SCENARIO_CHARS}: a scenario "
            f"describes one video (a few sentences to a page); shorten it"
        )
    if not any(unicodedata.category(char)[0] in "LNS" for char in text):  # letters, digits, symbols (emoji)
        raise UsageError(f"the scenario {text[:20]!r} holds no words, only punctuation: write what happens in the video")
    return text


class Splitter(abc.ABC):
    """Scenario text + number of events -> Story."""

    name: str = "splitter"

    @abc.abstractmethod
    def split(self, scenario: str, num_prompts: int) -> Story:
        """A valid story with exactly `num_prompts` local prompts for `scenario`."""

    def split_shots(self, scenario: str, num_prompts: int) -> Story:
        """A valid multi-shot story (LCT form: characters, environment, story, shots) with exactly `num_prompts`
        shots for `scenario`."""
        raise UsageError(f"splitter={self.name} cannot write multi-shot stories: use splitter=llm or splitter=offline")

    def describe(self) -> dict[str, Any]:
        return {"splitter": self.name}

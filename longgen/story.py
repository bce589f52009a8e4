"""The structured prompt (SynCoS §3.3 and supplementary Fig. 8): one global prompt for what every window shares
(subject, appearance, style, setting) and N local prompts, one event each, every local prompt containing the global
description. A story file is JSON (or YAML) with `global`, `local`, and optional `durations` (relative length of
each local prompt's segment, equal by default), `scenario` and `source`.

Windows get the local prompt of the segment that holds their centre (`prompt_index_at`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longgen.errors import UsageError


@dataclass
class Story:
    global_prompt: str
    local_prompts: list[str]
    durations: list[float] | None = None
    scenario: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if not isinstance(self.global_prompt, str):
            raise UsageError("story: `global` must be a string")
        if not isinstance(self.local_prompts, list) or not self.local_prompts:
            raise UsageError("story: `local` must be a non-empty list of prompts (one per event)")
        for i, p in enumerate(self.local_prompts, 1):
            if not isinstance(p, str) or not p.strip():
                raise UsageError(f"story: local prompt {i} is empty; every event needs a prompt")
        if self.durations is not None:
            if not isinstance(self.durations, list) or len(self.durations) != len(self.local_prompts):
                raise UsageError(
                    f"story: `durations` needs one value per local prompt ({len(self.local_prompts)}), "
                    f"got {self.durations!r}"
                )
            for d in self.durations:
                if isinstance(d, bool) or not isinstance(d, (int, float)) or not d > 0:
                    raise UsageError(f"story: every duration must be a positive number, got {d!r}")

    # ------------------------------------------------------------------ segments
    def segment_bounds(self, length: float) -> list[float]:
        """Right edge of each local prompt's segment over [0, length)."""
        weights = self.durations or [1.0] * len(self.local_prompts)
        total = float(sum(weights))
        edges, acc = [], 0.0
        for w in weights:
            acc += w
            edges.append(length * acc / total)
        edges[-1] = float(length)
        return edges

    def prompt_index_at(self, position: float, length: float) -> int:
        """Index of the local prompt whose segment holds `position` (latent-frame coordinate in [0, length])."""
        for i, edge in enumerate(self.segment_bounds(length)):
            if position < edge:
                return i
        return len(self.local_prompts) - 1

    # ------------------------------------------------------------------ ablation
    def without_global(self) -> tuple["Story", int]:
        """The story with the global description removed from every local prompt that contains it (SynCoS Table 2,
        "w/o structured prompt"), and how many local prompts changed. A local prompt that is nothing but the global
        description (e.g. a single `prompt=`) is kept as it is, since removing it would leave no prompt."""
        glob = self.global_prompt.strip()
        if not glob:
            return self, 0
        locals_, changed = [], 0
        for prompt in self.local_prompts:
            rest = prompt.replace(glob, "", 1).strip().lstrip(" ,;:.-").strip() if glob in prompt else ""
            if rest:
                locals_.append(rest)
                changed += 1
            else:
                locals_.append(prompt)
        story = Story(self.global_prompt, locals_, self.durations, self.scenario, dict(self.source))
        return story, changed

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"global": self.global_prompt, "local": list(self.local_prompts)}
        if self.durations is not None:
            d["durations"] = list(self.durations)
        if self.scenario is not None:
            d["scenario"] = self.scenario
        if self.source:
            d["source"] = dict(self.source)
        return d

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def from_dict(cls, data: Any, where: str = "story") -> "Story":
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected an object with `global` and `local`, got {type(data).__name__}")
        if "local" not in data:
            raise UsageError(f"{where}: missing `local` (the list of local prompts, one per event)")
        unknown = set(data) - {"global", "local", "durations", "scenario", "source"}
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: global, local, durations, scenario, source")
        source = data.get("source") or {}
        if isinstance(source, str):
            source = {"splitter": source}
        try:
            return cls(
                global_prompt=data.get("global", "") or "",
                local_prompts=data["local"],
                durations=data.get("durations"),
                scenario=data.get("scenario"),
                source=source,
            )
        except UsageError as exc:
            raise UsageError(f"{where}: {str(exc).removeprefix('story: ')}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Story":
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read story file {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            first = str(exc).splitlines()[0]
            raise UsageError(f"story file {path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {first}") from None
        return cls.from_dict(data, where=f"story file {path}")

    @classmethod
    def single(cls, prompt: str) -> "Story":
        """One prompt for the whole video."""
        if not prompt or not prompt.strip():
            raise UsageError("prompt is empty: pass prompt=\"a description of the video\"")
        return cls(global_prompt=prompt, local_prompts=[prompt], source={"splitter": "none"})

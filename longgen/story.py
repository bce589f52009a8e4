"""The structured prompt (SynCoS §3.3 and supplementary Fig. 8): one global prompt for what every window shares
(subject, appearance, style, setting) and N local prompts, one event each, every local prompt containing the global
description. A story file is JSON (or YAML) with `global`, `local`, and optional `durations` (relative length of
each local prompt's segment, equal by default), `scenario` and `source`.

Windows get the local prompt of the segment that holds their centre (`prompt_index_at`).

An event may carry a key image for image-to-video backbones: a local prompt written {"prompt": "...", "image":
"path.png"} (a relative path is read from the story file's folder; it is kept absolute in the run's story.json).
The first window of that event is conditioned on the image (longgen/run/images.py).

A second, multi-shot form follows LCT (Guo et al. 2025, §3.2.1): the global prompt is built as
"[Characters] [Environment] [Story]" with each character written "Character ID: description", and every shot
has its own prompt that names characters as "Character ID"; a shot that starts after a hard cut carries the cut
marker ("[SHOT CUT]" in LCT's data). In a file:

    {"characters": {"1": "a tall woman in a green raincoat"}, "environment": "a rainy harbour at dusk",
     "story": "she waits for a ferry", "shots": ["Character 1 looks at the sea.",
     "[SHOT CUT] Close-up: Character 1 smiles."], "durations": [1, 1]}

(a shot may also be written {"prompt": "...", "cut": true}). Such stories are validated here and sampled by
longgen/run/shots.py (each run of shots between cuts is its own segment of the video).

`check_text_limit` compares prompts with a text encoder's token limit before (estimated) and after (exact) the
tokenizer is available, reporting every over-long prompt with its length. `Story.check_events_fit` refuses a
window plan that would leave a local prompt without any window (its event would silently vanish) and says how
many windows are needed.

Limits, so that a wrong file fails in a moment with one short line: a story file of at most MAX_STORY_BYTES, at
most MAX_EVENTS local prompts, durations finite and at most MAX_DURATION, a prompt file of at most
MAX_PROMPT_FILE_BYTES; values quoted in messages are cut to a few dozen characters.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from longgen.errors import UsageError

#: LCT's mark before a shot that begins with a hard cut (LCT §3.2.1).
CUT_MARKER = "[SHOT CUT]"
#: a reference to a character in a shot prompt, "Character ID" (LCT §3.2.1); group 1 is the id
CHARACTER_REF = re.compile(r"\bCharacter\s+([A-Za-z0-9_-]+)")
_CHARACTER_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_SIMPLE_KEYS = ("global", "local", "durations", "scenario", "source")
_SHOT_KEYS = ("characters", "environment", "story", "shots", "durations", "scenario", "source")

#: a story of MAX_EVENTS prompts of ~1000 characters (the T5 limit of 226 tokens is well under that) fits
MAX_STORY_BYTES = 1 << 20
#: more events than any video longgen can make has windows for (each event needs at least one window)
MAX_EVENTS = 1000
#: durations are relative weights; beyond this ratio to the default 1 a segment is either everything or nothing
MAX_DURATION = 1e6
#: a prompt is at most a few hundred words (CogVideoX's text encoder reads 226 tokens)
MAX_PROMPT_FILE_BYTES = 64 << 10
#: the longest video check_events_fit looks at when it works out how many windows a story needs
MAX_WINDOWS_SEARCHED = 1 << 16


_ANY_CUT_MARKER = re.compile(re.escape(CUT_MARKER), flags=re.I)


def without_cut_markers(text: str) -> str:
    """`text` as the text encoder gets it: every "[SHOT CUT]" marker (a cut is told by the shot plan, never by the
    prompt; a stray one in a prompt or mid-shot would be read as words) removed and the spaces tidied."""
    return " ".join(_ANY_CUT_MARKER.sub(" ", text).split()) if CUT_MARKER.casefold() in text.casefold() else text


def cut(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, for user data in an error line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters."""
    return cut(repr(value), limit)


def _listed(items: Sequence[Any], limit: int = 5) -> str:
    """'a, b, c' for a few items, 'a, b, c, d, e and 95 more' for many."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def read_limited(path: Path, limit: int, what: str, fix: str) -> str:
    """The UTF-8 text of `path`, refusing (before reading it all) a file larger than `limit` bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        try:
            size = f"{path.stat().st_size / 1e6:.1f} MB"
        except OSError:
            size = "too large"
        raise UsageError(f"{what} {path} is {size}, over the limit of {limit // 1024} KiB; {fix}")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (some Windows editors write one) is not text
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {what} {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass
class Shot:
    """One shot of a multi-shot story: its prompt (referring to characters as "Character ID") and whether it
    starts with a hard cut."""

    prompt: str
    cut: bool = False

    @classmethod
    def parse(cls, item: Any, index: int) -> "Shot":
        if isinstance(item, str):
            text = item.strip()
            cut = text.upper().startswith(CUT_MARKER)
            return cls(prompt=text[len(CUT_MARKER):].strip() if cut else text, cut=cut)
        if isinstance(item, dict):
            unknown = set(item) - {"prompt", "cut"}
            if unknown:
                raise UsageError(f"story: shot {index} has unknown key(s) {_listed(sorted(cut(str(k), 30) for k in unknown))}; allowed: prompt, cut")
            cut = item.get("cut", False)
            if not isinstance(cut, bool):
                raise UsageError(f"story: shot {index}: `cut` must be true or false, got {brief(cut)}")
            prompt = item.get("prompt")
            if not isinstance(prompt, str):
                raise UsageError(f"story: shot {index} needs a `prompt` string")
            return cls(prompt=prompt.strip(), cut=cut)
        raise UsageError(f"story: shot {index} must be a string or an object with `prompt` and `cut`, got {type(item).__name__}")


@dataclass
class Story:
    global_prompt: str
    local_prompts: list[str]
    durations: list[float] | None = None
    scenario: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    # multi-shot form (LCT §3.2.1); `shots` set means this form, and then `local_prompts` is empty
    characters: dict[str, str] | None = None
    environment: str | None = None
    story: str | None = None
    shots: list[Shot] | None = None
    #: key image path of each local prompt's event (None: no image); None when no event has one
    images: list[str | None] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def multi_shot(self) -> bool:
        return self.shots is not None

    @property
    def num_events(self) -> int:
        """Number of segments: local prompts, or shots in the multi-shot form."""
        return len(self.shots) if self.shots is not None else len(self.local_prompts)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if self.shots is not None:
            self._validate_shots()
        else:
            if not isinstance(self.global_prompt, str):
                raise UsageError(f"story: `global` must be a string, got {_kind(self.global_prompt)}")
            if not isinstance(self.local_prompts, list) or not self.local_prompts:
                raise UsageError("story: `local` must be a non-empty list of prompts (one per event)")
            for i, p in enumerate(self.local_prompts, 1):
                if not isinstance(p, str):
                    raise UsageError(f"story: local prompt {i} is {_kind(p)}, not text; write the event as a quoted string")
                if not p.strip():
                    raise UsageError(f"story: local prompt {i} is empty; every event needs a prompt")
        what = "shot" if self.shots is not None else "local prompt"
        if self.num_events > MAX_EVENTS:
            raise UsageError(f"story: {self.num_events} {what}s is more than the {MAX_EVENTS} a story may hold (each needs at least one window of video); merge events")
        if self.durations is not None:
            if not isinstance(self.durations, list) or len(self.durations) != self.num_events:
                count = f"{len(self.durations)} values" if isinstance(self.durations, list) else brief(self.durations)
                raise UsageError(f"story: `durations` needs one value per {what} ({self.num_events}), got {count}")
            for i, d in enumerate(self.durations, 1):
                if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or not 0 < d <= MAX_DURATION:
                    raise UsageError(
                        f"story: duration {i} is {brief(d)}; every duration must be a finite positive number of at most "
                        f"{MAX_DURATION:g} (durations are relative: [1, 2] makes the second event twice as long)"
                    )

    def _validate_shots(self) -> None:
        if self.local_prompts:
            raise UsageError("story: give either `local` (single-shot story) or `shots` (multi-shot story), not both")
        if not isinstance(self.shots, list) or not self.shots:
            raise UsageError("story: `shots` must be a non-empty list of shot prompts")
        chars = self.characters
        if chars is None:
            chars = self.characters = {}
        if not isinstance(chars, dict):
            raise UsageError("story: `characters` must map a character id to its description, e.g. {\"1\": \"a tall woman ...\"}")
        for cid, desc in chars.items():
            if not _CHARACTER_ID.match(cid):
                raise UsageError(f"story: character id {brief(cid, 40)} must be letters, digits, '-' or '_' (it is written \"Character ID\" in shots)")
            if not isinstance(desc, str) or not desc.strip():
                raise UsageError(f"story: character {cut(cid, 40)} has an empty description")
        for key in ("environment", "story"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UsageError(f"story: `{key}` must be a non-empty string when given")
        for i, shot in enumerate(self.shots, 1):
            if not shot.prompt:
                raise UsageError(f"story: shot {i} is empty; every shot needs a prompt")
            missing = sorted({m for m in CHARACTER_REF.findall(shot.prompt) if m not in chars})
            if missing:
                known = _listed(list(chars)) or "none"
                raise UsageError(
                    f"story: shot {i} refers to Character {_listed(missing)}, which `characters` does not define (defined: {known})"
                )
        if not self.global_prompt:
            self.global_prompt = self.compose_global()

    def compose_global(self) -> str:
        """LCT's global prompt, "[Characters] [Environment] [Story]" (LCT §3.2.1)."""
        parts = [f"Character {cid}: {_sentence(desc)}" for cid, desc in (self.characters or {}).items()]
        parts += [_sentence(x) for x in (self.environment, self.story) if x]
        return " ".join(parts)

    def shot_prompt(self, index: int) -> str:
        """Shot `index`'s prompt with its cut marker, as LCT writes it."""
        shot = self.shots[index]
        return f"{CUT_MARKER} {shot.prompt}" if shot.cut else shot.prompt

    # ------------------------------------------------------------------ segments
    def segment_bounds(self, length: float) -> list[float]:
        """Right edge of each local prompt's segment over [0, length)."""
        weights = self.durations or [1.0] * self.num_events
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
        return self.num_events - 1

    def events_missed(self, centres: Sequence[float], length: float) -> list[int]:
        """Indices of the events whose segment holds none of the window `centres` (same rule as prompt_index_at)."""
        edges = self.segment_bounds(length)
        hit = {min(bisect.bisect_right(edges, c), self.num_events - 1) for c in centres}
        return [i for i in range(self.num_events) if i not in hit]

    def check_events_fit(self, plan: Any, plan_for: Callable[[int], Any] | None = None) -> None:
        """Refuse a window plan (`plan.length`, `plan.centres()`, `plan.count`) that gives some event no window, so
        that event would silently never be shown. `plan_for(n)` builds the plan of a video of n windows; with it the
        message names the num_windows that fits (the smallest found by doubling and bisection)."""
        missed = self.events_missed(plan.centres(), plan.length)
        if not missed:
            return
        what = "shot" if self.multi_shot else "local prompt"
        head = (
            f"the story has {self.num_events} {what}s but the video's {plan.count} window(s) take only "
            f"{self.num_events - len(missed)} of them (a window takes the {what} whose segment holds its centre), so "
            f"{what}{'s' if len(missed) > 1 else ''} {_listed([i + 1 for i in missed])} would never be shown"
        )
        uneven = ", longer short `durations`" if self.durations and len(set(self.durations)) > 1 else ""
        need = self._windows_needed(plan_for, plan.count) if plan_for is not None else None
        if need is None:
            raise UsageError(
                f"{head}; no video of up to {MAX_WINDOWS_SEARCHED} windows of this sampler fixes that: use a sampler "
                f"with overlapping windows (e.g. sampler=syncos){uneven} or fewer {what}s"
            )
        raise UsageError(f"{head}; pass num_windows={need} (a video long enough to give every {what} a window){uneven} or use fewer {what}s")

    def _windows_needed(self, plan_for: Callable[[int], Any], have: int) -> int | None:
        def fits(n: int) -> bool:
            p = plan_for(n)
            return not self.events_missed(p.centres(), p.length)

        low, high = have, max(have + 1, self.num_events)
        while not fits(high):
            if high >= MAX_WINDOWS_SEARCHED:
                return None
            low, high = high, min(2 * high, MAX_WINDOWS_SEARCHED)
        while high - low > 1:  # `high` always fits, so the answer is right even where fitting is not monotone
            mid = (low + high) // 2
            low, high = (low, mid) if fits(mid) else (mid, high)
        return high

    # ------------------------------------------------------------------ the global description
    def locals_missing_global(self) -> list[int]:
        """Indices (0-based) of the local prompts that do not contain the global prompt (compared with case, runs of
        whitespace and trailing full stops ignored, as the LLM splitter checks its answers). Windows are conditioned
        on local prompts only, so for these the global description (SynCoS §3.3: the shared subject, look and
        setting) does not reach them (except through GLC's global path). Empty for a story without a global prompt or in
        the multi-shot form."""
        glob = _normal(self.global_prompt or "")
        if not glob or self.shots is not None:
            return []
        return [i for i, prompt in enumerate(self.local_prompts) if glob not in _normal(prompt)]

    def missing_global_warning(self) -> str | None:
        """One line for the log when some local prompts lack the global prompt (`locals_missing_global`), else None.
        A warning, not an error: a hand-written story may paraphrase the description on purpose."""
        missing = self.locals_missing_global()
        if not missing:
            return None
        which = ", ".join(str(i + 1) for i in missing)
        return (
            f"local prompt{'s' if len(missing) > 1 else ''} {which} of {len(self.local_prompts)} "
            f"do{'es' if len(missing) == 1 else ''} not contain the global prompt; windows are conditioned on their "
            f"local prompt (only GLC's global path sees the global one), so the shared description does not reach "
            f"them: start every local prompt with the global prompt (SynCoS structured prompt) or write the story "
            f"with `longgen split-prompt`"
        )

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
        story = Story(self.global_prompt, locals_, self.durations, self.scenario, dict(self.source),
                      images=self.images)
        return story, changed

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        if self.shots is not None:
            d: dict[str, Any] = {"characters": dict(self.characters or {})}
            if self.environment is not None:
                d["environment"] = self.environment
            if self.story is not None:
                d["story"] = self.story
            d["shots"] = [{"prompt": s.prompt, "cut": s.cut} for s in self.shots]
        else:
            d = {"global": self.global_prompt, "local": list(self.local_prompts)}
            if self.images is not None:  # events with a key image as objects
                d["local"] = [p if img is None else {"prompt": p, "image": img}
                              for p, img in zip(self.local_prompts, self.images)]
        if self.durations is not None:
            d["durations"] = list(self.durations)
        if self.scenario is not None:
            d["scenario"] = self.scenario
        if self.source:
            d["source"] = dict(self.source)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        """Write the story as JSON atomically (a unique temporary file in the same folder, then a rename)."""
        from longgen.rundir import write_text

        write_text(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: Any, where: str = "story") -> "Story":
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected an object with `global` and `local`, got {type(data).__name__}")
        try:
            if "shots" in data:
                return cls._from_shots_dict(data)
            if "local" not in data:
                raise UsageError("story: missing `local` (the list of local prompts, one per event)")
            unknown = set(data) - set(_SIMPLE_KEYS)
            if unknown:
                hint = " (multi-shot stories need `shots`)" if unknown & {"characters", "environment", "story"} else ""
                raise UsageError(
                    f"story: unknown key(s) {_listed(sorted(cut(str(k), 30) for k in unknown))}; allowed: {', '.join(_SIMPLE_KEYS)}{hint}"
                )
            local, images = _event_images(data["local"])
            return cls(
                global_prompt=data.get("global", "") or "",
                local_prompts=local,
                images=images,
                durations=data.get("durations"),
                scenario=data.get("scenario"),
                source=_source(data.get("source")),
            )
        except UsageError as exc:
            raise UsageError(f"{where}: {str(exc).removeprefix('story: ')}") from None

    @classmethod
    def _from_shots_dict(cls, data: dict) -> "Story":
        unknown = set(data) - set(_SHOT_KEYS)
        if unknown:
            raise UsageError(
                f"story: unknown key(s) {_listed(sorted(cut(str(k), 30) for k in unknown))} in a multi-shot story; allowed: {', '.join(_SHOT_KEYS)}"
            )
        shots = data["shots"]
        if not isinstance(shots, list) or not shots:
            raise UsageError("story: `shots` must be a non-empty list of shot prompts")
        chars = data.get("characters")
        if chars is not None and not isinstance(chars, dict):
            raise UsageError("story: `characters` must map a character id to its description, e.g. {\"1\": \"a tall woman ...\"}")
        return cls(
            global_prompt="",
            local_prompts=[],
            durations=data.get("durations"),
            scenario=data.get("scenario"),
            source=_source(data.get("source")),
            characters={str(k): v for k, v in (chars or {}).items()},
            environment=data.get("environment"),
            story=data.get("story"),
            shots=[Shot.parse(item, i) for i, item in enumerate(shots, 1)],
        )

    @classmethod
    def load(cls, path: str | Path) -> "Story":
        path = Path(path).expanduser()
        text = read_limited(path, MAX_STORY_BYTES, "story file",
                            f"a story holds a global prompt and at most {MAX_EVENTS} local prompts; is this the right file?")
        is_yaml = path.suffix.lower() in (".yaml", ".yml")
        try:
            if is_yaml:
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise UsageError(f"story file {path} is not valid {'YAML' if is_yaml else 'JSON'}: {first}") from None
        story = cls.from_dict(data, where=f"story file {path}")
        if story.images is not None:  # relative to the story file's folder, kept absolute from here on
            story.images = [None if img is None else str((path.parent / Path(img).expanduser()).resolve())
                            for img in story.images]
        return story

    @classmethod
    def from_prompt_file(cls, path: str | Path) -> "Story":
        """One prompt for the whole video, read from a text file (`prompt_file=`): no quoting on the command line.
        Lines are joined with single spaces."""
        path = Path(str(path)).expanduser()
        text = read_limited(path, MAX_PROMPT_FILE_BYTES, "prompt file",
                            "a prompt is a few sentences (the text encoder reads about 226 tokens); for a story use story= or scenario=")
        prompt = " ".join(text.split())
        if not prompt:
            raise UsageError(f"prompt file {path} is empty: write the description of the video in it")
        story = cls.single(prompt)
        story.source = {"splitter": "none", "prompt_file": str(path)}
        return story

    @classmethod
    def single(cls, prompt: str) -> "Story":
        """One prompt for the whole video."""
        if not prompt or not prompt.strip():
            raise UsageError("prompt is empty: pass prompt=\"a description of the video\"")
        return cls(global_prompt=prompt, local_prompts=[prompt], source={"splitter": "none"})


def _event_images(local: Any) -> tuple[Any, list[str | None] | None]:
    """Local prompts written {"prompt": ..., "image": ...} → (the prompts, each event's image path or None); plain
    prompts pass through (images None when no event has one)."""
    if not isinstance(local, list) or not any(isinstance(item, dict) for item in local):
        return local, None
    prompts, images = [], []
    for i, item in enumerate(local, 1):
        if not isinstance(item, dict):
            prompts.append(item)
            images.append(None)
            continue
        unknown = set(item) - {"prompt", "image"}
        if unknown:
            raise UsageError(f"story: event {i} has unknown key(s) {_listed(sorted(cut(str(k), 30) for k in unknown))}; "
                             f"an event object holds `prompt` and `image`")
        image = item.get("image")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise UsageError(f"story: event {i}'s `image` must be a path to an image file, got {brief(image)}")
        prompts.append(item.get("prompt"))
        images.append(image)
    return prompts, (images if any(img is not None for img in images) else None)


def _kind(value: Any) -> str:
    """How a wrong value reads in a message: 'a number (3)', 'null', 'a list'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({brief(value, 30)})"
    return f"a {'list' if isinstance(value, list) else 'object' if isinstance(value, dict) else type(value).__name__}"


def _source(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"splitter": value}
    if not isinstance(value, dict):
        raise UsageError(f"story: `source` must be an object (or a splitter name), got {type(value).__name__}")
    return dict(value)


def _normal(text: str) -> str:
    """Text compared for containment: whitespace runs collapsed, case folded, trailing full stops dropped."""
    return " ".join(text.split()).casefold().rstrip(" .")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?" else text + "."


# ---------------------------------------------------------------------- text-encoder limit
def check_text_limit(
    prompts: Sequence[tuple[str, str]],
    count_tokens: Callable[[str], tuple[int, bool]],
    limit: int,
    model: str,
    strict: bool = True,
) -> list[str]:
    """Check `(label, text)` prompts against a text encoder that keeps `limit` tokens.

    `count_tokens(text)` returns `(count, exact)`. An exact count over the limit is an error. An estimate is only
    a guess, so before the tokenizer is loaded a prompt fails only when it is over the limit for certain: a
    SentencePiece tokenizer gives every whitespace-separated word at least one token, plus the end-of-text
    token; a prompt whose estimate alone is over the limit gets a warning. With `strict=False` (random-weight
    models whose stand-in encoder has no meaning to lose) everything is a warning.

    Raises one UsageError naming every failing prompt with its length; returns the warnings.
    """
    errors: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for label, text in prompts:
        if text in seen or not text:
            continue
        seen.add(text)
        count, exact = count_tokens(text)
        if exact:
            if count > limit:
                (errors if strict else warnings).append(f"{label} has {count} tokens")
            continue
        at_least = len(text.split()) + 1
        if at_least > limit:
            (errors if strict else warnings).append(f"{label} has at least {at_least} tokens (one per word)")
        elif count > limit:
            warnings.append(f"{label} has about {count} tokens (estimated before the tokenizer is loaded)")
    if errors:
        raise UsageError(
            f"{_joined(errors)}: over the {limit}-token text limit of {model}, which would silently cut the "
            f"end of the prompt; shorten {'it' if len(errors) == 1 else 'them'}"
        )
    if warnings:
        what = (
            "it is checked exactly once the tokenizer is loaded" if strict
            else f"the stand-in text encoder of this random-weight model uses only the first {limit}"
        )
        return [f"{_joined(warnings)}: over the {limit}-token text limit of {model}; {what}"]
    return []


def _joined(findings: list[str], limit: int = 5) -> str:
    """'a; b; c' for a few findings, the first `limit` and a count for many (one line, not a flood)."""
    shown = "; ".join(findings[:limit])
    return shown if len(findings) <= limit else f"{shown}; and {len(findings) - limit} more"

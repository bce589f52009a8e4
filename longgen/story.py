"""The structured prompt (SynCoS §3.3 and supplementary Fig. 8): one global prompt for what every window shares
(subject, appearance, style, setting) and N local prompts, one event each, every local prompt containing the global
description. A story file is JSON (or YAML) with `global`, `local`, and optional `durations` (relative length of
each local prompt's segment, equal by default), `scenario` and `source`.

Windows get the local prompt of the segment that holds their centre (`prompt_index_at`). Where that rule would
leave an event without a window although the video has as many windows as events, `Story.event_plan` moves the
segment edges just enough to give every event one (longgen.windows.assign_events). `longgen extend` plans the new
part's events the same way, from the join (longgen/run/extend.py).

Events on a timeline: a local prompt may be an object with its time in seconds, either `start` and `end` or
`duration` (one form for every event of a story, none for untimed stories):

    {"global": "a fox", "local": [{"prompt": "a fox sleeps", "start": 0, "end": 2},
                                  {"prompt": "a fox runs", "start": 2, "end": 6}]}

The events follow each other from 0 s without gap or overlap (in `longgen extend`, 0 s is the join: the first new
frame). They may end before the video (whose length is whole
windows): the last event then runs on to the video's end. A timeline longer than the video is refused with the
num_windows that fits. Times are converted to latent frames at the backbone's frame rate (longgen.windows.Clock).

An event may carry a key image for image-to-video backbones: an event object's `image` ({"prompt": "...",
"image": "path.png"}, with or without a time; a relative path is read from the story file's folder and kept
absolute in the run's story.json). The first window of that event is conditioned on the image
(longgen/run/images.py).

A second, multi-shot form follows LCT (Guo et al. 2025, §3.2.1): the global prompt is built as
"[Characters] [Environment] [Story]" with each character written "Character ID: description", and every shot
has its own prompt that names characters as "Character ID"; a shot that starts after a hard cut carries the cut
marker ("[SHOT CUT]" in LCT's data). In a file:

    {"characters": {"1": "a tall woman in a green raincoat"}, "environment": "a rainy harbour at dusk",
     "story": "she waits for a ferry", "shots": ["Character 1 looks at the sea.",
     "[SHOT CUT] Close-up: Character 1 smiles."], "durations": [1, 1]}

(a shot may also be written {"prompt": "...", "cut": true}). `characters` may also be written as LCT writes them:
a list of "Character 1: a tall woman ..." strings, or one string of such entries (on lines, or one after another as
in LCT's Fig. 2, "Character 1: ...; Character 2: ..."); both are read into the id → description map. Such stories are validated here and sampled by
longgen/run/shots.py (each run of shots between cuts is its own segment of the video).

`check_text_limit` compares prompts with a text encoder's token limit before (estimated) and after (exact) the
tokenizer is available, reporting every over-long prompt with its length. `Story.check_events_fit` refuses a
window plan with fewer windows than local prompts (an event would silently vanish) and says how many windows are
needed.

Limits, so that a wrong file fails in a moment with one short line: a story file of at most MAX_STORY_BYTES, at
most MAX_EVENTS local prompts, durations finite and at most MAX_DURATION, a prompt file of at most
MAX_PROMPT_FILE_BYTES; values quoted in messages are cut to a few dozen characters.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from longgen.errors import UsageError
from longgen.windows import Clock, EventPlan, WindowPlan, event_plan

#: LCT's mark before a shot that begins with a hard cut (LCT §3.2.1).
CUT_MARKER = "[SHOT CUT]"
#: a reference to a character in a shot prompt, "Character ID" (LCT §3.2.1), the keyword in any case; group 1 is
#: the id (`refers_to_character` says which matches are references rather than prose)
CHARACTER_REF = re.compile(r"\b(?i:character)\s+([A-Za-z0-9_-]+)")
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
#: an event's time in seconds is at most a day
MAX_SECONDS = 86_400.0
#: event times closer than this (seconds) are the same time (a timeline written with decimals meets exactly)
TIME_TOLERANCE = 1e-6
#: how a timed event may give its time: both keys of one form, nothing else
_TIME_FORMS = ({"start", "end"}, {"duration"})
#: "Character ID:" opening a character's description in LCT's literal form (bold markers of the paper allowed), the
#: keyword in any case (`_opens_entry` says which matches open an entry rather than sit in a description)
_CHARACTER_ENTRY = re.compile(r"(?:\*\*)?\b(?i:character)\s+([A-Za-z0-9_-]+)\s*(?:\*\*)?\s*:\s*(?:\*\*)?")
#: what may stand right before an entry written "character ID:" in another case than LCT's: the start of the text,
#: of a line, or of a sentence or ';'-separated item (spaces and bold markers aside)
_ENTRY_BOUNDARY = ("", "\n", ";", ".")


_ANY_CUT_MARKER = re.compile(re.escape(CUT_MARKER), flags=re.I)


def without_cut_markers(text: str) -> str:
    """`text` as the text encoder gets it: every "[SHOT CUT]" marker (a cut is told by the shot plan, never by the
    prompt; a stray one in a prompt or mid-shot would be read as words) removed and the spaces tidied."""
    return " ".join(_ANY_CUT_MARKER.sub(" ", text).split()) if CUT_MARKER.casefold() in text.casefold() else text


def cut(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, for user data in an error line; never inside what the screen shows as one
    character (a letter and its accents, an emoji sequence, a flag)."""
    if len(text) <= limit:
        return text
    end = limit - 1
    while end > 0 and _inside_cluster(text, end):
        end -= 1
    return text[:end] + "…"


def _inside_cluster(text: str, i: int) -> bool:
    """Whether a cut before `text[i]` falls inside one character on screen (an approximation of Unicode's grapheme
    clusters: combining marks, ZWJ sequences, variation selectors, skin tones, tag sequences, flag pairs)."""
    here, before = text[i], text[i - 1]
    if unicodedata.category(here) in ("Mn", "Me", "Mc") or here in "\u200d\ufe0e\ufe0f" or before == "\u200d":
        return True
    if "\U0001f3fb" <= here <= "\U0001f3ff" or "\U000e0020" <= here <= "\U000e007f":  # skin tone, tag
        return True
    flags = 0
    while i - flags > 0 and _regional(text[i - flags - 1]):
        flags += 1
    return _regional(here) and flags % 2 == 1  # the second half of a flag


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters."""
    return cut(repr(value), limit)


def _listed(items: Sequence[Any], limit: int = 5) -> str:
    """'a, b, c' for a few items, 'a, b, c, d, e and 95 more' for many."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def keys_once(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys each appear once: a key written twice (a `global` pasted below the first while
    editing) is an error, not silently the last one's value."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object; keep one")
        out[key] = value
    return out


def load_yaml_once(text: str) -> object:
    """yaml.safe_load, refusing a mapping key written twice (as `keys_once` for JSON)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ValueError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                     f"keep one")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


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
            is_cut = text.upper().startswith(CUT_MARKER)
            return cls(prompt=text[len(CUT_MARKER):].strip() if is_cut else text, cut=is_cut)
        if isinstance(item, dict):
            unknown = set(item) - {"prompt", "cut"}
            if unknown & {"start", "end", "duration"}:
                raise UsageError(f"story: shot {index} gives a time; shots take none: give the story relative "
                                 f"`durations` or `shots.windows=` (times in seconds apply to `local` events)")
            if unknown:
                raise UsageError(f"story: shot {index} has unknown key(s) {_listed(sorted(cut(str(k), 30) for k in unknown))}; allowed: prompt, cut")
            is_cut = item.get("cut", False)
            if not isinstance(is_cut, bool):
                raise UsageError(f"story: shot {index}: `cut` must be true or false, got {brief(is_cut)}")
            prompt = item.get("prompt")
            if not isinstance(prompt, str):
                raise UsageError(f"story: shot {index} needs a `prompt` string")
            return cls(prompt=prompt.strip(), cut=is_cut)
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
    # events on a timeline: each local prompt's time in seconds as given, {"start", "end"} or {"duration"}
    times: list[dict[str, float]] | None = None
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
        if self.times is not None:
            self._validate_times()

    def _validate_times(self) -> None:
        """Event times: one form for every event, numbers in range, events from 0 s one after another."""
        if self.shots is not None:
            raise UsageError("story: event times (`start`/`end`, `duration`) are for `local` prompts; shots take `durations`")
        if self.durations is not None:
            raise UsageError("story: give either `durations` (relative lengths) or event times (`start`/`end` or "
                             "`duration` in seconds), not both")
        if not isinstance(self.times, list) or len(self.times) != self.num_events:
            raise UsageError(f"story: event times need one entry per local prompt ({self.num_events})")
        forms = []
        for i, t in enumerate(self.times, 1):
            keys = set(t)
            if not keys:
                raise UsageError(f"story: local prompt {i} has no time but other events have one; give every event "
                                 f"`start`/`end` or `duration` seconds, or none of them")
            if keys not in _TIME_FORMS:
                fix = "give both `start` and `end`" if len(keys) == 1 else "give `start` and `end`, or `duration`, not both"
                raise UsageError(f"story: local prompt {i} gives `{'`, `'.join(sorted(keys))}`; {fix}")
            forms.append("duration" if keys == {"duration"} else "start/end")
            for key, value in t.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or not 0 <= value <= MAX_SECONDS or (key == "duration" and value == 0):
                    least = "more than 0" if key == "duration" else "at least 0"
                    raise UsageError(f"story: local prompt {i}'s `{key}` is {brief(value, 30)}; it must be a number of "
                                     f"seconds, {least} and at most {MAX_SECONDS:g}")
        if len(set(forms)) > 1:
            raise UsageError(f"story: local prompt {forms.index('duration') + 1} gives `duration` but local prompt "
                             f"{forms.index('start/end') + 1} gives `start`/`end`; use one form for every event")
        if forms[0] == "duration":
            return
        previous_end = 0.0
        for i, t in enumerate(self.times, 1):
            start, end = float(t["start"]), float(t["end"])
            if end <= start:
                raise UsageError(f"story: local prompt {i} ends at {end:g} s, not after its start at {start:g} s; "
                                 f"give it an `end` later than its `start`")
            if abs(start - previous_end) > TIME_TOLERANCE:
                after = "the video's start" if i == 1 else f"local prompt {i - 1}'s end"
                what = ("overlaps the event before" if start < previous_end else
                        f"leaves {start - previous_end:g} s without an event")
                raise UsageError(f"story: local prompt {i} starts at {start:g} s, which {what}; events follow each "
                                 f"other without gap or overlap: set its `start` to {previous_end:g} ({after})")
            previous_end = end

    @property
    def timeline(self) -> list[tuple[float, float]] | None:
        """(start, end) in seconds of every event of a timed story, else None."""
        if self.times is None:
            return None
        if set(self.times[0]) == {"duration"}:
            ends = list(itertools.accumulate(float(t["duration"]) for t in self.times))
            return list(zip([0.0, *ends[:-1]], ends))
        return [(float(t["start"]), float(t["end"])) for t in self.times]

    def _validate_shots(self) -> None:
        if self.local_prompts:
            raise UsageError("story: give either `local` (single-shot story) or `shots` (multi-shot story), not both")
        if not isinstance(self.shots, list) or not self.shots:
            raise UsageError("story: `shots` must be a non-empty list of shot prompts")
        chars = self.characters = parse_characters(self.characters)  # LCT's literal forms read into the map
        for cid, desc in chars.items():
            if not _CHARACTER_ID.match(cid):
                raise UsageError(f"story: character id {brief(cid, 40)} must be ASCII letters, digits, '-' or '_' (e.g. 1 or fox; it is written \"Character ID\" in shots, where Chinese text may follow it without a space: \"Character 1醒来\")")
            if not isinstance(desc, str) or not desc.strip():
                raise UsageError(f"story: character {cut(cid, 40)} has an empty description")
        for key in ("environment", "story"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UsageError(f"story: `{key}` must be a non-empty string when given")
        for i, shot in enumerate(self.shots, 1):
            if not shot.prompt:
                raise UsageError(f"story: shot {i} is empty; every shot needs a prompt")
            missing = sorted({m.group(1) for m in CHARACTER_REF.finditer(shot.prompt)
                              if refers_to_character(m, chars) and m.group(1) not in chars})
            if missing:
                known = _listed(list(chars)) or "none"
                raise UsageError(
                    f"story: shot {i} refers to Character {_listed(missing)}, which `characters` does not define (defined: {known})"
                )
        if not self.global_prompt:
            self.global_prompt = self.compose_global()

    def compose_global(self) -> str:
        """LCT's global prompt, "[Characters] [Environment] [Story]" (LCT §3.2.1)."""
        parts = [f"Character {cid}: {full_stop(desc)}" for cid, desc in (self.characters or {}).items()]
        parts += [full_stop(x) for x in (self.environment, self.story) if x]
        return " ".join(parts)

    def shot_prompt(self, index: int) -> str:
        """Shot `index`'s prompt with its cut marker, as LCT writes it."""
        shot = self.shots[index]
        return f"{CUT_MARKER} {shot.prompt}" if shot.cut else shot.prompt

    # ------------------------------------------------------------------ segments
    def segment_bounds(self, length: float) -> list[float]:
        """Right edge of each local prompt's segment over [0, length), in proportion to the durations (a timed
        story's time spans; see `event_edges` for the timeline in seconds)."""
        timeline = self.timeline
        weights = self.durations or ([e - s for s, e in timeline] if timeline else [1.0] * self.num_events)
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
        """Refuse a window plan (`plan.count`) with fewer windows than events: some event would silently never be
        shown (with at least as many windows, `event_plan` gives each event one). `plan_for(n)` builds the plan of a
        video of n windows; with it the message names the num_windows that fits (the smallest found by doubling and
        bisection)."""
        if plan.count >= self.num_events:
            return
        what = "shot" if self.multi_shot else "local prompt"
        head = (f"the story has {self.num_events} {what}s but the video has only {plan.count} window(s), and every "
                f"{what} needs a window of its own to be shown")
        need = self._windows_needed(lambda n: plan_for(n).count >= self.num_events, plan.count) if plan_for else None
        if need is None:
            raise UsageError(
                f"{head}; no video of up to {MAX_WINDOWS_SEARCHED} windows of this sampler fixes that: use a sampler "
                f"with overlapping windows (e.g. sampler=syncos) or fewer {what}s"
            )
        raise UsageError(f"{head}; pass num_windows={need} or use fewer {what}s")

    def _windows_needed(self, fits: Callable[[int], bool], have: int) -> int | None:
        """The least n > `have` with fits(n), searched by doubling then bisection (None beyond MAX_WINDOWS_SEARCHED)."""
        low, high = have, max(have + 1, self.num_events)
        while not fits(high):
            if high >= MAX_WINDOWS_SEARCHED:
                return None
            low, high = high, min(2 * high, MAX_WINDOWS_SEARCHED)
        while high - low > 1:  # `high` always fits, so the answer is right even where fitting is not monotone
            mid = (low + high) // 2
            low, high = (low, mid) if fits(mid) else (mid, high)
        return high

    def event_plan(self, plan: WindowPlan, clock: Clock, plan_for: Callable[[int], Any] | None = None) -> EventPlan:
        """Which event each window of `plan` shows: every event at least one window (refused with the num_windows
        that fits when the plan has fewer windows than events), segments by durations or by the timeline."""
        self.check_events_fit(plan, plan_for)
        return event_plan(plan, self.event_edges(plan.length, clock, plan_for))

    def event_edges(self, length: int, clock: Clock, plan_for: Callable[[int], Any] | None = None,
                    what: str = "the video") -> list[float]:
        """Right edge (latent position) of each event's segment before windows are assigned: `segment_bounds` for an
        untimed story; for a timed one each event's end at the backbone's frame rate, the last event running on to
        the video's end. A timeline longer than the video (`what` the message calls it; extend: the new part) is
        refused, naming the num_windows that holds it."""
        timeline = self.timeline
        if timeline is None:
            return self.segment_bounds(length)
        end, video = timeline[-1][1], clock.seconds(length)
        if end > video + TIME_TOLERANCE:
            frames = round(clock.frame_at(length))
            longer = self._windows_needed(self._holds(end, clock, plan_for), 1) if plan_for else None
            fix = f"pass num_windows={longer} or end" if longer else "end"
            raise UsageError(f"story: the events end at {end:g} s but {what} is {video:.2f} s ({frames} frames at "
                             f"{clock.fps:g} fps); {fix} the last event by {video:.2f} s")
        return [clock.latent_at(e) for _, e in timeline[:-1]] + [float(length)]

    def _holds(self, end: float, clock: Clock, plan_for: Callable[[int], Any]) -> Callable[[int], bool]:
        """Whether a video of n windows holds a timeline ending at `end` seconds: long enough, a window per event."""
        def holds(n: int) -> bool:
            plan = plan_for(n)
            return plan.count >= self.num_events and clock.seconds(plan.length) >= end - TIME_TOLERANCE

        return holds

    def timeline_note(self, length: int, clock: Clock, plan_for: Callable[[int], Any] | None = None,
                      what: str = "the video") -> str | None:
        """A line for the log when a timed story ends before the video (`what`; extend: the new part) does (its last
        event runs on), naming the shortest num_windows that still holds the timeline when that is shorter; None
        otherwise."""
        timeline = self.timeline
        video = clock.seconds(length)
        if timeline is None or timeline[-1][1] >= video - TIME_TOLERANCE:
            return None
        end = timeline[-1][1]
        note = (f"the events end at {end:g} s and {what} at {video:.2f} s: local prompt {self.num_events} runs on "
                f"to {what}'s end")
        if plan_for is not None:
            need = self._windows_needed(self._holds(end, clock, plan_for), 0)
            if need is not None and plan_for(need).length < length:
                note += (f" (num_windows={need} makes a {clock.seconds(plan_for(need).length):.2f} s "
                         f"{what.removeprefix('the ')})")
        return note

    # ------------------------------------------------------------------ the global description
    def locals_missing_global(self) -> list[int]:
        """Indices (0-based) of the local prompts that do not contain the global prompt (compared with case, runs of
        whitespace and trailing full stops ignored, as the LLM splitter checks its answers). Windows are conditioned
        on local prompts only, so for these the global description (SynCoS §3.3: the shared subject, look and
        setting) does not reach them (except through GLC's global path). Empty for a story without a global prompt or in
        the multi-shot form."""
        glob = comparable(self.global_prompt or "")
        if not glob or self.shots is not None:
            return []
        return [i for i, prompt in enumerate(self.local_prompts) if glob not in comparable(prompt)]

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
                      times=self.times, images=self.images)
        return story, changed

    def as_global_event(self) -> "Story":
        """The story as one event whose prompt is its global description (and whose key image, if any, is the first
        event's): what a sampler that shows one prompt over the whole video is given with
        `sampler.several_events=global`."""
        image = [self.images[0]] if self.images is not None and self.images[0] is not None else None
        return Story(self.global_prompt, [self.global_prompt], None, self.scenario, dict(self.source), images=image)

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
            d = {"global": self.global_prompt, "local": (list(self.local_prompts) if self.times is None else
                                                         [{"prompt": p, **t} for p, t in zip(self.local_prompts, self.times)])}
            if self.images is not None:  # events with a key image as objects
                d["local"] = [item if img is None else {**(item if isinstance(item, dict) else {"prompt": item}),
                                                        "image": img}
                              for item, img in zip(d["local"], self.images)]
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
            prompts, times = _timed_events(local)
            return cls(
                global_prompt=data.get("global", "") or "",
                local_prompts=prompts,
                images=images,
                durations=data.get("durations"),
                scenario=data.get("scenario"),
                source=_source(data.get("source")),
                times=times,
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
        chars = parse_characters(data.get("characters"))
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
            data = load_yaml_once(text) if is_yaml else json.loads(text, object_pairs_hook=keys_once)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            prose = not is_yaml and not text.lstrip().startswith(("{", "["))  # plain text given as story=
            hint = (f"; if it is a free-text scenario, pass scenario={path} num_prompts=N (or prompt_file={path} for "
                    f"one prompt)") if prose else ""
            raise UsageError(f"story file {path} is not valid {'YAML' if is_yaml else 'JSON'}: {first}{hint}") from None
        return cls.from_dict(data, where=f"story file {path}").with_images_under(path.parent)

    def with_images_under(self, folder: Path) -> "Story":
        """This story with its events' relative image paths read from `folder` (a story file's folder; the working
        directory for a story given as a dict), kept absolute from here on."""
        if self.images is not None:
            self.images = [None if img is None else str((folder / Path(img).expanduser()).resolve())
                           for img in self.images]
        return self

    @classmethod
    def from_prompt_file(cls, path: str | Path) -> "Story":
        """One prompt for the whole video, read from a text file (`prompt_file=`): no quoting on the command line.
        Lines are joined with single spaces (none between Chinese or Japanese characters)."""
        path = Path(str(path)).expanduser()
        text = read_limited(path, MAX_PROMPT_FILE_BYTES, "prompt file",
                            "a prompt is a few sentences (the text encoder reads about 226 tokens); for a story use story= or scenario=")
        prompt = joined_lines(text)
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


def _kind(value: Any) -> str:
    """How a wrong value reads in a message: 'a number (3)', 'null', 'a list'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({brief(value, 30)})"
    return f"a {'list' if isinstance(value, list) else 'object' if isinstance(value, dict) else type(value).__name__}"


def _event_images(local: Any) -> tuple[Any, list[str | None] | None]:
    """`local` as given → (the events without their `image` key, each event's image path or None); None when no
    event has an image. A malformed list is passed on."""
    if not isinstance(local, list) or not any(isinstance(item, dict) and "image" in item for item in local):
        return local, None
    events, images = [], []
    for i, item in enumerate(local, 1):
        image = item.get("image") if isinstance(item, dict) else None
        if isinstance(item, dict) and "image" in item:
            if not isinstance(image, str) or not image.strip():
                raise UsageError(f"story: local prompt {i}'s `image` must be the path of an image file, got {brief(image)}")
            item = {k: v for k, v in item.items() if k != "image"}
        events.append(item)
        images.append(image)
    return events, images


def _timed_events(items: Any) -> tuple[Any, list[dict[str, float]] | None]:
    """`local` as given: the prompts and, where events are objects {"prompt", "start", "end"} or {"prompt",
    "duration"}, their times (None when no event has a time). A malformed list is passed on for `validate`."""
    if not isinstance(items, list) or not any(isinstance(item, dict) for item in items):
        return items, None
    prompts, times = [], []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            prompts.append(item)
            times.append({})
            continue
        unknown = set(item) - {"prompt", "start", "end", "duration"}
        if unknown:
            raise UsageError(f"story: local prompt {i} has unknown key(s) {_listed(sorted(cut(str(k), 30) for k in unknown))}; "
                             f"allowed: prompt, start, end, duration, image")
        if "prompt" not in item:
            raise UsageError(f"story: local prompt {i} needs a `prompt` string")
        prompts.append(item["prompt"])
        times.append({k: v for k, v in item.items() if k != "prompt"})
    return prompts, (times if any(times) else None)


def parse_characters(value: Any) -> dict[str, str]:
    """`characters` in any of its accepted forms, as the id → description map: a map already; a list of LCT's
    "Character ID: description" strings; or one string of such entries, each opened by "Character ID:" (entries on
    their own lines or run together as in LCT's Fig. 2, a trailing ';' or bold '**' dropped)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    form = 'e.g. {"1": "a tall woman ..."} or ["Character 1: a tall woman ..."]'
    if isinstance(value, list):
        chars: dict[str, str] = {}
        for i, item in enumerate(value, 1):
            entries = _character_entries(item) if isinstance(item, str) else []
            if len(entries) != 1:
                raise UsageError(f"story: `characters` item {i} must read \"Character ID: description\", got {brief(item, 50)}")
            _add_character(chars, *entries[0])
        return chars
    if isinstance(value, str):
        entries = _character_entries(value)
        if not entries:
            raise UsageError(f"story: `characters` must name each character as \"Character ID: description\", {form}")
        chars = {}
        for cid, desc in entries:
            _add_character(chars, cid, desc)
        return chars
    raise UsageError(f"story: `characters` must map a character id to its description, {form}")


def _character_entries(text: str) -> list[tuple[str, str]]:
    """(id, description) of each "Character ID:" entry of `text`; [] when text comes before the first entry."""
    marks = [m for m in _CHARACTER_ENTRY.finditer(text) if _opens_entry(text, m)]
    if not marks or text[: marks[0].start()].strip():
        return []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(m.group(1), text[m.end(): end].strip().rstrip(";").strip().removesuffix("**").strip())
            for m, end in zip(marks, ends)]


def _opens_entry(text: str, mark: re.Match) -> bool:
    """Whether `mark` opens a character entry: LCT's "Character ID:" anywhere, as before; in another case
    ("character 1:") only at an entry boundary (_ENTRY_BOUNDARY), so that a description saying "... plays the
    character Bob: ..." stays one description."""
    if mark.group(0).lstrip("*").startswith("Character"):
        return True
    return text[: mark.start()].rstrip(" \t*")[-1:] in _ENTRY_BOUNDARY


def refers_to_character(match: re.Match, characters: dict[str, str]) -> bool:
    """Whether a CHARACTER_REF match in a shot prompt is a reference: LCT's "Character ID" always (an undefined id
    is then refused); "character ID" in another case where ID is a defined character or a number, so that prose
    such as "the character walks away" stays prose."""
    cid = match.group(1)
    return match.group(0).startswith("Character") or cid in characters or cid.isdigit()


def _add_character(chars: dict[str, str], cid: str, desc: str) -> None:
    if cid in chars:
        raise UsageError(f"story: `characters` describes Character {cut(cid, 30)} twice; give each id once")
    chars[cid] = desc


def _source(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"splitter": value}
    if not isinstance(value, dict):
        raise UsageError(f"story: `source` must be an object (or a splitter name), got {type(value).__name__}")
    return dict(value)


#: marks that end a sentence: Latin ones and the full-width ones of Chinese and Japanese
SENTENCE_ENDS = ".!?。！？…"
#: Chinese and Japanese letters and full-width marks: a sentence there ends with '。', and none is followed by a space
FULL_WIDTH_RANGES = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff"
_FULL_WIDTH = re.compile(rf"[{FULL_WIDTH_RANGES}]")


def ends_full_width(text: str) -> bool:
    """Whether `text` ends in a Chinese or Japanese letter or full-width mark (Korean, accented Latin: no); emoji and
    other symbols after the last letter are passed over ("雪堆🦊" is Chinese)."""
    end = len(text)
    while end > 1 and unicodedata.category(text[end - 1])[0] in "SMC":  # symbols, marks, ZWJ and other format
        end -= 1
    return end > 0 and _FULL_WIDTH.match(text[end - 1]) is not None


def joined_lines(text: str) -> str:
    """`text` as one line: every whitespace run one space, except a line break between two Chinese or Japanese
    characters, which goes (those scripts put no space between words: a line wrapped there is one phrase)."""
    text = text.strip()

    def space(gap: re.Match) -> str:
        wrapped = "\n" in gap.group(0) or "\r" in gap.group(0)
        apart = wrapped and ends_full_width(text[: gap.start()]) and ends_full_width(text[gap.end()])
        return "" if apart else " "

    return re.sub(r"\s+", space, text)


def full_stop(text: str) -> str:
    """`text` as a sentence: as it is when it ends in a stop, else with the stop of its script ('。' or '.')."""
    text = text.strip()
    return text if text[-1:] in SENTENCE_ENDS else text + ("。" if ends_full_width(text) else ".")


def comparable(text: str) -> str:
    """Text compared for containment (a local prompt holding the global one, here and in the LLM splitter's
    check of its answers): whitespace runs collapsed, case folded, trailing full stops dropped."""
    return " ".join(text.split()).casefold().rstrip(" .。")


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

"""Checks of option values as the command line delivers them (Hydra parses `num_windows=abc` as a string,
`seed=1e9` as a float, `x=nan` as a float NaN): one line naming the option, the value and the accepted range.

A config group's options can be declared as data: a dataclass whose fields are the options, each made with
`option(default, rule)`, where the rule is `Whole`, `Number`, `OneOf`, `flag` or any callable (name, value) → value
that raises UsageError. `check_fields` applies the rules in declaration order and keeps what they return (4.0 → 4),
so the constructor Hydra calls is the dataclass's own and the ranges live next to the defaults (samplers, noise,
writer). Checks that involve several options stay code, in the class that has them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from longgen.errors import UsageError


def whole(name: str, value: Any, lo: int | None = None, hi: int | None = None, note: str = "") -> int:
    """A whole number in [lo, hi] (a float such as 4.0 is accepted as 4; bools and strings are not). `note` ends
    the error line (what else is accepted, what the value means)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        ok, value = True, int(value)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UsageError(f"{name}={value!r} must be a whole number{_range(lo, hi)}{note}")
    return value


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           note: str = "") -> float:
    """A finite real number in [lo, hi] (or (lo, hi] with lo_open). `note` ends the error line."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None and (value <= lo if lo_open else value < lo):
        ok = False
    if ok and hi is not None and value > hi:
        ok = False
    if not ok:
        rng = _range(lo, hi)
        if lo_open:
            rng = f" > {lo}" if hi is None else f" in ({lo}, {hi}]"
        raise UsageError(f"{name}={value!r} must be a finite number{rng}{note}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name}={value!r} must be true or false")
    return value


def _tail(null: str, note: str) -> str:
    """The end of a rule's error line: what null means where it is accepted, then the note in parentheses."""
    return (f", or null for {null}" if null else "") + (f" ({note})" if note else "")


@dataclass(frozen=True)
class Whole:
    """Rule: a whole number in [lo, hi] (an open end where None). `null`, when given, accepts None and says what it
    means; `note` is said in parentheses at the end of the error line (the paper's range, what the value means)."""

    lo: int | None = None
    hi: int | None = None
    note: str = ""
    null: str = ""

    def __call__(self, name: str, value: Any) -> int | None:
        if value is None and self.null:
            return None
        return whole(name, value, self.lo, self.hi, _tail(self.null, self.note))


@dataclass(frozen=True)
class Number:
    """Rule: a finite number in [lo, hi], or (lo, hi] with `above`; `null` and `note` as for Whole."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False
    note: str = ""
    null: str = ""

    def __call__(self, name: str, value: Any) -> float | None:
        if value is None and self.null:
            return None
        return number(name, value, self.lo, self.hi, self.above, _tail(self.null, self.note))


@dataclass(frozen=True)
class OneOf:
    """Rule: one of a few words; `note` says what they mean."""

    choices: tuple[str, ...]
    note: str = ""

    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise UsageError(f"{name}={value!r}: use one of {', '.join(self.choices)}{_tail('', self.note)}")
        return value


def option(default: Any, rule: Callable[[str, Any], Any]) -> Any:
    """A dataclass field that is a config option: its default and the rule every value must pass."""
    return field(default=default, metadata={"rule": rule})


def check_fields(obj: Any, group: str) -> None:
    """Pass every declared option of the dataclass instance `obj` through its rule, in declaration order, and keep
    what the rule returns; the first bad value is one UsageError line naming `group.option`."""
    for f in fields(obj):
        rule = f.metadata.get("rule")
        if rule is not None:
            setattr(obj, f.name, rule(f"{group}.{f.name}", getattr(obj, f.name)))


def reject_non_finite(label: str, data: Any) -> None:
    """Walk a config container and refuse any NaN/inf number (it would reach the maths and the manifest)."""
    if isinstance(data, dict):
        for key, value in data.items():
            reject_non_finite(f"{label}.{key}", value)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            reject_non_finite(f"{label}[{i}]", value)
    elif isinstance(data, float) and not math.isfinite(data):
        raise UsageError(f"{label}={data} must be a finite number")


def host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 << 30


#: float32 latent-sized buffers a sampler holds at once (x_t, fused x̂0 and its accumulators, ε, noise, AdamW's
#: two moments and gradient in SynCoS stage 2, the checkpoint copy) — a generous count for the upper bound
LATENT_COPIES = 12


def check_latent_budget(length: int, frame_shape: tuple[int, ...], label: str) -> None:
    """Refuse a video whose latents alone would not fit in half of this machine's memory (checked in
    microseconds, before any tensor or window plan is built)."""
    per_frame = 4 * LATENT_COPIES
    for d in frame_shape:
        per_frame *= d
    budget = host_memory_bytes() // 2
    if length * per_frame > budget:
        most = max(1, budget // per_frame)
        raise UsageError(
            f"a video of {length} latent frames on {label} needs about {length * per_frame / 2**30:.1f} GiB for its "
            f"latents alone, more than half of this machine's memory: ask for at most {most} latent frames "
            f"(fewer windows or a smaller length_factor)"
        )


def _range(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f" between {lo} and {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""

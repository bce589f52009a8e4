"""Checks of option values as the command line delivers them (Hydra parses `num_windows=abc` as a string,
`seed=1e9` as a float, `x=nan` as a float NaN): one line naming the option, the value and the accepted range."""

from __future__ import annotations

import math
import os
from typing import Any

from longgen.errors import UsageError


def whole(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number in [lo, hi] (a float such as 4.0 is accepted as 4; bools and strings are not)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        ok, value = True, int(value)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UsageError(f"{name}={value!r} must be a whole number{_range(lo, hi)}")
    return value


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    """A finite real number in [lo, hi] (or (lo, hi] with lo_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None and (value <= lo if lo_open else value < lo):
        ok = False
    if ok and hi is not None and value > hi:
        ok = False
    if not ok:
        low = f"> {lo}" if lo_open else f">= {lo}"
        rng = f" ({low}{'' if hi is None else f' and <= {hi}'})" if lo is not None else _range(lo, hi)
        raise UsageError(f"{name}={value!r} must be a finite number{rng}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name}={value!r} must be true or false")
    return value


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

"""longgen: tuning-free multi-event long video generation over diffusers text-to-video models.

`longgen.generate(...)`, `longgen.extend(...)`, `longgen.resume(...)` and `longgen.decode(...)` run the commands in
this process (longgen/api.py); they are imported on first use, so `import longgen` stays light (no torch, no Hydra).
"""

__version__ = "0.1.0"

#: what `longgen.NAME` loads from longgen/api.py on first use
_API = ("generate", "extend", "resume", "decode", "Result", "UsageError")


def __getattr__(name: str):
    if name in _API:  # by name, not an import statement: the modules that read __version__ do not depend on the API
        import importlib

        return getattr(importlib.import_module("longgen.api"), name)
    raise AttributeError(f"module 'longgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

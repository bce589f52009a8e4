"""The one place that turns config groups into objects (`hydra.utils.instantiate`).

Keywords are checked against the target's signature first, so `sampler.strde=4` fails in a second with the list
of valid options instead of after the weights load.
"""

from __future__ import annotations

import inspect
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from longgen.errors import UsageError
from longgen.options import reject_non_finite


def riflex_stride(stride: int, riflex: Any) -> int:
    """`${riflex_stride:S,${oc.select:backbone.riflex,false}}` in the RoPE backbones' YAML: the window stride doubles with RIFLEx's doubled
    window (2·(M−1)+1 latent frames), so the windows overlap by the same fraction and a length needs about half the
    windows. `riflex` is false/null (off), true or a component K (on)."""
    on = riflex is not None and riflex is not False and str(riflex).lower() not in ("false", "0", "none", "null")
    return 2 * int(stride) if on else int(stride)


OmegaConf.register_new_resolver("riflex_stride", riflex_stride, replace=True)


def check_kinds(group: str, kwargs: dict, params) -> None:
    """A value whose kind differs from the option's default (a word where a number or true/false belongs) is one
    line naming the option, before the constructor turns it into a traceback."""
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty or param.default is None or value is None:
            continue
        default, only_bool = param.default, param.annotation in ("bool", bool)
        if isinstance(default, bool):
            if only_bool and not isinstance(value, bool):
                raise UsageError(f"{group}.{key}={value!r} must be true or false")
        elif isinstance(default, (int, float)) and isinstance(value, (str, bool, list, dict)):
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise UsageError(f"{group}.{key}={value!r} must be {kind}")


def build(node: DictConfig, group: str, choice: str | None = None) -> Any:
    """Instantiate a `_target_` node of config group `group` (backbone, sampler, writer, splitter)."""
    label = f"{group}={choice}" if choice else group
    if node is None or "_target_" not in node:
        raise UsageError(f"{label}: the config has no _target_; pick one of the shipped {group} configs")
    target = get_class(node._target_)
    params = inspect.signature(target.__init__).parameters
    allowed = [p for p in params if p not in ("self",) and params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    # keys the node holds for other groups to read, not options of its target (a backbone's sampling defaults,
    # longgen/backbones/face.py): accepted, and left out of the constructor call
    config_only = [k for k in getattr(target, "config_only", ()) if k not in allowed]
    allowed += config_only
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = [k for k in node.keys() if not str(k).startswith("_")]
    unknown = [k for k in given if k not in allowed]
    if unknown and not accepts_any:
        raise UsageError(
            f"{label} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(allowed)}"
        )
    try:
        kwargs = OmegaConf.to_container(node, resolve=True)
    except Exception as exc:
        raise UsageError(f"{label}: {str(exc).splitlines()[0]}") from None
    kwargs.pop("_target_", None)
    reject_non_finite(group, kwargs)
    for key in config_only:
        kwargs.pop(key, None)
    check_kinds(group, kwargs, params)
    try:
        return instantiate({"_target_": node._target_, **kwargs}, _convert_="all")
    except UsageError:
        raise
    except Exception as exc:  # hydra wraps constructor errors; surface the user-facing one
        cause = exc.__cause__ or exc
        if isinstance(cause, UsageError):
            raise cause from None
        raise UsageError(f"{label}: {str(cause).splitlines()[0]}") from None

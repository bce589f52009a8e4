"""LoRA adapters on a diffusers backbone (`backbone.lora=[{path: style.safetensors, scale: 0.8}, ...]`).

Everything LoRA-specific is diffusers' and PEFT's own: the pipeline's `load_lora_weights` (its family's
`lora_state_dict` converts the non-diffusers key layouts it knows, e.g. Wan's original `diffusion_model.*`
checkpoints), `set_adapters` for the scales, `fuse_lora` and `unload_lora_weights`. This module only says which
files, checks them before any weights load, turns diffusers' complaints about a file into one line, and records
what was applied for the manifest.

How a LoRA is applied: every listed adapter is loaded under its own name, the scales are set, and the adapters
are fused into the transformer's weights (W' = W + Σᵢ scaleᵢ·(alphaᵢ/rᵢ)·Bᵢ·Aᵢ for each adapted linear layer), after
which PEFT's layers are removed again. The transformer the sampler calls is then the plain diffusers model with
other weights: regional `torch.compile`, the fused feed-forward GELU, the attention kernels and model CPU offload
see nothing new, nothing recompiles and a step costs what it costs without LoRA. The scales are then fixed for the
whole run.

A scale per event (`events: [s1, s2, ...]` on an item, one scale per story event in story order) keeps the
adapters unfused instead: PEFT's LoRA layers stay in the transformer and diffusers' `set_adapters` sets the scales
before each transformer call, the rows of a call grouped by their window's event (longgen/backbones/lora_events.py).
An item without `events` keeps its `scale` in every event; `scale` is also what an item contributes to windows of
no event (GLC's global-prompt windows). Only when no item has `events` are the adapters fused.

On a two-expert model (Wan 2.2 T2V-A14B) each item says which expert(s) it goes into, `experts: high | low | both`
(`transformer`, `transformer_2`, both; required there, refused on one transformer): Wan 2.2 LoRAs ship one file per
expert. The low-noise expert's copy is loaded by diffusers' Wan loader with `load_into_transformer_2`; each
transformer sets, and fuses, its own items.

The loading happens where `DiffusersBackbone.load` places the pipeline: after it moved to the device (fused
there), or before the CPU-offload hooks are installed (fused on the CPU), so diffusers never has to take offload
hooks off and on again.

Sources of a LoRA (`path`): a local `.safetensors` file; a local directory holding one (or `weight_name`
naming it); or a hub id with `weight_name`, fetched through the Hugging Face cache when the weights are looked
for (`check_available`). Only safetensors files are read (no pickles).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from longgen.errors import UsageError
from longgen.rundir import file_sha256

#: |scale| beyond this is a typo, not a style strength (LoRA scales in use lie in about [-2, 2])
MAX_SCALE = 10.0
#: the oldest peft diffusers 0.42 loads LoRAs with (its MIN_PEFT_VERSION)
MIN_PEFT = (0, 17)
#: what an item of `backbone.lora` may say
KEYS = ("path", "scale", "weight_name", "name", "events", "experts")
#: `experts` on a two-expert model (Wan 2.2 A14B) → the pipeline components the LoRA goes into
EXPERTS = {"high": ("transformer",), "low": ("transformer_2",), "both": ("transformer", "transformer_2")}
#: `experts` as the start line's LoRA line says it
_INTO = {"high": " into the high-noise expert", "low": " into the low-noise expert", "both": " into both experts"}
#: a hub id, "owner/name"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: a name for messages and the manifest
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: diffusers loggers whose warnings mean a LoRA did not (wholly) fit the transformer
_LOADER_LOGGERS = ("diffusers.loaders.peft", "diffusers.loaders.lora_pipeline", "diffusers.loaders.lora_base",
                   "diffusers.loaders.lora_conversion_utils", "diffusers.utils.peft_utils")


@dataclass
class Lora:
    """One entry of `backbone.lora`, checked; `file` is the local safetensors file once resolved."""

    path: str  # as given
    scale: float
    name: str  # its name in messages and the manifest
    weight_name: str | None = None
    file: Path | None = None
    sha256: str | None = None  # of the file's bytes, set when it is loaded
    events: list[float] | None = None  # a scale per story event (then the adapters stay unfused), else None
    experts: str | None = None  # two-expert models: high, low or both (EXPERTS); None on one transformer

    def adapter(self, k: int) -> str:
        """The PEFT adapter name of entry k. Not the user's name: diffusers tells an adapter's own keys in its
        missing-key check by substring (`adapter_name in key`), so a short name like `b` would match every other
        adapter's keys (`transformer_blocks...`); `longgen_lora_<k>_` appears in no module or other adapter key."""
        return f"longgen_lora_{k}_"

    def describe(self, k: int) -> dict:
        """The manifest's record of entry k."""
        return {"name": self.name, "adapter": self.adapter(k), "path": self.path, "weight_name": self.weight_name,
                "file": str(self.file) if self.file else None, "sha256": self.sha256, "scale": self.scale,
                "events": self.events, "experts": self.experts}

    def components(self) -> tuple[str, ...]:
        """The pipeline's transformers this LoRA goes into."""
        return EXPERTS[self.experts] if self.experts is not None else ("transformer",)

    def scale_in(self, event: int | None) -> float:
        """This adapter's scale in story event `event` (None: a window of no event)."""
        return self.events[event] if self.events is not None and event is not None else self.scale


def parse_loras(items: Any) -> list[Lora]:
    """`backbone.lora` (null, or a list of {path, scale, weight_name, name}) → checked entries; local files are
    found and their safetensors header read, hub ids wait for `resolve_hub`. One line for the first bad entry."""
    if items is None:
        return []
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise UsageError(f"backbone.lora must be a list like [{{path: style.safetensors, scale: 0.8}}], got "
                         f"{str(items)[:60]!r}")
    loras = [parse_one(item, k) for k, item in enumerate(items)]
    if loras:
        check_peft()
    names = [lora.name for lora in loras]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(f"backbone.lora: two LoRAs are named {name!r}: give each a distinct `name`")
    return loras


def check_peft() -> None:
    """diffusers loads LoRAs only through PEFT (MIN_PEFT_VERSION 0.17 for diffusers 0.42): one line where it is
    missing or older, rather than diffusers' error at load."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("peft")
    except PackageNotFoundError:
        raise UsageError("backbone.lora needs the peft package: pip install 'peft>=0.17'") from None
    if tuple(int(n) for n in re.findall(r"\d+", found)[:2]) < MIN_PEFT:
        raise UsageError(f"backbone.lora needs peft {'.'.join(map(str, MIN_PEFT))} or newer (found {found}): "
                         f"pip install -U peft")


def parse_one(item: Any, k: int) -> Lora:
    """Entry k of `backbone.lora`."""
    where = f"backbone.lora[{k}]"
    if not hasattr(item, "keys"):
        raise UsageError(f"{where} must be a mapping like {{path: style.safetensors, scale: 0.8}}, got {str(item)[:60]!r}")
    unknown = sorted(set(item.keys()) - set(KEYS))
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(KEYS)}")
    path = item.get("path")
    if not isinstance(path, str) or not path.strip():
        raise UsageError(f"{where} needs a `path`: a .safetensors file, a directory holding one, or a hub id")
    scale = checked_scale(item.get("scale", 1.0), f"{where}.scale")
    weight_name = item.get("weight_name")
    if weight_name is not None and not isinstance(weight_name, str):
        raise UsageError(f"{where}.weight_name must be a file name, got {weight_name!r}")
    experts = item.get("experts")
    if experts is not None and (not isinstance(experts, str) or experts not in EXPERTS):
        raise UsageError(f"{where}.experts={experts!r}: use high (the high-noise expert, `transformer`), low (the "
                         f"low-noise expert, `transformer_2`) or both")
    lora = Lora(path=path, scale=scale, name="", weight_name=weight_name,
                events=event_scales(item.get("events"), where), experts=experts)
    lora.file = local_file(lora, where)
    default = lora.file.stem if lora.file is not None else path.rsplit("/", 1)[-1]
    name = item.get("name") or re.sub(r"\W", "_", default).lstrip("0123456789") or f"lora{k}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"{where}.name={name!r}: use letters, digits and _ (not starting with a digit)")
    lora.name = name
    if lora.file is not None:
        check_header(lora.file, where)
    return lora


def checked_scale(value: Any, where: str) -> float:
    """A LoRA scale: a finite number within ±MAX_SCALE; one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or abs(value) > MAX_SCALE:
        raise UsageError(f"{where}={value!r} must be a number between -{MAX_SCALE:g} and {MAX_SCALE:g} "
                         f"(1 = as trained, 0 = off)")
    return float(value)


def event_scales(value: Any, where: str) -> list[float] | None:
    """An item's `events`: null, or a non-empty list of scales, one per story event (their number is checked
    against the story by `check_event_count`)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise UsageError(f"{where}.events must be a list of scales, one per story event (e.g. events: [1.0, 0.0, "
                         f"0.5]), got {str(value)[:60]!r}")
    return [checked_scale(v, f"{where}.events[{i}]") for i, v in enumerate(value)]


def per_event(loras: Sequence[Lora]) -> bool:
    """Whether any item gives a scale per event (the adapters then stay unfused)."""
    return any(lora.events is not None for lora in loras)


def check_event_count(loras: Sequence[Lora], count: int) -> None:
    """Every `events` list has one scale per story event; one line for the first that has not."""
    for k, lora in enumerate(loras):
        if lora.events is not None and len(lora.events) != count:
            raise UsageError(f"backbone.lora[{k}].events has {len(lora.events)} scale(s) but the story has {count} "
                             f"event(s): give one scale per event, in story order")


def check_experts(loras: Sequence[Lora], two: bool) -> None:
    """On a two-expert model every item says which expert(s) it is for (Wan 2.2 LoRAs ship one file per expert,
    `high_noise` and `low_noise`, so no guess is made); on one transformer none says it. One line otherwise."""
    for k, lora in enumerate(loras):
        if two and lora.experts is None:
            raise UsageError(f"backbone.lora[{k}]: this model has two experts: say which this LoRA is for with "
                             f"experts: high (high-noise file), low (low-noise file) or both")
        if not two and lora.experts is not None:
            raise UsageError(f"backbone.lora[{k}].experts={lora.experts}: this model has one transformer: drop "
                             f"experts")


def pin_local_paths(items: Any, loras: Sequence[Lora]) -> None:
    """Write each local LoRA's absolute path into its config item (`backbone.lora[k].path`), as image= is kept: the
    run's saved config then finds the files from any working directory (`longgen resume`); the manifest and the
    checkpoint name the files by absolute path too. Hub ids stay as given."""
    for item, lora in zip(items or [], loras):
        path = Path(lora.path).expanduser()
        if path.exists():  # a local file or directory (local_file checked it), and the file found there
            lora.path = item["path"] = str(path.resolve())
            lora.file = lora.file.resolve() if lora.file is not None else None


def file_records(loras: Sequence[Lora]) -> list[dict]:
    """Each LoRA file's path and sha256 (hashed here where it is not loaded yet), for a checkpoint's inputs."""
    for lora in loras:
        if lora.sha256 is None:
            lora.sha256 = file_sha256(lora.file)
    return [{"path": str(lora.file), "sha256": lora.sha256} for lora in loras]


def check_unchanged(saved: Sequence[dict], loras: Sequence[Lora]) -> None:
    """`longgen resume`: every LoRA file still has the sha256 its checkpoint recorded (`saved`, file_records); one
    line naming the first that changed."""
    for k, (was, now) in enumerate(zip(saved, file_records(loras))):
        if was["sha256"] != now["sha256"]:
            raise UsageError(f"backbone.lora[{k}] ({now['path']}) changed since the checkpoint (sha256 differs): put "
                             f"the original file back, or start a new run")


def summary(loras: Sequence[Lora]) -> str:
    """One line for under the start line: each LoRA's name, file, scale(s) and expert(s)."""
    mode = "unfused, scales set per event" if per_event(loras) else "fused into the weights"
    parts = []
    for lora in loras:
        file = Path(lora.file).name if lora.file is not None else f"{lora.path}:{lora.weight_name}"
        scales = f"{lora.scale:g}" if lora.events is None else \
            f"per event {', '.join(f'{s:g}' for s in lora.events)} (no event: {lora.scale:g})"
        parts.append(f"{lora.name} ({file}) {scales}{_INTO.get(lora.experts or '', '')}")
    return f"LoRA ({mode}): " + "; ".join(parts)


def local_file(lora: Lora, where: str) -> Path | None:
    """The local safetensors file of an entry; None for a hub id (fetched later); one line when neither."""
    path = Path(lora.path).expanduser()
    if path.is_file():
        if lora.weight_name is not None:
            raise UsageError(f"{where}: weight_name names a file inside a directory or hub repository, but path "
                             f"{lora.path} is a file: drop weight_name")
        return checked_suffix(path, where)
    if path.is_dir():
        if lora.weight_name is not None:
            found = path / lora.weight_name
            if not found.is_file():
                raise UsageError(f"{where}: no file {lora.weight_name} in {path}")
            return checked_suffix(found, where)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise UsageError(f"{where}: {path} holds no .safetensors file: point path at the LoRA's .safetensors "
                             f"file or at the directory that holds it")
        if len(files) > 1:
            raise UsageError(f"{where}: {path} holds {len(files)} .safetensors files: name the LoRA file with "
                             f"weight_name=")
        return files[0]
    # a missing file named *.safetensors is a mistyped local path, not a hub id
    if _HUB_ID.match(lora.path) and not lora.path.startswith((".", "/", "~")) and path.suffix != ".safetensors":
        if lora.weight_name is None:
            raise UsageError(f"{where}: {lora.path} is not a local file; as a hub id it needs weight_name= (the "
                             f"LoRA's .safetensors file in that repository)")
        return None
    looked = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    raise UsageError(f"{where}: no such file or directory {lora.path}{looked}: pass a LoRA .safetensors file, a "
                     f"directory holding one, or a hub id with weight_name")


def checked_suffix(path: Path, where: str) -> Path:
    if path.suffix != ".safetensors":
        raise UsageError(f"{where}: {path} is not a .safetensors file; longgen reads LoRAs only in safetensors "
                         f"(convert it, e.g. with safetensors.torch.save_file)")
    return path


def check_header(path: Path, where: str) -> None:
    """The file is safetensors (its header reads) and holds LoRA tensors (keys naming `lora`): a cheap look
    before any weights load."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for a damaged or foreign header
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{where}: {path} is not a readable safetensors file ({reason})") from None
    if not any("lora" in key.lower() for key in keys):
        raise UsageError(f"{where}: {path} holds no LoRA weights (no tensor name contains 'lora'): is it a LoRA?")


def resolve_hub(loras: Sequence[Lora]) -> None:
    """Fetch the hub-id entries' files through the Hugging Face cache (offline: the cached copy); one line when
    one cannot be had. snapshot_download (one file of the repo), as the backbones' weights are fetched: an
    unreachable hub fails at once, where hf_hub_download retried for ~25 s and logged every retry."""
    from huggingface_hub import snapshot_download

    for k, lora in enumerate(loras):
        if lora.file is not None:
            continue
        try:
            lora.file = Path(snapshot_download(lora.path, allow_patterns=[lora.weight_name])) / lora.weight_name
            if not lora.file.is_file():
                raise FileNotFoundError(f"the repo has no file {lora.weight_name}")
        except Exception as exc:  # offline, unknown repo or file, gated: all mean "no LoRA here"
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"backbone.lora[{k}]: cannot fetch {lora.weight_name} from {lora.path} ({reason}); "
                             f"download it (`hf download {lora.path} {lora.weight_name} --local-dir DIR`) and pass "
                             f"path=DIR/{lora.weight_name}") from exc
        check_header(lora.file, f"backbone.lora[{k}]")


class _Complaints(logging.Filter):
    """Collects (and keeps off the console) what diffusers' loaders log at WARNING or above."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.lines.append(" ".join(record.getMessage().split())[:200])
        return False


@contextlib.contextmanager
def _complaints() -> Iterator[_Complaints]:
    catcher = _Complaints()
    loggers = [logging.getLogger(name) for name in _LOADER_LOGGERS]
    for logger in loggers:
        logger.addFilter(catcher)
    try:
        yield catcher
    finally:
        for logger in loggers:
            logger.removeFilter(catcher)


def apply_loras(pipe, loras: Sequence[Lora], model: str, fuse: bool = True) -> None:
    """Load every LoRA into its transformer(s) (`pipe.transformer`; on a two-expert model as `experts` says) through
    the pipeline's own loader and set their scales; with `fuse`, fuse them into the weights and drop PEFT's layers,
    else leave PEFT's layers in at the items' `scale`. A file diffusers or PEFT cannot fit to this transformer
    (unknown or missing module names, other shapes, nothing for the transformer in it) is one line naming it."""
    if not loras:
        return
    resolve_hub(loras)  # where check_available did not run first (a backbone loaded directly)
    for k, lora in enumerate(loras):
        lora.sha256 = file_sha256(lora.file)
        for component in lora.components():
            load_one(pipe, k, lora, model, component)
    for component in dict.fromkeys(c for lora in loras for c in lora.components()):
        held = [(lora.adapter(k), lora.scale) for k, lora in enumerate(loras) if component in lora.components()]
        getattr(pipe, component).set_adapters([name for name, _ in held], [scale for _, scale in held])
        if fuse:
            pipe.fuse_lora(components=[component], lora_scale=1.0, adapter_names=[name for name, _ in held])
    if fuse:
        pipe.unload_lora_weights()  # PEFT's layers out; the fused weights stay


def load_one(pipe, k: int, lora: Lora, model: str, component: str) -> None:
    """Entry k's file into `pipe.<component>` under its adapter name (diffusers' Wan loader puts it into the
    low-noise expert with `load_into_transformer_2`); one line where it does not fit."""
    into = {"load_into_transformer_2": True} if component == "transformer_2" else {}
    with _complaints() as said, warnings.catch_warnings():
        # PEFT's note on a second adapter ("Already found a `peft_config` attribute") is the intended case here
        warnings.filterwarnings("ignore", message=".*peft_config.*", category=UserWarning)
        try:  # by file, not as tensors: diffusers then also reads the adapter metadata (alpha, rank) in it
            pipe.load_lora_weights(str(lora.file.parent), weight_name=lora.file.name, adapter_name=lora.adapter(k),
                                   **into)
        except (ValueError, RuntimeError, LookupError, TypeError, AttributeError) as exc:  # Lookup: half a LoRA
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise mismatch(k, lora, model, reason) from None
    peft_config = getattr(getattr(pipe, component), "peft_config", {}) or {}
    if said.lines or lora.adapter(k) not in peft_config:
        raise mismatch(k, lora, model, said.lines[0] if said.lines else "nothing of it was loaded")


def mismatch(k: int, lora: Lora, model: str, reason: str) -> UsageError:
    return UsageError(f"backbone.lora[{k}]: {lora.file} does not fit {model}'s transformer ({reason}): made for "
                      f"another model? Use a LoRA trained for this model")

"""Step checkpoints of the sample stage, and clean interrupts.

A checkpoint (`checkpoint.safetensors` in the run directory, written atomically, safetensors so nothing is
unpickled) holds everything that continues a run to the same bytes as an uninterrupted one:
- the sampler's state tensors (`state.<name>`, e.g. x_t [L, C, H, W] float32, exactly as on the device),
- the run's CPU generator state (`generator`, uint8) — every random draw of every sampler comes from it,
- metadata (JSON strings): the number of finished steps and the total, the result-determining part of the resolved
  config and its hash, the story's hash, the forward counters and sampling time so far, the longgen version, the
  run's inputs (an extend run's video: absolute path and sha256), the backbone and latent space that made it
  (`backbone`, `model_id`, `latent_space`, `latent_shape`: longgen/run/latent_space.py), and `tensors_sha256`: the
  sha256 of every tensor's name, dtype, shape and bytes (`tensor_digest`; ~10 ms for a 17 MB CogVideoX checkpoint).

Integrity: a checkpoint is written under a temporary name, read back and checked against its tensor hash, and only
then renamed over the previous one, so the previous checkpoint stays intact until the next one is verified on disk
(a full disk or a failed write leaves it as it was). `load_checkpoint` recomputes the hash, so a flipped bit in the
tensor data is one line ("damaged"), never a resume. A step whose state holds NaN/inf is never saved: the run stops
with one line naming the step and the last good checkpoint, which is kept.

`resume` rebuilds the run from the saved config, re-runs the sampler's `begin` (which draws nothing), restores the
tensors and the generator, and continues at the next step. The config is compared key by key, so an override
that would change the result is named in the refusal.

Interrupts: the first SIGINT/SIGTERM/SIGUSR2 while sampling lets the current step finish, then the step hook writes
the checkpoint and raises `Interrupted` (exit 130, one line with the resume command). SIGUSR2 is a scheduler's
warning (SLURM `--signal`, submitit's preemption signal). A second signal, or one outside sampling, raises
KeyboardInterrupt at once; atomic writers remove their temporary files on the way out. Inside a scheduler's job
(submitit sets SUBMITIT_EXECUTOR) the same SIGTERM/SIGUSR2 again is not a second request: the scheduler signals
every process of the job and the job's wrapper forwards it too (longgen/run/preemption.py); one that came before
sampling (while the weights loaded) stops the run at its first step boundary. Every signal handled is noted in
`RECEIVED`, which tells that wrapper to requeue the job.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from longgen import __version__
from longgen.errors import Interrupted, RunFailure, UsageError
from longgen.run.latent_space import read_identity
from longgen.rundir import atomic_file, write_bytes
from longgen.samplers.base import SamplerState

log = logging.getLogger("longgen")

#: options that do not change the sampled latents: they may differ between a run and its resume
HARMLESS = (
    "writer",
    "model_path",
    "backbone.model_path",
    "backbone.device",
    "backbone.cpu_offload",
    "backbone.vae_tiling",
    "backbone.vae_norm",
    "backbone.text_encoder",
    "save_latents",
    "checkpoint_every",
    "checkpoint_seconds",
    "preview_every",
    "preview_scale",
    "progress_every",
    "progress_seconds",
    "overwrite",
    "eval",
    "gpus",  # the latents are the same bytes on any number of GPUs (distributed.py)
    "video",  # where an extend run's input lies; its content is checked by its sha256 (Checkpoint.inputs)
)


def result_config(cfg: DictConfig) -> dict:
    """The resolved config without the HARMLESS options: what the sampled latents depend on."""
    return without_harmless(OmegaConf.to_container(cfg, resolve=True))


def without_harmless(data: dict) -> dict:
    """A resolved config (a copy of its top level) without the HARMLESS options."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in HARMLESS:
        head, _, rest = key.partition(".")
        if rest:
            if isinstance(data.get(head), dict):
                data[head].pop(rest, None)
        else:
            data.pop(head, None)
    return data


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"sampler": {"t_min": 850}} → {"sampler.t_min": 850}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass
class Checkpoint:
    state: SamplerState
    total: int
    generator_state: torch.Tensor  # uint8, torch.Generator.get_state()
    config: dict  # result_config(cfg)
    story_hash: str
    counters: dict = field(default_factory=dict)  # forwards, calls, sample_s so far
    version: str = __version__
    inputs: dict = field(default_factory=dict)  # files the run reads besides the story, e.g. {"video": {"path", "sha256"}}
    identity: dict = field(default_factory=dict)  # the backbone and latent space that made it (run/latent_space.py)

    def check_matches(self, config: dict, story_hash: str, path: Path) -> None:
        """One line naming what differs when the checkpoint belongs to another configuration or story."""
        saved = without_harmless(self.config)  # options made harmless since the checkpoint was written count too
        if digest(config) != digest(saved):
            old, new = flat(saved), flat(config)
            diffs = [k for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
            shown = ", ".join(f"{k} ({old.get(k, '<unset>')} → {new.get(k, '<unset>')})" for k in diffs[:4])
            more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
            raise UsageError(
                f"{path} was made with other settings: {shown}{more}; resume accepts only options that do not "
                f"change the result ({', '.join(HARMLESS)}): start a new run for the others"
            )
        if story_hash != self.story_hash:
            raise UsageError(f"{path} was made from another story than the run directory's story.json: start a new run")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor (sorted by name): its name, dtype, shape and raw bytes (CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes as stored, any dtype (bfloat16 too)
    return h.hexdigest()


def _read_tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def write_verified(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file with `tensors_sha256` in its metadata, written under a temporary name, read back and
    checked against that hash, then renamed over `path` (whatever was there stays intact until then). Every failure
    is an OSError: safetensors can return without an error when a write fails (a full disk leaves a short file),
    and the read-back catches that."""
    from safetensors.torch import save

    meta = {**metadata, "tensors_sha256": tensor_digest(tensors)}
    with atomic_file(path) as tmp:
        try:
            # the bytes are written by us into atomic_file's temporary (made with the user's umask and removed on
            # any failure); safetensors' own save_file goes through a private temporary file of 0600 that an
            # interrupted write left behind
            write_bytes(tmp, sorted_header(save(tensors, metadata=meta)))
            written, back = _read_tensors(tmp)
        except OSError:
            raise
        except Exception as exc:  # safetensors' own error type
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise OSError(errno.EIO, f"{path.name} could not be written or read back ({reason}); is the disk full?") from None
        if written.get("tensors_sha256") != meta["tensors_sha256"] or tensor_digest(back) != meta["tensors_sha256"]:
            raise OSError(errno.EIO, f"{path.name} read back differs from what was written; is the disk full?")


def sorted_header(blob: bytes) -> list[bytes | memoryview]:
    """A safetensors file's bytes with its JSON header written with sorted keys, as two buffers (the new header, a
    view of the tensor data: a checkpoint of a long plan is GBs, not to be copied): safetensors writes the metadata
    in a hash map's order, which changes from one write to the next, so the same tensors and metadata gave other
    bytes (a latents file's sha256 must depend on its content alone). The header is 8 bytes of length, the JSON,
    padded with spaces to a multiple of 8; the tensors' offsets count from its end, so they stay valid."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return [len(header).to_bytes(8, "little") + header, memoryview(blob)[8 + size:]]


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` verified (write_verified): the previous checkpoint is replaced only by a checked one. OSError
    (e.g. a full disk) propagates with nothing replaced."""
    tensors = {f"state.{k}": v.detach().to("cpu").contiguous() for k, v in ckpt.state.tensors.items()}
    tensors["generator"] = ckpt.generator_state.contiguous()
    write_verified(path, tensors, {
        "format": "longgen-checkpoint-1",
        "done": str(ckpt.state.done),
        "total": str(ckpt.total),
        "config": json.dumps(ckpt.config, sort_keys=True),
        "config_hash": digest(ckpt.config),
        "story_hash": ckpt.story_hash,
        "counters": json.dumps(ckpt.counters),
        "version": ckpt.version,
        "inputs": json.dumps(ckpt.inputs, sort_keys=True),
        **ckpt.identity,
    })


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at `path` from its header (no tensors read), or None when there is none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return int((f.metadata() or {})["done"])
    except Exception:
        return None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read and verify a checkpoint; a missing, truncated, foreign or damaged file (its tensors no longer match
    their hash) is one line."""
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: nothing to resume (was the run started with checkpoint_every=0?)")
    try:
        meta, tensors = _read_tensors(path)
        if meta.get("format") != "longgen-checkpoint-1":
            raise ValueError("not a longgen checkpoint")
        config = json.loads(meta["config"])
        if digest(config) != meta["config_hash"]:
            raise ValueError("its config does not match its hash")
        if "tensors_sha256" not in meta:  # written before checkpoints carried a hash
            log.warning("%s carries no tensor hash (an older longgen wrote it): its data cannot be verified", path)
        elif tensor_digest(tensors) != meta["tensors_sha256"]:
            raise ValueError("its tensor data does not match its sha256: the file was altered or the disk damaged it")
        state = SamplerState(
            {k.removeprefix("state."): v.to(device) for k, v in tensors.items() if k.startswith("state.")},
            done=int(meta["done"]),
        )
        ckpt = Checkpoint(state, int(meta["total"]), tensors["generator"], config, meta["story_hash"],
                          json.loads(meta["counters"]), meta["version"], json.loads(meta.get("inputs", "{}")),
                          read_identity(meta))
    except Exception as exc:  # safetensors raises its own error types for truncated headers/data
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is damaged or not a longgen checkpoint ({reason}): start a new run") from None
    if not state.tensors or not 0 <= state.done <= ckpt.total:
        raise UsageError(f"{path} is damaged (no state or step {state.done} of {ckpt.total}): start a new run")
    return ckpt


def all_finite(state: SamplerState) -> bool:
    """No NaN/inf in any floating-point tensor of the state (one device sync)."""
    flags = [torch.isfinite(t).all() for t in state.tensors.values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


#: the signals that stop a run at the next step boundary
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
#: names of the stop signals this process received (the scheduler wrapper reads them: longgen/run/preemption.py)
RECEIVED: set[str] = set()


class Interrupts:
    """SIGINT/SIGTERM/SIGUSR2 handling for one command (a context manager; handlers restored on exit)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.sampling = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Interrupts":
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a scheduler's stop while the job prepared: at the first step
            self.requested = next((n for n in ("SIGTERM", "SIGUSR2") if n in RECEIVED), None)
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a joblib worker thread): leave the defaults
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        RECEIVED.add(name)
        if self.requested == name and signum != signal.SIGINT and os.environ.get("SUBMITIT_EXECUTOR"):
            log.info("%s again (the scheduler signals every process of the job): still finishing the step", name)
            return
        if self.sampling and self.requested is None:
            self.requested = name
            log.warning("%s: finishing the current step, then saving a checkpoint (again to stop at once)", name)
            return
        raise KeyboardInterrupt(name)


class StepHooks:
    """The sample stage's after-step callback: checkpoints (every `every` steps and/or `seconds`, always after the
    last step and on an interrupt), previews, and the interrupt that stops the run."""

    def __init__(
        self,
        path: Path,
        make: Callable[[SamplerState, int], Checkpoint],
        interrupts: Interrupts,
        every: int = 1,
        seconds: float | None = None,
        preview: Callable[[SamplerState, int], None] | None = None,
        resume_command: str = "",
    ) -> None:
        self.path, self.make, self.interrupts = path, make, interrupts
        self.every, self.seconds, self.preview = every, seconds, preview
        self.resume_command = resume_command
        self._last = time.monotonic()
        self.saved_at: int | None = None

    def _due(self, done: int, total: int) -> bool:
        if self.interrupts.requested:
            return True
        if self.every <= 0 and not self.seconds:
            return False  # periodic checkpoints off (the final one too)
        if done == total or (self.every > 0 and done % self.every == 0):
            return True
        return bool(self.seconds) and time.monotonic() - self._last >= self.seconds

    def kept(self) -> str:
        """What a stopped run still has: the last good checkpoint (verified when written) and how to continue."""
        step = self.saved_at if self.saved_at is not None else checkpoint_step(self.path)
        if step is None:
            return f"no checkpoint was written yet: start the run again at its first step with: {self.resume_command}"
        return f"the last good checkpoint (after step {step}) is kept in {self.path}; continue with: {self.resume_command}"

    def __call__(self, state: SamplerState, total: int) -> None:
        if not all_finite(state):
            raise RunFailure(f"the sampler's state after step {state.done} of {total} holds NaN/inf values; it was not "
                             f"saved and no video is written; {self.kept()}")
        if self.preview is not None:
            self.preview(state, total)
        if self._due(state.done, total):
            try:
                save_checkpoint(self.path, self.make(state, total))
            except OSError as exc:
                raise RunFailure(f"writing the checkpoint after step {state.done} of {total} failed "
                                 f"({exc.strerror or exc}): free some space; {self.kept()}") from None
            self._last = time.monotonic()
            self.saved_at = state.done
        if self.interrupts.requested and state.done < total:
            raise Interrupted(
                f"stopped by {self.interrupts.requested} after step {state.done} of {total}; the checkpoint is "
                f"{self.path}; continue with: {self.resume_command}"
            )

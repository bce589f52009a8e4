"""What `longgen eval` measures: PATHs resolved to videos with what is known about them, and the frames read.

A PATH is
- a run directory of `longgen generate` (manifest.json beside the video; story.json, latents.safetensors and
  .hydra/overrides.yaml when present),
- a directory holding run directories (a multirun, `multirun/DATE/TIME/`; its jobs in job-number order), or
  a directory of .mp4 files,
- an .mp4 file (a `video.mp4` inside a run directory counts as that run directory).
Every PATH is checked before any video is read; problems are one-line UsageErrors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from longgen.errors import UsageError
from longgen.eval import seams


@dataclass
class Geometry:
    """Window plan of a run, in latent frames, and how latent frames map to video frames."""

    latent_length: int
    compression: int                 # video frames per latent frame after the first: frames = c·(L−1)+1
    window: int                      # latent frames per window
    windows: list[tuple[int, int]]   # [start, end) of each window

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Geometry | None":
        try:
            length, frames = int(manifest["latent_length"]), int(manifest["frames"])
            windows = [(int(w["start"]), int(w["end"])) for w in manifest["windows"]]
            window = int(manifest["window"])
        except (KeyError, TypeError, ValueError):
            return None
        if length < 2 or (frames - 1) % (length - 1):
            return None
        return cls(length, (frames - 1) // (length - 1), window, windows)

    def frames_for(self, latent_frames: int) -> int:
        return self.compression * (latent_frames - 1) + 1

    def latent_of(self, frame: int) -> int:
        """The latent frame a video frame decodes from (0 → 0, c·(f−1)+1 … c·f → f)."""
        return 0 if frame == 0 else (frame - 1) // self.compression + 1


@dataclass
class Target:
    video: Path
    label: str
    run_dir: Path | None = None          # eval.json goes here; None for a bare .mp4
    manifest: dict | None = None
    story: dict | None = None            # story.json as written by generate
    latents: Path | None = None
    overrides: list[str] = field(default_factory=list)
    collected: bool = False              # found in a directory of runs (a sweep): unreadable, it is left out

    @property
    def geometry(self) -> Geometry | None:
        return Geometry.from_manifest(self.manifest) if self.manifest else None


def job_order(path: Path) -> tuple:
    match = re.match(r"(\d+)", path.name)
    return (int(match.group(1)) if match else float("inf"), path.name)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not readable JSON ({exc}); regenerate the run or evaluate its video file") from exc


def run_target(run_dir: Path) -> Target:
    """The video of a `longgen generate` run directory and the facts written beside it."""
    manifest = _read_json(run_dir / "manifest.json")
    name = (manifest.get("outputs") or {}).get("video") or "video.mp4"
    video = run_dir / name
    if not video.is_file():
        raise UsageError(f"run directory {run_dir} has no video ({name} is missing); decode its latents first or give another run")
    story = _read_json(run_dir / "story.json") if (run_dir / "story.json").is_file() else None
    latents = run_dir / "latents.safetensors"
    overrides: list[str] = []
    saved = run_dir / ".hydra" / "overrides.yaml"
    if saved.is_file():
        import yaml

        overrides = [str(o) for o in (yaml.safe_load(saved.read_text(encoding="utf-8")) or [])]
    return Target(video=video, label=run_dir.name, run_dir=run_dir, manifest=manifest, story=story,
                  latents=latents if latents.is_file() else None, overrides=overrides)


def resolve(paths: list[str]) -> tuple[list[Target], list[Path], list[str]]:
    """(targets in order, the directories given that hold several runs, one line per run of such a directory that
    has no readable video: left out, as a sweep's failed job is). Duplicates are evaluated once."""
    if not paths:
        raise UsageError("nothing to evaluate: give run directories, multirun directories or .mp4 files, "
                         "e.g. `longgen eval multirun/2025-01-01/12-00-00`")
    targets, collections, seen, unreadable = [], [], set(), []
    for raw in paths:
        path = Path(str(raw)).expanduser()
        if not path.exists():
            raise UsageError(f"{raw} does not exist; give a run directory, a multirun directory or an .mp4 file")
        found = _resolve_one(path, raw, unreadable)
        if path.is_dir() and not (path / "manifest.json").is_file():
            collections.append(path)
        for target in found:
            key = target.video.resolve()
            if key not in seen:
                seen.add(key)
                targets.append(target)
    return targets, collections, unreadable


def _collected(run_dir: Path, unreadable: list[str]) -> Target | None:
    """A run found in a directory of runs, or None (its line in `unreadable`) where its video is missing."""
    try:
        return replace(run_target(run_dir), collected=True)
    except UsageError as exc:
        unreadable.append(f"{run_dir.name}: {exc}")
        return None


def _resolve_one(path: Path, raw: str, unreadable: list[str]) -> list[Target]:
    if path.is_file():
        if path.suffix.lower() != ".mp4":
            raise UsageError(f"{raw} is not a video: give an .mp4 file, a run directory or a multirun directory")
        if (path.parent / "manifest.json").is_file() and run_target(path.parent).video.resolve() == path.resolve():
            return [run_target(path.parent)]
        return [Target(video=path, label=path.stem)]
    if not path.is_dir():  # a device, a FIFO, a socket
        raise UsageError(f"{raw} is neither a file nor a directory; give a run directory, a multirun directory or an .mp4 file")
    if (path / "manifest.json").is_file():
        return [run_target(path)]
    runs = sorted((p for p in path.iterdir() if p.is_dir() and (p / "manifest.json").is_file()), key=job_order)
    if runs:
        return [t for t in (_collected(p, unreadable) for p in runs) if t is not None]
    videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".mp4")
    if videos:
        return [Target(video=p, label=p.stem) for p in videos]
    if (path / "checkpoint.safetensors").is_file():
        raise UsageError(f"{raw} is a run not finished yet (its checkpoint is kept, no video): finish it with "
                         f"`longgen resume {raw}`, then evaluate it")
    if (path / "sweep.json").is_file():
        raise UsageError(f"{raw} is a sweep with no finished job yet (see {path / 'sweep.json'}): evaluate it once "
                         f"some have finished")
    raise UsageError(f"{raw} holds no run directory (manifest.json + video) and no .mp4 file")


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a video as uint8 RGB [T, H, W, 3] and its frame rate."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3) for chunk in reader]
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not a video ffmpeg can read ({reason})") from exc
    if len(frames) < 2:
        raise UsageError(f"{path} has {len(frames)} frame(s); at least 2 are needed to measure a video")
    fps = float(meta.get("fps") or 0) or 8.0
    return np.stack(frames), fps


def read_latent_moves(path: Path, chunk: int = 16) -> np.ndarray | None:
    """The latent transition differences D [F] (`seams.transition_differences_from_latents`) of latents.safetensors
    (key `latents`, [F, C, H, W]), read `chunk` latent frames at a time so the latents are never held whole; None
    when unreadable or not 4-D."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as file:
            if "latents" not in file.keys():
                return None
            latents = file.get_slice("latents")
            shape = latents.get_shape()
            if len(shape) != 4 or shape[0] < 1:
                return None
            moves = [np.full(1, np.nan)]  # D[0] is undefined
            for start in range(0, shape[0] - 1, chunk):
                block = latents[start: min(shape[0], start + chunk + 1)]  # [≤ chunk + 1, C, H, W], one frame shared
                moves.append(seams.transition_differences_from_latents(block)[1:])
    except (OSError, ValueError, RuntimeError, SafetensorError):
        return None
    return np.concatenate(moves)


def probe_video(path: Path) -> None:
    """Fail with one line unless ffmpeg can decode at least the first frame of `path` (cheap; no full read)."""
    import imageio_ffmpeg

    reader = None
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        next(reader)
        next(reader)
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no frame decoded"
        raise UsageError(f"{path} is not a video ffmpeg can read ({reason})") from exc
    finally:
        if reader is not None:
            reader.close()

"""`longgen decode RUN_DIR|LATENTS.safetensors [KEY=VALUE ...]`: write the video again from saved latents.

For a run directory the latents are its `latents.safetensors`, or the final state in `checkpoint.safetensors`
when sampling finished but the video was not written; backbone and writer come from the run's saved config and
may be overridden (writer.*, backbone.device/dtype/vae_tiling/vae_norm/cpu_offload, model_path). For a latents file
(`[F, C, H, W]` under key `latents`, as generate writes it) the backbone is chosen as for generate
(`backbone=cogvideox-2b` by default) and the video goes to `out=DIR` (default: the file's folder); options that
decoding a file does not read (seed=, sampler=, ...) are refused, as a run directory refuses them. Only the VAE's
decode runs (the decode stage of generate); no sampling. An existing video is kept unless overwrite=true. A
multi-shot run directory is decoded take by take, as generate decodes it (a bare latents file is one take). Off a
terminal, a progress line comes every `progress_seconds` seconds as generate's do (the run's own setting or the
given one), so a long decode can be followed (scripts/memory_trace.py reads them).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from pathlib import Path

import torch
from omegaconf import OmegaConf

from longgen.backbones.face import Backbone
from longgen.build import build
from longgen.options import flag
from longgen.errors import UsageError, out_of_memory_as, user_errors
from longgen.overrides import check_group_choices, check_option_keys, path_first
from longgen.rundir import (
    CHECKPOINT,
    LATENTS,
    RunDirectory,
    apply_overrides,
    check_writable_dir,
    load_run_config,
    names_option,
    option_after_path,
    own_run_log,
    setup_logging,
)
from longgen.run.job import check_progress
from longgen.run.latent_space import check_latent_space, read_identity
from longgen.run.stages import progress_shown

log = logging.getLogger("longgen")

#: what decode may change in a run directory's saved config
DECODE_OPTIONS = ("writer", "model_path", "backbone.model_path", "backbone.device", "backbone.dtype",
                  "backbone.vae_tiling", "backbone.vae_norm", "backbone.cpu_offload", "overwrite", "progress_seconds")

#: what decode of a latents file reads (compose_for_file, run_decode): the backbone chosen as for generate with any
#: of its options (the size the latents were sampled at: backbone.height/width), where its weights are, the writer,
#: where the video goes, and the options a run directory's decode takes besides
FILE_OPTIONS = ("backbone", "model_path", "writer", "out", "overwrite", "progress_seconds")
#: FILE_OPTIONS as a user gives them
FILE_FORMS = ("backbone=NAME, backbone.KEY=…, model_path=DIR, writer=NAME, writer.KEY=…, out=DIR, overwrite=true, "
              "progress_seconds=N")

USAGE = """usage: longgen decode RUN_DIR [KEY=VALUE ...]
       longgen decode LATENTS.safetensors [backbone=NAME] [out=DIR] [KEY=VALUE ...]

Write the video again from saved latents without sampling (after a decode that failed, or with other writer
settings, e.g. writer.filename=video_crf10.mp4 writer.crf=10). In a run directory: {allowed}.
For a latents file: {file_options}.
An existing video is not replaced unless overwrite=true.
"""


def read_latents(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """[F, C, H, W] float32 from a latents file (key `latents`), and the record of the backbone that made them
    (longgen/run/latent_space.py; empty for a file written before longgen recorded it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if "latents" not in f.keys():
                raise ValueError(f"no `latents` tensor (keys: {', '.join(list(f.keys())[:5])})")
            latents = f.get_tensor("latents")
            record = read_identity(f.metadata())
    except Exception as exc:
        raise UsageError(f"{path} is not a latents file ({str(exc).splitlines()[0][:120]})") from None
    if latents.ndim != 4 or latents.shape[0] == 0:
        raise UsageError(f"{path}: latents must be [F, C, H, W] with F >= 1, got shape {list(latents.shape)}")
    latents = latents.float()
    if not torch.isfinite(latents).all():  # as generate: such latents are never written as a video
        raise UsageError(f"{path}: the latents hold NaN/inf values; no video is written from them")
    return latents, record


def run_latents(run_dir: Path, cfg, choices, scene=None) -> tuple[torch.Tensor, dict[str, str], Path]:
    """A run directory's final latents [F, C, H, W]: latents.safetensors, else a finished checkpoint; with the record
    of the backbone that made them and the file they came from."""
    from longgen.run.checkpoint import load_checkpoint

    if (run_dir / LATENTS).is_file():
        return (*read_latents(run_dir / LATENTS), run_dir / LATENTS)
    if not (run_dir / CHECKPOINT).is_file():
        raise UsageError(f"{run_dir} has neither {LATENTS} nor {CHECKPOINT}: rerun generate with save_latents=true")
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    if ckpt.state.done < ckpt.total and RunDirectory(run_dir).in_use():  # not stopped: still sampling
        raise UsageError(f"another longgen run is sampling in {run_dir} (step {ckpt.state.done} of {ckpt.total} "
                         f"so far): wait for it to finish; it writes the video itself")
    if ckpt.state.done < ckpt.total:
        raise UsageError(f"{run_dir}: sampling stopped after step {ckpt.state.done} of {ckpt.total}: "
                         f"finish it with `longgen resume {shlex.quote(str(run_dir))}`")
    sampler = scene.sampler if scene is not None else build(cfg.sampler, "sampler", choices.get("sampler"))
    return sampler.finish(ckpt.state)[0], ckpt.identity, run_dir / CHECKPOINT  # [F, C, H, W]


def scene_job(run_dir: Path, cfg, choices):
    """The planned job of a multi-shot run directory (its takes decode one by one), None for a single-shot run.
    Without its story.json, or with one that lost the shots its manifest lists, the takes are unknown: the video
    would be decoded as one take, across its cuts, so that is one line instead."""
    import json

    from longgen.run.job import plan_job
    from longgen.story import Story

    path = run_dir / "story.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no story.json: the run directory is incomplete (put the run's story.json "
                         f"back, or decode its {LATENTS} as a file with backbone=…)")
    story = Story.load(path)
    if story.multi_shot:
        return plan_job(cfg, run_dir, choices, story=story)
    manifest, takes = run_dir / "manifest.json", None
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no manifest (yet), or not one of ours
        takes = json.loads(manifest.read_text(encoding="utf-8")).get("takes")
    if takes:
        raise UsageError(f"{path} has no shots but {manifest} lists {len(takes)} takes: put the run's own "
                         f"story.json back (its takes decode one by one)")
    return None


def run_decode(target: Path, overrides: list[str]) -> dict:
    scene = None
    if target.is_dir():
        cfg, choices = load_run_config(target)
        if cfg.get("video") is not None:
            raise UsageError(extend_refusal(target, choices.get("backbone") or "NAME"))
        apply_overrides(cfg, overrides, DECODE_OPTIONS, "decode")
        if cfg.backbone.get("lora") is not None:
            cfg.backbone.lora = None  # only the VAE decodes: the run's LoRA files (transformer adapters) are not read
        out_dir = target
        scene = scene_job(target, cfg, choices)
        latents, record, source = run_latents(target, cfg, choices, scene)
    elif target.is_file():
        cfg, choices = compose_for_file(overrides)
        out_dir = Path(str(cfg.get("out") or target.parent)).expanduser()
        check_writable_dir(out_dir, "out")
        latents, record = read_latents(target)
        source = target
    else:
        raise UsageError(f"{target}: no such run directory or latents file")
    check_progress(cfg)  # as generate checks it (an override, or a run's own setting)
    flag("overwrite", cfg.get("overwrite", False))
    backbone: Backbone = scene.backbone if scene is not None else build(cfg.backbone, "backbone", choices.get("backbone"))
    writer = build(cfg.writer, "writer", choices.get("writer"))
    writer.check()
    check_latent_space(record, cfg.backbone, choices.get("backbone"), source,
                       None if target.is_file() else foreign_in_run(source, record))
    check_latent_shape(latents, backbone)
    if scene is None:  # the length options are generate's: here only the backbone can be changed
        backbone.check_length(latents.shape[0], fix="pick the backbone they were sampled with (backbone=…)")
    elif latents.shape[0] != scene.length:
        raise UsageError(f"{target}: the latents hold {latents.shape[0]} frames but the run's shots take {scene.length}")
    check_video_kept(out_dir, writer.filename, cfg)  # before the lock: a refused decode leaves the directory as it was
    rundir = RunDirectory(out_dir).claim()
    try:
        check_video_kept(out_dir, writer.filename, cfg)  # again under the lock: another decode may have written it
        own_run_log(out_dir)
        backbone.check_available()
        no_room = (f"out of GPU memory while decoding {target} (nothing was written; the latents are untouched): "
                   f"free GPU memory, or add backbone.vae_tiling=true (or backbone.cpu_offload=true)")
        try:
            with out_of_memory_as(no_room):
                backbone.load()
                with progress_shown(cfg) as progress:  # off a terminal: a line every progress_seconds
                    z = latents[None].to(backbone.device)  # [1, F, C, H, W]
                    if scene is not None:  # multi-shot: every take on its own (hard cuts)
                        chunks, total = scene.decode_stream(z), scene.frames
                    else:
                        chunks, total = backbone.decode_stream(z), backbone.frames_for(latents.shape[0])
                    video = writer.write(chunks, out_dir, backbone.fps, total, progress)
        finally:
            backbone.release()
    finally:
        rundir.release()
    log.info("wrote %s (%d frames at %d fps)", video["path"], video["frames"], video["fps"])
    return video


def foreign_in_run(source: Path, record: dict[str, str]) -> str:
    """What to do when a run directory's latents were made by another backbone than its config names: they are not
    this run's; a latents file still decodes on its own with the backbone that made it."""
    fix = f"they are not this run's: put the run's own {source.name} back"
    if source.name == LATENTS and record.get("backbone"):
        fix += (f", or decode them as a file: `longgen decode {shlex.quote(str(source))} "
                f"backbone={record['backbone']} out=DIR`")
    return fix


def check_video_kept(out_dir: Path, filename: str, cfg) -> None:
    """An existing video is replaced only with overwrite=true."""
    if (out_dir / filename).exists() and not cfg.get("overwrite", False):
        raise UsageError(f"{out_dir / filename} exists: pass overwrite=true to replace it, or "
                         f"writer.filename=OTHER.mp4")


def extend_refusal(run_dir: Path, backbone: str) -> str:
    """Why decode does not take a `longgen extend` run directory, and what to do instead: an unfinished run is
    resumed; a finished one already holds its videos, and its saved latents (history and new frames) decode as a
    file."""
    where = shlex.quote(str(run_dir))
    head = (f"{run_dir} is a `longgen extend` run: decode takes a `longgen generate` run directory or a latents "
            f"file, and extend writes its own two videos")
    if (run_dir / CHECKPOINT).is_file():
        return f"{head}; this one is unfinished: finish it with `longgen resume {where}`"
    if (run_dir / LATENTS).is_file():
        return (f"{head} (already written here); its latents decode as a file into one video of the kept history "
                f"and the new part (not the whole input): "
                f"`longgen decode {shlex.quote(str(run_dir / LATENTS))} backbone={backbone} out=DIR` (with the run's "
                f"backbone.height/width if it changed them)")
    return (f"{head} (already written here); it kept no {LATENTS} to decode again (extend with save_latents=true "
            f"keeps them)")


def check_latent_shape(latents: torch.Tensor, backbone: Backbone) -> None:
    """Latents [F, C, h, w] the backbone cannot decode are one line naming the backbone option to change: the
    backbone, and where only the frame size differs (same channels) the pixel size they were sampled at."""
    have, want = tuple(latents.shape[1:]), tuple(backbone.latent_shape)
    if have == want:
        return
    scale = backbone.height // want[1] if want[1] else 0  # pixels per latent row (the VAE's spatial compression)
    size = (f" at their size (backbone.height={have[1] * scale} backbone.width={have[2] * scale})"
            if scale and have[0] == want[0] else "")
    raise UsageError(f"the latents' frames are {list(have)} but {backbone.label} expects {list(want)}: pick the "
                     f"backbone they were sampled with (backbone=…){size}")


def compose_for_file(overrides: list[str]):
    """generate's config composed with the given overrides (backbone=…, writer.…, out=…), as Hydra would."""
    from hydra import compose, initialize_config_module

    check_file_options(overrides)
    extra = [o for o in overrides if o.startswith("out=")]
    rest = [o for o in overrides if not o.startswith("out=")]
    problem = check_group_choices(rest) or check_option_keys("generate", rest)
    if problem:
        raise UsageError(problem)
    try:
        with initialize_config_module("longgen.conf", version_base="1.3"):
            cfg = compose("generate", overrides=rest + [f"+{o}" for o in extra], return_hydra_config=True)
    except Exception as exc:  # Hydra's own errors (an override it cannot parse, a value of the wrong type, ...)
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    choices = dict(cfg.hydra.runtime.choices)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    return cfg, {k: str(v) for k, v in choices.items()}


def check_file_options(overrides: list[str]) -> None:
    """Options that decoding a latents file never reads (seed=, sampler=, +foo=, hydra.run.dir=…) were composed
    and silently ignored: one line naming them and the options that apply, as a run directory's decode refuses
    what it cannot change (rundir.apply_overrides)."""
    unused = []
    for item in overrides:
        key, _ = option_after_path(item, "decode")
        if not names_option(key, FILE_OPTIONS):
            unused.append(key)
    if unused:
        raise UsageError(f"`longgen decode` of a latents file does not use {', '.join(unused)}: drop "
                         f"{'it' if len(unused) == 1 else 'them'}; the options that apply: {FILE_FORMS}")


def main(argv: list[str] | None = None) -> None:
    target, overrides = path_first(argv, USAGE.format(allowed=", ".join(DECODE_OPTIONS), file_options=FILE_FORMS))
    with user_errors():
        setup_logging(target if target.is_dir() else None, "decode")
        run_decode(target, overrides)

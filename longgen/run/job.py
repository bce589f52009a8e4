"""Stage 1 of every run, plan: the job — sampler, backbone and writer built from their config groups, every
option and number checked, the story resolved (split from a scenario when asked), the length and window plan
worked out — before anything loads or is written. Also what the commands share around it: writing the run's
`.hydra/` config once the directory is claimed, discarding a directory an input error left unused, and the message
that hands a job to the other ranks (longgen/run/follower.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from longgen.backbones.face import Backbone
from longgen.backbones.lora import file_records
from longgen.build import build
from longgen.errors import UsageError
from longgen.noise import GaussianNoise
from longgen.options import check_latent_budget, flag, number, whole
from longgen.parallel.units import Units
from longgen.run.checkpoint import Checkpoint, digest
from longgen.run.images import ImagePlan, plan_images
from longgen.run.latent_space import latent_identity
from longgen.run.shots import (
    ShotPlan,
    check_single_shot_options,
    check_takes_routed,
    decode_takes,
    plan_scene,
)
from longgen.rundir import LOCK_NAME, OUTPUTS, discard_if_unused, made_by_this_command, write_text
from longgen.samplers.base import Sampler
from longgen.story import Story, check_text_limit, cut, without_cut_markers
from longgen.windows import Clock, EventPlan, WindowPlan, latent_length

log = logging.getLogger("longgen")

#: most windows a video may have (a 1-minute CogVideoX video has 28; this bound keeps plans and manifests sane)
MAX_WINDOWS = 10_000


# ---------------------------------------------------------------------------------------------------- stage 1: plan
@dataclass
class Job:
    """Everything decided before any weights load."""

    cfg: DictConfig
    choices: dict[str, Any]
    out_dir: Path
    sampler: Sampler
    backbone: Backbone
    writer: Any
    length: int
    plan: WindowPlan
    given_story: Story  # as the user gave it (or the splitter wrote it): story.json
    story: Story  # as the windows use it (without the global description when use_global_prompt=false)
    use_global: bool
    stripped: int
    timings: dict[str, float] = field(default_factory=dict)
    world: Units = field(default_factory=Units)  # this process's share of the work (distributed.py)
    noise: Any = field(default_factory=GaussianNoise)  # the initial-noise option (noise/ group, longgen/noise.py)
    shots: ShotPlan | None = None  # multi-shot story: takes, shots and their frames (longgen/run/shots.py)
    events: EventPlan | None = None  # single-shot story: each window's event, the segments' edges (story.event_plan)
    images: ImagePlan | None = None  # key images and the windows they condition (longgen/run/images.py)

    def local_index(self, start: int, size: int) -> int:
        if self.shots is not None:  # the shot (one local prompt each) whose segment holds the window's centre
            return self.shots.shot_at(start + size / 2)
        if self.events is not None:  # the event whose (planned) segment holds the window's centre
            return self.events.window_event(start, size)
        return self.story.prompt_index_at(start + size / 2, self.length)

    def clock(self) -> Clock:
        """Seconds ↔ latent frames of the story's events (from the video's start)."""
        return Clock(self.backbone.fps, self.backbone.temporal_compression)

    def event_table(self) -> list[dict] | None:
        """The plan of a single-shot story, one entry per event: its windows (indices into `windows`), latent and
        video frames [first, end) and seconds [start, end) as planned (and as the story gave them, for a timed
        story: windows are whole, so the planned times are the nearest the window grid allows), all counted from
        the events' origin (extend: the join); None for a multi-shot story."""
        if self.events is None:
            return None
        clock = self.clock()
        given = self.story.timeline or [None] * len(self.events.edges)
        table, left = [], 0.0
        for k, (right, times) in enumerate(zip(self.events.edges, given)):
            table.append({"event": k, "windows": self.events.windows_of(k),
                          "latent_frames": [round(left, 3), round(right, 3)],
                          "frames": [round(clock.frame_at(left)), round(clock.frame_at(right))],
                          "seconds": [round(clock.seconds(left), 3), round(clock.seconds(right), 3)],
                          **({"given_seconds": list(times)} if times else {})})
            left = right
        return table

    def window_map(self) -> list[dict]:
        if self.shots is not None:
            return self.shots.window_map()
        return [{"start": s, "end": s + self.plan.window, "local_prompt": self.local_index(s, self.plan.window)}
                for s in self.plan.starts]

    @property
    def frames(self) -> int:
        """Video frames: the latent decoded at once, or each take of a multi-shot story on its own."""
        return self.shots.frames if self.shots is not None else self.backbone.frames_for(self.length)

    def decode_stream(self, latents: torch.Tensor):
        """uint8 frame chunks [f, H, W, 3] of latents [1, L, C, H, W], cut at every take of a multi-shot story."""
        if self.shots is not None:
            return decode_takes(self.backbone, latents, self.shots)
        return self.backbone.decode_stream(latents)

    def story_hash(self) -> str:
        return digest(self.story.to_dict())

    def latent_identity(self) -> dict[str, str]:
        """What every latents and checkpoint file of the run records about its backbone (its latent space:
        longgen/run/latent_space.py)."""
        return latent_identity(self.cfg.backbone, self.choices.get("backbone"), self.backbone.latent_shape)

    def inputs(self) -> dict:
        """Files the run reads besides the story, recorded in every checkpoint (extend: its input video; key
        images; LoRA files)."""
        inputs = {"images": self.images.inputs()} if self.images is not None else {}
        if loras := getattr(self.backbone, "loras", None):  # LoRA files: resume refuses one whose bytes changed
            inputs["loras"] = file_records(loras)
        return inputs


def check_top_level(cfg: DictConfig) -> None:
    """Numbers and switches of conf/generate.yaml, as the command line delivers them."""
    whole("seed", cfg.seed, 0, 2**63 - 1)
    if cfg.get("num_windows") is not None:
        whole("num_windows", cfg.num_windows, 1, MAX_WINDOWS)
    if cfg.get("length_factor") is not None:
        number("length_factor", cfg.length_factor, 1.0, float(MAX_WINDOWS))
    if cfg.get("latent_frames") is not None:
        whole("latent_frames", cfg.latent_frames, 1, MAX_WINDOWS * 100)
    if cfg.get("num_prompts") is not None:
        whole("num_prompts", cfg.num_prompts, 1, 1000)
    for name in ("save_latents", "use_global_prompt", "overwrite", "eval"):
        flag(name, cfg.get(name, False))
    whole("checkpoint_every", cfg.checkpoint_every, 0)
    if cfg.get("checkpoint_seconds") is not None:
        number("checkpoint_seconds", cfg.checkpoint_seconds, 0.0, lo_open=True)
    check_progress(cfg)
    whole("preview_every", cfg.preview_every, 0)
    number("preview_scale", cfg.preview_scale, 0.0, 1.0, lo_open=True)
    if cfg.get("gpus", 1) != "all":
        whole("gpus", cfg.get("gpus", 1), 1, 4096)


def check_progress(cfg: DictConfig) -> None:
    """progress_every / progress_seconds (generate's, resume's and decode's): whole steps, seconds >= 0."""
    whole("progress_every", cfg.get("progress_every", 0), 0)
    if cfg.get("progress_seconds") is not None:
        number("progress_seconds", cfg.progress_seconds, 0.0, note=" (0 or null: no line by time)")


def resolve_story(cfg: DictConfig, choices: dict[str, Any] | None = None, split: bool = True) -> Story | None:
    """The story from prompt=, story= or scenario= (split by the configured splitter; with split=False only checked
    for readability and None returned, so that validating a sweep asks no LLM)."""
    given = [k for k in ("prompt", "prompt_file", "story", "scenario") if cfg.get(k) not in (None, "")]
    if len(given) > 1:
        raise UsageError(f"give only one of prompt=…, prompt_file=…, story=… or scenario=… (got {' and '.join(given)})")
    if not given:
        raise UsageError('nothing to generate: pass prompt="…", prompt_file=prompt.txt, story=path/to/story.json or scenario=path/to/scenario.txt num_prompts=N')
    if cfg.get("num_prompts") is not None and given[0] != "scenario":
        raise UsageError("num_prompts=… is the number of local prompts to split a scenario=… into; drop it or pass scenario=")
    if cfg.get("multi_shot") and given[0] != "scenario":
        raise UsageError("multi_shot=true asks the splitter to write shots from a scenario=…; a story file says itself "
                         "whether it has shots: drop multi_shot=true")
    if given[0] == "prompt":
        return Story.single(str(cfg.prompt))
    if given[0] == "prompt_file":
        return Story.from_prompt_file(cfg.prompt_file)
    if given[0] == "scenario":
        if not split:
            path = Path(str(cfg.scenario)).expanduser()
            if not path.is_file():
                raise UsageError(f"scenario={cfg.scenario}: no such file")
            return None
        from longgen.splitters.scenario import split_scenario_file

        return split_scenario_file(cfg.splitter, (choices or {}).get("splitter"), str(cfg.scenario), cfg.num_prompts,
                                   shots=bool(cfg.get("multi_shot", False)))
    if isinstance(cfg.story, DictConfig):  # the story itself, as the Python API passes it (longgen/api.py)
        return Story.from_dict(OmegaConf.to_container(cfg.story, resolve=True), where="story")
    return Story.load(str(cfg.story))


def check_prompt_lengths(story: Story, backbone: Backbone, negative_prompt: str, sampler: Sampler | None = None,
                         warn: bool = True) -> None:
    """Every prompt the text encoder will see against the backbone's token limit (see story.check_text_limit), and
    the local prompts against what `sampler` needs of them (e.g. DiTCtrl's subject tokens inside each prompt).
    `warn=False` (the check again after loading): refusals only, the plan's warnings were logged already."""
    prompts = [(f"local prompt {i}", without_cut_markers(p)) for i, p in enumerate(story.local_prompts, 1)]
    prompts.append(("negative_prompt", negative_prompt))
    strict = not getattr(backbone, "random_weights", False)
    # both checks run every time (a refusal is an exception); only their warnings depend on `warn`
    warnings = check_text_limit(prompts, backbone.count_tokens, backbone.max_text_tokens, backbone.label, strict)
    warnings += backbone.other_text_limits(prompts, strict)
    if warn:
        for warning in warnings:
            log.warning(warning)
    if sampler is not None:
        sampler.check_prompts([text for _, text in prompts[:-1]], backbone)


@dataclass
class Parts:
    """What the config groups build: the sampler, the backbone (nothing loaded), the writer and the initial noise."""

    sampler: Sampler
    backbone: Backbone
    writer: Any
    noise: Any


def build_parts(cfg: DictConfig, choices: dict[str, Any]) -> Parts:
    """Build every group's object, each checking its own options (a typo fails here, in about a second)."""
    sampler = build(cfg.sampler, "sampler", choices.get("sampler"))
    backbone = build(cfg.backbone, "backbone", choices.get("backbone"))
    writer = build(cfg.writer, "writer", choices.get("writer"))
    # runs made before the noise group existed have none in their saved config: they used Gaussian noise
    noise = build(cfg.noise, "noise", choices.get("noise")) if cfg.get("noise") is not None else GaussianNoise()
    noise.check(backbone.window)
    sampler.check_denoiser(backbone)  # e.g. FIFO on a transformer without a timestep per frame
    return Parts(sampler, backbone, writer, noise)


def planned_length(cfg: DictConfig, parts: Parts) -> int:
    """The video's latent length L from num_windows, length_factor or latent_frames (whichever the config sets),
    checked against the memory budget and the backbone's VAE."""
    backbone = parts.backbone
    length = latent_length(
        backbone.window,
        parts.sampler.stride,
        backbone.temporal_compression,
        num_windows=cfg.num_windows,
        length_factor=cfg.get("length_factor"),
        latent_frames=cfg.get("latent_frames"),
        native_window=backbone.native_window,
    )
    check_latent_budget(length, backbone.latent_shape, backbone.label)
    backbone.check_length(length)
    parts.sampler.check_length(length, backbone)  # e.g. FreeLong++ bands against the video's length
    return length


def plan_job(cfg: DictConfig, out_dir: Path, choices: dict[str, Any], story: Story | None = None,
             split: bool = True) -> Job | None:
    """Stage 1. `story` given (resume): use it instead of the config's prompt/story/scenario. With split=False
    (sweep validation) a scenario is not split and None is returned after every other check."""
    check_top_level(cfg)
    parts = build_parts(cfg, choices)
    sampler, backbone, writer, noise = parts.sampler, parts.backbone, parts.writer, parts.noise
    length = planned_length(cfg, parts)
    plan = sampler.plan(length, backbone.window)
    writer.check()
    if story is None:
        if cfg.get("scenario") not in (None, "") and type(cfg.get("num_prompts")) is int:
            backbone.check_events(int(cfg.num_prompts))  # the split makes exactly N events: check before it runs
            if not cfg.get("multi_shot"):
                check_routes_events(sampler, int(cfg.num_prompts), choices.get("sampler"))
        story = resolve_story(cfg, choices, split)
        if story is None:
            backbone.check_available()
            return None
    use_global = cfg.get("use_global_prompt", True)
    given = used = story  # given: story.json; story/used: what the windows show
    stripped, shots, events = 0, None, None
    if story.multi_shot:  # LCT scene: takes between cuts, one prompt per shot (longgen/run/shots.py)
        check_takes_routed(story, sampler, choices.get("sampler"))
        shots, sampler, used = plan_scene(story, cfg, sampler, backbone, length, noise)
        length, plan = shots.length, shots.window_plan()
        check_latent_budget(length, backbone.latent_shape, backbone.label)
    else:
        check_single_shot_options(cfg)
        story = used = one_prompt_story(given, sampler, choices.get("sampler"))
        plan_for = lambda n: sampler.plan(backbone.window + sampler.stride * (n - 1), backbone.window)  # noqa: E731
        clock = Clock(backbone.fps, backbone.temporal_compression)
        events = story.event_plan(plan, clock, plan_for)
        if note := story.timeline_note(length, clock, plan_for):
            log.info(note)
        if not use_global:  # SynCoS Table 2 ablation "w/o structured prompt", for every sampler
            used, stripped = story.without_global()
            log.info("use_global_prompt=false: global description removed from %d of %d local prompt(s)",
                     stripped, len(used.local_prompts))
        elif warning := story.missing_global_warning():  # local prompts without the global description
            log.warning(warning)
    images = plan_images(cfg, choices, story, plan, backbone, sampler,  # by the windows' events (as local_index)
                         lambda start, size: events.window_event(start, size) if events is not None
                         else story.prompt_index_at(start + size / 2, length))
    check_prompt_lengths(used, backbone, cfg.negative_prompt or "", sampler)
    backbone.check_events(used.num_events)  # a LoRA scale per event: one per event of the story
    backbone.check_available()  # missing weights: one line naming the model and model_path=, before any work
    job = Job(cfg, dict(choices), Path(out_dir), sampler, backbone, writer, length, plan, given, used, use_global,
              stripped, noise=noise, shots=shots, events=events, images=images)
    log_event_plan(job)
    return job


def check_routes_events(sampler: Sampler, events: int, name: Any) -> None:
    """A single-shot story of several `events` on a sampler that shows one prompt over the whole video (direct,
    freelong) would show only one of them: one line naming the reason and what to change (not the window count,
    which is 1 there for any num_windows). Checked before a scenario is split, too."""
    reason = sampler.single_prompt_reason
    if reason is None or events < 2 or getattr(sampler, "several_events", "refuse") == "global":
        return
    raise UsageError(f"sampler={name} {reason}: a story of {events} local prompts cannot show each of them; "
                     f"use a windowed sampler (e.g. sampler=syncos, sampler=gen-l-video), a story of one event "
                     f"(prompt=...), or sampler.several_events=global (the story's global prompt over the whole video)")


def one_prompt_story(story: Story, sampler: Sampler, name: Any) -> Story:
    """The story a sampler shows: a one-prompt sampler refuses a story of several events (check_routes_events) unless
    `several_events=global`, which makes it one event under its global prompt (said once at start; story.json keeps
    the story as given); any other story as it is."""
    check_routes_events(sampler, story.num_events, name)
    if sampler.single_prompt_reason is None or story.num_events < 2:
        return story
    log.info("sampler=%s shows one prompt over the whole video: the story's global prompt, not its %d local prompts "
             "(several_events=global)", name, story.num_events)
    return story.as_global_event()


#: events whose plan is logged one line each at start; the manifest lists them all
LOGGED_EVENTS = 20


def log_event_plan(job: Job) -> None:
    """The plan of a story of several events, one line each (at most LOGGED_EVENTS): its windows, video frames and
    seconds, and the start of its prompt after the global description. Frames and seconds count from the events'
    origin, which a line before them names when it is not the video's start (extend's join)."""
    table = job.event_table()
    if table is None or len(table) < 2:
        return
    if job.events.origin:
        log.info("the new part's events (frames and seconds from the join, sampled latent frame %g):",
                 job.events.origin)
    glob = job.story.global_prompt.strip()
    if len(table) > LOGGED_EVENTS:
        log.info("the first %d of %d events (manifest.json `events` lists them all):", LOGGED_EVENTS, len(table))
    for row, prompt in zip(table[:LOGGED_EVENTS], job.story.local_prompts):
        event = prompt.strip()[len(glob):].lstrip(" ,;:.-。，；：、") if glob and prompt.strip().startswith(glob) else prompt
        windows = row["windows"]
        span = f"{windows[0] + 1}" if len(windows) == 1 else f"{windows[0] + 1}-{windows[-1] + 1}"
        log.info("event %d: window%s %s of %d, frames %d-%d, %.2f-%.2f s: %s", row["event"] + 1,
                 "s" if len(windows) > 1 else "", span, job.plan.count, row["frames"][0], row["frames"][1] - 1,
                 *row["seconds"], cut(" ".join((event or prompt).split()), 50))


def write_run_config(out_dir: Path, cfg: DictConfig, hc: Any | None) -> None:
    """.hydra/config.yaml (+ hydra.yaml, overrides.yaml), as Hydra writes them, once the directory is ours."""
    target = out_dir / ".hydra"
    target.mkdir(exist_ok=True)
    write_text(target / "config.yaml", OmegaConf.to_yaml(cfg))
    if hc is not None:
        write_text(target / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})))
        overrides = OmegaConf.to_container(hc.overrides.task, resolve=False)  # a prompt's `\${` keeps its escape
        write_text(target / "overrides.yaml", OmegaConf.to_yaml(overrides))


#: what a run writes when it starts (run_generate, before the model loads), besides its log and outputs
STARTED = (".hydra", "story.json", "preview.jpg", LOCK_NAME)


def discard_unfinished_start(out_dir: Path, video_name: str) -> None:
    """After an input error found once the run had started but before it kept anything (a LoRA that does not fit
    the loaded model, a subject token in a prompt's padding once the tokenizer counts it): remove what the start
    wrote (STARTED), then the directory as discard_if_unused does. Only in a directory this command made (a folder
    that existed before may hold the user's own story.json); a run with anything to continue or show (a checkpoint,
    latents, a manifest, the video) is left whole."""
    if not made_by_this_command(out_dir) or any((out_dir / name).exists() for name in (video_name, *OUTPUTS)):
        return
    shutil.rmtree(out_dir / ".hydra", ignore_errors=True)
    for name in STARTED[1:]:
        (out_dir / name).unlink(missing_ok=True)
    discard_if_unused(out_dir)


def job_message(job: Job, resume: Checkpoint | None = None) -> dict:
    """What the other ranks need to run this job (distributed.run_follower_job): everything resolved here."""
    return {
        "cfg": OmegaConf.to_container(job.cfg, resolve=True),
        "choices": dict(job.choices),
        "out_dir": str(job.out_dir),
        "story": job.given_story.to_dict(),
        "resume": resume,
    }

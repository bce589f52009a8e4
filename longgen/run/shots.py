"""Multi-shot scenes, tuning-free: the capabilities of LCT (Guo et al. 2025, "Long Context Tuning for Video
Generation", ../shared/papers/lct.md) on a single-shot model, without its training.

What a multi-shot story is (LCT §3.2.1; parsed and validated in longgen/story.py): characters ("Character ID:
description"), an environment and a story (together LCT's global prompt), and a list of per-shot prompts that name
characters as "Character ID". A shot whose prompt carries LCT's mark "[SHOT CUT]" starts with a hard cut; a shot
without it continues the previous one smoothly (LCT builds such shots from sub-segments of single-shot videos).

How it is sampled here:
- Takes. The shots are grouped into *takes*: a take starts at the first shot and at every shot with a cut. Each
  take is its own latent segment, sampled by the configured long-video sampler (direct, gen-l-video, syncos, glc)
  as if it were a video of its own: its windows never leave it, so no window ever spans a cut, and it is decoded by
  the VAE on its own (`decode_takes`), so the causal decoder carries nothing across the cut either — the video has
  real hard cuts. Within a take of several shots the windows get the prompt of the shot whose segment holds their
  centre, exactly as the events of a single-shot story (SynCoS §3.3).
- Prompts (`shot_prompts`). A single-shot model does not know "Character 1", so every reference is replaced by
  that character's description; then the environment and story (the rest of LCT's global prompt) follow, so every
  shot carries the shared description, as SynCoS' local prompts carry its global one.
- Lengths (`plan_shots`). Either every shot's number of windows is given (`shots.windows`), or the video's length
  (num_windows / length_factor / latent_frames, as for a single-shot video) is shared among the takes by the
  story's durations, each take's share rounded to whole windows on the sampler's stride grid (at least one window)
  so that it decodes on its own (odd lengths on CogVideoX).
- Noise. Take k draws its initial noise and every random number of its sampler from its own generator, seeded
  with `seed` for the first take and a seed derived from (seed, k) for the others (`take_seed`, recorded in the
  manifest). So, with cross-shot attention off, every take is bit for bit the single-shot video
  `longgen generate seed=<its seed> latent_frames=<its length> prompt=<its shot prompt>` (one-shot takes), and
  shots are generated independently.
- Joint denoising and cross-shot attention (`ShotsSampler`). All takes step through the same denoising loop, step
  i of every take before step i + 1 of any. With `shots.cross_attention = r > 0`, before each step the reference
  take's first window is run once at that step's timestep and its attention keys and values are kept
  (longgen/backbones/shot_attention.py); during the step every other take's attention also sees a share r of those
  reference tokens, each with the positional encoding of its own shot (RoPE is applied to the keys before they are
  kept). This is the tuning-free counterpart of LCT's scene-level full attention (§3.2.2): StoryDiffusion's
  consistent self-attention (Zhou et al. 2024, §3.1) with a reference shot instead of the other images of a batch,
  which is also GLC-Diffusion's anchor idea (ABAM, Eq. 10) applied across shots instead of windows. The reference
  take itself is sampled exactly as alone.

The manifest records the shot map (`shots`: shot → take → latent frames → video frames → prompt) and the takes
(latent and video ranges, seeds, windows).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from longgen.backbones.face import Backbone
from longgen.errors import UsageError
from longgen.noise import GaussianNoise
from longgen.options import flag, number, whole
from longgen.samplers.base import Sampler, SamplerState, SamplingRun, guidance_branches
from longgen.story import CHARACTER_REF, SENTENCE_ENDS, Story, full_stop, refers_to_character
from longgen.windows import WindowPlan

log = logging.getLogger("longgen")

#: most windows a single shot may be given with shots.windows
MAX_SHOT_WINDOWS = 10_000


# ---------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ShotOptions:
    """conf/generate.yaml `shots:`."""

    windows: tuple[int, ...] | int | None = None  # windows per shot (one number for all, or one per shot)
    cross_attention: float = 0.0  # share of the reference take's video tokens other takes attend to; 0: off
    reference: int = 1  # the shot (1-based) whose take is the reference
    scene_prompt: bool = True  # append environment and story to every shot prompt (top-level use_global_prompt)

    @classmethod
    def from_config(cls, node: Any, scene_prompt: bool = True) -> "ShotOptions":
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        node = dict(node or {})
        unknown = set(node) - {"windows", "cross_attention", "reference"}
        if unknown:
            raise UsageError(f"shots has no option {sorted(unknown)[0]!r}; its options are: windows, cross_attention, reference")
        windows = node.get("windows")
        if windows is not None:
            if isinstance(windows, (list, tuple)):
                if not windows:
                    raise UsageError("shots.windows=[] is empty: give one window count per shot, one number for every shot, or null")
                windows = tuple(whole(f"shots.windows[{i}]", w, 1, MAX_SHOT_WINDOWS) for i, w in enumerate(windows))
            else:
                windows = whole("shots.windows", windows, 1, MAX_SHOT_WINDOWS)
        strength = number("shots.cross_attention", node.get("cross_attention", 0.0), 0.0, 1.0)
        reference = whole("shots.reference", node.get("reference", 1), 1)
        return cls(windows, strength, reference, flag("use_global_prompt", scene_prompt))


def take_seed(seed: int, take: int) -> int:
    """The seed of take `take`: `seed` itself for the first take, else 63 bits of SHA-256("longgen-take:seed:take")
    (independent streams for the takes, and two runs with neighbouring seeds share no take's noise)."""
    if take == 0:
        return int(seed)
    digest_ = hashlib.sha256(f"longgen-take:{int(seed)}:{take}".encode()).digest()
    return int.from_bytes(digest_[:8], "big") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------------- prompts
def _substitute(text: str, characters: dict[str, str]) -> str:
    """`text` with every "Character ID" replaced by that character's description — its later mentions in the same
    text definite ("a tall woman …" → "the tall woman …") — capitalised at a sentence start."""
    seen: set[str] = set()

    def repl(match) -> str:
        if not refers_to_character(match, characters):  # "the character walks": prose, kept as written
            return match.group(0)
        cid = match.group(1)
        desc = characters[cid].strip().rstrip(".")
        if cid in seen:
            desc = re.sub(r"^(?:a|an)\s+", "the ", desc, flags=re.I)
        seen.add(cid)
        before = text[: match.start()].rstrip()
        if not before or before[-1] in SENTENCE_ENDS:
            desc = desc[:1].upper() + desc[1:]
        return desc

    return CHARACTER_REF.sub(repl, text)


def _sentence(text: str) -> str:
    """`text` as a sentence: capitalised, ending in a full stop (or its own ! or ?)."""
    text = text.strip()
    return full_stop(text[:1].upper() + text[1:])


def shot_prompts(story: Story, scene: bool = True) -> list[str]:
    """The text prompt of every shot of a multi-shot story: the shot's text with characters substituted, then (with
    `scene`) the environment and the story — LCT's per-shot prompt plus its global prompt, written for a model that
    knows no character ids."""
    chars = story.characters or {}
    tail = [_sentence(x) for x in (story.environment, story.story) if x and scene]
    return [" ".join([_sentence(_substitute(shot.prompt, chars)), *tail]) for shot in story.shots]


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Take:
    """One continuous latent segment: shots without a cut between them."""

    index: int
    start: int  # first latent frame in the whole latent
    length: int  # latent frames
    shots: tuple[int, ...]  # shot indices (0-based)
    weights: tuple[float, ...]  # relative lengths of its shots
    seed: int
    windows: WindowPlan  # the sampler's window plan over this take (take coordinates)

    @property
    def end(self) -> int:
        return self.start + self.length

    def story(self, prompts: Sequence[str]) -> Story:
        """The take as a single-shot story: its shots are the events (their prompts, their relative lengths)."""
        texts = [prompts[k] for k in self.shots]
        if len(texts) == 1:
            return Story.single(texts[0])
        return Story(global_prompt="", local_prompts=texts, durations=list(self.weights))

    def shot_index_at(self, position: float) -> int:
        """Index (into `shots`) of the shot whose segment holds `position` (take coordinates, latent frames), by
        the rule windows follow for their prompt (Story.prompt_index_at)."""
        if len(self.shots) == 1:
            return 0
        return self.story(["-"] * (max(self.shots) + 1)).prompt_index_at(position, self.length)

    def shot_bounds(self) -> list[tuple[int, int]]:
        """Latent frames [a, b) (take coordinates) of each of its shots: the frames whose centre lies in the shot's
        segment. Segments are consecutive, so each shot's frames are one run ((a, a) when it has none)."""
        owner = [self.shot_index_at(f + 0.5) for f in range(self.length)]
        bounds = []
        for k in range(len(self.shots)):
            mine = [f for f, o in enumerate(owner) if o == k]
            bounds.append((mine[0], mine[-1] + 1) if mine else (0, 0))
        return bounds


@dataclass
class ShotPlan:
    """Where every shot and take lies in the latent (the concatenation of the takes) and in the video."""

    takes: list[Take]
    prompts: list[str]  # prompt of every shot
    cuts: list[bool]  # whether shot k starts with a cut
    window: int  # the backbone's window (latent frames)
    frames_for: Callable[[int], int] = field(repr=False, default=lambda n: n)

    @property
    def length(self) -> int:
        return sum(t.length for t in self.takes)

    @property
    def frames(self) -> int:
        """Video frames: each take decodes on its own."""
        return sum(self.frames_for(t.length) for t in self.takes)

    def take_of_shot(self, shot: int) -> Take:
        return next(t for t in self.takes if shot in t.shots)

    def shot_at(self, position: float) -> int:
        """The shot whose segment holds latent position `position` of the whole latent (a window's centre)."""
        take = next((t for t in self.takes if position < t.end), self.takes[-1])
        return take.shots[take.shot_index_at(position - take.start)]

    def window_plan(self) -> WindowPlan:
        """The windows of all takes in whole-latent coordinates, at the backbone's window size (for previews and
        logs; a take sampled as one longer window, sampler=direct, is shown as its first window)."""
        starts = []
        for take in self.takes:
            inner = take.windows.starts if take.windows.window == self.window else (0,)
            starts += [take.start + s for s in inner]
        return WindowPlan(self.length, self.window, tuple(starts))

    def window_map(self) -> list[dict]:
        """manifest `windows`: every sampling window in whole-latent coordinates with its shot and take."""
        out = []
        for take in self.takes:
            w = take.windows
            for s in w.starts:
                start = take.start + s
                out.append({"start": start, "end": start + w.window, "local_prompt": self.shot_at(start + w.window / 2),
                            "take": take.index})
        return out

    def video_offset(self, take: Take) -> int:
        return sum(self.frames_for(t.length) for t in self.takes[: take.index])

    def latent_to_video(self, take: Take, latent: int) -> int:
        """Video frame index (whole video) of the first frame that latent frame `latent` (take coordinates) decodes
        to; latent = take.length gives the take's end. Latent 0 decodes to one frame, every later one to c."""
        return self.video_offset(take) + (0 if latent == 0 else self.frames_for(latent))

    def shot_map(self) -> list[dict]:
        """manifest `shots`: shot → take → latent frames → video frames → prompt."""
        out = []
        for take in self.takes:
            for k, (a, b) in zip(take.shots, take.shot_bounds()):
                out.append({
                    "shot": k + 1, "take": take.index, "cut": self.cuts[k], "prompt": self.prompts[k],
                    "latent_frames": [take.start + a, take.start + b],
                    "video_frames": [self.latent_to_video(take, a), self.latent_to_video(take, b)],
                })
        return out

    def take_map(self) -> list[dict]:
        return [{
            "take": t.index, "shots": [k + 1 for k in t.shots], "seed": t.seed,
            "latent_frames": [t.start, t.end],
            "video_frames": [self.video_offset(t), self.video_offset(t) + self.frames_for(t.length)],
            "windows": len(t.windows.starts),
        } for t in self.takes]


def group_takes(story: Story) -> list[list[int]]:
    """Shot indices grouped into takes: a new take at the first shot and at every shot with a cut."""
    takes: list[list[int]] = []
    for k, shot in enumerate(story.shots):
        if not takes or shot.cut:
            takes.append([])
        takes[-1].append(k)
    return takes


def _windows_for(length: float, window: int, stride: int) -> int:
    """Whole windows on the stride grid whose length L = M + S·(n − 1) is nearest to `length` (at least one)."""
    return max(1, int((length - window) / stride + 0.5) + 1)


def plan_shots(
    story: Story,
    options: ShotOptions,
    window: int,
    stride: int,
    length: int,
    seed: int,
    sampler_plan: Callable[[int, int], WindowPlan],
    frames_for: Callable[[int], int],
    check_length: Callable[[int], None] = lambda n: None,
) -> ShotPlan:
    """The takes, their lengths and windows for a multi-shot `story`. `length` is the video's latent length from the
    length options (shared by durations) unless `options.windows` gives every shot's window count. `sampler_plan(L,
    M)` is the sampler's window plan of a take; `check_length` the backbone's check of a decodable length."""
    groups = group_takes(story)
    shots = len(story.shots)
    prompts = shot_prompts(story, options.scene_prompt)
    if options.windows is not None:
        per_shot = options.windows
        if isinstance(per_shot, tuple):
            if len(per_shot) != shots:
                raise UsageError(f"shots.windows has {len(per_shot)} values but the story has {shots} shots: give one window count per shot, or one number for all")
        else:
            per_shot = (per_shot,) * shots
        if story.durations is not None:
            log.info("shots.windows sets the shots' lengths; the story's durations are not used")
        counts = [sum(per_shot[k] for k in g) for g in groups]
        weights = [[float(per_shot[k]) for k in g] for g in groups]
    else:
        durations = story.durations or [1.0] * shots
        total = float(sum(durations))
        counts = [_windows_for(length * sum(durations[k] for k in g) / total, window, stride) for g in groups]
        weights = [[float(durations[k]) for k in g] for g in groups]
    if options.reference > shots:
        raise UsageError(f"shots.reference={options.reference} but the story has {shots} shots: name one of 1..{shots}")
    takes, start = [], 0
    for t, (group, n) in enumerate(zip(groups, counts)):
        take_len = window + stride * (n - 1)
        check_length(take_len)
        take = Take(t, start, take_len, tuple(group), tuple(weights[t]), take_seed(seed, t), sampler_plan(take_len, window))
        _check_shots_fit(take, prompts)
        takes.append(take)
        start += take_len
    return ShotPlan(takes, prompts, [s.cut for s in story.shots], window, frames_for)


def plan_scene(story: Story, cfg: Any, sampler: Sampler, backbone: Backbone, length: int,
               noise: Any = None) -> tuple[ShotPlan, "ShotsSampler", Story]:
    """The plan stage of `generate` for a multi-shot story: the shot plan, the sampler that runs the configured one
    on every take, and the story the text encoder sees (one local prompt per shot, LCT's global prompt as global)."""
    options = ShotOptions.from_config(cfg.get("shots"), cfg.get("use_global_prompt", True))
    given = [k for k in ("num_windows", "length_factor", "latent_frames") if cfg.get(k) is not None]
    if options.windows is not None and given:
        raise UsageError(f"shots.windows sets every shot's length: drop {given[0]}=…, or drop shots.windows")
    def check_take(n: int) -> None:  # a take's length: decodable, and one the sampler can run (FreeLong++ bands)
        backbone.check_length(n)
        sampler.check_length(n, backbone)

    plan = plan_shots(story, options, backbone.window, sampler.stride, length, int(cfg.seed), sampler.plan,
                      backbone.frames_for, check_take)
    used = Story(global_prompt=story.global_prompt, local_prompts=list(plan.prompts), scenario=story.scenario,
                 source=dict(story.source))
    return plan, ShotsSampler(sampler, plan, options, noise), used


def check_takes_routed(story: Story, sampler: Sampler, name: Any) -> None:
    """On a sampler that shows one prompt over its whole video (direct, freelong) each take is that video, so a take
    of several shots (no cut between them) would show only one: one line naming the shots and what to change."""
    reason = sampler.single_prompt_reason
    shared = next((g for g in group_takes(story) if len(g) > 1), None)
    if reason is None or shared is None:
        return
    raise UsageError(f"sampler={name} {reason}: shots {shared[0] + 1}–{shared[-1] + 1} have no cut between them, so "
                     f"they share one take that would show only one of them; start each shot with [SHOT CUT], or use "
                     f"a windowed sampler (e.g. sampler=syncos, sampler=gen-l-video)")


def check_single_shot_options(cfg: Any) -> None:
    """shots.* options given for a story that has no shots would silently do nothing: one line instead."""
    options = ShotOptions.from_config(cfg.get("shots"))
    if options.windows is not None or options.cross_attention > 0 or options.reference != 1:
        raise UsageError("shots.windows / shots.cross_attention / shots.reference apply to multi-shot stories "
                         "(characters, environment, shots with [SHOT CUT]); this story has local prompts: drop them")


def _check_shots_fit(take: Take, prompts: Sequence[str]) -> None:
    """Every shot of a take of several shots needs a window whose centre falls in its segment, else it is never shown."""
    if len(take.shots) == 1:
        return
    missed = take.story(prompts).events_missed(take.windows.centres(), take.length)
    if missed:
        names = ", ".join(str(take.shots[i] + 1) for i in missed)
        raise UsageError(
            f"shot(s) {names} get no window: shots {take.shots[0] + 1}–{take.shots[-1] + 1} have no cut between them, "
            f"so they share one continuous take whose {take.windows.count} window(s) each show the shot at their "
            f"centre; give those shots more windows (shots.windows=[…]) or a longer video, or start them with [SHOT CUT]"
        )


# ---------------------------------------------------------------------------------------------------- sampling
@dataclass
class _TakeRun:
    take: Take
    sampler: Sampler
    run: SamplingRun
    steps: int


class ShotsSampler(Sampler):
    """The configured sampler run on every take of a ShotPlan in one joint step loop, optionally with cross-shot
    attention to the reference take (module docstring).

    State tensors (what a checkpoint saves): `take<k>.<name>` for every tensor of take k's sampler, and
    `take<k>.generator` (uint8), the state of take k's generator after the last finished step; the run's own
    generator is not used. Resuming restores every take's tensors and generator, so it is bit-identical."""

    def __init__(self, inner: Sampler, plan: ShotPlan, options: ShotOptions, noise: Any = None) -> None:
        self.inner = inner
        self.noise = noise if noise is not None else GaussianNoise()  # the initial-noise option (longgen/noise.py)
        self.shots = plan
        self.options = options
        self.stride = inner.stride
        self.num_steps = inner.num_steps
        self.guidance_scale = inner.guidance_scale
        self._takes: list[_TakeRun] = []
        self._layout = None
        if options.cross_attention > 0 and len(plan.takes) > 1 and getattr(inner, "abam", False):
            raise UsageError(
                "shots.cross_attention and the GLC sampler's ABAM both rewrite the attention keys and values: "
                "turn one off (shots.cross_attention=0 or sampler.abam=false)"
            )
        if options.cross_attention > 0 and len(plan.takes) > 1 and (shared := inner.calls_share_attention()):
            raise UsageError(f"shots.cross_attention and {shared} both replace the attention layers: turn one off "
                             f"(shots.cross_attention=0)")  # refused here, not after the weights load
        lengths = sorted({take.length for take in plan.takes})  # latent frames per take
        steps_follow_length = getattr(inner, "steps_follow_length", None)
        if steps_follow_length and len(lengths) > 1:
            raise UsageError(
                f"{steps_follow_length}, so takes of different lengths ({', '.join(map(str, lengths))} latent frames) "
                f"cannot step through one loop: give every take the same length (shots.windows=N, with a [SHOT CUT] "
                f"before every shot) or use sampler=syncos, gen-l-video, glc or direct"
            )
        if steps_follow_length and options.cross_attention > 0 and len(plan.takes) > 1:
            raise UsageError(f"{steps_follow_length}, but cross-shot attention runs the reference window at each "
                             f"DDIM step's timestep: set shots.cross_attention=0, or use sampler=syncos, gen-l-video, "
                             f"glc or direct")

    # ------------------------------------------------------------------ plan
    def plan(self, length: int, window: int) -> WindowPlan:
        return self.shots.window_plan()

    @property
    def reference(self) -> Take:
        return self.shots.take_of_shot(self.options.reference - 1)

    @property
    def sharing(self) -> bool:
        """Cross-shot attention is on (and there is another take to share with)."""
        return self.options.cross_attention > 0 and len(self.shots.takes) > 1

    def begin(self, run: SamplingRun) -> int:
        """Each take gets its own copy of the sampler, its own generator (seeded with its seed) and its initial noise
        [1, L_k, C, H, W] drawn from that generator on the CPU by the noise option; every take's sampler plans its run."""
        den = run.denoiser
        self._takes = []
        for take in self.shots.takes:
            gen = torch.Generator(device="cpu").manual_seed(take.seed)
            noise = self.noise.draw((1, take.length, *den.latent_shape), gen, den.window)  # [1, L_k, C, H, W]
            offset = take.start

            def prompt_for_window(start: int, size: int, offset: int = offset) -> int:
                return run.prompt_for_window(offset + start, size)

            # a one-shot take is a one-prompt video: its prompt is also its global prompt (GLC's global path)
            roles = ({"global": prompt_for_window(0, take.length)} if len(take.shots) == 1
                     else dict(run.prompt_ids))
            sub = SamplingRun(denoiser=den, noise=noise.to(run.noise.device), prompt_for_window=prompt_for_window,
                              generator=gen, progress=lambda *a: None, prompt_ids=roles)
            sampler = copy.deepcopy(self.inner)
            self._takes.append(_TakeRun(take, sampler, sub, sampler.begin(sub)))
        steps = {t.steps for t in self._takes}
        if len(steps) != 1:
            raise RuntimeError(f"the takes' samplers planned different numbers of steps: {sorted(steps)}")
        if self.sharing:
            self._schedule = den.schedule(self.inner.num_steps)
            ref = self._takes[self.reference.index]
            self._reference_prompt = ref.run.prompt_for_window(0, den.window)
        return steps.pop()

    def forwards_per_step(self, total: int) -> list[float] | None:
        """Every take's sampler's forwards, plus the reference window's capture per step with cross-shot attention."""
        takes = [t.sampler.forwards_per_step(total) for t in self._takes]
        if any(work is None for work in takes):
            return None
        capture = guidance_branches(self.inner.guidance_scale) if self.sharing else 0
        return [sum(step) + capture for step in zip(*takes)]

    def initial_state(self, run: SamplingRun) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for t in self._takes:
            for name, value in t.sampler.initial_state(t.run).items():
                tensors[f"take{t.take.index}.{name}"] = value
            tensors[f"take{t.take.index}.generator"] = t.run.generator.get_state()
        if self.sharing and f"take{self.reference.index}.x" not in tensors:
            raise UsageError("shots.cross_attention needs a sampler that keeps x_t between steps; this sampler "
                             "variant keeps only a clean estimate (e.g. SynCoS with stage1=false): set shots.cross_attention=0")
        return tensors

    # ------------------------------------------------------------------ one joint step
    def sample(self, run: SamplingRun, resume: SamplerState | None = None) -> torch.Tensor:
        if not self.sharing:
            return super().sample(run, resume)
        with run.denoiser.shot_attention(self.options.cross_attention, self.inner.guidance_scale > 1.0) as layout:
            self._layout = layout
            try:
                return super().sample(run, resume)
            finally:
                self._layout = None

    def step(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        if self._layout is not None:
            self._capture_reference(run, state, i)
        estimates = []
        for t in self._takes:
            prefix = f"take{t.take.index}."
            sub = _take_state(state, t.take.index)
            t.run.generator.set_state(state.tensors[prefix + "generator"].cpu())
            shares = self._layout is not None and t.take is not self.reference
            with (self._layout.sharing() if shares else contextlib.nullcontext()):
                t.sampler.step(t.run, sub, i)
            for name, value in sub.tensors.items():
                state.tensors[prefix + name] = value
            state.tensors[prefix + "generator"] = t.run.generator.get_state()
            estimates.append(sub.estimate)
        state.estimate = torch.cat(estimates) if all(e is not None for e in estimates) else None  # [L, C, H, W]

    def _capture_reference(self, run: SamplingRun, state: SamplerState, i: int) -> None:
        """The reference take's first window [1, M, C, H, W] at this step's x_t and timestep, through the model once,
        its attention keys/values kept for the other takes (both guidance branches)."""
        den = run.denoiser
        x = state.tensors[f"take{self.reference.index}.x"]  # [L_ref, C, H, W]
        window = x[: den.window][None]  # [1, M, C, H, W]
        with self._layout.capturing():
            den.predict(window, self._schedule.step(i).t, [self._reference_prompt], self.inner.guidance_scale)

    def finish(self, state: SamplerState) -> torch.Tensor:
        """The takes' clean latents side by side (also from a saved state alone, without `begin`: decode)."""
        parts = [self.inner.finish(_take_state(state, take.index)) for take in self.shots.takes]  # [1, L_k, C, H, W]
        return torch.cat(parts, dim=1)  # [1, L, C, H, W]

    def describe(self) -> dict:
        inner = self._takes[0].sampler if self._takes else self.inner
        return {**inner.describe(), "takes": len(self.shots.takes),
                "cross_attention": self.options.cross_attention,
                "reference_shot": self.options.reference if self.sharing else None}


def _take_state(state: SamplerState, take: int) -> SamplerState:
    """Take `take`'s sampler state: its `take<k>.<name>` tensors without the prefix (the generator left out)."""
    prefix = f"take{take}."
    return SamplerState({k[len(prefix):]: v for k, v in state.tensors.items()
                         if k.startswith(prefix) and k != prefix + "generator"}, done=state.done)


# ---------------------------------------------------------------------------------------------------- decoding
def decode_takes(backbone: Backbone, latents: torch.Tensor, plan: ShotPlan) -> Iterator[Any]:
    """Frames of every take, each decoded on its own (the VAE's causal cache starts fresh at every cut).
    latents: [1, L, C, H, W] → uint8 chunks [f, H, W, 3] in video order."""
    for take in plan.takes:
        yield from backbone.decode_stream(latents[:, take.start : take.end])  # [1, L_k, C, H, W]

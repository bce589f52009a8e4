"""`longgen extend` plans the new part's events as generate does (issue 25): every event gets a window whenever the
windows can give it one, a timed story's seconds count from the join, windows centred in the history show the first
event, key images follow the prompts' window → event map, and the plan is logged and in the manifest.

Geometry, worked out by hand (COG: tiny CogVideoX with 5-latent-frame windows at stride 2, 4 video frames per
latent frame, 8 fps; the default history h = 5 − 2 = 3): N windows start at 0, 2, 4, ... and are centred at 2.5,
4.5, 6.5, ...; counted from the join (latent frame 3) that is −0.5, 1.5, 3.5, 5.5: window 1 is centred in the
history. L = 5 + 2(N − 1), so the new part is 2N latent frames = 8N video frames = N seconds, and a time of t s from
the join is continuation frame 8t, latent frame 8t / 4 = 2t after the join.

Each window's prompt is checked twice: in the manifest, and independently by the prompt text each window's model
call receives (a spy on the backbone's predict; gen-l-video hands its windows over in start order).
"""

from __future__ import annotations

import gc
import json
import logging
import random
from types import SimpleNamespace

import pytest
from PIL import Image

from longgen.backbones.diffusers_base import DiffusersBackbone
from longgen.commands.extend import run_extend
from longgen.errors import UsageError
from longgen.run.extend import check_event_plan, plan_extend
from longgen.story import Story
from longgen.windows import event_plan, strided_plan

from test_extend import COG, compose_extend, make_video

ONE_STEP = ["sampler=gen-l-video", "sampler.num_steps=1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The input video (13 frames at 8 fps: the default history takes its last 9, history=4 all 13) and the stories."""
    folder = tmp_path_factory.mktemp("extend_events")
    make_video(folder / "in.mp4", 13, (16, 16), 8)
    stories = {
        "two.json": {"global": "a fox", "local": ["a fox sits", "a fox runs"]},
        "timed.json": {"global": "a fox", "local": [{"prompt": "a fox sits", "start": 0, "end": 1.5},
                                                    {"prompt": "a fox runs", "start": 1.5, "end": 3}]},
        "three.json": {"global": "a fox", "local": ["a fox sits", "a fox runs", "a fox jumps"]},
        "long.json": {"global": "a fox", "local": [{"prompt": "a fox sits", "duration": 2},
                                                   {"prompt": "a fox runs", "duration": 8}]},
    }
    for name, story in stories.items():
        (folder / name).write_text(json.dumps(story))
    return folder


@pytest.fixture
def texts(monkeypatch):
    """The prompt text of every window the backbone is asked for, in call order."""
    seen = []
    plain = DiffusersBackbone.predict

    def spy(self, x_t, t, prompt_ids, guidance_scale):
        seen.extend(self._prompts[row] for row in self._text_rows(prompt_ids))
        return plain(self, x_t, t, prompt_ids, guidance_scale)

    monkeypatch.setattr(DiffusersBackbone, "predict", spy)
    monkeypatch.setattr(gc, "collect", lambda *a: 0)  # the release after the run; seconds in a test process's heap
    return seen


def extend(folder, tmp_path, story: str, *extra: str) -> dict:
    cfg, choices = compose_extend([*COG, *ONE_STEP, f"video={folder / 'in.mp4'}", f"story={folder / story}", *extra])
    return run_extend(cfg, tmp_path / "run", choices)


def test_two_events_extend_in_two_windows_each_window_showing_its_event(folder, tmp_path, texts, caplog):
    """Centres from the join −0.5 (history: event 1) and 1.5; the centre rule gave both event 1 (segments [0, 2),
    [2, 4)) and needed num_windows=4. Now window 2 takes event 2 and the edge moves midway between the join (where
    the history window counts) and 1.5: 0.75 latent frames = continuation frame 3 = 0.375 s."""
    caplog.set_level(logging.INFO, logger="longgen")
    manifest = extend(folder, tmp_path, "two.json", "num_windows=2")
    assert [w["local_prompt"] for w in manifest["sampling_windows"]] == [0, 1]
    assert texts == ["a fox sits", "a fox runs"]
    events = manifest["events"]
    assert [e["windows"] for e in events] == [[0], [1]]
    assert [e["latent_frames"] for e in events] == [[0, 0.75], [0.75, 4]]
    assert [e["frames"] for e in events] == [[0, 3], [3, 16]]
    assert [e["seconds"] for e in events] == [[0, 0.375], [0.375, 2.0]]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert ("the new part's events (frames and seconds from the join, sampled latent frame 3): event 1: window 1 of "
            "2, frames 0-2, 0.00-0.38 s: sits event 2: window 2 of 2, frames 3-15, 0.38-2.00 s: runs") in said


def test_a_timed_story_places_its_boundary_at_the_given_second_from_the_join(folder, tmp_path, texts, caplog):
    """Events 0-1.5 s and 1.5-3 s; 4 windows: the new part is 8 latent frames, 4 s. The boundary at 1.5 s from the
    join is continuation frame 1.5 · 8 = 12, latent frame 12 / 4 = 3 after the join (sampled latent frame 6); it
    already lies between the centres 1.5 and 3.5, so it stays. Window 1 (centred in the history) and window 2 (1.5)
    show event 1, windows 3 and 4 (3.5, 5.5) event 2, which runs on from 3 s to the new part's end. (Read from the
    video's start instead, 1.5 s would be latent 1 + 11/4 = 3.75; read as proportions, 1.5/3 of 8 = 4: either way
    window 3 would show event 1.)"""
    caplog.set_level(logging.INFO, logger="longgen")
    manifest = extend(folder, tmp_path, "timed.json", "num_windows=4")
    assert [w["local_prompt"] for w in manifest["sampling_windows"]] == [0, 0, 1, 1]
    assert texts == ["a fox sits", "a fox sits", "a fox runs", "a fox runs"]
    events = manifest["events"]
    assert [e["latent_frames"] for e in events] == [[0, 3.0], [3.0, 8]]
    assert [e["frames"] for e in events] == [[0, 12], [12, 32]]
    assert [e["seconds"] for e in events] == [[0, 1.5], [1.5, 4.0]]
    assert [e["given_seconds"] for e in events] == [[0, 1.5], [1.5, 3]]
    # 3 windows make a 3 s new part, the shortest that holds the timeline with a window per event
    assert ("the events end at 3 s and the new part at 4.00 s: local prompt 2 runs on to the new part's end "
            "(num_windows=3 makes a 3.00 s new part)") in [r.getMessage() for r in caplog.records]


@pytest.fixture(scope="module")
def history_job(folder, tmp_path_factory):
    """history=4, 3 windows, three untimed events (plan only)."""
    cfg, choices = compose_extend([*COG, *ONE_STEP, f"video={folder / 'in.mp4'}", f"story={folder / 'three.json'}",
                                   "num_windows=3", "history=4"])
    return plan_extend(cfg, tmp_path_factory.mktemp("history_job"), choices)


def test_windows_centred_in_the_history_show_the_first_event(folder, tmp_path, history_job):
    """history=4, 3 windows: L = 9, 5 new latent frames, centres from the join −1.5, 0.5, 2.5. Three events:
    window 1 (history) shows event 1 and each later window can take one of its own, so 3 windows suffice, 2 do not.
    Every window of any start and size centred in the history (a sampler's shifted or queued windows) shows
    event 1."""
    job = history_job
    # segments end 5/3, 10/3, 5: the centre rule showed events 1, 1, 2; now 1, 2, 3
    assert [w["local_prompt"] for w in job.window_map()] == [0, 1, 2]
    assert all(job.local_index(start, size) == 0 for start in range(4) for size in range(1, 9) if start + size / 2 < 4)
    with pytest.raises(UsageError) as err:  # a history of 4 with 2 windows: slots for 2 events only
        plan_extend(compose_extend([*COG, *ONE_STEP, f"video={folder / 'in.mp4'}", f"story={folder / 'three.json'}",
                                    "num_windows=2", "history=4"])[0], tmp_path, {"backbone": "tiny"})
    assert "\n" not in str(err.value) and str(err.value).endswith("pass num_windows=3")


def test_windows_centred_in_the_history_stay_on_the_first_event_where_moving_one_would_be_nearer():
    """Window 13, stride 4, history 12, 4 windows (L = 25, 13 new latent frames): centres from the join −5.5, −1.5,
    2.5, 6.5. Events ending at 0.1, 2 and 13 (e.g. 0-0.05 s, 0.05-1 s, 1-6.5 s at 8 fps): the centre rule shows
    events 1, 1, 3, 3. Giving event 2 to window 3 costs 2.5 − 2 = 0.5 latent frames; giving it to window 2 (centre
    −1.5: 1.6 from event 2's segment, 1.5 from event 1's) and event 3 to window 3 would cost only 0.1 more, so the
    nearest assignment alone would put a history window on event 2 — held on event 1, it is windows 1, 1, 2, 3."""
    plan = strided_plan(25, 13, 4)
    events = event_plan(plan, [0.1, 2.0, 13.0], origin=12)
    assert events.events == (0, 0, 1, 2)
    assert [events.window_event(s, 13) for s in plan.starts] == [0, 0, 1, 2]


TINY13 = ["backbone=tiny", "backbone.height=16", "backbone.width=16"]  # window 13, stride 4


@pytest.mark.parametrize("story,options,words", [
    # 3 events, 2 windows (one in the history): num_windows=3 gives 3
    ("three.json", [*COG, "num_windows=2"], "the new part's 3 local prompts need a window each, more than "
     "num_windows=2 gives (windows centred in the history, its 3 latent frames, all show the first): pass "
     "num_windows=3"),
    # window 13, history 12: 3 windows are centred −5.5, −1.5, 2.5 from the join, two in the history showing event
    # 1 together, so 3 events need a fourth window (refused before the video is read: 45 frames would be needed)
    ("three.json", [*TINY13, "history=12", "num_windows=3"], "the new part's 3 local prompts need a window each, "
     "more than num_windows=3 gives (windows centred in the history, its 12 latent frames, all show the first): "
     "pass num_windows=4"),
    # 10 s from the join over a new part of N seconds: N = 10
    ("long.json", [*COG, "num_windows=4"], "story: the events end at 10 s but the new part is 4.00 s (32 frames at "
     "8 fps); pass num_windows=10 or end the last event by 4.00 s"),
])
def test_an_impossible_plan_is_one_line_naming_the_num_windows_that_works(folder, tmp_path, story, options, words):
    cfg, choices = compose_extend([*options, *ONE_STEP, f"video={folder / 'in.mp4'}", f"story={folder / story}"])
    with pytest.raises(UsageError) as err:
        plan_extend(cfg, tmp_path, choices)
    assert str(err.value) == words


def test_key_images_follow_the_prompts_window_to_event_map(tmp_path, texts, monkeypatch):
    """tiny-i2v (window 13, stride 4) from a still image (h = 1), 3 windows: L = 21, centres from the join 5.5, 9.5,
    13.5, 20 new latent frames = 10 s. Events 0-1, 1-2, 2-10 s end at latent 2 and 4: every centre lies in event 3's
    segment, so the plan gives windows 1, 2, 3 one event each, and event 3's image conditions window 3 (start 8),
    the window whose prompt is event 3's — by the centre rule it would have gone to window 2 (start 4), the first
    window starting after the join."""
    from longgen.backbones.image_conditioning import CogVideoXI2VBackbone

    rng = random.Random(5)
    for name in ("input.png", "key.png"):
        Image.frombytes("RGB", (16, 16), bytes(rng.randrange(256) for _ in range(16 * 16 * 3))).save(tmp_path / name)
    (tmp_path / "story.json").write_text(json.dumps({"global": "a fox", "local": [
        {"prompt": "a fox sits", "start": 0, "end": 1}, {"prompt": "a fox runs", "start": 1, "end": 2},
        {"prompt": "a fox jumps", "start": 2, "end": 10, "image": "key.png"}]}))
    slots = []
    plain = CogVideoXI2VBackbone._with_conditions

    def spy(self, x_in, emb, prompt_ids, guided):
        slots.extend(self._slots(prompt_ids))
        return plain(self, x_in, emb, prompt_ids, guided)

    monkeypatch.setattr(CogVideoXI2VBackbone, "_with_conditions", spy)
    cfg, choices = compose_extend(["backbone=tiny-i2v", "backbone.height=16", "backbone.width=16", *ONE_STEP,
                                   f"video={tmp_path / 'input.png'}", f"story={tmp_path / 'story.json'}",
                                   "num_windows=3"])
    manifest = run_extend(cfg, tmp_path / "run", choices)
    assert [w["local_prompt"] for w in manifest["sampling_windows"]] == [0, 1, 2]
    (image,) = manifest["images"]
    assert (image["source"], image["window_start"]) == ("event 3", 8)
    assert slots == [None, None, 0] and texts == ["a fox sits", "a fox runs", "a fox jumps"]


def test_checkpoints_record_the_windows_events_and_an_older_one_resumes_only_where_they_agree(history_job, tmp_path):
    """A checkpoint records the windows' events; resume refuses other ones. One written before extend planned
    events from the join records none: it resumes an untimed story (same events, see the oracle below) and refuses a
    timed one, whose times the old rule read as proportions."""
    path = tmp_path / "checkpoint.safetensors"
    recorded = json.loads(json.dumps(history_job.inputs()))  # as a checkpoint's metadata holds it
    # the edges 5/3 and 10/3 do not lie between the centres 0 (the history window counts at the join) and 0.5, and
    # 0.5 and 2.5: they move midway, to 0.25 and 1.5
    assert recorded["events"] == {"windows": [0, 1, 2], "edges": [0.25, 1.5, 5.0]}
    check_event_plan(recorded, history_job, path)
    other = {**recorded, "events": {**recorded["events"], "windows": [0, 0, 1]}}
    with pytest.raises(UsageError, match="was sampled with other events per window than this longgen plans"):
        check_event_plan(other, history_job, path)
    older = {k: v for k, v in recorded.items() if k != "events"}
    check_event_plan(older, history_job, path)  # untimed: resumes
    timed = SimpleNamespace(inputs=history_job.inputs, story=Story.from_dict({"global": "a fox", "local": [
        {"prompt": "a fox sits", "start": 0, "end": 1}, {"prompt": "a fox runs", "start": 1, "end": 2}]}))
    with pytest.raises(UsageError) as err:
        check_event_plan(older, timed, path)
    assert str(err.value) == (f"{path} was written by an older longgen that read the story's times as proportions "
                              f"of the new part (they are now seconds from the join): start a new run")


def test_an_untimed_story_the_centre_rule_could_show_keeps_its_windows_events():
    """Oracle of the older rule (a window shows the segment of its centre counted from the join, clamped to it):
    wherever it showed every event, the new plan gives every window of any start and size the same event — so an
    older untimed extend checkpoint resumes to the bytes it would have made."""
    rng = random.Random(3)
    checked = 0
    for _ in range(300):
        window = rng.randint(2, 13)
        stride, n, k = rng.randint(1, window), rng.randint(1, 8), rng.randint(1, 4)
        length = window + stride * (n - 1)
        h = rng.randint(1, window - 1)
        story = Story("g", [f"g {e}" for e in range(k)], durations=[rng.uniform(0.2, 3) for _ in range(k)])
        plan = strided_plan(length, window, stride)
        old = lambda s, m: story.prompt_index_at(max(0.0, s + m / 2 - h), length - h)  # noqa: E731
        if len({old(s, window) for s in plan.starts}) < story.num_events:
            continue
        events = event_plan(plan, story.segment_bounds(length - h), origin=h)
        for s in range(length):
            for m in range(1, length - s + 1):
                assert events.window_event(s, m) == old(s, m)
        checked += 1
    assert checked > 100

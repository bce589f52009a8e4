"""Events on a timeline (issue 25): every event gets a window whenever the video has as many windows as events,
timed events (`start`/`end` or `duration` seconds) get windows by their time at the backbone's frame rate, the plan
is logged at start and written to the manifest, and LCT's literal character forms are read.

Geometry of every unit case: CogVideoX-2B / backbone=tiny, window M = 13 latent frames, stride 4, temporal
compression 4, 8 fps. N windows give L = 13 + 4(N − 1) latent frames, 4(L − 1) + 1 video frames, and window centres
6.5, 10.5, 14.5, ... The expected assignments below are worked out by hand from that (comment per case); the
brute-force oracle checks the least-distance rule on small random cases independently of the dynamic programme.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

from cli_helpers import error_lines, run_cli
from longgen.errors import UsageError
from longgen.run.shots import shot_prompts
from longgen.story import Story
from longgen.windows import Clock, assign_events, event_plan, strided_plan

CLOCK = Clock(fps=8, temporal_compression=4)


def plan_for(n: int):
    return strided_plan(13 + 4 * (n - 1), 13, 4)


def timed(*spans, form="start/end"):
    """A story of one event per span (seconds), written with start/end or duration."""
    if form == "duration":
        local = [{"prompt": f"a fox, event {i}", "duration": e - s} for i, (s, e) in enumerate(spans)]
    else:
        local = [{"prompt": f"a fox, event {i}", "start": s, "end": e} for i, (s, e) in enumerate(spans)]
    return Story.from_dict({"global": "a fox", "local": local})


# ---------------------------------------------------------------------------------------------------- the clock
def test_clock_maps_seconds_to_latent_frames_at_the_backbone_frame_rate():
    # 2 s at 8 fps is video frame 16; frame 0 is latent 0, frames 1..4 latent 1, so frame 16 is at 1 + 15/4 = 4.75
    assert CLOCK.latent_at(2.0) == 4.75
    assert CLOCK.latent_at(0.0) == 0.0 and CLOCK.latent_at(1 / 8) == 1.0
    # 4 windows: L = 25 latent frames decode to 97 frames, 12.125 s; the map round-trips
    assert CLOCK.seconds(25) == 97 / 8 and CLOCK.latent_at(97 / 8) == 25
    assert Clock(16, 4).latent_at(2.0) == 1 + 31 / 4  # Wan: 16 fps


# ---------------------------------------------------------------------------------------------------- assignment
@pytest.mark.parametrize("story,windows,events,edges", [
    # 4 equal untimed events, 4 windows (L = 25): segments end 6.25, 12.5, 18.75; centres 6.5, 10.5, 14.5, 18.5 would
    # take events 2, 2, 3, 3 by the centre rule (1 and 4 never shown); now one each, edges midway between centres
    (Story("g", ["g a", "g b", "g c", "g d"]), 4, [0, 1, 2, 3], [8.5, 12.5, 16.5, 25]),
    # durations 1:3 over 5 windows (L = 29): the centre rule already shows both, so nothing changes (edge 29/4)
    (Story("g", ["g a", "g b"], durations=[1, 3]), 5, [0, 1, 1, 1, 1], [7.25, 29]),
    # durations 1:1000:1 over 10 windows (L = 49): the centre rule gives every window event 2; the nearest fix moves
    # the first and last window to events 1 and 3
    (Story("g", ["g a", "g b", "g c"], durations=[1, 1000, 1]), 10, [0] + [1] * 8 + [2], [8.5, 40.5, 49]),
    # timed 0-2, 2-9.5, 9.5-10 s, 4 windows (L = 25, 12.125 s): ends at latent 4.75 and 1 + 75/4 = 19.75; every centre
    # lies in event 2's segment; moving the first and last windows costs 6.5 − 4.75 + 19.75 − 18.5 = 3 frames
    (timed((0, 2), (2, 9.5), (9.5, 10)), 4, [0, 1, 1, 2], [8.5, 16.5, 25]),
    # the same times as durations, same plan
    (timed((0, 2), (2, 9.5), (9.5, 10), form="duration"), 4, [0, 1, 1, 2], [8.5, 16.5, 25]),
    # 4 × 6 s over 10 windows (L = 49, 24.125 s): ends at 6, 12, 18 s → latent 12.75, 24.75, 36.75; the centre rule
    # holds: windows 2, 3, 3, 2 in proportion to the spans as whole windows allow; the given edges stay
    (timed((0, 6), (6, 12), (12, 18), (18, 24)), 10, [0, 0, 1, 1, 1, 2, 2, 2, 3, 3], [12.75, 24.75, 36.75, 49]),
    # a long first event: 0-10, 10-11, 11-12 s over 4 windows: ends at latent 20.75, 22.75; the last two windows go
    # to the short events
    (timed((0, 10), (10, 11), (11, 12)), 4, [0, 0, 1, 2], [12.5, 16.5, 25]),
])
def test_every_event_gets_windows_as_worked_out_by_hand(story, windows, events, edges):
    plan = plan_for(windows)
    result = story.event_plan(plan, CLOCK, plan_for)
    assert list(result.events) == events
    assert list(result.edges) == pytest.approx(edges)
    # the edges say the same for any window of the sampler (FIFO's queue, GLC's shifted windows): by its centre
    assert [result.event_at(c) for c in plan.centres()] == events


def _brute_force(centres, edges):
    """Least summed distance of window centres to their event's segment over every monotone assignment that gives
    each event a window (all compositions of the windows into len(edges) non-empty runs)."""
    n, k = len(centres), len(edges)
    lows = [0.0, *edges[:-1]]
    best = None
    for cuts in itertools.combinations(range(1, n), k - 1):
        runs = [b - a for a, b in zip((0, *cuts), (*cuts, n))]
        events = [e for e, r in enumerate(runs) for _ in range(r)]
        cost = sum(max(lows[e] - c, c - edges[e], 0.0) for c, e in zip(centres, events))
        best = cost if best is None else min(best, cost)
    return best


def test_assignment_is_a_least_distance_one_on_random_cases():
    rng = random.Random(7)
    for _ in range(60):
        windows = rng.randint(1, 8)
        events = rng.randint(1, windows)
        plan = plan_for(windows)
        cuts = sorted(rng.uniform(0, plan.length) for _ in range(events - 1))
        edges = [*cuts, float(plan.length)]
        got = assign_events(plan.centres(), edges)
        assert sorted(set(got)) == list(range(events)) and got == sorted(got)
        lows = [0.0, *edges[:-1]]
        cost = sum(max(lows[e] - c, c - edges[e], 0.0) for c, e in zip(plan.centres(), got))
        assert cost == pytest.approx(_brute_force(plan.centres(), edges))
        moved = event_plan(plan, edges)
        assert [moved.event_at(c) for c in plan.centres()] == got


def test_the_plan_is_the_same_after_the_story_is_written_and_read_back():
    """Resume and the other ranks plan again from story.json: a timed story round-trips to the same plan."""
    for form in ("start/end", "duration"):
        story = timed((0, 2), (2, 9.5), (9.5, 10), form=form)
        again = Story.from_dict(json.loads(story.to_json()))
        assert again.to_dict() == story.to_dict() and again.timeline == story.timeline
        assert again.event_plan(plan_for(4), CLOCK) == story.event_plan(plan_for(4), CLOCK)


def test_a_timeline_that_ends_early_runs_its_last_event_on_and_says_so():
    story = timed((0, 2), (2, 4))  # 4 s; 4 windows are 12.125 s, 2 windows (L = 17) 8.125 s, 1 window 6.125 s
    assert story.event_edges(25, CLOCK)[-1] == 25
    note = story.timeline_note(25, CLOCK, plan_for)
    # 1 window would hold the 4 s but not the 2 events: the advice is 2 windows
    assert "the events end at 4 s and the video at 12.12 s" in note and "num_windows=2 makes a 8.12 s video" in note
    assert "num_windows=3 makes" in timed((0, 1), (1, 2), (2, 3)).timeline_note(25, CLOCK, plan_for)
    assert timed((0, 2), (2, 12.125)).timeline_note(25, CLOCK, plan_for) is None


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("local,words", [
    ([{"prompt": "a", "start": 0, "end": 2}, {"prompt": "b", "start": 1, "end": 3}], "overlaps the event before; events follow each other without gap or overlap: set its `start` to 2"),
    ([{"prompt": "a", "start": 0, "end": 2}, {"prompt": "b", "start": 3, "end": 4}], "leaves 1 s without an event"),
    ([{"prompt": "a", "start": 1, "end": 2}, {"prompt": "b", "start": 2, "end": 4}], "set its `start` to 0 (the video's start)"),
    ([{"prompt": "a", "start": 0, "end": 2}, {"prompt": "b", "start": 2, "end": 1}], "local prompt 2 ends at 1 s, not after its start at 2 s"),
    ([{"prompt": "a", "start": 0, "end": 2}, {"prompt": "b", "start": 2, "end": 2}], "local prompt 2 ends at 2 s, not after"),
    ([{"prompt": "a", "duration": -1}, {"prompt": "b", "duration": 1}], "`duration` is -1; it must be a number of seconds, more than 0"),
    ([{"prompt": "a", "start": 0, "end": float("inf")}], "`end` is inf"),
    ([{"prompt": "a", "duration": "2s"}], "`duration` is '2s'"),
    ([{"prompt": "a", "duration": 2}, {"prompt": "b", "start": 2, "end": 4}], "use one form for every event"),
    ([{"prompt": "a", "duration": 2}, "b"], "local prompt 2 has no time but other events have one"),
    ([{"prompt": "a", "start": 0}], "give both `start` and `end`"),
    ([{"prompt": "a", "start": 0, "end": 1, "duration": 1}], "give `start` and `end`, or `duration`, not both"),
    ([{"prompt": "a", "at": 0}], "unknown key(s) at; allowed: prompt, start, end, duration"),
    ([{"start": 0, "end": 1}], "local prompt 1 needs a `prompt` string"),
])
def test_bad_times_are_one_line_saying_what_to_change(local, words):
    with pytest.raises(UsageError) as err:
        Story.from_dict({"global": "g", "local": local})
    message = str(err.value)
    assert words in message and "\n" not in message and len(message) < 300


def test_times_with_relative_durations_and_a_timeline_longer_than_the_video_are_refused():
    with pytest.raises(UsageError, match="give either `durations` .* or event times"):
        Story.from_dict({"global": "g", "local": [{"prompt": "a", "duration": 1}], "durations": [1]})
    with pytest.raises(UsageError, match=r"the events end at 30 s but the video is 12\.12 s \(97 frames at 8 fps\); "
                                         r"pass num_windows=13 or end the last event by 12\.12 s"):
        timed((0, 20), (20, 30)).event_plan(plan_for(4), CLOCK, plan_for)
    assert CLOCK.seconds(plan_for(13).length) >= 30 > CLOCK.seconds(plan_for(12).length)  # the advice is the least
    with pytest.raises(UsageError, match=r"the events end at 12.2 s but the video is 12\.12 s .* num_windows=5 "):
        timed((0, 2), (2, 12.2)).event_plan(plan_for(4), CLOCK, plan_for)  # a 16th of a second over: still refused
    timed((0, 2), (2, 12.125)).event_plan(plan_for(4), CLOCK, plan_for)  # exactly the video: fine


# ---------------------------------------------------------------------------------------------------- LCT characters
LCT_FIG2 = ("**Character 1:** A young man with blonde hair, wearing a dark jacket over a light-colored shirt. He is "
            "portrayed as carefree and encouraging; **Character 2:** A young woman with brown hair styled in curls, "
            "wearing a dark jacket over a light-colored dress with a necklace;")
MAN = "A young man with blonde hair, wearing a dark jacket over a light-colored shirt. He is portrayed as carefree and encouraging"
WOMAN = "A young woman with brown hair styled in curls, wearing a dark jacket over a light-colored dress with a necklace"


@pytest.mark.parametrize("characters", [
    {"1": MAN, "2": WOMAN},
    [f"Character 1: {MAN}", f"Character 2: {WOMAN}"],
    f"Character 1: {MAN}\nCharacter 2: {WOMAN}\n",
    LCT_FIG2,  # LCT Fig. 2, as printed
])
def test_lct_character_forms_read_into_one_map(characters):
    story = Story.from_dict({"characters": characters, "environment": "the deck of a ship at sunset",
                             "shots": ["Close up shot of Character 1 looking back.", "Medium shot of Character 2."]})
    assert story.characters == {"1": MAN, "2": WOMAN}
    assert story.global_prompt.startswith(f"Character 1: {MAN}. Character 2: {WOMAN}. the deck")
    assert Story.from_dict(story.to_dict()).characters == story.characters


@pytest.mark.parametrize("characters,words", [
    ("a young man", "must name each character as \"Character ID: description\""),
    ("a scene. Character 1: a man", "must name each character as"),
    (["Character 1: a man", "a woman"], "`characters` item 2 must read \"Character ID: description\""),
    (["Character 1: a man", "Character 1: a woman"], "describes Character 1 twice"),
    (["Character 1: a man; Character 2: a woman"], "`characters` item 1 must read"),
    (["Character 1:"], "character 1 has an empty description"),
    (7, "`characters` must map a character id to its description"),
])
def test_bad_character_forms_are_one_line(characters, words):
    with pytest.raises(UsageError) as err:
        Story.from_dict({"characters": characters, "shots": ["Character 1 waves."]})
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shot, words", [
    ({"prompt": "Character 1 waves.", "start": 0, "end": 2}, "shot 1 gives a time; shots take none: give the story"),
    ({"prompt": "Character 1 waves.", "at": 0}, "shot 1 has unknown key(s) at; allowed: prompt, cut"),
])
def test_a_shot_with_a_time_or_an_unknown_key_is_one_line(shot, words):
    """A multi-shot story's shot object with `start`/`end` (times are for `local` events) or another unknown key:
    one line (the unknown-key message itself raised NameError: the local `cut` shadowed the function)."""
    with pytest.raises(UsageError) as err:
        Story.from_dict({"characters": {"1": "a man"}, "shots": [shot]})
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("characters", [
    [f"character 1: {MAN}", f"character 2: {WOMAN}"],
    f"character 1: {MAN}; CHARACTER 2: {WOMAN};",
    f"**character 1:** {MAN}\ncharacter 2: {WOMAN}\n",
])
def test_lct_character_forms_take_the_keyword_in_any_case(characters):
    """"character 1: a young man ..." (lowercase, as people type LCT's form) reads as "Character 1: ...", in the
    list and the string forms, and so do lowercase references in shots."""
    story = Story.from_dict({"characters": characters, "shots": ["Close up of character 1.", "Character 2 smiles."]})
    assert story.characters == {"1": MAN, "2": WOMAN}
    assert shot_prompts(story, scene=False) == [f"Close up of {MAN}.", f"{WOMAN} smiles."]


@pytest.mark.parametrize("characters", [
    ["Character 1: an actor who plays the character Bob: a cowboy"],
    "Character 1: an actor who plays the character Bob: a cowboy",
])
def test_character_in_a_description_does_not_open_an_entry(characters):
    """A lowercase "character X:" inside a description is prose, not a second character."""
    story = Story.from_dict({"characters": characters, "shots": ["Character 1 waves."]})
    assert story.characters == {"1": "an actor who plays the character Bob: a cowboy"}


def test_character_in_a_shot_is_prose_unless_it_names_a_character():
    """"the character turns" stays as written; "character 1" is Character 1; "character 3" (undefined, a number)
    is refused as "Character 3" is."""
    story = Story.from_dict({"characters": {"1": "a man"}, "shots": ["character 1 waves; the character turns."]})
    assert shot_prompts(story, scene=False) == ["A man waves; the character turns."]
    with pytest.raises(UsageError, match=r"shot 1 refers to Character 3, which `characters` does not define"):
        Story.from_dict({"characters": {"1": "a man"}, "shots": ["character 3 waves."]})


# ---------------------------------------------------------------------------------------------------- the CLI
def test_four_timed_events_in_four_windows_generate_with_the_plan_printed_and_in_the_manifest(tmp_path):
    """Issue 25: 4 events with num_windows=4 used to be refused. Durations 1, 1, 6, 2 s over 12.125 s: the centre
    rule would give windows events 3, 3, 3, 4; each event gets one window."""
    story = tmp_path / "story.json"
    durations = [1, 1, 6, 2]
    story.write_text(json.dumps({"global": "a fox", "local": [
        {"prompt": f"a fox, {what}", "duration": d} for what, d in zip(["sleeps", "wakes", "runs", "jumps"], durations)]}))
    out = tmp_path / "run"
    proc = run_cli("generate", "backbone=tiny", "backbone.height=16", "backbone.width=16", "sampler=gen-l-video",
                   "sampler.num_steps=1", "num_windows=4", f"story={story}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [w["local_prompt"] for w in manifest["windows"]] == [0, 1, 2, 3]
    events = manifest["events"]
    assert [e["windows"] for e in events] == [[0], [1], [2], [3]]
    assert [e["given_seconds"] for e in events] == [[0, 1], [1, 2], [2, 8], [8, 10]]
    # given ends 1, 2, 8 s are latent 2.75, 4.75, 16.75; the first two move midway between centres (8.5 → frame 31,
    # 3.875 s; 12.5 → frame 47), the third already lies between centres 14.5 and 18.5 and stays (frame 64, 8 s)
    assert [e["frames"] for e in events] == [[0, 31], [31, 47], [47, 64], [64, 97]]
    assert events[-1]["seconds"] == [8.0, 12.125]
    text = " ".join(proc.stderr.split())
    for line in ("event 1: window 1 of 4, frames 0-30, 0.00-3.88 s: sleeps", "event 4: window 4 of 4, frames 64-96, 8.00-12.12 s: jumps",
                 "the events end at 10 s and the video at 12.12 s: local prompt 4 runs on to the video's end"):
        assert line in text
    assert not error_lines(proc)


def test_extend_names_the_num_windows_that_shows_every_event(tmp_path, monkeypatch, capsys, own_logging):
    """extend's refusal of a new part too short for its events names the num_windows to pass (it said "a larger
    num_windows"); refused before the video is read, so an empty file stands in for it. backbone=tiny: window 13,
    stride 4, history 9, so window centres from the join are −2.5, 1.5, 5.5, 9.5, ...: the first window (in the
    history) shows event 1 and each later one can take an event of its own, so 4 events need 4 windows (the
    centre rule needed 7)."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.mp4").touch()
    (tmp_path / "s.json").write_text(json.dumps({"global": "a fox", "local": ["sleeps", "wakes", "runs", "leaps"]}))
    with pytest.raises(SystemExit) as stop:
        main(["extend", "in.mp4", "backbone=tiny", "backbone.height=16", "backbone.width=16", "story=s.json",
              "num_windows=2", "hydra.run.dir=run"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.rstrip().endswith("pass num_windows=4"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "s.json"]

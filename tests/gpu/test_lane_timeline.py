"""GPU lane cases for events on a timeline (issue 25): 4 timed events in 4 windows on CogVideoX-2B with every sampler
that takes a prompt per window (each window shows its own event, the plan is in the manifest), the single-window
sampler refused in one line, and a stopped-and-resumed run of a timed story giving the uninterrupted run's latents
and plan (the plan is worked out again from story.json on resume).

Run with the lane (`scripts/gpu_lane.sh`); `LONGGEN_LANE_DRY=1` runs them on the CPU with the tiny backbones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from test_lane import COG_MODEL, DRY, cli, latents, ok, one_line, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("LONGGEN_LANE_DRY") == "1"),
                       reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]

#: durations 1, 1, 6, 2 s: on 4 windows (CogVideoX-2B: 97 frames, 12.125 s at 8 fps) the centre rule alone would
#: give the windows events 3, 3, 3, 4
EVENTS = [("sleeps", 1), ("wakes", 1), ("runs", 6), ("jumps", 2)]


def write_story(folder: Path) -> Path:
    path = folder / "story.json"
    glob = "a red fox in a snowy birch forest in soft morning light"
    path.write_text(json.dumps({"global": glob, "local": [{"prompt": f"{glob}. The fox {what}.", "duration": d}
                                                          for what, d in EVENTS]}))
    return path


@pytest.mark.parametrize("sampler", [
    ["sampler=syncos", "sampler.num_steps=3", "sampler.t_min=500", "sampler.iters=2"],
    ["sampler=glc", "sampler.num_steps=3"],
    ["sampler=gen-l-video", "sampler.num_steps=3"],
    ["sampler=fifo", "sampler.num_partitions=1"],
], ids=lambda s: s[0].removeprefix("sampler="))
def test_four_timed_events_in_four_windows_with_every_per_window_sampler(sampler, tmp_path):
    run = tmp_path / "run"
    proc = ok(cli("generate", *COG_MODEL, f"story={write_story(tmp_path)}", "num_windows=4", *sampler,
                  f"hydra.run.dir={run}", cwd=tmp_path))
    manifest = json.loads((run / "manifest.json").read_text())
    assert [w["local_prompt"] for w in manifest["windows"]] == [0, 1, 2, 3]
    assert [e["windows"] for e in manifest["events"]] == [[0], [1], [2], [3]]
    assert [e["given_seconds"] for e in manifest["events"]] == [[0, 1], [1, 2], [2, 8], [8, 10]]
    assert "event 4: window 4 of 4" in " ".join(proc.stderr.split())
    assert torch.isfinite(latents(run)).all()


def test_a_single_window_sampler_refuses_four_events_in_one_line(tmp_path):
    proc = cli("generate", *COG_MODEL, f"story={write_story(tmp_path)}", "sampler=direct", "num_windows=4",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc.stderr)  # the real reason (one prompt over the whole video), not "only 1 window(s)"
    assert "sampler=direct denoises the whole video as one window under one prompt" in line
    assert "a story of 4 local prompts cannot show each of them; use a windowed sampler" in line


def test_a_timed_story_resumed_gives_the_same_latents_and_plan(tmp_path):
    command = ["generate", *COG_MODEL, "save_latents=true", f"story={write_story(tmp_path)}", "num_windows=4",
               "sampler=gen-l-video", "sampler.num_steps=5"]
    seen = whole_and_chain(command, tmp_path)
    assert torch.equal(latents(tmp_path / "whole"), latents(tmp_path / "chain")), seen
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    chain = json.loads((tmp_path / "chain" / "manifest.json").read_text())
    assert chain["events"] == whole["events"] and chain["windows"] == whole["windows"]
    assert chain["resumed"]["after_step"] == seen["killed_after"]
    assert DRY or whole["backbone"]["device"].startswith("cuda")

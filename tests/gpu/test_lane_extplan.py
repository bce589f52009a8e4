"""GPU lane case for `longgen extend`'s event plan (issue 25): a timed story of two events extended in two windows on
CogVideoX-2B, uninterrupted and stopped-then-resumed: the same latents and the same plan (the plan is worked out
again from story.json on resume and checked against the one the checkpoint recorded), each window showing its event.

CogVideoX-2B: window 13, stride 4, default history 9 latent frames; 2 windows centred at 6.5 and 10.5, i.e. −2.5
(in the history: event 1) and 1.5 from the join; the new part is 8 latent frames, 32 frames, 4 s at 8 fps. Events
0-1 s and 1-4 s from the join: the boundary at latent 2 holds neither centre, so window 2 takes event 2 and the edge
moves midway between the join and 1.5 (0.75 latent frames, continuation frame 3).

Run with the lane (`scripts/gpu_lane.sh`); `LONGGEN_LANE_DRY=1` runs it on the CPU with the tiny backbone.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from test_lane import COG, COG_MODEL, DRY, cli, latents, ok, whole_and_chain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("LONGGEN_LANE_DRY") == "1"),
                       reason="GPU lane: needs CUDA (scripts/gpu_lane.sh)"),
]


def test_extend_with_a_timed_story_in_two_windows_resumed(tmp_path):
    source = tmp_path / "source"
    ok(cli("generate", *COG, "sampler=direct", "num_windows=1", "sampler.num_steps=3", f"hydra.run.dir={source}",
           cwd=tmp_path))
    glob = "a red fox in a snowy birch forest in soft morning light"
    story = tmp_path / "next.json"
    story.write_text(json.dumps({"global": glob, "local": [
        {"prompt": f"{glob}. The fox stops.", "start": 0, "end": 1},
        {"prompt": f"{glob}. The fox leaps into a drift.", "start": 1, "end": 4}]}))
    command = ["extend", str(source / "video.mp4"), *COG_MODEL, "save_latents=true", f"story={story}",
               "num_windows=2", "sampler=gen-l-video", "sampler.num_steps=5"]
    seen = whole_and_chain(command, tmp_path)
    assert torch.equal(latents(tmp_path / "whole"), latents(tmp_path / "chain")), seen
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    chain = json.loads((tmp_path / "chain" / "manifest.json").read_text())
    assert [w["local_prompt"] for w in whole["sampling_windows"]] == [0, 1]
    assert [e["windows"] for e in whole["events"]] == [[0], [1]]
    assert [e["frames"] for e in whole["events"]] == [[0, 3], [3, 32]]
    assert chain["events"] == whole["events"] and chain["resumed"]["after_step"] == seen["killed_after"]
    assert DRY or whole["backbone"]["device"].startswith("cuda")

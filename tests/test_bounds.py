"""Every resource bounded (issue 28, items 7 and 8): the LLM call has a wall-clock deadline that a trickling server
cannot stretch and an answer-size cap that a huge or endless answer cannot pass; `longgen eval` streams frames
(memory flat in the video's length and bounded in its resolution)."""

from __future__ import annotations

import time

import pytest

from llm_server import ScriptedLLM, story_json
from longgen.errors import UsageError
from longgen.splitters.llm import LLMSplitter, answer_byte_limit

SCENARIO = "A brown bear wades into a river, then it catches a salmon."
GOOD2 = story_json("A brown bear in a river.", ["The bear wades in.", "The bear catches a salmon."])


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _splitter(server, **kw):
    options = dict(model="m", base_url=server.url, timeout=5.0, max_retries=0, backoff=0.0, cache=False)
    return LLMSplitter(**{**options, **kw})


def test_a_trickling_server_cannot_stretch_the_timeout():
    # a byte every 50 ms never trips the client's between-reads timeout (1 s); the whole answer would take ~20 s
    with ScriptedLLM([("trickle", GOOD2, 0.05, 30.0)]) as server:
        t0 = time.monotonic()
        with pytest.raises(UsageError) as err:
            _splitter(server, timeout=1.0, max_retries=1).split(SCENARIO, 2)
        elapsed = time.monotonic() - t0
    assert "timed out after 1 s" in str(err.value) and "2 attempt(s)" in str(err.value)
    assert elapsed < 4.0  # two attempts of 1 s each, not 2 × 20 s


def test_a_huge_answer_is_cut_off_at_the_limit():
    limit = answer_byte_limit(2048)
    with ScriptedLLM([("huge", 8 * limit)]) as server:
        with pytest.raises(UsageError) as err:
            _splitter(server).split(SCENARIO, 2)
        time.sleep(0.2)
        sent = server.sent
    assert "sent more than 4 MiB without finishing its answer" in str(err.value)
    assert len(server.requests) == 1  # not retried
    assert sent < 3 * limit  # the client stopped reading (a few socket buffers past the limit at most)


def test_an_endless_streamed_answer_is_cut_off_at_the_limit():
    limit = answer_byte_limit(2048)
    with ScriptedLLM([("endless", 64 * limit)]) as server:
        splitter = _splitter(server)
        splitter._stream = True  # as after a server said it only streams: the answer is read as events
        with pytest.raises(UsageError) as err:
            splitter.split(SCENARIO, 2)
        time.sleep(0.2)
        sent = server.sent
    assert "without finishing its answer" in str(err.value)
    assert sent < 3 * limit


def test_an_answer_under_the_limit_still_parses():
    with ScriptedLLM([("trickle", GOOD2, 0.0, 30.0)]) as server:
        story = _splitter(server, timeout=5.0).split(SCENARIO, 2)
    assert story.local_prompts[1] == "A brown bear in a river. The bear catches a salmon."


# ---------------------------------------------------------------------------------------------------- eval (item 8)
def _write_video(path, frames: int, width: int, height: int) -> None:
    """A moving pattern written frame by frame (never all in memory)."""
    import imageio_ffmpeg
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=8, macro_block_size=2, ffmpeg_log_level="quiet")
    writer.send(None)
    for t in range(frames):
        writer.send(np.stack([(x * 3 + t * 9) % 256, (y * 5 + t * 4) % 256, (x + y + t * 6) % 256], -1).astype(np.uint8))
    writer.close()


def _peak_bytes(path, settings) -> tuple[int, dict]:
    import tracemalloc

    from longgen.eval.evaluate import evaluate_target
    from longgen.eval.inputs import Target

    tracemalloc.start()
    try:
        result = evaluate_target(Target(video=path, label="v"), settings)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_eval_memory_is_bounded_in_resolution_and_flat_in_length(tmp_path):
    import dataclasses

    from longgen.eval.settings import default_settings

    settings = dataclasses.replace(default_settings(), analysis_long_side=32, stats_long_side=16)
    w, h = 320, 240
    full = w * h * 3  # bytes of one full frame
    _write_video(tmp_path / "short.mp4", 40, w, h)
    _write_video(tmp_path / "long.mp4", 80, w, h)
    _peak_bytes(tmp_path / "short.mp4", settings)  # once first: lazy imports allocate on the first run
    short, result = _peak_bytes(tmp_path / "short.mp4", settings)
    long, _ = _peak_bytes(tmp_path / "long.mp4", settings)
    assert result["video_info"]["frames"] == 40 and result["video_info"]["analysis_size"] == [32, 24]
    assert short < 10 * full  # the 40 full frames (4.6 MB here) are never held together
    # 40 more frames add only a few floats each (curves, Lab statistics: < 1 kB a frame), neither their full frames
    # nor their analysis frames (2.3 kB each): every stage is fed one frame at a time (longgen/eval/measured.py)
    assert long - short < 40 * 1024

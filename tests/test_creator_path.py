"""Red-team pass 8, the creator's path: what a creator's own files can put in longgen's way — a folder where the
run writes a file, a phone photo's EXIF rotation, a variable-frame-rate phone video, a run stopped before its first
step, a story file with a key written twice — each one line or the right result. In-process and cheap."""

from __future__ import annotations

import re

import pytest

import longgen
from longgen.errors import UsageError
from longgen.rundir import RunDirectory, refuse_run_links

TINY = ("backbone=tiny", "backbone.height=16", "backbone.width=16", "sampler.num_steps=2", "length_factor=null",
        "num_windows=2")


@pytest.mark.parametrize("name", ["story.json", "manifest.json", "video.mp4", "latents.safetensors"])
def test_a_folder_where_the_run_writes_a_file_is_one_line(tmp_path, name):
    """A folder named like a run's file: renaming the finished file onto it fails (story.json and manifest.json
    were tracebacks, the latter under overwrite=true, which tried to unlink the folder)."""
    (tmp_path / name).mkdir()
    for overwrite in (False, True):
        with pytest.raises(UsageError, match=f"holds {name} as a folder .*move it away"):
            RunDirectory(tmp_path).check_fresh("video.mp4", overwrite)
    assert (tmp_path / name).is_dir()


def test_generate_into_a_folder_holding_story_json_as_a_folder_writes_nothing(tmp_path):
    run = tmp_path / "run"
    (run / "story.json").mkdir(parents=True)
    with pytest.raises(UsageError, match="story.json as a folder"):
        longgen.generate(*TINY, prompt="a cat", run_dir=str(run))
    assert sorted(p.name for p in run.iterdir()) == ["story.json"]


@pytest.mark.parametrize("make", ["hydra_file", "log_folder"])
def test_a_hydra_file_or_a_log_folder_is_one_line(tmp_path, make):
    """Hydra makes .hydra/ and the log is opened by name: a file .hydra or a folder generate.log were tracebacks."""
    if make == "hydra_file":
        (tmp_path / ".hydra").write_text("")
    else:
        (tmp_path / "generate.log").mkdir()
    with pytest.raises(UsageError, match="of the wrong kind"):
        refuse_run_links(tmp_path)


@pytest.mark.parametrize("name", ["..", ".", ".mp4"])
def test_writer_filename_that_is_no_video_name_says_so(tmp_path, name):
    """`writer.filename=..` was refused as 'already holds a finished run (..)' (the parent folder exists); `.mp4`
    wrote a hidden video."""
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match=r"writer.filename='\.*(mp4)?' must be a plain file name"):
        longgen.generate(*TINY, prompt="a cat", run_dir=str(tmp_path / "run"), writer={"filename": name})


def test_a_photo_with_an_exif_rotation_is_fitted_upright(tmp_path):
    """A phone photo stores landscape pixels with EXIF Orientation 6 (rotate 90° clockwise to view): it was fitted
    sideways. Left half red, right half blue as stored; upright, red is on top."""
    import numpy as np
    from PIL import Image

    from longgen.run.images import fit_image

    pixels = np.zeros((20, 40, 3), np.uint8)  # [h, w, 3] as stored
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW to display
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    frame, original, _ = fit_image(tmp_path / "phone.jpg", 16, 32, "stretch", "image=")
    assert original == (20, 40)  # (w, h) as shown: portrait
    top, bottom = frame[:12].reshape(-1, 3).mean(0), frame[-12:].reshape(-1, 3).mean(0)  # [3] mean colours
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_a_variable_frame_rate_video_is_taken_at_its_timestamps(tmp_path):
    """60 frames at 30 fps, then a 1 s pause before the last 30 (a phone's variable rate): 3 s, mean rate 30 fps.
    ffmpeg filled the pause with repeated frames at its base rate while extend stepped through them at the mean
    rate, so the 3 s came out as 4.6 s (37 frames at 8 fps instead of 24)."""
    import subprocess
    from types import SimpleNamespace

    import imageio_ffmpeg

    from longgen.run.extend import read_source

    path = tmp_path / "phone.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=32x24:rate=30", "-frames:v", "60", "-vf", "setpts='PTS+gte(N,30)/TB'",
                    "-fps_mode", "vfr", "-pix_fmt", "yuv420p", str(path)], check=True)
    backbone = SimpleNamespace(width=16, height=16, fps=8, temporal_compression=4, label="tiny")
    source = read_source(path, backbone, 1, True)
    assert source.fps == pytest.approx(20, abs=0.5)  # ffmpeg's mean rate: 60 frames in 3 s
    assert abs(source.frames - 3 * 8) <= 1


def test_an_ntsc_rate_is_given_to_ffmpeg_as_its_exact_fraction():
    """ffmpeg's metadata says 23.98 for 24000/1001 fps; `-r 23.98` would resample a constant-rate video and repeat a
    frame every ~4 minutes, so the rate passed back is the fraction (other rates as they are)."""
    from longgen.run.extend import ffmpeg_rate

    assert [ffmpeg_rate(f) for f in (23.98, 29.97, 59.94, 47.95, 119.88)] == [
        "24000/1001", "30000/1001", "60000/1001", "48000/1001", "120000/1001"]
    assert [ffmpeg_rate(f) for f in (24.0, 25.0, 20.0, 23.9)] == ["24.0", "25.0", "20.0", "23.9"]


def stop_line(call) -> str:
    """The line of the `Interrupted` that `call()` ends in; a bare KeyboardInterrupt (the planted bug) fails the test
    instead of stopping pytest."""
    from longgen.errors import Interrupted

    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt is what must not come out
        assert isinstance(exc, Interrupted), f"{type(exc).__name__}: {exc}"
        return str(exc)
    pytest.fail("the run was not stopped")


def test_ctrl_c_before_sampling_then_resume_starts_at_the_first_step(tmp_path, monkeypatch):
    """Ctrl-C before the first step (generate: while it encodes; extend: while it encodes its input) left the run's
    config and story but no checkpoint; `longgen resume` then said 'no checkpoint … was the run started with
    checkpoint_every=0?' and the line at the stop named no way on. Now the stop names `longgen resume`, which runs
    the run from its first step (through the command's own stages: test_checkpoint pins what resume computes); an
    extend run's resume appends to extend.log (it wrote a second log, generate.log, beside it). The extend run is
    the one resumed: run_resume's path without a checkpoint is shared, and extend's takes the extra log."""
    import subprocess

    import imageio_ffmpeg

    import longgen.run.extend as extend
    import longgen.run.stages as stages

    video = tmp_path / "clip.mp4"  # 40 frames at 8 fps: the 33 a tiny extend's history takes, and more
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=16x16:rate=8", "-frames:v", "40", "-pix_fmt", "yuv420p", str(video)], check=True)
    for module, name, command, args in (
        (stages, "encode", longgen.generate, TINY),
        (extend, "encode_history", longgen.extend, (str(video), *TINY[:4], "num_windows=2")),
    ):
        real = getattr(module, name)

        def interrupted(*a, module=module, name=name, real=real):
            monkeypatch.setattr(module, name, real)
            raise KeyboardInterrupt("SIGINT")

        monkeypatch.setattr(module, name, interrupted)
        run = tmp_path / f"cut-{name}"
        line = stop_line(lambda: command(*args, prompt="a cat", run_dir=str(run)))
        assert re.search(r"before sampling; .*first step with: longgen resume .*cut-\w+$", line), line
        assert not (run / "checkpoint.safetensors").exists() and (run / "story.json").is_file()
    run = tmp_path / "cut-encode_history"  # resumed as an extend run (the same run_resume path as generate's)
    assert longgen.resume(str(run)).manifest["resumed"]["after_step"] == 0
    extended = tmp_path / "cut-encode_history"
    assert not (extended / "generate.log").exists() and "resuming" in (extended / "extend.log").read_text()


def test_a_second_ctrl_c_mid_step_names_the_kept_checkpoint(tmp_path, monkeypatch):
    """The second Ctrl-C (out at once, mid-step) ended in 'interrupted (SIGINT); nothing half-written was kept',
    naming neither the checkpoint it kept nor `longgen resume`."""
    from longgen.run.checkpoint import StepHooks

    real = StepHooks.__call__

    def second_press(self, state, total):
        real(self, state, total)
        if state.done == 1:  # step 1 is checkpointed; the press lands in step 2
            raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(StepHooks, "__call__", second_press)
    line = stop_line(lambda: longgen.generate(*TINY, prompt="a cat", run_dir=str(tmp_path / "run")))
    assert re.search(r"again, in the middle of a step; the checkpoint after step 1 is kept .*continue with: longgen "
                     r"resume", line), line
    # `longgen decode` beside a run that is still sampling said "sampling stopped after step …: finish it with
    # `longgen resume`" (which then found the directory locked); the held lock stands for that run here
    held = RunDirectory(tmp_path / "run").claim()
    try:
        with pytest.raises(UsageError, match=r"another longgen run is sampling in .*run \(step 1 of 2 so far\)"):
            longgen.decode(str(tmp_path / "run"))
    finally:
        held.release()
    with pytest.raises(UsageError, match=r"sampling stopped after step 1 of 2: finish it with `longgen resume"):
        longgen.decode(str(tmp_path / "run"))


def test_ctrl_c_while_the_model_is_released_keeps_the_stop_line(tmp_path, monkeypatch):
    """A run stopped at a step releases the model on its way out; a second Ctrl-C landing there replaced the line
    naming the checkpoint with 'interrupted (SIGINT); nothing half-written was kept'."""
    from longgen.backbones.cogvideox import CogVideoXBackbone
    from longgen.run.checkpoint import StepHooks

    real = StepHooks.__call__

    def first_press(self, state, total):
        self.interrupts.requested = "SIGINT" if state.done == 1 else self.interrupts.requested
        real(self, state, total)

    def second_press(self):
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(StepHooks, "__call__", first_press)
    monkeypatch.setattr(CogVideoXBackbone, "release", second_press)
    line = stop_line(lambda: longgen.generate(*TINY, prompt="a cat", run_dir=str(tmp_path / "run")))
    assert re.search(r"stopped by SIGINT after step 1 of 2; .*longgen resume", line), line


def test_resume_of_latents_without_a_checkpoint_names_decode(tmp_path):
    from longgen.commands.resume import check_resumable

    (tmp_path / "story.json").write_text("{}")
    (tmp_path / "latents.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match=r"sampled latents \(latents.safetensors\) but no checkpoint: .*longgen decode"):
        check_resumable(tmp_path)


@pytest.mark.parametrize("name,text", [
    ("story.json", '{"global": "a fox", "local": ["a fox sleeps", "a fox leaps"], "global": "a dog"}'),
    ("story.yaml", "global: a fox\nlocal: [a fox sleeps, a fox leaps]\nglobal: a dog\n"),
])
def test_a_story_key_written_twice_is_one_line(tmp_path, name, text):
    """The second `global` (pasted while editing) silently won: the video showed 'a dog' with no word said."""
    from longgen.story import Story

    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=r"key 'global' appears twice .*keep one"):
        Story.load(tmp_path / name)


@pytest.mark.parametrize("scenario", ["一个小女孩走向海滩。然后她堆了一个沙堡。", "Une fille marche vers la plage."])
def test_the_offline_splitter_writes_shots_for_a_scenario_without_english_verbs(scenario):
    """`split-prompt multi_shot=true splitter=offline` on a Chinese or French scenario failed with 'story: shot 1 is
    empty' (no English verb, so no event: the shots were empty); each shot now shows the scene, as `split`'s local
    prompts do (rule 7: the first sentence is the environment every shot's prompt ends with, the shots its sentences)."""
    from longgen.run.shots import shot_prompts
    from longgen.splitters.offline import OfflineSplitter

    story = OfflineSplitter().split_shots(scenario, 3)
    first = scenario.split("。")[0].rstrip(".")
    assert len(story.shots) == 3 and all(shot.prompt for shot in story.shots)
    assert all(first in prompt for prompt in shot_prompts(story)), shot_prompts(story)


def test_split_prompt_out_that_cannot_be_written_is_one_line_before_the_split(tmp_path, monkeypatch):
    """`split-prompt out=/proc/x.json` (or a path under a file) was a traceback after the split (an LLM call
    spent) had been made."""
    from omegaconf import OmegaConf

    import longgen.commands.split_prompt as split_prompt

    monkeypatch.setattr(split_prompt, "split_scenario_file", lambda *a, **k: pytest.fail("split before the check"))
    (tmp_path / "a_file").write_text("")
    cfg = OmegaConf.create({"out": str(tmp_path / "a_file" / "story.json"), "scenario": "x", "num_prompts": 2})
    with pytest.raises(UsageError, match=r"out=.*a_file/story.json: its folder .* cannot take a file"):
        split_prompt.run_split_prompt(cfg, tmp_path / "run", {})


def test_a_scenario_given_as_story_names_scenario(tmp_path):
    """`story=scenario.txt` (prose, not JSON) said only 'Expecting value: line 1 column 1'."""
    from longgen.story import Story

    (tmp_path / "scenario.txt").write_text("A girl walks to the beach. Then she builds a sandcastle.\n")
    with pytest.raises(UsageError, match=r"not valid JSON: .*pass scenario=.*scenario.txt num_prompts=N"):
        Story.load(tmp_path / "scenario.txt")


def test_an_llm_error_names_the_server_from_openai_base_url(monkeypatch):
    """With the server given as $OPENAI_BASE_URL, a failed request said 'at the default OpenAI endpoint'."""
    from longgen.splitters.llm import LLMSplitter

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert LLMSplitter()._where() == "model 'gpt-4o' at http://127.0.0.1:9/v1 (from $OPENAI_BASE_URL)"  # every line's
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert LLMSplitter()._where() == "model 'gpt-4o' at the default OpenAI endpoint"

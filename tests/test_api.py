"""The Python API (issue 25): `longgen.generate(...)` composes the config as the CLI does and runs the same stages,
so it writes the same latents as `longgen generate` with the same overrides; a bad input raises UsageError and
leaves nothing behind. The CLI runs in this process through `longgen.cli.main` (the `longgen` script's entry
point), whose stderr is not a terminal here: its progress comes as plain lines."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import logging
import sys
from typing import Iterator

import pytest

import longgen
from longgen.cli import main

TINY = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "sampler=gen-l-video", "num_windows=2",
        "sampler.num_steps=2", "seed=3"]
PROMPT = "a fox, then a dog's ball"  # a comma and a quote: free text the CLI quotes for Hydra


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same job twice: the CLI (its stderr kept) and the API with keyword arguments."""
    base = tmp_path_factory.mktemp("api")
    argv, stderr = list(sys.argv), sys.stderr
    capture = base / "cli.stderr"
    try:
        with capture.open("w") as sys.stderr:
            code = main(["generate", *TINY, f"prompt={PROMPT}", "progress_every=1", f"hydra.run.dir={base / 'cli'}"])
    finally:
        sys.argv, sys.stderr = argv, stderr
    assert code == 0
    root = logging.getLogger()
    before = list(root.handlers)
    result = longgen.generate(*TINY[:3], sampler="gen-l-video", num_windows=2, seed=3, prompt=PROMPT,
                              run_dir=base / "api", **{"sampler.num_steps": 2})
    # the caller's logging is given back: no handler left writing into the run directory
    assert root.handlers == before and not any(str(base / "api") in str(getattr(h, "baseFilename", ""))
                                               for h in root.handlers)
    return base, capture.read_text(), result


def test_api_writes_the_latents_the_cli_writes(runs):
    base, _, result = runs
    assert result.run_dir == base / "api" and result.video == base / "api" / "video.mp4" and result.video.is_file()
    assert result.manifest["seed"] == 3 and result.manifest["sampler"]["name"] == "gen-l-video"
    cli_latents = (base / "cli" / "latents.safetensors").read_bytes()
    assert (base / "api" / "latents.safetensors").read_bytes() == cli_latents
    assert (base / "api" / "story.json").read_text() == (base / "cli" / "story.json").read_text()
    assert (base / "api" / "generate.log").is_file()  # the log configured as Hydra configures it


def test_cli_progress_lines_off_a_terminal(runs):
    _, stderr, _ = runs
    text = " ".join(stderr.split())  # the console wraps long lines
    steps = re.findall(r"denoise · 2 windows: (\d)/2 \((\d+)% of the work\)", text)
    assert steps == [("1", "50"), ("2", "100")]  # every step (progress_every=1), weighted by the planned forwards


def test_off_a_terminal_each_log_record_is_one_unpadded_line(runs):
    """SLURM / nohup logs: `grep ETA` and `grep "run directory"` find whole lines (Rich wrapped them at 80 columns)."""
    _, stderr, _ = runs
    lines = stderr.splitlines()
    start = [line for line in lines if "seed 3;" in line]
    assert len(start) == 1 and start[0].endswith(f"run directory {runs[0] / 'cli'}"), lines
    progress = [line for line in lines if "ETA" in line]
    assert len(progress) >= 3 and all("elapsed" in line and line == line.rstrip() for line in progress), lines


def test_bad_input_raises_usage_error_and_leaves_nothing(tmp_path):
    with pytest.raises(longgen.UsageError, match="unknown sampler 'nope'; choose one of: direct"):
        longgen.generate("backbone=tiny", sampler="nope", prompt="x", run_dir=tmp_path / "a")
    with pytest.raises(longgen.UsageError, match="has no option 'num_stepz'"):
        longgen.generate("backbone=tiny", "sampler.num_stepz=2", prompt="x", run_dir=tmp_path / "b")
    with pytest.raises(longgen.UsageError, match="num_windows='abc' must be a whole number"):  # found by the plan
        longgen.generate("backbone=tiny", num_windows="abc", prompt="x", run_dir=tmp_path / "c")
    with pytest.raises(longgen.UsageError, match=r"5 \(int\) is not an override: pass 'KEY=VALUE' strings"):
        longgen.generate("backbone=tiny", 5, prompt="x", run_dir=tmp_path / "d")
    with pytest.raises(longgen.UsageError, match="eval='maybe' must be true or false"):  # was taken as true
        longgen.generate("backbone=tiny", eval="maybe", prompt="x", run_dir=tmp_path / "e")
    assert not any(tmp_path.iterdir())


def test_import_longgen_stays_light():
    code = "import sys, longgen; print(sorted(m for m in ('torch', 'hydra', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_story_may_be_a_dict_or_a_story_object(tmp_path):
    """A notebook passes the story itself: a dict (the story file's JSON) or a longgen.story.Story, checked as a
    story file is (a bad one is one UsageError line, nothing written); text holding `${` stays as written."""
    from longgen.story import Story

    story = {"global": "a fox ${x}", "local": ["a fox ${x} sleeps", "a fox, then a dog's ball"]}
    one = {"global": "a fox ${x}", "local": [{"prompt": "a fox ${x}, then a dog's ball", "duration": 1}]}
    result = longgen.generate(*TINY[:3], sampler="direct", num_windows=1, story=one, run_dir=tmp_path / "dict",
                              **{"sampler.num_steps": 1})
    assert json.loads((result.run_dir / "story.json").read_text()) == one
    with pytest.raises(longgen.UsageError, match="sampler=freelong .*: a story of 2 local prompts cannot show"):
        longgen.generate("backbone=tiny", sampler="freelong", story=Story.from_dict(story), run_dir=tmp_path / "a")
    for bad, words in [({"global": "a fox"}, "story: missing `local` (the list of local prompts, one per event)"),
                       ({"local": ["a", "b"], "durations": [1]}, "story: "),
                       ({"local": "a fox"}, "story: "),
                       (["a fox sleeps", "a fox runs"], "story= takes a path to a story file or the story itself, "
                                                        "a dict (or a Story), not a list: put the local prompts")]:
        with pytest.raises(longgen.UsageError) as err:
            longgen.generate(*TINY, story=bad, run_dir=tmp_path / "b")
        assert str(err.value).startswith(words) and "\n" not in str(err.value), err.value
    with pytest.raises(longgen.UsageError, match=r"give only one of prompt=…, prompt_file=…, story=… or scenario=…"):
        longgen.generate(*TINY, story=story, prompt="a cat", run_dir=tmp_path / "c")
    with pytest.raises(longgen.UsageError, match="story= is given twice"):
        longgen.generate(*TINY, "story=story.json", story=story, run_dir=tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dict"]


def test_decode_refuses_bad_inputs_in_one_line_and_writes_nothing(runs, tmp_path):
    """`longgen.decode` / `longgen decode` as a demanding user drives them (found in a red-team pass): progress
    and overwrite checked as generate checks them (abc was a ValueError traceback, -1 and 'maybe' were taken), a
    writer config that does not exist, a target or override that is no string (TypeError / AttributeError),
    Hydra's own parse error (a traceback for a latents file), and latents of another frame size (the line named
    only backbone=, not the size to give)."""
    run = runs[0] / "api"
    before = sorted(p.name for p in run.iterdir())
    cases = [
        ((run,), {"progress_seconds": "abc"}, "progress_seconds='abc' must be a finite number >= 0.0"),
        ((run,), {"progress_seconds": -1}, "progress_seconds=-1 must be a finite number >= 0.0"),
        ((run,), {"overwrite": "maybe", "writer": {"filename": "again.mp4"}}, "overwrite='maybe' must be true or false"),
        ((run,), {"writer": "gif"}, "`longgen decode` keeps the run's writer config and cannot choose another "
                                    "(writer=gif): change its options instead, as writer.KEY=VALUE"),
        ((5,), {}, "5 (int) is not a path: pass the run directory or the latents file to decode"),
        ((run, 5), {}, "5 (int) is not an override: pass 'KEY=VALUE' strings"),
        ((run / "latents.safetensors", "writer.crf=["), {"backbone": "tiny", "out": tmp_path / "o"},
         "no viable alternative at input '['"),
        ((run / "latents.safetensors",), {"backbone": "tiny", "out": tmp_path / "o"},
         "expects [4, 8, 8]: pick the backbone they were sampled with (backbone=…) at their size "
         "(backbone.height=16 backbone.width=16)"),
    ]
    import torch
    from safetensors.torch import save_file

    small = {"backbone": "tiny", "backbone.height": 16, "backbone.width": 16, "out": tmp_path / "o"}
    for name, latents, words in [("nan", torch.full((9, 4, 2, 2), float("nan")), "the latents hold NaN/inf values; "
                                  "no video is written from them"),  # was written as a video
                                 ("empty", torch.zeros(0, 4, 2, 2), "latents must be [F, C, H, W] with F >= 1"),
                                 ("even", torch.zeros(6, 4, 2, 2), "CogVideoX's VAE decodes only odd latent lengths "
                                  "to c·(L−1)+1 frames: pick the backbone they were sampled with (backbone=…)")]:
        save_file({"latents": latents}, tmp_path / f"{name}.safetensors")  # generate's advice (stride) was wrong
        cases.append(((tmp_path / f"{name}.safetensors",), small, words))
    root = logging.getLogger()
    handlers = list(root.handlers)
    for args, options, words in cases:
        with pytest.raises(longgen.UsageError) as err:
            longgen.decode(*args, **options)
        assert words in str(err.value) and "\n" not in str(err.value), err.value
        assert root.handlers == handlers  # the caller's logging is given back (it was replaced for good)
    assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.safetensors", "even.safetensors", "nan.safetensors"]


def test_decode_and_resume_leave_no_log_in_a_directory_that_is_not_a_run(tmp_path, own_logging, capsys):
    """`longgen decode DIR` / `longgen resume DIR` on a folder that holds no run refused it in one line but left
    a decode.log / generate.log in it."""
    from longgen.commands import decode, resume

    (tmp_path / "notes.txt").write_text("mine")
    for command in (decode, resume):
        with pytest.raises(SystemExit) as exit_:
            command.main([str(tmp_path)])
        assert exit_.value.code == 2
        assert "is not a longgen run directory (no .hydra/config.yaml)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_decode_refuses_a_run_whose_story_lost_its_shots(runs, tmp_path):
    """A run directory without story.json, or whose story.json has no shots while its manifest lists takes, was
    decoded as one take: across the cuts of a multi-shot video. Now one line each."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs[0] / "api", run)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "takes": [{"take": 0}, {"take": 1}]}))
    with pytest.raises(longgen.UsageError, match=r"story.json has no shots but .*manifest.json lists 2 takes: put "
                                                 r"the run's own story.json back"):
        longgen.decode(run, writer={"filename": "again.mp4"})
    (run / "story.json").unlink()
    with pytest.raises(longgen.UsageError, match=r"run has no story.json: the run directory is incomplete"):
        longgen.decode(run, writer={"filename": "again.mp4"})
    assert not (run / "again.mp4").exists()


def test_refused_decode_leaves_the_run_as_it_was(runs, tmp_path):
    """A decode refused for the video it would replace (no overwrite=true) leaves no decode.log and no new lock pid."""
    import shutil

    from longgen.commands.decode import main
    from test_refused_run_dir import snapshot

    run = tmp_path / "fox"
    shutil.copytree(runs[0] / "api", run)
    (run / ".longgen.lock").write_text("12345\n")  # the pid of the process that made it (not this one)
    before = snapshot(run)
    with longgen.api.caller_logging(), pytest.raises(SystemExit) as stop:
        main([str(run)])
    assert stop.value.code == 2 and snapshot(run) == before


def test_commands_named_in_errors_quote_a_run_directory_with_spaces(runs, tmp_path):
    """"finish it with `longgen resume my runs/fox`" could not be pasted into a shell: the path is quoted."""
    import shutil

    run = tmp_path / "my runs" / "fox"
    shutil.copytree(runs[0] / "api", run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "video: /videos/in.mp4\n")  # as an extend run records its input
    with pytest.raises(longgen.UsageError, match=re.escape(f"`longgen decode '{run / 'latents.safetensors'}' backbone=")):
        longgen.decode(run)  # a finished extend run: its latents decode as a file
    unfinished = tmp_path / "my runs" / "cat"
    unfinished.mkdir()
    (unfinished / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(longgen.UsageError, match=re.escape(f"continue it with `longgen resume '{unfinished}'`")):
        longgen.generate("backbone=tiny", prompt="a cat", run_dir=unfinished)


def test_resume_of_a_generate_run_refuses_video_in_one_line(runs, tmp_path):
    """`longgen resume RUN video=X` (video= is for an extend run whose input moved) took a generate run for an
    extend run and ended in omegaconf's ConfigAttributeError traceback."""
    import shutil

    from longgen.commands.resume import run_resume

    run = tmp_path / "run"
    shutil.copytree(runs[0] / "api", run)
    with pytest.raises(longgen.UsageError, match=r"video= gives a `longgen extend` run its moved input video; .* is a "
                                                 r"`longgen generate` run, which reads no video: drop video="):
        run_resume(run, ["video=/videos/in.mp4"])


# ---------------------------------------------------------------------------------------------------- longgen.resume
@contextlib.contextmanager
def _checkpoint_writes(monkeypatch, full_from: int = 0) -> Iterator[list]:
    """The checkpoint writes made inside the block (their paths), as tests/fault_driver.py `checkpoint:N` plants
    them: with `full_from` N, the N-th write and every later one fail with a full disk (ENOSPC)."""
    import errno
    import os

    import longgen.run.checkpoint

    real, calls = longgen.run.checkpoint.write_bytes, []

    def write_bytes(path, data):
        if os.path.basename(str(path)).startswith(".checkpoint."):
            calls.append(path)
            if full_from and len(calls) >= full_from:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(longgen.run.checkpoint, "write_bytes", write_bytes)
        yield calls


def _cut(monkeypatch, call, *args, **options) -> None:
    """Run `call` (longgen.generate / longgen.extend) until its second checkpoint write fails with a full disk: the
    checkpoint after step 1 of 2 is kept, the run unfinished."""
    from longgen.errors import RunFailure

    with _checkpoint_writes(monkeypatch, full_from=2), \
            pytest.raises(RunFailure, match=r"the last good checkpoint \(after step 1\) is kept"):
        call(*args, **options)


def test_resume_continues_a_cut_generate_or_extend_run_to_the_same_latents(runs, tmp_path, monkeypatch):
    """`longgen.resume(RUN_DIR)` finishes a run stopped after its first step (a full disk at the second
    checkpoint) to the latents of the uninterrupted run, a generate run and an extend run alike, and gives the
    caller's logging back; options that would change the result are refused as the CLI refuses them."""
    import torch
    from safetensors.torch import load_file

    from longgen.run.checkpoint import load_checkpoint

    base, _, whole = runs
    cut = tmp_path / "cut"
    _cut(monkeypatch, longgen.generate, *TINY, prompt=PROMPT, run_dir=cut)
    assert load_checkpoint(cut / "checkpoint.safetensors").state.done == 1 and not (cut / "video.mp4").exists()
    with pytest.raises(longgen.UsageError, match="`longgen resume` cannot change seed: it would change the result"):
        longgen.resume(cut, seed=4)
    root = logging.getLogger()
    before = list(root.handlers)
    with _checkpoint_writes(monkeypatch) as writes:
        result = longgen.resume(str(cut), "writer.crf=20", progress_seconds=0)
    assert len(writes) == 1  # only step 2 ran: continued from the checkpoint, not started over
    assert root.handlers == before
    assert result.run_dir == cut and result.video == cut / "video.mp4" and result.video.is_file()
    assert result.manifest == json.loads((cut / "manifest.json").read_text())
    assert result.manifest["resumed"] == {"after_step": 1, "overrides": ["writer.crf=20", "progress_seconds=0"]}
    assert torch.equal(load_file(cut / "latents.safetensors")["latents"],
                       load_file(whole.run_dir / "latents.safetensors")["latents"])
    assert not (cut / "checkpoint.safetensors").exists()

    more = dict(prompt="the fox runs on", **{"sampler.num_steps": 2})
    reference = longgen.extend(whole.video, *TINY[:4], run_dir=tmp_path / "ext", **more)
    _cut(monkeypatch, longgen.extend, whole.video, *TINY[:4], run_dir=tmp_path / "ext-cut", **more)
    with _checkpoint_writes(monkeypatch) as writes:
        extended = longgen.resume(tmp_path / "ext-cut")
    assert len(writes) == 1
    assert root.handlers == before
    assert extended.video == tmp_path / "ext-cut" / "extended.mp4" and extended.video.is_file()
    assert extended.manifest["resumed"]["after_step"] == 1
    assert torch.equal(load_file(extended.run_dir / "latents.safetensors")["latents"],
                       load_file(reference.run_dir / "latents.safetensors")["latents"])


def test_resume_refuses_bad_inputs_in_one_line_and_writes_nothing(runs, tmp_path):
    """Not a run directory, a finished run, an override that is no string, a path that is no path: one UsageError
    line each, the caller's logging kept, nothing written (no resume log, no video)."""
    finished = runs[0] / "api"
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file() and p.name != ".longgen.lock"}
    (tmp_path / "notes.txt").write_text("mine")
    root = logging.getLogger()
    handlers = list(root.handlers)
    for args, options, words in [
        ((tmp_path,), {}, f"{tmp_path} is not a longgen run directory (no .hydra/config.yaml)"),
        ((tmp_path / "gone",), {}, f"{tmp_path / 'gone'} is not a directory: give the run directory"),
        ((finished,), {}, f"{finished} holds a finished run (manifest.json, no checkpoint): nothing to resume"),
        ((finished, 5), {}, "5 (int) is not an override: pass 'KEY=VALUE' strings"),
        ((finished,), {"writer": {"crf": object}}, "is not an option value: use str, int, float, bool, None"),
        ((None,), {}, "None (NoneType) is not a path: pass the run directory to resume"),
        (([finished],), {}, "(list) is not a path: pass the run directory to resume"),
    ]:
        with pytest.raises(longgen.UsageError) as err:
            longgen.resume(*args, **options)
        assert words in str(err.value) and "\n" not in str(err.value), err.value
        assert root.handlers == handlers
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file() and p.name != ".longgen.lock"} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_decode_of_a_latents_file_refuses_options_it_does_not_use(runs, tmp_path, own_logging, capsys):
    """`longgen decode LATENTS.safetensors seed=3 +foo=1` composed generate's config and ignored both: now one line
    naming them and the options that apply, as `longgen decode RUN_DIR` refuses what it cannot change; the options
    that apply still decode."""
    run = runs[0] / "api"
    latents = run / "latents.safetensors"
    before = sorted(p.name for p in run.iterdir())
    for args in (["seed=3", "+foo=1"], ["backbone=tiny", "sampler=direct"], ["hydra.run.dir=x", "out=y"]):
        with pytest.raises(SystemExit, match="2"):
            main(["decode", str(latents), *args])
        (line,) = capsys.readouterr().err.splitlines()
        unused = ", ".join(a.partition("=")[0].lstrip("+") for a in args if not a.startswith(("backbone=", "out=")))
        assert line.startswith(f"longgen: error: `longgen decode` of a latents file does not use {unused}: drop "), line
        assert line.endswith("the options that apply: backbone=NAME, backbone.KEY=…, model_path=DIR, writer=NAME, "
                             "writer.KEY=…, out=DIR, overwrite=true, progress_seconds=N"), line
    with pytest.raises(longgen.UsageError, match=r"does not use seed: drop it; the options that apply: backbone=NAME"):
        longgen.decode(latents, "backbone=tiny", seed=3, out=tmp_path / "o")
    assert sorted(p.name for p in run.iterdir()) == before and not any(tmp_path.iterdir())
    with pytest.raises(SystemExit, match="2"):  # a run directory: the first is named, as before
        main(["decode", str(run), "seed=3", "+foo=1"])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("longgen: error: `longgen decode` cannot change seed: it would change the result or "
                           "does not apply; allowed: writer, model_path,"), line
    video = longgen.decode(latents, "backbone=tiny", "backbone.height=16", model_path=tmp_path, overwrite=True,
                           progress_seconds=0, backbone={"width": 16}, writer={"filename": "again.mp4"},
                           out=tmp_path / "o")
    assert video["path"] == str(tmp_path / "o" / "again.mp4") and video["frames"] == runs[2].manifest["frames"]

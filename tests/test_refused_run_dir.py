"""A command refused against another run's directory leaves it byte for byte as it was (no log line, no new file),
and the refusals that name an extend run say what applies to it (decode of a finished one, resume with another
video). All in-process: the commands' own entry points, with their one-line error handling."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

import longgen
from longgen.api import caller_logging
from longgen.errors import UsageError
from longgen.rundir import file_sha256


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (hidden ones too) by its sha256."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def finished_run(directory: Path, command: str, files: tuple[str, ...], config: str) -> Path:
    """A finished run's directory as the command leaves it: its config, log, outputs and lock."""
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text(config)
    (directory / f"{command}.log").write_text(f"[2026-01-01 00:00:00,000][longgen][INFO] - {command} started\n")
    (directory / ".longgen.lock").write_text("12345\n")
    for name in files:
        (directory / name).write_bytes(b"\0" + name.encode())
    return directory


def test_refused_decode_leaves_an_extend_run_as_it_was(tmp_path):
    from longgen.commands.decode import main

    run = finished_run(tmp_path / "ext", "extend", ("extended.mp4", "continuation.mp4", "manifest.json"),
                       "video: /videos/in.mp4\nseed: 0\n")
    before = snapshot(run)
    with caller_logging(), pytest.raises(SystemExit) as stop:
        main([str(run)])
    assert stop.value.code == 2
    assert snapshot(run) == before


def test_refused_extend_leaves_a_generate_run_as_it_was(tmp_path, monkeypatch):
    from longgen.commands.extend import main
    from longgen.rundir import note_existing_dirs

    run = finished_run(tmp_path / "gen", "generate", ("video.mp4", "manifest.json", "latents.safetensors"),
                       "seed: 0\n")
    before = snapshot(run)
    args = [f"video={tmp_path / 'in.mp4'}", f"hydra.run.dir={run}", "backbone=tiny"]
    note_existing_dirs(args)
    monkeypatch.setattr(sys, "argv", ["longgen-extend", *args])
    with caller_logging(), pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert snapshot(run) == before


@pytest.mark.parametrize("kept", ["latents.safetensors", None])
def test_decode_of_a_finished_extend_run_says_what_applies(tmp_path, kept):
    run = finished_run(tmp_path / "ext", "extend", ("extended.mp4", "continuation.mp4", "manifest.json", kept or "x"),
                       "video: /videos/in.mp4\nseed: 0\n")
    with pytest.raises(UsageError) as refused:
        longgen.decode(run)
    line = str(refused.value)
    assert "resume" not in line and "already written" in line
    if kept:
        assert f"longgen decode {run / kept}" in line
    else:
        assert "save_latents=true" in line


def test_decode_of_an_unfinished_extend_run_names_resume(tmp_path):
    run = finished_run(tmp_path / "ext", "extend", ("checkpoint.safetensors",), "video: /videos/in.mp4\nseed: 0\n")
    with pytest.raises(UsageError, match=f"longgen resume {run}"):
        longgen.decode(run)


def test_resume_with_another_video_names_the_recorded_one(tmp_path):
    from longgen.run.extend import check_input_video

    started, other = tmp_path / "start.mp4", tmp_path / "other.mp4"
    started.write_bytes(b"the input")
    other.write_bytes(b"another video")
    recorded = {"path": str(started), "sha256": file_sha256(started)}
    with pytest.raises(UsageError) as refused:
        check_input_video(other, recorded)
    line = str(refused.value)
    assert f"{other} is not the video this extend run started from ({started}; its sha256 differs)" in line
    assert "changed since" not in line and "video=PATH" in line
    started.write_bytes(b"the input, edited")  # the recorded file itself changed: that is what is said
    with pytest.raises(UsageError, match="changed since this extend run started"):
        check_input_video(started, recorded)
    check_input_video(other, {"path": str(started), "sha256": file_sha256(other)})  # a copy moved elsewhere: taken


def test_refused_resume_of_a_finished_run_leaves_it_as_it_was(tmp_path):
    from longgen.commands.resume import main

    run = finished_run(tmp_path / "gen", "generate", ("video.mp4", "manifest.json", "story.json"), "seed: 0\n")
    before = snapshot(run)
    with caller_logging(), pytest.raises(SystemExit) as stop:
        main([str(run)])
    assert stop.value.code == 2
    assert snapshot(run) == before  # its generate.log has no ERROR line, its lock keeps the run's pid

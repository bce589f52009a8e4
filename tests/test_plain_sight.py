"""What a user sees without asking (issue 25, "plain sight", first part): the run's seed and directory on the start
line, the final latents kept so that `longgen decode` works after any run, and the hub client's current command in
the missing-weights line."""

from __future__ import annotations

import pytest

import longgen
from cli_helpers import run_cli

TINY = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "sampler=gen-l-video", "num_windows=2",
        "sampler.num_steps=2", "prompt=a fox"]


def test_start_line_names_seed_and_run_directory_and_decode_works_after_a_plain_run(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("generate", *TINY, "seed=7", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = " ".join((run / "generate.log").read_text().split())  # the log keeps the start line whole
    assert "seed 7" in start and f"run directory {run}" in start
    assert "random weights, backbone.weights_seed=0" in start  # the weights' seed is not the run's seed
    assert (run / "latents.safetensors").is_file()  # kept by default
    again = longgen.decode(run, "writer.filename=again.mp4")  # the command's own run_decode, in this process
    assert again["path"] == str(run / "again.mp4") and (run / "again.mp4").stat().st_size > 0


def test_save_latents_false_drops_them(tmp_path):
    run = tmp_path / "run"
    longgen.generate(*TINY, "save_latents=false", run_dir=run)  # generate's own run_generate, in this process
    assert not (run / "latents.safetensors").exists() and (run / "video.mp4").is_file()


def test_bad_progress_options_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, own_logging):
    """progress_every / progress_seconds were not checked: 'abc' was a traceback after the run directory was
    made, and -1 or nan were taken."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    for arg, words in [("progress_every=abc", "progress_every='abc' must be a whole number >= 0"),
                       ("progress_seconds=nan", "progress_seconds=nan must be a finite number >= 0.0")]:
        with pytest.raises(SystemExit) as stop:
            main(["generate", *TINY, arg, "hydra.run.dir=run"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith(f"longgen: error: {words}"), err
    (tmp_path / "in.mp4").touch()  # extend checks them too, before the video is read
    with pytest.raises(SystemExit) as stop:
        main(["extend", "in.mp4", *TINY, "progress_seconds=-1", "hydra.run.dir=run"])
    assert stop.value.code == 2 and "progress_seconds=-1 must be a finite number" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]

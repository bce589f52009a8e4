"""Clean-up after an input error caught once Hydra has started removes only the directories this command made
(issue 28 item 1), however the run directory is spelled: `../mine` or `mine/..` name a user's folder as surely as
`mine` does, and every level of a new nested path is removed, but never the working directory or a folder above it.

The commands run in this process through `longgen.cli.main` (the clean-up is the command's own, not the process's;
the same input error through a CLI process, exit status 2: tests/test_no_data_loss.py
test_input_errors_never_remove_a_directory_that_existed)."""

from __future__ import annotations

import sys

import pytest

from longgen.cli import main

BAD = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "num_windows=20000", "prompt=a cat"]


@pytest.fixture
def longgen_here(monkeypatch, capsys, own_logging):
    """`longgen ARGS` run in this process from the folder `cwd`: its exit status and what it printed on stderr."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # Hydra's entry reads (and the CLI sets) sys.argv

    def run(*args: str, cwd) -> tuple[int, str]:
        monkeypatch.chdir(cwd)
        try:
            status = main(list(args))
        except SystemExit as stop:
            status = stop.code
        return status, capsys.readouterr().err

    return run


def test_a_users_folder_named_through_dot_dot_is_kept(tmp_path, longgen_here):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.log").write_text("the user's own log\n")
    (tmp_path / "work").mkdir()
    for command in (["generate", *BAD], ["extend", "backbone=tiny", "prompt=a cat"]):
        for run_dir in ("../mine", "../work/..", "../mine/../mine"):
            status, err = longgen_here(*command, f"hydra.run.dir={run_dir}", cwd=tmp_path / "work")
            assert status == 2 and "Traceback" not in err and err.startswith("longgen: error:"), err[-2000:]
    assert (tmp_path / "mine" / "notes.log").read_text().startswith("the user's own log")
    assert (tmp_path / "work").is_dir()


def test_every_level_this_command_made_goes_and_nothing_above(tmp_path, longgen_here):
    (tmp_path / "work").mkdir()
    for args in (["hydra.run.dir=new/deeper/run"], []):  # a nested new path; the default outputs/DATE/TIME
        status, err = longgen_here("generate", *BAD, *args, cwd=tmp_path / "work")
        assert status == 2 and "num_windows" in err, err[-2000:]
    assert list((tmp_path / "work").iterdir()) == []
    assert (tmp_path / "work").is_dir()  # the (now empty) working directory stays
    (tmp_path / "work" / "outputs").mkdir()  # a user's empty outputs/ folder stays too
    status, _ = longgen_here("generate", *BAD, cwd=tmp_path / "work")
    assert status == 2
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["outputs"]
    assert list((tmp_path / "work" / "outputs").iterdir()) == []

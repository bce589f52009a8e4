"""Clean-up after an input error caught once Hydra has started removes only the directories this command made
(issue 28 item 1), however the run directory is spelled: `../mine` or `mine/..` name a user's folder as surely as
`mine` does, and every level of a new nested path is removed, but never the working directory or a folder above it."""

from __future__ import annotations

from cli_helpers import run_cli

BAD = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "num_windows=20000", "prompt=a cat"]


def test_a_users_folder_named_through_dot_dot_is_kept(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.log").write_text("the user's own log\n")
    (tmp_path / "work").mkdir()
    for command in (["generate", *BAD], ["extend", "backbone=tiny", "prompt=a cat"]):
        for run_dir in ("../mine", "../work/..", "../mine/../mine"):
            proc = run_cli(*command, f"hydra.run.dir={run_dir}", cwd=tmp_path / "work")
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "mine" / "notes.log").read_text().startswith("the user's own log")
    assert (tmp_path / "work").is_dir()


def test_every_level_this_command_made_goes_and_nothing_above(tmp_path):
    (tmp_path / "work").mkdir()
    for args in (["hydra.run.dir=new/deeper/run"], []):  # a nested new path; the default outputs/DATE/TIME
        proc = run_cli("generate", *BAD, *args, cwd=tmp_path / "work")
        assert proc.returncode == 2 and "num_windows" in proc.stderr, proc.stderr[-2000:]
    assert list((tmp_path / "work").iterdir()) == []
    assert (tmp_path / "work").is_dir()  # the (now empty) working directory stays
    (tmp_path / "work" / "outputs").mkdir()  # a user's empty outputs/ folder stays too
    proc = run_cli("generate", *BAD, cwd=tmp_path / "work")
    assert proc.returncode == 2
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["outputs"]
    assert list((tmp_path / "work" / "outputs").iterdir()) == []

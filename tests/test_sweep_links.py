"""A sweep never writes outside its directory (issue 28 item 4): Hydra writes multirun.yaml into the sweep
directory by opening the name, so a symbolic link planted there (or under the ledger's name) is refused with one
line before anything runs."""

from __future__ import annotations

from cli_helpers import run_cli

SMALL = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "num_windows=1", "sampler.num_steps=1",
         "prompt=a cat", "seed=0,1"]


def test_a_link_planted_in_the_sweep_directory_is_refused(tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_text("the user's file\n")
    for name in ("multirun.yaml", "sweep-jobs.jsonl"):
        sweep = tmp_path / f"sweep-{name}"
        sweep.mkdir()
        (sweep / name).symlink_to(outside)
        proc = run_cli("generate", "-m", *SMALL, f"hydra.sweep.dir={sweep}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"symbolic links where longgen writes ({name})" in proc.stderr
        assert sorted(p.name for p in sweep.iterdir()) == [name]  # no job ran
    assert outside.read_text() == "the user's file\n"

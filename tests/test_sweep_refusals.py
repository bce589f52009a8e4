"""A researcher's sweep refused before any job, in one line, where it would fail later or mix its jobs' files
(red-team pass 8): checked in this process through `main`, which runs the same checks before Hydra starts."""

from __future__ import annotations

import pytest

from longgen.cli import main

SMALL = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "num_windows=2", "sampler.num_steps=2",
         "sampler=gen-l-video", "prompt=a fox"]


@pytest.mark.parametrize("subdir, says", [
    ("x", "gives jobs 0 and 1 the same directory 'x': include ${hydra.job.num}"),
    ("../elsewhere", "puts job 0 in '../elsewhere', not in a folder of its own inside hydra.sweep.dir"),
])
def test_a_sweep_subdir_shared_by_two_jobs_or_outside_the_sweep_is_one_line(tmp_path, capsys, subdir, says):
    """hydra.sweep.subdir without the job number gave every job one directory: job 1 failed after its model loaded
    (with overwrite=true it replaced job 0's video); one outside the sweep directory hid the job from eval."""
    code = main(["generate", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 f"hydra.sweep.subdir={subdir}"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert err.rstrip().endswith("no job was started") and not (tmp_path / "sweep").exists()

"""The researcher's path (red-team pass 8): sweeps, their reruns, eval and shell completion. A sweep is refused
before any job, in one line, where it would fail later or mix its jobs' files; checked in this process through
`main`, which runs the same checks before Hydra starts."""

from __future__ import annotations

import json

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


def test_a_multirun_prompt_sweep_of_text_hydra_cannot_read_unquoted_is_still_a_sweep():
    """README: in multirun mode commas separate sweep values unless quoted. `-m prompt=café,thé` (or `a cat!,a dog?`)
    was quoted whole, so the sweep of two prompts silently ran one video of the prompt 'café,thé'."""
    from longgen.overrides import _parsed, quote_free_text

    (swept,) = quote_free_text(["-m", "prompt=un café, un thé !"])[1:]
    assert [v.text for v in _parsed(swept).value().list] == ["un café", "un thé !"]
    assert quote_free_text(["-m", "prompt=a cat!,a dog?"])[1] == "prompt='a cat!','a dog?'"
    for typed in ("prompt='café, thé'", "prompt=café\\,thé"):  # quoted or escaped by the user: one prompt
        assert not _parsed(quote_free_text(["-m", typed])[1]).is_sweep_override(), typed
    assert quote_free_text(["prompt=café,thé"]) == ["prompt='café,thé'"]  # one job: the text as typed


@pytest.mark.parametrize("args", [["-sc", "install=tcsh"], ["-sc"], ["generate", "-sc", "install"],
                                  ["eval", "-sc", "query=bash"]])
def test_a_shell_completion_hydra_cannot_answer_is_one_line(capsys, monkeypatch, args):
    """Hydra raised a ValueError traceback for a shell it has no script for or no install=/query= word, and a
    KeyError for a query outside the completion script (no $COMP_LINE)."""
    monkeypatch.delenv("COMP_LINE", raising=False)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("longgen: error: -sc") and captured.err.count("\n") == 1, captured.err
    assert 'longgen -sc install=' in captured.err and not captured.out


@pytest.mark.parametrize("arg, says", [
    ("~seed", "~seed would remove seed, which longgen reads: give it a value instead (seed=VALUE)"),
    ("~nonexist", "unknown option 'nonexist'"),
    ("+seed=3", "seed is already an option: write seed=3"),
    ("+sampler.num_steps=3", "sampler.num_steps is already an option: write sampler.num_steps=3"),
    ("+backbone=tiny", "backbone is a group with a default choice: write backbone=tiny"),
    ("hydra.launcher.n_jobs=2", "pick the launcher with -m hydra/launcher=joblib"),
])
def test_removing_or_adding_an_option_again_and_a_launcher_key_without_its_launcher_are_one_line(capsys, arg, says):
    """`~seed` ended in a ConfigAttributeError traceback; `+seed=3`, `+backbone=tiny`, `~nonexist` and
    `hydra.launcher.n_jobs=2` without hydra/launcher=joblib were Hydra's four- or five-line errors (exit status 1)."""
    assert main(["generate", *SMALL, arg, "--cfg", "job"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("longgen: error: ") and says in captured.err, captured.err
    assert captured.err.count("\n") == 1 and not captured.out


def test_a_sweep_with_a_failed_job_still_writes_its_eval_report(tmp_path, monkeypatch):
    """`generate -m … eval=true` with one failed job: the report of the others is written, then the summary exits
    with status 1. Hydra ends a multirun's callbacks in reverse order, so the summary listed last ran first and its
    exit skipped the report."""
    from hydra import compose, initialize_config_module
    from hydra._internal.callbacks import Callbacks

    import longgen.eval.report as report
    import longgen.run.sweep as sweep_module

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    ledger = [{"job": 0, "overrides": [], "run_dir": str(sweep / "0"), "status": "done"},
              {"job": 1, "overrides": [], "run_dir": str(sweep / "1"), "status": "failed", "error": "out of memory"}]
    (sweep / sweep_module.LEDGER).write_text("".join(json.dumps(e) + "\n" for e in ledger))
    written = []
    monkeypatch.setattr(report, "load_results", lambda d: [{"video": str(sweep / "0" / "video.mp4")}])
    monkeypatch.setattr(report, "write_report",
                        lambda results, d, left: written.append((d, left)) or {"html": d / "report.html"})
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["eval=true", f"hydra.sweep.dir={sweep}"], return_hydra_config=True)
    with pytest.raises(SystemExit) as stop:
        Callbacks(cfg).on_multirun_end(config=cfg)
    assert stop.value.code == 1 and written == [(sweep, ["job 1 (): failed: out of memory"])]


def test_eval_of_a_half_finished_sweep_names_each_job_it_leaves_out(tmp_path):
    """`longgen eval SWEEP_DIR` of a sweep with a failed job, one never run and one cut mid-way measured the finished
    jobs only and said nothing: a table missing a method looked complete. Each job left out is named with why."""
    from longgen.eval.report import left_out

    sweep = tmp_path / "sweep"
    for name in ("0_a", "1_a", "3_a"):
        (sweep / name).mkdir(parents=True)
    (sweep / "3_a" / "checkpoint.safetensors").write_bytes(b"")
    (sweep / "sweep.json").write_text(json.dumps({"planned": 4}))
    (sweep / "sweep-jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"job": 0, "overrides": ["seed=0"], "run_dir": str(sweep / "0_a"), "status": "done"},
        {"job": 1, "overrides": ["seed=1"], "run_dir": str(sweep / "1_a"), "status": "failed", "error": "disk full"}]))
    assert left_out(sweep, [{"video": str(sweep / "0_a" / "video.mp4")}]) == [
        "job 1 (seed=1): failed: disk full", "job 2: not run",
        f"3_a: unfinished, its checkpoint kept (longgen resume {sweep / '3_a'})"]


@pytest.mark.parametrize("device, gpus, needle", [
    ("free", 0, "no CUDA GPU is visible: use backbone.device=cpu"),
    ("cuda", 0, "backbone.device=cuda but no CUDA GPU is visible"),
    ("cuda:1", 1, "backbone.device=cuda:1 but this machine shows 1 CUDA GPU(s) (cuda:0 to cuda:0)"),
])
def test_a_local_sweep_on_gpus_this_machine_lacks_is_refused_before_any_job(tmp_path, capsys, monkeypatch, device,
                                                                            gpus, needle):
    """`-m backbone.device=free` (or cuda, cuda:N) on a machine without that CUDA GPU: every job failed alike (the
    sweep ended 0 done, N failed; cuda:N past the last GPU in a CUDA error); one line before any job now."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    code = main(["generate", "-m", *SMALL, "seed=0,1", f"backbone.device={device}",
                 f"hydra.sweep.dir={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert err.rstrip().endswith("no job was started") and not (tmp_path / "s").exists()


@pytest.mark.parametrize("args", [["hydra.run.dir="], ["-m", "seed=0,1", "hydra.sweep.dir=''"]])
def test_an_empty_run_or_sweep_directory_is_one_line(tmp_path, capsys, monkeypatch, args):
    """`hydra.run.dir=$OUT` with OUT unset wrote the run (or the sweep, its summary and job folders) into the
    working directory among whatever it holds."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert "dir= is empty (an unset shell variable?)" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_directory_in_use_by_another_sweep_is_one_line(tmp_path, capsys):
    """Two sweeps started at once into one hydra.sweep.dir= (neither had written sweep.json yet) numbered their jobs
    alike: each failed the other's jobs as 'already holds a finished run', one ledger mixed both and sweep.json was
    wrong for both. The sweep (and --rerun-failed) now holds the directory; the other is refused before any job."""
    from longgen.errors import UsageError
    from longgen.run.sweep import rerun_failed, sweep_held

    sweep = tmp_path / "sweep"
    (sweep / "multirun.yaml").parent.mkdir()
    (sweep / "multirun.yaml").write_text("{}")
    with sweep_held(sweep):  # as the first sweep's process holds it
        assert main(["generate", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"]) == 2
        err = capsys.readouterr().err
        assert f"{sweep} is in use by another sweep or --rerun-failed of it" in err and err.count("\n") == 1, err
        with pytest.raises(UsageError, match="in use by another sweep"):
            rerun_failed(sweep)
    assert sorted(p.name for p in sweep.iterdir()) == [".longgen-sweep.lock", "multirun.yaml"]


@pytest.mark.parametrize("pick", [["sampler=bad"], ["-m", "sampler=bad,gen-l-video"], ["+experiment=mine"]])
def test_a_group_file_of_your_own_that_is_not_yaml_is_one_line(tmp_path, capsys, pick):
    """`--config-dir my_conf sampler=bad` (or an experiment of yours selecting it) with a broken my_conf/sampler/
    bad.yaml: a 60-line yaml.parser traceback (exit status 1); under -m a line that did not name the file."""
    (tmp_path / "sampler").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "sampler" / "bad.yaml").write_text("num_steps: [\n")
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /sampler: bad\n")
    small = [a for a in SMALL if not a.startswith("sampler")]
    show = [] if "-m" in pick else ["--cfg", "job"]  # a sweep would run: its checks come first all the same
    assert main(["generate", "--config-dir", str(tmp_path), *small, *pick, *show]) == 2
    err = capsys.readouterr().err
    assert err == f"longgen: error: {tmp_path / 'sampler' / 'bad.yaml'} is not valid YAML (line 2): expected the node " \
                  f"content, but found '<stream end>'\n", err


@pytest.mark.parametrize("values, says", [
    ("seed=range(3,0)", "seed=range(3,0) gives no value, so the sweep would run no job"),
    ("seed=range(0,3,0)", "the sweep's values cannot be listed (range() arg 3 must not be zero)"),
    ("seed=interval(0,1)", "the sweep's values cannot be listed (BasicSweeper does not support sweep type"),
])
def test_sweep_values_hydra_cannot_list_or_that_give_no_job_are_one_line(tmp_path, capsys, values, says):
    """range(3,0) ran a sweep of no job and exited 0; range(0,3,0) and interval() ended in tracebacks."""
    assert main(["generate", "-m", *SMALL, values, f"hydra.sweep.dir={tmp_path / 's'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"longgen: error: {says}") and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_a_glob_sweep_over_a_group_lists_its_choices():
    """`-m sampler=glob([direct,gen-l*])` (Hydra's glob over a group's choices) ended in a traceback, 'ConfigLoader
    is not set', in the checks before the sweep."""
    from longgen.commands.generate import listed_jobs

    sweep = "sampler=glob([direct,gen-l*])"
    assert listed_jobs(["-m", sweep], [sweep]) == [["sampler=direct"], ["sampler=gen-l-video"]]


def test_a_run_directory_under_home_written_with_a_tilde_goes_there(tmp_path, capsys, monkeypatch):
    """`hydra.run.dir=~/runs/x` where the shell leaves `~` alone (zsh, quotes, a script): Hydra made a folder named
    `~` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *SMALL, "hydra.run.dir='~/runs/a fox'", "--cfg", "hydra", "-p", "hydra.run.dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "home" / "runs" / "a fox")
    assert not (tmp_path / "~").exists()
    from longgen.api import command_line  # longgen.generate(run_dir="~/…") alike

    assert f"hydra.run.dir={tmp_path / 'home' / 'x'}" in command_line("generate", SMALL, {"run_dir": "~/x"})


def test_ctrl_c_in_a_joblib_sweeps_launching_process_is_one_line_naming_the_rerun(tmp_path, capsys, monkeypatch):
    """Ctrl-C reaches the process that launched joblib's workers as a KeyboardInterrupt out of joblib: a traceback,
    and sweep.json still said every job 'not run' (written at the start). Stood in for here by the launch."""
    import longgen.cli as cli
    import longgen.run.sweep as sweep_module

    sweep = tmp_path / "s"

    def launch(module_name, prog, rest):  # the sweep started, job 0 finished, then Ctrl-C
        sweep_module.RUNNING["dir"] = sweep
        sweep_module.write_summary(sweep, {}, 2)
        sweep_module.append_entry(sweep / "sweep-jobs.jsonl", {"job": 0, "overrides": [], "run_dir": str(sweep / "0"),
                                                               "status": "done"})
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_app", launch)
    assert main(["generate", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"]) == 130
    err = capsys.readouterr().err
    assert err == (f"longgen: error: sweep interrupted (SIGINT): 1 done; the jobs it cut keep their last checkpoint "
                   f"(see {sweep / 'sweep.json'}); finish the sweep with: longgen generate --rerun-failed {sweep}\n")
    summary = json.loads((sweep / "sweep.json").read_text())
    assert (summary["done"], summary["not_run"]) == ([0], [1])


@pytest.mark.parametrize("args, code, says", [
    (["generate", "--rerun-failed", "--help"], 0, "usage: longgen generate --rerun-failed SWEEP_DIR\n"),
    (["generate", "-m", "--rerun-failed", "sweep"], 2, "longgen: error: --rerun-failed takes no other option"),
    (["generate", "--rerun-failed", "-m", "sweep"], 2, "longgen: error: usage: longgen generate --rerun-failed"),
])
def test_rerun_failed_help_and_misplaced_flags(capsys, args, code, says):
    """`--rerun-failed --help` looked for a sweep directory named --help; `-m --rerun-failed DIR` said the sweep
    directory 'is not an override'. `longgen generate --help` names --rerun-failed."""
    assert main(args) == code
    captured = capsys.readouterr()
    assert (captured.out if code == 0 else captured.err).startswith(says), captured
    assert main(["generate", "--help"]) == 0 and "longgen generate --rerun-failed SWEEP_DIR" in capsys.readouterr().out


def test_hydras_flags_after_some_overrides_are_read(tmp_path, capsys):
    """`longgen generate backbone=tiny -m seed=0,1 …` or `… --cfg job seed=3`: Hydra's argparse printed its usage
    page and 'unrecognized arguments' (exit 2); its flags now go first, as if typed first."""
    assert main(["generate", *SMALL, "--cfg", "job", "-p", "seed", "seed=3"]) == 0
    assert capsys.readouterr().out.strip() == "3"
    from longgen.config_search import flags_first

    assert flags_first(["a=1", "-m", "b=2", "--cfg", "job", "-cd", "d", "c=3"]) == \
        ["-m", "--cfg", "job", "-cd", "d", "a=1", "b=2", "c=3"]


def test_a_finished_run_is_a_manifest_without_the_checkpoint_of_an_unfinished_one(tmp_path):
    """One rule for resume, --rerun-failed and a requeued scheduler job: a manifest alone is a finished run; beside a
    checkpoint (a run written again over an old one, stopped mid-way) it is not, and neither is an empty folder."""
    from longgen.commands.resume import check_resumable
    from longgen.errors import UsageError
    from longgen.rundir import CHECKPOINT, holds_finished_run

    assert not holds_finished_run(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert holds_finished_run(tmp_path)
    with pytest.raises(UsageError, match="holds a finished run"):
        check_resumable(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"")
    assert not holds_finished_run(tmp_path)

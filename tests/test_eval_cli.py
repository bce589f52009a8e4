"""`longgen eval` and `generate eval=true` as a user runs them: eval.json per run, the sweep report written by the
Hydra callback, `longgen eval` on a run and on a multirun directory, and one-line errors for bad inputs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from omegaconf import OmegaConf

from cli_helpers import FAST, error_lines, run_cli
from conftest import REPO
from longgen.errors import UsageError


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A one-job multirun of the tiny backbone with eval=true (one job keeps the test fast; the report's grouping
    over seeds is tested on copies below): the job writes eval.json, the Hydra callback the sweep's report."""
    root = tmp_path_factory.mktemp("eval_sweep")
    proc = run_cli("generate", "-m", *FAST, "num_windows=2", "sampler=gen-l-video", "seed=0", "save_latents=true",
                   "prompt=a red fox runs in the snow", "eval=true", f"hydra.sweep.dir={root}/sweep", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep"


def test_generate_eval_true_writes_eval_json_with_seams_in_pixels_and_latents(sweep):
    result = json.loads((sweep / "0_gen-l-video" / "eval.json").read_text())
    assert result["schema"] == "longgen-eval/1"
    assert result["run"]["sampler"] == "gen-l-video" and result["run"]["seed"] == 0
    assert result["video_info"]["frames"] == 4 * (17 - 1) + 1
    # L = 17, windows [0, 13) and [4, 17): boundaries at latent 4 (a start) and 13 (an end)
    assert [s["latent"] for s in result["seams"]] == [4, 13]
    assert [s["pixel_pair"] for s in result["seams"]] == [[12, 13], [48, 49]]
    assert all(s["latent_ratio"] is not None for s in result["seams"])
    assert len(result["curves"]["frame_mae"]) == 64 and len(result["curves"]["delta_e"]) == 65
    s = result["summary"]
    assert 0 < s["flicker"] <= 1 and s["num_scenes"] >= 1 and s["seam_boundaries"] == 2


def test_multirun_with_eval_writes_the_comparison_report(sweep):
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [(r["label"], r["sampler"], r["seed"]) for r in rows] == [("0_gen-l-video", "gen-l-video", "0")]
    page = (sweep / "report.html").read_text()
    assert page.count("<video ") == 1 and "data:video/mp4;base64," in page  # a small video: embedded
    assert page.count("data:image/png;base64,") == 4 + 1  # four comparison plots + one per run
    for name in ("curves", "drift", "similarity", "bars"):
        assert (sweep / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_on_a_run_directory_prints_the_table_and_writes_eval_json(sweep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sweep / "0_gen-l-video", run)
    (run / "eval.json").unlink()
    proc = run_cli("eval", str(run), f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "flicker" in proc.stdout and "seams" in proc.stdout
    again = json.loads((run / "eval.json").read_text())
    before = json.loads((sweep / "0_gen-l-video" / "eval.json").read_text())
    assert again["summary"] == before["summary"]  # same video, same numbers
    assert not (tmp_path / "out" / "report.html").exists()  # one video: no comparison report


def test_eval_on_a_multirun_directory_groups_runs_by_their_overrides(sweep, tmp_path):
    multi = tmp_path / "multi"
    multi.mkdir()
    for job, sampler, seed in [("0_direct", "direct", 0), ("1_direct", "direct", 1), ("2_gen-l-video", "gen-l-video", 0)]:
        shutil.copytree(sweep / "0_gen-l-video", multi / job)
        (multi / job / "eval.json").unlink()
        overrides = ["backbone=tiny", f"sampler={sampler}", f"seed={seed}", "prompt=a red fox runs in the snow"]
        (multi / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    proc = run_cli("eval", str(multi), f"out={tmp_path / 'report'}", "report.embed_videos=false",
                   f"hydra.run.dir={tmp_path / 'cmd'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    # overrides shared by every run (backbone, prompt) and the seed do not name a group
    assert [r["group"] for r in rows] == ["sampler=direct", "sampler=direct", "sampler=gen-l-video"]
    assert all((multi / job / "eval.json").exists() for job in ("0_direct", "1_direct", "2_gen-l-video"))
    page = (tmp_path / "report" / "report.html").read_text()
    assert 'src="../multi/0_direct/video.mp4"' in page and "data:video/mp4" not in page  # linked relatively
    assert "sampler=direct</td><td>2</td>" in page  # the group of two seeds, shown as mean ± std
    assert len(list((tmp_path / "report" / "plots").glob("run-*.png"))) == 3


def test_a_bare_mp4_gets_its_result_in_the_commands_directory(sweep, tmp_path):
    from longgen.commands.eval import run_eval

    shutil.copy(sweep / "0_gen-l-video" / "video.mp4", tmp_path / "loose clip.mp4")
    [result] = run_eval(_config(paths=[str(tmp_path / "loose clip.mp4")]), tmp_path / "cmd")
    saved = json.loads((tmp_path / "cmd" / "loose clip.eval.json").read_text())
    assert saved["label"] == "loose clip" and saved["run_dir"] is None and saved["seams"] == []
    assert saved["summary"]["flicker"] == result["summary"]["flicker"]
    assert not (tmp_path / "cmd" / "report.html").exists()


def test_a_sweep_job_with_a_broken_or_missing_video_is_left_out_and_named(sweep, tmp_path):
    """One job's video cut short (or deleted) made `longgen eval SWEEP_DIR` one error line and no report for the
    others; such a job is now left out and named, as a failed one. Given by name, a broken video stays an error."""
    from longgen.commands.eval import run_eval

    multi = tmp_path / "multi"
    for job in ("0_a", "1_b", "2_c"):
        shutil.copytree(sweep / "0_gen-l-video", multi / job)
        (multi / job / "eval.json").unlink()
    (multi / "1_b" / "video.mp4").write_bytes((multi / "1_b" / "video.mp4").read_bytes()[:1000])
    (multi / "2_c" / "video.mp4").unlink()
    [result] = run_eval(_config(paths=[str(multi)]), tmp_path / "cmd")
    assert result["label"] == "0_a" and not (multi / "1_b" / "eval.json").exists()
    with pytest.raises(UsageError, match="is not a video ffmpeg can read"):
        run_eval(_config(paths=[str(multi / "1_b")]), tmp_path / "cmd")


def test_report_goes_into_a_multirun_directory_given_alone(tmp_path):
    from longgen.commands.eval import report_dir
    from longgen.eval.inputs import Target

    multi, other = tmp_path / "multi", tmp_path / "other"
    targets = [Target(video=multi / "0_a" / "video.mp4", label="0_a")]
    cfg = OmegaConf.create({"out": None})
    assert report_dir(cfg, tmp_path / "cmd", [multi], targets) == multi
    assert report_dir(cfg, tmp_path / "cmd", [multi, other], targets) == tmp_path / "cmd"
    assert report_dir(cfg, tmp_path / "cmd", [], targets) == tmp_path / "cmd"
    assert report_dir(OmegaConf.create({"out": str(other)}), tmp_path / "cmd", [multi], targets) == other


def test_callback_does_nothing_without_eval(sweep, tmp_path):
    # (with eval=true it wrote the sweep fixture's report, through Hydra)
    from longgen.eval.callback import EvalReport

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report.*", "plots"))
    callback = EvalReport()
    cfg = OmegaConf.create({"eval": False, "hydra": {"sweep": {"dir": str(copy)}}})
    callback.on_multirun_start(cfg)
    callback.on_multirun_end(cfg)
    assert not (copy / "report.html").exists() and not (copy / "plots").exists()


@pytest.mark.parametrize("make, extra, message", [
    (lambda d: d / "missing", [], "does not exist"),
    (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", [], "is not a video"),
    (lambda d: d, ["settings.flwo=dis"], "settings has no option 'flwo'"),
])
def test_bad_inputs_on_the_command_line_are_one_line_errors_with_exit_2(tmp_path, make, extra, message):
    path = make(tmp_path)
    proc = run_cli("eval", str(path), *extra, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # no run directory left behind (it once kept a log and .hydra/)


def _config(**overrides):
    cfg = OmegaConf.load(REPO / "conf" / "eval.yaml")
    del cfg["defaults"], cfg["hydra"]
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.mark.parametrize("setup, overrides, message", [
    (lambda d: (d / "v.mp4").write_bytes(b"\x00" * 64), {"paths": ["v.mp4"]}, "is not a video ffmpeg can read"),
    (lambda d: (d / "empty").mkdir(), {"paths": ["empty"]}, "holds no run directory"),
    (None, {"paths": []}, "nothing to evaluate"),
    (None, {"paths": ["RUN"], "settings.flow": "raft"}, "settings.flow='raft'"),
    (None, {"paths": ["RUN"], "settings.seam_ratio": 0}, "settings.seam_ratio=0.0 must be positive"),
    (None, {"paths": ["RUN"], "models.metrics": ["subject_consistency"]}, "needs local DINO weights: pass models.dino="),
    (None, {"paths": ["RUN"], "models.metrics": ["aesthetics"]}, "unknown model metric 'aesthetics'"),
    (lambda d: (d / "notamodel").mkdir(), {"paths": ["RUN"], "models.clip": "notamodel"}, "not a transformers model folder"),
    (lambda d: (d / "f").write_text("x"), {"paths": ["RUN", "RUN"], "out": "f"}, "is a file"),
])
def test_bad_inputs_fail_before_any_work(sweep, tmp_path, monkeypatch, setup, overrides, message):
    from longgen.commands.eval import run_eval

    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    overrides = {k: [str(sweep / "0_gen-l-video") if p == "RUN" else p for p in v] if k == "paths" else v
                 for k, v in overrides.items()}
    with pytest.raises(UsageError, match="^.*" + message.replace("(", r"\(").replace("[", r"\[")):
        run_eval(_config(**overrides), tmp_path / "out")
    assert not (sweep / "0_gen-l-video" / ".eval.json.tmp").exists()


def test_a_bad_report_option_is_refused_before_any_video_is_measured(tmp_path, monkeypatch):
    """Red-team: `longgen eval A B report.embed_videos=maybe` measured every video, made out=, and only then said
    the option was wrong; the report's options are now checked with the others, before any video is read."""
    import longgen.commands.eval as eval_command

    def probed(path):
        raise AssertionError(f"{path} was probed before report.embed_videos was checked")

    monkeypatch.setattr(eval_command, "probe_video", probed)
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    cfg = OmegaConf.load(REPO / "conf" / "eval.yaml")
    cfg.merge_with({"paths": [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")], "out": str(tmp_path / "rep"),
                    "report": {"embed_videos": "maybe"}})
    with pytest.raises(UsageError, match=r"report.embed_videos='maybe': choose auto, true or false"):
        eval_command.run_eval(cfg, tmp_path / "run")
    assert not (tmp_path / "rep").exists()


def test_a_run_or_sweep_not_finished_yet_says_so(tmp_path):
    # `longgen eval RUN_DIR` on a run cut mid-way (its checkpoint kept), or on a sweep whose jobs all still run
    # (a submitit sweep on a cluster): it said the directory holds no run directory
    from longgen.eval.inputs import resolve

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(UsageError) as refused:
        resolve([str(run)])
    assert str(refused.value) == (f"{run} is a run not finished yet (its checkpoint is kept, no video): finish it "
                                  f"with `longgen resume {run}`, then evaluate it")
    sweep = tmp_path / "sweep"
    (sweep / "0_direct").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    with pytest.raises(UsageError) as refused:
        resolve([str(sweep)])
    assert str(refused.value) == (f"{sweep} is a sweep with no finished job yet (see {sweep / 'sweep.json'}): "
                                  f"evaluate it once some have finished")

"""scripts/compare.py: the methods comparison (issue 29) at CI size on the tiny backbone — every method of the
papers' tables on one story, seed and backbone, one eval report, and the cost table (no timing is asserted)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from cli_helpers import ONE_THREAD
from conftest import REPO


def load_script(name: str):
    """A script of scripts/ as a module (they are not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"longgen_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_script(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def split_comparison(tmp_path_factory):
    """The comparison as the GPU runs it: the methods in two `--no-eval` sweeps (A, B), then one `--report-only`
    report over both (REPORT). Every method, one story and seed, CI size."""
    root = tmp_path_factory.mktemp("compare")
    compare = load_script("compare")
    # a story of two events: the windowed methods show each; direct and freelong its global prompt (several_events)
    (root / "story.json").write_text('{"global": "a red fox", "local": ["a red fox runs", "a red fox sleeps"]}')
    halves = (compare.METHODS[:4], compare.METHODS[4:])
    # B (freelong, ditctrl, glc, syncos) at 4 steps, as a reduced-steps GPU run: GLC's VJPs at 50 steps would be most
    # of the fixture's time; A keeps the experiments' 50 (FIFO has no step count to lower)
    for name, methods, steps in zip("AB", halves, ([], ["sampler.num_steps=4"])):
        proc = compare_script("--no-eval", "--methods", ",".join(methods), "--out", str(root / name), "backbone=tiny",
                              "backbone.height=16", "backbone.width=16", "length_factor=null", "num_windows=2",
                              "story=story.json", "seed=3", *steps, cwd=root)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    proc = compare_script("--report-only", "--out", str(root / "REPORT"), str(root / "A"), str(root / "B"), cwd=root)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return root, compare


def test_compare_runs_every_method_and_writes_one_report(split_comparison):
    root, compare = split_comparison
    METHODS = compare.METHODS
    out = root / "REPORT"
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    # one row per method, grouped by its experiment, all from the same seed
    groups = [f"+experiment={m}" for m in METHODS[:4]] + [f"+experiment={m} sampler.num_steps=4" for m in METHODS[4:]]
    assert sorted(r["group"] for r in rows) == sorted(groups)
    assert {r["seed"] for r in rows} == {"3"}
    page = (out / "report.html").read_text()
    for method, group in zip(METHODS, groups):  # each run card is headed by its experiment, as report.csv groups it
        assert f"<h3>{group} (" in page, method
    table = (out / "compare.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    assert "| gen-l-video-4x | A/1_gen-l-video | 50 | 200 | 1.00 |" in table  # 2 windows x 50 steps x 2 CFG branches
    # the story's two events: one per window for the windowed methods, the global prompt for the one-prompt ones
    glv = json.loads((root / "A" / "1_gen-l-video" / "manifest.json").read_text())
    assert [e["windows"] for e in glv["events"]] == [[0], [1]]
    assert "the story's global prompt, not its 2 local prompts" in (root / "A" / "0_direct" / "generate.log").read_text()


def test_console_and_report_name_runs_by_experiment_not_by_sampler_folder():
    """A comparison sweep names its folders by sampler: FreeNoise's is `2_gen-l-video` and GLC's `6_glc` (Gen-L-Video's
    and plain GLC's names). The console table and the report's run cards name each run by its group in report.csv
    (the experiment, or the overrides that set it apart) with its folder after it; a single video keeps its name."""
    from rich.console import Console

    from longgen.eval.report import group_labels, run_labels
    from longgen.eval.table import results_table

    shared = ["backbone=tiny", "prompt=a red fox runs", "seed=3"]
    runs = [("1_gen-l-video", "gen-l-video-4x", "gen-l-video"), ("2_gen-l-video", "freenoise-4x", "gen-l-video"),
            ("6_glc", "glc-paper-4x", "glc")]
    results = [{"label": folder, "summary": {"flicker_mean": 1.0},
                "run": {"sampler": sampler, "overrides": [f"+experiment={experiment}", *shared]}}
               for folder, experiment, sampler in runs]
    labels = run_labels(results)
    assert labels == ["+experiment=gen-l-video-4x (1_gen-l-video)", "+experiment=freenoise-4x (2_gen-l-video)",
                      "+experiment=glc-paper-4x (6_glc)"]
    assert [label.split(" (")[0] for label in labels] == group_labels(results)  # report.csv's `group`
    console = Console(width=400, record=True)
    console.print(results_table(results, labels=labels))
    shown = console.export_text()
    assert all(label in shown for label in labels) and "2_gen-l-video ┃" not in shown
    assert run_labels(results[:1]) == ["1_gen-l-video"]


def test_no_eval_sweeps_hold_their_cost_table_and_no_report(split_comparison):
    root, compare = split_comparison
    for name, methods in zip("AB", (compare.METHODS[:4], compare.METHODS[4:])):
        assert not (root / name / "report.html").exists() and not (root / name / "report.csv").exists()
        table = (root / name / "compare.md").read_text()
        assert [m for m in compare.METHODS if f"| {m} |" in table] == list(methods)
    # B has no Gen-L-Video: its ratios are left open, never taken against another method
    assert "| syncos-paper-4x | 3_syncos |" in (root / "B" / "compare.md").read_text()
    assert "| – |" in (root / "B" / "compare.md").read_text()


def test_manifests_record_the_planned_forwards(split_comparison):
    """The sampler's plan in the manifest equals the counted forwards where both count the same thing; GLC's
    plan (model-source VMCR: backward passes as two forwards each) exceeds its count."""
    root, _ = split_comparison
    manifests = {p.parent.name: json.loads(p.read_text()) for p in root.glob("[AB]/*/manifest.json")}
    for job, m in manifests.items():
        if not job.endswith("_glc"):
            assert m["transformer_forwards_planned"] == m["transformer_forwards"], job
    glc = next(m for job, m in manifests.items() if job.endswith("_glc"))
    assert glc["transformer_forwards_planned"] > glc["transformer_forwards"]


def test_report_only_refuses_a_method_twice_and_an_empty_sweep(split_comparison, tmp_path):
    root, _ = split_comparison
    for args, message in (([str(root / "A"), str(root / "A")], "ran in more than one of the given sweeps"),
                          ([str(tmp_path)], "holds no finished job")):
        proc = compare_script("--report-only", "--out", str(tmp_path / "R"), *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
        assert not (tmp_path / "R").exists()


def test_forward_estimates_read_the_sweep(split_comparison):
    root, _ = split_comparison
    forwards = load_script("compare_forwards")
    forwards.check_geometry()  # tiny keeps CogVideoX-2B's latent frame geometry
    n13 = forwards.TEXT_TOKENS + forwards.FRAME_TOKENS * 13
    assert forwards.forward_seconds(13) == pytest.approx(forwards.FORWARD_S)
    # twice the tokens: the linear part twice, attention four times
    doubled = (2 * n13 - forwards.TEXT_TOKENS) / forwards.FRAME_TOKENS
    assert forwards.forward_seconds(doubled) == pytest.approx(
        2 * (forwards.FORWARD_S - forwards.ATTENTION_S) + 4 * forwards.ATTENTION_S)
    rows = {r["method"]: r for r in forwards.forward_rows(root / "A") + forwards.forward_rows(root / "B")}
    assert rows["direct-4x"]["window"] == rows["direct-4x"]["latent_length"] == 17  # 2 windows: 13 + 4
    assert rows["gen-l-video-4x"]["estimate_s"] == pytest.approx(200 * forwards.FORWARD_S, abs=0.1)
    # FreeLong: direct's one sequence plus the local branch
    assert rows["freelong-4x"]["forward_s"] > rows["direct-4x"]["forward_s"] > forwards.FORWARD_S
    assert rows["glc-paper-4x"]["estimate_s"] == pytest.approx(
        rows["glc-paper-4x"]["planned"] * forwards.FORWARD_S, abs=0.1)
    table = forwards.forwards_table(rows.values())
    assert "| gen-l-video-4x | gen-l-video | 13 | 2 | 50 | 200 | 1.00 |" in table


def test_cost_table_projects_seconds_per_forward_to_the_full_settings(split_comparison):
    root, compare = split_comparison
    rows = compare.method_rows(root / "A")
    glv = next(r for r in rows if r["method"] == "gen-l-video-4x")
    table = compare.cost_table(rows, {"gen-l-video-4x": 1000.0, "fifo-4x": 1512.0})
    per_forward = glv["sample_s"] / 200
    assert f"| {glv['sample_s']:.1f} | 1.00 | {per_forward:.4f} | 1.00 | 1000 | {per_forward * 1000:.0f} | 1.00 |" in table
    assert "| direct-4x | 0_direct | 50 | 100 | 0.50 |" in table and table.count("| – | – | – |") == 2  # direct, freenoise


def test_report_only_without_eval_merges_the_cost_tables(split_comparison, tmp_path):
    """`--report-only --no-eval`: one compare.md over both sweeps, projected with a compare_forwards JSON, no report;
    a file that is not such JSON is refused in one line."""
    root, compare = split_comparison
    full = tmp_path / "forwards.json"
    full.write_text(json.dumps([{"method": m, "planned": 1000.0} for m in compare.METHODS]))
    proc = compare_script("--report-only", "--no-eval", "--full-forwards", str(full), "--out", str(tmp_path / "R"),
                          str(root / "A"), str(root / "B"))
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "R" / "compare.md").read_text()
    assert [m for m in compare.METHODS if f"| {m} | " in table] == list(compare.METHODS)
    assert "| B/3_syncos | 4 | 96 | 0.48 |" in table  # at B's 4 steps: 96 forwards against Gen-L-Video's 200
    assert [line.split(" | ")[9] for line in table.splitlines()[4:]] == ["1000"] * len(compare.METHODS)  # projection
    assert not (tmp_path / "R" / "report.html").exists()
    (tmp_path / "bad.json").write_text("{}")
    proc = compare_script("--report-only", "--full-forwards", str(tmp_path / "bad.json"), "--out", str(tmp_path / "S"),
                          str(root / "A"))
    assert proc.returncode == 2 and "not a `scripts/compare_forwards.py --json` file" in proc.stderr, proc.stderr
    assert not (tmp_path / "S").exists()


def test_unknown_method_and_an_existing_directory_are_refused(tmp_path):
    for args in (["--out", str(tmp_path / "new"), "--methods", "direct-4x,dit"], ["--out", str(tmp_path)]):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *args, "backbone=tiny"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert ("unknown method dit" in proc.stderr) or ("exists; give a new --out" in proc.stderr)
    assert not (tmp_path / "new").exists()


def test_ctrl_c_waits_for_the_sweep_to_save_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    """Red-team: Ctrl-C during compare.py's sweep raised KeyboardInterrupt in subprocess.run, which SIGKILLed longgen
    before it could finish its step and write sweep.json (all 8 jobs then read "not run"), with a traceback. Now the
    script waits for longgen (which got the same Ctrl-C), exits with its status and names --rerun-failed and
    --report-only for the sweep."""
    compare = load_script("compare")

    class Longgen:  # subprocess.Popen of a longgen that takes a moment to save after Ctrl-C
        def __init__(self, command):
            self.waits, self.killed = 0, False

        def wait(self):
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return 130

        def kill(self):
            self.killed = True

    started = []
    monkeypatch.setattr(compare.subprocess, "Popen", lambda command: started.append(Longgen(command)) or started[-1])
    sweep = tmp_path / "my compare"
    sweep.mkdir()
    (sweep / "sweep-jobs.jsonl").write_text("")  # the ledger the stopped sweep keeps
    try:
        compare.longgen("generate", "-m", "+experiment=direct-4x", sweep=sweep)
        status = 0
    except SystemExit as stop:
        status = stop.code
    except KeyboardInterrupt:  # the script let Ctrl-C through (and killed longgen, as subprocess.run does)
        status = "KeyboardInterrupt"
    assert status == 130 and not started[0].killed and started[0].waits == 2, status
    err = capsys.readouterr().err
    assert f"longgen generate --rerun-failed '{sweep}'" in err and f"--report-only --out '{sweep}'" in err, err


def test_a_sweep_refused_before_any_job_names_no_rerun(tmp_path, monkeypatch, capsys):
    """README check: a sweep that longgen refuses before its first job (missing weights, a bad option: exit 2,
    no sweep directory) was followed by "finish the sweep with `longgen generate --rerun-failed OUT`", a command
    that then fails on a directory that does not exist. Only a sweep that kept its ledger is named."""
    compare = load_script("compare")

    class Refused:  # subprocess.Popen of a longgen that refuses the sweep with one line, making nothing
        def __init__(self, command):
            pass

        def wait(self):
            return 2

    monkeypatch.setattr(compare.subprocess, "Popen", Refused)
    with pytest.raises(SystemExit) as stop:
        compare.longgen("generate", "-m", "+experiment=direct-4x", sweep=tmp_path / "never made")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "exited 2; see its messages above" in err
    assert "--rerun-failed" not in err and "--report-only" not in err, err


def test_the_cost_table_names_a_method_whose_job_failed(tmp_path):
    """A comparison whose FIFO job failed: compare.md listed the other methods only, as if FIFO was never asked for;
    it now names the job left out and its error, as the eval report does."""
    compare = load_script("compare")
    out = tmp_path / "out"
    (out / "0_gen-l-video" / ".hydra").mkdir(parents=True)
    (out / "0_gen-l-video" / "manifest.json").write_text(json.dumps({"transformer_forwards": 200}))
    (out / "0_gen-l-video" / ".hydra" / "overrides.yaml").write_text("- +experiment=gen-l-video-4x\n")
    (out / "sweep-jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"job": 0, "overrides": ["+experiment=gen-l-video-4x"], "run_dir": str(out / "0_gen-l-video"), "status": "done"},
        {"job": 1, "overrides": ["+experiment=fifo-4x"], "run_dir": str(out / "1_fifo"), "status": "failed",
         "error": "out of memory"}]))
    table = compare.write_cost_table(out)
    assert "| gen-l-video-4x | 0_gen-l-video |" in table
    assert "Left out (1):\n\n- job 1 (+experiment=fifo-4x): failed: out of memory\n" in (out / "compare.md").read_text()

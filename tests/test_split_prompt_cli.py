"""`longgen split-prompt` and `longgen generate scenario=…` as a user runs them (subprocesses, from a directory
outside the checkout, offline), plus the positional-argument rule of the dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longgen.overrides import fill_positional

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "prompts" / "storytelling_paper_boat.txt"


def _cli(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update({"XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "HF_HUB_OFFLINE": "1"})
    return subprocess.run([sys.executable, "-m", "longgen.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_fill_positional():
    assert fill_positional("split-prompt", ["s.txt", "num_prompts=4"]) == ["scenario=s.txt", "num_prompts=4"]
    assert fill_positional("split-prompt", ["--cfg", "job", "s.txt"]) == ["--cfg", "job", "scenario=s.txt"]
    assert fill_positional("split-prompt", ["-m", "num_prompts=2,3", "s.txt"]) == ["-m", "num_prompts=2,3", "scenario=s.txt"]
    assert fill_positional("split-prompt", ["--info", "defaults", "s.txt"]) == ["--info", "defaults", "scenario=s.txt"]
    assert fill_positional("split-prompt", ["scenario=a.txt"]) == ["scenario=a.txt"]
    assert fill_positional("generate", ["s.txt"]) == ["s.txt"]


def test_split_prompt_offline_from_outside_the_checkout(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli(["split-prompt", str(EXAMPLE), "num_prompts=4", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    story = json.loads((run_dir / "story.json").read_text())
    assert len(story["local"]) == 4 and all(p.startswith(story["global"]) for p in story["local"])
    assert story["source"]["splitter"] == "offline" and story["source"]["selected_by"] == "auto"
    assert story["scenario"] == EXAMPLE.read_text().strip()
    assert "global" in proc.stdout and "The young girl folds a paper boat" in proc.stdout  # the Rich table
    assert "no $OPENAI_API_KEY" in proc.stderr  # auto's one-line notice
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize("args,message", [
    (["split-prompt", "missing.txt", "num_prompts=2"], "cannot read scenario file missing.txt"),
    (["split-prompt", str(EXAMPLE)], "pass num_prompts=N"),
    (["split-prompt", str(EXAMPLE), "num_prompts=0"], "num_prompts=0 must be a whole number from 1 to 16"),
    (["split-prompt", str(EXAMPLE), "num_prompts=2", "splitter=gpt"], "unknown splitter 'gpt'; choose one of: auto, llm, offline"),
    (["split-prompt", str(EXAMPLE), "num_prompts=2", "splitter=llm"], "export OPENAI_API_KEY"),
    (["split-prompt", str(EXAMPLE), "num_prompts=2", "splitter=llm", "+splitter.temprature=1"], "has no option 'temprature'"),
])
def test_split_prompt_errors_are_one_line(tmp_path, args, message):
    proc = _cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()  # no run directory left behind (it once kept a log and .hydra/)
    assert not (tmp_path / "run" / "story.json").exists()


def test_generate_from_a_scenario_end_to_end(tmp_path):
    run_dir = tmp_path / "gen"
    proc = _cli(["generate", "backbone=tiny", "sampler=gen-l-video", f"scenario={EXAMPLE}", "num_prompts=3",
                 "num_windows=4", "splitter=offline", "sampler.num_steps=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    story = json.loads((run_dir / "story.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(story["local"]) == 3 and story["source"]["splitter"] == "offline"
    assert story["source"]["scenario_file"] == str(EXAMPLE)
    # L = 13 + 4*3 = 25 latent frames, window centres 6.5, 10.5, 14.5, 18.5 over segments of 25/3 frames
    assert [w["local_prompt"] for w in manifest["windows"]] == [0, 1, 1, 2]
    assert manifest["local_prompts"] == 3 and manifest["frames"] == 97
    stderr = " ".join(proc.stderr.split())
    assert "16-token text limit of tiny-random-cogvideox" in stderr  # long prompts only warn on the random-weight model


def test_generate_rejects_an_over_long_prompt_before_looking_for_weights(tmp_path):
    prompt = " ".join(["a very detailed description of a red fox in the snow"] * 25)  # 275 words
    proc = _cli(["generate", "backbone=cogvideox-2b", f"prompt={prompt}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    line = [l for l in proc.stderr.splitlines() if l.startswith("longgen: error:")][0]
    assert "local prompt 1 has at least 276 tokens (one per word)" in line and "226-token text limit" in line
    assert "huggingface" not in proc.stderr.lower()


def test_help_and_cfg_work_after_the_command(tmp_path):
    for command in ("split-prompt", "generate"):
        proc = _cli([command, "--help"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "splitter: auto, llm, offline" in proc.stdout
    proc = _cli(["split-prompt", "--help"], tmp_path)
    assert "$OPENAI_API_KEY" in proc.stdout
    proc = _cli(["split-prompt", "s.txt", "num_prompts=3", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "scenario: s.txt" in proc.stdout and "num_prompts: 3" in proc.stdout


def test_out_never_overwrites_an_existing_file_unless_asked(tmp_path):
    """Issue 28: `out=FILE` replaced any existing file."""
    mine = tmp_path / "notes.json"
    mine.write_text("the user's own file\n")
    proc = _cli(["split-prompt", str(EXAMPLE), "num_prompts=2", f"out={mine}", f"hydra.run.dir={tmp_path / 'a'}"],
                tmp_path)
    assert proc.returncode == 2 and "pass overwrite=true" in proc.stderr, proc.stderr
    assert mine.read_text() == "the user's own file\n" and not (tmp_path / "a" / "story.json").exists()
    proc = _cli(["split-prompt", str(EXAMPLE), "num_prompts=2", f"out={mine}", "overwrite=true",
                 f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(mine.read_text())["local"]) == 2

"""What the CLI does with argv before Hydra sees it: keys typed on the command line are refused before anything is
run or saved, and free-text values with commas or quotes are quoted for Hydra's override grammar."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cli_helpers import error_lines, run_cli

KEY = "sk-proj-Zx81mQ0pLk29aaBBccDDeeFF"


@pytest.mark.parametrize("args", [
    pytest.param(["+splitter.api_key=" + KEY], id="api-key-option"),
    pytest.param(["splitter.api_key=plainvalue"], id="api-key-option-any-value"),
    pytest.param(["hydra.job.env_set.OPENAI_API_KEY=" + KEY], id="env-set"),
    pytest.param([f"splitter.base_url=http://me:{KEY}@127.0.0.1:8000/v1"], id="base-url-userinfo"),
    pytest.param(["splitter.base_url=http://127.0.0.1:8000/v1?api_key=abc123secret"], id="base-url-query"),
    pytest.param(["splitter.base_url=https://abc123secret@example.com/v1"], id="base-url-token-as-user"),
    pytest.param(["splitter.api_key_env=" + KEY], id="api-key-env-is-a-key"),
    pytest.param(["splitter.api_key_env=sk_live_0123456789abcdefABCDEF"], id="api-key-env-is-a-key-identifier"),
    pytest.param(["splitter.model=" + KEY], id="key-as-any-value"),
    pytest.param([KEY], id="key-as-positional"),
])
def test_keys_on_the_command_line_are_refused_before_anything_is_saved(args, tmp_path, monkeypatch, capsys):
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rc = main(["split-prompt", "scenario.txt", "num_prompts=2", "splitter=llm", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("longgen: error: ") and err.count("\n") == 1
    assert "nothing was run or saved" in err
    for secret in (KEY, "abc123secret", "0123456789abcdef", "plainvalue"):
        assert secret not in err
    assert list(tmp_path.iterdir()) == []  # no outputs/…/.hydra holding the key


def test_the_key_in_the_environment_is_refused_when_typed_as_a_value(tmp_path, monkeypatch, capsys):
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MY_KEY", "local-server-token-7788")  # no provider prefix: known because it was read
    rc = main(["split-prompt", "s.txt", "num_prompts=2", "splitter.api_key_env=MY_KEY", "out=local-server-token-7788"])
    err = capsys.readouterr().err
    assert rc == 2 and "looks like an API key" in err and "local-server-token-7788" not in err


@pytest.mark.parametrize("arg", ["backbone.lora=[{path: a.safetensors, events: [0.5}]", "seed=[1", "sampler.stride=}"])
def test_an_override_hydra_cannot_read_is_one_line(arg, tmp_path, monkeypatch, capsys):
    """A value Hydra's override grammar rejects (an unclosed bracket in a LoRA list, a stray brace) is one line
    naming the option and what to check, before Hydra runs: not Hydra's two lines and its link, with status 1."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "backbone=tiny", "prompt=a cat", arg])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"longgen: error: {arg.split('=')[0]}=") and "check its brackets, braces and quotes" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, arg", [("generate", "seed=0,1"), ("generate", "+experiment=direct-4x,fifo-4x"),
                                          ("generate", "seed=range(0,3)"), ("eval", "settings.flow=dis,farneback")])
def test_several_values_without_multirun_are_one_line(command, arg, tmp_path, monkeypatch, capsys):
    """Red-team: `longgen generate seed=0,1` (a sweep without -m) printed Hydra's five-line "Ambiguous value" hint
    and exited 1; now one line naming the override, -m, and how a list or a text with commas is written."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main([command, "backbone=tiny", "prompt=a cat", arg] if command == "generate" else [command, "x.mp4", arg])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"longgen: error: {arg} gives several values: add -m to run one job per value"), err
    assert list(tmp_path.iterdir()) == []


def test_a_launcher_without_multirun_is_one_line(tmp_path, monkeypatch, capsys):
    """Red-team: `longgen generate hydra/launcher=submitit_slurm ...` without -m ran the video in this process (on
    a login node) with no word, as Hydra ignores a launcher outside a multirun; now one line asking for -m."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "backbone=tiny", "prompt=a cat", "hydra/launcher=submitit_slurm"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("longgen: error: hydra/launcher=submitit_slurm launches the jobs of a sweep: add -m"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [["-m", "--cfg", "job"], ["--multirun", "--info"], ["-m", "-c", "job"]])
def test_two_hydra_modes_are_one_line(flags, tmp_path, monkeypatch, capsys):
    """-m with --cfg job (print a sweep's config) or --info: Hydra runs one mode and raised a ValueError traceback;
    one line naming both flags and what to drop instead."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "backbone=tiny", "prompt=a cat", "seed=0,1", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("longgen: error: ") and "cannot be combined" in err, err
    assert list(tmp_path.iterdir()) == []


def test_ordinary_values_are_not_mistaken_for_keys():
    from longgen.redact import check_command_line

    ordinary = ["prompt=the flag bearer marches past a tall tower", "splitter.api_key_env=MY_COMPANY_OPENAI_API_KEY_PROD",
                "splitter.base_url=https://example.openai.azure.com/openai/v1?api-version=2024-10-21",
                "story=/data/runs/8f14e45fceea167a5a36dedd4bea2543/sk-learn-experiments-2024/story.json", "splitter.model=llama3.1:8b-instruct",
                "sampler.max_tokens=4096"]
    assert check_command_line(ordinary, environ={}) is None


def _read_back(arg: str):
    """The value Hydra and OmegaConf give the config key for one override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(arg)
    assert not override.is_sweep_override()
    return OmegaConf.create({"v": override.value()}).v


@pytest.mark.parametrize("text", [
    "a cat, then a dog", "cat's ball", 'she said "hi", then left', "a = b [c] {d} (e)", "50% off, #1 deal",
    "ends with a backslash \\", "back\\'slash quote", "costs ${5}, then more", "a \\${x}, too", "true", "1e3",
])
def test_free_text_prompts_reach_the_config_as_typed(text):
    from longgen.overrides import quote_free_text

    (arg,) = quote_free_text([f"prompt={text}"])
    assert _read_back(arg) == text


def test_values_hydra_already_reads_as_text_are_left_alone_and_sweeps_survive_multirun():
    from longgen.overrides import quote_free_text

    kept = ["prompt=a cat", "prompt=null", "prompt='a cat, then a dog'", "prompt=a cat\\, then a dog", "seed=0,1",
            "sampler=syncos,glc", "story=${oc.env:HOME}/story.json"]
    assert quote_free_text(kept) == kept
    # a prompt is only ever text: an interpolation in it is kept as typed (issue 28), never resolved
    assert quote_free_text(["prompt=${oc.env:HOME}"]) == ["prompt='\\${oc.env:HOME}'"]
    assert quote_free_text(["-m", "prompt=a cat,a dog", "prompt=cat's"]) == ["-m", "prompt=a cat,a dog", "prompt='cat\\'s'"]


def test_cli_prompt_with_comma_and_apostrophe_just_works(tmp_path):
    proc = run_cli("generate", "prompt=a cat, then a dog's ball", "negative_prompt=blurry, dark", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = OmegaConf.create(proc.stdout)
    assert config.prompt == "a cat, then a dog's ball" and config.negative_prompt == "blurry, dark"
    assert not error_lines(proc)


def test_cli_story_with_more_events_than_windows_fails_before_any_work(tmp_path):
    import json

    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global": "a fox", "local": [f"a fox, event {i}" for i in range(1000)]}))
    proc = run_cli("generate", "backbone=tiny", "sampler=gen-l-video", "num_windows=2", f"story={story}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "1000 local prompts but the video has only 2 window(s)" in line and "pass num_windows=1000" in line
    assert not (tmp_path / "run" / "video.mp4").exists()


@pytest.mark.parametrize("arg, words", [("a-cat", "'a-cat' is not an override: write KEY=VALUE"),
                                        ("story.global=x", "story is one value, not a group of options")])
def test_a_bare_word_or_options_under_a_plain_value_are_one_line(arg, words, tmp_path, monkeypatch, capsys):
    """A word without `=` and `story.global=…` (a key under a one-value option) are one line before Hydra runs,
    not Hydra's "Error parsing override" / "Could not override" and its four more lines."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "backbone=tiny", "prompt=a cat", arg])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"longgen: error: {words}"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["extend", "decode", "eval", "split-prompt"])
def test_a_one_process_command_under_torchrun_is_one_line_from_rank_0(command, tmp_path, monkeypatch, capsys):
    """Red-team: `torchrun --nproc-per-node=2 -m longgen.cli extend …` ran extend on every rank; rank 1 lost the
    run directory's lock, torchrun stopped rank 0, and a half-started directory stayed. Now rank 0 says in one line
    to start it without torchrun, the other ranks say nothing, all exit 2 and nothing is made."""
    from longgen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", f"longgen: error: longgen {command} runs in one process: start it without torchrun"),
                       ("1", "")):
        monkeypatch.setenv("RANK", rank)
        assert main([command, "clip.mp4", "prompt=a cat", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == (1 if said else 0), err
    assert list(tmp_path.iterdir()) == []

"""`longgen COMMAND --help` is one short page (issue 25): usage, the config groups with their choices, and the
options with the explanations written next to them in the YAML; `--cfg job` and `--hydra-help` keep Hydra's own
output. Run in this process through `longgen.cli.main` (the same dispatch as the `longgen` script)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from longgen.cli import main

CONF = Path(__file__).resolve().parents[1] / "conf"
#: command → its primary config
CONFIGS = {"generate": "generate", "extend": "extend", "split-prompt": "split_prompt", "eval": "eval"}
MAX_LINES = 53  # 52, and one for the image options (issue 25)


def continued_notes(config: str) -> list[str]:
    """The indented comment lines that continue an option's note (before `hydra:`)."""
    text = (CONF / f"{config}.yaml").read_text().split("\nhydra:")[0]
    return [m.group(1).strip() for m in re.finditer(r"^ +# (.+)$", text, re.M)]


def single_line_notes(config: str) -> dict[str, str]:
    """`key: value  # note` lines of a primary config at the top level (outside `defaults` and `hydra`), read
    here on their own, without the help page's parser."""
    notes, skip = {}, False
    for line in (CONF / f"{config}.yaml").read_text().splitlines():
        top = re.match(r"^([a-z_]+):", line)
        if top:
            skip = top.group(1) in ("defaults", "hydra")
        m = re.match(r"^([a-z_]+): [^#]*?\s+# (.+)$", line)
        if m and not skip:
            notes[m.group(1)] = m.group(2).strip()
    return notes


def help_of(capsys, *args: str) -> str:
    assert main([*args, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_help_is_short_and_lists_groups_and_the_documented_options(command, capsys):
    page = help_of(capsys, command)
    lines = page.splitlines()
    assert len(lines) <= MAX_LINES, f"{command} --help has {len(lines)} lines"
    assert f"usage: longgen {command}" in page and "--cfg job" in page and "--hydra-help" in page
    notes = single_line_notes(CONFIGS[command])
    assert len(notes) >= 5
    for key, note in notes.items():
        shown = [line for line in lines if re.match(rf"^ {{1,2}}{key}(=\S+|\.\*:)?\s", line)]
        assert shown and note in shown[0], f"{command} --help: {key} without its note {note!r}"
    for note in continued_notes(CONFIGS[command]):
        assert note in page, f"{command} --help lacks the continued note {note!r}"
    assert "_target_" not in page  # no config dump


def test_groups_show_their_choices_and_the_one_in_use(capsys):
    page = help_of(capsys, "generate", "sampler=glc")
    assert "  sampler: direct, ditctrl, fifo, freelong, gen-l-video, glc, syncos (in use: glc)" in page
    assert ("  backbone: cogvideox-2b, cogvideox-5b, cogvideox-5b-i2v, hunyuanvideo-1.5, hunyuanvideo-1.5-i2v, tiny, "
            "tiny-hunyuan15, tiny-hunyuan15-i2v, tiny-i2v, tiny-wan, tiny-wan-i2v, tiny-wan22-a14b, tiny-wan22-ti2v, wan2.1-i2v-14b-480p, wan2.1-t2v-1.3b, "
            "wan2.1-t2v-14b, wan2.2-t2v-a14b, wan2.2-ti2v-5b (in use: cogvideox-2b)") in page
    assert re.search(r"^  \+experiment: .*syncos-4x", page, re.M)
    assert re.search(r"^  seed=0 +initial noise", page, re.M)  # the default beside the name
    split = help_of(capsys, "split-prompt")
    assert "splitter: auto, llm, offline (in use: auto)" in split and "sampler:" not in split
    assert "$OPENAI_API_KEY" in split  # the template's `$$` escape


def test_cfg_job_and_hydra_help_stay_hydras(capsys, monkeypatch):
    """The page replaces only --help/-h: --cfg job and --hydra-help still reach the command's Hydra app (their
    output is Hydra's; tests/test_split_prompt_cli.py and tests/test_cli_inputs.py read --cfg job's)."""
    import longgen.cli

    reached = []
    monkeypatch.setattr(longgen.cli, "run_app", lambda module, prog, rest: reached.append((prog, rest)) or 0)
    assert main(["generate", "backbone=tiny", "--cfg", "job"]) == 0
    assert main(["eval", "--hydra-help"]) == 0
    assert reached[0][1][:2] == ["--cfg", "job"] and "--hydra-help" in reached[1][1]  # flags first, for argparse
    assert reached[0][0] == "longgen generate" and reached[1][0] == "longgen eval" and not capsys.readouterr().out
    for command in ("resume", "decode"):  # path-first commands print their own short usage
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        page = capsys.readouterr().out
        assert f"usage: longgen {command} RUN_DIR" in page and len(page.splitlines()) <= MAX_LINES


@pytest.mark.parametrize("command, form", [("resume", "longgen resume RUN_DIR"), ("decode", "longgen decode RUN_DIR")])
def test_a_path_command_without_its_path_is_one_error_line(command, form, capsys):
    """`longgen resume` alone: one `longgen: error:` line on stderr naming what to give (it printed the usage page
    on stdout, and no error line)."""
    with pytest.raises(SystemExit) as stop:
        main([command])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"longgen: error: give the path first: {form}") and f"{command} --help" in err

"""Hydra's own features through longgen's command-line checks: a user's group files with `--config-dir` /
`--config-path` / `hydra.searchpath` (longgen/config_search.py), and Hydra's shell completion (`-sc`).

The checks read the configs on the command line's search path, so a user's `backbone/my-tiny.yaml` is a choice like
the shipped ones, while a typo of a shipped choice or key still fails in one line before Hydra starts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import longgen.conf
from longgen.cli import command_line_problem
from longgen.config_search import ConfigSearch, absolute_config_path, check_search_path, overrides_only
from longgen.overrides import check_group_choices, check_option_keys, fill_positional

from cli_helpers import error_lines, run_cli

CONF = Path(longgen.conf.__file__).resolve().parent
SMALL = ["backbone.height=16", "backbone.width=16", "num_windows=1", "sampler.num_steps=1", "prompt=a cat"]


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A user's config dir holding one backbone: a copy of the shipped tiny one, with a key of its own."""
    folder = tmp_path / "my_conf"
    (folder / "backbone").mkdir(parents=True)
    shutil.copy(CONF / "backbone" / "tiny.yaml", folder / "backbone" / "my-tiny.yaml")
    return folder


@pytest.fixture
def full_copy(tmp_path) -> Path:
    """A whole config dir for --config-path: the shipped conf/ without gen-l-video, plus a user's backbone."""
    folder = tmp_path / "whole_conf"
    shutil.copytree(CONF, folder, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    (folder / "sampler" / "gen-l-video.yaml").unlink()
    shutil.copy(CONF / "backbone" / "tiny.yaml", folder / "backbone" / "my-tiny.yaml")
    return folder


@pytest.mark.parametrize("spelling", [["--config-dir", "{dir}"], ["-cd", "{dir}"], ["--config-dir={dir}"],
                                      ["hydra.searchpath=[file://{dir}]"]])
def test_a_users_group_file_is_a_choice_and_typos_still_fail(user_dir, spelling):
    flags = [s.format(dir=user_dir) for s in spelling]
    assert check_group_choices([*flags, "backbone=my-tiny"]) is None
    assert check_option_keys("generate", [*flags, "backbone=my-tiny", "backbone.height=16"]) is None
    typo = check_group_choices([*flags, "backbone=my-tiyn"])
    assert typo.startswith("unknown backbone 'my-tiyn'; choose one of:") and "my-tiny" in typo and "tiny-wan" in typo
    assert check_group_choices([*flags, "sampler=syncoss"]).startswith("unknown sampler 'syncoss'")
    assert "has no option 'heigth'" in check_option_keys("generate", [*flags, "backbone=my-tiny", "backbone.heigth=16"])
    # without the flag the user's file is unknown, as before
    assert check_group_choices(["backbone=my-tiny"]).startswith("unknown backbone 'my-tiny'")


def test_the_users_file_is_read_for_its_keys(user_dir):
    path = user_dir / "backbone" / "my-tiny.yaml"
    path.write_text(path.read_text() + "my_knob: 3\n")
    args = ["-cd", str(user_dir), "backbone=my-tiny", "backbone.my_knob=4"]
    assert check_option_keys("generate", args) is None
    assert "has no option 'my_knob'" in check_option_keys("generate", ["backbone=tiny", "backbone.my_knob=4"])


def test_config_path_replaces_the_shipped_configs(full_copy):
    flags = ["--config-path", str(full_copy)]
    assert check_search_path(flags, "generate") is None
    assert check_group_choices([*flags, "backbone=my-tiny"]) is None
    assert check_group_choices([*flags, "sampler=gen-l-video"]).startswith("unknown sampler 'gen-l-video'")
    assert check_group_choices(["sampler=gen-l-video"]) is None  # shipped


def test_search_path_problems_are_one_line(user_dir, tmp_path):
    assert check_search_path(["-cd", str(tmp_path / "nope")], "generate") == f"--config-dir {tmp_path / 'nope'}: no such directory"
    assert check_search_path(["--config-dir"], "generate") == "--config-dir needs a directory: --config-dir DIR"
    missing = check_search_path(["-cp", str(user_dir)], "generate")
    assert missing.startswith(f"--config-path {user_dir} has no generate.yaml") and "--config-dir" in missing
    assert check_search_path(["-cn", "nope"], "generate") == "--config-name nope: no nope.yaml on the config search path"
    assert check_search_path(["-cd", str(user_dir)], "generate") is None


def test_a_users_file_that_is_not_yaml_is_one_line(user_dir):
    (user_dir / "backbone" / "broken.yaml").write_text("a: [1\nb: 2\n")
    problem = command_line_problem("generate", ["-cd", str(user_dir), "backbone=broken", "backbone.a=2"])
    assert problem == f"{user_dir / 'backbone' / 'broken.yaml'} is not valid YAML (line 2): expected ',' or ']', but got ':'"


def test_what_cannot_be_read_here_is_left_to_hydra(user_dir):
    search = ConfigSearch.of(["hydra.searchpath=[pkg://no_such_package.conf]"], "generate")
    assert search.unseen == ("pkg://no_such_package.conf",)
    assert check_group_choices(["hydra.searchpath=[pkg://no_such_package.conf]", "backbone=theirs"]) is None
    # the order is Hydra's: the primary config's directory, --config-dir, then hydra.searchpath
    both = ConfigSearch.of(["-cd", str(user_dir), f"hydra.searchpath=[file://{user_dir}]"], "generate")
    assert [str(r) for r in both.roots] == [str(CONF), str(user_dir), str(user_dir)]


def test_hydras_flags_and_their_values_are_not_overrides(tmp_path, monkeypatch):
    args = ["-sc", "install=bash", "--info", "config", "-cn", "generate", "--cfg", "job", "-p", "sampler", "-m",
            "--config-dir=x", "seed=1"]
    assert overrides_only(args) == ["seed=1"]
    assert check_option_keys("generate", ["--shell-completion", "install=bash"]) is None
    assert check_option_keys("generate", ["-sc", "query=bash"]) is None
    assert fill_positional("split-prompt", ["-cd", "conf_dir", "story.txt"]) == ["-cd", "conf_dir", "scenario=story.txt"]
    monkeypatch.chdir(tmp_path)
    assert absolute_config_path(["-cp", "mine", "--config-path=other", "-cp", "/abs", "seed=1"]) == [
        "-cp", str(tmp_path / "mine"), f"--config-path={tmp_path / 'other'}", "-cp", "/abs", "seed=1"]


def test_a_copy_of_tiny_under_another_name_generates_the_same_video(user_dir, tmp_path):
    """`--config-dir` with a user's backbone file through the real CLI, in one multirun over the copy and the
    shipped original (the sweep is planned with the user's dir before any job starts): the same latents."""
    sweep = tmp_path / "sweep"
    proc = run_cli("generate", "-m", "--config-dir", str(user_dir), "backbone=my-tiny,tiny", *SMALL,
                   "save_latents=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    latents = [load_file(str(sweep / f"{n}_syncos" / "latents.safetensors"))["latents"] for n in (0, 1)]
    assert latents[0].shape == (13, 4, 2, 2) and (latents[0] == latents[1]).all()
    assert (sweep / "0_syncos" / "video.mp4").stat().st_size > 0
    typo = run_cli("generate", "--config-dir", str(user_dir), "backbone=my-tiyn", *SMALL, cwd=tmp_path)
    assert typo.returncode == 2 and len(error_lines(typo)) == 1 and "unknown backbone 'my-tiyn'" in typo.stderr


def test_config_path_relative_to_the_working_directory_through_the_cli(full_copy, tmp_path):
    proc = run_cli("generate", "-cp", full_copy.name, "backbone=my-tiny", *SMALL, "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model_id: tiny-random-cogvideox" in proc.stdout
    refused = run_cli("generate", "-cp", full_copy.name, "sampler=gen-l-video", *SMALL, "--cfg", "job", cwd=tmp_path)
    assert refused.returncode == 2 and error_lines(refused)[0].startswith("longgen: error: unknown sampler 'gen-l-video'")


@pytest.mark.parametrize("args", [["generate", "-sc", "install=bash"], ["generate", "--shell-completion", "install=bash"]])
def test_shell_completion_installs_for_longgen(args):
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("complete -o nospace -o default -F hydra_bash_completion longgen")
    assert "error" not in proc.stderr


def test_shell_completion_answers_commands_groups_and_keys(tmp_path):
    def query(line: str) -> list[str]:
        proc = run_cli("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert query("longgen ext") == ["extend"]
    assert "split-prompt" in query("longgen ")
    assert query("longgen generate sampler=sy") == ["sampler=syncos"]
    assert query("longgen generate backbone=tiny sampler.t_") == ["sampler.t_min="]
    assert query("longgen resume ") == []  # a path: the shell completes file names


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_installed_bash_script_completes_through_longgen(tmp_path):
    """The script Hydra prints, sourced in bash, run as bash runs it on TAB: it calls `longgen -sc query=bash`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "longgen").write_text(f"#!/bin/sh\nexec {sys.executable} -m longgen.cli \"$@\"\n")
    (bin_dir / "longgen").chmod(0o755)
    script = ('eval "$(longgen -sc install=bash)"; COMP_LINE="longgen generate sampler=gl"; '
              'COMP_POINT=${#COMP_LINE}; COMP_CWORD=2; hydra_bash_completion; echo "${COMPREPLY[@]}"')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sampler=glc"]

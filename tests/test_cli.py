"""The `longgen` command as a user runs it: outputs, determinism, multirun, and one-line errors."""

from __future__ import annotations

import json
import os

import imageio_ffmpeg
import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import FAST, error_lines, run_cli


def test_help_lists_commands_and_rejects_unknown():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "generate" in proc.stdout
    proc = run_cli("genrate")
    assert proc.returncode == 2
    assert error_lines(proc) and "unknown command 'genrate'" in proc.stderr
    proc = run_cli("generate", "--help")
    assert proc.returncode == 0 and "backbone" in proc.stdout and "longgen generate" in proc.stdout


def test_generate_writes_video_story_config_manifest_latents(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("generate", *FAST, "backbone.height=16", "backbone.width=16", "sampler=gen-l-video", "num_windows=4",
                   "prompt=a cat", "save_latents=true", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"video.mp4", "story.json", "manifest.json", "latents.safetensors", ".hydra"} <= names
    assert not any("partial" in n for n in names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["latent_length"] == 25 and manifest["frames"] == 97 and manifest["fps"] == 8
    assert [w["start"] for w in manifest["windows"]] == [0, 4, 8, 12]
    assert manifest["transformer_forwards"] == 2 * 4 * 2  # steps x windows x CFG branches
    assert manifest["seed"] == 0 and "torch" in manifest["versions"]
    assert 100 * 2**20 < manifest["peak_host_memory_bytes"] < 24 * 2**30  # torch + diffusers loaded; KiB read as bytes
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(out / "video.mp4"))
    assert n == 4 * (25 - 1) + 1
    latents = load_file(str(out / "latents.safetensors"))["latents"]
    assert latents.shape == (25, 4, 2, 2)  # 16x16 pixels: the VAE's 8x spatial compression
    story = json.loads((out / "story.json").read_text())
    assert story["local"] == ["a cat"]
    assert (out / ".hydra" / "config.yaml").exists()


def test_story_file_maps_windows_to_prompts_by_centre(tmp_path, monkeypatch, own_logging):
    """In this process (`longgen.cli.main`): the mapping is the planner's, not the process's."""
    from longgen.cli import main

    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global": "a fox", "local": ["a fox walks", "a fox jumps"], "durations": [1, 3]}))
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *FAST, "backbone.height=16", "backbone.width=16", "sampler=gen-l-video", "num_windows=5",
                 f"story={story}", f"hydra.run.dir={out}"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # L = 29; the first segment ends at 29/4 = 7.25: only the window centred at 6.5 takes prompt 0
    assert [w["local_prompt"] for w in manifest["windows"]] == [0, 1, 1, 1, 1]


def test_same_seed_same_latents_other_seed_differs_and_joblib_multirun_one_directory_per_job(tmp_path, monkeypatch,
                                                                                              own_logging):
    """One multirun through the joblib launcher (2 worker processes) and one single run in this test's own process:
    the same seed gives the same latents in another process, another seed differs, each job has its directory.
    (The default basic launcher's sweeps, a sampler axis included, run in test_syncos, test_wan_cli, test_eval_cli
    and test_distributed.)"""
    from longgen.cli import main

    common = [*FAST, "backbone.height=16", "backbone.width=16", "num_windows=2", "prompt=a cat", "save_latents=true"]
    sweep = run_cli("generate", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common, "seed=7,8",
                    f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0_syncos", "1_syncos"]
    for job in jobs:
        assert {"video.mp4", "manifest.json"} <= {p.name for p in (tmp_path / "sweep" / job).iterdir()}
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *common, "seed=7", f"hydra.run.dir={tmp_path / 'a'}"]) == 0

    def latents(run):
        return load_file(str(run / "latents.safetensors"))["latents"]

    a = latents(tmp_path / "a")
    b, c = latents(tmp_path / "sweep" / "0_syncos"), latents(tmp_path / "sweep" / "1_syncos")
    assert torch.equal(a, b)  # seed 7 on the default sampler (syncos), alone and as a job of the sweep
    assert not torch.allclose(a, c)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD_INPUTS = [
    (["backbone=tinyy"], "unknown backbone 'tinyy'"),
    (["sampler=syncoss"], "unknown sampler 'syncoss'"),
    (["sampler.stride=0"], "sampler.stride=0"),
    (["sampler.stride=14"], "sampler.stride=14"),
    (["sampler.strde=3"], "has no option 'strde'"),
    (["num_windows=0"], "num_windows=0"),
    (["num_windows=null", "latent_frames=5"], "latent_frames=5"),
    (["num_windows=2", "length_factor=2"], "only one of"),
    (["prompt=null"], "nothing to generate"),
    (["prompt=null", "story=/nonexistent/story.json"], "cannot read story file"),
    (["prompt=null", "story={tmp}/empty.json"], "non-empty list"),
    (["prompt=null", "story={tmp}/broken.json"], "not valid JSON"),
    (["backbone=cogvideox-2b", "model_path=/nonexistent/CogVideoX-2b"], "backbone.model_path=/nonexistent"),
    (["backbone=cogvideox-2b"], "cannot load THUDM/CogVideoX-2b"),
    (["sampler.guidance_scale=-1"], "guidance_scale"),
    (["sampler=gen-l-video", "sampler.stride=3", "num_windows=2"], "is even"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_inputs_fail_with_one_line(tmp_path, overrides, message, monkeypatch, capfd, own_logging):
    """In this process (`longgen.cli.main`, what `python -m longgen.cli` runs; capfd reads file descriptor 2, so a
    traceback printed by a logging handler counts too); the refusals as a separate process: test_help_lists_commands_
    and_rejects_unknown here, test_distributed's gpus=2 and test_no_data_loss's input errors."""
    import huggingface_hub.constants

    from longgen.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time; the env at import
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "empty.json", json.dumps({"global": "g", "local": []}))
    _write(tmp_path, "broken.json", "{not json")
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    base = ["backbone=tiny", "prompt=a cat", "num_windows=2", "sampler.num_steps=1"]
    keys = {o.split("=")[0] for o in overrides}
    args = [b for b in base if b.split("=")[0] not in keys] + overrides
    out = tmp_path / "run"
    try:
        code = main(["generate", *args, f"hydra.run.dir={out}"])
    except SystemExit as exc:  # what the process would exit with
        code = exc.code
    stderr = capfd.readouterr().err
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("longgen: error:")]
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr
    if out.exists():
        assert not {"video.mp4", "manifest.json", "story.json"} & {p.name for p in out.iterdir()}


def test_a_reader_that_stops_early_gets_no_traceback():
    """`longgen generate --help | head -3` (or --cfg job into a pager that quits): the reader closes the pipe before
    longgen writes; that once ended in a BrokenPipeError traceback (Hydra's own for --cfg job)."""
    import signal
    import subprocess
    import sys

    from cli_helpers import ONE_THREAD

    args = ["generate", "backbone=tiny", "prompt=a cat", "--cfg", "job"]  # through Hydra's printing (--help: ours)
    proc = subprocess.Popen([sys.executable, "-m", "longgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ONE_THREAD})
    proc.stdout.close()  # before the interpreter has even started: every write longgen makes meets a closed pipe
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == -signal.SIGPIPE and stderr == "", stderr[-2000:]  # as `head` leaves any filter


def test_ctrl_c_while_the_cli_loads_is_one_line(monkeypatch, capsys):
    # a Ctrl-C in the first second of `longgen ...` (Python importing Hydra, torch, the command) was a traceback of
    # importlib frames; the commands catch their own from the moment they run (longgen/errors.py)
    import importlib.metadata
    import sys

    import longgen.__main__ as entry

    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "longgen"]
    assert script.value == "longgen.__main__:run"  # the console script goes through it

    class Interrupting:  # a finder that is Ctrl-C in the middle of loading the CLI's module
        def find_spec(self, name, path=None, target=None):
            if name == "longgen.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "longgen.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as ended:
        entry.run()
    assert ended.value.code == 130
    assert capsys.readouterr().err == "longgen: error: interrupted (SIGINT) before the command began\n"

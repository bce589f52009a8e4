"""Values of issue 29's and issue 27's options that can only be judged against the model or the video length —
FreeLong++ bands, FreeLong's whole-video sequence on Wan, DiTCtrl's subject tokens, a RIFLEx component, the
submitit launcher's keys — refused in one line when the run (or sweep) is planned, before a run directory, a
checkpoint or a submitted job exists. Each was once refused only after the run directory (and some after a first
step) was written, or by a traceback from submitit. In-process through Hydra's compose API: no weights load."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from longgen.commands.generate import validate_sweep
from longgen.errors import UsageError
from longgen.run.job import plan_job

BASE = ["backbone=tiny", "prompt=a fox", "num_windows=2", "sampler.num_steps=2", "backbone.height=16",
        "backbone.width=16"]
ROPE_TINY = ["backbone.architecture.transformer.use_rotary_positional_embeddings=true",
             "backbone.architecture.transformer.attention_head_dim=16"]  # 16 // 4 = 4 temporal channels: 2 components


def _plan(*overrides: str):
    own_prompt = any(o.startswith(("prompt=", "story=")) for o in overrides)  # instead of BASE's
    base = [b for b in BASE if not (own_prompt and b.startswith("prompt="))]
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=[*base, *overrides], return_hydra_config=True)
    return plan_job(cfg, Path("."), dict(cfg.hydra.runtime.choices))


@pytest.mark.parametrize("overrides,message", [
    # tiny: window 13, num_windows=2 -> 17 latent frames
    (["sampler=freelong", "sampler.multi_band=[13]"], "sampler.multi_band=[13] must hold windows longer than the local "
                                                      "window 13"),
    (["sampler=freelong", "sampler.multi_band=[17]"],
     "sampler.multi_band window 17 is not shorter than the video's 17"),
    (["sampler=ditctrl", "sampler.kv_layers=[0,2]", "sampler.subject_tokens=[3,16]"],
     "sampler.subject_tokens=[3, 16] points past the 16 text tokens of this model: use token positions below 16"),
    # a subject token past a prompt's own tokens (tiny: one per word) lands in its padding: no subject there
    (["sampler=ditctrl", "sampler.kv_layers=[0,2]", "sampler.subject_tokens=[0,2]"],
     "sampler.subject_tokens=[0, 2] points past the 2 text tokens of local prompt 1: use token positions below 2"),
    (["backbone=tiny-wan", "sampler=ditctrl", "sampler.kv_layers=[0,2]", "sampler.subject_tokens=[5]"],
     "sampler.subject_tokens=[5] points past the 2 text tokens of local prompt 1"),
    (["backbone=tiny-hunyuan15", "sampler=ditctrl", "sampler.kv_layers=[0,2]", "sampler.subject_tokens=[2]",
      "story=STORY"], "sampler.subject_tokens=[2] points past the 2 text tokens of local prompt 2"),
    (["backbone=tiny-wan", "backbone.riflex=3"], "backbone.riflex=3: this model's temporal RoPE has 2 components"),
    (["backbone=tiny-wan", "sampler=freelong", "num_windows=null", "latent_frames=1025"],
     "FreeLong runs all 1025 latent frames as one sequence, but this Wan's RoPE table covers 1024"),
    (["backbone.riflex=3", *ROPE_TINY], "backbone.riflex=3: this model's temporal RoPE has 2 components"),
])
def test_refused_in_one_line_when_planned(overrides, message, tmp_path):
    story = tmp_path / "story.json"
    story.write_text('{"global": "", "local": ["a red fox runs", "a fox"]}')  # the second prompt has 2 tokens
    with pytest.raises(UsageError) as err:
        _plan(*(o.replace("STORY", str(story)) for o in overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["sampler=freelong", "sampler.multi_band=[16]"],  # a band between the window and the video
    ["sampler=ditctrl", "sampler.kv_layers=[0,2]", "sampler.subject_tokens=[15]",  # the model's last text token
     "prompt=" + " ".join(["fox"] * 16)],
    ["sampler=ditctrl", "sampler.kv_layers=[0,2]", "sampler.subject_tokens=[1]"],  # the prompt's last token ("fox")
    ["sampler=ditctrl", "sampler.kv_sharing=false", "sampler.subject_tokens=[99]"],  # no sharing: no mask is made
    ["backbone=tiny-wan", "backbone.riflex=2"],
    ["backbone=tiny-wan", "sampler=freelong", "num_windows=null", "latent_frames=1024"],
    ["backbone.riflex=2", *ROPE_TINY],
])
def test_values_at_the_limits_are_planned(overrides):
    assert _plan(*overrides) is not None


@pytest.mark.parametrize("extra,line", [
    (["+hydra.launcher.bogus=1"], "hydra.launcher.bogus is not a setting of hydra/launcher=submitit_local"),
    (["hydra.launcher.timeout_min=0"], "hydra.launcher.timeout_min=0 must be a whole number >= 1"),
    (["hydra.launcher.timeout_min=abc"], "hydra.launcher.timeout_min='abc' must be a whole number >= 1"),
    (["hydra.launcher.tasks_per_node=0"], "hydra.launcher.tasks_per_node=0 must be a whole number >= 1"),
    (["hydra.launcher.gpus_per_node=abc"], "hydra.launcher.gpus_per_node='abc' must be a whole number >= 0"),
    (["hydra.launcher.mem_gb=-4"], "hydra.launcher.mem_gb=-4 must be a number of GB > 0"),
    (["hydra.launcher.setup=abc"], "hydra.launcher.setup='abc' must be a list of shell lines"),
    (["hydra.launcher.submitit_folder=/dev/null/jobs/%j"], "/dev/null is not a writable folder"),
    # red-team: as root os.access calls /proc writable, and submitit's mkdir then failed with a traceback
    (["hydra.launcher.submitit_folder=/proc/longgen-jobs/%j"], "/proc is not a writable folder"),
])
def test_submitit_launcher_values_are_one_line_before_any_job(extra, line):
    problem = validate_sweep(["-m", *BASE, "hydra/launcher=submitit_local", *extra])
    assert problem is not None and line in problem and problem.endswith("no job was started"), problem


def test_submitit_slurm_without_slurm_is_one_line(monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "srun" else which(name, *a, **k))
    problem = validate_sweep(["-m", *BASE, "hydra/launcher=submitit_slurm"])
    assert problem is not None and "needs SLURM, but this machine has no `srun`" in problem, problem
    assert validate_sweep(["-m", *BASE, "hydra/launcher=submitit_local"]) is None


def test_an_option_an_experiment_file_leaves_out_is_named_with_the_chosen_config():
    """`+experiment=fifo-4x sampler.num_steps=4` (FIFO has no step count): the line generate writes for
    `sampler=fifo sampler.num_steps=4`, not Hydra's "Could not override 'sampler.num_steps'."."""
    problem = validate_sweep(["-m", *BASE, "+experiment=direct-4x,fifo-4x", "length_factor=null"])
    assert problem is not None and "sampler=fifo has no option 'num_steps'; its options are: eta, guidance_scale" in problem


def test_a_file_that_is_no_image_is_named_without_pils_buffer(tmp_path):
    from longgen.run.images import fit_image

    bad = tmp_path / "start.png"
    bad.write_bytes(b"plain text, no image format")
    with pytest.raises(UsageError) as err:
        fit_image(bad, 32, 32, "crop", "image=")
    line = str(err.value)
    assert f"image= {bad} is not a readable image" in line and "object at 0x" not in line and "\n" not in line


def test_a_sweep_into_the_directory_of_another_sweep_is_one_line(tmp_path):
    """Red-team: a second `generate -m ... hydra.sweep.dir=D` into a finished sweep rewrote D/sweep.json, so its
    done jobs read "failed" and --rerun-failed was suggested for them; now refused before any job (the --rerun-failed
    line names D), whether the directory is spelled plain or quoted for Hydra."""
    sweep = tmp_path / "my sweep"
    sweep.mkdir()
    assert validate_sweep(["-m", *BASE, f"hydra.sweep.dir={sweep}"]) is None  # a folder of your own
    (sweep / "sweep.json").write_text("{}")
    for spelled in (str(sweep), f"'{sweep}'"):
        problem = validate_sweep(["-m", *BASE, "seed=0,1", f"hydra.sweep.dir={spelled}"])
        assert problem is not None and problem.startswith(f"hydra.sweep.dir={sweep} already holds a sweep (sweep.json)")
        assert f"--rerun-failed '{sweep}'" in problem and problem.endswith("no job was started"), problem

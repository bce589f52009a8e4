"""Options declared as data (longgen.options): every option of the samplers, the noise and the writer is a dataclass
field with its rule, and each rule draws its line exactly at the declared edge with one `group.option=VALUE` line.

The shipped YAML files are read from conf/, so a new sampler whose options are not declared with rules fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

import longgen.conf
from longgen.errors import UsageError
from longgen.noise import FreeNoise
from longgen.samplers.fifo import FIFOSampler
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import GLCSampler
from longgen.samplers.syncos import SynCoSSampler
from longgen.writer import Mp4Writer

from cli_helpers import error_lines, run_cli

CONF = Path(longgen.conf.__file__).resolve().parent
#: groups whose options are declared as rules, and whether every target of the group must declare them
DECLARED = {"sampler": True, "noise": False, "writer": True}


def shipped_targets() -> list[tuple[str, str, dict]]:
    """(group, option, its YAML as a dict) for the groups above."""
    found = []
    for group in DECLARED:
        for path in sorted((CONF / group).glob("*.yaml")):
            found.append((group, path.stem, OmegaConf.to_container(OmegaConf.load(path))))
    return found


@pytest.mark.parametrize("group,option,data", shipped_targets(), ids=[f"{g}={o}" for g, o, _ in shipped_targets()])
def test_every_shipped_option_is_declared_with_its_rule(group, option, data):
    target = get_class(data["_target_"])
    keys = [k for k in data if not k.startswith("_")]
    if not dataclasses.is_dataclass(target):
        assert not DECLARED[group] and not keys, f"{group}={option}: options without declared rules: {keys}"
        return
    rules = {f.name: f.metadata.get("rule") for f in dataclasses.fields(target) if f.init}
    assert sorted(keys) == sorted(rules), f"{group}={option}: the YAML and the declared options differ"
    assert all(callable(rule) for rule in rules.values()), f"{group}={option}: an option without a rule"


#: (class, group, option, the last value accepted, the first value refused, the line it gives)
EDGES = [
    (SynCoSSampler, "sampler", "num_steps", 1000, 1001, "sampler.num_steps=1001 must be a whole number between 1 and 1000"),
    (SynCoSSampler, "sampler", "num_steps", 1, 0, "sampler.num_steps=0 must be a whole number between 1 and 1000"),
    (SynCoSSampler, "sampler", "guidance_scale", 100, 100.5,
     "sampler.guidance_scale=100.5 must be a finite number between 0 and 100"),
    (SynCoSSampler, "sampler", "eta", 1.0, 1.01, "sampler.eta=1.01 must be a finite number between 0 and 1"),
    (SynCoSSampler, "sampler", "stride", 1, 0, "sampler.stride=0 must be a whole number >= 1"),
    (SynCoSSampler, "sampler", "t_min", 1000, 1001,
     "sampler.t_min=1001 must be a whole number between 0 and 1000 (a timestep; paper: 800-900)"),
    (SynCoSSampler, "sampler", "t_min", 0, -1, "sampler.t_min=-1 must be a whole number between 0 and 1000"),
    (SynCoSSampler, "sampler", "iters", 0, -1, "sampler.iters=-1 must be a whole number >= 0 (paper: 20-50)"),
    (SynCoSSampler, "sampler", "batch_windows", 1, 0, "sampler.batch_windows=0 must be a whole number >= 1"),
    (SynCoSSampler, "sampler", "lr", 1e-9, 0, "sampler.lr=0 must be a finite number > 0 (paper: 0.5-1)"),
    (SynCoSSampler, "sampler", "weight_decay", 0.0, -0.1, "sampler.weight_decay=-0.1 must be a finite number >= 0"),
    (SynCoSSampler, "sampler", "lr_decay_iters", 1, 0, "sampler.lr_decay_iters=0 must be a whole number >= 1"),
    (SynCoSSampler, "sampler", "lr_decay_rate", 1.0, 1.5,
     "sampler.lr_decay_rate=1.5 must be a finite number in (0, 1] (1 keeps the lr constant)"),
    (SynCoSSampler, "sampler", "lr_decay_rate", 1e-9, 0.0, "sampler.lr_decay_rate=0.0 must be a finite number in (0, 1]"),
    (SynCoSSampler, "sampler", "residual", "x0", "score", "sampler.residual='score': use one of eps, v, x0"),
    (SynCoSSampler, "sampler", "stage2", False, "yes", "sampler.stage2='yes' must be true or false"),
    (SynCoSSampler, "sampler", "random_t_range", [0, 999], [0, 1000],
     "sampler.random_t_range=[0, 1000] must be [low, high] whole timesteps, 0 <= low <= high <= 999"),
    (SynCoSSampler, "sampler", "random_t_range", [5, 5], [6, 5], "sampler.random_t_range=[6, 5] must be [low, high]"),
    (GenLVideoSampler, "sampler", "stride", 1, 0, "sampler.stride=0 must be a whole number >= 1"),
    (FIFOSampler, "sampler", "num_partitions", 64, 65, "sampler.num_partitions=65 must be a whole number between 1 and 64"),
    (FIFOSampler, "sampler", "num_partitions", 1, 0, "sampler.num_partitions=0 must be a whole number between 1 and 64"),
    (FIFOSampler, "sampler", "lookahead", False, 1, "sampler.lookahead=1 must be true or false"),
    (GLCSampler, "sampler", "gamma0", 0.0, -1e-9, "sampler.gamma0=-1e-09 must be a finite number >= 0"),
    (GLCSampler, "sampler", "dilation", None, 0, "sampler.dilation=0 must be a whole number >= 1, or null for ⌈L/M⌉"),
    (GLCSampler, "sampler", "dilation", 1, 1.5, "sampler.dilation=1.5 must be a whole number >= 1"),
    (GLCSampler, "sampler", "padding", "circular", "mirror",
     "sampler.padding='mirror': use one of reflect, replicate, circular"),
    (GLCSampler, "sampler", "shuffle_group", 1, 0, "sampler.shuffle_group=0 must be a whole number >= 1 (latent frames)"),
    (GLCSampler, "sampler", "filter", "ideal", "box", "sampler.filter='box': use one of ideal, gaussian, butterworth"),
    (GLCSampler, "sampler", "filter_order", 1, 0, "sampler.filter_order=0 must be a whole number >= 1"),
    (GLCSampler, "sampler", "spatial_cutoff", 1e-6, 0,
     "sampler.spatial_cutoff=0 must be a finite number > 0 (1 = the Nyquist frequency)"),
    (GLCSampler, "sampler", "vmcr_source", "model", "fresh", "sampler.vmcr_source='fresh': use one of tweedie, affine, model"),
    (GLCSampler, "sampler", "omega", 0.0, -1.0, "sampler.omega=-1.0 must be a finite number >= 0"),
    (GLCSampler, "sampler", "vmcr_iters", 1, 0, "sampler.vmcr_iters=0 must be a whole number >= 1"),
    (GLCSampler, "sampler", "vmcr_t_max", 3000, 2.5, "sampler.vmcr_t_max=2.5 must be a whole number (a timestep)"),
    (GLCSampler, "sampler", "vmcr_max_step", None, 0, "sampler.vmcr_max_step=0 must be a finite number > 0, or null for no limit"),
    (GLCSampler, "sampler", "abam_lambda", 1.0, 1.01,
     "sampler.abam_lambda=1.01 must be a finite number between 0 and 1 (1 = plain attention)"),
    (FreeNoise, "noise", "window", None, 0, "noise.window=0 must be a whole number >= 1, or null for the backbone's window"),
    (FreeNoise, "noise", "stride", 1, 0, "noise.stride=0 must be a whole number >= 1 (latent frames)"),
    (Mp4Writer, "writer", "crf", 51, 52, "writer.crf=52 must be a whole number between 0 and 51 (0 = lossless)"),
    (Mp4Writer, "writer", "crf", 0, -1, "writer.crf=-1 must be a whole number between 0 and 51"),
    (Mp4Writer, "writer", "filename", "take 2.mp4", "runs/a.mp4",
     "writer.filename='runs/a.mp4' must be a plain file name ending in .mp4"),
    (Mp4Writer, "writer", "codec", "libx265", 264, "writer.codec=264 must be a name ffmpeg knows, such as libx264"),
]


@pytest.mark.parametrize("cls,group,name,good,bad,line", EDGES,
                         ids=[f"{c.__name__}.{n}={b!r}" for c, _, n, _, b, _ in EDGES])
def test_each_rule_draws_its_line_at_the_declared_edge(cls, group, name, good, bad, line):
    built = cls(**{name: good})
    assert getattr(built, name) == (tuple(good) if isinstance(good, list) else good)
    with pytest.raises(UsageError) as err:
        cls(**{name: bad})
    message = str(err.value)
    assert message.startswith(line) and "\n" not in message and message.startswith(f"{group}.{name}=")


def test_rules_keep_the_kinds_the_samplers_compute_with():
    """A whole number written as 4.0 (as `sampler.stride=4.0` arrives) becomes 4; numbers become floats; true/false
    stays a bool and is never taken for 1/0."""
    s = SynCoSSampler(num_steps=4.0, guidance_scale=6, t_min=500.0, random_t_range=[10.0, 20])
    assert (type(s.num_steps), type(s.guidance_scale), type(s.t_min)) == (int, float, int)
    assert s.random_t_range == (10, 20) and s.describe()["random_t_range"] == [10, 20]
    for value in (True, "4"):
        with pytest.raises(UsageError, match="must be a whole number"):
            GenLVideoSampler(stride=value)


def test_checks_across_options_follow_the_declared_ones():
    with pytest.raises(UsageError, match="keep at least one path on"):
        GLCSampler(global_path=False, local_path=False)
    with pytest.raises(UsageError, match=r"vmcr_t_min=600 is above sampler\.vmcr_t_max=500"):
        GLCSampler(vmcr_t_min=600, vmcr_t_max=500)
    with pytest.raises(UsageError, match="not a defined variant"):
        SynCoSSampler(stage3=False)


def test_a_sampler_range_error_through_the_cli_is_one_line(tmp_path):
    proc = run_cli("generate", "backbone=tiny", "sampler=glc", "sampler.abam_lambda=2", "prompt=a cat",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc) == [
        "longgen: error: sampler.abam_lambda=2 must be a finite number between 0 and 1 (1 = plain attention)"
    ], proc.stderr
    assert not (tmp_path / "run").exists()

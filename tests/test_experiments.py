"""The `experiment/` config group: W1–W5 of scripts/bench.py and the papers' settings as `+experiment=NAME`.

Each experiment is pinned to the settings its paper or benchmark states (literal values below, not read back from
the files), on CogVideoX geometry (tiny: windows of 13 latent frames, stride 4) and on Wan geometry (tiny-wan: 21,
stride 6); bench's workloads must compose to the same settings on the full-size backbones, and `longgen generate
+experiment=syncos-4x` must run the config bench composes for W2.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from cli_helpers import error_lines, run_cli
from longgen.build import build
from longgen.overrides import check_option_keys, group_options
from longgen.windows import latent_length

REPO = Path(__file__).resolve().parents[1]
SMALL = ["backbone.height=16", "backbone.width=16"]

GLC_SECTION_7 = dict(num_steps=50, gamma0=0.005, beta=0.0005, abam_lambda=0.1, lambda_f=0.2, lambda_mse=0.001,
                     lambda_phase=1.0, omega=2e-5)
#: experiment → sampler class, the knobs its source states, noise kind, (windows, latent frames) on CogVideoX and
#: on Wan geometry. Lengths: L = M + S·(N − 1), N the nearest whole number of windows to K × the native clip.
EXPECTED = {
    # W1: SynCoS supplementary B (Gen-L-Video baseline: 50 DDIM steps, eta 0), 4x
    "gen-l-video-4x": dict(sampler="GenLVideoSampler", knobs=dict(num_steps=50, eta=0.0), noise="gaussian",
                           cog=(10, 49), wan=(11, 81)),
    # W2: bench's SynCoS (iters 20, B 3; t_min the backbone's), 4x
    "syncos-4x": dict(sampler="SynCoSSampler", knobs=dict(num_steps=50, eta=0.0, iters=20, lr=0.5, batch_windows=3),
                      noise="gaussian", cog=(10, 49), wan=(11, 81)),
    # W3: GLC-Diffusion section 7 values, Table 1's 3x
    "glc-3x": dict(sampler="GLCSampler", knobs=GLC_SECTION_7, noise="gaussian", cog=(7, 37), wan=(8, 63)),
    # GLC Table 1's 6x
    "glc-6x": dict(sampler="GLCSampler", knobs=GLC_SECTION_7, noise="gaussian", cog=(16, 73), wan=(18, 123)),
    # GLC as its paper runs it, at 4x for the methods comparison: section 7 values, VMCR's x0 through the model
    "glc-paper-4x": dict(sampler="GLCSampler", knobs={**GLC_SECTION_7, "vmcr_source": "model"}, noise="gaussian",
                         cog=(10, 49), wan=(11, 81)),
    # W4: SynCoS supplementary B's FIFO (n = 4, lookahead), 4x
    "fifo-4x": dict(sampler="FIFOSampler", knobs=dict(num_partitions=4, lookahead=True), noise="gaussian",
                    cog=(10, 49), wan=(11, 81)),
    # W5: FreeNoise noise under Gen-L-Video fusion (SynCoS supplementary Fig. 12), 4x
    "freenoise-4x": dict(sampler="GenLVideoSampler", knobs=dict(num_steps=50, eta=0.0), noise="freenoise",
                         cog=(10, 49), wan=(11, 81)),
    # GLC Table 1's "Direct" row at 4x: the whole latent as one window
    "direct-4x": dict(sampler="DirectSampler", knobs=dict(num_steps=50, eta=0.0), noise="gaussian",
                      cog=(1, 49), wan=(1, 81)),
    # FreeLong at 4x (the public code's cutoffs; one sequence, so one window)
    "freelong-4x": dict(sampler="FreeLongSampler", knobs=dict(num_steps=50, eta=0.0, temporal_cutoff=0.25,
                                                                spatial_cutoff=0.25), noise="gaussian",
                        cog=(1, 49), wan=(1, 81)),
    # DiTCtrl at 4x (public code's steps, the last 5 layers, unmasked)
    "ditctrl-4x": dict(sampler="DiTCtrlSampler", knobs=dict(num_steps=50, eta=0.0, kv_steps=[2, 25],
                                                              kv_layers=[-5, None]), noise="gaussian",
                       cog=(10, 49), wan=(11, 81)),
    # SynCoS supplementary B at 4x with B = 2 (stage-2 cost at Table 4's ratio)
    "syncos-paper-4x": dict(sampler="SynCoSSampler",
                            knobs=dict(num_steps=50, eta=0.0, iters=20, lr=0.5, batch_windows=2),
                            noise="gaussian", cog=(10, 49), wan=(11, 81)),
}
#: bench.py's workloads as its docstring and benchmarks/README.md name them
WORKLOAD = {"W1": "gen-l-video-4x", "W2": "syncos-4x", "W3": "glc-3x", "W4": "fifo-4x", "W5": "freenoise-4x"}
#: what the backbone decides (stride, CFG, SynCoS t_min): supplementary B on CogVideoX-2B; Wan 2.1's model card
#: CFG, stride 6 and the t_min of CogVideoX's SNR at t = 900 (conf/backbone/wan2.1-t2v-1.3b.yaml)
BY_BACKBONE = {"cogvideox-2b": dict(stride=4, guidance_scale=6.0, t_min=900),
               "wan2.1-t2v-1.3b": dict(stride=6, guidance_scale=5.0, t_min=970)}


def _bench_module():
    spec = importlib.util.spec_from_file_location("longgen_bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose(overrides: list[str]):
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("generate", overrides=overrides)


def _resolved(cfg):
    """(sampler object, its resolved config, noise description, windows, latent frames) of a composed config,
    planned as generate plans it; no weights are loaded."""
    backbone = build(cfg.backbone, "backbone")
    sampler = build(cfg.sampler, "sampler")
    noise = build(cfg.noise, "noise")
    noise.check(backbone.window)
    length = latent_length(backbone.window, sampler.stride, backbone.temporal_compression,
                           num_windows=cfg.num_windows, length_factor=cfg.length_factor, latent_frames=cfg.latent_frames)
    backbone.check_length(length)
    windows = sampler.plan(length, backbone.window).count
    return sampler, OmegaConf.to_container(cfg.sampler, resolve=True), noise.describe(), windows, length


def _check(name: str, cfg, geometry: str) -> None:
    want = EXPECTED[name]
    sampler, knobs, noise, windows, length = _resolved(cfg)
    assert type(sampler).__name__ == want["sampler"]
    assert {k: knobs[k] for k in want["knobs"]} == want["knobs"]
    assert noise["kind"] == want["noise"]
    assert (windows, length) == want[geometry]


def test_every_shipped_experiment_is_pinned():
    assert group_options("experiment") == sorted(EXPECTED)


@pytest.mark.parametrize("backbone, geometry", [("tiny", "cog"), ("tiny-wan", "wan")])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_composes_and_plans_on_tiny_backbones(name, backbone, geometry):
    """As `longgen generate +experiment=NAME backbone=tiny backbone.height=16 backbone.width=16` composes it."""
    _check(name, _compose([f"+experiment={name}", f"backbone={backbone}", *SMALL]), geometry)


@pytest.mark.parametrize("backbone, geometry", [("cogvideox-2b", "cog"), ("wan2.1-t2v-1.3b", "wan")])
@pytest.mark.parametrize("workload", sorted(WORKLOAD))
def test_bench_workload_resolves_to_its_stated_setting(workload, backbone, geometry):
    """scripts/bench.py --workload WN on the full-size backbones (random weights, nothing loaded)."""
    bench = _bench_module()
    cfg, overrides = bench.compose_workload(workload, backbone)
    assert f"+experiment={WORKLOAD[workload]}" in overrides and "backbone.random_weights=true" in overrides
    _check(WORKLOAD[workload], cfg, geometry)
    length = bench.workload_length(cfg, build(cfg.backbone, "backbone"), build(cfg.sampler, "sampler"))
    assert length == EXPECTED[WORKLOAD[workload]][geometry][1]  # the length bench samples
    sampler = _resolved(cfg)[1]
    stated = BY_BACKBONE[backbone]
    assert sampler["stride"] == stated["stride"] and sampler["guidance_scale"] == stated["guidance_scale"]
    if workload == "W2":
        assert sampler["t_min"] == stated["t_min"]


def test_generate_with_an_experiment_runs_what_bench_composes(tmp_path):
    """`longgen generate +experiment=syncos-4x` (tiny, 2 steps) saves the sampler, noise and length settings that
    bench.py composes for W2 with the same overrides, and plans bench's 10 windows of L = 49."""
    extra = [*SMALL, "sampler.num_steps=2"]
    proc = run_cli("generate", "+experiment=syncos-4x", "backbone=tiny", *extra, "prompt=a cat",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ran = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    timed, _ = _bench_module().compose_workload("W2", "tiny", extra)
    for key in ("sampler", "noise", "backbone"):
        assert OmegaConf.to_container(ran[key], resolve=True) == OmegaConf.to_container(timed[key], resolve=True), key
    for key in ("num_windows", "length_factor", "latent_frames"):
        assert ran[key] == timed[key], key
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["latent_length"] == 49 and manifest["sampler"]["windows"] == 10
    assert [manifest["sampler"][k] for k in ("t_min", "iters", "batch_windows")] == [900, 20, 3]


def test_unknown_experiment_is_one_line(tmp_path):
    proc = run_cli("generate", "+experiment=syncos-9x", "backbone=tiny", "prompt=a cat", cwd=tmp_path)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "unknown experiment 'syncos-9x'; choose one of: direct-4x, ditctrl-4x, fifo-4x," in lines[0] and "syncos-4x" in lines[0]
    assert not (tmp_path / "outputs").exists()


def test_experiment_without_plus_says_how_to_add_it(tmp_path):
    proc = run_cli("generate", "experiment=syncos-4x", "backbone=tiny", "prompt=a cat", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc) == ["longgen: error: `longgen generate` selects no experiment by default: add one "
                                 "with +experiment=syncos-4x"]


def test_option_checks_follow_the_experiments_sampler():
    """The pre-check reads the sampler an experiment selects: fifo-4x takes FIFO's options, not syncos's (the
    default); a sampler= on the command line still wins, as it does in Hydra."""
    assert check_option_keys("generate", ["+experiment=fifo-4x", "sampler.num_partitions=2"]) is None
    assert "sampler=fifo has no option 'iters'" in check_option_keys("generate", ["+experiment=fifo-4x",
                                                                                  "sampler.iters=30"])
    assert check_option_keys("generate", ["+experiment=fifo-4x", "sampler=syncos", "sampler.iters=30"]) is None
    assert check_option_keys("generate", ["+experiment=freenoise-4x", "noise.stride=2"]) is None
    assert check_option_keys("extend", ["+experiment=syncos-4x"]) is None  # extend has the noise group too
    assert "which `longgen split-prompt` does not have" in check_option_keys("split_prompt", ["+experiment=syncos-4x"])


def test_a_second_length_names_the_experiments_factor():
    """An experiment sets length_factor; num_windows=3 typed with it is refused with the way out."""
    from longgen.errors import UsageError

    with pytest.raises(UsageError, match=r"\(got num_windows, length_factor\); set the other to null, e\.g\. "
                                         r"length_factor=null after \+experiment="):
        latent_length(13, 4, 4, num_windows=3, length_factor=4)

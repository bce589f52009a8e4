"""scripts/bench.py runs on the CPU with the tiny backbone (no timing is asserted; CI exercises the code path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_tiny_slice_and_projection(tmp_path):
    out = tmp_path / "w1.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--backbone", "tiny", "--workload", "W1", "--steps", "2",
         "--no-markdown", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["windows"] == 10 and run["latent_length"] == 49 and run["steps_measured"] == 2
    assert run["step_forwards"] == [20, 20]  # 10 windows x 2 CFG branches per step
    assert run["decoded_frames"] == 193
    assert run["sampling_s"] > 0 and "50 steps" in run["sampling_formula"]
    assert result["forward_tflop"] > 0


# ------------------------------------------------------------------------------------------ Wan
def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("longgen_bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_wan_flop_formula_equals_the_flop_counter():
    """bench.py's Wan FLOP formula = torch's FlopCounterMode over one tiny-wan forward (attention through the math
    SDPA kernel, whose matrix products the counter sees), exactly."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from test_wan import make_tiny_wan

    bench = _bench_module()
    wan = make_tiny_wan()
    x = torch.randn(1, wan.latent_shape[0], wan.window, *wan.latent_shape[1:])  # Wan's layout [1, C, F, H, W]
    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
        wan.pipe.transformer(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=wan._embeds[:1],
                             return_dict=False)
    assert bench.forward_flops(wan, wan.window) == counter.get_total_flops() > 0


@pytest.mark.parametrize("name, size", [("tiny-hunyuan15", 16), ("tiny-wan22-ti2v", 32), ("tiny-wan22-a14b", 16)])
def test_bench_family_flop_formulas_equal_the_flop_counter(name, size):
    """HunyuanVideo 1.5 (its text rows, refiner and modulation counted apart) and Wan 2.2 (TI2V's per-token time
    embedding; one A14B expert): bench.py's FLOPs = FlopCounterMode over one tiny forward through the seam's
    transformer call, math SDPA."""
    import torch
    from omegaconf import OmegaConf
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from longgen.build import build

    bench = _bench_module()
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml")
    cfg.height = cfg.width = size
    backbone = build(cfg, "backbone", name)
    backbone.load()
    backbone.encode_prompts(["a red fox in snow"])
    # an input that needs a gradient: HunyuanVideo's valid-prefix attention then runs as plain torch ops, which the
    # counter sees (its custom op, taken otherwise, is opaque to it); the counter counts the forward only
    x = torch.randn(1, backbone.window, *backbone.latent_shape, requires_grad=True)  # [1, F, C, h, w]

    def counted(model) -> int:
        with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
            model._call_transformer(x, model._embeds[:1], torch.tensor([500.0]))
        return counter.get_total_flops()

    assert bench.forward_flops(backbone, backbone.window) == counted(backbone) > 0
    if name == "tiny-hunyuan15":  # that was valid-prefix attention (auto); diffusers' masked one computes every pair
        masked = build(OmegaConf.merge(cfg, {"attention": "sdpa"}), "backbone", name)
        masked.load()
        masked.encode_prompts(["a red fox in snow"])
        assert bench.forward_flops(masked, masked.window) == counted(masked) > counted(backbone)


def test_bench_deadline_projects_w1_from_the_forward_and_the_report_shows_it(tmp_path, monkeypatch):
    """A W1 step that cannot end before --deadline is not run: 50 steps × 10 windows × 2 × s/forward; the JSON
    keeps the forward row and scripts/families_report.py turns it into a Markdown row."""
    bench = _bench_module()
    out = tmp_path / "W1-tiny.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--backbone", "tiny", "--workload", "W1", "--steps", "2",
                                      "--forward-batch", "1", "--forward-warmups", "1", "--forward-repeats", "1",
                                      "--deadline", "1", "--no-decode", "--no-markdown", "--json", str(out),
                                      "--override", "backbone.height=16", "backbone.width=16"])
    bench.main()
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["steps_measured"] == 0 and run["windows"] == 10
    assert run["sampling_s"] == pytest.approx(50 * 10 * 2 * result["forward_s_per_sample"])
    assert run["sampling_formula"].startswith("projected from the forward")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "families_report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in (tmp_path / "families.md").read_text().splitlines() if line.startswith("| tiny")]
    assert len(rows) == 1 and "| 10 / 49 / 193 | 0 (–) |" in rows[0] and "projected from the forward" in rows[0]


def test_bench_tiny_wan_syncos_slice(tmp_path, monkeypatch):
    """W2 on tiny-wan, in this process: 4x = 11 windows (L = 81), the backbone's t_min, one measured step."""
    bench = _bench_module()
    out = tmp_path / "w2.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--backbone", "tiny-wan", "--workload", "W2", "--steps", "1",
                                      "--forward-batch", "1", "--no-decode", "--no-markdown", "--json", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    run = result["runs"][0]
    # the experiment leaves t_min to the backbone (backbone.syncos_t_min: 950 on tiny-wan, 970 on Wan 2.1)
    assert "+experiment=syncos-4x" in result["overrides"] and result["sampler"]["t_min"] == 950
    assert run["windows"] == 11 and run["latent_length"] == 81 and run["frames"] == 321
    assert run["step_forwards"] == [11 * 2 + 20 * 3 * 2]  # stage 1 + stage 2 (20 iterations x B=3 x CFG) at t=1000
    assert result["backbone"]["window_latent_frames"] == 21 and result["forward_tflop"] > 0


# ------------------------------------------------------------------------------------------ FIFO and FreeNoise
def test_bench_tiny_fifo_slice_projects_the_queue(tmp_path, monkeypatch):
    """W4 (FIFO 4x) at 16x16 pixels, in this process: the whole base clip (7 steps of 8 DDIM steps, the last of 4)
    and 2 queue iterations of 8 windows are measured; the other 86 iterations are projected."""
    bench = _bench_module()
    out = tmp_path / "w4.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--backbone", "tiny", "--workload", "W4", "--steps", "2",
                                      "--forward-batch", "1", "--no-decode", "--no-markdown", "--json", str(out),
                                      "--override", "backbone.height=16", "backbone.width=16"])
    bench.main()
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["latent_length"] == 49 and run["steps_total"] == 7 + 88 and run["steps_measured"] == 9
    assert run["step_forwards"] == [16] * 6 + [8] + [16, 16]  # base clip: 8 DDIM steps x CFG; then 8 windows x CFG
    assert "+ 87 iterations" in run["sampling_formula"] and run["sampling_s"] > sum(run["step_seconds"])
    assert result["sampler"]["iterations"] == 88 and result["sampler"]["windows_per_iteration"] == 8


def test_bench_tiny_freenoise_workload(tmp_path, monkeypatch):
    bench = _bench_module()
    out = tmp_path / "w5.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--backbone", "tiny", "--workload", "W5", "--steps", "1",
                                      "--forward-batch", "1", "--no-decode", "--no-markdown", "--json", str(out),
                                      "--override", "backbone.height=16", "backbone.width=16"])
    bench.main()
    result = json.loads(out.read_text())
    assert "+experiment=freenoise-4x" in result["overrides"] and result["noise"]["kind"] == "freenoise"
    assert result["sampler"]["name"] == "gen-l-video" and result["runs"][0]["step_forwards"] == [20]

"""A LoRA scale per story event (issue 25; longgen/backbones/lora_events.py): `backbone.lora=[{path, events: [...]}]`.

Oracles: Gen-L-Video with stride = window has windows that share no frame, so each window's latents depend on its
own event's scales only: a three-event run with per-event scales (s1, s2, s1) equals the fused runs at s1 (events
1 and 3) and s2 (event 2), window by window, to float tolerance (unfused PEFT layers against fused weights). The
events have the same prompt, so only the event ids tell them apart. At the predict level: windows of either
event, their CFG rows and a window of no event each equal the fused model at their scales; equal scales everywhere
equal the fused model. A per-event run cut by a failed checkpoint write and resumed equals the uninterrupted one;
the manifest records each event's scales and the files' hashes; bad `events` are one line.

In-process (no CLI subprocess) and tiny sizes: the whole file takes a few seconds."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny, tiny_config
from omegaconf import open_dict
from safetensors.torch import load_file
from test_lora import random_lora, save_diffusers

from longgen.build import build
from longgen.errors import RunFailure, UsageError

SMALL = {"height": 16, "width": 16}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """`a` (rank 2, block 0's query and block 1's feed-forward output) and `b` (rank 1, block 1's key) for the
    tiny CogVideoX; a three-event story whose events share their prompt."""
    from diffusers import CogVideoXPipeline

    folder = tmp_path_factory.mktemp("lora_events")
    a = random_lora({"transformer_blocks.0.attn1.to_q": (16, 16), "transformer_blocks.1.ff.net.2": (16, 64)},
                    rank=2, seed=1)
    b = random_lora({"transformer_blocks.1.attn1.to_k": (16, 16)}, rank=1, seed=2)
    story = folder / "story.json"
    story.write_text(json.dumps({"global": "", "local": ["a red fox"] * 3}))
    return {"a": save_diffusers(CogVideoXPipeline, folder, "a.safetensors", a, 2, 4.0),
            "b": save_diffusers(CogVideoXPipeline, folder, "b.safetensors", b, 1, 3.0), "story": story}


def items(files, a: float | list[float], b: float = 0.3, base: float = 0.2) -> list[dict]:
    """`a` at a fixed scale, or per event (its `scale` then `base`), and `b` fixed."""
    first = {"path": str(files["a"]), "scale": a} if not isinstance(a, list) else \
        {"path": str(files["a"]), "scale": base, "events": a}
    return [first, {"path": str(files["b"]), "scale": b}]


# ---------------------------------------------------------------------------------------------------- predict level
def test_each_row_runs_under_its_windows_event_scales(files):
    """Windows of event 0, 1, 0 and one of no event (a plain prompt id, as GLC's global prompt) in one guided predict:
    each equals the fused model at its scales; one transformer call per scale set; equal scales in both events
    equal the fused model."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 4, 2, 2)  # [B, M, C, H, W]: the tiny model at 16×16
    per = make_tiny(**SMALL, lora=items(files, [0.8, -0.5]))
    t = per.schedule(4).timesteps[1]
    e0, e1 = per.event_id(0, 0), per.event_id(0, 1)
    got = per.predict(x, t, [e0, e1, e0, 0], 6.0).x0
    assert per.call_count == 3  # scale sets (0.8, 0.3), (−0.5, 0.3), (0.2, 0.3): a call each
    fused = {scale: make_tiny(**SMALL, lora=items(files, scale)) for scale in (0.8, -0.5, 0.2)}
    for scale, rows in ((0.8, [0, 2]), (-0.5, [1]), (0.2, [3])):
        want = fused[scale].predict(x, t, [0] * 4, 6.0).x0
        torch.testing.assert_close(got[rows], want[rows], rtol=1e-4, atol=1e-4)
    same, fused = make_tiny(**SMALL, lora=items(files, [0.8, 0.8], base=0.8)), fused[0.8]
    ids = [same.event_id(0, 0), same.event_id(0, 1)]
    torch.testing.assert_close(same.predict(x[:2], t, ids, 6.0).x0, fused.predict(x[:2], t, [0, 0], 6.0).x0,
                               rtol=1e-4, atol=1e-4)
    assert same.call_count == 1 and type(fused.pipe.transformer.transformer_blocks[0].attn1.to_q) is torch.nn.Linear


# ---------------------------------------------------------------------------------------------------- whole runs
def generate(out: Path, lora: list[dict], files, *extra: str) -> dict:
    """An in-process `longgen generate` of the three-event story: Gen-L-Video, stride = window (3 latent frames),
    so its three windows (one per event) share no frame."""
    from hydra import compose, initialize_config_module

    from longgen.commands.generate import run_generate

    entries = ",".join("{" + ",".join(f"{k}:{json.dumps(v) if k != 'path' else repr(v)}" for k, v in item.items())
                       + "}" for item in lora)
    args = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "backbone.num_frames=9", "sampler=gen-l-video",
            "sampler.stride=3", "num_windows=3", "sampler.num_steps=2", f"story={files['story']}", "save_latents=true",
            f"backbone.lora=[{entries}]", *extra]
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=args, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands the config over
    out.mkdir()
    return run_generate(cfg, out, choices)


def latents(out: Path) -> torch.Tensor:
    return load_file(out / "latents.safetensors")["latents"]  # [L, C, H, W]


@pytest.fixture(scope="module")
def per_event_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "per_event"
    return out, generate(out, items(files, [0.8, -0.5, 0.8]), files, "checkpoint_every=1")


def test_a_three_event_run_equals_the_fused_runs_window_by_window(files, per_event_run, tmp_path):
    out, manifest = per_event_run
    got = latents(out)  # [9, C, H, W]: event k's window on frames 3k..3k+2
    at_s1 = generate(tmp_path / "s1", items(files, 0.8), files) and latents(tmp_path / "s1")
    at_s2 = generate(tmp_path / "s2", items(files, -0.5), files) and latents(tmp_path / "s2")
    for frames, want in ((slice(0, 3), at_s1), (slice(3, 6), at_s2), (slice(6, 9), at_s1)):
        torch.testing.assert_close(got[frames], want[frames], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(at_s1[3:6], at_s2[3:6], atol=1e-3)  # the scales matter
    recorded = manifest["backbone"]
    assert [(r["name"], r["scale"], r["events"]) for r in recorded["lora"]] == [("a", 0.2, [0.8, -0.5, 0.8]),
                                                                               ("b", 0.3, None)]
    assert [r["sha256"] for r in recorded["lora"]] == [hashlib.sha256(files[k].read_bytes()).hexdigest()
                                                       for k in ("a", "b")]
    assert recorded["lora_scales"]["events"] == [{"a": 0.8, "b": 0.3}, {"a": -0.5, "b": 0.3}, {"a": 0.8, "b": 0.3}]
    assert json.loads((out / "manifest.json").read_text())["backbone"]["lora_scales"] == recorded["lora_scales"]


def test_a_cut_per_event_run_resumes_to_the_same_bytes(files, per_event_run, tmp_path, monkeypatch):
    import longgen.run.checkpoint as checkpoint
    from longgen.commands.resume import run_resume

    real, writes = checkpoint.write_bytes, []

    def full_disk_on_second(path, data):
        if Path(path).name.startswith(".checkpoint."):
            writes.append(path)
            if len(writes) >= 2:
                raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(checkpoint, "write_bytes", full_disk_on_second)
    with pytest.raises(RunFailure):
        generate(tmp_path / "cut", items(files, [0.8, -0.5, 0.8]), files, "checkpoint_every=1")
    monkeypatch.setattr(checkpoint, "write_bytes", real)
    run_resume(tmp_path / "cut", [])
    assert torch.equal(latents(tmp_path / "cut"), latents(per_event_run[0]))


def test_relative_lora_paths_resume_and_decode_from_elsewhere_and_a_changed_file_is_refused(files, per_event_run,
                                                                                            tmp_path, monkeypatch,
                                                                                            caplog):
    """LoRA paths given relative to the working directory: the run's config keeps them absolute (as image=), so a
    cut run resumes from another directory to the uninterrupted run's bytes; a LoRA file whose bytes changed since
    the checkpoint is one line (its sha256 is among the checkpoint's inputs); `longgen decode` needs no LoRA file
    (the VAE is not adapted). The start line is followed by a line naming each LoRA's file and scales."""
    import longgen.run.checkpoint as checkpoint
    from longgen.commands.decode import run_decode
    from longgen.commands.resume import run_resume

    caplog.set_level(logging.INFO, logger="longgen")
    (tmp_path / "loras").mkdir()
    for key in ("a", "b"):
        shutil.copy(files[key], tmp_path / "loras" / f"{key}.safetensors")
    relative = {**files, "a": Path("loras/a.safetensors"), "b": Path("loras/b.safetensors")}
    real = checkpoint.write_bytes

    def full_disk_after_first(path, data):
        if Path(path).name.startswith(".checkpoint.") and (tmp_path / "cut" / "checkpoint.safetensors").exists():
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint, "write_bytes", full_disk_after_first)
    with pytest.raises(RunFailure):
        generate(tmp_path / "cut", items(relative, [0.8, -0.5, 0.8]), relative, "checkpoint_every=1")
    monkeypatch.setattr(checkpoint, "write_bytes", real)
    said = [r.getMessage() for r in caplog.records]
    start = next(k for k, line in enumerate(said) if line.startswith("gen-l-video on "))
    assert said[start + 1] == ("LoRA (unfused, scales set per event): a (a.safetensors) per event 0.8, -0.5, 0.8 "
                               "(no event: 0.2); b (b.safetensors) 0.3")
    recorded = checkpoint.load_checkpoint(tmp_path / "cut" / "checkpoint.safetensors").inputs["loras"]
    assert [r["path"] for r in recorded] == [str(tmp_path / "loras" / f"{key}.safetensors") for key in ("a", "b")]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    shutil.copy(files["b"], tmp_path / "loras" / "a.safetensors")  # another LoRA under the same name
    with pytest.raises(UsageError) as err:
        run_resume(tmp_path / "cut", [])
    assert str(err.value).startswith(f"backbone.lora[0] ({tmp_path / 'loras' / 'a.safetensors'}) changed since the "
                                     f"checkpoint")
    shutil.copy(files["a"], tmp_path / "loras" / "a.safetensors")
    manifest = run_resume(tmp_path / "cut", [])
    assert torch.equal(latents(tmp_path / "cut"), latents(per_event_run[0]))
    assert [(r["path"], r["file"]) for r in manifest["backbone"]["lora"]] == [
        (str(tmp_path / "loras" / f"{key}.safetensors"),) * 2 for key in ("a", "b")]
    shutil.rmtree(tmp_path / "loras")
    run_decode(tmp_path / "cut", ["writer.filename=again.mp4"])
    assert (tmp_path / "cut" / "again.mp4").read_bytes() == (tmp_path / "cut" / "video.mp4").read_bytes()


# ---------------------------------------------------------------------------------------------------- one line
@pytest.mark.parametrize("events, message", [
    ([1.0, "strong"], "backbone.lora[0].events[1]='strong' must be a number between -10 and 10"),
    ([1.0, 11], "backbone.lora[0].events[1]=11 must be a number between -10 and 10"),
    ("0.5", "backbone.lora[0].events must be a list of scales, one per story event"),
    ([], "backbone.lora[0].events must be a list of scales"),
])
def test_bad_event_scales_are_one_line(files, events, message):
    with pytest.raises(UsageError) as err:
        build(tiny_config(**SMALL, lora=[{"path": str(files["a"]), "events": events}]), "backbone", "tiny")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_event_scales_of_another_length_than_the_story_and_fused_gelu_are_one_line(files, tmp_path):
    with pytest.raises(UsageError) as err:
        generate(tmp_path / "two", items(files, [1.0, 0.5]), files)
    assert str(err.value) == ("backbone.lora[0].events has 2 scale(s) but the story has 3 event(s): give one scale "
                              "per event, in story order")
    assert not (tmp_path / "two" / "manifest.json").exists()
    with pytest.raises(UsageError, match=r"^backbone.fused_gelu=true .* use fused_gelu=auto$"):
        build(tiny_config(**SMALL, fused_gelu=True, device="cuda", dtype="bfloat16", lora=items(files, [1.0])),
              "backbone", "tiny")


def test_event_scales_are_checked_against_num_prompts_before_a_scenario_is_split(files, tmp_path, monkeypatch):
    """scenario= num_prompts=N makes a story of exactly N events: scales of another length are one line before the
    splitter runs (an LLM's paid call, or its server's error in place of this line), and in a sweep's check too."""
    import longgen.splitters.scenario as scenario
    from hydra import compose, initialize_config_module

    from longgen.run.job import plan_job

    def no_split(*args, **kwargs):
        raise AssertionError("the scenario was split")

    monkeypatch.setattr(scenario, "split_scenario_file", no_split)
    (tmp_path / "scenario.txt").write_text("A fox wakes. It runs. It sleeps.")
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["backbone=tiny", *(f"backbone.{k}={v}" for k, v in SMALL.items()),
                                             f"scenario={tmp_path / 'scenario.txt'}", "num_prompts=3",
                                             "splitter=offline", "num_windows=3"])
    with open_dict(cfg):
        cfg.backbone.lora = items(files, [1.0, 0.5])
    for split in (True, False):  # a run, a sweep's check
        with pytest.raises(UsageError, match=r"^backbone.lora\[0\].events has 2 scale\(s\) but the story has 3 "):
            plan_job(cfg, tmp_path / "run", {"backbone": "tiny", "splitter": "offline"}, split=split)


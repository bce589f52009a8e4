"""LoRA adapters (issue 25, longgen/backbones/lora.py): files made here with random A/B matrices, in diffusers' key
format (written by the pipelines' own `save_lora_weights`, with the adapter's rank and alpha in its metadata) and
in Wan's original format (converted by diffusers on load); the tiny backbones' predictions against the written-out
formula W + Σ scale·(alpha/r)·B@A; scale 0 the base model's bytes; mismatched files and bad entries one line;
a generate → interrupted → resume chain exact, with the files' hashes in the manifest.

In-process (no CLI subprocess) and tiny sizes, to keep the whole file within a few seconds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny, tiny_config
from omegaconf import OmegaConf, open_dict
from safetensors.torch import save_file

from longgen.build import build
from longgen.errors import RunFailure, UsageError

SMALL = {"height": 16, "width": 16}
WAN = Path(__file__).resolve().parents[1] / "conf" / "backbone" / "tiny-wan.yaml"


def random_lora(layers: dict[str, tuple[int, int]], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """{layer: (out, in)} → {layer.lora_A.weight [rank, in], layer.lora_B.weight [out, rank]}, seeded normals."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer, (fan_out, fan_in) in layers.items():
        out[f"{layer}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen)
        out[f"{layer}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen)
    return out


def save_diffusers(pipeline_class, folder: Path, name: str, tensors: dict, rank: int, alpha: float) -> Path:
    """The LoRA as diffusers saves one: keys `transformer.<module>.lora_A/B.weight`, rank and alpha in metadata."""
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    pipeline_class.save_lora_weights(folder, transformer_lora_layers=tensors, weight_name=name,
                                     transformer_lora_adapter_metadata={"r": rank, "lora_alpha": alpha,
                                                                        "target_modules": layers})
    return folder / name


def fused_by_hand(backbone, loras: list[tuple[dict, float, float]]) -> None:
    """The formula, written out: W ← W + Σ scale·(alpha/r)·(B @ A) for every layer each LoRA names, in place on
    `backbone`'s transformer. `loras`: (tensors, scale, alpha) with tensors as `random_lora` makes them."""
    modules = dict(backbone.pipe.transformer.named_modules())
    with torch.no_grad():
        for tensors, scale, alpha in loras:
            for key, a in tensors.items():
                if key.endswith(".lora_A.weight"):
                    layer = key.removesuffix(".lora_A.weight")
                    b = tensors[f"{layer}.lora_B.weight"]  # [out, r]
                    modules[layer].weight += scale * (alpha / a.shape[0]) * (b @ a)  # [out, in]


def predict(backbone, seed: int = 0):
    """One guided prediction of two windows at a mid timestep."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, backbone.window, *backbone.latent_shape, generator=gen)  # [2, M, C, H, W]
    t = backbone.schedule(4).timesteps[1]
    return backbone.predict(x, t, [0, 0], 6.0).x0


@pytest.fixture(scope="module")
def cog_files(tmp_path_factory):
    """Two LoRAs for the tiny CogVideoX (inner width 16, ff 64): `a` on block 0's query, `b` on block 0's query and
    block 1's feed-forward output; their tensors and alphas."""
    from diffusers import CogVideoXPipeline

    folder = tmp_path_factory.mktemp("lora")
    a = random_lora({"transformer_blocks.0.attn1.to_q": (16, 16)}, rank=2, seed=1)
    b = random_lora({"transformer_blocks.0.attn1.to_q": (16, 16), "transformer_blocks.1.ff.net.2": (16, 64)},
                    rank=1, seed=2)
    return {"a": (save_diffusers(CogVideoXPipeline, folder, "a.safetensors", a, 2, 4.0), a, 4.0),
            "b": (save_diffusers(CogVideoXPipeline, folder, "b.safetensors", b, 1, 3.0), b, 3.0),
            "folder": folder}


@pytest.fixture(scope="module")
def cog_base():
    return make_tiny(prompts=("a cat",), **SMALL)


def test_two_loras_fuse_to_the_written_out_formula(cog_files, cog_base):
    (path_a, a, alpha_a), (path_b, b, alpha_b) = cog_files["a"], cog_files["b"]
    lora = make_tiny(prompts=("a cat",), **SMALL, lora=[{"path": str(path_a), "scale": 0.8},
                                                         {"path": str(path_b), "scale": -0.5, "name": "second"}])
    base = make_tiny(prompts=("a cat",), **SMALL)
    plain = predict(base)
    fused_by_hand(base, [(a, 0.8, alpha_a), (b, -0.5, alpha_b)])
    got, want = predict(lora), predict(base)
    assert not torch.allclose(got, plain, atol=1e-3)  # the LoRAs change the prediction
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # PEFT's layers are gone: the transformer is the plain model with fused weights (compile sees no new modules)
    assert type(lora.pipe.transformer.transformer_blocks[0].attn1.to_q) is torch.nn.Linear
    assert not getattr(lora.pipe.transformer, "peft_config", None)
    described = lora.describe()["lora"]
    assert [(d["name"], d["scale"]) for d in described] == [("a", 0.8), ("second", -0.5)]
    assert described[1]["sha256"] == hashlib.sha256(path_b.read_bytes()).hexdigest()


def test_scale_zero_is_the_base_model_to_the_byte(cog_files, cog_base):
    lora = make_tiny(prompts=("a cat",), **SMALL, lora=[{"path": str(cog_files["a"][0]), "scale": 0}])
    assert torch.equal(predict(lora), predict(cog_base))


def test_wan_lora_in_the_original_format_is_converted_by_diffusers(tmp_path):
    """Wan's own key layout (diffusion_model.blocks.N.self_attn.q.lora_down/up + alpha), as community Wan LoRAs
    ship: diffusers' WanLoraLoaderMixin converts it; the result follows the same formula."""
    cfg = OmegaConf.load(WAN)
    cfg.height = cfg.width = 16
    base = build(cfg, "backbone", "tiny-wan")
    base.load()
    base.encode_prompts(["a cat"], "")
    gen = torch.Generator().manual_seed(3)
    down, up = torch.randn(2, 16, generator=gen), torch.randn(16, 2, generator=gen)  # inner width 2 heads × 8
    save_file({"diffusion_model.blocks.1.self_attn.q.lora_down.weight": down,
               "diffusion_model.blocks.1.self_attn.q.lora_up.weight": up,
               "diffusion_model.blocks.1.self_attn.q.alpha": torch.tensor(1.0)}, tmp_path / "wan_style.safetensors")
    cfg.lora = [{"path": str(tmp_path / "wan_style.safetensors"), "scale": 1.5}]
    lora = build(cfg, "backbone", "tiny-wan")
    lora.load()
    lora.encode_prompts(["a cat"], "")
    fused_by_hand(base, [({"blocks.1.attn1.to_q.lora_A.weight": down, "blocks.1.attn1.to_q.lora_B.weight": up},
                          1.5, 1.0)])
    torch.testing.assert_close(predict(lora), predict(base), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers, keys, reason", [
    ({"blocks.0.attn1.to_q": (16, 16)}, None, "not found in the base model"),  # a Wan LoRA on CogVideoX
    ({"transformer_blocks.0.attn1.to_q": (32, 32)}, None, "size mismatch"),  # another width
    ({"transformer_blocks.0.attn1.to_q": (16, 16), "transformer_blocks.0.attn9.to_k": (16, 16)}, None,
     "unexpected keys"),  # partly fitting
    ({}, {"unet.down.lora_A.weight": torch.ones(2, 4)}, "No LoRA keys"),  # nothing for a transformer
    ({}, {"transformer.x.lora_A.weight": torch.ones(2, 2)}, "index out of range"),  # half a LoRA: A without B
])
def test_a_lora_made_for_another_model_is_one_line(tmp_path, layers, keys, reason):
    from diffusers import CogVideoXPipeline

    if keys is None:
        path = save_diffusers(CogVideoXPipeline, tmp_path, "other.safetensors", random_lora(layers, 2, 0), 2, 2.0)
    else:
        path = tmp_path / "other.safetensors"
        save_file(keys, path)
    with pytest.raises(UsageError) as err:
        make_tiny(**SMALL, lora=[{"path": str(path)}])
    line = str(err.value)
    assert "\n" not in line and str(path) in line and "made for another model?" in line and reason in line


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """Files that are not LoRAs: a pickle-named file, a broken safetensors file, a safetensors file of plain weights."""
    folder = tmp_path_factory.mktemp("odd")
    (folder / "notes.bin").write_bytes(b"\0" * 8)
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"weight": torch.ones(2)}, folder / "plain.safetensors")
    (folder / "empty").mkdir()
    (folder / "empty" / "README.md").write_text("weights not downloaded yet")
    return folder


@pytest.mark.parametrize("entry, message", [
    ({"path": "/no/such/style.safetensors"}, "no such file or directory /no/such/style.safetensors"),
    ({"path": "LORAS/a.safetensors", "scale": float("nan")}, "scale=nan must be a"),
    ({"path": "LORAS/a.safetensors", "scale": "strong"}, "scale='strong' must be a number"),
    ({"path": "LORAS/a.safetensors", "scale": 100}, "scale=100 must be a number"),
    ({"path": "LORAS/a.safetensors", "scale": True}, "scale=True must be a number"),
    ({"path": "LORAS/a.safetensors", "strength": 1}, "unknown key(s) strength"),
    ({"path": "LORAS"}, "holds 2 .safetensors files: name the LoRA file with weight_name="),
    ({"path": "LORAS", "weight_name": "c.safetensors"}, "no file c.safetensors in"),
    ({"path": "ODD/empty"}, "empty holds no .safetensors file: point path at the LoRA's .safetensors file"),
    ({"path": "ODD/notes.bin"}, "is not a .safetensors file"),
    ({"path": "ODD/junk.safetensors"}, "is not a readable safetensors file"),
    ({"path": "ODD/plain.safetensors"}, "holds no LoRA weights"),
    ({"path": "someone/style-lora"}, "as a hub id it needs weight_name="),
    ({"path": "loras/style.safetensors"}, "no such file or directory loras/style.safetensors (relative to "),
    ({"path": "LORAS/a.safetensors", "name": "9 lives"}, "name='9 lives': use letters, digits and _"),
])
def test_bad_entries_are_one_line_before_anything_loads(cog_files, odd_files, entry, message):
    places = {"LORAS": str(cog_files["folder"]), "ODD": str(odd_files)}
    entry = {k: places.get(v.split("/")[0], v.split("/")[0]) + v[len(v.split("/")[0]):] if isinstance(v, str) else v
             for k, v in entry.items()}
    with pytest.raises(UsageError) as err:
        build(tiny_config(**SMALL, lora=[entry]), "backbone", "tiny")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_two_loras_of_one_name_and_an_unreachable_hub_lora_are_one_line(cog_files, monkeypatch):
    path = str(cog_files["a"][0])
    with pytest.raises(UsageError, match="two LoRAs are named 'a'"):
        build(tiny_config(**SMALL, lora=[{"path": path}, {"path": path}]), "backbone", "tiny")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time; the env at import
    backbone = build(tiny_config(**SMALL, lora=[{"path": "someone/style-lora", "weight_name": "s.safetensors"}]),
                     "backbone", "tiny")
    with pytest.raises(UsageError, match=r"cannot fetch s.safetensors from someone/style-lora .*hf download"):
        backbone.check_available()  # the plan stage's weights check: before anything loads


def test_generate_with_lora_records_hashes_and_resumes_exactly(cog_files, tmp_path, monkeypatch):
    """generate with two LoRAs (reference) and again with the second checkpoint write failing (a full disk), then
    resume: the resumed latents equal the reference's bytes; the manifest names each file, its sha256 and scale."""
    from hydra import compose, initialize_config_module

    import longgen.run.checkpoint as checkpoint
    from longgen.commands.generate import run_generate
    from longgen.commands.resume import run_resume
    from safetensors.torch import load_file

    (path_a, _, _), (path_b, _, _) = cog_files["a"], cog_files["b"]
    lora = f"backbone.lora=[{{path:'{path_a}',scale:0.8}},{{path:'{path_b}',scale:-0.5}}]"
    args = ["backbone=tiny", "backbone.height=16", "backbone.width=16", "backbone.num_frames=9", "sampler.stride=2",
            "sampler=gen-l-video", "num_windows=2",
            "sampler.num_steps=2", "prompt=a fox", "checkpoint_every=1", lora]

    def generate(out: Path) -> dict:
        with initialize_config_module("longgen.conf", version_base="1.3"):
            cfg = compose("generate", overrides=args, return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]  # as @hydra.main hands the config over
        out.mkdir()
        return run_generate(cfg, out, choices)

    reference = generate(tmp_path / "ref")
    recorded = reference["backbone"]["lora"]
    assert [(r["path"], r["scale"], r["name"]) for r in recorded] == [(str(path_a), 0.8, "a"), (str(path_b), -0.5, "b")]
    assert [r["sha256"] for r in recorded] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (path_a, path_b)]
    assert json.loads((tmp_path / "ref" / "manifest.json").read_text())["backbone"]["lora"] == recorded

    real, writes = checkpoint.write_bytes, []

    def full_disk_on_second(path, data):
        if Path(path).name.startswith(".checkpoint."):
            writes.append(path)
            if len(writes) >= 2:
                raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(checkpoint, "write_bytes", full_disk_on_second)
    with pytest.raises(RunFailure):
        generate(tmp_path / "cut")
    monkeypatch.setattr(checkpoint, "write_bytes", real)
    run_resume(tmp_path / "cut", [])
    got = load_file(tmp_path / "cut" / "latents.safetensors")["latents"]
    assert torch.equal(got, load_file(tmp_path / "ref" / "latents.safetensors")["latents"])


@pytest.mark.parametrize("installed, message", [
    (None, "backbone.lora needs the peft package: pip install 'peft>=0.17'"),
    ("0.16.2", "backbone.lora needs peft 0.17 or newer (found 0.16.2)"),
])
def test_missing_or_old_peft_is_one_line(cog_files, monkeypatch, installed, message):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name != "peft":
            return real(name)
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(UsageError) as err:
        build(tiny_config(**SMALL, lora=[{"path": str(cog_files["a"][0])}]), "backbone", "tiny")
    assert str(err.value).startswith(message)


def _generate_in(out: Path, monkeypatch, *overrides: str) -> dict:
    """run_generate as `longgen generate hydra.run.dir=OUT` runs it, `out` made by this command (as Hydra makes it
    after note_existing_dirs saw nothing there)."""
    from hydra import compose, initialize_config_module

    from longgen.commands.generate import run_generate
    from longgen.rundir import EXISTING_DIRS_ENV

    monkeypatch.setenv(EXISTING_DIRS_ENV, "[]")
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["backbone=tiny", "backbone.height=16", "backbone.width=16",
                                             "num_windows=2", "sampler.num_steps=2", *overrides],
                      return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    out.mkdir(parents=True, exist_ok=True)
    return run_generate(cfg, out, choices)


def test_a_lora_refused_at_load_leaves_no_run_directory(tmp_path, monkeypatch):
    """Whether a LoRA fits is only known once the model is there, after the run wrote its config and story.json:
    the refusal then removes what the run made (nothing half-written stays); a sweep's record of the failed job
    is still logged (to no file: RunLog opens nothing in a removed directory)."""
    import logging

    from diffusers import CogVideoXPipeline

    from longgen.rundir import RunLog

    path = save_diffusers(CogVideoXPipeline, tmp_path, "wan.safetensors",
                          random_lora({"blocks.0.attn1.to_q": (16, 16)}, 2, 0), 2, 2.0)  # a Wan LoRA
    run = tmp_path / "new" / "run"
    run.mkdir(parents=True)
    root, handler = logging.getLogger(), RunLog(run / "generate.log")  # as Hydra's job logging sets it up
    root.addHandler(handler)
    try:
        with pytest.raises(UsageError, match="made for another model?"):
            _generate_in(run, monkeypatch, "prompt=a fox", f"backbone.lora=[{{path:'{path}'}}]", "checkpoint_every=1")
        logging.getLogger("longgen").error("sweep job 0 failed: …")  # as recorded_job says it afterwards
    finally:
        root.removeHandler(handler)
        handler.close()
    assert not (tmp_path / "new").exists()


def test_a_subject_token_in_padding_found_once_the_tokenizer_loads_leaves_nothing(tmp_path, monkeypatch):
    """A real model counts a prompt's tokens only once its tokenizer is loaded: DiTCtrl's subject tokens are then
    checked before the first step (here the plan-time check is held back as for such a model), and the refusal
    removes what the run made."""
    from longgen.samplers.ditctrl import DiTCtrlSampler

    planned = DiTCtrlSampler.check_prompts
    monkeypatch.setattr(DiTCtrlSampler, "check_prompts",
                        lambda self, prompts, den: den.pipe is not None and planned(self, prompts, den))
    with pytest.raises(UsageError, match=r"subject_tokens=\[3\] points past the 2 text tokens of local prompt 1"):
        _generate_in(tmp_path / "new" / "run", monkeypatch, "prompt=a fox", "sampler=ditctrl",
                     "sampler.kv_layers=[0,2]", "sampler.kv_steps=[0,2]", "sampler.subject_tokens=[3]")
    assert not (tmp_path / "new").exists()


def test_a_hub_lora_is_read_from_the_cache_offline_and_an_unreachable_hub_is_one_quiet_line(tmp_path, monkeypatch,
                                                                                             caplog):
    """README check: `backbone.lora=[{path: someone/wan-style-lora, weight_name: style.safetensors}]` on a machine
    that cannot reach the hub retried for ~25 s (hf_hub_download's retries, each logged twice) before its one
    line. Now the entry is fetched as the weights are (snapshot_download): the cached copy offline, else one line
    at once, no retry logged. The hub is a closed local port here."""
    import huggingface_hub.constants as hub
    from longgen.backbones.lora import Lora, resolve_hub
    from longgen.errors import UsageError

    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--someone--cached-lora" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    save_file({"blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 2)}, str(snapshot / "style.safetensors"))
    cached = Lora(path="someone/cached-lora", scale=1.0, name="style", weight_name="style.safetensors")
    resolve_hub([cached])
    assert cached.file == snapshot / "style.safetensors"

    missing = Lora(path="someone/wan-style-lora", scale=1.0, name="style", weight_name="style.safetensors")
    with pytest.raises(UsageError, match=r"^backbone.lora\[0\]: cannot fetch style.safetensors from "
                                         r"someone/wan-style-lora \(.*\); download it \(`hf download"):
        resolve_hub([missing])
    assert not [r.getMessage() for r in caplog.records if "Retrying" in r.getMessage()]

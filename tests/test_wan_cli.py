"""Wan as a user runs it: the real loading path (`backbone=wan2.1-t2v-1.3b model_path=DIR`) on a tiny Wan folder
written with diffusers' own `save_pretrained` (UMT5 encoder and a word-level tokenizer built in code, the
Diffusers repositories' UniPC scheduler) through sampling and decoding, an incomplete folder, and every sampler
through the CLI on tiny-wan (one multirun process: interpreter start-up dominates a CLI test)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from cli_helpers import run_cli
from conftest import REPO
from longgen.build import build
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler

TINY = dict(dtype="float32", device="cpu", height=32, width=32, latent_channels=4, max_text_tokens=128, micro_batch=8,
            compile=False)
TINY_GEOMETRY = [f"backbone.{k}={v}" for k, v in TINY.items()]
WORDS = ["<pad>", "</s>", "<unk>", "a", "cat", "dog", "runs", "in", "the", "snow", "red", "fox", "."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from test_wan import make_tiny_wan

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tiny = make_tiny_wan()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=tiny.pipe.transformer.config.text_dim,
                                               d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    # the scheduler the Wan-AI Diffusers repositories ship, with a shift no config here uses
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=7.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny.pipe.vae,
                       transformer=tiny.pipe.transformer, scheduler=scheduler)
    path = tmp_path_factory.mktemp("models") / "Wan-tiny"
    pipe.save_pretrained(str(path))
    return path


def _backbone(**overrides):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "wan2.1-t2v-1.3b.yaml")
    for key, value in {**TINY, **overrides}.items():
        cfg[key] = value
    return build(cfg, "backbone", "wan2.1-t2v-1.3b")


def test_local_wan_folder_loads_encodes_with_umt5_and_releases_it(model_dir):
    backbone = _backbone(model_path=str(model_dir))
    backbone.check_available()
    backbone.load()
    sched = backbone.pipe.scheduler
    assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler" and sched.shift == 3.0  # the YAML's 480p shift
    assert backbone.pipe.vae.dtype == torch.float32
    assert backbone.count_tokens("a red fox runs") == (5, True)  # four words + </s>, from the real tokenizer
    ids = backbone.encode_prompts(["a cat", "a dog", "a cat"])
    assert ids == [0, 1, 0]
    assert backbone.pipe.text_encoder is None  # released after encoding (backbone.text_encoder=release)
    assert backbone._embeds.shape == (2, 128, 16) and not torch.equal(backbone._embeds[0], backbone._embeds[1])
    assert torch.equal(backbone._embeds[0, 3:], torch.zeros(125, 16))  # WanPipeline zero-pads past the tokens
    # the loaded model through the seam: two windows, two steps, streamed decode
    noise = torch.randn((1, 27, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda s, m: ids[0] if s == 0 else ids[1],
                      generator=torch.Generator().manual_seed(1))
    latents = GenLVideoSampler(num_steps=2, guidance_scale=5.0, stride=6).sample(run)
    assert torch.isfinite(latents).all() and backbone.forward_count == 2 * 2 * 2
    frames = sum(chunk.shape[0] for chunk in backbone.decode_stream(latents))
    assert frames == backbone.frames_for(27) == 105
    # flow_shift null: the loaded scheduler's own shift (the folder's UniPC flow_shift)
    loaded = _backbone(model_path=str(model_dir), flow_shift=None)
    loaded.load()
    assert loaded.pipe.scheduler.shift == 7.0
    assert loaded.schedule(4).timesteps != backbone.schedule(4).timesteps


def test_incomplete_wan_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    with pytest.raises(UsageError) as err:
        _backbone(model_path=str(tmp_path / "model")).check_available()
    message = str(err.value)
    assert "\n" not in message
    assert "not a diffusers Wan folder (missing transformer, vae, scheduler, text_encoder, tokenizer)" in message
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in message


def test_cli_every_sampler_on_tiny_wan(tmp_path):
    proc = run_cli("generate", "-m", "backbone=tiny-wan", "sampler=direct,gen-l-video,syncos,glc", "num_windows=2",
                   "sampler.num_steps=3", "prompt=a red fox runs in the snow", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {m["sampler"]["name"]: m for m in
            (json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/manifest.json")))}
    assert sorted(runs) == ["direct", "gen-l-video", "glc", "syncos"]
    for name, m in runs.items():
        assert m["latent_length"] == 21 + 6 and m["frames"] == 105 and m["fps"] == 16, name
        assert m["sampler"]["guidance_scale"] == 5.0 and m["backbone"]["flow_shift"] == 3.0, name
        assert m["backbone"]["model_defaults"]["negative_prompt"].startswith("Bright tones"), name
    assert runs["syncos"]["sampler"]["t_min"] == 950
    # steps 1000, ~911, ~750: stage 2 (t > 950) at the first step only, where σ = 1 (2 windows, B = 2, CFG)
    assert runs["syncos"]["sampler"]["stage2_timesteps"] == [1000.0]
    assert runs["syncos"]["transformer_forwards"] == runs["syncos"]["sampler"]["forwards_expected"]
    assert runs["direct"]["transformer_forwards"] == 3 * 2 and runs["gen-l-video"]["transformer_forwards"] == 3 * 2 * 2
    for d in (tmp_path / "sweep").glob("*/"):
        assert (d / "video.mp4").stat().st_size > 0

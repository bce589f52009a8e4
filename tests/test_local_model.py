"""The real loading path (`backbone=cogvideox-2b model_path=DIR`) on a tiny CogVideoX folder written with diffusers'
own `save_pretrained`: T5 encoder and a word-level tokenizer built in code, so `from_pretrained`, the scheduler
swap, the geometry check, T5 encoding through `CogVideoXPipeline.encode_prompt`, the text-encoder release and
exact token counting all run without any download."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from cli_helpers import error_lines, run_cli
from conftest import REPO, make_tiny

TINY = dict(dtype="float32", device="cpu", height=64, width=64, latent_channels=4, max_text_tokens=16, micro_batch=8)
TINY_GEOMETRY = [f"backbone.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import CogVideoXPipeline
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "cat", "dog", "runs", "in", "the", "snow", "red", "fox", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    arch = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / "tiny.yaml").architecture)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(words), d_model=arch["transformer"]["text_embed_dim"],
                                           d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    tiny = make_tiny()
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny.pipe.vae,
                             transformer=tiny.pipe.transformer, scheduler=tiny.pipe.scheduler)
    path = tmp_path_factory.mktemp("models") / "CogVideoX-tiny"
    pipe.save_pretrained(str(path))
    return path


def test_generate_from_local_model_path(model_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("generate", "backbone=cogvideox-2b", f"model_path={model_dir}", *TINY_GEOMETRY,
                   "sampler=gen-l-video", "num_windows=2", "sampler.num_steps=2", "prompt=a red fox runs in the snow",
                   "save_latents=true", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["backbone"] == str(model_dir)
    assert manifest["frames"] == 4 * (17 - 1) + 1
    assert (out / "video.mp4").exists()


def test_local_model_encodes_with_t5_and_releases_it(model_dir):
    from longgen.build import build

    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "cogvideox-2b.yaml")
    cfg.model_path = str(model_dir)
    for key, value in TINY.items():
        cfg[key] = value
    backbone = build(cfg, "backbone", "cogvideox-2b")
    backbone.check_available()
    backbone.load()
    assert type(backbone.pipe.scheduler).__name__ == "CogVideoXDDIMScheduler"
    assert backbone.count_tokens("a red fox runs") == (5, True)  # four words + </s>, from the real tokenizer
    ids = backbone.encode_prompts(["a cat", "a dog", "a cat"])
    assert ids == [0, 1, 0]
    assert backbone.pipe.text_encoder is None  # released after encoding (backbone.text_encoder=release)
    assert backbone._embeds.shape == (2, 16, 16) and not torch.equal(backbone._embeds[0], backbone._embeds[1])


def test_incomplete_model_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    proc = run_cli("generate", "backbone=cogvideox-2b", f"model_path={tmp_path / 'model'}", "prompt=a cat",
                   "num_windows=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "missing transformer, vae, scheduler, text_encoder, tokenizer" in lines[0]
    assert "hf download THUDM/CogVideoX-2b" in lines[0]

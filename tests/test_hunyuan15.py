"""HunyuanVideo 1.5 behind the seam, on the tiny random model (conf/backbone/tiny-hunyuan15.yaml, 16×16, float32):

- the schedule is the pipeline's (σ = linspace(1, 0, N + 1)[:−1], shifted by FlowMatchEulerDiscreteScheduler) and a
  DDIM η = 0 step in (a, s) is that scheduler's Euler step;
- `direct` equals diffusers' `HunyuanVideo15Pipeline(..., output_type="latent")`. The tiny model has no Qwen2.5-VL
  or ByT5 (hashed stand-ins), so the pipeline is compared from the prompt embeddings onward: it gets the same four
  text tensors (embeddings and masks of both encoders, unpacked from the backbone's table) for prompt and negative;
- the real text path too: a folder written by `save_pretrained` with a 3-layer Qwen2.5-VL text model, a word-level
  tokenizer whose chat template puts exactly the 108 cropped tokens first, and a 1-layer ByT5, loaded through
  `backbone=hunyuanvideo-1.5 model_path=DIR`: encode (both encoders, then released) and `direct` equal the whole
  pipeline called with prompt strings;
- the streamed decode equals the pipeline's `vae.decode(latents / scaling_factor)`;
- every sampler runs or refuses in one line with its reason (FIFO: one timestep per sample; the attention
  processors of FreeLong, DiTCtrl and GLC's ABAM: tests/test_hunyuan15_attention.py); resume after step 2 is
  bit-identical (gen-l-video).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0
from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
from omegaconf import OmegaConf

from longgen.backbones.hashed_text import hashed_embedding
from longgen.backbones.hunyuan15 import joint_layers, unpack_text
from longgen.build import build
from longgen.diffusion import ddim_step, flow_to_x0_eps
from longgen.errors import UsageError
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler
from longgen.samplers.ditctrl import DiTCtrlSampler
from longgen.samplers.fifo import FIFOSampler
from longgen.samplers.freelong import FreeLongSampler
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.samplers.glc import GLCSampler
from longgen.samplers.syncos import SynCoSSampler

from conftest import REPO
from test_checkpoint import checkpoint_after_two_steps

SHIFT = 5.0  # conf/backbone/tiny-hunyuan15.yaml: architecture.scheduler.shift
STRIDE = 8  # its stride; 2 windows of 31 latent frames
PROMPTS = ("a red fox in snow", 'a sign that says "OPEN" in the rain')
NEGATIVE = "blurry"


@pytest.fixture(scope="module")
def hy():
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-hunyuan15.yaml")
    cfg.height = cfg.width = 16
    backbone = build(cfg, "backbone", "tiny-hunyuan15")
    backbone.load()
    backbone.encode_prompts(list(PROMPTS), NEGATIVE)
    return backbone


@contextlib.contextmanager
def stock_processors(transformer):
    """diffusers' own HunyuanVideo 1.5 processor on the joint layers for the block (longgen installs its own)."""
    original = dict(transformer.attn_processors)
    transformer.set_attn_processor({name: HunyuanVideo15AttnProcessor2_0() if joint_layers(name) else p
                                    for name, p in original.items()})
    try:
        yield
    finally:
        transformer.set_attn_processor(original)


def _run(backbone, length, ids=(0,), seed=0):
    noise = torch.randn((1, length, *backbone.latent_shape), generator=torch.Generator().manual_seed(seed))
    ids = list(ids)
    return SamplingRun(denoiser=backbone, noise=noise, generator=torch.Generator().manual_seed(7),
                       prompt_for_window=lambda start, size: ids[min(len(ids) - 1, start * len(ids) // length)])


def test_schedule_and_step_are_the_pipelines_flow_match_euler(hy):
    sched = hy.schedule(6)
    ref = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, 7)[:-1].tolist())
    assert sched.path == "flow" and list(sched.timesteps) == [float(t) for t in ref.timesteps]
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(ref.timesteps):
        c = sched.step(i)
        assert c.s == pytest.approx(float(ref.sigmas[i]), abs=1e-6)
        assert c.s_prev == pytest.approx(float(ref.sigmas[i + 1]), abs=1e-6)
        x, v = 3 * torch.randn(2, 5, 4, 2, 2, generator=gen), torch.randn(2, 5, 4, 2, 2, generator=gen)
        ours = ddim_step(x, flow_to_x0_eps(x, v, c.s)[0], c)
        assert (ours - ref.step(v, t, x, return_dict=False)[0]).abs().max().item() <= 1e-5, f"step {i}"
    assert sched.step(5).s_prev == 0.0


@pytest.mark.parametrize("prompt_id", [0, 1])  # 1: a quoted glyph text, so the ByT5 stand-in is non-zero
def test_direct_equals_the_pipeline_from_the_embeddings_on(hy, prompt_id):
    steps, guidance = 3, 6.0
    run = _run(hy, hy.window, ids=[prompt_id])
    ours = DirectSampler(num_steps=steps, guidance_scale=guidance).sample(run)  # [1, F, C, H, W]
    # the stand-in encoders' four tensors, straight (not through the backbone's packed table)
    keys = ("encoder_hidden_states", "encoder_attention_mask", "encoder_hidden_states_2", "encoder_attention_mask_2")
    cond = dict(zip(keys, hy._hashed_texts([PROMPTS[prompt_id]])))
    neg = dict(zip(keys, hy._hashed_texts([NEGATIVE])))
    pipe = HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=hy.pipe.transformer, vae=hy.pipe.vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=guidance))
    pipe.set_progress_bar_config(disable=True)
    with stock_processors(hy.pipe.transformer):  # the pipeline as diffusers ships it: masked attention
        reference = pipe(
            prompt_embeds=cond["encoder_hidden_states"], prompt_embeds_mask=cond["encoder_attention_mask"],
            prompt_embeds_2=cond["encoder_hidden_states_2"], prompt_embeds_mask_2=cond["encoder_attention_mask_2"],
            negative_prompt_embeds=neg["encoder_hidden_states"], negative_prompt_embeds_mask=neg["encoder_attention_mask"],
            negative_prompt_embeds_2=neg["encoder_hidden_states_2"],
            negative_prompt_embeds_mask_2=neg["encoder_attention_mask_2"],
            height=hy.height, width=hy.width, num_frames=hy.num_frames, num_inference_steps=steps,
            latents=run.noise.permute(0, 2, 1, 3, 4).clone(), output_type="latent",
        ).frames.permute(0, 2, 1, 3, 4)
    assert hy.attention_choice.used == "valid-prefix"  # ours: attention on each row's valid tokens
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    if prompt_id == 1:
        assert cond["encoder_attention_mask_2"].sum() > 0 and cond["encoder_hidden_states_2"].abs().sum() > 0
    # the oracle can tell: a different prompt gives different latents
    other = DirectSampler(num_steps=steps, guidance_scale=guidance).sample(_run(hy, hy.window, ids=[1 - prompt_id]))
    assert (other - reference).abs().max().item() > 1e-3


def test_text_table_holds_both_encoders_and_their_masks(hy):
    """The packed table gives back each encoder's states and masks: Qwen's mask covers the prompt's words, ByT5's
    only the quoted glyph text (none without quotes), as the pipeline's `_get_byt5_prompt_embeds` does."""
    s1, d1, d2 = hy._text_widths()
    rows = unpack_text(torch.cat([hy._embeds, hy._negative]), s1, d1, d2)
    assert rows["encoder_attention_mask"].sum(1).tolist() == [5, 10, 1]  # words and marks of each prompt, "blurry"
    assert rows["encoder_attention_mask_2"].sum(1).tolist() == [0, 5, 0]  # 'Text "OPEN". ' -> text " open " . ; "blurry": none
    assert rows["encoder_hidden_states_2"][0].abs().sum() == 0 and rows["encoder_hidden_states_2"][1].abs().sum() > 0
    assert rows["encoder_hidden_states_2"].shape == (3, hy.glyph_tokens, d2)
    assert torch.equal(rows["encoder_hidden_states"][0, :5], hashed_embedding(PROMPTS[0], s1, d1)[:5])
    assert rows["encoder_hidden_states"][0, 5:].abs().sum() == 0


def test_decode_stream_equals_the_pipelines_decode(hy):
    latents = torch.randn(1, 3, *hy.latent_shape, generator=torch.Generator().manual_seed(3))
    frames = np.concatenate(list(hy.decode_stream(latents)))
    vae = hy.pipe.vae
    with torch.no_grad():
        video = vae.decode(latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor, return_dict=False)[0]
    reference = HunyuanVideo15ImageProcessor(vae_scale_factor=16).postprocess_video(video, output_type="np")[0]
    assert frames.shape == (hy.frames_for(3), 16, 16, 3) == reference.shape
    assert np.abs(frames.astype(int) - np.round(reference * 255).astype(int)).max() <= 1
    assert hy.encode_frames(frames).shape == (1, 3, *hy.latent_shape)


def test_every_sampler_runs_or_refuses_in_one_line(hy):
    length = hy.window + STRIDE
    for sampler in (GenLVideoSampler(num_steps=2, guidance_scale=6.0, stride=STRIDE),
                    SynCoSSampler(num_steps=2, guidance_scale=6.0, stride=STRIDE, t_min=950, iters=1),
                    GLCSampler(num_steps=2, guidance_scale=6.0, stride=STRIDE),  # with ABAM
                    FreeLongSampler(num_steps=2, guidance_scale=6.0),
                    DiTCtrlSampler(num_steps=2, guidance_scale=6.0, stride=STRIDE, kv_steps=(0, 2), kv_layers=(0, 2))):
        out = sampler.sample(_run(hy, length, ids=[0, 1]))
        assert out.shape == (1, length, *hy.latent_shape) and torch.isfinite(out).all()
    refusals = {
        "a timestep per latent frame": FIFOSampler(num_partitions=1, stride=STRIDE),
    }
    for reason, sampler in refusals.items():
        with pytest.raises(UsageError) as err:
            sampler.sample(_run(hy, length, ids=[0, 1]))
        assert "\n" not in str(err.value) and reason.lower() in str(err.value).lower(), str(err.value)


def test_resume_after_step_two_is_bit_identical(hy, tmp_path):
    def make():
        return GenLVideoSampler(num_steps=4, guidance_scale=6.0, stride=STRIDE)

    length = hy.window + STRIDE
    reference = make().sample(_run(hy, length, ids=[0, 1]))
    ckpt = checkpoint_after_two_steps(make(), _run(hy, length, ids=[0, 1]), tmp_path / "ckpt.safetensors",
                                      "gen-l-video")
    fresh = _run(hy, length, ids=[0, 1])
    fresh.generator.set_state(ckpt.generator_state)
    assert ckpt.state.done == 2 and torch.equal(make().sample(fresh, ckpt.state), reference)


# ------------------------------------------------------------------------------------------ the real loading path
WORDS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "a", "cat", "sign", "hi", '"']
#: the pipeline crops the first 108 template tokens (its system message); this template's prefix is exactly 108
TEMPLATE = ("{{ '<unk> ' * 106 }}<|im_start|> user {{ messages[1]['content'] }} <|im_end|> "
            "{% if add_generation_prompt %}<|im_start|> assistant{% endif %}")


@pytest.fixture(scope="module")
def model_dir(hy, tmp_path_factory):
    """A diffusers HunyuanVideo 1.5 folder written by `save_pretrained`: the tiny transformer and VAE, a 3-layer
    Qwen2.5-VL text model with a word-level tokenizer and chat template, a 1-layer ByT5 encoder and the real ByT5
    tokenizer (it needs no files), a scheduler with a shift no config here uses."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (ByT5Tokenizer, PreTrainedTokenizerFast, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel,
                              T5Config, T5EncoderModel)

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, bos_token_id=None,
        eos_token_id=None))
    byt5 = T5EncoderModel(T5Config(vocab_size=384, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    pipe = HunyuanVideo15Pipeline(text_encoder=qwen, tokenizer=tokenizer, transformer=hy.pipe.transformer,
                                  vae=hy.pipe.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                  text_encoder_2=byt5, tokenizer_2=ByT5Tokenizer(),
                                  guider=ClassifierFreeGuidance(guidance_scale=6.0))
    path = tmp_path_factory.mktemp("models") / "HunyuanVideo-1.5-tiny"
    pipe.save_pretrained(str(path))
    return path


def _local(path):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "hunyuanvideo-1.5.yaml")
    for key, value in dict(dtype="float32", vae_dtype="float32", device="cpu", height=16, width=16, latent_channels=4,
                           max_text_tokens=16, glyph_tokens=8, micro_batch=8, compile=False, vae_tiling=False,
                           model_path=str(path)).items():
        cfg[key] = value
    return build(cfg, "backbone", "hunyuanvideo-1.5")


def test_local_folder_encodes_with_qwen_and_byt5_and_equals_the_whole_pipeline(model_dir):
    """From prompt strings to latents: the backbone's encode (both encoders, then released) and direct sampling equal
    `HunyuanVideo15Pipeline(prompt=..., negative_prompt="")` loaded from the same folder."""
    backbone = _local(model_dir)
    backbone.check_available()
    backbone.load()
    assert backbone.count_tokens("a cat") == (2, True) and float(backbone.pipe.scheduler.shift) == 7.0
    ids = backbone.encode_prompts(["a cat", 'a sign "hi"'], "")
    assert backbone.pipe.text_encoder is None and backbone.pipe.text_encoder_2 is None  # text_encoder: release
    s1, d1, d2 = backbone._text_widths()
    rows = unpack_text(backbone._embeds, s1, d1, d2)
    assert rows["encoder_attention_mask"].sum(1).tolist() == [2 + 3, 3 + 3]  # words ('"hi"' is one) + <|im_end|> <|im_start|> assistant
    assert rows["encoder_attention_mask_2"].sum(1).tolist() == [0, 8]  # 'Text "hi". ' in bytes, cut at 8
    run = _run(backbone, backbone.window, ids=[ids[1]])
    ours = DirectSampler(num_steps=2, guidance_scale=6.0).sample(run)
    pipe = HunyuanVideo15Pipeline.from_pretrained(str(model_dir))
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = 16, 8
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(prompt='a sign "hi"', negative_prompt="", height=16, width=16, num_frames=backbone.num_frames,
                     num_inference_steps=2, latents=run.noise.permute(0, 2, 1, 3, 4).clone(),
                     output_type="latent").frames.permute(0, 2, 1, 3, 4)
    assert (ours - reference).abs().max().item() <= 1e-5


def test_missing_model_is_one_line_naming_hf_download(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(UsageError) as err:
        _local(tmp_path / "model").check_available()
    assert "\n" not in str(err.value)
    assert "hf download hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v" in str(err.value)


@pytest.mark.parametrize("name", ["tiny-hunyuan15", "tiny-hunyuan15-i2v"])
def test_a_lora_is_one_line_before_anything_loads(tmp_path, name):
    """diffusers' HunyuanVideo 1.5 pipelines have no LoRA loader: `backbone.lora` is refused when the backbone is
    built, saying so, rather than at load as a file "made for another model"."""
    from diffusers import WanPipeline
    from test_lora import random_lora, save_diffusers

    path = save_diffusers(WanPipeline, tmp_path, "style.safetensors",  # any file in diffusers' LoRA layout
                          random_lora({"transformer_blocks.0.attn.to_q": (16, 16)}, 2, 0), 2, 2.0)
    conf = REPO / "conf" / "backbone"
    cfg = OmegaConf.merge(*(OmegaConf.load(conf / f"{part}.yaml") for part in ("tiny-hunyuan15", name)))
    cfg.pop("defaults", None)  # the i2v file's own list of the files it extends (merged here by hand)
    cfg.lora = [{"path": str(path)}]
    with pytest.raises(UsageError) as err:
        build(cfg, "backbone", name)
    assert str(err.value) == ("backbone.lora: diffusers' HunyuanVideo 1.5 pipelines have no LoRA loader "
                              "(load_lora_weights): drop backbone.lora")


def test_fifo_is_refused_when_the_run_is_planned(tmp_path):
    """FIFO needs a timestep per latent frame, which this transformer cannot take: one line from plan_job, before
    any weights load or run directory is started (as every other bad input), naming the family."""
    from hydra import compose, initialize_config_module

    from longgen.run.job import plan_job

    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["backbone=tiny-hunyuan15", "backbone.height=16", "backbone.width=16",
                                             "sampler=fifo", "sampler.num_partitions=1", "prompt=a fox"])
    with pytest.raises(UsageError) as err:
        plan_job(cfg, tmp_path / "run", {"backbone": "tiny-hunyuan15", "sampler": "fifo"})
    assert str(err.value) == ("sampler=fifo needs a timestep per latent frame, which HunyuanVideo 1.5 cannot take: "
                              "use a CogVideoX or Wan backbone")
    assert not (tmp_path / "run").exists()

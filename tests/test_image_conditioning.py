"""Image conditioning (issue 25): start and key images on the image-to-video backbones.

- the direct sampler on tiny-i2v / tiny-wan-i2v equals diffusers' CogVideoXImageToVideoPipeline /
  WanImageToVideoPipeline for the same seed, image and inputs (the oracle);
- the conditioning the transformer receives equals the pipelines' construction written out here by hand;
- key-frame routing: which window gets which image, against explicit tables, through every sampler's own calls;
- a run with key images stopped after a step and resumed gives the uninterrupted run's latents; a changed image is
  refused at resume; bad inputs are one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from longgen.build import build
from longgen.errors import Interrupted, UsageError
from longgen.run.job import plan_job
from longgen.run.stages import Prompts
from longgen.samplers.base import SamplingRun
from longgen.samplers.direct import DirectSampler

SMALL = ["backbone.height=16", "backbone.width=16"]
SEED = 7


@pytest.fixture(scope="module", autouse=True)
def hydra_config():
    """One Hydra initialisation for the module's compositions."""
    with initialize_config_module("longgen.conf", version_base="1.3"):
        yield


def _compose(*overrides: str):
    return compose("generate", overrides=list(overrides))


def _image(seed: int, size=(16, 16)) -> np.ndarray:
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)  # [H, W, 3]


def _backbone(name: str):
    cfg = _compose(f"backbone={name}", *SMALL)
    backbone = build(cfg.backbone, "backbone", name)
    backbone.load()
    backbone.encode_prompts(["a red fox in snow", "a fox runs"], cfg.negative_prompt or "")
    return backbone


@pytest.fixture(scope="module")
def cog():
    return _backbone("tiny-i2v")


@pytest.fixture(scope="module")
def wan():
    return _backbone("tiny-wan-i2v")


def _direct(backbone, noise, ids, steps, guidance):
    run = SamplingRun(denoiser=backbone, noise=noise, prompt_for_window=lambda start, size: ids[0],
                      generator=torch.Generator().manual_seed(1))
    return DirectSampler(num_steps=steps, guidance_scale=guidance).sample(run)  # [1, F, C, H, W]


def _noise(backbone, seed=0):
    return torch.randn((1, backbone.window, *backbone.latent_shape), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- the oracles
def test_direct_on_tiny_i2v_equals_the_cogvideox_i2v_pipeline(cog):
    from diffusers import CogVideoXImageToVideoPipeline

    frame = _image(0)
    cog.encode_images([frame], SEED)
    cid = cog.condition_id(0, 0)
    noise = _noise(cog)
    ours = _direct(cog, noise, [cid], steps=3, guidance=6.0)
    pipe = CogVideoXImageToVideoPipeline(**cog.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(image=Image.fromarray(frame), prompt_embeds=cog._embeds[0:1], negative_prompt_embeds=cog._negative,
                     num_frames=cog.num_frames, height=cog.height, width=cog.width, num_inference_steps=3,
                     guidance_scale=6.0, latents=noise.clone(), generator=torch.Generator().manual_seed(SEED),
                     output_type="latent").frames  # [1, F, C, H, W]
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    # the oracle sees the image: another image (or none) is far away
    cog.encode_images([_image(1)], SEED)
    other = _direct(cog, noise, [cog.condition_id(0, 0)], steps=3, guidance=6.0)
    assert (other - reference).abs().max().item() > 1e-3
    assert (_direct(cog, noise, [0], steps=3, guidance=6.0) - reference).abs().max().item() > 1e-3


def test_direct_on_tiny_wan_i2v_equals_the_wan_i2v_pipeline(wan):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    frame = _image(2)
    wan.encode_images([frame], SEED)
    noise = _noise(wan)
    ours = _direct(wan, noise, [wan.condition_id(0, 0)], steps=3, guidance=5.0)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan.pipe.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   image_processor=wan.pipe.image_processor, image_encoder=wan.pipe.image_encoder,
                                   transformer=wan.pipe.transformer)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(image=Image.fromarray(frame), prompt_embeds=wan._embeds[0:1], negative_prompt_embeds=wan._negative,
                     height=wan.height, width=wan.width, num_frames=wan.num_frames, num_inference_steps=3,
                     guidance_scale=5.0, latents=noise.permute(0, 2, 1, 3, 4).clone(),
                     output_type="latent").frames  # [1, C, F, H, W]
    reference = reference.permute(0, 2, 1, 3, 4)  # [1, F, C, H, W]
    assert reference.shape == ours.shape
    assert (ours - reference).abs().max().item() <= 1e-5
    wan.encode_images([_image(3)], SEED)
    assert (_direct(wan, noise, [wan.condition_id(0, 0)], 3, 5.0) - reference).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------------- the formulas
def _captured_call(backbone, ids, frames=None):
    """The keyword arguments of the transformer call of one guided predict of windows conditioned by `ids`."""
    seen = {}

    def keep(module, args, kwargs):
        seen.update(kwargs)

    handle = backbone.pipe.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        x = torch.randn(len(ids), frames or backbone.window, *backbone.latent_shape)
        backbone.predict(x, backbone.schedule(4).step(1).t, ids, 6.0)
    finally:
        handle.remove()
    return x, seen


@torch.no_grad()
def test_cogvideox_conditioning_is_the_image_latent_at_frame_zero(cog):
    frame = _image(4)
    cog.encode_images([frame], SEED)
    x, seen = _captured_call(cog, [cog.condition_id(1, 0), 1])
    hidden = seen["hidden_states"]  # [4, F, 2C, h, w]: rows uncond(image), uncond(none), cond(image), cond(none)
    c = cog.latent_shape[0]
    vae = cog.pipe.vae
    pixels = torch.as_tensor(frame, dtype=torch.float32).permute(2, 0, 1)[None, :, None] / 255 * 2 - 1  # [1, 3, 1, H, W]
    posterior = vae.encode(pixels).latent_dist
    draw = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(SEED))
    image_latent = (posterior.mean + posterior.std * draw)[0, :, 0] * vae.config.scaling_factor  # [C, h, w]
    assert torch.equal(hidden[:, :, :c], torch.cat([x, x]))
    for row in (0, 2):
        assert (hidden[row, 0, c:] - image_latent).abs().max().item() <= 1e-5
        assert not hidden[row, 1:, c:].any()  # zero padding after the first latent frame
    assert not hidden[1, :, c:].any() and not hidden[3, :, c:].any()  # no image: zero conditioning


@torch.no_grad()
def test_wan_conditioning_is_clip_context_mask_and_vae_mode(wan):
    frame = _image(5)
    wan.encode_images([frame], SEED)
    frames = 3  # a short window: the latent of [image, zeros] depends on the window's length
    _, seen = _captured_call(wan, [wan.condition_id(0, 0), 0], frames=frames)
    hidden = seen["hidden_states"]  # [4, 4 + 4 + 4, F, h, w] (Wan's layout [b, C, F, H, W])
    vae, z, c = wan.pipe.vae, wan.latent_shape[0], wan.temporal_compression
    n_video = c * (frames - 1) + 1
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)

    def latent(first: torch.Tensor) -> torch.Tensor:
        video = torch.zeros(1, 3, n_video, wan.height, wan.width)
        video[:, :, 0] = first
        return (vae.encode(video).latent_dist.mode() - mean) / std  # [1, z, F, h, w]

    pixels = torch.as_tensor(frame, dtype=torch.float32).permute(2, 0, 1)[None] / 255 * 2 - 1  # [1, 3, H, W]
    mask = torch.zeros(1, c, frames, 1, 1)
    mask[:, :, 0] = 1
    for row in (0, 2):
        assert torch.equal(hidden[row, z : z + c], mask.expand(1, c, frames, *hidden.shape[-2:])[0])
        assert (hidden[row, z + c :] - latent(pixels)[0]).abs().max().item() <= 1e-5
    for row in (1, 3):
        assert not hidden[row, z : z + c].any()
        assert (hidden[row, z + c :] - latent(torch.zeros(1, 3, wan.height, wan.width))[0]).abs().max().item() <= 1e-5
    encoder = wan.pipe.image_encoder

    def clip(image):
        inputs = wan.pipe.image_processor(images=image, return_tensors="pt")
        return encoder(**inputs, output_hidden_states=True).hidden_states[-2][0]  # [N, Dimg]

    context = seen["encoder_hidden_states_image"]  # [4, N, Dimg]
    grey = Image.new("RGB", (wan.width, wan.height), (128, 128, 128))
    assert (context[0] - clip(Image.fromarray(frame))).abs().max().item() <= 1e-5
    assert (context[1] - clip(grey)).abs().max().item() <= 1e-5
    assert torch.equal(context[0], context[2]) and torch.equal(context[1], context[3])
    assert seen["encoder_hidden_states"].shape[1] == 512


# ---------------------------------------------------------------------------------------------------- the fit
@pytest.mark.parametrize("fit,red_columns,black_rows", [
    ("crop", 0, 0),       # cover: scaled to 32x16, the centre 16 columns kept (original columns 10..29: no red)
    ("stretch", 4, 0),    # 40 → 16 columns: the 10 red ones become 4
    ("pad", 4, 8),        # fit inside: 16x8 centred, 4 black rows above and below
])
def test_image_fit_cuts_pads_or_stretches(tmp_path, fit, red_columns, black_rows):
    from longgen.run.images import fit_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :, 2] = 255  # blue, with a red band over the first quarter of the columns
    pixels[:, :10] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "band.png")
    frame, original, sha = fit_image(tmp_path / "band.png", 16, 16, fit, "image=")
    assert frame.shape == (16, 16, 3) and original == (40, 20) and len(sha) == 64
    middle = frame[8]  # a row through the picture
    assert int((middle[:, 0] > 200).sum()) == red_columns
    assert int((frame.reshape(16, -1).max(axis=1) < 20).sum()) == black_rows


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_image_fits_to_its_8_bit_frame(tmp_path, channels):
    """A 16-bit PNG (grey: PIL's I;16, which convert("RGB") clips; RGB) fits to the frame of the same picture in 8
    bits, within one grey level."""
    import cv2

    from longgen.run.images import fit_image

    ramp = np.linspace(0, 255, 40 * 20).reshape(20, 40).astype(np.uint8)  # [h, w]
    pixels = ramp if channels == 1 else np.stack([ramp, 255 - ramp, ramp // 2], axis=-1)  # [h, w] or [h, w, 3]
    Image.fromarray(pixels).save(tmp_path / "8.png")
    deep = pixels.astype(np.uint16) * 257  # 0..65535
    cv2.imwrite(str(tmp_path / "16.png"), deep if channels == 1 else deep[..., ::-1])  # OpenCV writes BGR
    with Image.open(tmp_path / "16.png") as img:
        assert img.mode == ("I;16" if channels == 1 else "RGB")
    eight, _, _ = fit_image(tmp_path / "8.png", 16, 16, "crop", "image=")
    sixteen, _, _ = fit_image(tmp_path / "16.png", 16, 16, "crop", "image=")
    assert int(np.abs(sixteen.astype(int) - eight.astype(int)).max()) <= 1 and int(eight.max()) > 200


# ---------------------------------------------------------------------------------------------------- routing
def test_story_events_carry_images_with_or_without_times(tmp_path):
    from longgen.story import Story

    data = {"global": "a fox", "local": [{"prompt": "a fox sits", "start": 0, "end": 2, "image": "a.png"},
                                         {"prompt": "a fox runs", "start": 2, "end": 5}]}
    (tmp_path / "story.json").write_text(json.dumps(data))
    story = Story.load(tmp_path / "story.json")
    assert story.images == [str(tmp_path / "a.png"), None]
    assert story.times == [{"start": 0, "end": 2}, {"start": 2, "end": 5}]
    assert story.to_dict()["local"] == [{"prompt": "a fox sits", "start": 0, "end": 2, "image": str(tmp_path / "a.png")},
                                        {"prompt": "a fox runs", "start": 2, "end": 5}]
    plain = Story.from_dict({"global": "", "local": ["a", {"prompt": "b", "image": "/x/b.png"}]})
    assert plain.local_prompts == ["a", "b"] and plain.images == [None, "/x/b.png"] and plain.times is None
    with pytest.raises(UsageError, match="local prompt 2's `image` must be the path of an image file"):
        Story.from_dict({"global": "", "local": ["a", {"prompt": "b", "image": 3}]})


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    for name, seed, size in (("start.png", 10, (40, 24)), ("two.png", 11, (20, 30)), ("three.png", 12, (16, 16))):
        Image.fromarray(_image(seed, size)).save(folder / name)
    (folder / "broken.png").write_text("not an image")
    story = {"global": "a fox", "local": [{"prompt": "a fox sits", "image": "start.png"},
                                          {"prompt": "a fox runs", "image": "two.png"},
                                          "a fox rests", {"prompt": "a fox jumps", "image": "three.png"}]}
    (folder / "story.json").write_text(json.dumps(story))
    return folder


def _job(tmp_path, *overrides):
    cfg = _compose("backbone=tiny-i2v", *SMALL, "sampler.num_steps=2", *overrides)
    choices = {"backbone": "tiny-i2v", "sampler": next((o.split("=")[1] for o in overrides
                                                        if o.startswith("sampler=")), "syncos")}
    return plan_job(cfg, tmp_path, choices)


#: sampler, num_windows → window start → (event, key image source or None). 4 events of equal length over
#: L = 13 + 4·5 = 33 latent frames: segment edges 8.25, 16.5, 24.75; window centres 6.5, 10.5, ..., 26.5
ROUTES = {
    ("syncos", 6): {0: (0, "event 1"), 4: (1, "event 2"), 8: (1, None), 12: (2, None), 16: (2, None),
                    20: (3, "event 4")},
}


@pytest.mark.parametrize("sampler,windows", list(ROUTES))
def test_key_images_go_to_the_first_window_of_their_event(pictures, tmp_path, sampler, windows):
    job = _job(tmp_path, f"story={pictures / 'story.json'}", f"sampler={sampler}", f"num_windows={windows}")
    sources = {image.start: image.source for image in job.images.images}
    table = {s: (job.local_index(s, job.plan.window), sources.get(s)) for s in job.plan.starts}
    assert table == ROUTES[(sampler, windows)]
    # crop: the 40x24 start image covers 16x16 by scaling to 27x16 and cutting the centre
    first = job.images.images[0]
    assert first.original == (40, 24) and first.fitted == (16, 16) and first.frame.shape == (16, 16, 3)
    assert first.path == str(pictures / "start.png")
    # the condition id each window's prompt_for_window gives: the key image's where routed, else the prompt's
    prompts = Prompts(ids=[0, 1, 2, 3], roles={}, keyed={s: 100 + s for s in sources})
    ids = {s: prompts.window_id(job, s, job.plan.window) for s in job.plan.starts}
    assert ids == {s: (100 + s if src else ev) for s, (ev, src) in ROUTES[(sampler, windows)].items()}


@pytest.mark.parametrize("sampler", ["direct", "gen-l-video", "syncos", "glc", "freelong", "ditctrl"])
def test_every_sampler_asks_for_the_routed_conditions(cog, sampler, monkeypatch):
    """Each sampler's own model calls (GLC: with ABAM and VMCR) carry the key image's condition id for its window
    (and the prompt's elsewhere)."""
    cfg = _compose("backbone=tiny-i2v", f"sampler={sampler}", "sampler.num_steps=1",
                   *(["sampler.iters=1"] if sampler == "syncos" else []))
    sam = build(cfg.sampler, "sampler", sampler)
    cog.encode_images([_image(6)], SEED)
    keyed = cog.condition_id(0, 0)
    length = cog.window if sampler in ("direct", "freelong") else cog.window + 2 * sam.stride
    plan = sam.plan(length, cog.window)
    seen = []
    plain = cog._with_conditions

    def spy(x_in, emb, prompt_ids, guided):
        seen.extend(prompt_ids)
        return plain(x_in, emb, prompt_ids, guided)

    monkeypatch.setattr(cog, "_with_conditions", spy)
    run = SamplingRun(denoiser=cog, noise=torch.randn(1, length, *cog.latent_shape),
                      prompt_for_window=lambda start, size: keyed if start == 0 and size == plan.window else 1,
                      generator=torch.Generator().manual_seed(0))
    sam.sample(run)
    assert keyed in seen and set(seen) <= {keyed, 1}
    assert sampler in ("direct", "freelong") or 1 in seen


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_with_key_images_is_exact_and_checks_the_images(pictures, tmp_path, monkeypatch):
    import gc

    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from longgen.commands.generate import run_generate
    from longgen.commands.resume import run_resume
    from longgen.run import stages

    monkeypatch.setattr(gc, "collect", lambda *a: 0)  # the release between jobs; seconds in a test process's heap
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"global": "a fox", "local": [{"prompt": "a fox sits", "image": "start.png"},
                                                              {"prompt": "a fox jumps", "image": "two.png"}]}))
    for name in ("start.png", "two.png"):
        (tmp_path / name).write_bytes((pictures / name).read_bytes())
    cfg = _compose("backbone=tiny-i2v", *SMALL, f"story={story}", "sampler=gen-l-video", "num_windows=2",
                   "sampler.num_steps=3", "sampler.eta=0.5", "seed=3")
    choices = {"backbone": "tiny-i2v", "sampler": "gen-l-video"}
    whole = run_generate(OmegaConf.create(OmegaConf.to_container(cfg)), tmp_path / "whole", choices)
    assert [(image["source"], image["window_start"]) for image in whole["images"]] == [("event 1", 0), ("event 2", 4)]

    plain = stages.StepHooks.__call__

    def stop_after_one(self, state, total):
        if state.done == 1:
            self.interrupts.requested = "a test"
        return plain(self, state, total)

    monkeypatch.setattr(stages.StepHooks, "__call__", stop_after_one)
    with pytest.raises(Interrupted):
        run_generate(OmegaConf.create(OmegaConf.to_container(cfg)), tmp_path / "chain", choices)
    monkeypatch.setattr(stages.StepHooks, "__call__", plain)
    saved = (tmp_path / "two.png").read_bytes()
    (tmp_path / "two.png").write_bytes((pictures / "start.png").read_bytes())
    with pytest.raises(UsageError, match="key image .* changed since its checkpoint"):
        run_resume(tmp_path / "chain", [])
    (tmp_path / "two.png").write_bytes(saved)
    resumed = run_resume(tmp_path / "chain", [])
    assert resumed["images"] == whole["images"] and resumed["resumed"]["after_step"] == 1
    a = load_file(str(tmp_path / "whole" / "latents.safetensors"))["latents"]
    b = load_file(str(tmp_path / "chain" / "latents.safetensors"))["latents"]
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------- bad inputs
#: the configs the bad inputs start from, composed once: backbone, sampler
BASES = {"i2v": ("tiny-i2v", "syncos"), "t2v": ("tiny", "syncos"), "fifo": ("tiny-i2v", "fifo")}


@pytest.fixture(scope="module")
def bases():
    from omegaconf import OmegaConf

    return {name: OmegaConf.to_container(_compose(f"backbone={b}", f"sampler={s}", *SMALL, "prompt=a fox"))
            for name, (b, s) in BASES.items()}


@pytest.mark.parametrize("base,updates,needle", [
    ("t2v", {"image": "{p}/start.png"}, "needs an image-to-video backbone: use backbone=cogvideox-5b-i2v"),
    ("i2v", {}, "backbone=tiny-i2v is an image-to-video model: give it a start image"),
    ("i2v", {"image": "{p}/missing.png"}, "image= {p}/missing.png: no such file"),
    ("i2v", {"image": "{p}/broken.png"}, "broken.png is not a readable image"),
    ("i2v", {"image": "{p}/start.png", "image_fit": "zoom"}, "image_fit='zoom': use crop, pad, stretch"),
    ("fifo", {"image": "{p}/start.png"}, "sampler=fifo cannot take key images"),
    ("i2v", {"image": "{p}/start.png", "prompt": None, "story": "{p}/story.json"}, "both give the start frame"),
    ("i2v", {"prompt": None, "story": "{p}/gone.json"}, "story event 1's image {p}/gone.png: no such file"),
])
def test_bad_image_inputs_are_one_line(pictures, bases, tmp_path, base, updates, needle):
    from omegaconf import OmegaConf

    (pictures / "gone.json").write_text(json.dumps({"global": "", "local": [{"prompt": "a", "image": "gone.png"}]}))
    cfg = OmegaConf.create(bases[base])
    for key, value in updates.items():
        cfg[key] = value.format(p=pictures) if isinstance(value, str) else value
    backbone, sampler = BASES[base]
    with pytest.raises(UsageError) as err:
        plan_job(cfg, tmp_path, {"backbone": backbone, "sampler": sampler})
    assert needle.format(p=pictures) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------- extend
def test_extend_from_an_image_starts_with_it(pictures, tmp_path, monkeypatch):
    """`longgen extend IMAGE.png`: the image (fitted by extend's resize) is the start frame — one latent frame of
    history, by default — and the result's first latent frame is its encoding."""
    import gc

    from safetensors.torch import load_file

    from longgen.commands.extend import run_extend

    monkeypatch.setattr(gc, "collect", lambda *a: 0)
    cfg = compose("extend", overrides=["backbone=tiny", *SMALL, f"video={pictures / 'three.png'}", "prompt=a fox",
                                       "num_windows=1", "sampler.num_steps=1", "save_latents=true"])
    manifest = run_extend(cfg, tmp_path / "run", {"backbone": "tiny", "sampler": "syncos"})
    assert manifest["history"]["latent_frames"] == 1 and manifest["input"]["frames"] == 1
    first = load_file(str(tmp_path / "run" / "latents.safetensors"))["latents"][0]  # [C, h, w]
    backbone = build(cfg.backbone, "backbone", "tiny")
    backbone.load()
    frame = np.array(Image.open(pictures / "three.png").convert("RGB"))[None]  # [1, 16, 16, 3]: already the size
    assert torch.equal(first, backbone.encode_frames(frame)[0, 0])

"""`longgen extend` with key images on an image-to-video backbone (issue 25): the new part's story events may carry
an `image`, as generate's do (longgen/run/images.py). An event's image conditions the first of its windows that
starts at or after the join (a window starting in the history begins with the input's frames); an event whose
windows all start in the history, and event images on a text-to-video backbone, are one line.

tiny-i2v (window 13, stride 4) at 16×16, extended from a still image (history: 1 latent frame), 2 windows over
L = 17 latent frames: window 0 (start 0) shows event 1, window 1 (start 4) event 2."""

from __future__ import annotations

import gc
import json
import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from longgen.backbones.image_conditioning import CogVideoXI2VBackbone
from longgen.commands.extend import run_extend
from longgen.errors import UsageError
from longgen.run.extend import plan_extend

SMALL = ["backbone.height=16", "backbone.width=16"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The still input, a key image, and stories with the image on event 2 (routable) or event 1 (in the history)."""
    folder = tmp_path_factory.mktemp("extend_images")
    rng = np.random.default_rng(4)
    for name in ("input.png", "key.png"):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / name)
    for name, local in (("second.json", ["a fox sits", {"prompt": "a fox runs", "image": "key.png"}]),
                        ("first.json", [{"prompt": "a fox sits", "image": "key.png"}, "a fox runs"]),
                        ("plain.json", ["a fox sits", "a fox runs"])):
        (folder / name).write_text(json.dumps({"global": "a fox", "local": local}))
    return folder


@pytest.fixture
def seen(monkeypatch):
    """Each predict's windows' key images as tiny-i2v is asked for them (None: a window without an image)."""
    calls = []
    plain = CogVideoXI2VBackbone._with_conditions

    def spy(self, x_in, emb, prompt_ids, guided):
        calls.append(self._slots(prompt_ids))
        return plain(self, x_in, emb, prompt_ids, guided)

    monkeypatch.setattr(CogVideoXI2VBackbone, "_with_conditions", spy)
    return calls


def config(folder, backbone: str, story: str, *extra: str):
    with initialize_config_module("longgen.conf", version_base="1.3"):
        return compose("extend", overrides=[f"backbone={backbone}", *SMALL, f"video={folder / 'input.png'}",
                                            f"story={folder / story}", "sampler=gen-l-video", "num_windows=2",
                                            "sampler.num_steps=1", *extra])


def test_an_event_image_conditions_its_first_window_after_the_join(folder, tmp_path, monkeypatch, seen, caplog):
    monkeypatch.setattr(gc, "collect", lambda *a: 0)  # the release after the run; seconds in a test process's heap
    caplog.set_level(logging.INFO, logger="longgen")
    manifest = run_extend(config(folder, "tiny-i2v", "second.json"), tmp_path / "run",
                          {"backbone": "tiny-i2v", "sampler": "gen-l-video"})
    (image,) = manifest["images"]
    assert (image["source"], image["window_start"], image["path"]) == ("event 2", 4, str(folder / "key.png"))
    # one step (the windows in a predict each): window 0 on its prompt alone, window 1 on the key image
    assert [slot for call in seen for slot in call] == [None, 0]
    assert manifest["history"]["latent_frames"] == 1
    # under the start line, as generate says it: what the key image became and where it went
    said = [r.getMessage() for r in caplog.records]
    start = next(k for k, line in enumerate(said) if line.startswith("gen-l-video on "))
    assert said[start + 1].startswith("key images (image_fit=crop): event 2 key.png 16x16 → 16x16 (sha256 ")
    assert said[start + 1].endswith(" at latent frame 4")


def test_an_image_on_an_event_inside_the_history_or_on_a_text_backbone_is_one_line(folder, tmp_path):
    import hashlib

    job = plan_extend(config(folder, "tiny-i2v", "second.json"), tmp_path, {"backbone": "tiny-i2v"})
    key = folder / "key.png"  # what a checkpoint records, so that resume refuses a changed image
    assert job.inputs()["images"] == [{"path": str(key), "sha256": hashlib.sha256(key.read_bytes()).hexdigest()}]
    for backbone, story, message in (
            ("tiny-i2v", "first.json", ("story event 1's image would be the first frame of one of its windows, but "
                                        "they all start in the history (latent frames 0-0, the input's end)")),
            ("tiny", "second.json", "the story's event images need an image-to-video backbone")):
        with pytest.raises(UsageError) as err:
            plan_extend(config(folder, backbone, story), tmp_path, {"backbone": backbone})
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_image_fit_is_extends_option_too(folder, tmp_path):
    """`image_fit` is a key of extend's config (as of generate's): pad reaches the key image, a typo is one line."""
    job = plan_extend(config(folder, "tiny-i2v", "second.json", "image_fit=pad"), tmp_path, {"backbone": "tiny-i2v"})
    assert [image.fit for image in job.images.images] == ["pad"]
    with pytest.raises(UsageError) as err:
        plan_extend(config(folder, "tiny-i2v", "second.json", "image_fit=cover"), tmp_path, {"backbone": "tiny-i2v"})
    assert str(err.value).startswith("image_fit='cover': use crop, pad, stretch")


def test_without_event_images_no_window_is_conditioned_on_an_image(folder, tmp_path, monkeypatch, seen):
    """An image-to-video backbone extends with no event images: every window on its prompt alone (this raised
    AttributeError: the no-image conditioning was set up only by encode_images)."""
    monkeypatch.setattr(gc, "collect", lambda *a: 0)
    manifest = run_extend(config(folder, "tiny-i2v", "plain.json"), tmp_path / "run",
                          {"backbone": "tiny-i2v", "sampler": "gen-l-video"})
    assert not manifest.get("images") and [slot for call in seen for slot in call] == [None, None]

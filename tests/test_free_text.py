"""Free text and small inputs (issue 28, smaller items): `${…}` in a prompt is text, never an OmegaConf
interpolation; the final error line never shows a key; `+seeed=3` (a typo of a known option) is refused with a
suggestion while a new key is still accepted; a UTF-8 BOM story is read; `longgen eval` on something that is neither
file nor directory and `longgen decode` on a directory that takes no log are one line; stray "[SHOT CUT]" markers
never reach the text encoder."""

from __future__ import annotations

import json
import os
import types

import pytest
from hydra import compose, initialize_config_module

from longgen.overrides import check_option_keys, quote_free_text
from longgen.errors import UsageError, user_errors
from longgen.story import Story, without_cut_markers

from cli_helpers import error_lines, run_cli


@pytest.mark.parametrize("text", ["a ${oc.env:HOME} cat", "${nope} and ${oc.env:LONGGEN_TEST_SECRET}", "a \\${x} b"])
def test_interpolation_in_a_prompt_stays_text(text, monkeypatch):
    monkeypatch.setenv("LONGGEN_TEST_SECRET", "the-secret-value")
    args = quote_free_text([f"prompt={text}", f"negative_prompt={text}", "backbone=tiny"])
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=args)
    assert cfg.prompt == text and cfg.negative_prompt == text  # resolved: exactly what was typed


def test_the_final_error_line_never_shows_a_key(capsys):
    key = "sk-proj-" + "Ab3" * 12
    with pytest.raises(SystemExit):
        with user_errors():
            raise UsageError(f"cannot read prompt file {key}")
    err = capsys.readouterr().err
    assert key not in err and "[redacted]" in err


def test_a_typo_of_a_known_option_is_refused_with_a_suggestion():
    problem = check_option_keys("generate", ["+seeed=3", "prompt=a cat"])
    assert problem and "did you mean seed=" in problem
    assert "did you mean num_windows=" in check_option_keys("generate", ["+num_window=3"])
    assert check_option_keys("generate", ["+my_note=3", "+sampler.extra=1"]) is None  # new keys on purpose


def test_a_bom_story_is_read(tmp_path):
    path = tmp_path / "story.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"global": "A cat.", "local": ["A cat. It sleeps."]}).encode())
    assert Story.load(path).local_prompts == ["A cat. It sleeps."]


def test_eval_of_something_neither_file_nor_directory_is_one_line(tmp_path):
    from longgen.eval.inputs import resolve

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="neither a file nor a directory"):
        resolve([str(fifo)])


def test_decode_of_a_directory_that_takes_no_log_is_one_line():
    proc = run_cli("decode", "/proc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(error_lines(proc)) == 1 and "not a longgen run directory" in error_lines(proc)[0]


def test_stray_cut_markers_never_reach_the_text_encoder():
    from longgen.run.stages import encode

    assert without_cut_markers("a cat [shot cut]  walks [SHOT CUT]") == "a cat walks"
    sent = []

    class Backbone:
        label, max_text_tokens, random_weights = "stub", 1000, True
        image_conditioning = image_optional = False  # a text-to-video model, as the face's defaults

        def load(self):
            pass

        def count_tokens(self, text):
            return len(text.split()), True

        def other_text_limits(self, prompts, strict):  # the face's default: no other text encoder
            return []

        def encode_prompts(self, prompts, negative):
            sent.extend(prompts)
            return list(range(len(prompts)))

        def event_id(self, condition_id, event):  # the face's default: nothing differs by event
            return condition_id

    story = Story.from_dict({"global": "A cat.", "local": ["A cat. [SHOT CUT] It sleeps.", "[SHOT CUT] A cat. It wakes."]})
    from longgen.samplers.direct import DirectSampler

    job = types.SimpleNamespace(backbone=Backbone(), story=story, timings={}, images=None, sampler=DirectSampler(),
                                cfg=types.SimpleNamespace(negative_prompt=""))
    encode(job)
    assert sent == ["A cat. It sleeps.", "A cat. It wakes.", "A cat."]


def test_image_and_shot_template_paths_with_a_comma_are_plain_text():
    """A start image or a shot template whose path holds a comma or an apostrophe is a path, as story= and
    prompt_file= are (Hydra read `image=my, pic.png` as a sweep and stopped with its own several lines)."""
    paths = {"image": "frames/my, pic.png", "splitter.shot_template": "it's, mine.txt"}
    args = quote_free_text([f"{key}={value}" for key, value in paths.items()] + ["backbone=tiny-i2v", "splitter=llm"])
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=args)
    assert cfg.image == paths["image"] and cfg.splitter.shot_template == paths["splitter.shot_template"]

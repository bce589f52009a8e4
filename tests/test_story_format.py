"""Story files: the global/local form, the LCT multi-shot form, validation errors, and the text-limit check."""

from __future__ import annotations

import json
import re
import time

import pytest
from omegaconf import OmegaConf

from longgen.errors import UsageError
from longgen.run.job import check_prompt_lengths, resolve_story
from longgen.story import Story, check_text_limit

MULTI = {
    "characters": {"1": "a tall woman in a green raincoat", "2": "an old fisherman with a grey beard"},
    "environment": "a rainy harbour at dusk",
    "story": "two strangers share an umbrella",
    "shots": ["Character 1 waits on the pier.", "[SHOT CUT] Close-up: Character 2 lights a lantern.",
              {"prompt": "Character 1 and Character 2 walk away together.", "cut": False}],
    "durations": [2, 1, 1],
}


def test_multi_shot_story_is_validated_and_round_trips(tmp_path):
    story = Story.from_dict(MULTI)
    assert story.multi_shot and story.num_events == 3 and story.local_prompts == []
    assert [s.cut for s in story.shots] == [False, True, False]
    assert story.shots[1].prompt == "Close-up: Character 2 lights a lantern."
    assert story.shot_prompt(1) == "[SHOT CUT] Close-up: Character 2 lights a lantern."
    # LCT §3.2.1: global prompt = [Characters] [Environment] [Story], characters as "Character ID: description"
    assert story.global_prompt == ("Character 1: a tall woman in a green raincoat. Character 2: an old fisherman with a "
                                   "grey beard. a rainy harbour at dusk. two strangers share an umbrella.")
    assert story.prompt_index_at(0.49 * 10, 10) == 0 and story.prompt_index_at(0.51 * 10, 10) == 1
    path = tmp_path / "scene.json"
    story.save(path)
    again = Story.load(path)
    assert again.to_dict() == story.to_dict()
    yaml_path = tmp_path / "scene.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump({**MULTI, "characters": {1: "a tall woman", 2: "an old man"}}))
    assert list(Story.load(yaml_path).characters) == ["1", "2"]


@pytest.mark.parametrize("change,message", [
    ({"shots": ["Character 3 runs."]}, "shot 1 refers to Character 3, which `characters` does not define (defined: 1, 2)"),
    ({"shots": []}, "`shots` must be a non-empty list"),
    ({"shots": ["[SHOT CUT]   "]}, "shot 1 is empty"),
    ({"durations": [1, 1]}, "one value per shot (3)"),
    ({"characters": {"1": ""}}, "character 1 has an empty description"),
    ({"characters": {"a b": "x"}}, "character id 'a b'"),
    ({"local": ["x"]}, "unknown key(s) local"),
    ({"shots": [{"prompt": "x", "cut": "yes"}]}, "`cut` must be true or false"),
])
def test_multi_shot_errors(change, message):
    with pytest.raises(UsageError) as err:
        Story.from_dict({**MULTI, **change}, where="story file s.json")
    assert message in str(err.value) and str(err.value).startswith("story file s.json: ")


@pytest.mark.parametrize("data,message", [
    ({"global": "g", "local": []}, "non-empty list"),
    ({"global": "g", "local": ["a", " "]}, "local prompt 2 is empty"),
    ({"global": "g", "local": ["a", "b"], "durations": [1]}, "one value per local prompt (2)"),
    ({"global": "g", "local": ["a", "b"], "durations": [1, 0]}, "positive number"),
    ({"global": "g", "local": ["a"], "characters": {}}, "multi-shot stories need `shots`"),
    ({"global": "g"}, "missing `local`"),
])
def test_simple_form_errors(data, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Story.from_dict(data)


def _counter(table):
    return lambda text: table[text]


def test_text_limit_reports_every_long_prompt_with_its_length():
    prompts = [("local prompt 1", "short"), ("local prompt 2", "long one"), ("local prompt 3", "longer one")]
    count = _counter({"short": (10, True), "long one": (230, True), "longer one": (300, True)})
    with pytest.raises(UsageError) as err:
        check_text_limit(prompts, count, 226, "THUDM/CogVideoX-2b")
    message = str(err.value)
    assert "local prompt 2 has 230 tokens; local prompt 3 has 300 tokens" in message
    assert "226-token text limit of THUDM/CogVideoX-2b" in message and "local prompt 1" not in message
    assert check_text_limit(prompts[:1], count, 226, "m") == []
    # random-weight models: the same finding is only a warning
    warnings = check_text_limit(prompts, count, 226, "tiny", strict=False)
    assert len(warnings) == 1 and "local prompt 3 has 300 tokens" in warnings[0]


def test_estimates_fail_only_when_surely_over_the_limit():
    words_230 = " ".join(["fox"] * 230)
    words_200 = " ".join(["fox"] * 200)
    count = _counter({words_230: (300, False), words_200: (261, False)})
    with pytest.raises(UsageError, match="local prompt 1 has at least 231 tokens"):
        check_text_limit([("local prompt 1", words_230)], count, 226, "m")
    warnings = check_text_limit([("local prompt 1", words_200)], count, 226, "m")
    assert len(warnings) == 1 and "about 261 tokens (estimated" in warnings[0]


class _Backbone:
    def __init__(self, exact, limit=8, random_weights=False):
        self.exact, self.max_text_tokens, self.random_weights, self.label = exact, limit, random_weights, "fake-model"

    def count_tokens(self, text):
        return len(text.split()) + 1, self.exact

    def other_text_limits(self, prompts, strict):  # the face's default: no other text encoder
        return []


def test_generate_checks_every_local_prompt_and_the_negative_prompt():
    story = Story(global_prompt="a cat", local_prompts=["a cat sits", "a cat " + "very " * 10 + "big"])
    with pytest.raises(UsageError, match=r"local prompt 2 has 14 tokens: over the 8-token"):
        check_prompt_lengths(story, _Backbone(exact=True), "")
    with pytest.raises(UsageError, match=r"negative_prompt has 10 tokens"):
        check_prompt_lengths(Story.single("a cat"), _Backbone(exact=True), "blurry " * 9)
    check_prompt_lengths(story, _Backbone(exact=True, random_weights=True), "")  # a warning only


def test_generate_reads_multi_shot_stories(tmp_path):
    """generate samples them (longgen/run/shots.py, tests/test_shots.py); multi_shot=true is for scenarios only."""
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(MULTI))
    cfg = OmegaConf.create({"prompt": None, "story": str(path), "scenario": None, "num_prompts": None})
    story = resolve_story(cfg)
    assert story.multi_shot and story.num_events == 3
    cfg.multi_shot = True
    with pytest.raises(UsageError, match="multi_shot=true asks the splitter"):
        resolve_story(cfg)


def test_resolve_story_needs_exactly_one_source():
    cfg = OmegaConf.create({"prompt": "a cat", "story": None, "scenario": "x.txt", "num_prompts": 2})
    with pytest.raises(UsageError, match="only one of"):
        resolve_story(cfg)
    cfg = OmegaConf.create({"prompt": "a cat", "story": None, "scenario": None, "num_prompts": 2})
    with pytest.raises(UsageError, match="num_prompts"):
        resolve_story(cfg)


# ---------------------------------------------------------------------- limits (issue 11)
@pytest.mark.parametrize("data,message", [
    pytest.param({"global": "g", "local": ["g runs", 3]}, "local prompt 2 is a number (3), not text", id="number-prompt"),
    pytest.param({"global": 7, "local": ["g runs"]}, "`global` must be a string, got a number (7)", id="number-global"),
    pytest.param({"global": "g", "local": ["a", "b"], "durations": [1e308, 1e308]}, "duration 1 is 1e+308", id="overflowing-durations"),
    pytest.param({"global": "g", "local": ["a", "b"], "durations": [1, float("nan")]}, "duration 2 is nan", id="nan-duration"),
    pytest.param({"global": "g", "local": ["a", "b"], "durations": [1, float("inf")]}, "duration 2 is inf", id="inf-duration"),
    pytest.param({"global": "g", "local": ["e"] * 1001}, "1001 local prompts is more than the 1000", id="too-many-events"),
])
def test_story_values_out_of_range_are_named(data, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        Story.from_dict(data)


def test_error_lines_never_quote_huge_content():
    # 100 000 durations for 2 prompts and 100 000 unknown keys: both used to be echoed whole into the error line
    cases = [{"global": "g", "local": ["a", "b"], "durations": [1] * 100_000},
             {"global": "g", "local": ["a"], **{f"key{i}": 1 for i in range(100_000)}}]
    for data in cases:
        with pytest.raises(UsageError) as err:
            Story.from_dict(data)
        assert len(str(err.value)) < 400, str(err.value)[:400]


def test_a_huge_story_file_fails_fast_before_parsing(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"global": "g", "local": ["g " + "runs " * 1_000_000]}))  # 5 MB
    t0 = time.perf_counter()
    with pytest.raises(UsageError) as err:
        Story.load(path)
    assert time.perf_counter() - t0 < 0.5
    assert "is 5.0 MB, over the limit of 1024 KiB" in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize("events,durations,windows", [(1000, None, 2), (4, None, 3), (3, [1, 1000, 1], 2)])
def test_fewer_windows_than_events_fail_and_name_a_length_that_fits(events, durations, windows):
    """Every event needs a window of its own; with as many windows as events each gets one (issue 25: the centre
    rule used to refuse 4 events in 4 windows; tests/test_timeline.py pins the assignment)."""
    from longgen.windows import Clock, strided_plan

    story = Story("g", [f"g {i}" for i in range(events)], durations=durations)
    plan_for = lambda n: strided_plan(13 + 4 * (n - 1), 13, 4)  # CogVideoX-2B: window 13, stride 4  # noqa: E731
    with pytest.raises(UsageError) as err:
        story.check_events_fit(plan_for(windows), plan_for)
    need = int(re.search(r"pass num_windows=(\d+)", str(err.value)).group(1))
    assert need == events  # num_windows=N gives N windows on this grid: the least that fits
    assert sorted(set(story.event_plan(plan_for(need), Clock(8, 4)).events)) == list(range(events))  # the advice is right
    story.check_events_fit(plan_for(need), plan_for)
    assert len(str(err.value)) < 400


def test_a_single_window_sampler_cannot_show_several_events():
    from longgen.windows import WindowPlan

    one_window = lambda n: WindowPlan(13 + 4 * (n - 1), 13 + 4 * (n - 1), (0,))  # the direct sampler's plan  # noqa: E731
    with pytest.raises(UsageError, match="no video of up to 65536 windows of this sampler fixes that"):
        Story("g", ["g a", "g b", "g c"]).check_events_fit(one_window(10), one_window)
    Story.single("g").check_events_fit(one_window(10), one_window)


def test_prompt_file_is_one_prompt_read_from_a_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("A cat, then a dog's ball —\n  rolling \"fast\".\n")
    cfg = OmegaConf.create({"prompt": None, "prompt_file": str(path), "story": None, "scenario": None, "num_prompts": None})
    story = resolve_story(cfg)
    assert story.local_prompts == ["A cat, then a dog's ball — rolling \"fast\"."] and story.source["prompt_file"] == str(path)
    with pytest.raises(UsageError, match="only one of"):
        resolve_story(OmegaConf.merge(cfg, {"prompt": "a cat"}))
    path.write_text("   \n")
    with pytest.raises(UsageError, match="is empty"):
        resolve_story(cfg)
    path.write_text("word " * 20_000)
    with pytest.raises(UsageError, match="over the limit of 64 KiB"):
        resolve_story(cfg)


def test_a_random_weight_models_token_warning_is_logged_once(tmp_path):
    """The limit is checked at plan and again once the model is loaded; the second check refuses only, so the
    warning (a random-weight model's stand-in count is the same at both) is not logged twice."""
    from cli_helpers import FAST, run_cli

    prompt = " ".join(["fox"] * 300)
    proc = run_cli("generate", *FAST, "num_windows=1", f"prompt={prompt}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "run" / "generate.log").read_text()
    assert log.count("over the") == 1 and "local prompt 1 has 300 tokens" in " ".join(log.split()), log[-2000:]

"""The offline splitter: exactly N local prompts for N = 1..6 on varied scenarios, each containing the global
prompt, deterministic, no pronoun left at the start of an event."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from longgen.errors import UsageError
from longgen.splitters.offline import OfflineSplitter

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("object_motion", "camera_movement", "background_change", "storytelling", "physical_transformation",
              "cinematic_effect", "compositional_generation", "complex_scene_transition")
EXAMPLES = sorted(p for p in (REPO / "prompts").glob("*.txt") if not p.name.startswith("template"))
INLINE = [
    "A red fox trots across a snowy field at dawn, then it stops and sniffs the air. Finally it curls up and falls asleep under a pine tree.",
    "A quiet lake at sunrise.",                                  # no action at all
    "A hummingbird hovers.",                                     # one event, one verb
    "He runs. He jumps. He falls. He gets up. He waves. He smiles. He leaves the stage. He bows.",  # no subject noun, 8 events
    "The falling leaves drift slowly in a golden autumn park while a running dog chases them.",
    "After the storm passes, a rainbow appears over the harbor and seagulls circle the boats, cinematic, 35mm film.",
    "一只红狐狸在雪地里嗅来嗅去。它突然跳进雪堆。然后它叼着一只老鼠跑开了。",  # Chinese: 。 ends sentences, no spaces
    "Un renard roux renifle la neige. Il saute dans un tas de neige. Il s'endort sous un pin.",  # French
]


def test_examples_cover_every_category():
    names = [p.stem for p in EXAMPLES]
    for category in CATEGORIES:
        assert any(n.startswith(category) for n in names), category
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("scenario", [p.read_text() for p in EXAMPLES] + INLINE)
def test_exactly_n_prompts_each_containing_the_global_prompt(scenario):
    splitter = OfflineSplitter()
    for n in range(1, 7):
        story = splitter.split(scenario, n)
        assert len(story.local_prompts) == n
        assert story.global_prompt.strip()
        for prompt in story.local_prompts:
            assert prompt.startswith(story.global_prompt)
            assert prompt.strip()
        assert story.source["splitter"] == "offline"
        # deterministic: a fresh splitter gives the same story byte for byte
        assert OfflineSplitter().split(scenario, n).to_json() == story.to_json()


def test_events_follow_the_scenario_and_name_the_subject():
    story = OfflineSplitter().split(INLINE[0], 3)
    events = [p[len(story.global_prompt):].strip() for p in story.local_prompts]
    assert events == [
        "The red fox trots across a snowy field at dawn.",
        "The red fox stops and sniffs the air.",
        "The red fox curls up and falls asleep under a pine tree.",
    ]
    assert story.global_prompt == "A red fox on a snowy field at dawn."
    assert not any(w in story.global_prompt for w in ("trots", "stops", "sleep"))  # no actions in the global prompt


def test_more_events_than_prompts_are_merged_in_order():
    story = OfflineSplitter().split(INLINE[0], 2)
    joined = " ".join(story.local_prompts)
    assert joined.index("trots") < joined.index("sniffs") < joined.index("curls")
    story = OfflineSplitter().split(INLINE[0], 4)  # 3 clauses -> "curls up" and "falls asleep" are split
    assert story.local_prompts[2].endswith("The red fox curls up.")
    assert story.local_prompts[3].endswith("The red fox falls asleep under a pine tree.")


def test_pronouns_are_replaced_by_the_subject():
    story = OfflineSplitter().split("A young girl in a yellow raincoat folds a paper boat. She smiles. Her dog barks.", 3)
    events = [p[len(story.global_prompt):].strip() for p in story.local_prompts]
    assert events[1] == "The young girl smiles."
    assert events[2] == "The young girl's dog barks."


def test_camera_scenarios_describe_the_scene_not_the_camera():
    story = OfflineSplitter().split((REPO / "prompts" / "camera_movement_river_valley.txt").read_text(), 3)
    assert "camera" not in story.global_prompt.lower()
    assert "river" in story.global_prompt


def test_bad_inputs():
    with pytest.raises(UsageError, match="scenario is empty"):
        OfflineSplitter().split("   ", 2)
    with pytest.raises(UsageError, match="num_prompts"):
        OfflineSplitter().split("A cat sleeps.", 0)


def test_a_huge_scenario_fails_fast_with_one_line(tmp_path):
    from longgen.splitters.scenario import read_scenario

    huge = "He runs. " * 750_000  # 6.7 MB: the offline splitter used to work on it for minutes
    path = tmp_path / "huge.txt"
    path.write_text(huge)
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match=r"huge.txt is 6.8 MB, over the limit of \d+ KiB") as err:
        read_scenario(path)
    with pytest.raises(UsageError, match="the scenario is 6749999 characters long, over the limit of 20000"):
        OfflineSplitter().split(huge, 3)
    assert time.perf_counter() - t0 < 1.0 and len(str(err.value)) < 300


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_a_scenario_in_another_language_gives_one_event_per_sentence(n):
    # Chinese was one sentence (no 。 split) with no English verb: every local prompt was the whole scenario, and
    # "." was added after its "。"
    sentences = ["一只红狐狸在雪地里嗅来嗅去。", "它突然跳进雪堆。", "然后它叼着一只老鼠跑开了。"]
    story = OfflineSplitter().split("".join(sentences), n)
    assert story.global_prompt == sentences[0]  # where the story introduces its subject and place
    events = [p[len(story.global_prompt):] for p in story.local_prompts]
    expected = {1: ["它突然跳进雪堆。然后它叼着一只老鼠跑开了。"],  # all three: the first is the global prompt
                2: ["", "它突然跳进雪堆。然后它叼着一只老鼠跑开了。"],  # the shortest neighbours merged
                3: ["", "它突然跳进雪堆。", "然后它叼着一只老鼠跑开了。"],
                5: ["", "", "它突然跳进雪堆。", "它突然跳进雪堆。", "然后它叼着一只老鼠跑开了。"]}[n]
    assert events == expected
    assert not any(".。" in p or "。." in p for p in story.local_prompts)
    french = OfflineSplitter().split(INLINE[-1], 3)
    assert [p[len(french.global_prompt):].strip() for p in french.local_prompts] == [
        "", "Il saute dans un tas de neige.", "Il s'endort sous un pin."]
    # an English description without a verb keeps its rule: the scene in every prompt
    assert OfflineSplitter().split("A quiet lake at sunrise. Mist over the water.", 2).local_prompts == [
        "A quiet lake at sunrise, Mist over the water."] * 2


@pytest.mark.parametrize("scenario, stop, space", [
    ("A woman walks into a small café. She orders a latte at the counter.", ".", " "),  # English ending in é
    ("Le renard est fatigué. Il dort sous un pin.", ".", " "),
    ("붉은 여우가 숲에서 깨어난다. 여우가 눈더미로 뛰어든다.", ".", " "),  # Korean ends sentences with '.'
    ("Рыжая лиса просыпается в лесу. Она прыгает в снег.", ".", " "),
    ("一只狐狸在雪林中醒来。它跳进雪堆。", "。", ""),
    ("赤い狐が目を覚ます。そして雪に飛び込む。", "。", ""),
])
def test_a_sentence_ends_with_the_stop_of_its_own_script(scenario, stop, space):
    # any last letter outside ASCII (é, Hangul, Cyrillic) got the Chinese '。', and no space before the next sentence
    story = OfflineSplitter().split(scenario, 2)
    other = "。" if stop == "." else "."
    assert story.global_prompt.endswith(stop)
    assert not any(other in p for p in [story.global_prompt, *story.local_prompts])
    assert story.local_prompts[-1].startswith(story.global_prompt + space)
    assert not story.local_prompts[-1].startswith(story.global_prompt + space + " ")


def test_an_english_scenario_without_the_commonest_words_is_still_read_as_english():
    # rule 7 is for scenarios with no English verb and none of English's commonest words, not for either alone
    story = OfflineSplitter().split("A fox runs. Snow falls.", 2)
    assert story.global_prompt == "A fox." and story.local_prompts == ["A fox. The fox runs.", "A fox. Snow falls."]


def test_another_language_merges_the_earliest_of_equally_short_pairs_and_drops_trailing_commas():
    story = OfflineSplitter().split("猫醒了。狗跑了。鸟飞了。", 2)
    assert story.local_prompts == ["猫醒了。狗跑了。", "猫醒了。鸟飞了。"]
    assert OfflineSplitter().split("一只猫醒来，", 1).local_prompts == ["一只猫醒来。"]
